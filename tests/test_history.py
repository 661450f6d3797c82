"""The commit that broke each test: new_failures and fixed in summary.json, the failing
tests at each branch head, and `history` (first failure, flaky), from the state database."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from conftest import Polyarch, wait_for
from dispatcher.common.states import Reported
from dispatcher.hub.reads import summary_of
from dispatcher.hub.service import Hub
from dispatcher.wire.protocol import CommitInfo
from test_hub import FakeRunner, in_process_hub

C1, C2, C3, C4 = ("1" * 40, "2" * 40, "3" * 40, "4" * 40)


def junit(double_fails: bool) -> str:
    double = '<testcase classname="calc" name="test_double"><failure/></testcase>' if double_fails else \
        '<testcase classname="calc" name="test_double"/>'
    return f'<testsuite tests="2" failures="{int(double_fails)}"><testcase classname="calc" name="test_add"/>{double}</testsuite>'


@pytest.fixture
def hub(tmp_path: Path, backend: str):
    with in_process_hub(tmp_path, repo_settings="", state=backend) as h:
        yield h


def test_the_commit_that_broke_a_test_on_one_arch_is_named_and_a_late_parent_is_compared(hub: Hub) -> None:
    # C1 -> C2 -> C3 -> C4 on main: test_double breaks on arm64 in C2 and stays broken.
    hub.dispatch("demo", "main", [CommitInfo(C1, subject="one"), CommitInfo(C2, subject="two", parent=C1),
                                  CommitInfo(C3, subject="three", parent=C2), CommitInfo(C4, subject="four", parent=C3)])
    amd = FakeRunner(hub, "amd").register()
    arm1, arm2 = FakeRunner(hub, "arm1", "arm64").register(), FakeRunner(hub, "arm2", "arm64").register()
    for sha in (C1, C2, C3):
        job = amd.lease()
        assert job.commit == sha
        amd.report(job, Reported.PASSED, junit(False))
    arm1.report(arm1.lease(), Reported.PASSED, junit(False))  # C1
    hub.publisher.start()
    try:
        late, early = arm1.lease(), arm2.lease()  # C2 and C3; C3's result comes first
        assert (late.commit, early.commit) == (C2, C3)
        arm2.report(early, Reported.FAILED, junit(True))
        summary3 = hub.config.dispatcher.results_dir / "demo" / C3 / "summary.json"
        wait_for(lambda: summary3.exists() and "arm64" in json.loads(summary3.read_text())["architectures"],
                 what="C3's summary")
        assert json.loads(summary3.read_text())["new_failures"] == {"amd64": []}  # no arm64 report for C2 yet
        arm1.report(late, Reported.FAILED, junit(True))
        # C2's result rewrites C3's summary: it compares with its parent now.
        wait_for(lambda: json.loads(summary3.read_text())["new_failures"] == {"amd64": [], "arm64": []},
                 what="C3's summary compared with C2's result")
        arm2.report(arm2.lease(), Reported.FAILED, junit(True))  # C4
        # C4 on amd64: test_double fails, and passes when it is run again: flaky there.
        amd.report(amd.lease(), Reported.FAILED, junit(True))
        wait_for(lambda: not hub.store.jobs.has_unpublished(), what="every result published")
        assert hub.rerun("demo", C4, ["amd64"], False, "test") == 1
        amd.report(amd.lease(), Reported.PASSED, junit(False))
        wait_for(lambda: not hub.store.jobs.has_unpublished(), what="the rerun published")
    finally:
        hub.publisher.stop()
    store = hub.store
    two = summary_of(store, "demo", C2, "main")
    assert two["parent"] == C1
    assert two["new_failures"] == {"amd64": [], "arm64": ["calc::test_double"]} and two["fixed"] == {"amd64": [], "arm64": []}
    [broken] = store.history.failing_at_heads("demo")
    assert (broken.branch, broken.head, broken.arch, broken.test) == ("main", C4, "arm64", "calc::test_double")
    assert (broken.broke, broken.subject, broken.known) == (C2, "two", True)
    lines = {h.commit: {o.arch: o for o in h.outcomes} for h in store.history.test_history(
        "demo", "calc::test_double", ["amd64", "arm64"], 10)}
    assert list(lines) == [C4, C3, C2, C1]
    assert lines[C2]["arm64"].first_failure and not lines[C3]["arm64"].first_failure
    assert lines[C4]["amd64"].outcome == "passed" and lines[C4]["amd64"].flaky
    assert not lines[C3]["amd64"].flaky and lines[C1]["arm64"].outcome == "passed"
    assert store.history.test_history("demo", "calc::test_nothing", ["amd64"], 10)[0].outcomes[0].outcome == "absent"
    # The repository's page lists it, the commit's page marks it.
    results = hub.config.dispatcher.results_dir / "demo"
    page = (results / "index.html").read_text()
    assert "Failing at the head of each branch" in page and f'href="{C2}/index.html">{C2[:10]}</a> two' in page
    assert "first failure here" in (results / C2 / "index.html").read_text()
    assert "first failure here" not in (results / C3 / "index.html").read_text()


def _script(double_fails: bool) -> str:
    return f"printf '%s' '{junit(double_fails)}' > \"$POLYARCH_JUNIT\"; exit {int(double_fails)}"


@pytest.mark.daemons
def test_a_real_pipeline_names_the_breaking_commit_and_history_shows_the_test(polyarch: Polyarch) -> None:
    polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    good = polyarch.repo.commit(_script(False), message="good")
    polyarch.wait_results([good])
    bad = polyarch.repo.commit(_script(True), message="break double")
    still = polyarch.repo.commit(_script(True), message="unrelated")
    polyarch.wait_results([bad, still])
    summary = json.loads((polyarch.results / "demo" / bad / "summary.json").read_text())
    assert summary["parent"] == good and summary["new_failures"] == {"amd64": ["calc::test_double"]}
    wait_for(lambda: f"broke in <a class=\"sha\" href=\"{bad}/index.html\">"
             in (polyarch.results / "demo" / "index.html").read_text(), what="the repository page's breakage")
    out = polyarch.cli("dispatcher", "history", "--config", str(polyarch.config), "--repo", "demo",
                       "--test", "calc::test_double", "--json")
    assert out.returncode == 0, out.stderr
    commits = {c["commit"]: c["architectures"]["amd64"] for c in json.loads(out.stdout)["commits"]}
    assert commits[bad] == {"outcome": "failed", "flaky": False, "first_failure": True}
    assert commits[still]["first_failure"] is False and commits[good]["outcome"] == "passed"
    table = polyarch.cli("dispatcher", "history", "--config", str(polyarch.config), "--repo", "demo",
                         "--test", "calc::test_double")
    assert table.returncode == 0 and "first failure" in table.stdout and bad[:12] in table.stdout
    # A test no result names, and an architecture the repository lacks: one line, exit 2.
    out = polyarch.cli("dispatcher", "history", "--config", str(polyarch.config), "--repo", "demo", "--test", "nope")
    assert out.returncode == 2 and "names test 'nope'" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = polyarch.cli("dispatcher", "history", "--config", str(polyarch.config), "--repo", "demo",
                       "--test", "calc::test_double", "--arch", "s390x")
    assert out.returncode == 2 and "s390x not configured for repo demo" in out.stderr
    # Fixed: the summary says so, and the branch head lists nothing.
    fixed = polyarch.repo.commit(_script(False), message="fix double")
    polyarch.wait_results([fixed])
    assert json.loads((polyarch.results / "demo" / fixed / "summary.json").read_text())["fixed"] == {
        "amd64": ["calc::test_double"]}
    deadline = time.monotonic() + 20
    while "Failing at the head" in (polyarch.results / "demo" / "index.html").read_text():
        assert time.monotonic() < deadline, "the repository page still lists the fixed test"
        time.sleep(0.1)
