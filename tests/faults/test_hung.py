"""A hung runner (SIGSTOP): its lease expires, the job runs elsewhere, its late work is dropped."""

from __future__ import annotations

import signal
import time

import pytest

from conftest import Polyarch, wait_for
from faults.conftest import record

pytestmark = pytest.mark.daemons

LATE_RESULT = "dropped late or duplicate result from hung"
LATE_HEARTBEAT = "refused heartbeat from"


def test_stopped_runner_loses_its_lease_and_its_late_work_is_dropped(polyarch: Polyarch) -> None:
    polyarch.write_config(heartbeat_timeout=1)
    started = polyarch.shared / "started"
    polyarch.repo.commit("exit 0")
    dispatcher = polyarch.dispatcher()
    polyarch.observer()
    hung = polyarch.runner("hung")
    polyarch.wait_results([polyarch.repo.git("rev-parse", "HEAD")])

    sha = polyarch.repo.commit(f"echo $POLYARCH_RUNNER >> {started}; sleep 1.5")
    wait_for(started.exists, what="the job to start on the runner about to hang")
    hung.signal(signal.SIGSTOP)  # the runner process only: its job finishes meanwhile
    polyarch.runner("rescuer")
    first = polyarch.wait_results([sha], timeout=30)[sha]
    assert first["runner"] == "rescuer" and first["attempt"] == 2 and first["status"] == "passed"
    path = polyarch.results / "demo" / sha / "amd64.json"
    written = path.read_bytes()

    hung.signal(signal.SIGCONT)
    # Back from the dead, the runner reports either its finished result or a heartbeat
    # for the lost lease, depending on which of its threads runs first: both are refused.
    wait_for(lambda: LATE_RESULT in dispatcher.log() or
             (LATE_HEARTBEAT in dispatcher.log() and "(hung): lease is no longer yours" in dispatcher.log()),
             what="the dispatcher to refuse the hung runner's late work")
    time.sleep(1.0)  # time for a wrongful overwrite to happen, if one were going to
    assert path.read_bytes() == written
    # The hung runner is back in service.
    assert hung.alive
    hung_again = polyarch.repo.commit("exit 0")
    assert polyarch.wait_results([hung_again])[hung_again]["status"] == "passed"
    record("fault", "runner hung (SIGSTOP) mid-job, then resumed (SIGCONT)", trials=1, commits=3, results=3,
           lost=0, duplicated=0)
