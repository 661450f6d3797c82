"""A runner on another lab host, played by a network namespace joined by a veth pair.

The dispatcher listens on the host's end of the veth with mutual TLS; the remote runner
connects from inside the namespace. Cutting the link longer than heartbeat_timeout
moves its job to another runner; when the link comes back the remote runner reconnects
on its own and its late result is dropped, never written twice.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import Polyarch, skip_unless_ci, wait_for
from dispatcher.wire.auth import load_secret
from dispatcher.wire.tls import make_certs

HOST_IP, LAB_IP = "10.199.73.1", "10.199.73.2"  # our own test hosts, inside this machine only


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces: run bash scripts/test.sh as root"
    if shutil.which("ip") is None:
        return "needs the ip command: apt-get install iproute2"
    return None


pytestmark = pytest.mark.daemons


@pytest.fixture(autouse=True)
def _lab_host_possible() -> None:
    reason = _why_not()
    if reason is not None:
        skip_unless_ci(reason)


def ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def lab_host():
    tag = f"pa{os.getpid() % 100000}"
    ns, host_end, lab_end = f"{tag}lab", f"{tag}h", f"{tag}l"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    ip("netns", "add", ns)
    try:
        ip("link", "add", host_end, "type", "veth", "peer", "name", lab_end)
        ip("link", "set", lab_end, "netns", ns)
        ip("addr", "add", f"{HOST_IP}/30", "dev", host_end)
        ip("link", "set", host_end, "up")
        ip("addr", "add", f"{LAB_IP}/30", "dev", lab_end, ns=ns)
        ip("link", "set", lab_end, "up", ns=ns)
        ip("link", "set", "lo", "up", ns=ns)
        yield ns, lab_end
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.timeout(180)
def test_remote_runner_over_mutual_tls_loses_its_job_when_cut_off_and_comes_back(
        polyarch: Polyarch, lab_host, tmp_path: Path) -> None:
    ns, lab_end = lab_host
    pki = tmp_path / "pki"
    make_certs(pki, [HOST_IP], ["lab-runner"])
    polyarch.write_config(heartbeat_timeout=2)
    client_tls = (f'tls_ca = "{pki}/ca.crt"\ntls_cert = "{pki}/lab-runner.crt"\ntls_key = "{pki}/lab-runner.key"\n')
    text = polyarch.config.read_text()
    text = text.replace('listen = "127.0.0.1:0"\n', f'listen = "{HOST_IP}:0"\ntls_cert = "{pki}/dispatcher.crt"\n'
                        f'tls_key = "{pki}/dispatcher.key"\ntls_client_ca = "{pki}/ca.crt"\n')
    text = text.replace('dispatcher = "127.0.0.1:0"\n', f'dispatcher = "{HOST_IP}:0"\n' + client_tls)
    polyarch.config.write_text(text)
    load_secret(polyarch.root / "var/secret", create=True)  # off loopback it is never made on the fly

    attempts, gate = polyarch.shared / "attempts", polyarch.shared / "gate"
    sha = polyarch.repo.commit(f"echo $POLYARCH_ATTEMPT >> {attempts}; "
                               f"if [ $POLYARCH_ATTEMPT = 1 ]; then while [ ! -e {gate} ]; do sleep 0.1; done; fi")
    dispatcher = polyarch.dispatcher()
    remote = polyarch.runner("remote", prefix=("ip", "netns", "exec", ns))
    polyarch.observer()
    wait_for(lambda: attempts.exists(), timeout=30, what="the remote runner to start the job")
    assert f"from {LAB_IP}:" in dispatcher.log()  # it really came across the veth

    ip("link", "set", lab_end, "down", ns=ns)  # the lab host drops off the network
    wait_for(lambda: "expired" in dispatcher.log(), timeout=20, what="the remote runner's lease to expire")
    polyarch.runner("local")
    result = polyarch.wait_results([sha], timeout=30)[sha]
    assert result["runner"] == "local" and result["attempt"] == 2 and result["status"] == "passed"

    gate.touch()  # the remote job finishes while cut off: its result waits in the runner's outbox ...
    outbox = polyarch.root / "var/runner/remote/outbox"
    wait_for(lambda: outbox.exists() and list(outbox.iterdir()), timeout=30, what="the remote result to be spooled")
    ip("link", "set", lab_end, "up", ns=ns)  # ... until the link comes back
    wait_for(lambda: "discarded our result" in remote.log(), timeout=60,
             what="the remote runner to reconnect and have its late result dropped")
    assert remote.log().count("connected to dispatcher") >= 2
    assert "dropped late or duplicate result from remote" in dispatcher.log()
    final = polyarch.result(sha)
    assert final["runner"] == "local" and final["attempt"] == 2
    wait_for(lambda: (polyarch.results / "demo" / sha / "index.html").exists(), what="the commit's dashboard page")
    assert sorted(p.name for p in (polyarch.results / "demo" / sha).iterdir()) == [
        "amd64.json", "amd64.log", "index.html", "summary.json"]
