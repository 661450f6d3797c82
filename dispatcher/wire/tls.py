"""TLS with client certificates (mutual TLS) for runners and observers off the machine.

stdlib `ssl` for the connections; the `openssl` command for making a small CA and the
certificates (`polyarch-dispatcher certs`), since the stdlib cannot sign certificates.
"""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path
from typing import Optional

from dispatcher.common.config import Config
from dispatcher.common.errors import ConfigError, SetupError


def for_client(config: Config, section: str) -> Optional[ssl.SSLContext]:
    """The TLS context a client section ([runner] or [observer]) asks for, or None."""
    own = getattr(config, section)
    if own.tls_ca is None:
        return None
    return client_context(own.tls_ca, own.tls_cert, own.tls_key, config.path, section)


def for_server(config: Config) -> Optional[ssl.SSLContext]:
    d = config.dispatcher
    if d.tls_cert is None or d.tls_key is None:
        return None
    return server_context(d.tls_cert, d.tls_key, d.tls_client_ca, config.path)


def server_context(cert: Path, key: Path, client_ca: Optional[Path], config_path: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
        if client_ca is not None:
            ctx.load_verify_locations(client_ca)
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(config_path, "dispatcher.tls_cert", f"cannot load {cert} / {key} / {client_ca}: {exc}") from None
    return ctx


def client_context(ca: Path, cert: Optional[Path], key: Optional[Path], config_path: Path,
                   section: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(ca)
        if cert is not None:
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(config_path, f"{section}.tls_ca", f"cannot load {ca} / {cert} / {key}: {exc}") from None
    return ctx


def make_certs(out: Path, hosts: list[str], clients: list[str], days: int = 825) -> list[Path]:
    """A CA, a server certificate for `hosts` (names or IPs) and one client certificate each."""
    if shutil.which("openssl") is None:
        raise SetupError("the openssl command is missing: apt-get install openssl")
    out.mkdir(parents=True, exist_ok=True)
    made = []
    ca_key, ca_cert = out / "ca.key", out / "ca.crt"
    if not ca_cert.exists():
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(ca_key), "-out", str(ca_cert), "-days", str(days), "-subj", "/CN=polyarch CA")
        made.append(ca_cert)
    sans = ",".join(f"IP:{h}" if _is_ip(h) else f"DNS:{h}" for h in hosts)
    made.append(_signed(out, "dispatcher", sans, "serverAuth", ca_cert, ca_key, days))
    for name in clients:
        made.append(_signed(out, name, "", "clientAuth", ca_cert, ca_key, days))
    for key in out.glob("*.key"):
        key.chmod(0o600)
    return made


def _signed(out: Path, name: str, sans: str, usage: str, ca_cert: Path, ca_key: Path, days: int) -> Path:
    key, csr, cert = out / f"{name}.key", out / f"{name}.csr", out / f"{name}.crt"
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", f"/CN={name}")
    with tempfile.NamedTemporaryFile("w", suffix=".ext") as ext:
        ext.write(f"extendedKeyUsage = {usage}\n")
        if sans:
            ext.write(f"subjectAltName = {sans}\n")
        ext.flush()
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-out", str(cert), "-days", str(days), "-extfile", ext.name)
    csr.unlink()
    return cert


def _openssl(*args: str) -> None:
    result = subprocess.run(["openssl", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise SetupError(f"openssl {args[0]} failed: {result.stderr.strip().splitlines()[-1:]}")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
