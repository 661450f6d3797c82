"""git for the observer and the runner: one environment, one way to open a mirror, to
fetch with a timeout and to word git's errors; refs read straight from a git folder's
files, and mirrors that borrow a local repository.

A poll cycle over many repositories with nothing new should cost next to nothing. For a
repository on a local path the observer compares the remote's heads with its mirror's,
both read here, and updates the mirror only when they differ.

Updating a mirror of a local repository needs no fetch at all (a fetch is five git
processes: upload-pack, pack-objects, unpack-objects, a connectivity walk, maintenance;
about 25 ms idle and over a second on a loaded 2-core machine). `borrow` points the
mirror at the source's objects through git's alternates file and copies the refs with
one `git update-ref --stdin`. The borrowing is read-only. If the source later loses a
commit to its own `git gc` (a branch deleted or force-pushed, then pruned), the mirror
loses it too; a fetched mirror would have dropped it from its refs by then anyway.
The observer's and the runners' mirrors both use it.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Callable, Optional

import git

from dispatcher.common.errors import PolyarchError
from dispatcher.common.process import popen_exited, stop_group

log = logging.getLogger("polyarch.refs")

# Never wait for a password prompt or an unknown host key: a daemon has no terminal.
# And never run code a repository (or a job that wrote into a mirror) chose: no hooks,
# no fsmonitor command. Settings given this way outrank every config file git reads.
_FORCED_CONFIG = (("core.hooksPath", "/dev/null"), ("core.fsmonitor", "false"))
GIT_ENV = {
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_SSH_COMMAND": os.environ.get("GIT_SSH_COMMAND", "ssh -o BatchMode=yes -o ConnectTimeout=15"),
    "GIT_CONFIG_COUNT": str(len(_FORCED_CONFIG)),
    **{f"GIT_CONFIG_KEY_{i}": key for i, (key, _) in enumerate(_FORCED_CONFIG)},
    **{f"GIT_CONFIG_VALUE_{i}": value for i, (_, value) in enumerate(_FORCED_CONFIG)},
}


class GitError(PolyarchError):
    """A git command failed; the message is one line naming the command and git's words."""


class FetchTimedOut(GitError):
    """The remote gave no answer within fetch_timeout: it hangs, trying again will not help."""


class FetchStopped(GitError):
    """The daemon is stopping: the fetch was abandoned, nothing is wrong with the remote."""


def open_mirror(path: Path) -> git.Repo:
    """The bare mirror at `path` (made if missing), its git commands in GIT_ENV."""
    repo = git.Repo(path) if (path / "HEAD").exists() else git.Repo.init(path, bare=True, mkdir=True)
    repo.git.update_environment(**GIT_ENV)
    return repo


def error_text(exc: git.GitCommandError, limit: int = 300) -> str:
    """git's own words, on one line (its stderr, else its exit status)."""
    text = str(exc.stderr or "").strip().replace("\n", " ")
    return text[-limit:] or f"exit status {exc.status}"


