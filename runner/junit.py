"""Per-test results for plain pytest commands: add `--junitxml "$POLYARCH_JUNIT"`.

Any test command may write JUnit XML to $POLYARCH_JUNIT itself. For the most common
command, a bare `pytest ...` or `python -m pytest ...`, polyarch adds the option so
that users get per-test results without touching their config. Only a single simple
command is changed: anything with shell syntax (pipes, `&&`, `;`, redirections,
substitutions) is left exactly as written, since appending an option there could change
what runs.
"""

from __future__ import annotations

import re
import shlex

_SHELL_SYNTAX = re.compile(r"[;&|<>`$()\n\\]")
_PYTHON = re.compile(r"^(?:.*/)?python(?:3(?:\.\d+)?)?$")
_PYTEST = re.compile(r"^(?:.*/)?(?:pytest|py\.test)(?:-3)?$")


def is_plain_pytest(command: str) -> bool:
    if _SHELL_SYNTAX.search(command):
        return False
    try:
        words = shlex.split(command)
    except ValueError:
        return False
    if not words:
        return False
    if _PYTEST.match(words[0]):
        return True
    return bool(_PYTHON.match(words[0])) and words[1:3] == ["-m", "pytest"]


def with_junit(command: str) -> str:
    """The command to run: `command` with --junitxml added when it is a plain pytest run
    that does not already choose its own JUnit file."""
    if not is_plain_pytest(command) or "--junitxml" in command or "--junit-xml" in command:
        return command
    return f'{command} --junitxml="$POLYARCH_JUNIT"'
