"""The HTML dashboard in test_results/, read by a real browser (headless Chromium).

The browser test runs the whole system (observer, dispatcher, a native runner and an
arm64 runner under qemu-user) and then does what a person does: open index.html from
disk, find the commit that fails on one architecture, open it, open its log. The
screenshots it takes are the ones in docs/ (set POLYARCH_SCREENSHOTS=docs to refresh).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from browser import Browser, Node, path_of
from conftest import ROOTFS_ARM64, Polyarch, require_emulated_arm64, wait_for
from dispatcher.hub.dashboard import INDEX_COMMITS, PER_PAGE, Dashboard
from dispatcher.common.states import Status
from dispatcher.wire.protocol import CommitInfo
from dispatcher.hub.reads import record_of, summary_of
from dispatcher.hub.store import JobResult
from dispatcher.results.writing import write_result
from dispatcher.hub.store import RunnerRow, Store
from test_emulated import X86_ONLY


def _rows(dom: Node) -> list[Node]:
    return [tr for tr in dom.iter("tr") if "data-commit" in tr.attrs]


def _row(dom: Node, sha: str) -> Node:
    [row] = [tr for tr in _rows(dom) if tr.attrs["data-commit"] == sha]
    return row


def _cell(row: Node, arch: str) -> Node:
    [cell] = [td for td in row.iter("td") if td.attrs.get("data-arch") == arch]
    return cell


def _link(node: Node, text: str) -> Node:
    links = [a for a in node.iter("a") if text in a.text]
    assert links, f"no link {text!r} in {node.text[:300]!r}"
    return links[0]


@pytest.mark.daemons
@pytest.mark.timeout(600)
def test_a_person_finds_the_arch_specific_failure_and_its_log_in_two_clicks(polyarch: Polyarch,
                                                                              tmp_path: Path) -> None:
    require_emulated_arm64()
    browser = Browser()
    polyarch.write_config(archs=("amd64", "arm64"), heartbeat_timeout=20, timeout=120)
    polyarch.dispatcher()
    polyarch.runner("native")
    polyarch.runner("emulated", "--arch", "arm64", "--rootfs", str(ROOTFS_ARM64))
    polyarch.observer()
    # Pushed one at a time, as people do (on a first sighting only the head is queued).
    shas = []
    for script, message in (("echo all good", "calc: a first version"),
                            ("echo broken everywhere; exit 1", "calc: refactor sub (oops)"),
                            (X86_ONLY, "calc: use an x86-only shortcut")):
        shas.append(polyarch.repo.commit(script, message=message))
        polyarch.wait_results(shas[-1:], "arm64", timeout=300)
        polyarch.wait_results(shas[-1:], "amd64", timeout=60)
    good, broken, bad = shas
    index = polyarch.results / "index.html"
    commit_page = polyarch.results / "demo" / bad / "index.html"
    wait_for(lambda: commit_page.exists() and 'class="st failed"' in commit_page.read_text()
             and all(f'st {s}"' not in commit_page.read_text() for s in ("pending", "running", "queued")),
             what="the dashboard to show both results")

    # The front page: the grid, the failing commit marked as failing on arm64 only.
    url = index.as_uri()
    dom = browser.load(url)
    assert {r.attrs["data-commit"] for r in _rows(dom)} >= {bad}
    row = _row(dom, bad)
    assert "archspecific" in row.classes() and "arm64 only" in row.text
    assert "passed" in _cell(row, "amd64").classes() and "failed" in _cell(row, "arm64").classes()
    assert "2/2 tests" in _cell(row, "amd64").text and "1/2 tests" in _cell(row, "arm64").text

    # Click 1: the commit. Its page names the failing test under arm64.
    commit_url = browser.follow(url, _link(row, bad[:10]))
    assert path_of(commit_url) == commit_page
    page = browser.load(commit_url)
    [failing] = [h for h in page.iter("h3") if h.attrs.get("id") == "failing-arm64"]
    assert "calc::test_x86" in page.text and "fails on arm64, passes on amd64" in page.text

    # Click 2: the log, which the browser shows as text.
    log_url = browser.follow(commit_url, _link(failing, "log"))
    log = browser.load(log_url)
    assert "machine aarch64" in log.text

    # Screenshots, as a person sees them (committed to docs/ from a run with the env set).
    shots = Path(os.environ.get("POLYARCH_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    browser.screenshot(url, shots / "dashboard-index.png", "1280,520")
    browser.screenshot(commit_url, shots / "dashboard-commit.png", "1280,640")
    assert all("passed" in _cell(_row(dom, good), arch).classes() for arch in ("amd64", "arm64"))
    assert "archspecific" not in _row(dom, broken).classes() and "failed" in _cell(_row(dom, broken), "amd64").classes()


def _finish(store: Store, runner: RunnerRow, results: Path, status: Status) -> tuple[str, str]:
    job = store.jobs.claim(runner)
    done = store.jobs.record_result(job.lease_id, JobResult(status, 0 if status == Status.PASSED else 1, time.time() - 1,
                                                       time.time(), b"log\n"))
    write_result(results, record_of(done), b"log\n", b"", summary_of(store, done.repo, done.sha, done.branch))
    store.jobs.mark_published(done.id)
    return done.repo, done.sha


def test_ten_thousand_commits_stay_paginated_and_a_result_rewrites_a_few_pages(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite3")
    results = tmp_path / "test_results"
    shas = [f"{i:040x}" for i in range(10_000)]
    store.jobs.enqueue("big", "main", [CommitInfo(s, "Dev", f"change {i}") for i, s in enumerate(shas)], ["amd64"])
    runner = RunnerRow("r1", "amd64", "host", "x86_64", "0", False, "", 0.0, 0.0)
    touched = _finish(store, runner, results, Status.FAILED)  # the oldest commit
    dashboard = Dashboard(results, store, [("big", ["amd64"])])
    dashboard.update([touched])
    written = sorted(p.relative_to(results).as_posix() for p in results.rglob("*.html"))
    assert written == [f"big/{shas[0]}/index.html", "big/index.html", "big/page-0.html", "index.html"]
    front = (results / "big" / "index.html").read_text()
    assert front.count("data-commit=") == PER_PAGE and shas[-1] in front and shas[0] not in front
    assert front.count('href="page-') == 10_000 // PER_PAGE
    assert (results / "index.html").read_text().count("data-commit=") == INDEX_COMMITS
    oldest = (results / "big" / "page-0.html").read_text()
    assert oldest.count("data-commit=") == PER_PAGE and shas[0] in oldest and shas[PER_PAGE] not in oldest
    assert 'class="cell failed"' in oldest and f'href="{shas[0]}/amd64.log"' in oldest
    # Every page stays small enough to open at once: no page grows with the history.
    assert max(p.stat().st_size for p in results.rglob("*.html")) < 200_000
    store.close()


def test_text_from_commits_is_escaped(tmp_path: Path) -> None:
    store = Store(tmp_path / "state.sqlite3")
    results = tmp_path / "test_results"
    sha = "c" * 40
    store.jobs.enqueue("demo", "main", [CommitInfo(sha, "<b>Mallory</b>", '<script>alert("x")</script>')], ["amd64"])
    Dashboard(results, store, [("demo", ["amd64"])]).update([("demo", sha)])
    pages = list(results.rglob("*.html"))
    assert len(pages) == 4  # the index, the repository's front page and page 0, the commit's page
    for page in pages:
        text = page.read_text()
        assert "<script>" not in text and "&lt;script&gt;" in text and "<b>Mallory" not in text
    store.close()


def test_rebuild_all_writes_a_page_for_every_commit(tmp_path: Path) -> None:
    # As after an upgrade from a polyarch without the dashboard: results exist, pages do not.
    store = Store(tmp_path / "state.sqlite3")
    results = tmp_path / "test_results"
    shas = [f"{i:040x}" for i in range(1, 151)]
    store.jobs.enqueue("demo", "main", [CommitInfo(s) for s in shas], ["amd64"])
    runner = RunnerRow("r1", "amd64", "host", "x86_64", "0", False, "", 0.0, 0.0)
    for _ in shas:
        _finish(store, runner, results, Status.PASSED)
    written = Dashboard(results, store, [("demo", ["amd64"])]).rebuild_all()
    assert all((results / "demo" / s / "index.html").exists() for s in shas)
    assert (results / "demo" / "page-0.html").exists() and (results / "demo" / "page-1.html").exists()
    assert written == 150 + 2 + 1 + 1  # commits, two pages, the front page, the index
    store.close()


@pytest.mark.daemons
def test_work_shows_when_dispatched_and_running_with_its_live_log_and_pages_reload(polyarch: Polyarch) -> None:
    browser = Browser()
    gate = polyarch.shared / "go"
    sha = polyarch.repo.commit(f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done; echo finished",
                               message="wait for the gate")
    polyarch.dispatcher()
    polyarch.cli("dispatcher", "submit", "--config", str(polyarch.config), "--repo", "demo", "--commit", sha)
    front = polyarch.results / "demo" / "index.html"
    commit_page = polyarch.results / "demo" / sha / "index.html"
    # Queued, no runner yet: the commit is on the pages already, and they reload.
    wait_for(lambda: commit_page.exists() and 'st queued' in commit_page.read_text(), what="the queued cell")
    dom = browser.load(front.as_uri())
    assert "queued" in _cell(_row(dom, sha), "amd64").classes()
    assert [m.attrs["content"] for m in dom.iter("meta") if m.attrs.get("http-equiv") == "refresh"] == ["5"]

    polyarch.runner("r1")
    wait_for(lambda: 'class="cell running"' in front.read_text(), what="the running cell")
    dom = browser.load(front.as_uri())
    running = _cell(_row(dom, sha), "amd64")
    assert "running" in running.classes()
    live_url = browser.follow(front.as_uri(), _link(running, "running"))
    assert path_of(live_url) == polyarch.results / "demo" / sha / "amd64.log.part"
    # (Chromium offers a .part file from disk as a download: the README says how to serve it as text.)
    wait_for(lambda: "started" in path_of(live_url).read_text(), what="the live log's first line")

    gate.touch()
    polyarch.wait_results([sha])
    wait_for(lambda: 'st passed' in commit_page.read_text(), what="the final cell")
    dom = browser.load(commit_page.as_uri())
    assert not [m for m in dom.iter("meta") if m.attrs.get("http-equiv") == "refresh"]  # nothing pending: still
    date = time.strftime("%Y-%m-%d", time.gmtime(int(polyarch.repo.git("log", "-1", "--format=%at"))))
    assert date in dom.text and "live log" not in dom.text
