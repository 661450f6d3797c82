"""The HTML dashboard in test_results/: which pages a new result changes, and writing them.

    test_results/index.html                   every repository, its newest commits
    test_results/<repo>/index.html            the repository's newest PER_PAGE commits
    test_results/<repo>/page-<k>.html         older commits, in stable pages of PER_PAGE
    test_results/<repo>/<commit>/index.html   one commit: archs, logs, failing tests

A result rewrites only its commit's page, the page that holds that commit, the
repository's front page and the index: a handful of files whatever the history's size.
Page k holds the commits numbered k*PER_PAGE .. (k+1)*PER_PAGE-1 from the oldest, so a
page, once full, never changes its set of commits. Pages are derived data (they can
always be made again from the state and the result files), so they are written
atomically but not fsynced.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Iterable, Sequence

from .fsutil import atomic_write
from .names import check_commit, check_repo
from .pages import ArchDetail, Details, commit_page, grid, legend, page, pager, repo_section
from .status import CommitLine, commit_lines
from .store import Store

log = logging.getLogger("polyarch.dashboard")

PER_PAGE = 100
INDEX_COMMITS = 15  # per repository on the front page


class Dashboard:
    def __init__(self, root: Path, store: Store, repos: Sequence[tuple[str, Sequence[str]]]) -> None:
        """`repos`: (name, configured architectures) of each repository, in config order."""
        self.root = Path(root)
        self.store = store
        self.repos = list(repos)
        self._archs = dict(self.repos)

    def update(self, touched: Iterable[tuple[str, str]]) -> None:
        """Rewrite the pages that results of these (repo, commit) pairs change."""
        now = time.time()
        by_repo: dict[str, set[str]] = {}
        for repo, sha in touched:
            by_repo.setdefault(repo, set()).add(sha)
        for repo, shas in by_repo.items():
            pages = set()
            for sha in shas:
                self._commit(repo, sha, now)
                ordinal = self.store.ordinal(repo, sha)
                if ordinal is not None:
                    pages.add(ordinal // PER_PAGE)
            total = self.store.commit_count(repo)
            for k in pages:
                self._page(repo, k, total, now)
            self._repo_front(repo, total, now)
        self._index(now)

    def rebuild(self) -> None:
        """Front pages and the index, as at dispatcher start (config may have changed)."""
        now = time.time()
        for repo, _ in self.repos:
            self._repo_front(repo, self.store.commit_count(repo), now)
        self._index(now)

    def rebuild_all(self) -> int:
        """Every page of every repository (after an upgrade, or by hand); returns how many."""
        written = 0
        now = time.time()
        for repo, _ in self.repos:
            total = self.store.commit_count(repo)
            for k in range((total + PER_PAGE - 1) // PER_PAGE):
                lines = self._page(repo, k, total, now)
                for line in lines:
                    self._write_commit(line, now)
                written += 1 + len(lines)
            self._repo_front(repo, total, now)
            written += 1
        self._index(now)
        return written + 1

    # --- pages -----------------------------------------------------------------------

    def _lines(self, repo: str, first: int, count: int, now: float) -> list[CommitLine]:
        return commit_lines(self.store.page(repo, first, count), now)

    def _archs_of(self, repo: str, lines: Sequence[CommitLine]) -> list[str]:
        configured = list(self._archs.get(repo, ()))
        seen = sorted({c.arch for line in lines for c in line.cells} - set(configured))
        return configured + seen

    def _details(self, lines: Sequence[CommitLine]) -> Details:
        out: Details = {}
        for line in lines:
            folder = self.root / line.repo / line.commit
            for c in line.cells:
                if not c.final:
                    continue
                try:
                    data = json.loads((folder / f"{c.arch}.json").read_bytes())
                except (OSError, ValueError):
                    continue  # not written yet: the cell shows the state without links
                if isinstance(data, dict):
                    out[(line.repo, line.commit, c.arch)] = ArchDetail.from_result(data)
        return out

    def _index(self, now: float) -> None:
        sections = []
        for repo, _ in self.repos:
            total = self.store.commit_count(repo)
            lines = self._lines(repo, max(0, total - INDEX_COMMITS), INDEX_COMMITS, now)
            sections.append(repo_section(repo, lines, self._archs_of(repo, lines), self._details(lines), total,
                                         f"{repo}/"))
        body = "<h1>polyarch</h1>" + legend() + "".join(sections)
        atomic_write(self.root / "index.html", page("polyarch", body, now), durable=False)

    def _repo_front(self, repo: str, total: int, now: float) -> None:
        lines = self._lines(repo, max(0, total - PER_PAGE), PER_PAGE, now)
        pages = (total + PER_PAGE - 1) // PER_PAGE
        body = (f'<p><a href="../index.html">all repositories</a></p><h1>{check_repo(repo)}</h1>'
                f'<p class="muted">{total} commit(s); the newest {len(lines)} below.</p>' + legend()
                + grid(lines, self._archs_of(repo, lines), self._details(lines), "") + pager(pages, None, PER_PAGE,
                                                                                          total))
        self._write(self.root / repo / "index.html", page(f"polyarch: {repo}", body, now))

    def _page(self, repo: str, k: int, total: int, now: float) -> list[CommitLine]:
        lines = self._lines(repo, k * PER_PAGE, PER_PAGE, now)
        pages = (total + PER_PAGE - 1) // PER_PAGE
        first, last = k * PER_PAGE + 1, min(total, (k + 1) * PER_PAGE)
        body = (f'<p><a href="../index.html">all repositories</a> › <a href="index.html">{repo}</a></p>'
                f"<h1>{repo}: commits {first}–{last}</h1>" + legend()
                + grid(lines, self._archs_of(repo, lines), self._details(lines), "")
                + pager(pages, k, PER_PAGE, total))
        self._write(self.root / repo / f"page-{k}.html", page(f"polyarch: {repo} {first}–{last}", body, now))
        return lines

    def _commit(self, repo: str, sha: str, now: float) -> None:
        jobs = self.store.jobs(repo, sha, 1)
        for line in commit_lines((j for j in jobs if j.sha == sha), now):
            self._write_commit(line, now)

    def _write_commit(self, line: CommitLine, now: float) -> None:
        folder = self.root / check_repo(line.repo) / check_commit(line.commit)
        try:
            summary = json.loads((folder / "summary.json").read_bytes())
        except (OSError, ValueError):
            summary = {}
        body = commit_page(line, self._details([line]), summary if isinstance(summary, dict) else {})
        self._write(folder / "index.html", page(f"polyarch: {line.repo} {line.commit[:12]}", body, now))

    def _write(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, data, durable=False)
