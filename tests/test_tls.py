"""Mutual TLS on loopback: only clients with a certificate from our CA get in."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from conftest import Polyarch, dispatcher_in_thread
from dispatcher.wire.client import Connection
from dispatcher.wire.protocol import Ack, Dispatch, Role
from dispatcher.wire.tls import client_context, make_certs


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    out = tmp_path / "pki"
    make_certs(out, ["127.0.0.1"], ["r1"])
    make_certs(tmp_path / "other", ["127.0.0.1"], ["intruder"])  # a different CA
    return out


@pytest.fixture
def tls_server(polyarch: Polyarch, pki: Path):
    polyarch.config.write_text(polyarch.config.read_text().replace(
        'max_attempts = 3\n',
        f'max_attempts = 3\ntls_cert = "{pki}/dispatcher.crt"\ntls_key = "{pki}/dispatcher.key"\n'
        f'tls_client_ca = "{pki}/ca.crt"\n'))
    with dispatcher_in_thread(polyarch.config) as srv:
        yield srv


def test_client_with_a_certificate_from_our_ca_gets_in(tls_server, pki: Path) -> None:
    ctx = client_context(pki / "ca.crt", pki / "r1.crt", pki / "r1.key", Path("cfg"), "runner")
    with Connection(tls_server.address, Role.OBSERVER, "r1", tls_server.secret, tls=ctx) as conn:
        assert isinstance(conn.channel.sock, ssl.SSLSocket)
        assert isinstance(conn.request(Dispatch("demo", "main", [])), Ack)


@pytest.mark.parametrize("who", ["no certificate", "another CA's certificate", "plain TCP"])
def test_everyone_else_is_refused_and_the_server_serves_on(tls_server, pki: Path, tmp_path: Path, who: str) -> None:
    other = tmp_path / "other"
    ctx = {
        "no certificate": client_context(pki / "ca.crt", None, None, Path("cfg"), "runner"),
        "another CA's certificate": client_context(pki / "ca.crt", other / "intruder.crt", other / "intruder.key",
                                                   Path("cfg"), "runner"),
        "plain TCP": None,
    }[who]
    with pytest.raises((ssl.SSLError, OSError, ConnectionError)):
        with Connection(tls_server.address, Role.OBSERVER, "x", tls_server.secret, tls=ctx, timeout=3) as conn:
            conn.request(Dispatch("demo", "main", []), timeout=3)
    test_client_with_a_certificate_from_our_ca_gets_in(tls_server, pki)


def test_client_refuses_a_dispatcher_signed_by_another_ca(tls_server, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ctx = client_context(other / "ca.crt", other / "intruder.crt", other / "intruder.key", Path("cfg"), "runner")
    with pytest.raises(ssl.SSLCertVerificationError):
        Connection(tls_server.address, Role.OBSERVER, "x", tls_server.secret, tls=ctx, timeout=3)
