"""The hub's rules in-process, with recording fake runners: no socket, a real SQLite file.

The fakes stand in for what a runner connection would do (register, lease, report) and
record what the hub gave them; the guarantees under real processes and kills are the
pipeline and fault tests' to show.
"""

from __future__ import annotations

import contextlib
import dataclasses
import textwrap
from pathlib import Path
from typing import Optional

import pytest

from dispatcher.common.config import load_config
from dispatcher.common.errors import LeaseLost, NotAllowed, UnknownArch, UnknownRepo
from dispatcher.common.states import Reported, Status
from dispatcher.hub.server import state_location, policy_of
from dispatcher.hub.service import Hub
from dispatcher.hub.store import JobState, RunnerRow, Store
from dispatcher.wire.protocol import CommitInfo, Heartbeat, Job, Register, Result

A, B = "a" * 40, "b" * 40


@dataclasses.dataclass
class FakeRunner:
    """Records every job the hub leases to it and every answer to its results."""

    hub: Hub
    name: str
    arch: str = "amd64"
    row: Optional[RunnerRow] = None
    jobs: list[Job] = dataclasses.field(default_factory=list)
    answers: list[tuple[int, str]] = dataclasses.field(default_factory=list)

    host: str = "host"

    def register(self) -> "FakeRunner":
        self.row = self.hub.register(self.name, Register(self.arch, "0", self.host, "x86_64"), None, "fake")
        return self

    def lease(self) -> Optional[Job]:
        job = self.hub.lease(self.hub.heard(self.row), wait=0)
        if job is not None:
            self.jobs.append(job)
        return job

    def report(self, job: Job, status: Reported, junit: str = "", next_job: bool = False) -> tuple[int, str]:
        """(created, message) of the answer; with `next_job`, the job leased with it is
        recorded in `jobs` too."""
        created, message, following = self.hub.record_result(
            self.hub.heard(self.row), Result(job.lease_id, status, 0, 1.0, 2.0, "log", junit=junit,
                                             next_job=next_job))
        if following is not None:
            self.jobs.append(following)
        self.answers.append((created, message))
        return created, message


@contextlib.contextmanager
def in_process_hub(tmp_path: Path, repo_settings: str = "retry_failed = 1", state: str = "sqlite"):
    """A Hub over a real SQLite file in tmp_path (or the PostgreSQL database `state`), its
    demo repository on amd64 and arm64."""
    config = tmp_path / "polyarch.toml"
    config.write_text(textwrap.dedent(f"""\
        [dispatcher]
        listen = "127.0.0.1:0"
        state = "{state}"
        heartbeat_timeout = 5
        max_attempts = 2
        [[repos]]
        name = "demo"
        url = "{tmp_path}"
        architectures = ["amd64", "arm64"]
        test_command = "true"
        """) + repo_settings + "\n")
    cfg = load_config(config)
    store = Store(state_location(cfg), policy_of(cfg))
    try:
        yield Hub(cfg, store)
    finally:
        store.close()


@pytest.fixture
def hub(tmp_path: Path, backend: str):
    with in_process_hub(tmp_path, state=backend) as h:
        yield h


def test_each_arch_leases_its_own_jobs_oldest_first(hub: Hub) -> None:
    assert hub.dispatch("demo", "main", [CommitInfo(A), CommitInfo(B)]) == 4
    amd, arm = FakeRunner(hub, "amd").register(), FakeRunner(hub, "arm", "arm64").register()
    commits = []
    for _ in range(2):
        job = amd.lease()
        commits.append(job.commit)
        amd.report(job, Reported.PASSED)
    assert commits == [A, B] and amd.lease() is None
    assert arm.lease().arch == "arm64"


def test_a_failure_is_retried_on_another_runner_and_a_pass_then_is_flaky(hub: Hub) -> None:
    hub.submit("demo", A, "", ["amd64"], "test")
    first, second = FakeRunner(hub, "first").register(), FakeRunner(hub, "second").register()
    job = first.lease()
    assert first.report(job, Reported.FAILED) == (1, "recorded; the job runs again (retry_failed)")
    assert first.lease() is None  # kept away from the runner it failed on while another is there
    again = second.lease()
    assert again.attempt == 2 and second.report(again, Reported.PASSED) == (1, "recorded")
    [row] = hub.store.queries.jobs("demo", A)
    assert row.state == JobState.RECORDED and row.status == Status.FLAKY


