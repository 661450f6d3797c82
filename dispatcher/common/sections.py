"""One reader for TOML tables: the config file and a repository's .polyarch.toml alike.

`read_toml` parses a file (one line naming it when it is not TOML); a `Section` reads a
table key by key, checking each type, and `done()` reports the first key nobody asked
for as unknown. Every message names the file and the key's full dotted path.
"""

from __future__ import annotations

import difflib
import math
import sys
from pathlib import Path
from typing import Any, Callable, Optional

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from dispatcher.common.errors import ConfigError, InvalidName


def read_toml(path: Path, what: str = "file", shown: Optional[str] = None) -> dict[str, Any]:
    """The parsed file; ConfigError names it (as `shown`, when given) for anything else."""
    name = shown or path
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(name, "", f"cannot read {what}: {exc.strerror}") from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(name, "", f"not valid TOML: {exc}") from None


class Section:
    """Reads one TOML table, checking types; leftover keys are reported as unknown."""

    def __init__(self, path: Path | str, prefix: str, table: Any) -> None:
        self.path, self.prefix = path, prefix
        if not isinstance(table, dict):
            raise ConfigError(path, prefix, f"expected a table, got {_show(table)}")
        self.table = dict(table)
        self.base = Path(path).parent
        self.asked: set[str] = set()  # every key the reader knows, for "did you mean"

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, message: str) -> ConfigError:
        return ConfigError(self.path, self.key(name), message)

    def get(self, name: str, kind: type | tuple[type, ...], default: Any) -> Any:
        self.asked.add(name)
        if name not in self.table:
            return default
        value = self.table.pop(name)
        # bool is an int in Python; a config that says `timeout = true` is a mistake.
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            raise self.fail(name, f"expected {_kind_name(kind)}, got {_show(value)}")
        if not isinstance(value, kind):
            raise self.fail(name, f"expected {_kind_name(kind)}, got {_show(value)}")
        return value

    def positive(self, name: str, default: float, integer: bool = False) -> Any:
        value = self.get(name, int if integer else (int, float), default)
        # nan compares false with everything, inf never runs out: neither is a duration.
        if not math.isfinite(value) or value <= 0:
            raise self.fail(name, f"must be a finite number greater than 0, got {_show(value)}")
        return int(value) if integer else float(value)

    def command(self, name: str) -> Optional[str]:
        """A shell command: a non-empty string, or None when absent."""
        value = self.get(name, str, None)
        if value is not None and not value.strip():
            raise self.fail(name, "must not be empty")
        return value

    def path_(self, name: str, default: Path | None) -> Path | None:
        value = self.get(name, str, None)
        if value is None:
            return None if default is None else (self.base / default)
        if not value:
            raise self.fail(name, "must not be empty")
        return (self.base / Path(value).expanduser())

    def parsed(self, name: str, parse: Callable[[str], Any], default: Any) -> Any:
        """A string turned into a value by `parse`, whose ValueError names the fault."""
        value = self.get(name, str, None)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError as exc:
            raise self.fail(name, f"{_show(value)}: {exc}") from None

    def checked(self, name: str, value: Any, check: Callable[[Any], Any]) -> Any:
        try:
            return check(value)
        except InvalidName as exc:
            raise self.fail(name, str(exc)) from None

    def done(self) -> None:
        if self.table:
            name = sorted(self.table)[0]
            close = difflib.get_close_matches(name, sorted(self.asked), n=1, cutoff=0.6)
            raise self.fail(name, f"unknown key (did you mean `{close[0]}`?)" if close else "unknown key")


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {int: "an integer", float: "a number", str: "a string", list: "a list",
             bool: "true or false", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
