"""``--help`` of every command: fast (torch, OpenCV and the detector are imported only after
parsing), ``python -m <module>`` as the program, each default shown once as a value."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "cv2", "detector.detector", "detector.build")
# A tiny wrapper: run the module's --help as `python -m` would, then say what was imported.
WRAPPER = """
import runpy, sys
sys.argv = [{module!r}, *{args!r}, "--help"]
try:
    runpy.run_module({module!r}, run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print("HEAVY:", ",".join(m for m in {heavy!r} if m in sys.modules))
"""

LIGHT = [  # (module, arguments before --help)
    ("detector.run", []),
    ("eval.map", []),
    ("eval.recall", []),
    ("eval.cascade", []),
    ("detector.demo", []),
    ("detector.train", []),
    ("proposals.multibox", ["train"]),
    ("proposals.precompute", []),
    ("benchmarks.run", []),
]


def help_of(module: str, args: list[str]) -> tuple[str, str]:
    code = WRAPPER.format(module=module, args=args, heavy=HEAVY)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    text, _, heavy = done.stdout.rpartition("HEAVY:")
    return text, heavy.strip()


@pytest.mark.parametrize(("module", "args"), LIGHT)
def test_help_imports_nothing_heavy(module, args):
    text, heavy = help_of(module, args)
    assert heavy == "", f"{module} --help imported {heavy}"
    assert text.startswith(f"usage: python -m {module}")


@pytest.mark.parametrize(("module", "args"), LIGHT, ids=lambda v: str(v))
def test_help_shows_the_program_and_each_default_once(module, args):
    text, _ = help_of(module, args)
    assert text.startswith(f"usage: python -m {module}"), text[:80]
    assert "(default: None)" not in text and "(default: [])" not in text
    flat = " ".join(text.split())
    assert not re.search(r"\(default: [^)]*\) \(default:", flat), flat
    if module in ("detector.train", "proposals.multibox"):
        # Training defaults read as values (the config key after them), not key names.
        for key in ("(default: train.", "(default: proposals."):
            assert key not in flat
