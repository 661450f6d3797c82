#!/usr/bin/env python3
"""polyarch hook: commit statuses on GitLab (gitlab.com or your own), per architecture.

    [[repos]]
    on_queued = "python3 /etc/polyarch/hooks/gitlab-status.py PROJECT /etc/polyarch/gitlab-token"
    on_result = "python3 /etc/polyarch/hooks/gitlab-status.py PROJECT /etc/polyarch/gitlab-token"
    on_commit_done = "python3 /etc/polyarch/hooks/gitlab-status.py PROJECT /etc/polyarch/gitlab-token"

PROJECT is the project's numeric id or its path (`group/project`). The token (a project
access token with the `api` scope, Developer role) is read from the file. `--api URL`
for your own GitLab (https://HOST/api/v4). Posts `pending` per architecture at queue
time and the final status after, as forge.py describes; exits non-zero when GitLab
refuses, which polyarch logs.
"""

from __future__ import annotations

import os
import sys
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forge  # noqa: E402

# polyarch's status -> GitLab's commit status state.
STATE = {"pending": "pending", "passed": "success", "flaky": "success", "failed": "failed",
         "timeout": "failed", "error": "failed", "cancelled": "canceled"}


def main(args: list[str]) -> int:
    api, project, secret = forge.arguments(args, "https://gitlab.com/api/v4", "[--api URL] PROJECT TOKEN_FILE")
    project = urllib.parse.quote(project, safe="")
    url = f"{api}/projects/{project}/statuses/{os.environ['POLYARCH_COMMIT']}"

    def post_one(status: forge.Status, link: str) -> None:
        body = {"state": STATE[status.state], "name": status.context, "description": status.description[:255]}
        if link:
            body["target_url"] = link
        forge.post(url, body, {"PRIVATE-TOKEN": secret})
    return forge.run(post_one)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
