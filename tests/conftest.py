"""Shared fixtures: small scenes built here, the repository root, the shared data folder."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# SuperSplat's converter, installed by scripts/ensure_env.sh (npm)
SPLAT_TRANSFORM = ROOT / ".venv" / "node" / "node_modules" / ".bin" / "splat-transform"
SHARED = ROOT.parent / "shared"
FOX = SHARED / "data" / "fox"

os.environ.setdefault("MASKFIELD_OFFLINE", "1")  # tests never download


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def look_at_c2w_gl(eye, target=(0, 0, 0), up=(0, 0, 1)) -> np.ndarray:
    """Camera-to-world in OpenGL axes (camera looks down -z), as transforms.json stores it."""
    eye = np.asarray(eye, float)
    f = np.asarray(target, float) - eye
    f /= np.linalg.norm(f)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    u = np.cross(r, f)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = r, u, -f, eye
    return m


@pytest.fixture
def make_transforms_scene(tmp_path):
    """A transforms.json scene of random images around the origin; returns (folder, frames)."""

    def make(n=6, w=40, h=30, fl=35.0, extra=None, frame_extra=None, rgba=False, name="scene"):
        folder = tmp_path / name
        rng = np.random.default_rng(0)
        frames = []
        for i in range(n):
            angle = 2 * np.pi * i / n
            c2w = look_at_c2w_gl([3 * np.cos(angle), 3 * np.sin(angle), 1.0])
            img = rng.integers(0, 255, (h, w, 4 if rgba else 3), dtype=np.uint8)
            write_png(folder / "images" / f"{i:03d}.png", img)
            frame = {"file_path": f"images/{i:03d}.png", "transform_matrix": c2w.tolist()}
            frame.update((frame_extra or {}).get(i, {}))
            frames.append(frame)
        meta = {"fl_x": fl, "fl_y": fl, "cx": w / 2, "cy": h / 2, "w": w, "h": h, "frames": frames}
        meta.update(extra or {})
        (folder / "transforms.json").write_text(json.dumps(meta))
        return folder, frames

    return make


sys.path.insert(0, str(ROOT / "backend"))
# subprocesses (`python -m maskfield.cli`, tools/, benchmarks/) test this checkout's backend too,
# not whichever copy an editable install in the environment points at
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "backend"), os.environ.get("PYTHONPATH")) if p)


def mix_image_sizes(folder: Path) -> None:
    """Turn a transforms.json scene of one image size into a capture of several: every third
    view (from the second) cropped to the middle three quarters of its width, every third (from
    the third) turned a quarter (a landscape view becomes portrait, as a phone held upright
    takes it); per-frame intrinsics and poses to match, label images alike. Exact pixel
    operations, so every view still shows the same scene."""
    from PIL import Image

    meta = json.loads((folder / "transforms.json").read_text())
    width, height = int(meta["w"]), int(meta["h"])
    fx, fy, cx, cy = (float(meta[k]) for k in ("fl_x", "fl_y", "cx", "cy"))
    for i, frame in enumerate(meta["frames"]):
        files = [folder / frame[key] for key in ("file_path", "label_path") if key in frame]
        if i % 3 == 1:
            kept = round(0.75 * width)
            x0 = (width - kept) // 2
            for f in files:
                Image.fromarray(np.asarray(Image.open(f))[:, x0:x0 + kept]).save(f)
            frame.update(w=kept, h=height, fl_x=fx, fl_y=fy, cx=cx - x0, cy=cy)
        elif i % 3 == 2:
            # np.rot90 turns counter-clockwise: pixel (u, v) goes to (v, W - u), so the camera
            # turns about its axis: x' = y, y' = -x (OpenCV), and the same in OpenGL's axes here
            for f in files:
                Image.fromarray(np.ascontiguousarray(np.rot90(np.asarray(Image.open(f))))).save(f)
            c2w = np.asarray(frame["transform_matrix"], dtype=float)
            c2w[:3, :3] = c2w[:3, :3] @ np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
            frame["transform_matrix"] = c2w.tolist()
            frame.update(w=height, h=width, fl_x=fy, fl_y=fx, cx=cy, cy=width - cx)
    (folder / "transforms.json").write_text(json.dumps(meta, indent=1))


def move_scene(folder: Path, offset) -> None:
    """Move a transforms.json scene (cameras and its seed points, kept in float64 as a
    geo-referenced export keeps them) by ``offset``: the same capture in other coordinates."""
    from plyfile import PlyData, PlyElement

    offset = np.asarray(offset, dtype=np.float64)
    meta = json.loads((folder / "transforms.json").read_text())
    meta.pop("blender", None)  # no longer the add-on's render, whose coordinates are Blender's
    for frame in meta["frames"]:
        c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
        c2w[:3, 3] += offset
        frame["transform_matrix"] = c2w.tolist()
    (folder / "transforms.json").write_text(json.dumps(meta, indent=1))
    if "ply_file_path" in meta:
        ply = folder / meta["ply_file_path"]
        vertex = PlyData.read(str(ply))["vertex"].data
        moved = np.empty(len(vertex), dtype=[(n, "<f8" if n in ("x", "y", "z") else vertex.dtype[n].str)
                                             for n in vertex.dtype.names])
        for name in vertex.dtype.names:
            moved[name] = vertex[name]
        for axis, name in enumerate("xyz"):
            moved[name] += offset[axis]
        PlyData([PlyElement.describe(moved, "vertex")]).write(str(ply))


def scale_scene(folder: Path, factor: float) -> None:
    """Scale a transforms.json scene (camera positions and seed points) by ``factor``: the same
    capture in other units (a COLMAP model's arbitrary scale, kilometres, millimetres)."""
    from plyfile import PlyData, PlyElement

    meta = json.loads((folder / "transforms.json").read_text())
    meta.pop("blender", None)  # no longer the add-on's render, whose coordinates are Blender's
    for frame in meta["frames"]:
        c2w = np.asarray(frame["transform_matrix"], dtype=np.float64)
        c2w[:3, 3] *= factor
        frame["transform_matrix"] = c2w.tolist()
    (folder / "transforms.json").write_text(json.dumps(meta, indent=1))
    if "ply_file_path" in meta:
        ply = folder / meta["ply_file_path"]
        vertex = PlyData.read(str(ply))["vertex"].data.copy()
        for name in "xyz":
            vertex[name] = vertex[name] * factor
        PlyData([PlyElement.describe(vertex, "vertex")]).write(str(ply))


def fisheye_rays(k, xd: np.ndarray, yd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV's equidistant fisheye inverted by bisection (the test's own, not the loader's):
    distorted normalised coordinates -> the angle from the axis theta and the azimuth phi."""
    rd = np.hypot(xd, yd)
    lo, hi = np.zeros_like(rd), np.full_like(rd, np.pi / 2)
    for _ in range(60):
        mid = (lo + hi) / 2
        t2 = mid * mid
        big = mid * (1 + k[0] * t2 + k[1] * t2 ** 2 + k[2] * t2 ** 3 + k[3] * t2 ** 4) > rd
        hi, lo = np.where(big, mid, hi), np.where(big, lo, mid)
    return (lo + hi) / 2, np.arctan2(yd, xd)


def as_fisheye(folder: Path, k=(0.04, -0.01, 0.0, 0.0)) -> None:
    """Turn a transforms.json scene of pinhole renders (one image size) into the capture that a
    fisheye lens of the same focal length takes from the same poses: every image and label image
    resampled through OpenCV's equidistant model (the wider field the lens sees past the render
    left empty: transparent, label 0), and the camera file saying OPENCV_FISHEYE with k1-k4."""
    from PIL import Image
    from scipy.ndimage import map_coordinates

    meta = json.loads((folder / "transforms.json").read_text())
    width, height = int(meta["w"]), int(meta["h"])
    fx, fy, cx, cy = (float(meta[key]) for key in ("fl_x", "fl_y", "cx", "cy"))
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    theta, phi = fisheye_rays(k, (u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy)
    # where each fisheye pixel's ray meets the pinhole render (rays past 90 degrees miss it)
    r = np.where(theta < np.pi / 2 - 1e-6, np.tan(np.minimum(theta, np.pi / 2 - 1e-6)), 1e6)
    coords = np.stack([r * np.sin(phi) * fy + cy - 0.5, r * np.cos(phi) * fx + cx - 0.5])
    for frame in meta["frames"]:
        for key, order in (("file_path", 1), ("label_path", 0)):
            if key not in frame:
                continue
            path = folder / frame[key]
            image = np.asarray(Image.open(path))
            planes = image[..., None] if image.ndim == 2 else image
            out = np.stack([map_coordinates(planes[..., c].astype(np.float64), coords, order=order, mode="constant",
                                            cval=0.0) for c in range(planes.shape[2])], -1)
            out = np.clip(np.round(out), 0, np.iinfo(image.dtype).max).astype(image.dtype)
            Image.fromarray(out[..., 0] if image.ndim == 2 else out).save(path)
    meta.update(camera_model="OPENCV_FISHEYE", **dict(zip(("k1", "k2", "k3", "k4"), map(float, k))))
    (folder / "transforms.json").write_text(json.dumps(meta, indent=1))


def halve_some_views(folder: Path, every: int = 2) -> None:
    """Every ``every``-th view of a transforms.json scene (from the first) at half its size,
    with per-frame intrinsics to match, label images alike: a capture that mixes cameras of
    two resolutions (12 MP photos and 1080p video frames)."""
    from PIL import Image

    meta = json.loads((folder / "transforms.json").read_text())
    for i, frame in enumerate(meta["frames"]):
        if i % every:
            continue
        for key, resample in (("file_path", Image.Resampling.BOX), ("label_path", Image.Resampling.NEAREST)):
            if key in frame:
                img = Image.open(folder / frame[key])
                img.resize((img.width // 2, img.height // 2), resample).save(folder / frame[key])
        frame.update(w=int(meta["w"]) // 2, h=int(meta["h"]) // 2,
                     **{k: float(meta[k]) / 2 for k in ("fl_x", "fl_y", "cx", "cy")})
    (folder / "transforms.json").write_text(json.dumps(meta, indent=1))
