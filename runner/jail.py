"""Starts one job inside its own namespaces, as the job user: `python -I -S jail.py ARGS -- COMMAND`.

Run by the runner (as root) for every job; imports nothing from polyarch and nothing
heavy (a Python start with ctypes is about 12 ms, json alone would add 6). It:

1. leaves the runner's mount and PID namespaces (unshare), then forks: the child is
   PID 1 of the new PID namespace. When it exits, the kernel kills every process left in
   the namespace, so nothing a job starts (`setsid`, double forks, daemons) outlives it;
2. in the child, builds the job's view of the file system. Natively: a private /tmp,
   the runner's work folder and the dispatcher's state replaced by empty tmpfs, the
   job's own checkout, output folder and read-only mirror bound back at their paths,
   /dev/null over the config, secret and key files, a /proc of the job's processes only.
   In a root of another architecture: the root with a private /tmp, a minimal /dev, its
   own /proc, a read-only /sys and the job's folders bound in; then chroot;
3. drops to the job user (no groups, no_new_privs: a setuid binary grants nothing) and
   execs `/bin/sh -c COMMAND` in the checkout.

The parent waits and exits as the job did. It ignores SIGTERM and SIGINT, so the
runner's SIGTERM to the job's process group reaches the test's processes and a grace
period still means something; the runner's SIGKILL kills the parent, and the child,
whose parent-death signal is SIGKILL, takes the whole namespace with it.

A step that fails before the exec is written to the report descriptor (--report FD) as
one line, and the runner turns it into an `error` result: a job the runner could not
isolate never runs.

Started ahead of its job (runner/warm.py), it is `jail.py --orders FD` and reads the
arguments below and the job's environment from FD when the job comes. With `--go FD`,
the child does everything above but the exec, then waits for one byte on FD: the job
before it may still be running. End-of-file there instead (the runner dropped the job,
or is gone) and it exits without running anything.

Arguments, each once unless marked (all paths absolute):
  --root DIR --uid N --gid N --cwd DIR --home DIR --stage DIR --report FD
  --bind SRC DST (rw|ro)   repeated: a folder or file the job may see, at DST
  --hide PATH              repeated: a folder (emptied) or file (/dev/null) the job must not read
  --linux32                the 32-bit personality (a native i386 or armhf root)
  --cgroup DIR             repeated: a cgroup folder to enter before forking (its limits bind the job)
  --go FD                  wait for a byte on FD before the exec (see above)
"""

# ruff: noqa: S108 - /tmp and /dev/shm here are the job's own, fresh tmpfs in its mount namespace
import ctypes
import os
import sys

import _signal as signal  # the C module: `import signal` costs ~10 ms of enum machinery

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 32, 4096, 8192, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_NO_NEW_PRIVS = 1, 38
PER_LINUX32 = 0x0008
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")

libc = ctypes.CDLL(None, use_errno=True)


class JailError(Exception):
    pass


def _check(result, what):
    if result != 0:
        err = ctypes.get_errno()
        raise JailError(f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None):
    _check(libc.mount(source.encode() if source else None, target.encode(), fstype.encode() if fstype else None,
                      flags, data.encode() if data else None),
           f"mount {source or fstype} on {target}")


def bind(source, target, readonly):
    _make_like(source, target)
    mount(source, target, None, MS_BIND)
    if readonly:
        mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def tmpfs(target, mode):
    os.makedirs(target, exist_ok=True)
    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}")


def _make_like(source, target):
    """A mount point of the source's kind: a folder for a folder, an empty file for a file."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    elif not os.path.exists(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "ab"):
            pass


def parse(argv):
    opts = {"bind": [], "hide": [], "linux32": False, "cgroup": []}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            opts["command"] = argv[i + 1]
            return opts
        if arg == "--bind":
            opts["bind"].append((argv[i + 1], argv[i + 2], argv[i + 3] == "ro"))
            i += 4
        elif arg in ("--hide", "--cgroup"):
            opts[arg[2:]].append(argv[i + 1])
            i += 2
        elif arg == "--linux32":
            opts["linux32"] = True
            i += 1
        else:
            opts[arg[2:]] = argv[i + 1]
            i += 2
    raise JailError("no command after --")


def native_view(opts):
    """The host's file system, minus the CI's own places, plus the job's folders."""
    stage = opts["stage"]
    # The job's new /tmp is made at the stage folder first and the job's folders bound into
    # it, because hiding the work folder (or /tmp, which may hold it) hides them too.
    tmpfs(stage, "1777")
    held = []
    for n, (source, target, readonly) in enumerate(opts["bind"]):
        point = f"{stage}/.polyarch/{n}"
        _make_like(source, point)
        mount(source, point, None, MS_BIND)
        held.append((f"/tmp/.polyarch/{n}", target, readonly))
    mount(stage, "/tmp", None, MS_MOVE)
    for path in opts["hide"]:
        if os.path.isdir(path):
            tmpfs(path, "755")
        elif os.path.lexists(path):
            mount("/dev/null", path, None, MS_BIND)
    for point, target, readonly in held:
        bind(point, target, readonly)
        _check(libc.umount2(point.encode(), MNT_DETACH), f"umount {point}")
        (os.rmdir if os.path.isdir(point) else os.unlink)(point)
    os.rmdir("/tmp/.polyarch")
    mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    if os.path.isdir("/dev/shm"):
        tmpfs("/dev/shm", "1777")


