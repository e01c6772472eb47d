# SPDX-License-Identifier: GPL-3.0-or-later
"""The scene folder that the add-on renders, through tools/make_tabletop.py (a Blender
subprocess): files, camera conventions (checked by projecting the surface points into the
label images), labels, points, determinism."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "blender"))
import harness  # noqa: E402
from harness import blender  # noqa: E402,F401  (the Blender-version matrix fixture)

pytestmark = pytest.mark.skipif(not harness.have_bpy(), reason="needs the bpy module (Blender as a Python module)")
Image = pytest.importorskip("PIL.Image")

NAMES = {"red mug", "blue box", "green ball", "yellow cone", "purple torus", "table"}
VIEWS, RES = 12, 64


def make_tabletop(out, home, seed=1, views=VIEWS, res=RES, engine="CYCLES", python=None):
    cmd = [python or sys.executable, os.path.join(harness.ROOT, "tools", "make_tabletop.py"), "--out", str(out),
           "--views", str(views), "--resolution", str(res), "--seed", str(seed), "--engine", engine, "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=harness.blender_env(str(home)))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return time.perf_counter() - t0


@pytest.fixture(scope="module")
def tabletop(tmp_path_factory):
    home = tmp_path_factory.mktemp("tabletop home")
    out = tmp_path_factory.mktemp("table tôp") / "scene"
    seconds = make_tabletop(out, home)
    print(f"tabletop: {VIEWS} views at {RES} px in {seconds:.1f} s")
    return out, home


def load(folder):
    with open(os.path.join(folder, "transforms.json"), encoding="utf-8") as fh:
        return json.load(fh)


def read_points(path):
    with open(path, "rb") as fh:
        header = b""
        while not header.endswith(b"end_header\n"):
            header += fh.readline()
        text = header.decode()
        n = int(text.split("element vertex ")[1].split()[0])
        dtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
        assert "format binary_little_endian" in text
        for name in ("x", "y", "z", "red", "green", "blue"):
            assert f" {name}\n" in text
        return np.frombuffer(fh.read(), dtype=dtype, count=n)


def test_files(tabletop):
    out, _ = tabletop
    tj = load(out)
    assert len(tj["frames"]) == VIEWS
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        assert key in tj
    assert tj["w"] == RES and tj["h"] == RES and tj["ply_file_path"] == "points.ply"
    for f in tj["frames"]:
        m = np.array(f["transform_matrix"])
        assert m.shape == (4, 4) and np.allclose(m[3], [0, 0, 0, 1])
        assert np.allclose(m[:3, :3] @ m[:3, :3].T, np.eye(3), atol=1e-5)
        img = Image.open(os.path.join(out, f["file_path"]))
        assert img.size == (RES, RES) and img.mode in ("RGB", "RGBA")
        stem = os.path.splitext(os.path.basename(f["file_path"]))[0]
        lab = Image.open(os.path.join(out, "labels", stem + ".png"))
        assert lab.size == (RES, RES) and lab.mode in ("L", "I;16", "I")
    with open(os.path.join(out, "labels", "objects.json"), encoding="utf-8") as fh:
        objects = json.load(fh)
    assert set(objects.values()) == NAMES and set(objects) == {str(i) for i in range(1, 7)}


def test_every_object_is_labelled(tabletop):
    out, _ = tabletop
    seen = set()
    for f in load(out)["frames"]:
        stem = os.path.splitext(os.path.basename(f["file_path"]))[0]
        seen |= set(np.unique(np.array(Image.open(os.path.join(out, "labels", stem + ".png")))).tolist())
    assert seen == set(range(7)), seen


def test_cameras_project_points_onto_their_labels(tabletop):
    """OpenGL camera-to-world + fl/cx/cy put every surface point on a labelled pixel, mostly its own."""
    out, _ = tabletop
    tj = load(out)
    pts = read_points(os.path.join(out, "points.ply"))
    assert len(pts) == 20000
    xyz = np.stack([pts["x"], pts["y"], pts["z"]], 1).astype(np.float64)
    rgb = np.stack([pts["red"], pts["green"], pts["blue"]], 1).astype(float)
    with open(os.path.join(out, "labels", "objects.json"), encoding="utf-8") as fh:
        objects = {v: int(k) for k, v in json.load(fh).items()}
    # which object a point is on, from its colour (the materials are distinct)
    red = (rgb[:, 0] > 180) & (rgb[:, 1] < 80) & (rgb[:, 2] < 80)
    hit_any, hit_own, n_red = 0, 0, 0
    total = 0
    for f in tj["frames"]:
        c2w = np.array(f["transform_matrix"])
        w2c = np.linalg.inv(c2w)
        cam = xyz @ w2c[:3, :3].T + w2c[:3, 3]
        z = -cam[:, 2]  # OpenGL: the camera looks down -z
        assert (z > 0).all()
        u = tj["fl_x"] * cam[:, 0] / z + tj["cx"]
        v = -tj["fl_y"] * cam[:, 1] / z + tj["cy"]  # image rows go down, camera y goes up
        inside = (u >= 0) & (u < tj["w"]) & (v >= 0) & (v < tj["h"])
        stem = os.path.splitext(os.path.basename(f["file_path"]))[0]
        lab = np.array(Image.open(os.path.join(out, "labels", stem + ".png")))
        ui, vi = u[inside].astype(int), v[inside].astype(int)
        got = lab[vi, ui]
        hit_any += int((got > 0).sum())
        total += int(inside.sum())
        r = red[inside]
        hit_own += int((got[r] == objects["red mug"]).sum())
        n_red += int(r.sum())
    assert total > 0.9 * len(xyz) * len(tj["frames"])  # the objects are in view
    assert hit_any / total > 0.95, hit_any / total
    assert n_red > 0 and hit_own / n_red > 0.6, hit_own / max(n_red, 1)


def test_images_show_the_objects(tabletop):
    """The red mug's labelled pixels are red in the image."""
    out, _ = tabletop
    with open(os.path.join(out, "labels", "objects.json"), encoding="utf-8") as fh:
        mug = int({v: k for k, v in json.load(fh).items()}["red mug"])
    reds = []
    for f in load(out)["frames"]:
        stem = os.path.splitext(os.path.basename(f["file_path"]))[0]
        lab = np.array(Image.open(os.path.join(out, "labels", stem + ".png")))
        img = np.array(Image.open(os.path.join(out, f["file_path"])).convert("RGB")).astype(float)
        m = lab == mug
        if m.sum() > 10:
            c = img[m].mean(0)
            reds.append(c[0] > 1.5 * c[1] and c[0] > 1.5 * c[2])
    assert reds and np.mean(reds) > 0.9


