"""Where everything lives under test_results/: the one place that spells a file's name or
builds a path there (result files, attempt logs, summaries and the dashboard's pages).

    <repo>/<commit>/<arch>.json              the commit point of one result
    <repo>/<commit>/<arch>.log               the job's output
    <repo>/<commit>/<arch>.junit.xml         when the test command left JUnit XML
    <repo>/<commit>/<arch>.attempt<N>.log    an earlier attempt's output (retry_failed)
    <repo>/<commit>/<arch>.log.part          a running job's output so far (the live log)
    <repo>/<commit>/summary.json             every arch of the commit
    <repo>/<commit>/index.html               the commit's page
    <repo>/index.html, <repo>/page-<k>.html  the repository's pages
    index.html                               every repository

`name` gives a file's name inside its folder (the result files and the pages link to
each other by it); `path` the full path, with every part validated, so nothing can land
outside the results folder.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Optional

from dispatcher.common.errors import InvalidName
from dispatcher.common.names import check_commit, check_repo, parse_arch


class File(enum.Enum):
    RESULT = "result"
    LOG = "log"
    JUNIT = "junit"
    ATTEMPT_LOG = "attempt-log"
    LIVE_LOG = "live-log"
    SUMMARY = "summary"
    COMMIT_PAGE = "commit-page"
    REPO_PAGE = "repo-page"  # page None: the front page; k: the stable page k
    INDEX = "index"


_PER_ARCH = {File.RESULT: "{arch}.json", File.LOG: "{arch}.log", File.JUNIT: "{arch}.junit.xml",
             File.ATTEMPT_LOG: "{arch}.attempt{n}.log", File.LIVE_LOG: "{arch}.log.part"}


def name(file: File, arch: str = "", n: Optional[int] = None) -> str:
    """The file's name in its folder, as links between the files spell it."""
    if file in _PER_ARCH:
        if file is File.ATTEMPT_LOG and n is None:
            raise ValueError("an attempt log needs its attempt number")
        return _PER_ARCH[file].format(arch=parse_arch(arch).value, n=n)
    if file is File.SUMMARY:
        return "summary.json"
    if file is File.REPO_PAGE and n is not None:
        return f"page-{int(n)}.html"
    return "index.html"


def path(root: Path, file: File, repo: str = "", commit: str = "", arch: str = "",
         n: Optional[int] = None) -> Path:
    """The file's path under `root`; raises InvalidName for any part that would escape it."""
    root = Path(root).absolute()
    if file is File.INDEX:
        return root / name(file)
    folder = root / check_repo(repo)
    if file is not File.REPO_PAGE:
        folder = folder / check_commit(commit)
    # Belt and braces: the name patterns already forbid '/' and '..'.
    depth = 1 if file is File.REPO_PAGE else 2
    resolved = folder.resolve()
    if resolved.parents[depth - 1] != root.resolve():
        raise InvalidName(f"result path for {repo!r}/{commit!r} escapes {root}")
    return folder / name(file, arch, n)


def commit_folder(root: Path, repo: str, commit: str) -> Path:
    return path(root, File.SUMMARY, repo, commit).parent