def test_a_result_can_bring_back_the_next_job_leased_in_the_same_transaction(hub: Hub) -> None:
    hub.dispatch("demo", "main", [CommitInfo(A), CommitInfo(B)])
    runner = FakeRunner(hub, "amd").register()
    first = runner.lease()
    assert runner.report(first, Reported.PASSED, next_job=True) == (1, "recorded")
    following = runner.jobs[-1]
    assert following.commit == B and following.lease_id != first.lease_id
    assert hub.store.jobs.current(following.lease_id) and hub.store.queries.commit_states("demo", A)["amd64"]
    # Nothing queued for amd64 now: the answer carries no job and does not wait.
    assert runner.report(following, Reported.PASSED, next_job=True) == (1, "recorded")
    assert runner.jobs[-1] is following
    # A late result that asks for work still gets it if there is some.
    hub.dispatch("demo", "main", [CommitInfo("c" * 40)])
    assert runner.report(first, Reported.FAILED, next_job=True) == (0, "late or duplicate result: discarded")
    assert runner.jobs[-1].commit == "c" * 40


def test_a_runner_leases_one_job_ahead_and_only_behind_a_short_one(hub: Hub) -> None:
    C, D, E, F = "c" * 40, "d" * 40, "e" * 40, "f" * 40
    hub.dispatch("demo", "main", [CommitInfo(sha) for sha in (A, B, C, D, E, F)])
    runner = FakeRunner(hub, "amd").register()
    first = runner.lease()
    assert hub.lease_ahead(hub.heard(runner.row)) is None  # nothing known yet of demo's jobs on amd64
    runner.report(first, Reported.PASSED)  # 1 s, as the fake reports: short
    second = runner.lease()
    ahead = hub.lease_ahead(hub.heard(runner.row))
    assert ahead is not None and ahead.commit == C and ahead.lease_id != second.lease_id
    assert hub.lease_ahead(hub.heard(runner.row)) is None  # one ahead at a time
    hub.heartbeat(runner.row, Heartbeat(ahead.lease_id))  # its lease is kept as a running job's
    assert hub.store.jobs.current(second.lease_id) and hub.store.jobs.current(ahead.lease_id)
    # A plain lease says the runner lost track of what it held (it restarted): both go back.
    again = runner.lease()
    assert not hub.store.jobs.current(second.lease_id) and not hub.store.jobs.current(ahead.lease_id)
    assert again.commit == B and again.attempt == 2
    # Behind jobs that take minutes, a job leased ahead could wait that long while another
    # runner of the architecture is idle: none is.
    for _ in range(3):
        hub.record_result(hub.heard(runner.row), Result(again.lease_id, Reported.PASSED, 0, 0.0, 300.0, "log"))
        again = runner.lease()
    assert again is not None and hub.lease_ahead(hub.heard(runner.row)) is None


def test_a_late_or_duplicate_result_is_acknowledged_and_dropped(hub: Hub) -> None:
    hub.submit("demo", A, "", ["amd64"], "test")
    runner = FakeRunner(hub, "r").register()
    job = runner.lease()
    runner.report(job, Reported.PASSED)
    assert runner.report(job, Reported.FAILED) == (0, "late or duplicate result: discarded")
    with pytest.raises(LeaseLost):
        hub.heartbeat(runner.row, Heartbeat(job.lease_id))
    assert hub.store.queries.commit_states("demo", A)["amd64"] == Status.PASSED


def test_junit_is_parsed_once_when_the_result_is_recorded(hub: Hub) -> None:
    hub.submit("demo", A, "", ["amd64"], "test")
    runner = FakeRunner(hub, "r").register()
    junit = ('<testsuite tests="2" failures="1"><testcase classname="c" name="ok"/>'
             '<testcase classname="c" name="bad"><failure/></testcase></testsuite>')
    runner.report(runner.lease(), Reported.FAILED, junit)  # retried (retry_failed = 1): alone, it gets it back
    runner.report(runner.lease(), Reported.FAILED, junit)
    status = hub.query("demo", A)
    [amd64] = [a for a in status.archs if a.arch == "amd64"]
    assert (amd64.tests_total, amd64.tests_failed, amd64.failed_tests) == (2, 1, ["c::bad"])
    assert not amd64.published  # the publisher has not run: the answer came from the record


