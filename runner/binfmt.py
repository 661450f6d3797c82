"""Can this machine run binaries of another architecture? qemu-user through binfmt_misc.

Debian's qemu-user-static ships one `/usr/lib/binfmt.d/qemu-<cpu>.conf` per CPU, with
the F flag: the kernel opens the interpreter at registration, so it works inside a
chroot that has no qemu of its own.
"""

from __future__ import annotations

import dataclasses
import enum
import subprocess
from pathlib import Path

from dispatcher.common.errors import SetupError
from dispatcher.common.names import Arch, host_arch

BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
CONF_DIR = Path("/usr/lib/binfmt.d")

# Debian architecture -> qemu's CPU name in binfmt entries.
QEMU_CPU = {
    Arch.AMD64: "x86_64",
    Arch.ARM64: "aarch64",
    Arch.ARMHF: "arm",
    Arch.RISCV64: "riscv64",
    Arch.PPC64EL: "ppc64le",
    Arch.S390X: "s390x",
    Arch.I386: "i386",
}

# Architectures a CPU runs without emulation.
NATIVE_ALSO = {Arch.AMD64: {Arch.I386}, Arch.ARM64: {Arch.ARMHF}}


class BinfmtError(SetupError):
    """A foreign architecture cannot run here; the message names the fixing command."""


class Support(str, enum.Enum):
    NATIVE = "native"
    EMULATED = "emulated (qemu-user, registered)"
    NOT_REGISTERED = "qemu installed, binfmt entry not registered"
    UNUSABLE = "registered, but unusable inside a root"
    NO_QEMU = "qemu-user-static not installed"


@dataclasses.dataclass(frozen=True)
class ArchSupport:
    arch: Arch
    support: Support
    problem: str = ""  # for UNUSABLE: what is wrong and the command that fixes it

    @property
    def runnable(self) -> bool:
        return self.support in (Support.NATIVE, Support.EMULATED)


def is_native(arch: Arch) -> bool:
    own = host_arch()
    return arch == own or arch in NATIVE_ALSO.get(own, set())


def conf_file(arch: Arch) -> Path:
    return CONF_DIR / f"qemu-{QEMU_CPU[arch]}.conf"


def entry_file(arch: Arch) -> Path:
    return BINFMT_DIR / f"qemu-{QEMU_CPU[arch]}"


def support(arch: Arch) -> ArchSupport:
    if is_native(arch):
        return ArchSupport(arch, Support.NATIVE)
    entry = entry_file(arch)
    if entry.exists():
        text = entry.read_text()
        if text.startswith("enabled"):
            problem = entry_problem(text, entry)
            return ArchSupport(arch, Support.UNUSABLE, problem) if problem else ArchSupport(arch, Support.EMULATED)
    if not conf_file(arch).exists():
        return ArchSupport(arch, Support.NO_QEMU)
    return ArchSupport(arch, Support.NOT_REGISTERED)


def entry_problem(text: str, entry: Path) -> str:
    """What keeps a registered entry from running a root's binaries, or "".

    Without the F flag the kernel looks the interpreter up inside the root at each exec,
    where there is none; a dynamically linked interpreter would need the host's
    libraries there too."""
    fields = dict(line.split(" ", 1) if " " in line else (line, "") for line in text.splitlines())
    flags = fields.get("flags:", "")
    interpreter = Path(fields.get("interpreter", "").strip())
    if "F" not in flags:
        return (f"{entry} has flags {flags.strip() or '(none)'}, without F (fix-binary), so a root would need qemu "
                f"inside; as root: echo -1 > {entry} && polyarch-runner binfmt")
    if interpreter and interpreter.exists() and not is_static(interpreter):
        return (f"{entry}: its interpreter {interpreter} is dynamically linked and cannot run inside a root; "
                "apt-get install qemu-user-static (not qemu-user-binfmt), then re-register")
    return ""


def is_static(path: Path) -> bool:
    """Whether an ELF file has no program interpreter (PT_INTERP): it runs anywhere."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF":
            return False
        wide, order = header[4] == 2, "little" if header[5] == 1 else "big"
        phoff = int.from_bytes(header[32:40] if wide else header[28:32], order)
        size = int.from_bytes(header[54:56] if wide else header[42:44], order)
        count = int.from_bytes(header[56:58] if wide else header[44:46], order)
        f.seek(phoff)
        table = f.read(size * count)
    return all(int.from_bytes(table[i * size:i * size + 4], order) != 3 for i in range(count))  # 3: PT_INTERP


def ensure_mounted() -> None:
    if (BINFMT_DIR / "register").exists():
        return
    result = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BinfmtError(f"cannot mount binfmt_misc on {BINFMT_DIR}: {result.stderr.strip()} (run as root)")


def register(arch: Arch) -> ArchSupport:
    """Register qemu for `arch` from Debian's binfmt.d file (root only)."""
    state = support(arch)
    if state.runnable:
        return state
    if state.support == Support.NO_QEMU:
        raise BinfmtError(f"no {conf_file(arch)}: install qemu-user-static (apt-get install qemu-user-static)")
    ensure_mounted()
    line = conf_file(arch).read_text().strip()
    try:
        (BINFMT_DIR / "register").write_text(line + "\n")
    except FileExistsError:
        pass  # registered meanwhile, by systemd-binfmt or another runner
    except OSError as exc:
        raise BinfmtError(f"cannot register {conf_file(arch)} in {BINFMT_DIR}/register: {exc.strerror} "
                          "(run polyarch-runner binfmt as root)") from None
    return support(arch)


def require(arch: Arch) -> None:
    """Raise a one-line BinfmtError saying which command fixes a missing piece."""
    state = support(arch)
    if state.support == Support.NO_QEMU:
        raise BinfmtError(f"{arch.value} cannot run here: {state.support.value}; "
                          "run: apt-get install qemu-user-static, then polyarch-runner binfmt")
    if state.support == Support.NOT_REGISTERED:
        raise BinfmtError(f"{arch.value} cannot run here: {state.support.value}; run (as root): polyarch-runner binfmt")
    if state.support == Support.UNUSABLE:
        raise BinfmtError(f"{arch.value} cannot run in a root: {state.problem}")


def qemu_version(arch: Arch) -> str:
    """"qemu-aarch64 7.2.13" for the interpreter binfmt runs `arch` with; "" when native
    or when it cannot say. Asked once per runner start, for the results' `qemu` key."""
    if is_native(arch):
        return ""
    try:
        fields = dict(line.split(" ", 1) for line in entry_file(arch).read_text().splitlines() if " " in line)
        # Debian's entry names a -binfmt-P link to qemu-*-static, which answers --version
        # only when called by its own name.
        interpreter = str(Path(fields.get("interpreter", "").strip()).resolve())
        out = subprocess.run([interpreter, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    first = out.splitlines()[0] if out else ""
    # "qemu-aarch64 version 7.2.13 (Debian 1:7.2+dfsg-7+deb12u7)"
    parts = first.split()
    return f"{Path(interpreter).name.removesuffix('-static')} {parts[2]}" if len(parts) > 2 else first[:100]
