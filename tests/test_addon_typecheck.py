# SPDX-License-Identifier: GPL-3.0-or-later
"""Type-check the add-on against Blender's API stubs (fake-bpy-module-5-0) with mypy.

The stubs mark nearly every bpy attribute as optional, so ``union-attr`` is off; everything
else (unknown attributes and operators, wrong argument names and types, enum values) is
checked, including the bodies of untyped functions.
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _have_stubs() -> bool:
    import site

    paths = list(site.getsitepackages()) + [site.getusersitepackages()]
    return any(os.path.isdir(os.path.join(p, "bpy-stubs")) for p in paths)


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
@pytest.mark.skipif(not _have_stubs(), reason="fake-bpy-module-5-0 (bpy-stubs) is not installed")
def test_addon_type_checks(tmp_path):
    cmd = [sys.executable, "-m", "mypy", "addon", "build.py",
           "--python-version", "3.11", "--ignore-missing-imports", "--check-untyped-defs",
           "--disable-error-code", "union-attr", "--no-incremental", "--cache-dir", str(tmp_path / "cache"),
           "--hide-error-context", "--no-error-summary", "--show-error-codes"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
