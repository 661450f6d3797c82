"""A hostile job (issue 19): a commit under test that tries to read the CI's secrets, see or
change other jobs and runners, plant code the runner would run, pose as a runner, outlive
its job or take the machine. Natively and in an emulated root, each attempt is refused or
contained, the attempt is named in the job's log, and the daemons keep serving.

(Results, heartbeats and releases for another runner's lease are in tests/test_hub.py.)
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

from conftest import ROOT, ROOTFS_ARM64, Polyarch, processes_running, require_emulated_arm64, wait_for
from dispatcher.wire.tls import make_certs
from faults.conftest import needs_root, record

pytestmark = pytest.mark.daemons

# Each attempt prints one line: GOT (it worked: what it read, hashed) or REFUSED (git's,
# the shell's or Python's own words).
HOSTILE = r"""
attempt() { name=$1; shift; if out=$("$@" 2>&1); then echo "GOT $name: $out" | head -c 300; echo;
            else echo "REFUSED $name: $(echo "$out" | tail -n 1 | head -c 200)"; fi; }
read_hash() { test -s "$1" || { echo "empty or missing: $1" >&2; return 1; }; sha256sum < "$1"; }
for f in %(files)s; do attempt "read $f" read_hash "$f"; done
for d in %(folders)s; do attempt "list $d" sh -c "ls -A '$d' | grep -v -x -e \"\$POLYARCH_LEASE\" | grep ."; done
attempt "see other processes" sh -c "grep -l -a -e 'runne[r] serve' -e 'dispatche[r] serve' -e 'jai[l].py' /proc/[0-9]*/cmdline"
echo "PROC $(ls -d /proc/[0-9]* | wc -l) processes, pid 1: $(tr '\0' ' ' < /proc/1/cmdline)"
echo "UID $(id -u)"
common=$(git rev-parse --git-common-dir)
attempt "plant a hook" sh -c "mkdir -p '$common/hooks' && printf '#!/bin/sh\nexit 0\n' > '$common/hooks/post-checkout'"
attempt "rewrite a branch" git update-ref refs/heads/main HEAD
attempt "become root" su -c true
setsid sleep 300.7 < /dev/null > /dev/null 2>&1 &
sh -c 'sleep 300.8 < /dev/null > /dev/null 2>&1 &' &
touch %(shared)s/daemons-started
exit 0
"""

# Poses as runner r2 with a guessed secret through polyarch's own client (a copy in the
# shared folder: polyarch is open source, any job can bring it): the dispatcher refuses it.
FORGE = r"""
attempt "pose as runner r2" /usr/bin/python3 -c '
import sys; sys.path.insert(0, "%(kit)s")
from dispatcher.wire.client import Connection
from dispatcher.wire.protocol import Register, Role
from dispatcher.common.config import Address
import ssl
tls = ssl.create_default_context(cafile="%(ca)s")  # the CA is public; no client key to show
c = Connection(Address("127.0.0.1", %(port)d), Role.RUNNER, "r2", b"guessed-secret", tls=tls)
c.request(Register(arch="amd64", version="0", host="x", machine="x86_64", emulated=False, kernel="x"))
print("registered")'
"""


def _shell_words(paths: list[Path]) -> str:
    return " ".join(f"'{p}'" for p in paths)


def _attempts(log: str) -> dict[str, str]:
    out = {}
    for line in log.splitlines():
        match = re.match(r"(GOT|REFUSED) ([^:]+): ?(.*)", line)
        if match:
            out[match.group(2)] = f"{match.group(1)} {match.group(3)}"
    return out


def _with_tls(polyarch: Polyarch) -> Path:
    """Mutual TLS on loopback, so there are TLS keys to steal; every key left world-readable
    (as the config is), so only the job's isolation keeps them from it. (A readable secret
    is refused by the daemons themselves.)"""
    pki = polyarch.root / "pki"
    make_certs(pki, ["127.0.0.1"], ["r1", "r2", "observer"])
    text = polyarch.config.read_text()
    server = f'tls_cert = "{pki}/dispatcher.crt"\ntls_key = "{pki}/dispatcher.key"\ntls_client_ca = "{pki}/ca.crt"\n'
    text = text.replace('listen = "127.0.0.1:0"\n', 'listen = "127.0.0.1:0"\n' + server)
    parts = text.split("[runner]\n")
    observer = f'tls_ca = "{pki}/ca.crt"\ntls_cert = "{pki}/observer.crt"\ntls_key = "{pki}/observer.key"\n'
    runner = f'tls_ca = "{pki}/ca.crt"\ntls_cert = "{pki}/r1.crt"\ntls_key = "{pki}/r1.key"\n'
    parts[0] = parts[0].replace('dispatcher = "127.0.0.1:0"\n', 'dispatcher = "127.0.0.1:0"\n' + observer)
    parts[1] = parts[1].replace('dispatcher = "127.0.0.1:0"\n', 'dispatcher = "127.0.0.1:0"\n' + runner, 1)
    polyarch.config.write_text("[runner]\n".join(parts))
    for key in pki.glob("*.key"):
        key.chmod(0o644)
    return pki


def _run_hostile(polyarch: Polyarch, rootfs: Path | None, where: str, arch: str) -> None:
    needs_root("running jobs as the job user")
    pki = _with_tls(polyarch)
    polyarch.repo.commit("exit 0")
    dispatcher = polyarch.dispatcher()
    # Another runner on this host ran the first commit and stopped: its folder (mirror,
    # checkout, outbox) is there, and none of the hostile job's business.
    other = polyarch.runner("r2", *(("--rootfs", str(rootfs)) if rootfs else ()))
    polyarch.observer()
    polyarch.wait_results([polyarch.repo.git("rev-parse", "HEAD")], arch, timeout=120)
    assert other.stop() == 0
    runner = polyarch.runner("r1", *(("--rootfs", str(rootfs)) if rootfs else ()))
    secrets = [polyarch.root / "var/secret", polyarch.config, polyarch.root / "var/dispatcher/polyarch.sqlite3",
               pki / "r1.key", pki / "r2.key", pki / "dispatcher.key"]
    folders = [polyarch.root / "var/runner/r2", polyarch.root / "var/runner/r1/jobs",
               polyarch.root / "var/runner/r1/outbox", polyarch.root / "var/dispatcher"]
    port = int((polyarch.root / "var/dispatcher/address").read_text().rsplit(":", 1)[1])
    script = HOSTILE % {"files": _shell_words(secrets), "folders": _shell_words(folders), "shared": polyarch.shared}
    if rootfs is None:  # the root's Python is another architecture's; the client is the same
        kit = polyarch.shared / "kit"
        shutil.copytree(ROOT / "dispatcher", kit / "dispatcher", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy(pki / "ca.crt", kit / "ca.crt")  # public: what every runner host trusts
        script = script.replace("exit 0\n", FORGE % {"kit": kit, "port": port, "ca": kit / "ca.crt"} + "exit 0\n")
    sha = polyarch.repo.commit(script)
    result = polyarch.wait_results([sha], arch, timeout=180)[sha]
    log = (polyarch.results / "demo" / sha / f"{arch}.log").read_text()
    tried = _attempts(log)
    assert result["status"] == "passed", log
    assert set(tried) >= {f"read {p}" for p in secrets} | {f"list {d}" for d in folders}, log
    got = {name: outcome for name, outcome in tried.items() if outcome.startswith("GOT")}
    assert not got, f"the job got through: {got}\n{log}"
    for path in secrets:
        content = path.read_bytes()
        assert hashlib.sha256(content).hexdigest() not in log
        if path.suffix != ".sqlite3":
            assert content.decode(errors="replace").strip()[:40] not in log
    # Its own processes only (under qemu-user, pid 1's command line starts with qemu's).
    assert re.search(r"^PROC [1-9] processes, pid 1: (\S*qemu\S* /bin/sh )?sh -c ", log, re.M), log
    assert re.search(r"^UID [1-9][0-9]*$", log, re.M), log  # not root
    if rootfs is None:  # it reached the dispatcher, which refused it (TLS first, here)
        assert re.search("CERTIFICATE_REQUIRED|refused our secret", tried.get("pose as runner r2", "")), log
    # Nothing it started outlives it: setsid and a double fork included.
    wait_for(lambda: not processes_running("sleep", "300.7") and not processes_running("sleep", "300.8"),
             timeout=10, what="the job's daemons to be stopped with it")
    # Nothing planted ran or stuck: the next failing commit fails, and everyone is still serving.
    broken = polyarch.repo.commit("echo broken; exit 1")
    assert polyarch.wait_results([broken], arch, timeout=120)[broken]["status"] == "failed"
    assert runner.alive and dispatcher.alive
    for name, outcome in sorted(tried.items()):
        record("job", name.replace(str(polyarch.root), "<test>"), where=where,
               outcome=outcome.replace(str(polyarch.root), "<test>")[:120])
    proc = re.search(r"^PROC (.*)$", log, re.M).group(1)  # type: ignore[union-attr]
    record("job", "walk /proc", where=where, outcome=f"sees {proc.strip()}")
    record("job", "run as root", where=where, outcome=f"runs as uid {re.search(r'^UID (.*)$', log, re.M).group(1)}")
    record("job", "start a setsid daemon and a double fork", where=where, outcome="both killed with the job")


def test_a_hostile_job_reaches_nothing_of_the_ci_natively(polyarch: Polyarch) -> None:
    _run_hostile(polyarch, None, "native", "amd64")


@pytest.mark.timeout(400)
def test_a_hostile_job_reaches_nothing_of_the_ci_in_an_emulated_root(polyarch: Polyarch) -> None:
    require_emulated_arm64()
    polyarch.write_config(archs=("arm64",), heartbeat_timeout=20, timeout=120)
    _run_hostile(polyarch, ROOTFS_ARM64, "arm64 root", "arm64")


def test_a_hook_already_in_the_mirror_never_runs(polyarch: Polyarch) -> None:
    """A job cannot write the mirror any more; a hook already there (from an older
    polyarch, or put there by hand) and an fsmonitor command in its config are still
    never run by the runner's git, so the next failing commit still fails."""
    polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    runner = polyarch.runner("r1")
    polyarch.observer()
    polyarch.wait_results([polyarch.repo.git("rev-parse", "HEAD")])
    mirror = polyarch.root / "var/runner/r1/mirrors/demo.git"
    hook = mirror / "hooks/post-checkout"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text(f"#!/bin/sh\ntouch {polyarch.root}/hook-ran\nprintf 'exit 0\\n' > test.sh\n")
    hook.chmod(0o755)
    with (mirror / "config").open("a") as f:
        f.write(f"[core]\n\tfsmonitor = \"touch {polyarch.root}/fsmonitor-ran; false\"\n")
    broken = polyarch.repo.commit("echo broken; exit 1")
    assert polyarch.wait_results([broken])[broken]["status"] == "failed"
    assert not (polyarch.root / "hook-ran").exists() and not (polyarch.root / "fsmonitor-ran").exists()
    assert runner.alive
    record("job", "a git hook and fsmonitor already in the mirror", where="native", outcome="never run")


