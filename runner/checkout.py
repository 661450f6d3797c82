"""Mirrors and clean checkouts on the runner: fetch only what is missing."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import git

from dispatcher.errors import PolyarchError
from dispatcher.names import check_repo

log = logging.getLogger("polyarch.runner")

FETCH_TRIES = 3
FETCH_TIMEOUT = 600
FETCH_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")


class CheckoutError(PolyarchError):
    """The commit could not be fetched or checked out; the job ends as `error`."""


class Mirrors:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _mirror(self, repo: str) -> git.Repo:
        path = self.root / f"{check_repo(repo)}.git"
        if (path / "HEAD").exists():
            return git.Repo(path)
        return git.Repo.init(path, bare=True, mkdir=True)

    def checkout(self, repo: str, url: str, commit: str, dest: Path) -> None:
        """A clean worktree of exactly `commit` at `dest`, fetching it first if missing."""
        mirror = self._mirror(repo)
        if not self._has(mirror, commit):
            self._fetch(mirror, url)
            if not self._has(mirror, commit):
                raise CheckoutError(f"commit {commit} is not on any branch or tag of {url} (force-pushed away?)")
        try:
            mirror.git.worktree("add", "--detach", "--force", str(dest), commit)
        except git.GitCommandError as exc:
            raise CheckoutError(f"git worktree add {commit} failed: {_git_error(exc)}") from None

    @staticmethod
    def _fetch(mirror: git.Repo, url: str) -> None:
        # A few quick tries: a lab network blip should not turn into an `error` result.
        for attempt in range(FETCH_TRIES):
            try:
                mirror.git.fetch("--quiet", "--no-tags", "--prune", url, *FETCH_REFSPECS,
                                 kill_after_timeout=FETCH_TIMEOUT)
                return
            except git.GitCommandError as exc:
                if attempt == FETCH_TRIES - 1:
                    raise CheckoutError(f"git fetch {url} failed: {_git_error(exc)}") from None
                log.warning("git fetch %s failed (%s); trying again", url, _git_error(exc))
                time.sleep(0.5 * 2 ** attempt)

    def remove(self, repo: str, dest: Path) -> None:
        shutil.rmtree(dest, ignore_errors=True)
        try:
            self._mirror(repo).git.worktree("prune")
        except git.GitCommandError as exc:
            log.warning("git worktree prune failed for %s: %s", repo, _git_error(exc))

    def prune_all(self) -> None:
        """After a crash: forget the worktrees whose folders were removed."""
        if not self.root.is_dir():
            return
        for path in self.root.glob("*.git"):
            try:
                git.Repo(path).git.worktree("prune")
            except (git.GitCommandError, git.InvalidGitRepositoryError) as exc:
                log.warning("cannot prune worktrees of %s: %s", path, exc)

    @staticmethod
    def _has(mirror: git.Repo, commit: str) -> bool:
        try:
            mirror.git.cat_file("-e", f"{commit}^{{commit}}")
            return True
        except git.GitCommandError:
            return False


def _git_error(exc: git.GitCommandError) -> str:
    text = str(exc.stderr or exc).strip().replace("\n", " ")
    return text[-300:]
