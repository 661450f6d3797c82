"""Writing one result's files, in the order that makes <arch>.json the commit point.

Earlier attempts' logs, the log, the JUnit file (the live log goes), then a summary.json that already counts
this result, and <arch>.json last: a reader who sees <arch>.json finds everything else
of that result there. Each file is written atomically (temporary file, fsync, rename);
the publisher writes a whole batch of results in one `Batch`, whose commit makes every
other file durable before it renames any <arch>.json (RESULT_STEP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Optional

from dispatcher.common.files import Batch
from dispatcher.results.layout import File, path
from dispatcher.results.record import ResultRecord, dumps

FILES_STEP, RESULT_STEP = 0, 1  # <arch>.json after everything else, in a batch of many results


def write_result(root: Path, record: ResultRecord, log: bytes, junit: bytes,
                 summary: Mapping[str, Any], batch: Optional[Batch] = None) -> Path:
    """Write every file of `record` (and its commit's `summary`); returns <arch>.json's path.
    Into `batch` when given (its commit writes them), else at once."""
    files = Batch() if batch is None else batch
    where = dict(repo=record.repo, commit=record.commit, arch=record.arch)
    for attempt in record.earlier:
        # An attempt's log is kept in the state only until it is written once: a later
        # result (a rerun) must not overwrite it with nothing.
        attempt_log = path(root, File.ATTEMPT_LOG, n=attempt.attempt, **where)
        if attempt.log or not attempt_log.exists():
            files.write(attempt_log, attempt.log, FILES_STEP)
    files.write(path(root, File.LOG, **where), log, FILES_STEP)
    if junit and record.tests is not None:
        files.write(path(root, File.JUNIT, **where), junit, FILES_STEP)
    else:  # a rerun without JUnit: the earlier run's file is not this result's
        files.remove(path(root, File.JUNIT, **where), FILES_STEP)
    # The live log ends with the final one (before the commit point: a crash here is
    # repaired by publishing again).
    files.remove(path(root, File.LIVE_LOG, **where), FILES_STEP)
    files.write(path(root, File.SUMMARY, record.repo, record.commit), dumps(summary), FILES_STEP)
    result = path(root, File.RESULT, **where)
    files.write(result, dumps(record.to_dict()), RESULT_STEP)
    if batch is None:
        files.commit()
    return result


def rewrite_record(root: Path, record: ResultRecord, summary: Mapping[str, Any], batch: Optional[Batch] = None) -> None:
    """A published result said again with what changed around it (the commit reached
    another branch): its summary.json, then its <arch>.json, each replaced atomically;
    the log and the JUnit file stay as they are."""
    files = Batch() if batch is None else batch
    files.write(path(root, File.SUMMARY, record.repo, record.commit), dumps(summary), FILES_STEP)
    files.write(path(root, File.RESULT, repo=record.repo, commit=record.commit, arch=record.arch),
                dumps(record.to_dict()), RESULT_STEP)
    if batch is None:
        files.commit()