def test_a_job_over_its_limits_ends_error_naming_the_limit(polyarch: Polyarch) -> None:
    """runner.job_pids stops a fork bomb, runner.job_memory a job eating memory: each
    ends `error` saying which limit it reached, and the runner goes on."""
    needs_root("cgroup limits")
    polyarch.write_config(runner_settings='job_pids = 40\njob_memory = "96M"')
    polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    runner = polyarch.runner("r1")
    polyarch.observer()
    polyarch.wait_results([polyarch.repo.git("rev-parse", "HEAD")])
    forks = polyarch.repo.commit("for i in $(seq 200); do sleep 2 & done 2>/dev/null; wait; exit 0")
    memory = polyarch.repo.commit("python3 -c \"b = b'x' * (400 << 20); print(len(b))\"")
    fine = polyarch.repo.commit("exit 0")
    results = polyarch.wait_results([forks, memory, fine], timeout=90)
    assert results[forks]["status"] == "error", results[forks]
    assert "reached runner.job_pids (40 processes; forks refused: " in results[forks]["reason"]
    assert results[memory]["status"] == "error", results[memory]
    assert "more memory than runner.job_memory (96 MiB)" in results[memory]["reason"]
    assert results[fine]["status"] == "passed" and runner.alive
    record("job", "fork 200 processes (job_pids = 40)", where="native", outcome="error: " + results[forks]["reason"])
    record("job", "use 400 MiB (job_memory = 96M)", where="native", outcome="error: " + results[memory]["reason"])


