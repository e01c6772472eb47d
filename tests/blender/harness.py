# SPDX-License-Identifier: GPL-3.0-or-later
"""pytest side of the Blender tests: build the extension once, run driver scripts in Blender.

Blender (the bpy module) runs in a subprocess of pytest, with its user folders in a temporary
folder, so that the tests never touch a real Blender configuration and bpy is never imported
into the pytest process.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MARKER = "MASKFIELD_RESULTS "


def have_bpy() -> bool:
    return importlib.util.find_spec("bpy") is not None


@functools.lru_cache(maxsize=None)
def built_zip() -> str:
    """Build the extension zip (validated by Blender's tool) into a temporary folder."""
    sys.path.insert(0, ROOT)
    try:
        import build  # the repository's build.py
    finally:
        sys.path.remove(ROOT)
    out = tempfile.mkdtemp(prefix="maskfield_dist_")
    return build.build(out_dir=out, verbose=False)


def blender_env(home: str, extra: dict | None = None) -> dict:
    env = dict(os.environ)
    env["BLENDER_USER_RESOURCES"] = os.path.join(home, "blender user")
    env["XDG_CACHE_HOME"] = os.path.join(home, "cache")
    env["XDG_CONFIG_HOME"] = os.path.join(home, "config")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONPATH", None)
    if extra:
        env.update(extra)
    return env


def run_driver(script: str, *args: str, home: str, timeout: float = 300, extra_env: dict | None = None) -> dict:
    """Run tests/blender/<script> with this Python; returns {"results": {...}, "times": {...}}."""
    cmd = [sys.executable, os.path.join(HERE, script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=blender_env(home, extra_env), cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith(MARKER):
            data = json.loads(line[len(MARKER):])
            data["stdout"] = proc.stdout[-4000:]
            data["stderr"] = proc.stderr[-4000:]
            return data
    raise AssertionError(f"driver {script} printed no results (exit {proc.returncode}).\n"
                         f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")


def assert_check(data: dict, name: str) -> None:
    res = data["results"].get(name)
    assert res is not None, f"check {name!r} did not run; stderr:\n{data.get('stderr', '')[-3000:]}"
    assert res["ok"], f"{name}: {res['detail']}"
