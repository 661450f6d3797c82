#!/bin/sh
# polyarch on_failure hook: mail the failing result to the commit's people.
#
#   [[repos]]
#   on_failure = "sh /etc/polyarch/hooks/mail-on-failure.sh lab-ci@example.org"
#
# Needs a local MTA's sendmail (Debian: apt-get install msmtp-mta, or postfix).
# polyarch runs it with the result in its environment: POLYARCH_REPO, POLYARCH_COMMIT,
# POLYARCH_BRANCH, POLYARCH_ARCH, POLYARCH_STATUS, POLYARCH_OVERALL, POLYARCH_RUNNER,
# POLYARCH_RESULT_FILE, POLYARCH_LOG_FILE, POLYARCH_SUMMARY_FILE, POLYARCH_PAGE.
set -eu
to=${1:?usage: mail-on-failure.sh ADDRESS}
short=$(printf %.12s "$POLYARCH_COMMIT")
{
  printf 'To: %s\n' "$to"
  printf 'Subject: [polyarch] %s %s %s on %s\n' "$POLYARCH_REPO" "$short" "$POLYARCH_STATUS" "$POLYARCH_ARCH"
  printf 'Content-Type: text/plain; charset=utf-8\n\n'
  printf '%s %s (branch %s) %s on %s, runner %s.\n' "$POLYARCH_REPO" "$POLYARCH_COMMIT" "$POLYARCH_BRANCH" \
    "$POLYARCH_STATUS" "$POLYARCH_ARCH" "$POLYARCH_RUNNER"
  printf 'Overall so far: %s\nDashboard page: %s\nResult: %s\n\nLast 40 lines of the log:\n\n' \
    "$POLYARCH_OVERALL" "$POLYARCH_PAGE" "$POLYARCH_RESULT_FILE"
  tail -n 40 "$POLYARCH_LOG_FILE"
} | sendmail -t
