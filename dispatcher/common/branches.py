"""What a repository's `branches` watch: branch names, glob patterns, and full ref patterns.

    "main"                       the branch main (refs/heads/main)
    "release/*"                  every branch whose name matches (`*` and `?` as in a shell,
                                 `*` matching `/` too: release/1.0 and release/1.0/rc)
    "refs/pull/*/head"           refs outside refs/heads, by their full name: forges'
    "refs/merge-requests/*/head" pull and merge request heads

A commit seen through a ref outside refs/heads is recorded with the ref's full name as
its branch ("refs/pull/12/head"); a branch under its short name ("main").
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Iterable, Mapping

from dispatcher.common.names import check_branch_pattern

HEADS = "refs/heads/"


@dataclasses.dataclass(frozen=True)
class Watched:
    """One entry of a repository's `branches`."""

    pattern: str

    @property
    def full(self) -> bool:
        return self.pattern.startswith("refs/")

    @property
    def namespace(self) -> str:
        """The refs folder this entry's refs live under (what a fetch must bring), ending in "/"."""
        if not self.full:
            return HEADS
        fixed = self.pattern.split("*", 1)[0].split("?", 1)[0]
        return fixed[: fixed.rfind("/") + 1]

    def matches(self, branch: str) -> bool:
        """Whether a branch, as polyarch records it (short for refs/heads), is watched."""
        if self.full != branch.startswith("refs/"):
            return False
        return fnmatch.fnmatchcase(branch, self.pattern)


def parse(patterns: Iterable[str]) -> tuple[Watched, ...]:
    return tuple(Watched(check_branch_pattern(p)) for p in patterns)


def namespaces(watched: Iterable[Watched]) -> tuple[str, ...]:
    """The ref folders to mirror for these entries, each once, outermost first."""
    found = sorted({w.namespace for w in watched}, key=len)
    return tuple(n for i, n in enumerate(found) if not any(n.startswith(m) for m in found[:i]))


def branch_of(ref: str) -> str:
    """A full ref's name as polyarch records it."""
    return ref[len(HEADS):] if ref.startswith(HEADS) else ref


def watched_heads(watched: Iterable[Watched], refs: Mapping[str, str]) -> dict[str, str]:
    """branch -> commit for the refs (full name -> commit) that these entries watch."""
    entries = tuple(watched)
    out = {}
    for ref, sha in refs.items():
        branch = branch_of(ref)
        if any(w.matches(branch) for w in entries):
            out[branch] = sha
    return out


def is_watched(watched: Iterable[Watched], branch: str) -> bool:
    return any(w.matches(branch) for w in watched)
