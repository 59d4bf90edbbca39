"""The daemon fixes glibc's mmap threshold, unless the operator set one."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = "from lookout.monitor.allocator import fix_mmap_threshold; print(fix_mmap_threshold())"


def run(env: dict[str, str]) -> str:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, env=env
    ).stdout.strip()


def test_the_threshold_is_fixed_on_glibc_unless_the_operator_chose_one() -> None:
    assert run({"PATH": "/usr/bin"}) == "True"
    assert run({"PATH": "/usr/bin", "MALLOC_MMAP_THRESHOLD_": "65536"}) == "False"