def test_a_second_runner_under_a_taken_name_is_refused(polyarch: Polyarch) -> None:
    """Two processes under one name would share a worktree and kill each other's jobs."""
    polyarch.dispatcher()
    first = polyarch.runner("r1")
    lock = polyarch.root / "var" / "runner" / "r1" / ".lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip() == str(first.pid),
             what="the first runner to lock its work folder")
    second = polyarch.cli("runner", "serve", "--config", str(polyarch.config), "--name", "r1")
    assert second.returncode == 2, second.stderr
    assert "runner r1 is already running on this host (pid " in second.stderr
    assert "give this one another name (--name)" in second.stderr
    assert len(second.stderr.strip().splitlines()) == 1, second.stderr
    sha = polyarch.repo.commit("exit 0")
    polyarch.observer()
    assert polyarch.wait_results([sha])[sha]["status"] == "passed" and first.alive
    record("hostile", "a second runner under a name already running", refused=True)


def test_a_job_gets_a_clean_environment_not_the_runners(polyarch: Polyarch) -> None:
    """Whatever the runner's unit put in its environment (a cloud key, systemd's notify
    socket) stays the runner's; a lab's own variable reaches jobs when pass_env names it."""
    polyarch.write_config(runner_settings='pass_env = ["LAB_TOOLCHAIN"]')
    polyarch.repo.commit("exit 0")
    polyarch.dispatcher()
    polyarch.runner("r1", prefix=("env", "AWS_SECRET_ACCESS_KEY=hunter2", "LAB_TOOLCHAIN=/opt/tc",
                                  "INVOCATION_ID=0123abcd"))
    polyarch.observer()
    sha = polyarch.repo.commit("env | sort; exit 0")
    polyarch.wait_results([sha])
    log = (polyarch.results / "demo" / sha / "amd64.log").read_text()
    assert "LAB_TOOLCHAIN=/opt/tc" in log and f"POLYARCH_COMMIT={sha}" in log and "PATH=" in log
    for leaked in ("hunter2", "INVOCATION_ID", "NOTIFY_SOCKET", "PYTHONPATH"):
        assert leaked not in log, log
    record("hostile", "the runner's environment (credentials, notify socket) read by a job", refused=True)
