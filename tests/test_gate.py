"""`polyarch-dispatcher wait`, the CI gate, against real daemons."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from conftest import ROOT, Polyarch

pytestmark = pytest.mark.daemons


def _wait(polyarch: Polyarch, sha: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dispatcher", "wait", "--config", str(polyarch.config),
                           "--repo", "demo", "--commit", sha, "--timeout", str(timeout), *args],
                          cwd=polyarch.root, capture_output=True, text=True, timeout=timeout + 60,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "COLUMNS": "120"})


def test_a_pull_request_commit_is_submitted_and_passes(polyarch: Polyarch) -> None:
    polyarch.repo.commit("exit 0")
    # A pull request's commit: on a branch nobody watches, so only `wait` can queue it.
    polyarch.repo.git("checkout", "-q", "-b", "feature")
    sha = polyarch.repo.commit("echo feature works; exit 0")
    polyarch.dispatcher()
    polyarch.runner("r1")
    out = _wait(polyarch, sha, "--branch", "feature")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all 1 architecture(s) passed" in out.stdout and "✔ passed" in out.stdout
    assert polyarch.wait_results([sha])[sha]["branch"] == "feature"
    # Known now: a second wait submits nothing and answers at once.
    again = _wait(polyarch, sha, "--json")
    data = json.loads(again.stdout)
    assert again.returncode == 0 and data["verdict"] == "passed" and data["status"]["archs"][0]["state"] == "passed"


def test_a_failure_exits_1_and_names_the_failing_tests(polyarch: Polyarch) -> None:
    junit = ('<testsuite tests="2" failures="1"><testcase classname="calc" name="test_add"/>'
             '<testcase classname="calc" name="test_sub"><failure/></testcase></testsuite>')
    sha = polyarch.repo.commit(f"echo '{junit}' > $POLYARCH_JUNIT; exit 1")
    polyarch.dispatcher()
    polyarch.runner("r1")
    out = _wait(polyarch, sha)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "failing on amd64: calc::test_sub" in out.stdout and "failed on amd64" in out.stdout
    assert "1/2 passed" in out.stdout


def test_no_runner_means_exit_3_at_the_timeout(polyarch: Polyarch) -> None:
    sha = polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    out = _wait(polyarch, sha, timeout=2)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "timed out: 0 of 1 architecture(s) finished" in out.stdout


def test_wait_exits_1_at_the_first_failure_and_warns_of_an_architecture_nobody_serves(polyarch: Polyarch) -> None:
    """amd64 fails while s390x has no runner at all: the gate says failed at once (the
    answer cannot be a pass any more), and says that s390x is served by nobody; --all
    waits for s390x too, until its timeout."""
    polyarch.write_config(archs=("amd64", "s390x"), heartbeat_timeout=1)
    sha = polyarch.repo.commit("exit 1")
    polyarch.dispatcher()
    polyarch.runner("r1")
    early = _wait(polyarch, sha, timeout=60)
    assert early.returncode == 1, early.stdout + early.stderr
    assert "failed on amd64" in early.stdout or "amd64: test command exited with 1" in early.stdout, early.stdout
    assert "warning: no runner of s390x seen for 1 s; start one (polyarch-runner serve --arch s390x)" in early.stderr
    assert "failed on amd64 (s390x not finished yet)" in early.stdout
    began = time.monotonic()
    every = _wait(polyarch, sha, "--all", timeout=3)
    assert time.monotonic() - began >= 2  # it waited for s390x (to within a poll of --timeout); the verdict stands
    assert every.returncode == 1, every.stdout + every.stderr


def test_bad_input_and_no_dispatcher_get_one_line(polyarch: Polyarch) -> None:
    sha = polyarch.repo.commit("exit 0")
    polyarch.dispatcher().kill()  # leaves an address file pointing at nobody
    address = (polyarch.root / "var/dispatcher/address").read_text().strip()
    down = _wait(polyarch, sha, timeout=1)
    # A code of its own: "the dispatcher is down" is no verdict on the commit (1 would say failed).
    assert down.returncode == 4 and f"cannot reach the dispatcher at {address}: " in down.stderr, down.stderr
    assert len(down.stderr.strip().splitlines()) == 1
    bad = _wait(polyarch, "not-a-sha")
    assert bad.returncode == 2 and "invalid commit 'not-a-sha'" in bad.stderr
    out = subprocess.run([sys.executable, "-m", "dispatcher", "wait", "--config", str(polyarch.config),
                          "--repo", "nope", "--commit", sha], capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 2 and "unknown repo 'nope'" in out.stderr


def _workflow_script() -> str:
    """The `run: |` block of examples/github-actions.yml, as the Actions runner executes it."""
    lines = (ROOT / "examples" / "github-actions.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "run: |")
    indent = len(lines[start]) - len(lines[start].lstrip()) + 2
    body = []
    for line in lines[start + 1:]:
        if line.strip() and len(line) - len(line.lstrip()) < indent:
            break
        body.append(line[indent:])
    return "\n".join(body)


@pytest.mark.parametrize(("script", "code"), [("exit 0", 0), ("exit 1", 1)])
def test_the_github_actions_example_gates_on_the_result(polyarch: Polyarch, script: str, code: int) -> None:
    sha = polyarch.repo.commit(script)
    polyarch.dispatcher()
    polyarch.runner("r1")
    bin_dir = str(sys.executable).rsplit("/", 1)[0]  # the venv's console scripts
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(ROOT), "POLYARCH_CONFIG": str(polyarch.config),
           "POLYARCH_REPO": "demo", "COMMIT": sha, "BRANCH": "main"}
    out = subprocess.run(["bash", "-e", "-c", _workflow_script()], capture_output=True, text=True, env=env,
                         timeout=120, cwd=polyarch.root)
    assert out.returncode == code, out.stdout + out.stderr
    assert ("all 1 architecture(s) passed" if code == 0 else "failed on amd64") in out.stdout


def test_work_for_an_architecture_left_out_of_the_config_ends_cancelled(polyarch: Polyarch) -> None:
    """s390x leaves the config while its job is queued (no runner ever served it): at the
    dispatcher's next start that job ends `cancelled` with the reason, in the result files
    too, and the gate judges the commit on the architectures configured now."""
    polyarch.write_config(archs=("amd64", "s390x"))
    sha = polyarch.repo.commit("exit 0")
    dispatcher = polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    polyarch.wait_results([sha])
    assert dispatcher.stop() == 0
    polyarch.write_config(archs=("amd64",))
    restarted = polyarch.dispatcher()
    cancelled = polyarch.wait_results([sha], "s390x")[sha]
    assert cancelled["status"] == "cancelled" and cancelled["exit_code"] is None
    assert cancelled["reason"] == "architecture s390x is no longer configured for repository demo"
    assert "cancelled demo " in restarted.log()
    summary = json.loads((polyarch.results / "demo" / sha / "summary.json").read_text())
    assert summary["architectures"] == {"amd64": "passed", "s390x": "cancelled"}
    assert summary["arch_specific_failure"] is False  # a cancelled job is no verdict on the code
    out = _wait(polyarch, sha, timeout=20)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all 1 architecture(s) passed" in out.stdout
