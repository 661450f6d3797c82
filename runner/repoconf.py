"""`.polyarch.toml` at a repository's root: its own test command, timeout and setup.

```toml
test_command = "make check"
timeout = 300
setup = "./configure --prefix=$POLYARCH_ENV && make install"   # cached per key (runner/envcache.py)
setup_key = ["configure.ac", "deps/*.txt"]

[arch.arm64]
test_command = "make check SLOW=1"
timeout = 1200         # the limit on arm64, as written: not multiplied by timeout_factor
# or: timeout_factor = 4  (the repo-wide timeout x 4 on arm64; the config's default is 20 emulated)
```
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

from dispatcher.common.config import check_key_glob
from dispatcher.common.errors import ConfigError, InvalidName
from dispatcher.common.names import parse_arch
from dispatcher.common.sections import Section, read_toml

FILENAME = ".polyarch.toml"


@dataclasses.dataclass(frozen=True)
class JobSettings:
    test_command: str
    timeout: float  # the repository-wide timeout, in native seconds
    timeout_factor: float = 1.0  # applies to `timeout` only
    arch_timeout: Optional[float] = None  # [arch.<name>] timeout: the limit itself, never multiplied
    setup: str = ""  # run once per key, its folder ($POLYARCH_ENV) cached; "" = none
    setup_key: tuple[str, ...] = ()

    @property
    def limit(self) -> float:
        return self.arch_timeout if self.arch_timeout is not None else self.timeout * self.timeout_factor

    def limit_reason(self, arch: str) -> str:
        """Which limit this is, for a timeout's reason."""
        if self.arch_timeout is not None:
            return f"[arch.{arch}] timeout in {FILENAME}"
        return f"timeout {self.timeout:g} s x timeout_factor {self.timeout_factor:g}"


def settings_for(checkout: Path, arch: str, default: JobSettings) -> JobSettings:
    """The settings for `arch`: the repo file's arch section, its top level, the config."""
    path = checkout / FILENAME
    if not path.is_file():
        return default
    # The file comes from the commit: its errors name it as the repository sees it.
    top = Section(FILENAME, "", read_toml(path, shown=FILENAME))
    arch_tables = top.get("arch", dict, {})
    merged = dataclasses.asdict(default)
    merged.update(_values(top))
    for name, table in arch_tables.items():
        try:
            parsed = parse_arch(name).value
        except InvalidName as exc:
            raise ConfigError(FILENAME, f"arch.{name}", str(exc)) from None
        values = _values(Section(FILENAME, f"arch.{name}", table))
        if parsed == arch:
            # An architecture's own timeout is its limit: the factor is for the repo-wide one.
            if "timeout" in values:
                values["arch_timeout"] = values.pop("timeout")
            merged.update(values)
    return JobSettings(test_command=merged["test_command"], timeout=float(merged["timeout"]),
                       timeout_factor=float(merged["timeout_factor"]),
                       arch_timeout=None if merged["arch_timeout"] is None else float(merged["arch_timeout"]),
                       setup=merged["setup"], setup_key=tuple(merged["setup_key"]))


def _values(s: Section) -> dict[str, Any]:
    """The keys a repository may set, each checked; any other key is refused as unknown."""
    out: dict[str, Any] = {}
    for key in ("test_command", "setup"):
        command = s.command(key)
        if command is not None:
            out[key] = command
    if "setup_key" in s.table:
        out["setup_key"] = tuple(s.checked("setup_key", g, check_key_glob) for g in s.get("setup_key", list, []))
    for key in ("timeout", "timeout_factor"):
        if key in s.table:
            out[key] = s.positive(key, 0.0)
    s.done()
    return out
