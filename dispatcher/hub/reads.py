"""The hub's records for views: rows from the state turned into what status, the gate,
the HTTP API, the result files and the dashboard render. Nothing here reads a file."""

from __future__ import annotations

import time
from typing import Iterable, Optional

from dispatcher.common.states import CellState, Status
from dispatcher.hub.store.rows import JobRow, JobState
from dispatcher.hub.store import Store
from dispatcher.results.junit import MAX_NAMED_TESTS
from dispatcher.results.record import Attempt, ResultRecord, summary_dict
from dispatcher.views.records import ActiveJob, Cell, CommitLine, Report, RunnerLine
from dispatcher.wire.protocol import ArchState, CommitStatus, StatusReport


def record_of(job: JobRow, earlier: tuple[Attempt, ...] = ()) -> ResultRecord:
    """The final result of a recorded job, as <arch>.json says it."""
    return ResultRecord(
        repo=job.repo, branch=job.branch, commit=job.sha, arch=job.arch, runner=job.runner or "",
        status=job.status or Status.ERROR, exit_code=job.exit_code, started_at=job.started_at or 0.0,
        finished_at=job.finished_at or 0.0, attempt=job.attempt, reason=job.reason,
        log_truncated=job.log_truncated, tests=job.tests, runner_host=job.runner_host,
        runner_machine=job.runner_machine, runner_emulated=job.runner_emulated, runner_kernel=job.runner_kernel,
        runner_qemu=job.runner_qemu, runner_root=job.runner_root, rerun_by=job.rerun_by, failed_tests=job.failed_tests, earlier=earlier,
        branches=job.branches)


def summary_of(store: Store, repo: str, sha: str, branch: str) -> dict:
    """summary.json of one commit, from the state: the statuses and recorded JUnit reports,
    and its first parent's, to say which tests it broke and fixed."""
    parent = store.history.parent(repo, sha)
    return summary_dict(repo, sha, branch, store.queries.commit_states(repo, sha),
                        store.queries.commit_reports(repo, sha), branches=store.queries.commit_branches(repo, sha),
                        parent=parent, parent_junit=store.queries.commit_reports(repo, parent) if parent else None)


def cell(job: JobRow, now: float, store: Optional[Store] = None) -> Cell:
    """One (commit, arch); with `store`, a retried job's earlier attempts join its record."""
    if job.state.final:
        earlier = store.attempts.of(job.id) if store is not None and (job.retries or job.reruns) else ()
        record = record_of(job, earlier)
        return Cell(job.arch, CellState.of(record.status), job.attempt, job.runner or "",
                    record.finished_at - record.started_at, job.runner_emulated, record)
    if job.state == JobState.LEASED:
        return Cell(job.arch, CellState.RUNNING, job.attempt, job.runner or "", now - (job.leased_at or now),
                    job.runner_emulated)
    return Cell(job.arch, CellState.QUEUED, job.attempt, job.runner or "", None, job.runner_emulated)


def commit_lines(jobs: Iterable[JobRow], now: float, store: Optional[Store] = None) -> list[CommitLine]:
    """Group jobs (in commit order) into one line per commit."""
    by_commit: dict[tuple[str, str], list[JobRow]] = {}
    for job in jobs:
        by_commit.setdefault((job.repo, job.sha), []).append(job)
    return [CommitLine(repo, sha, js[0].branch, js[0].author, js[0].subject,
                       tuple(cell(j, now, store) for j in js), js[0].timestamp)
            for (repo, sha), js in by_commit.items()]


def collect(store: Store, repo: Optional[str] = None, commit: Optional[str] = None, limit: int = 20,
            heartbeat_timeout: float = 10.0) -> Report:
    now = time.time()
    q = store.queries
    lines = commit_lines(q.jobs(repo, commit, limit), now)
    active = [ActiveJob(j.repo, j.sha, j.arch, CellState.RUNNING if j.state == JobState.LEASED else CellState.QUEUED,
                        j.runner or "" if j.state == JobState.LEASED else "",
                        max(0.0, now - ((j.leased_at if j.state == JobState.LEASED else j.created_at) or now)),
                        j.attempt)
              for j in q.active_jobs(repo)]
    # The dispatcher writes last_seen every couple of seconds for connected runners.
    runners = [RunnerLine(r.name, r.arch, r.host, r.emulated, r.version, r.last_seen,
                          now - r.last_seen <= heartbeat_timeout) for r in q.runners()]
    return Report(tuple(lines), tuple(active), tuple(runners), now)


def commit_status(store: Store, repo: str, sha: str) -> CommitStatus:
    """One commit for scripts (`wait`, the HTTP API): each arch's state and, for final
    ones, the test counts and failing tests recorded with the result."""
    jobs = [j for j in store.queries.jobs(repo, sha, 1) if j.sha == sha]
    if not jobs:
        return CommitStatus(repo=repo, commit=sha, known=False)
    [line] = commit_lines(jobs, time.time())
    return _status_of(line, jobs)


def status_report(store: Store, repo: Optional[str], commit: Optional[str], limit: int,
                  heartbeat_timeout: float) -> StatusReport:
    """What `status` shows, for a client on another host: collect()'s report on the wire."""
    report = collect(store, repo, commit, limit, heartbeat_timeout)
    jobs: dict[tuple[str, str], list[JobRow]] = {}
    for job in store.queries.jobs(repo, commit, limit):
        jobs.setdefault((job.repo, job.sha), []).append(job)
    return StatusReport(generated_at=report.generated_at,
                        commits=[_status_of(line, jobs.get((line.repo, line.commit), [])) for line in report.commits],
                        active=list(report.active), runners=list(report.runners))


def report_of(wire: StatusReport) -> Report:
    """collect()'s report again, from what the wire brought (views render either alike)."""
    lines = tuple(CommitLine(c.repo, c.commit, c.branch, c.author, c.subject,
                             tuple(Cell(a.arch, a.state, a.attempt, a.runner,
                                        None if a.state == CellState.QUEUED else a.duration, a.emulated)
                                   for a in c.archs), c.timestamp)
                  for c in wire.commits)
    return Report(lines, tuple(wire.active), tuple(wire.runners), wire.generated_at)


def _status_of(line: CommitLine, jobs: list[JobRow]) -> CommitStatus:
    published = {j.arch: j.state.settled for j in jobs}
    archs = []
    for c in line.cells:
        r = c.result  # the final result's record, None while queued or running
        tests = r.tests if r else None
        archs.append(ArchState(arch=c.arch, state=c.state, runner=c.runner,
                               duration=round(c.duration or 0.0, 3), attempt=c.attempt, emulated=c.emulated,
                               tests_total=tests.total if tests else -1,
                               tests_failed=tests.failed + tests.errors if tests else 0,
                               failed_tests=list(r.failed_tests[:MAX_NAMED_TESTS]) if r else [],
                               reason=r.reason if r else "", published=published.get(c.arch, False)))
    return CommitStatus(repo=line.repo, commit=line.commit, known=True, status=line.overall, branch=line.branch,
                        subject=line.subject, archs=archs, author=line.author, timestamp=line.timestamp)
