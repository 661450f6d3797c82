#!/usr/bin/env bash
# Set up polyarch on a fresh machine: system packages, a venv in .venv, polyarch with its
# test extra. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# Emulated arm64 runners (qemu-user + a Debian arm64 root) need root; set
# POLYARCH_SKIP_EMULATION=1 to leave them out (their tests then skip, saying why).
emulation=1
if [ "$(id -u)" != 0 ] || [ -n "${POLYARCH_SKIP_EMULATION:-}" ]; then emulation=0; fi
ROOTFS_ARM64=${POLYARCH_ROOTFS_ARM64:-/var/cache/polyarch/rootfs-arm64}
# scripts/test.sh also asks for a 32-bit root (i386, run natively in the 32-bit
# personality) and a big-endian one (s390x, under qemu): the architecture tests use them.
ROOTFS_I386=${POLYARCH_ROOTFS_I386:-/var/cache/polyarch/rootfs-i386}
ROOTFS_S390X=${POLYARCH_ROOTFS_S390X:-/var/cache/polyarch/rootfs-s390x}

need_apt=()
command -v git >/dev/null || need_apt+=(git)
if [ "$emulation" = 1 ]; then
  [ -e /usr/lib/binfmt.d/qemu-aarch64.conf ] || need_apt+=(qemu-user-static)
  command -v mmdebstrap >/dev/null || need_apt+=(mmdebstrap)
fi
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v ip >/dev/null || need_apt+=(iproute2)  # the lab-host test's network namespaces
command -v mount >/dev/null || need_apt+=(mount)  # the full-disk tests' tmpfs
command -v chattr >/dev/null || need_apt+=(e2fsprogs)  # a poison test leaves a file even root cannot delete
{ [ -x /usr/bin/python3 ] && py=/usr/bin/python3 || py=python3; "$py" -c "import venv, ensurepip" 2>/dev/null; } \
  || need_apt+=(python3-venv)
# The dashboard tests load the pages in headless Chromium; scripts/test.sh asks for it.
if [ -n "${POLYARCH_WITH_BROWSER:-}" ]; then
  command -v chromium >/dev/null || need_apt+=(chromium fonts-dejavu-core)
fi
# The PostgreSQL backend's tests start a private cluster of Debian's postgresql (initdb,
# pg_ctl) and talk to it through libpq; scripts/test.sh asks for it.
if [ -n "${POLYARCH_WITH_POSTGRESQL:-}" ]; then
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need_apt+=(postgresql)
  [ -n "$(compgen -G '/usr/lib/*/libpq.so.5' || true)" ] || need_apt+=(libpq5)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing ${need_apt[*]}; run as root or: sudo apt-get install -y ${need_apt[*]}" >&2
    exit 2
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# A runner started as root runs each job as this unprivileged user (runner.job_user),
# so a test cannot read the CI's secret, state or other jobs' files.
if [ "$(id -u)" = 0 ] && ! id -u polyarch-job >/dev/null 2>&1; then
  useradd --system --user-group --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin polyarch-job
fi

# Debian's own Python where there is one: the test suite's jobs run the venv's
# interpreter as the job user, who cannot reach one kept under /root (pyenv's, say).
python=python3
[ -x /usr/bin/python3 ] && python=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.polyarch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements.lock -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # The locked set (scripts/lock.sh writes it; scripts/audit_deps.py audits it), then
  # polyarch itself on top without letting pip pick other versions.
  .venv/bin/python -m pip install -q -r requirements.lock
  .venv/bin/python -m pip install -q --no-deps -e ".[test]"
  touch "$stamp"
fi

if [ "$emulation" = 1 ]; then
  # Registers qemu-aarch64 in binfmt_misc (mounting it if needed) and builds the arm64
  # root the first time (mmdebstrap, 3-5 minutes); later runs keep it.
  .venv/bin/polyarch-runner rootfs build --arch arm64 "$ROOTFS_ARM64"
  if [ -n "${POLYARCH_TEST_ROOTS:-}" ]; then
    .venv/bin/polyarch-runner rootfs build --arch i386 "$ROOTFS_I386"    # under a minute: no emulation
    .venv/bin/polyarch-runner rootfs build --arch s390x "$ROOTFS_S390X"  # 3-5 minutes the first time
  fi
fi
