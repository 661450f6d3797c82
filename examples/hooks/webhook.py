#!/usr/bin/env python3
"""polyarch on_result / on_failure hook: POST the result to a chat or HTTP webhook.

    [[repos]]
    on_failure = "python3 /etc/polyarch/hooks/webhook.py https://chat.example.org/hooks/XYZ"

Sends {"text": "...", "result": <the <arch>.json>} as JSON, which Slack, Mattermost and
Rocket.Chat incoming webhooks accept (they read "text"); anything else gets the whole
result under "result". Standard library only. Exits non-zero on failure, which
polyarch logs; it never retries, so a chat outage cannot pile up work.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.request


def main(url: str) -> int:
    if not url.startswith(("https://", "http://")):
        sys.exit(f"webhook.py: {url!r} is not an http(s):// URL")
    with open(os.environ["POLYARCH_RESULT_FILE"], encoding="utf-8") as f:
        result = json.load(f)
    status = os.environ["POLYARCH_STATUS"]
    failing = result.get("failed_tests") or []
    text = (f"polyarch: {os.environ['POLYARCH_REPO']} {os.environ['POLYARCH_COMMIT'][:12]} "
            f"{status} on {os.environ['POLYARCH_ARCH']} (runner {os.environ['POLYARCH_RUNNER']}; "
            f"overall {os.environ['POLYARCH_OVERALL']})")
    if failing:
        text += "\nfailing: " + ", ".join(failing[:10])
    body = json.dumps({"text": text, "result": result}).encode()
    # The scheme is checked above: no file:// or custom-scheme surprises.
    request = urllib.request.Request(url, data=body, method="POST",  # noqa: S310
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:  # noqa: S310
        return 0 if 200 <= response.status < 300 else 1


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: webhook.py URL")
    sys.exit(main(sys.argv[1]))
