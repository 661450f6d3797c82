"""`.polyarch.toml` at a repository's root: its own test command and timeout.

```toml
test_command = "make check"
timeout = 300

[arch.arm64]
test_command = "make check SLOW=1"
timeout_factor = 4     # this suite is lighter under emulation than the config's default
```
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from dispatcher.common.errors import ConfigError, InvalidName
from dispatcher.common.names import parse_arch

FILENAME = ".polyarch.toml"
_KEYS = {"test_command": str, "timeout": (int, float), "timeout_factor": (int, float)}


@dataclasses.dataclass(frozen=True)
class JobSettings:
    test_command: str
    timeout: float
    timeout_factor: float = 1.0


def settings_for(checkout: Path, arch: str, default: JobSettings) -> JobSettings:
    """The settings for `arch`: the repo file's arch section, its top level, the config."""
    path = checkout / FILENAME
    if not path.is_file():
        return default
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(FILENAME, "", f"not valid TOML: {exc}") from None
    merged = dataclasses.asdict(default)
    merged.update(_section(data, "", {"arch"}))
    arch_tables = data.get("arch", {})
    if not isinstance(arch_tables, dict):
        raise ConfigError(FILENAME, "arch", "expected a table of [arch.<name>] sections")
    for name, table in arch_tables.items():
        try:
            parsed = parse_arch(name).value
        except InvalidName as exc:
            raise ConfigError(FILENAME, f"arch.{name}", str(exc)) from None
        values = _section(table, f"arch.{name}", set())
        if parsed == arch:
            merged.update(values)
    return JobSettings(test_command=merged["test_command"], timeout=float(merged["timeout"]),
                       timeout_factor=float(merged["timeout_factor"]))


def _section(table: object, prefix: str, skip: set[str]) -> dict[str, object]:
    if not isinstance(table, dict):
        raise ConfigError(FILENAME, prefix, "expected a table")
    out = {}
    for key, value in table.items():
        if key in skip:
            continue
        full = f"{prefix}.{key}" if prefix else key
        kind = _KEYS.get(key)
        if kind is None:
            raise ConfigError(FILENAME, full, "unknown key")
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ConfigError(FILENAME, full, f"wrong type: {value!r:.40}")
        if key in ("timeout", "timeout_factor") and value <= 0:
            raise ConfigError(FILENAME, full, "must be greater than 0")
        if key == "test_command" and not value.strip():
            raise ConfigError(FILENAME, full, "must not be empty")
        out[key] = value
    return out
