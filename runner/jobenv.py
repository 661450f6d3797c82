"""What a job finds in its environment: a clean one, never the runner's own.

The runner's environment holds what only the runner should have: systemd's
NOTIFY_SOCKET and watchdog variables, a GIT_SSH_COMMAND with its key, whatever a unit's
Environment= or EnvironmentFile= put there (cloud credentials, tokens). A job gets the
locale, PATH and proxy settings it needs to run like a login shell would, the variables
`runner.pass_env` names, and the POLYARCH_* variables that describe the job.
"""

from __future__ import annotations

import re
from typing import Mapping

# Set for a shell to behave as expected, and for a suite behind a lab's proxy to reach
# its package index; nothing here grants anything.
BASE = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "TZ", "TMPDIR", "LANG", "LANGUAGE",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
    "SSL_CERT_FILE", "SSL_CERT_DIR",
})
LOCALE = re.compile(r"LC_[A-Z_]+\Z")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"


def job_environment(runner_env: Mapping[str, str], pass_env: tuple[str, ...],
                    polyarch: Mapping[str, str]) -> dict[str, str]:
    """The job's environment: BASE and locale variables and `pass_env` names taken from
    `runner_env` when set there, then the job's own POLYARCH_* variables (which win)."""
    env = {k: v for k, v in runner_env.items() if k in BASE or LOCALE.match(k) or k in pass_env}
    env.setdefault("PATH", DEFAULT_PATH)
    env.update(polyarch)
    return env
