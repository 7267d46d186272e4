"""The C floor: ``floor/floor.c`` compiled for this interpreter and loaded, for the eager benchmark.

It is the least a C extension can do per op (one object per op, children held by reference, a
depth-first order and one sweep for backward), so gradrs's eager cost per op is measured against
it rather than against a number written down once. Built with the system's C compiler into a
temporary folder on first use; when that fails, the benchmark says so and goes on without it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

SOURCE = Path(__file__).parent / "floor" / "floor.c"


def build() -> ModuleType:
    """The compiled `_floor` module; raises RuntimeError naming what failed."""
    compiler = os.environ.get("CC", "cc")
    include = sysconfig.get_paths()["include"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = Path(tempfile.mkdtemp(prefix="gradrs-floor-")) / f"_floor{suffix}"
    command = [compiler, "-O2", "-shared", "-fPIC", f"-I{include}", str(SOURCE), "-o", str(target), "-lm"]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", "") or str(error)
        raise RuntimeError(f"could not build the C floor ({' '.join(command)}): {detail.strip()}") from None
    loader = importlib.machinery.ExtensionFileLoader("_floor", str(target))
    spec = importlib.util.spec_from_file_location("_floor", str(target), loader=loader)
    if spec is None:
        raise RuntimeError(f"could not load the C floor from {target}")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
