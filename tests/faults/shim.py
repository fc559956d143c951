"""The fault shim (faultshim.c): a C library LD_PRELOADed into real recsink processes that makes
exactly one syscall fail, or stops the process, where a test says (the rules are documented at
the top of faultshim.c)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = Path(__file__).with_name("faultshim.c")
#: The rule keywords of :func:`shim_env` and the variables they set.
RULES = {
    "fsync_dir": "RECSINK_FAULT_FSYNC_DIR",
    "link": "RECSINK_FAULT_LINK",
    "rename": "RECSINK_FAULT_RENAME",
}
#: The exit status of a process whose RECSINK_FAULT_* rule the shim could not parse.
BAD_RULE_STATUS = 86


def build_shim(directory: Path, *extra_flags: str) -> Path:
    """Compile faultshim.c (plus ``extra_flags``) into ``directory/faultshim.so``; its path."""
    so = directory / "faultshim.so"
    command = ["gcc", "-shared", "-fPIC", "-O2", *extra_flags, "-o", str(so), str(SOURCE), "-ldl"]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return so.resolve()


@pytest.fixture(scope="session")
def fault_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled fault shim (skipped without gcc, except under CI where that fails)."""
    if shutil.which("gcc") is None:
        reason = "gcc is not installed: the fault shim (tests/faults/faultshim.c) cannot be built"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}, and CI must run the fault tests")
        pytest.skip(reason)
    return build_shim(tmp_path_factory.mktemp("faultshim"))


def shim_env(so: Path, **rules: str) -> dict[str, str]:
    """The environment additions that load ``so`` with the given rules (fsync_dir, link, rename)."""
    unknown = rules.keys() - RULES.keys()
    if unknown:
        raise TypeError(f"unknown fault rule(s) {sorted(unknown)}; known: {sorted(RULES)}")
    preload = " ".join(filter(None, [str(Path(so).resolve()), os.environ.get("LD_PRELOAD")]))
    # Every rule is set, the unused ones empty (off), so none leaks in from the parent's env.
    return {"LD_PRELOAD": preload, **{var: rules.get(name, "") for name, var in RULES.items()}}
