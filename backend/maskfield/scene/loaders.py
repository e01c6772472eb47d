"""Readers for the camera files users bring: transforms.json (nerfstudio / Instant-NGP),
NeRF-synthetic transforms_{train,val,test}.json, and COLMAP sparse models (pycolmap)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..events import MaskFieldError
from .cameras import Camera, opengl_to_opencv, world_to_camera_to_c2w
from .images import image_size
from .scene import Scene

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG", ".exr", ".tif", ".tiff")


def load_scene(path: str | Path, skip_missing: bool = False, holdout_every: int = 8,
               background: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> Scene:
    """Load a scene folder (or a transforms .json file) in any supported form."""
    path = Path(path)
    if not path.exists():
        raise MaskFieldError(f"scene not found: {path}. Give a folder with transforms.json, "
                             "transforms_train.json or a COLMAP sparse/0 model.")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise MaskFieldError(f"{path} is not a camera file; give a scene folder or a transforms .json file.")
        return _load_transforms([path], path.parent, skip_missing, holdout_every, background, "transforms")
    if (path / "transforms.json").exists():
        return _load_transforms([path / "transforms.json"], path, skip_missing, holdout_every, background, "transforms")
    synthetic = [path / f"transforms_{split}.json" for split in ("train", "val", "test")]
    if synthetic[0].exists():
        return _load_transforms([p for p in synthetic if p.exists()], path, skip_missing, holdout_every,
                                background, "nerf-synthetic")
    for sparse in (path / "sparse" / "0", path / "sparse", path / "colmap" / "sparse" / "0"):
        if (sparse / "cameras.bin").exists() or (sparse / "cameras.txt").exists():
            return _load_colmap(sparse, path, skip_missing, holdout_every, background)
    raise MaskFieldError(
        f"no cameras found in {path}: expected transforms.json (nerfstudio / Instant-NGP), "
        "transforms_train.json (NeRF-synthetic) or a COLMAP model in sparse/0/. "
        "Run COLMAP or nerfstudio's ns-process-data on your photos first."
    )


# --- transforms.json -----------------------------------------------------------------------

def _load_transforms(files: list[Path], root: Path, skip_missing: bool, holdout_every: int,
                     background, source: str) -> Scene:
    cameras: list[Camera] = []
    paths: list[Path] = []
    missing: list[str] = []
    split_of: list[str] = []
    listed: list[str] = []  # the frame's file_path as written, for nerfstudio's split keys
    test_files: set[str] | None = None
    ply_points = None
    for file in files:
        try:
            meta = json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise MaskFieldError(f"{file} is not valid JSON ({exc}). Fix or re-export the camera file.") from None
        frames = meta.get("frames")
        if not isinstance(frames, list) or not frames:
            raise MaskFieldError(f"{file} has no 'frames' list; each frame needs 'file_path' and 'transform_matrix'.")
        split = file.stem.replace("transforms_", "") if source == "nerf-synthetic" else "all"
        for index, frame in enumerate(frames):
            where = f"{file.name}, frame {index}"
            if "file_path" not in frame or "transform_matrix" not in frame:
                raise MaskFieldError(f"{where}: missing 'file_path' or 'transform_matrix'.")
            image_path = _resolve_image(root, file.parent, frame["file_path"])
            if image_path is None:
                missing.append(frame["file_path"])
                continue
            c2w_gl = np.asarray(frame["transform_matrix"], dtype=np.float64)
            _check_pose(c2w_gl, f"{where} ({frame['file_path']})", file)
            width, height = image_size(image_path)
            intr = _intrinsics(meta, frame, width, height, where, file)
            cameras.append(Camera(
                name=image_path.stem if source != "nerf-synthetic" else f"{split}_{image_path.stem}",
                width=width, height=height,
                fx=intr["fx"], fy=intr["fy"], cx=intr["cx"], cy=intr["cy"],
                camtoworld=opengl_to_opencv(c2w_gl),
                distortion=np.array([intr["k1"], intr["k2"], intr["p1"], intr["p2"]], dtype=np.float64),
            ))
            paths.append(image_path)
            split_of.append(split)
            listed.append(frame["file_path"])
        if source != "nerf-synthetic" and isinstance(meta.get("test_filenames"), list) and meta["test_filenames"]:
            test_files = {str(f) for f in meta["test_filenames"]}
        if "ply_file_path" in meta and ply_points is None:
            ply_points = _read_point_ply(_first_existing(root, file.parent, meta["ply_file_path"]), file)
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        if not skip_missing:
            raise MaskFieldError(
                f"{len(missing)} image(s) listed in {files[0].name} are missing: {shown}. "
                "Restore them, or pass --skip-missing to use only the frames whose images exist.",
                kind="missing_images",
            )
    if not cameras:
        raise MaskFieldError(f"none of the images listed in {files[0]} exist; check the 'file_path' entries.")
    _check_sizes(cameras, paths)
    if source == "nerf-synthetic":
        test = [i for i, s in enumerate(split_of) if s == "test"]
        train = [i for i, s in enumerate(split_of) if s == "train"]
        if not test:
            test = [i for i in range(len(cameras)) if i % holdout_every == 0]
            train = [i for i in range(len(cameras)) if i not in set(test)]
    elif test_files is not None:
        # nerfstudio's "test_filenames": the capture says which views are held out (e.g.
        # cameras off the training trajectory); --holdout-every does not apply then
        test = [i for i, f in enumerate(listed) if f in test_files]
        train = [i for i, f in enumerate(listed) if f not in test_files]
    else:
        train, test = _holdout(len(cameras), holdout_every)
    points, colors = ply_points if ply_points is not None else (None, None)
    scene = Scene(root=root, cameras=cameras, image_paths=paths, points=points, point_colors=colors,
                  train_indices=train, test_indices=test, source=source, background=background,
                  skipped=missing)
    return scene


def _resolve_image(root: Path, base: Path, file_path: str) -> Path | None:
    candidate = _first_existing(root, base, file_path)
    if candidate.exists():
        return candidate
    if candidate.suffix == "":  # NeRF-synthetic omits the extension
        for suffix in IMAGE_SUFFIXES:
            if candidate.with_suffix(suffix).exists():
                return candidate.with_suffix(suffix)
    return None


def _first_existing(root: Path, base: Path, relative: str) -> Path:
    for folder in (base, root):
        p = (folder / relative)
        if p.exists() or p.with_suffix(".png").exists():
            return p
    return base / relative


def _intrinsics(meta: dict, frame: dict, width: int, height: int, where: str, file: Path) -> dict:
    def get(key):
        return frame.get(key, meta.get(key))

    declared_w, declared_h = get("w"), get("h")
    if declared_w is not None and declared_h is not None:
        if int(round(float(declared_w))) != width or int(round(float(declared_h))) != height:
            raise MaskFieldError(
                f"{where}: the image is {width}x{height} but {file.name} says {int(declared_w)}x{int(declared_h)}. "
                "Use the original images, or fix w/h and the intrinsics in the camera file."
            )
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None and get("camera_angle_x") is not None:
        fx = 0.5 * width / math.tan(0.5 * float(get("camera_angle_x")))
    if fy is None and get("camera_angle_y") is not None and get("fl_x") is None:
        fy = 0.5 * height / math.tan(0.5 * float(get("camera_angle_y")))
    if fx is None:
        raise MaskFieldError(f"{where}: no focal length; {file.name} needs 'fl_x' (pixels) or 'camera_angle_x' (radians).")
    fy = fx if fy is None else fy
    cx = get("cx")
    cy = get("cy")
    model = str(get("camera_model") or "OPENCV").upper()
    if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
        raise MaskFieldError(f"{where}: camera model {model} is not supported; use OPENCV or PINHOLE "
                             "(undistort fisheye captures first, e.g. with COLMAP's image_undistorter).")
    values = dict(fx=float(fx), fy=float(fy),
                  cx=float(cx) if cx is not None else width / 2.0,
                  cy=float(cy) if cy is not None else height / 2.0,
                  k1=float(get("k1") or 0.0), k2=float(get("k2") or 0.0),
                  p1=float(get("p1") or 0.0), p2=float(get("p2") or 0.0))
    for key, value in values.items():
        if not math.isfinite(value):
            raise MaskFieldError(f"{where}: intrinsic '{key}' is not a finite number in {file.name}.")
    if values["fx"] <= 0 or values["fy"] <= 0:
        raise MaskFieldError(f"{where}: focal length must be positive in {file.name}.")
    return values


def _check_pose(c2w: np.ndarray, where: str, file: Path) -> None:
    if c2w.shape not in ((4, 4), (3, 4)):
        raise MaskFieldError(f"{where}: transform_matrix must be 4x4 (or 3x4), got shape {c2w.shape} in {file.name}.")
    if not np.all(np.isfinite(c2w)):
        raise MaskFieldError(f"{where}: transform_matrix contains NaN or infinity in {file.name}; "
                             "re-run the pose estimation or drop this frame.")
    det = np.linalg.det(c2w[:3, :3])
    if abs(det) < 1e-6:
        raise MaskFieldError(f"{where}: transform_matrix has a singular rotation (determinant {det:.2g}) in "
                             f"{file.name}; re-run the pose estimation or drop this frame.")


def _check_sizes(cameras: list[Camera], paths: list[Path]) -> None:
    sizes = {(c.width, c.height) for c in cameras}
    if len(sizes) > 1:
        by_size: dict[tuple[int, int], list[str]] = {}
        for cam, p in zip(cameras, paths):
            by_size.setdefault((cam.width, cam.height), []).append(p.name)
        detail = "; ".join(f"{w}x{h}: {', '.join(v[:3])}{' ...' if len(v) > 3 else ''}" for (w, h), v in by_size.items())
        raise MaskFieldError(f"the images have different sizes ({detail}). Use images of one size "
                             "(resize them all, or remove the odd ones from the camera file).")


def _holdout(count: int, every: int) -> tuple[list[int], list[int]]:
    if every <= 0 or count < 2:
        return list(range(count)), []
    test = [i for i in range(count) if i % every == 0]
    train = [i for i in range(count) if i % every != 0]
    return train, test


def _read_point_ply(path: Path, referenced_by: Path):
    from plyfile import PlyData

    if not path.exists():
        raise MaskFieldError(f"{referenced_by.name} names seed points '{path.name}' but {path} does not exist.")
    try:
        vertex = PlyData.read(str(path))["vertex"]
    except Exception as exc:  # plyfile raises several kinds
        raise MaskFieldError(f"cannot read point cloud {path}: {exc}") from None
    pts = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float32)
    names = vertex.data.dtype.names
    if all(c in names for c in ("red", "green", "blue")):
        cols = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.uint8)
    else:
        cols = np.full((len(pts), 3), 128, dtype=np.uint8)
    return pts, cols


# --- COLMAP ------------------------------------------------------------------------------

def _load_colmap(sparse: Path, root: Path, skip_missing: bool, holdout_every: int, background) -> Scene:
    import pycolmap

    try:
        rec = pycolmap.Reconstruction(str(sparse))
    except Exception as exc:
        raise MaskFieldError(f"cannot read the COLMAP model in {sparse}: {exc}") from None
    if rec.num_images() == 0:
        raise MaskFieldError(f"the COLMAP model in {sparse} has no images; re-run COLMAP's mapper on your photos.")
    image_dir = root / "images"
    cameras: list[Camera] = []
    paths: list[Path] = []
    missing: list[str] = []
    for image_id in sorted(rec.images):
        image = rec.images[image_id]
        if not image.has_pose:
            continue
        path = image_dir / image.name
        if not path.exists():
            missing.append(image.name)
            continue
        cam = rec.cameras[image.camera_id]
        pose = image.cam_from_world()
        c2w = world_to_camera_to_c2w(np.asarray(pose.rotation.matrix()), np.asarray(pose.translation))
        _check_pose(c2w, f"COLMAP image {image.name}", sparse / "images")
        fx, fy, cx, cy, dist = _colmap_intrinsics(cam, image.name)
        width, height = image_size(path)
        if (width, height) != (cam.width, cam.height):
            sx, sy = width / cam.width, height / cam.height
            fx, fy, cx, cy = fx * sx, fy * sy, cx * sx, cy * sy
        cameras.append(Camera(Path(image.name).stem, width, height, fx, fy, cx, cy, c2w, dist))
        paths.append(path)
    if missing and not skip_missing:
        raise MaskFieldError(
            f"{len(missing)} image(s) of the COLMAP model are missing from {image_dir}: {', '.join(missing[:10])}. "
            "Restore them, or pass --skip-missing.", kind="missing_images")
    if not cameras:
        raise MaskFieldError(f"the COLMAP model in {sparse} has no posed images with files in {image_dir}.")
    _check_sizes(cameras, paths)
    points = colors = None
    if rec.num_points3D() > 0:
        pts = [(rec.points3D[pid].xyz, rec.points3D[pid].color) for pid in sorted(rec.points3D)]
        points = np.array([p[0] for p in pts], dtype=np.float32)
        colors = np.array([p[1] for p in pts], dtype=np.uint8)
    train, test = _holdout(len(cameras), holdout_every)
    return Scene(root=root, cameras=cameras, image_paths=paths, points=points, point_colors=colors,
                 train_indices=train, test_indices=test, source="colmap", background=background,
                 skipped=missing)


def _colmap_intrinsics(cam, image_name: str):
    model = cam.model.name if hasattr(cam.model, "name") else str(cam.model)
    p = [float(v) for v in cam.params]
    zero = np.zeros(4)
    if model == "SIMPLE_PINHOLE":
        return p[0], p[0], p[1], p[2], zero
    if model == "PINHOLE":
        return p[0], p[1], p[2], p[3], zero
    if model == "SIMPLE_RADIAL":
        return p[0], p[0], p[1], p[2], np.array([p[3], 0, 0, 0])
    if model == "RADIAL":
        return p[0], p[0], p[1], p[2], np.array([p[3], p[4], 0, 0])
    if model == "OPENCV":
        return p[0], p[1], p[2], p[3], np.array(p[4:8])
    raise MaskFieldError(
        f"COLMAP camera model {model} (image {image_name}) is not supported; run COLMAP's image_undistorter "
        "and use its PINHOLE model, or use SIMPLE_RADIAL / RADIAL / OPENCV.")
