"""The quick-start demo: a local repository, the three daemons, results for every commit.

Run through `bash scripts/demo.sh`. Everything lives in ./demo (git-ignored); a second
run starts afresh.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the daemon harness the tests and benchmarks share: bench/rig.py

from bench import rig  # after the line above

# As root, not inside the clone: the jobs then run as the unprivileged job user, who must
# reach their checkout's folder, and a clone may well sit under /root (mode 0700).
DEMO = Path(os.environ.get("POLYARCH_DEMO_DIR") or ("/var/lib/polyarch/demo" if os.geteuid() == 0 else ROOT / "demo"))
BIN = Path(sys.executable).parent
ROOTFS_ARM64 = Path(os.environ.get("POLYARCH_ROOTFS_ARM64", "/var/cache/polyarch/rootfs-arm64"))

CALC = '''\
import platform


def add(a, b):
    return a + b


def sub(a, b):
    return a {op} b


def double(n):
    {double}
'''
DOUBLE = "return n * 2"
# A "fast path" that only holds on x86: the kind of bug polyarch exists to catch.
DOUBLE_X86 = "return n << 1 if platform.machine() == 'x86_64' else n + n + 1"
TESTS = '''\
import unittest

from calc import add, double, sub


class CalcTest(unittest.TestCase):
    def test_add(self):
        self.assertEqual(add(2, 3), 5)

    def test_sub(self):
        self.assertEqual(sub(5, 3), 2)

    def test_double(self):
        self.assertEqual(double(21), 42)


if __name__ == "__main__":
    unittest.main()
'''
# The test command: unittest, with a JUnit XML file left where polyarch asks for one
# ($POLYARCH_JUNIT), so the results name each failing test.
RUN_TESTS = '''\
import os
import sys
import unittest
from xml.sax.saxutils import quoteattr

suite = unittest.defaultTestLoader.discover(".")
# Listed before the run: a suite lets go of each test once it has run.
tests = [t for group in suite for module in group for t in module]
result = unittest.TextTestRunner(verbosity=2).run(suite)
failed = {t.id(): "failure" for t, _ in result.failures}
failed.update({t.id(): "error" for t, _ in result.errors})
cases = []
for test in tests:
    kind = failed.get(test.id())
    module, _, name = test.id().rpartition(".")
    body = f"<{kind}/>" if kind else ""
    cases.append(f"<testcase classname={quoteattr(module)} name={quoteattr(name)}>{body}</testcase>")
with open(os.environ.get("POLYARCH_JUNIT", "junit.xml"), "w") as f:
    f.write(f'<testsuite tests="{result.testsRun}" failures="{len(result.failures)}" '
            f'errors="{len(result.errors)}">' + "".join(cases) + "</testsuite>")
sys.exit(0 if result.wasSuccessful() else 1)
'''
STEPS = [("calc: add and sub", "-", DOUBLE), ("calc: refactor sub (oops)", "+", DOUBLE),
         ("calc: fix sub", "-", DOUBLE), ("calc: a faster double", "-", DOUBLE_X86)]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=DEMO / "upstream", check=True, capture_output=True,
                          text=True).stdout.strip()


def commit(message: str, op: str, double: str = DOUBLE) -> str:
    repo = DEMO / "upstream"
    (repo / "calc.py").write_text(CALC.format(op=op, double=double))
    (repo / "test_calc.py").write_text(TESTS)
    (repo / "run_tests.py").write_text(RUN_TESTS)
    with open(repo / "CHANGES", "a") as f:
        f.write(message + "\n")
    git("add", "-A")
    git("commit", "-q", "-m", message)
    return git("rev-parse", "HEAD")


def arm64_available() -> str:
    """'' when an emulated arm64 runner can start here, else what is missing."""
    if os.geteuid() != 0:
        return "it needs root (chroot): run bash scripts/demo.sh as root"
    if not (ROOTFS_ARM64 / "etc/polyarch-rootfs.json").exists():
        return f"there is no arm64 root at {ROOTFS_ARM64}: run bash scripts/setup.sh as root"
    return ""


def wait_result(sha: str, timeout: float = 60, arch: str = "amd64") -> dict:
    path = DEMO / "test_results" / "demo" / sha / f"{arch}.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: no result for {sha[:12]} after {timeout} s; see the logs in {DEMO}")
        time.sleep(0.05)
    return json.loads(path.read_text())


def main() -> None:
    missing = arm64_available()
    archs = ["amd64"] if missing else ["amd64", "arm64"]
    if DEMO.exists():
        shutil.rmtree(DEMO)
    (DEMO / "upstream").mkdir(parents=True)
    git("init", "-q", "-b", "main")
    git("config", "user.email", "demo@example.invalid")
    git("config", "user.name", "Demo Dev")
    config = DEMO / "polyarch.toml"
    config.write_text(textwrap.dedent(f"""\
        # The demo's config: every daemon on this machine, the dispatcher on any free port.
        [dispatcher]
        listen = "127.0.0.1:0"
        [observer]
        dispatcher = "127.0.0.1:0"
        poll_interval = 5
        [runner]
        dispatcher = "127.0.0.1:0"

        [[repos]]
        name = "demo"
        url = "upstream"
        branches = ["main"]
        architectures = {json.dumps(archs)}
        test_command = "python3 run_tests.py"
        timeout = 60
        """))
    first = commit("calc: a first version", "-")
    plan = [("dispatcher", []), ("runner", []), ("observer", [])]
    if not missing:
        plan.insert(2, ("runner", ["--arch", "arm64", "--name", "arm64-qemu", "--rootfs", str(ROOTFS_ARM64)]))
    procs = []
    for name, extra in plan:
        # The harness the tests and benchmarks use, running the console scripts as a user would.
        procs.append(rig.Daemon(name, config, DEMO, DEMO / f"{name}{'-arm64' if extra else ''}.log", extra,
                                command=[str(BIN / f"polyarch-{name}")]).start())
        if name == "dispatcher":
            procs[-1].wait_ready()
    try:
        print(f"demo: daemons started in {DEMO} (logs: *.log there); architectures: {', '.join(archs)}")
        if missing:
            print(f"demo: no arm64 runner under qemu-user: {missing}")
        shas = [first]
        report(first, "calc: a first version", archs)
        for message, op, double in STEPS:
            shas.append(commit(message, op, double))
            report(shas[-1], message, archs)
        print()
        dispatcher = str(BIN / "polyarch-dispatcher")
        # Wide enough for the grid when the output is not a terminal (rich then assumes 80).
        wide = dict(os.environ, COLUMNS=os.environ.get("COLUMNS", "150"))
        subprocess.run([dispatcher, "status", "--config", str(config)], check=True, env=wide)
        failed = next(s for s in shas if wait_result(s)["status"] == "failed")
        print(f"\ndemo: the failing commit's result, test_results/demo/{failed}/amd64.json:")
        print((DEMO / "test_results" / "demo" / failed / "amd64.json").read_text())
        print(f"demo: the CI gate on the newest commit: polyarch-dispatcher wait --repo demo --commit {shas[-1][:12]}...")
        gate = subprocess.run([dispatcher, "wait", "--config", str(config), "--repo", "demo", "--commit", shas[-1],
                               "--timeout", "60"], env=wide)
        print(f"demo: wait exited with {gate.returncode} (0 all passed, 1 some failed, 3 timed out)")
        index = DEMO / "test_results" / "index.html"
        print(f"\ndemo: the dashboard: open {index.as_uri()} in a browser")
        print("demo: (the grid by architecture; a commit's page lists its failing tests and links each log)")
    finally:
        for daemon in reversed(procs):
            if daemon.alive:
                daemon.signal(signal.SIGTERM)
        for daemon in procs:
            daemon.stop(timeout=30)
            daemon.close()
    print("demo: daemons stopped.")


def report(sha: str, message: str, archs: list[str]) -> None:
    started = time.monotonic()
    verdicts = [f"{arch} {wait_result(sha, 300, arch)['status']}" for arch in archs]
    print(f"demo: {sha[:12]} '{message}' -> {', '.join(verdicts)} in {time.monotonic() - started:.2f} s")


if __name__ == "__main__":
    main()
