"""A bare mirror of one watched repository, and what is new on its branches."""

from __future__ import annotations

import dataclasses
import enum
import os
from pathlib import Path
from typing import Callable, Optional

import git

from dispatcher.common.branches import HEADS, branch_of
from dispatcher.common.progress import git_progress
from dispatcher.common.progress import run as progress_run
from dispatcher.wire.protocol import CommitInfo

from dispatcher.common.git import GIT_ENV, GitError, RefsUnclear, borrow, fetch, local_git_dir, open_mirror, read_refs

SUBJECT_LIMIT = 200


class FetchError(GitError):
    """The remote could not be fetched (unreachable, refused, timed out)."""


class Change(str, enum.Enum):
    NONE = "none"
    FIRST_SIGHTING = "first-sighting"
    NEW_COMMITS = "new-commits"
    FORCE_PUSHED = "force-pushed"


@dataclasses.dataclass(frozen=True)
class BranchUpdate:
    branch: str
    change: Change
    commits: tuple[CommitInfo, ...]  # oldest first, at most max_backfill
    skipped: int  # new commits left out by the backfill cap


class Mirror:
    """`namespaces`: the ref folders mirrored ("refs/heads/", and "refs/pull/" for a
    repository that watches pull requests' heads)."""

    def __init__(self, path: Path, url: str, fetch_timeout: float,
                 stop: Optional[Callable[[], bool]] = None, namespaces: tuple[str, ...] = ("refs/heads/",)) -> None:
        self.path, self.url, self.fetch_timeout, self.stop = path, url, fetch_timeout, stop
        self.namespaces = namespaces
        self.refspecs = tuple(f"+{ns}*:{ns}*" for ns in namespaces)
        self.repo = open_mirror(path)
        self._read: Optional[dict[str, str]] = None  # the mirror's refs as up_to_date read them

    def up_to_date(self) -> bool:
        """True when the remote is a local repository whose branch heads the mirror already
        has: then there is nothing to fetch. Any doubt answers False (fetch as usual)."""
        self._read = None
        source = local_git_dir(self.url)
        if source is None:
            return False
        try:
            theirs = read_refs(source, self.namespaces)
            self._read = read_refs(self.path, self.namespaces)
        except (OSError, RefsUnclear):
            return False
        return theirs == self._read

    def fetch(self, progress: Optional[Callable[[str, int, int], None]] = None) -> None:
        """Bring the mirror's heads up to date; `progress` gets git's progress (a first
        mirror of a large repository from `polyarch-observer once`)."""
        self._read = None
        source = local_git_dir(self.url)
        if source is not None and borrow(self.path, source, self.namespaces):
            return
        if progress is not None:
            code, tail = progress_run(["git", "-C", str(self.path), "fetch", "--progress", "--prune", "--no-tags",
                                       self.url, *self.refspecs], git_progress, progress,
                                      timeout=self.fetch_timeout, env={**os.environ, **GIT_ENV})
            if code == -9:
                raise FetchError(f"git fetch {self.url}: no answer within {self.fetch_timeout:g} s (fetch_timeout)")
            if code != 0:
                raise FetchError(f"git fetch {self.url}: {' '.join(tail[-3:])[-300:] or f'exit status {code}'}")
            return
        try:
            fetch(self.repo, self.url, self.refspecs, self.fetch_timeout, "--prune", "--no-tags", stop=self.stop)
        except GitError as exc:
            raise FetchError(str(exc)) from None

    def heads(self) -> dict[str, str]:
        """Branch -> commit, for refs/heads."""
        return {branch_of(ref): sha for ref, sha in self.refs().items() if ref.startswith(HEADS)}

    def refs(self) -> dict[str, str]:
        """Full ref name -> commit, for the mirrored namespaces (as up_to_date just read
        them, when nothing was fetched since: one read of the mirror per poll, not two)."""
        if self._read is not None:
            return dict(self._read)
        try:
            return read_refs(self.path, self.namespaces)  # our own bare mirror, written only by our fetch
        except (OSError, RefsUnclear):
            pass
        out = self.repo.git.for_each_ref("--format=%(refname) %(objectname)", *self.namespaces)
        return dict(line.split(" ", 1) for line in out.splitlines() if line)

    def update(self, branch: str, cursor: Optional[str], head: str, max_backfill: int) -> BranchUpdate:
        if cursor == head:
            return BranchUpdate(branch, Change.NONE, (), 0)
        if cursor is None:
            return BranchUpdate(branch, Change.FIRST_SIGHTING, (self.info(head),), 0)
        change = Change.NEW_COMMITS if self._is_ancestor(cursor, head) else Change.FORCE_PUSHED
        if change == Change.FORCE_PUSHED and not self._has(cursor):
            # The old history is gone from here too: nothing to tell new commits from old.
            return BranchUpdate(branch, change, (self.info(head),), 0)
        # Force-pushed (or deleted and pushed again elsewhere): the commits of the new
        # history that the old head did not have; the dispatcher ignores any it knows.
        commits = self._log(f"{cursor}..{head}", max_backfill)
        # Fewer than the limit is all of them; only a full list may have left some out
        # (a git process saved on every push: 2-3 ms before the commits are reported).
        total = int(self.repo.git.rev_list("--count", f"{cursor}..{head}")) if len(commits) >= max_backfill \
            else len(commits)
        return BranchUpdate(branch, change, commits, max(0, total - len(commits)))

    def info(self, sha: str) -> CommitInfo:
        return self._log(sha, 1, no_walk=True)[0]

    def _log(self, rev_range: str, limit: int, no_walk: bool = False) -> tuple[CommitInfo, ...]:
        # -n takes the newest `limit`; --reverse then lists them oldest first.
        args = ["--format=%H%x1f%an%x1f%ct%x1f%P%x1f%s", f"-n{limit}", "--topo-order", "--reverse"]
        if no_walk:
            args.append("--no-walk")
        out = self.repo.git.log(*args, rev_range, "--")
        commits = []
        for line in out.splitlines():
            sha, author, ts, parents, subject = (line.split("\x1f", 4) + ["", "", "", ""])[:5]
            commits.append(CommitInfo(sha=sha, author=author[:100], subject=subject[:SUBJECT_LIMIT],
                                      timestamp=int(ts or 0), parent=parents.split(" ")[0]))
        return tuple(commits)

    def _has(self, sha: str) -> bool:
        try:
            self.repo.git.cat_file("-e", f"{sha}^{{commit}}")
            return True
        except git.GitCommandError:
            return False

    def _is_ancestor(self, old: str, new: str) -> bool:
        try:
            self.repo.git.merge_base("--is-ancestor", old, new)
            return True
        except git.GitCommandError:
            return False  # not an ancestor, or `old` no longer exists here at all
