"""Benchmarks: ce against the physical limit and the tools a user would use instead (README, Speed)."""
from __future__ import annotations

import compileall
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def compile_ce() -> None:
    """ce's modules as bytecode before a whole-process contender runs: the image's wheel install compiles them, and
    an environment with PYTHONDONTWRITEBYTECODE (set on some machines) would otherwise make every ``ce`` process
    compile its ~180 modules again (70 ms here), which no installed ce does."""
    for package in ("ce", "steps"):
        compileall.compile_dir(ROOT / package, quiet=2)