def test_each_backend_has_every_method_of_the_state_interface(hub: Hub) -> None:
    from dispatcher.hub.store import interface

    store = hub.store
    for protocol, impl in ((interface.State, store), (interface.JobsTable, store.jobs),
                           (interface.PeersTable, store.peers), (interface.StateDatabase, store.db),
                           (interface.AttemptsTable, store.attempts), (interface.RunnersTable, store.runners),
                           (interface.HookRunsTable, store.hook_runs),
                           (interface.StateQueries, store.queries), (interface.HistoryQueries, store.history)):
        methods = {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
        assert methods and all(callable(getattr(impl, n, None)) for n in methods), protocol.__name__
        fields = set(getattr(protocol, "__annotations__", {}))
        assert all(hasattr(impl, n) for n in fields), protocol.__name__


def test_names_are_checked_before_anything_changes(hub: Hub) -> None:
    with pytest.raises(UnknownRepo):
        hub.submit("nope", A, "", [], "test")
    with pytest.raises(UnknownArch):
        hub.submit("demo", A, "", ["s390x"], "test")
    with pytest.raises(NotAllowed):
        hub.heard(None)  # a runner must register before anything else
    assert hub.store.queries.jobs() == []


def test_a_commit_queued_by_id_is_described_by_its_runner(hub: Hub) -> None:
    hub.submit("demo", A, "", ["amd64"], "test")  # by hand: the dispatcher knows only the id
    runner = FakeRunner(hub, "r").register()
    job = runner.lease()
    assert job.describe
    info = CommitInfo(A, "Ada", "calc: add", 1700000000)
    hub.record_result(runner.row, Result(job.lease_id, Reported.PASSED, 0, 1.0, 2.0, "log", commit_info=info))
    [row] = hub.store.queries.jobs("demo", A)
    assert (row.author, row.subject, row.timestamp) == ("Ada", "calc: add", 1700000000)
    # The observer's word is never overwritten; it only fills what is still empty.
    hub.dispatch("demo", "main", [CommitInfo(A, "Someone Else", "other", 1)])
    assert hub.store.queries.jobs("demo", A)[0].author == "Ada"
    hub.submit("demo", B, "", ["amd64"], "test")
    hub.dispatch("demo", "main", [CommitInfo(B, "Bob", "fix", 2)])
    assert hub.store.queries.jobs("demo", B)[0].subject == "fix" and not runner.lease().describe


def test_results_recorded_while_files_are_written_get_theirs_before_anyone_s_pages(hub: Hub, monkeypatch) -> None:
    # B's result comes in while A's files are being written: B's files must not wait
    # behind A's pages, and the pages are then written once for both.
    import dispatcher.hub.publisher as publisher_module

    hub.submit("demo", A, "", ["amd64"], "test")
    hub.submit("demo", B, "", ["amd64"], "test")
    one, other = FakeRunner(hub, "r1").register(), FakeRunner(hub, "r2").register()
    first, second = one.lease(), other.lease()
    one.report(first, Reported.PASSED)
    real = publisher_module.write_result
    arrived = []

    def writer(root, record, *rest, **given):
        if not arrived:
            arrived.append(other.report(second, Reported.PASSED))
        return real(root, record, *rest, **given)

    pages = []
    results = hub.publisher.results_dir / "demo"
    monkeypatch.setattr(publisher_module, "write_result", writer)
    monkeypatch.setattr(hub.publisher.dashboard, "update",
                        lambda touched: pages.append((set(touched), {p.parent.name for p in results.glob("*/amd64.json")})))
    hub.publisher.publish_pending()
    assert pages == [({("demo", A), ("demo", B)}, {A, B})]
    assert hub.store.jobs.unpublished() == []


def test_a_result_that_breaks_the_writer_is_set_aside_and_the_rest_flow(hub: Hub, monkeypatch) -> None:
    # Fault injection below the publisher: writing one result raises (as a poison JUnit
    # did before it was parsed defensively); that result must not block the others.
    import dispatcher.hub.publisher as publisher_module

    real = publisher_module.write_result

    def writer(root, record, *rest, **given):
        if record.commit == A:
            raise ValueError("a result nobody can write")
        return real(root, record, *rest, **given)

    monkeypatch.setattr(publisher_module, "write_result", writer)
    hub.submit("demo", A, "", ["amd64"], "test")
    hub.submit("demo", B, "", ["amd64"], "test")
    runner = FakeRunner(hub, "r").register()
    runner.report(runner.lease(), Reported.PASSED)
    runner.report(runner.lease(), Reported.PASSED)
    hub.publisher.publish_pending()
    assert hub.store.jobs.unpublished() == []  # nothing left to replay after a restart
    states = {j.sha: j for j in hub.store.queries.jobs("demo")}
    assert states[A].state == JobState.SET_ASIDE and "result files not written" in states[A].reason
    assert states[B].state == JobState.PUBLISHED
    [amd64] = hub.query("demo", A).archs
    assert amd64.published and "ValueError" in amd64.reason  # settled: the gate does not wait for it


def test_a_job_handed_back_again_and_again_ends_error(hub: Hub) -> None:
    from dispatcher.hub.store.jobs import MAX_HANDBACKS

    hub.submit("demo", A, "", ["amd64"], "test")
    runner = FakeRunner(hub, "r").register()
    for _ in range(MAX_HANDBACKS - 1):
        hub.release(runner.row, runner.lease().lease_id, "cannot make the job folder")
    [row] = hub.store.queries.jobs("demo", A)
    assert row.state == JobState.QUEUED and row.attempt == 0  # a hand-back spends no attempt
    hub.release(runner.row, runner.lease().lease_id, "cannot make the job folder")
    [row] = hub.store.queries.jobs("demo", A)
    assert row.state == JobState.RECORDED and row.status == Status.ERROR
    assert f"handed back {MAX_HANDBACKS} times" in row.reason and "cannot make the job folder" in row.reason
    assert runner.lease() is None  # never leased again


def test_a_lease_answers_only_to_the_runner_holding_it(hub: Hub) -> None:
    """Any runner can name a lease id it has seen (a job can read its own); only the
    holder's heartbeat, result or release counts."""
    hub.submit("demo", A, "", ["amd64"], "test")
    honest, forger = FakeRunner(hub, "honest").register(), FakeRunner(hub, "forger").register()
    job = honest.lease()
    with pytest.raises(LeaseLost):
        hub.heartbeat(forger.row, Heartbeat(job.lease_id))
    assert forger.report(job, Reported.PASSED) == (0, "that lease belongs to another runner: discarded")
    hub.release(forger.row, job.lease_id, "taken")
    [row] = hub.store.queries.jobs("demo", A)
    assert row.state == JobState.LEASED and row.runner == "honest"
    hub.heartbeat(honest.row, Heartbeat(job.lease_id))
    assert honest.report(job, Reported.FAILED)[0] == 1
    again = hub.store.queries.jobs("demo", A)[0]
    assert again.runner == "honest" and again.attempt == 1  # the retry is queued, not the forgery recorded


def test_a_runner_holds_one_lease_at_a_time(hub: Hub) -> None:
    """One connection cannot take the whole queue: a new lease takes back the last one."""
    hub.dispatch("demo", "main", [CommitInfo(A), CommitInfo(B)])
    greedy, other = FakeRunner(hub, "greedy").register(), FakeRunner(hub, "other").register()
    first = greedy.lease()
    second = greedy.lease()
    assert (first.commit, second.commit) == (A, A) and first.lease_id != second.lease_id
    with pytest.raises(LeaseLost):
        hub.heartbeat(greedy.row, Heartbeat(first.lease_id))
    assert other.lease().commit == B
    assert hub.store.jobs.held_by("greedy") == [second.lease_id]


def test_a_runner_name_connected_from_another_host_is_refused(hub: Hub) -> None:
    FakeRunner(hub, "r1", host="lab-a").register()
    with pytest.raises(NotAllowed, match="already connected from host 'lab-a'; give each runner its own name"):
        FakeRunner(hub, "r1", host="lab-b").register()
    FakeRunner(hub, "r1", host="lab-a").register()  # the same runner reconnecting
