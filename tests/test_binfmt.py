"""binfmt entries: registered is not enough, a root needs F and a static interpreter."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from conftest import skip_unless_ci
from runner.binfmt import entry_problem, is_static

ENTRY = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")


def _static_qemu() -> Path:
    found = shutil.which("qemu-aarch64-static")
    if found is None:
        skip_unless_ci("no qemu-aarch64-static: apt-get install qemu-user-static")
    return Path(os.path.realpath(found))


def test_a_static_interpreter_is_told_from_a_dynamic_one() -> None:
    assert is_static(_static_qemu())
    assert not is_static(Path(os.path.realpath("/bin/sh")))


def test_an_entry_without_the_f_flag_or_with_a_dynamic_interpreter_names_its_fix() -> None:
    qemu = _static_qemu()
    good = f"enabled\ninterpreter {qemu}\nflags: POF\noffset 0\nmagic 7f454c46\n"
    assert entry_problem(good, ENTRY) == ""
    no_f = good.replace("flags: POF", "flags: PO")
    assert entry_problem(no_f, ENTRY) == (f"{ENTRY} has flags PO, without F (fix-binary), so a root would need qemu "
                                          f"inside; as root: echo -1 > {ENTRY} && polyarch-runner binfmt")
    dynamic = good.replace(str(qemu), os.path.realpath("/bin/sh"))
    assert "is dynamically linked and cannot run inside a root; apt-get install qemu-user-static" in \
        entry_problem(dynamic, ENTRY)