def fetch(repo: git.Repo, url: str, refspecs: tuple[str, ...], timeout: float, *options: str,
          stop: Optional[Callable[[], bool]] = None) -> None:
    """git fetch --quiet `options` url `refspecs` in its own process group, stopped (the
    whole group: ssh, remote helpers) after `timeout` s or as soon as `stop()` says so;
    GitError names the url, and the timeout's setting when it ran out."""
    proc = subprocess.Popen(["git", "--git-dir", str(repo.git_dir), "fetch", "--quiet", *options, url, *refspecs],
                            env={**os.environ, **GIT_ENV}, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                _, err = proc.communicate(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if stop is not None and stop():
                    raise FetchStopped(f"git fetch {url}: stopped (the daemon is stopping)") from None
                if time.monotonic() >= deadline:
                    raise FetchTimedOut(f"git fetch {url}: no answer within {timeout:g} s (fetch_timeout)") from None
    finally:
        if proc.poll() is None:
            stop_group(proc.pid, popen_exited(proc), term_wait=1.0)
            proc.communicate()
    if proc.returncode != 0:
        text = err.decode("utf-8", "replace").strip().replace("\n", " ")[-300:]
        raise GitError(f"git fetch {url}: {text or f'exit status {proc.returncode}'}")


_HEX = set("0123456789abcdef")


def _is_sha(text: str) -> bool:
    return len(text) in (40, 64) and set(text) <= _HEX


def read_heads(git_dir: Path) -> dict[str, str]:
    """branch -> commit for refs/heads/*."""
    prefix = "refs/heads/"
    return {ref[len(prefix):]: sha for ref, sha in read_refs(git_dir, (prefix,)).items()}


def read_refs(git_dir: Path, prefixes: tuple[str, ...]) -> dict[str, str]:
    """full ref name -> object id for the refs under `prefixes` (each ending in "/"):
    packed-refs first, loose ref files override.

    Raises OSError if the folder cannot be read; a ref file caught mid-write (empty or
    partial) raises RefsUnclear, and the caller falls back to asking git."""
    refs: dict[str, str] = {}
    try:
        packed = (git_dir / "packed-refs").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        packed = ""
    for line in packed.splitlines():
        if not line or line[0] in "#^":
            continue
        sha, _, ref = line.partition(" ")
        if ref.startswith(prefixes) and _is_sha(sha):
            refs[ref] = sha
    # Plain strings, not pathlib: the observer reads two ref folders per repository per
    # poll, and at 1,000 repositories pathlib's parsing was most of its idle CPU.
    base = os.fspath(git_dir)
    for prefix in prefixes:
        for folder, _, files in os.walk(os.path.join(base, prefix)):
            ref_folder = prefix + folder[len(base) + 1 + len(prefix):].replace(os.sep, "/")
            ref_folder = ref_folder if ref_folder.endswith("/") else ref_folder + "/"
            for name in files:
                path = os.path.join(folder, name)
                try:
                    with open(path, encoding="utf-8", errors="replace") as f:
                        sha = f.read(100).strip()
                except (FileNotFoundError, IsADirectoryError):
                    continue
                if _is_sha(sha):
                    refs[ref_folder + name] = sha
                elif not name.endswith(".lock"):
                    raise RefsUnclear(f"{path}: not an object id")
    return refs


_PLAIN_REF = re.compile(r"refs/(?:[A-Za-z0-9_+@#-][A-Za-z0-9._+@#-]*/)*[A-Za-z0-9_+@#-][A-Za-z0-9._+@#-]*")


def write_loose_refs(git_dir: Path, refs: dict[str, str]) -> bool:
    """Set refs as git itself does (gitrepository-layout): `<ref>.lock` made exclusively,
    the id written, renamed over `<ref>`; a loose ref outranks packed-refs. False when a
    name is not plainly safe or a ref cannot be written so (a lock held, a folder in the
    way): the caller asks git, which judges and says why."""
    for ref, sha in refs.items():
        if not _PLAIN_REF.fullmatch(ref) or ".." in ref or ref.endswith(".lock") or "/." in ref \
                or not _is_sha(sha):
            return False
        path = git_dir / ref
        lock = path.with_name(path.name + ".lock")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except OSError:
            return False
        try:
            try:
                os.write(fd, f"{sha}\n".encode())
            finally:
                os.close(fd)
            os.replace(lock, path)
        except OSError:  # a full disk, say: git, asked next, says so with the path
            lock.unlink(missing_ok=True)
            return False
    return True


class RefsUnclear(Exception):
    """A ref file did not hold a plain commit id (symbolic, or caught mid-write)."""


def local_git_dir(url: str) -> Optional[Path]:
    """The git folder of a repository on a local path (what a watch can see), else None."""
    if url.startswith("file://"):
        url = url[len("file://"):]
    elif "://" in url:
        return None
    path = Path(url)
    if (path / ".git").is_dir():
        return path / ".git"
    if (path / "HEAD").is_file() and (path / "refs").is_dir():
        return path
    return None


def borrow(mirror: Path, source: Path, prefixes: tuple[str, ...]) -> bool:
    """Make the bare `mirror` see `source`'s objects and hold its refs under `prefixes`.

    False when the refs cannot be read plainly right now (a ref caught mid-write) or
    git refuses the update; the caller then fetches as usual."""
    objects = source / "objects"
    if not objects.is_dir():
        return False
    try:
        wanted = read_refs(source, prefixes)
        have = read_refs(mirror, prefixes)
    except (OSError, RefsUnclear):
        return False
    alternates = mirror / "objects" / "info" / "alternates"
    line = f"{objects.resolve()}\n"
    if not alternates.is_file() or alternates.read_text() != line:
        alternates.parent.mkdir(parents=True, exist_ok=True)
        alternates.write_text(line)
    changed = {ref: sha for ref, sha in wanted.items() if have.get(ref) != sha}
    gone = [ref for ref in have if ref not in wanted]
    if not gone and write_loose_refs(mirror, changed):
        return True  # the usual case (a branch moved), without a git process: ~3 ms a job
    commands = [f"update {ref} {sha}" for ref, sha in changed.items()] + [f"delete {ref}" for ref in gone]
    if commands:
        done = subprocess.run(["git", "--git-dir", str(mirror), "update-ref", "--stdin"], env={**os.environ, **GIT_ENV},
                              input="\n".join(commands) + "\n", capture_output=True, text=True)
        if done.returncode != 0:
            log.warning("git update-ref in %s failed (%s); fetching instead", mirror,
                        done.stderr.strip().replace("\n", " ")[-300:])
            return False
    return True