def _digest(folder):
    h = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as fh:
                h[os.path.relpath(path, folder)] = hashlib.sha256(fh.read()).hexdigest()
    return h


def test_deterministic_for_a_seed(tabletop, tmp_path):
    out, home = tabletop
    again = tmp_path / "again"
    make_tabletop(again, home)
    a, b = _digest(out), _digest(again)
    assert set(a) == set(b)
    same = {k for k in a if a[k] == b[k]}
    for key in ("transforms.json", "points.ply", os.path.join("labels", "objects.json")):
        assert key in same, key
    labels = [k for k in a if k.startswith("labels") and k.endswith(".png")]
    assert all(k in same for k in labels)
    # another seed: other cameras
    other = tmp_path / "other"
    make_tabletop(other, home, seed=2, views=2)
    m1 = np.array(load(out)["frames"][0]["transform_matrix"])
    m2 = np.array(load(other)["frames"][0]["transform_matrix"])
    assert not np.allclose(m1, m2)


@pytest.mark.parametrize("engine", ["WORKBENCH", "EEVEE"])
def test_other_engines_render_colour_and_cycles_gives_the_same_labels(blender, tmp_path, engine):
    """In each Blender of the matrix: Cycles, EEVEE and Workbench renders, the same labels."""
    home = tmp_path / "home"
    cycles, out = tmp_path / "CYCLES", tmp_path / engine
    make_tabletop(cycles, home, views=2, python=blender.python)  # the camera layout depends on the view count
    make_tabletop(out, home, views=2, engine=engine, python=blender.python)
    assert load(out)["blender"]["version"].startswith(blender.version + "."), load(out)["blender"]
    assert load(out)["blender"]["settings"]["engine"] == engine
    for frame_c, frame_o in zip(load(cycles)["frames"], load(out)["frames"]):
        assert frame_c["transform_matrix"] == frame_o["transform_matrix"]
        labels_c = np.asarray(Image.open(os.path.join(cycles, frame_c["label_path"])))
        labels_o = np.asarray(Image.open(os.path.join(out, frame_o["label_path"])))
        np.testing.assert_array_equal(labels_o, labels_c)  # the index pass is Cycles' in both
        assert len(np.unique(labels_o)) >= 4
        rgba = np.asarray(Image.open(os.path.join(out, frame_o["file_path"])))
        assert rgba.shape == (RES, RES, 4)
        # transparent film: the background is see-through, the objects opaque (edges anti-aliased)
        alpha = rgba[..., 3]
        assert (alpha[labels_o > 0] > 100).mean() > 0.95 and (alpha[labels_o == 0] < 50).mean() > 0.9
        # and it is another renderer's picture
        rgba_c = np.asarray(Image.open(os.path.join(cycles, frame_c["file_path"])))
        assert np.abs(rgba.astype(int) - rgba_c.astype(int))[..., :3].mean() > 1.0


def test_a_walk_past_a_thing_seen_edge_on_still_spreads_its_cameras(tmp_path):
    """WALK past bounds with no width along the pass (a wall seen edge-on): the cameras of a pass
    still stand apart (half a pass at least a quarter of its distance), and a wide scene's pass
    spans its width as before."""
    code = (
        "import json, sys, numpy as np\n"
        f"sys.path.insert(0, {harness.ROOT!r})\n"
        "from addon import scene_render as sr\n"
        "s = sr.RenderSettings(layout='WALK', views=6)\n"
        "out = {}\n"
        "for name, width in (('edge-on', 0.0), ('wide', 4.0)):\n"
        "    poses = sr.walk_poses(s, np.array([-width / 2, -1.0, 0.0]), np.array([width / 2, 1.0, 2.0]), 0.8)\n"
        "    out[name] = [[float(p[r][3]) for r in range(3)] for p in poses]\n"
        "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=harness.blender_env(str(tmp_path)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    poses = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, positions in poses.items():
        p = np.array(positions)
        low = p[p[:, 2] == p[:, 2].min()]  # the pass at 20 degrees, 1 unit up from the middle
        dist = -low[0, 1] / np.cos(np.radians(20.0))
        assert len(low) == 3 and np.allclose(low[:, 1], low[0, 1])
        span = low[:, 0].max() - low[:, 0].min()  # steps at -5/6, -1/6 and 1/2 of the half-length
        half = 0.25 * dist if name == "edge-on" else 2.0
        assert np.isclose(span, 4.0 / 3.0 * half, rtol=1e-4), (name, span, dist)
