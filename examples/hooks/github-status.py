#!/usr/bin/env python3
"""polyarch hook: commit statuses on GitHub (or GitHub Enterprise), per architecture.

    [[repos]]
    on_queued = "python3 /etc/polyarch/hooks/github-status.py OWNER/REPO /etc/polyarch/github-token"
    on_result = "python3 /etc/polyarch/hooks/github-status.py OWNER/REPO /etc/polyarch/github-token"
    on_commit_done = "python3 /etc/polyarch/hooks/github-status.py OWNER/REPO /etc/polyarch/github-token"

The token (a fine-grained token with "Commit statuses: write") is read from the file, so
it never shows in the config or a process list. `--api URL` for GitHub Enterprise
(https://HOST/api/v3). Posts `pending` per architecture at queue time and the final
status after, as forge.py describes; exits non-zero when GitHub refuses, which polyarch
logs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forge  # noqa: E402

# polyarch's status -> GitHub's commit status state (GitHub has no "cancelled").
STATE = {"pending": "pending", "passed": "success", "flaky": "success", "failed": "failure",
         "timeout": "error", "error": "error", "cancelled": "error"}


def main(args: list[str]) -> int:
    api, repo, secret = forge.arguments(args, "https://api.github.com", "[--api URL] OWNER/REPO TOKEN_FILE")
    url = f"{api}/repos/{repo}/statuses/{os.environ['POLYARCH_COMMIT']}"
    headers = {"Authorization": f"Bearer {secret}", "Accept": "application/vnd.github+json",
               "X-GitHub-Api-Version": "2022-11-28"}

    def post_one(status: forge.Status, link: str) -> None:
        body = {"state": STATE[status.state], "context": status.context, "description": status.description[:140]}
        if link:
            body["target_url"] = link
        forge.post(url, body, headers)
    return forge.run(post_one)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
