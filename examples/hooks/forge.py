"""What github-status.py and gitlab-status.py share: which statuses a polyarch event
posts, and the HTTP call. Standard library only; imported from this folder.

Each event gives one status per architecture, named `polyarch/<arch>`, plus `polyarch`
for the whole commit (the one a branch rule can require):
  on_queued       pending for each architecture queued, and for `polyarch`
  on_result       the final status of that architecture
  on_commit_done  the final status of `polyarch`
A status links to the commit's page when the dispatcher has `public_url` set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

ATTEMPTS = 3  # a forge's brief outage; polyarch logs the hook's failure after that


@dataclasses.dataclass(frozen=True)
class Status:
    context: str  # polyarch/<arch>, or polyarch for the commit
    state: str  # polyarch's: pending, passed, failed, timeout, error, flaky, cancelled
    description: str


def statuses(env: dict[str, str]) -> list[Status]:
    """The statuses the event in `env` (a hook's environment) posts."""
    event, commit = env["POLYARCH_EVENT"], env["POLYARCH_COMMIT"][:12]
    if event == "on_queued":
        archs = env["POLYARCH_ARCHS"].split()
        return [Status(f"polyarch/{a}", "pending", f"queued on {a}") for a in archs] + [
            Status("polyarch", "pending", f"testing {commit} on {len(archs)} architecture(s)")]
    if event in ("on_result", "on_failure"):
        arch, state = env["POLYARCH_ARCH"], env["POLYARCH_STATUS"]
        return [Status(f"polyarch/{arch}", state, f"{state} on {arch} (runner {env.get('POLYARCH_RUNNER', '?')})")]
    if event == "on_commit_done":
        return [Status("polyarch", env["POLYARCH_OVERALL"], env["POLYARCH_STATUSES"])]
    raise SystemExit(f"{Path(sys.argv[0]).name}: event {event!r} posts no status "
                     "(use it for on_queued, on_result and on_commit_done)")


def arguments(args: list[str], api: str, usage: str) -> tuple[str, str, str]:
    """`[--api URL] TARGET TOKEN_FILE` -> (api, target, token); a wrong line exits with `usage`."""
    if len(args) == 4 and args[0] == "--api":
        api, args = args[1].rstrip("/"), args[2:]
    if len(args) != 2 or not args[0]:
        raise SystemExit(f"usage: {Path(sys.argv[0]).name} {usage}")
    return api, args[0], token(args[1])


def token(path: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise SystemExit(f"{Path(sys.argv[0]).name}: cannot read the token file: {exc}") from None
    if not value:
        raise SystemExit(f"{Path(sys.argv[0]).name}: the token file {path} is empty")
    return value


def post(url: str, body: dict, headers: dict[str, str]) -> None:
    """POST JSON, retried a few times over a forge's 5xx or a dropped connection."""
    if not url.startswith(("https://", "http://")):
        raise SystemExit(f"{Path(sys.argv[0]).name}: {url!r} is not an http(s):// URL")
    data = json.dumps(body).encode()
    for attempt in range(1, ATTEMPTS + 1):
        # The scheme is checked above: no file:// or custom-scheme surprises.
        request = urllib.request.Request(url, data=data, method="POST",  # noqa: S310
                                         headers={"Content-Type": "application/json", **headers})
        try:
            with urllib.request.urlopen(request, timeout=20):  # noqa: S310
                return
        except urllib.error.HTTPError as exc:
            if exc.code < 500 or attempt == ATTEMPTS:
                detail = exc.read(300).decode("utf-8", "replace")
                raise SystemExit(f"{Path(sys.argv[0]).name}: {url} answered {exc.code}: {detail}") from None
        except OSError as exc:
            if attempt == ATTEMPTS:
                raise SystemExit(f"{Path(sys.argv[0]).name}: cannot reach {url}: {exc}") from None
        time.sleep(attempt)


def run(post_one: Callable[[Status, str], None]) -> int:
    """Post every status of this hook's event with `post_one(status, link)`."""
    env = dict(os.environ)
    for status in statuses(env):
        post_one(status, env.get("POLYARCH_PAGE_URL", ""))
    return 0
