"""Mirrors and clean checkouts on the runner: fetch only what is missing.

A repository on a local path (the lab's own checkout, or the demo's) is not fetched at
all: the mirror borrows its objects and copies its branch and tag refs (common/git.py
`borrow`), so tests that run `git describe` see what a fetch gave them. A URL that is
not a local git folder on this host (a lab host where the path does not exist) is
fetched.

Each repository has one worktree per runner and slot, reused from job to job: `git checkout
--force` of the next commit rewrites only the files that differ (a fresh `git worktree
add` wrote them all and cost two to three times as much), and after each job `git clean
-ffdx` removes everything the test left, ignored files included. Any doubt about a
worktree's state (a failed clean, a crash) and it is deleted and made afresh, so every
job still starts from exactly the commit's files. There are two slots: a job leased
ahead (hub/ahead.py) is checked out in the one the running job does not use.

The worktree belongs to the job user while a job runs, so nothing in it is trusted: its
`.git` file (which a job may point at a git folder of its own, with a config that runs
commands) is rewritten before each use, and the runner's git is always told its git
folder and work tree (GIT_DIR, GIT_WORK_TREE) instead of finding them from there.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import git

from dispatcher.common.names import check_repo
from dispatcher.wire.protocol import CommitInfo
from dispatcher.common.git import (GIT_ENV, FetchStopped, FetchTimedOut, GitError, borrow, error_text, fetch, local_git_dir,
                                   open_mirror)

log = logging.getLogger("polyarch.runner")

FETCH_TRIES = 3
FETCH_REFSPECS = ("+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*")
REF_PREFIXES = ("refs/heads/", "refs/tags/")


class CheckoutError(GitError):
    """The commit could not be fetched or checked out; the job ends as `error`."""


class Mirrors:
    def __init__(self, root: Path, checkouts: Path, fetch_timeout: float = 120.0,
                 stop: Optional[Callable[[], bool]] = None) -> None:
        self.root = root
        self.checkouts = checkouts
        # Slot 0, and slot 1 for a job checked out ahead while another runs in slot 0 (or
        # the other way round): a folder of its own, so no repository name can meet it.
        self.slots = (checkouts, checkouts.with_name(checkouts.name + "-ahead"))
        self.fetch_timeout = fetch_timeout
        self.stop = stop  # the runner's stop: a fetch in progress is abandoned
        self.quarantine = checkouts.parent / "quarantine"  # what could not be deleted
        self._fresh: dict[tuple[str, int], Path] = {}  # (repo, slot) -> a worktree path beside one stuck for good
        self._admin: dict[tuple[str, int], Path] = {}  # (repo, slot) -> its worktree's folder in the mirror

    def _dest(self, repo: str, slot: int = 0) -> Path:
        return self._fresh.get((repo, slot)) or self.slots[slot] / check_repo(repo)

    def mirror_path(self, repo: str) -> Path:
        return self.root / f"{check_repo(repo)}.git"

    def _mirror(self, repo: str) -> git.Repo:
        return open_mirror(self.mirror_path(repo))

    def _git_env(self, repo: str, slot: int = 0) -> Optional[dict[str, str]]:
        """The environment for git in the repository's worktree, with its `.git` file
        restored; None when there is no worktree this process made."""
        dest, admin = self._dest(repo, slot), self._admin.get((repo, slot))
        if admin is None or not admin.is_dir() or not dest.is_dir():
            return None
        dot_git = dest / ".git"
        if dot_git.is_dir() and not dot_git.is_symlink():
            shutil.rmtree(dot_git)
        else:
            dot_git.unlink(missing_ok=True)
        dot_git.write_text(f"gitdir: {admin}\n")
        return {**os.environ, **GIT_ENV, "GIT_DIR": str(admin), "GIT_WORK_TREE": str(dest)}

    def checkout(self, repo: str, url: str, commit: str, slot: int = 0) -> Path:
        """The repository's worktree in `slot`, holding exactly `commit`; fetches it first if missing."""
        mirror = self._mirror(repo)
        source = local_git_dir(url)
        borrowed = source is not None and borrow(Path(mirror.git_dir), source, REF_PREFIXES)
        # A local source that could not be borrowed is fetched even when its objects show
        # through the alternates file: the fetch is what brings its refs (tags) up to date.
        if not borrowed and (source is not None or not self._has(mirror, commit)):
            self._fetch(mirror, url)
            if not self._has(mirror, commit):
                self._fetch_commit(mirror, url, commit)
            if not self._has(mirror, commit):
                raise CheckoutError(f"commit {commit} is not on any branch or tag of {url}, nor fetchable by "
                                    "its id (force-pushed away?)")
        dest = self._dest(repo, slot)
        env = self._git_env(repo, slot)
        if env is not None:
            done = subprocess.run(["git", "checkout", "--detach", "--force", "--quiet", commit], cwd=dest, env=env,
                                  stdin=subprocess.DEVNULL, capture_output=True)
            if done.returncode == 0:
                return dest
            log.warning("reusing the worktree %s failed (%s); making it afresh", dest,
                        done.stderr.decode(errors="replace").strip()[-300:])
        if dest.exists():  # not reusable (a test may have deleted its .git): start over
            self.discard(repo, slot)
            dest = self._dest(repo, slot)
        try:
            mirror.git.worktree("add", "--detach", "--force", str(dest), commit)
        except git.GitCommandError as exc:
            if borrowed and not self._has(mirror, commit):
                raise CheckoutError(f"commit {commit} is not in {url} (force-pushed away and pruned?)") from None
            raise CheckoutError(f"git worktree add {commit} failed: {error_text(exc)}") from None
        admin = _worktree_admin(dest, self.mirror_path(repo))  # just made by git: trusted
        if admin is not None:
            self._admin[(repo, slot)] = admin
        return dest

    def describe(self, repo: str, commit: str) -> Optional[CommitInfo]:
        """Author, date and subject of a commit the mirror has (for one queued by hand or
        by the gate, which the dispatcher knows by id only); None if git cannot say."""
        try:
            out = self._mirror(repo).git.log("-1", "--no-walk", "--format=%an%x1f%ct%x1f%P%x1f%s", commit, "--",
                                            stdout_as_string=False)
        except git.GitCommandError as exc:
            log.warning("cannot describe %s %s: %s", repo, commit[:12], error_text(exc))
            return None
        # Bytes are bytes: an author name that is not UTF-8 still travels, replaced.
        author, _, rest = out.decode("utf-8", "replace").strip().partition("\x1f")
        stamp, _, rest = rest.partition("\x1f")
        parents, _, subject = rest.partition("\x1f")
        return CommitInfo(commit, author[:100], subject[:200], int(stamp) if stamp.isdigit() else 0,
                          parents.split(" ")[0])

    def clean(self, repo: str, slot: int = 0) -> None:
        """After a job: remove all the test left, so the next checkout starts clean."""
        self.start_clean(repo, slot).finish()

    def start_clean(self, repo: str, slot: int = 0) -> "Cleaning":
        """`clean`, started in the background: the runner delivers the result and asks for
        its next job meanwhile, and finishes it before the next checkout in that slot."""
        dest = self._dest(repo, slot)
        env = self._git_env(repo, slot) if dest.exists() else None
        if env is None:
            if dest.exists():
                self.discard(repo, slot)
            return Cleaning(self, repo, slot, None)
        proc = subprocess.Popen(["git", "clean", "-ffdqx"], cwd=dest, env=env,
                                stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return Cleaning(self, repo, slot, proc)

    def _fetch(self, mirror: git.Repo, url: str) -> None:
        # A few quick tries: a lab network blip should not turn into an `error` result. A
        # fetch that times out is not tried again: the remote hangs, it did not blip.
        for attempt in range(FETCH_TRIES):
            try:
                fetch(mirror, url, FETCH_REFSPECS, self.fetch_timeout, "--no-tags", "--prune", stop=self.stop)
                return
            except FetchStopped:
                raise
            except GitError as exc:
                if attempt == FETCH_TRIES - 1 or isinstance(exc, FetchTimedOut):
                    raise CheckoutError(str(exc)) from None
                log.warning("%s; trying again", exc)
                time.sleep(0.5 * 2 ** attempt)

    def _fetch_commit(self, mirror: git.Repo, url: str, commit: str) -> None:
        """A commit on no branch or tag: a pull request's, submitted by `polyarch-dispatcher
        wait`. Hosts (and git's protocol v2) serve any commit reachable from some ref,
        refs/pull/* included, when asked by id."""
        try:
            fetch(mirror, url, (commit,), self.fetch_timeout, "--no-tags", stop=self.stop)
        except FetchStopped:
            raise
        except GitError as exc:
            log.warning("%s (commit %s)", exc, commit[:12])

    def discard(self, repo: str, slot: int = 0) -> None:
        """Delete a worktree and its entry in the mirror's worktrees/ folder.

        This is what `git worktree prune` would do for it, without a git process;
        prune_all at start catches anything this misses."""
        dest = self._dest(repo, slot)
        admin = self._admin.pop((repo, slot), None)
        if not self._remove(dest):
            # Stuck even for root (chattr +i on the folder itself): the next job gets a
            # fresh worktree beside it, never this one.
            n = 1
            while (self.slots[slot] / f"{check_repo(repo)}.{n}").exists():
                n += 1
            self._fresh[(repo, slot)] = self.slots[slot] / f"{check_repo(repo)}.{n}"
        if admin is not None:
            shutil.rmtree(admin, ignore_errors=True)

    def _remove(self, path: Path) -> bool:
        """Delete a worktree; what cannot be deleted (a test's `chattr +i`) is moved aside
        into quarantine/ with a warning. False when it cannot even be moved."""
        shutil.rmtree(path, ignore_errors=True)
        if not path.exists():
            return True
        aside = self.quarantine / f"{path.name}-{time.time_ns()}"
        try:
            self.quarantine.mkdir(parents=True, exist_ok=True)
            path.rename(aside)
            log.warning("could not delete %s (a job left files even root cannot delete, e.g. chattr +i); moved it "
                        "to %s: remove it by hand", path, aside)
            return True
        except OSError as exc:
            log.error("cannot delete or move %s (%s); the next job gets a fresh worktree beside it", path, exc)
            return False

    def prune_all(self) -> None:
        """At start: drop every worktree (a crash may have left one dirty) and forget them."""
        for checkouts in self.slots:
            if checkouts.is_dir():
                for child in checkouts.iterdir():
                    self._remove(child)
        if not self.root.is_dir():
            return
        for path in self.root.glob("*.git"):
            try:
                open_mirror(path).git.worktree("prune")
            except (git.GitCommandError, git.InvalidGitRepositoryError) as exc:
                log.warning("cannot prune worktrees of %s: %s", path, exc)

    @staticmethod
    def _has(mirror: git.Repo, commit: str) -> bool:
        try:
            mirror.git.cat_file("-e", f"{commit}^{{commit}}")
            return True
        except git.GitCommandError:
            return False


class Cleaning:
    """A `git clean` under way in a repository's worktree."""

    def __init__(self, mirrors: Mirrors, repo: str, slot: int, proc: Optional[subprocess.Popen[bytes]]) -> None:
        self.mirrors, self.repo, self.slot, self.proc = mirrors, repo, slot, proc

    def finish(self) -> None:
        if self.proc is None:
            return
        _, err = self.proc.communicate()
        if self.proc.returncode != 0:
            log.warning("git clean of %s failed (%s); removing the worktree", self.repo,
                        err.decode(errors="replace").strip()[-300:])
            self.mirrors.discard(self.repo, self.slot)
        self.proc = None


def _worktree_admin(dest: Path, mirror: Path) -> Optional[Path]:
    """The mirror's worktrees/<name> folder that `dest/.git` points to, if it is one."""
    try:
        text = (dest / ".git").read_text()
    except OSError:
        return None
    if not text.startswith("gitdir: "):
        return None
    admin = Path(text[len("gitdir: "):].strip())
    return admin if admin.parent.resolve() == (mirror / "worktrees").resolve() else None
