# SPDX-License-Identifier: GPL-3.0-or-later
"""Shared by the driver scripts that run inside Blender (the bpy module) for the add-on tests.

A driver records named checks with :func:`check` (or :func:`section` for a block that must
not raise) and ends with :func:`finish`, which prints them as one JSON line that the pytest
side (harness.py) reads. Run a driver with the venv's python; Blender's user folders must
already point into a temporary folder (BLENDER_USER_RESOURCES, set by the harness).
"""
from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback

MARKER = "MASKFIELD_RESULTS "
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODULE = "bl_ext.user_default.maskfield"

RESULTS: dict[str, dict] = {}
TIMES: dict[str, float] = {}


def check(name: str, cond, detail="") -> bool:
    ok = bool(cond)
    if name in RESULTS and not RESULTS[name]["ok"]:
        return ok  # keep the first failure
    RESULTS[name] = {"ok": ok, "detail": str(detail)[:3000]}
    if not ok:
        print(f"CHECK FAILED {name}: {detail}", file=sys.stderr, flush=True)
    return ok


def expect_error(fn, *needles):
    """Run an operator call that must fail; returns (ok: its message holds every needle, message)."""
    try:
        fn()
    except RuntimeError as exc:
        msg = str(exc)
        return all(n.lower() in msg.lower() for n in needles), msg
    return False, "no error raised"


@contextlib.contextmanager
def section(name: str):
    t0 = time.perf_counter()
    try:
        yield
        RESULTS.setdefault(name, {"ok": True, "detail": ""})
    except Exception:
        RESULTS[name] = {"ok": False, "detail": traceback.format_exc()[-3000:]}
        print(f"SECTION FAILED {name}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
    TIMES[name] = time.perf_counter() - t0


def finish() -> None:
    import bpy

    sys.stdout.write(MARKER + json.dumps({"results": RESULTS, "times": TIMES,
                                          "blender_version": bpy.app.version_string}) + "\n")
    sys.stdout.flush()


def install(zip_path: str):
    """Install the extension zip into the user repository and enable it; returns the module."""
    import importlib

    import addon_utils
    import bpy

    if MODULE not in bpy.context.preferences.addons:
        folder = os.path.join(os.environ["BLENDER_USER_RESOURCES"], "extensions", "user_default", "maskfield")
        if os.path.isdir(folder):
            addon_utils.enable(MODULE, default_set=True)
        else:
            bpy.ops.extensions.package_install_files(filepath=zip_path, repo="user_default",
                                                     enable_on_install=True)
    return importlib.import_module(MODULE)


def snapshot(scene=None) -> dict:
    """What a test compares to prove the user's scene was left as it was."""
    import bpy

    scene = scene or bpy.context.scene
    objs = {}
    for ob in bpy.data.objects:
        objs[ob.name] = {
            "matrix": [round(v, 6) for row in ob.matrix_world for v in row],
            "pass_index": ob.pass_index,
            "parent": ob.parent.name if ob.parent else None,
            "materials": [s.material.name if s.material else None for s in ob.material_slots],
            "data": ob.data.name if ob.data else None,
            "collections": sorted(c.name for c in ob.users_collection),
            "hide_render": ob.hide_render,
            "faces": len(ob.data.polygons) if ob.type == "MESH" else None,
        }
    r = scene.render
    return {
        "objects": objs,
        "counts": {k: len(getattr(bpy.data, k)) for k in ("objects", "meshes", "materials", "cameras", "lights",
                                                           "worlds", "scenes", "collections")},
        "render": {"engine": r.engine, "res": (r.resolution_x, r.resolution_y, r.resolution_percentage),
                   "format": r.image_settings.file_format, "camera": scene.camera.name if scene.camera else None,
                   "filepath": r.filepath, "object_index": bpy.context.view_layer.use_pass_object_index},
        "scene": scene.name,
        "world": scene.world.name if scene.world else None,
    }


def diff(a, b, path="") -> list[str]:
    out = []
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}/{k}: {'missing before' if k not in a else 'missing after'}")
            else:
                out += diff(a[k], b[k], f"{path}/{k}")
    elif a != b:
        out.append(f"{path}: {a!r} -> {b!r}")
    return out


def write_gaussians_ply(path: str, n: int, seed: int = 0):
    """A synthetic standard 3DGS .ply with known values; returns the numpy record array."""
    import numpy as np

    rng = np.random.default_rng(seed)
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + [f"f_rest_{i}" for i in range(45)] + \
        ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    arr = np.zeros(n, dtype=[(k, "<f4") for k in names])
    for k in ("x", "y", "z"):
        arr[k] = rng.uniform(-1, 1, n)
    for k in ("f_dc_0", "f_dc_1", "f_dc_2"):
        arr[k] = rng.normal(0, 1, n)
    arr["opacity"] = rng.normal(0, 2, n)
    for k in ("scale_0", "scale_1", "scale_2"):
        arr[k] = rng.uniform(-6, -3, n)
    for k in ("rot_0", "rot_1", "rot_2", "rot_3"):
        arr[k] = rng.normal(0, 1, n)
    header = f"ply\nformat binary_little_endian 1.0\nelement vertex {n}\n" + \
        "".join(f"property float {k}\n" for k in names) + "end_header\n"
    with open(path, "wb") as fh:
        fh.write(header.encode())
        fh.write(arr.tobytes())
    return arr


def make_fake_python(folder: str) -> str:
    """An executable that behaves like 'python -m maskfield.cli' by running fake_backend.py."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "fake python")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"#!/bin/sh\nexec '{sys.executable}' '{os.path.join(HERE, 'fake_backend.py')}' \"$@\"\n")
    os.chmod(path, 0o755)
    return path
