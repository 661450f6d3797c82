"""The HTML dashboard in test_results/: which pages a new result changes, and writing them.

    test_results/index.html                   every repository, its newest commits
    test_results/<repo>/index.html            the repository's newest PER_PAGE commits
    test_results/<repo>/page-<k>.html         older commits, in stable pages of PER_PAGE
    test_results/<repo>/<commit>/index.html   one commit: archs, logs, failing tests

Work that starts (a commit queued, a job leased) rewrites the same pages, so a commit
shows on the dashboard as soon as it is dispatched, with its queued and running cells;
a page with pending work reloads itself. A result rewrites only its commit's page, the page that holds that commit, the
repository's front page and the index: a handful of files whatever the history's size.
Page k holds the commits numbered k*PER_PAGE .. (k+1)*PER_PAGE-1 from the oldest, so a
page, once full, never changes its set of commits. Pages are derived data (they can
always be made again from the state), so they are written
atomically but not fsynced.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator, Iterable, Sequence

from dispatcher.common.files import atomic_write
from dispatcher.common.names import check_repo
from dispatcher.hub.reads import commit_lines, summary_of
from dispatcher.hub.store import Store
from dispatcher.results.layout import File, path
from dispatcher.views.html import commit_page, failing_at_heads, grid, legend, page, pager, repo_section
from dispatcher.views.records import CommitLine

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
                ordinal = self.store.queries.ordinal(repo, sha)
                if ordinal is not None:
                    pages.add(ordinal // PER_PAGE)
            total = self.store.queries.commit_count(repo)
            for k in pages:
                self._page(repo, k, total, now)
            self._repo_front(repo, total, now)
        self._index(now)

    def rebuild(self) -> None:
        """Front pages and the index, as at dispatcher start (config may have changed)."""
        now = time.time()
        for repo, _ in self.repos:
            self._repo_front(repo, self.store.queries.commit_count(repo), now)
        self._index(now)

    def rebuild_all(self) -> int:
        """Every page of every repository (after an upgrade, or by hand); returns how many."""
        return sum(self.rebuild_steps())

    def rebuild_steps(self) -> Iterator[int]:
        """rebuild_all one page of commits at a time (yields the pages each step wrote),
        so that the publisher can write results between two steps: 1,000,000 results
        are minutes of pages."""
        now = time.time()
        for repo, _ in self.repos:
            total = self.store.queries.commit_count(repo)
            self._repo_front(repo, total, now)
            yield 1
            for k in range((total + PER_PAGE - 1) // PER_PAGE - 1, -1, -1):  # the newest first
                lines = self._page(repo, k, total, now)
                for line in lines:
                    self._write_commit(line, now)
                yield 1 + len(lines)
        self._index(now)
        yield 1

    # --- pages -----------------------------------------------------------------------

    def _lines(self, repo: str, first: int, count: int, now: float) -> list[CommitLine]:
        return commit_lines(self.store.queries.page(repo, first, count), now, self.store)

    def _archs_of(self, repo: str, lines: Sequence[CommitLine]) -> list[str]:
        configured = list(self._archs.get(repo, ()))
        seen = sorted({c.arch for line in lines for c in line.cells} - set(configured))
        return configured + seen

    def _index(self, now: float) -> None:
        sections = []
        pending = False
        for repo, _ in self.repos:
            total = self.store.queries.commit_count(repo)
            lines = self._lines(repo, max(0, total - INDEX_COMMITS), INDEX_COMMITS, now)
            pending = pending or any(line.pending for line in lines)
            sections.append(repo_section(repo, lines, self._archs_of(repo, lines), total, f"{repo}/"))
        body = "<h1>polyarch</h1>" + legend() + "".join(sections)
        atomic_write(path(self.root, File.INDEX), page("polyarch", body, now, pending), durable=False)

    def _repo_front(self, repo: str, total: int, now: float) -> None:
        lines = self._lines(repo, max(0, total - PER_PAGE), PER_PAGE, now)
        pages = (total + PER_PAGE - 1) // PER_PAGE
        body = (f'<p><a href="../index.html">all repositories</a></p><h1>{check_repo(repo)}</h1>'
                f'<p class="muted">{total} commit(s); the newest {len(lines)} below.</p>'
                + failing_at_heads(self.store.history.failing_at_heads(repo)) + legend()
                + grid(lines, self._archs_of(repo, lines), "") + pager(pages, None, PER_PAGE, total))
        self._write(path(self.root, File.REPO_PAGE, repo),
                    page(f"polyarch: {repo}", body, now, any(line.pending for line in lines)))

    def _page(self, repo: str, k: int, total: int, now: float) -> list[CommitLine]:
        lines = self._lines(repo, k * PER_PAGE, PER_PAGE, now)
        pages = (total + PER_PAGE - 1) // PER_PAGE
        first, last = k * PER_PAGE + 1, min(total, (k + 1) * PER_PAGE)
        body = (f'<p><a href="../index.html">all repositories</a> › <a href="index.html">{repo}</a></p>'
                f"<h1>{repo}: commits {first}–{last}</h1>" + legend()
                + grid(lines, self._archs_of(repo, lines), "")
                + pager(pages, k, PER_PAGE, total))
        self._write(path(self.root, File.REPO_PAGE, repo, n=k),
                    page(f"polyarch: {repo} {first}–{last}", body, now, any(line.pending for line in lines)))
        return lines

    def _commit(self, repo: str, sha: str, now: float) -> None:
        jobs = self.store.queries.jobs(repo, sha, 1)
        for line in commit_lines((j for j in jobs if j.sha == sha), now, self.store):
            self._write_commit(line, now)

    def _write_commit(self, line: CommitLine, now: float) -> None:
        summary = summary_of(self.store, line.repo, line.commit, line.branch)
        body = commit_page(line, summary)
        self._write(path(self.root, File.COMMIT_PAGE, line.repo, line.commit),
                    page(f"polyarch: {line.repo} {line.commit[:12]}", body, now, line.pending))

    def _write(self, target: Path, data: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, data, durable=False)