def root_view(opts):
    """A root of another architecture: nothing of the host but what is bound in."""
    root = opts["root"]
    tmpfs(f"{root}/tmp", "1777")
    os.makedirs(f"{root}/proc", exist_ok=True)
    mount("proc", f"{root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    bind("/sys", f"{root}/sys", readonly=True)
    dev = f"{root}/dev"
    tmpfs(dev, "755")
    for name in DEVICES:
        bind(f"/dev/{name}", f"{dev}/{name}", readonly=False)
    os.mkdir(f"{dev}/pts")
    mount("devpts", f"{dev}/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620")
    os.symlink("pts/ptmx", f"{dev}/ptmx")
    tmpfs(f"{dev}/shm", "1777")
    for n, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{n}", f"{dev}/{name}")
    os.symlink("/proc/self/fd", f"{dev}/fd")
    for source, target, readonly in opts["bind"]:
        bind(source, root + target, readonly)


def become_job(opts):
    uid, gid = int(opts["uid"]), int(opts["gid"])
    home = opts["home"]
    os.makedirs(home, exist_ok=True)
    os.chown(home, uid, gid)
    if opts["root"] != "/":
        os.chroot(opts["root"])
    if opts["linux32"]:
        # A 32-bit root run natively by a 64-bit kernel would say x86_64 to uname; the
        # 32-bit personality makes it say i686, as Debian's sbuild does.
        if libc.personality(PER_LINUX32) == -1:
            raise JailError(f"personality(PER_LINUX32): {os.strerror(ctypes.get_errno())}")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    # Set after setuid, which clears it: the job dies with the jail's parent. (A parent
    # killed before this line was killed with its process group, which holds this child.)
    _check(libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PDEATHSIG)")
    try:
        os.chdir(opts["cwd"])
    except OSError as exc:
        raise JailError(f"the job user (uid {uid}) cannot enter {opts['cwd']}: {exc.strerror}; make the "
                        "folders above runner.work_dir searchable by others (chmod o+x)") from None


def orders(fd):
    """A jail started ahead (runner/warm.py): its arguments and the job's environment, as
    NUL-separated fields (the count of arguments first), read to end-of-file. None when
    the runner closed it unused (it stops, or is gone)."""
    chunks = []
    while True:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    if not chunks:
        return None
    fields = [f.decode("utf-8", "surrogateescape") for f in b"".join(chunks).split(b"\0")]
    count = int(fields[0])
    env = dict(f.split("=", 1) for f in fields[1 + count:])
    return fields[1:1 + count], env


def child(opts, report, environ):
    try:
        _check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "make / private")
        if opts["root"] == "/":
            native_view(opts)
        else:
            root_view(opts)
        become_job(opts)
    except (JailError, OSError) as exc:
        os.write(report, f"cannot isolate the job: {exc}\n".encode())
        os._exit(125)
    if "go" in opts:
        go = int(opts["go"])
        released = os.read(go, 1)
        if not released:
            os._exit(0)  # dropped before its turn: nothing of the job ever ran
        os.close(go)  # not the job's to inherit
    os.execve("/bin/sh", ["sh", "-c", opts["command"]], environ)  # noqa: S606 - the job's shell, as without a jail


def main():
    argv, environ = sys.argv[1:], os.environ
    if argv[:1] == ["--orders"]:
        given = orders(int(argv[1]))
        if given is None:
            os._exit(0)
        argv, environ = given
    opts = parse(argv)
    report = int(opts["report"])
    os.set_inheritable(report, False)  # the job must not inherit it
    try:
        for folder in opts["cgroup"]:
            with open(f"{folder}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID), "unshare(mount, pid)")
    except (JailError, OSError) as exc:
        os.write(report, f"cannot isolate the job: {exc}\n".encode())
        sys.exit(125)
    pid = os.fork()
    if pid == 0:
        child(opts, report, environ)
    os.close(report)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except InterruptedError:
            continue
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128)


if __name__ == "__main__":
    main()
