"""Readers for the camera files users bring: transforms.json (nerfstudio / Instant-NGP),
NeRF-synthetic transforms_{train,val,test}.json, COLMAP sparse models (pycolmap), and LLFF
``poses_bounds.npy`` (the format of 3D-OVS and of the MaskField authors' code)."""
from __future__ import annotations

import json
import math
import posixpath
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

from ..events import MaskFieldError
from .cameras import Camera, llff_to_opencv, opengl_to_opencv, world_to_camera_to_c2w
from .images import image_size, unreadable
from .scene import Scene

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".JPG", ".JPEG", ".PNG", ".exr", ".tif", ".tiff")


def load_scene(path: str | Path, skip_missing: bool = False, holdout_every: int = 8,
               background: tuple[float, float, float] = (1.0, 1.0, 1.0), images: str | None = None,
               check_readable: bool | None = None) -> Scene:
    """Load a scene folder (or a transforms .json file) in any supported form.

    ``images`` names the image folder of an LLFF scene (``images``, ``images_4``, ...); by
    default the full-size ``images`` folder, or the least downscaled one present.
    ``skip_missing`` leaves out frames whose image files are missing or unreadable: with
    ``check_readable`` (by default as ``skip_missing``) every image is decoded once to find
    them, which a run reloading its own scene does not need (its header is read either way).
    """
    check = skip_missing if check_readable is None else check_readable
    scene = _load_any(Path(path), skip_missing, holdout_every, background, images, check)
    recentre_far_scene(scene)
    note_fisheye_views(scene)
    set_near_plane(scene)
    return scene


def set_near_plane(scene: Scene) -> None:
    """Give every camera the capture's near plane (``cameras.near_plane``), and say so where it
    is not the usual 0.01."""
    from .cameras import DEFAULT_NEAR, near_plane

    try:
        center = scene.bounds()[0]
    except (np.linalg.LinAlgError, ValueError):  # a capture the fit will refuse, with its own message
        return
    near = near_plane(scene.cameras, center)
    for cam in scene.cameras:
        cam.near = near
    if near < 0.1 * DEFAULT_NEAR:  # said where it matters: below 1% of a unit, 0.01 would hide the scene
        scene.notes.append(f"the cameras stand {near / DEFAULT_NEAR:.3g} units from what they look at (a scene in "
                           f"small units): the renderers' near plane is {near:.3g} instead of {DEFAULT_NEAR}.")


def note_fisheye_views(scene: Scene) -> None:
    """Say what resampling a fisheye photo to a pinhole of its own focal length keeps: the
    renderers are pinholes, and a pinhole cannot hold the rim of a wide lens (at 90 degrees
    from the axis it would need an infinite image)."""
    fisheye = [cam for cam in scene.cameras if cam.lens == "fisheye"]
    if not fisheye:
        return
    from .cameras import fisheye_radius

    cam = fisheye[0]
    half_w = max(cam.cx, cam.width - cam.cx) / cam.fx
    kept = 2 * math.degrees(math.atan(half_w))
    theta = np.linspace(0.0, math.pi, 3601)  # the lens's angle at the image's side, where its radius gets there
    reached = np.nonzero(fisheye_radius(theta, cam.distortion) >= half_w)[0]
    seen = 2 * math.degrees(theta[reached[0]] if len(reached) else math.pi)
    scene.notes.append(
        f"{len(fisheye)} fisheye view(s) (e.g. {cam.name}) are resampled to pinhole views of the same focal "
        f"length: of the about {seen:.0f} degrees across that the lens sees, the central {kept:.0f} are used.")


def _load_any(path: Path, skip_missing: bool, holdout_every: int, background, images: str | None,
              check_readable: bool) -> Scene:
    if not path.exists():
        raise MaskFieldError(f"scene not found: {path}. Give a folder with transforms.json, "
                             "transforms_train.json or a COLMAP sparse/0 model.")
    if path.is_file():
        if path.suffix.lower() != ".json":
            raise MaskFieldError(f"{path} is not a camera file; give a scene folder or a transforms .json file.")
        return _load_transforms([path], path.parent, skip_missing, holdout_every, background, "transforms",
                                check_readable)
    if (path / "transforms.json").exists():
        return _load_transforms([path / "transforms.json"], path, skip_missing, holdout_every, background,
                                "transforms", check_readable)
    synthetic = [path / f"transforms_{split}.json" for split in ("train", "val", "test")]
    if synthetic[0].exists():
        return _load_transforms([p for p in synthetic if p.exists()], path, skip_missing, holdout_every,
                                background, "nerf-synthetic", check_readable)
    for sparse in (path / "sparse" / "0", path / "sparse", path / "colmap" / "sparse" / "0"):
        if (sparse / "cameras.bin").exists() or (sparse / "cameras.txt").exists():
            return _load_colmap(sparse, path, skip_missing, holdout_every, background, check_readable)
    if (path / "poses_bounds.npy").exists():
        return _load_llff(path, images, holdout_every, background)
    raise MaskFieldError(
        f"no cameras found in {path}: expected transforms.json (nerfstudio / Instant-NGP), "
        "transforms_train.json (NeRF-synthetic), a COLMAP model in sparse/0/ or LLFF's poses_bounds.npy. "
        "Run COLMAP or nerfstudio's ns-process-data on your photos first."
    )


# Camera centres this many times their spread from the coordinates' 0 are recentred: 32-bit
# floats (the renderers', gsplat's, a .ply's) keep 24 bits, so there a scene's own detail
# falls below 1e-4 of its size (a 4 m kitchen at UTM northing 4e6 would move in 25 cm steps).
FAR_FROM_ORIGIN = 1000.0


def recentre_far_scene(scene: Scene) -> None:
    """Move a scene whose cameras are far from their coordinates' 0 (geo-referenced: UTM, ECEF)
    next to it, in float64, and say so in ``scene.notes``; ``scene.origin`` keeps the offset.

    The origin is the cameras' mean rounded to a power of ten under their spread, so that it
    reads plainly. Everything the run writes (gaussians.ply, segments) is then in these
    coordinates, as 3DGS tools and Blender (both 32-bit) can use them. The add-on's renders
    (``Scene.keep_coordinates``) stay where they are."""
    if scene.keep_coordinates:
        return
    centers = np.stack([cam.center for cam in scene.cameras])
    mean = centers.mean(axis=0)
    spread = float(np.linalg.norm(centers - mean, axis=1).max())
    far = float(np.abs(centers).max())
    # cameras at one place (spread at rounding level) are no capture to move: the fit refuses them
    if not np.isfinite(far) or spread <= 1e-9 * far or far <= FAR_FROM_ORIGIN * spread:
        return
    step = 10.0 ** np.floor(np.log10(spread))
    origin = np.round(mean / step) * step
    for cam in scene.cameras:
        cam.camtoworld = np.array(cam.camtoworld, dtype=np.float64)
        cam.camtoworld[:3, 3] -= origin
    if scene.points is not None:
        scene.points = np.asarray(scene.points, dtype=np.float64) - origin
    scene.origin = origin
    shown = ", ".join(f"{v:.10g}" for v in origin)
    scene.notes.append(
        f"the cameras are {far:.3g} from their coordinates' origin, {far / spread:,.0f} times their own spread "
        f"(a geo-referenced capture?), where 32-bit numbers would blur the scene. The run works in coordinates "
        f"that start at ({shown}) of the camera file's: gaussians.ply, the segments and --at / --points "
        "positions are in them; add run.json's 'origin' to return to the file's.")


# --- transforms.json -----------------------------------------------------------------------

def _load_transforms(files: list[Path], root: Path, skip_missing: bool, holdout_every: int,
                     background, source: str, check_readable: bool = False) -> Scene:
    cameras: list[Camera] = []
    paths: list[Path] = []
    missing: list[str] = []
    split_of: list[str] = []
    scaled: list[tuple[str, float]] = []  # frames whose camera matrix carried a uniform scale
    unsplit = None  # why the camera file's own test split was not used
    relocated: list[str] = []  # file_paths found only as written on Windows or on another machine
    listed: list[str] = []  # the frame's file_path as written, for nerfstudio's split keys
    test_files: set[str] | None = None
    ply_points = None
    from_blender = False  # rendered by the add-on: positions stay Blender's (Scene.keep_coordinates)
    rendered_inside = False  # by the add-on, with its INSIDE cameras (Scene.rendered_inside)
    for file in files:
        try:
            meta = json.loads(file.read_text(encoding="utf-8-sig"))  # a BOM: saved by a Windows editor
        except json.JSONDecodeError as exc:
            raise MaskFieldError(f"{file} is not valid JSON ({exc}). Fix or re-export the camera file.") from None
        if not isinstance(meta, dict):
            raise MaskFieldError(f"{file} must hold a JSON object with 'frames' (and the intrinsics), got a "
                                 f"{type(meta).__name__}.")
        frames = meta.get("frames")
        if not isinstance(frames, list) or not frames:
            raise MaskFieldError(f"{file} has no 'frames' list; each frame needs 'file_path' and 'transform_matrix'.")
        from_blender = from_blender or isinstance(meta.get("blender"), dict)
        rendered_inside = rendered_inside or _rendered_from_inside(meta)
        split = file.stem.replace("transforms_", "") if source == "nerf-synthetic" else "all"
        for index, frame in enumerate(frames):
            where = f"{file.name}, frame {index}"
            if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
                raise MaskFieldError(f"{where}: missing 'file_path' or 'transform_matrix'.")
            if not isinstance(frame["file_path"], str) or not frame["file_path"].strip():
                raise MaskFieldError(f"{where}: 'file_path' must be the image's path (a string) in {file.name}.")
            image_path = _resolve_image(root, file.parent, frame["file_path"])
            if image_path is None:
                missing.append(frame["file_path"])
                continue
            if skip_missing and (why := unreadable(image_path, decode=check_readable)):
                missing.append(f"{frame['file_path']} (unreadable: {why})")
                continue
            if _relocated(frame["file_path"], image_path, root, file.parent):
                relocated.append(frame["file_path"])
            try:
                c2w_gl = np.asarray(frame["transform_matrix"], dtype=np.float64)
            except (TypeError, ValueError):
                raise MaskFieldError(f"{where} ({frame['file_path']}): transform_matrix must be a 4x4 list of numbers "
                                     f"in {file.name}, got {str(frame['transform_matrix'])[:60]!r}.") from None
            _check_pose(c2w_gl, f"{where} ({frame['file_path']})", file)
            c2w_gl, scale = normalise_pose(c2w_gl, f"{where} ({frame['file_path']})", file)
            if scale is not None:
                scaled.append((frame["file_path"], scale))
            width, height = image_size(image_path)
            try:
                intr = _intrinsics(meta, frame, width, height, where, file)
            except (TypeError, ValueError) as exc:  # text where a number belongs
                raise MaskFieldError(f"{where}: the intrinsics (fl_x, fl_y, cx, cy, w, h, camera_angle_x, k1-k6, p1, p2) "
                                     f"must be numbers in {file.name} ({exc}).") from None
            cameras.append(Camera(
                name=image_path.stem if source != "nerf-synthetic" else f"{split}_{image_path.stem}",
                width=width, height=height,
                fx=intr["fx"], fy=intr["fy"], cx=intr["cx"], cy=intr["cy"],
                camtoworld=opengl_to_opencv(c2w_gl), distortion=intr["distortion"], lens=intr["lens"],
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
    if source == "nerf-synthetic":
        test = [i for i, s in enumerate(split_of) if s == "test"]
        train = [i for i, s in enumerate(split_of) if s == "train"]
        if not test:
            test = [i for i in range(len(cameras)) if i % holdout_every == 0]
            train = [i for i in range(len(cameras)) if i not in set(test)]
    elif test_files is not None:
        # nerfstudio's "test_filenames": the capture says which views are held out (e.g.
        # cameras off the training trajectory); --holdout-every does not apply then
        wanted = {_same_spelling(f) for f in test_files}
        test = [i for i, f in enumerate(listed) if _same_spelling(f) in wanted]
        train = [i for i in range(len(cameras)) if i not in set(test)]
        if test_files and not test:  # edited paths, say: the file's own split no longer holds
            train, test = _holdout(len(cameras), holdout_every)
            unsplit = (f"none of the {len(test_files)} 'test_filenames' in {files[0].name} is a frame of it (e.g. "
                       f"{sorted(test_files)[0]!r}), so every {holdout_every}th view is held out instead.")
    else:
        train, test = _holdout(len(cameras), holdout_every)
    points, colors = ply_points if ply_points is not None else (None, None)
    renamed = name_apart(cameras, paths)
    scene = Scene(root=root, cameras=cameras, image_paths=paths, points=points, point_colors=colors,
                  train_indices=train, test_indices=test, source=source, background=background,
                  skipped=missing, keep_coordinates=from_blender, rendered_inside=rendered_inside)
    for note in (renamed, unsplit):
        if note:
            scene.notes.append(note)
    if relocated:
        scene.notes.append(f"{len(relocated)} image path(s) in {files[0].name} do not exist as written (e.g. "
                           f"{relocated[0]!r}: written on Windows, or on another machine, or in other letter case on macOS "
                           "or Windows, whose file systems ignore case); each was found by its folder and name under "
                           "the scene folder.")
    if scaled:
        name, factor = scaled[0]
        scene.notes.append(f"{len(scaled)} camera matrix(es) in {files[0].name} carry a uniform scale (e.g. {factor:.4g} "
                           f"in {name}: a scaled camera object?); the scale was removed, so the poses are rotations "
                           "and positions only.")
    return scene


def _same_spelling(file_path: str) -> str:
    """A frame path as nerfstudio's split lists may spell it otherwise: ./, \\ or // aside."""
    return posixpath.normpath(file_path.replace("\\", "/"))


def _rendered_from_inside(meta: dict) -> bool:
    """Whether the add-on rendered these views with its INSIDE layout (cameras in the middle of
    the objects, looking outward), as its transforms.json records."""
    blender = meta.get("blender")
    settings = blender.get("settings") if isinstance(blender, dict) else None
    return isinstance(settings, dict) and str(settings.get("layout", "")).upper() == "INSIDE"


def _resolve_image(root: Path, base: Path, file_path: str) -> Path | None:
    """The image a frame's ``file_path`` names, or None. Also found: a path written on Windows
    (backslashes), and one absolute on the machine that wrote the file (a copied data set), by
    the longest tail of it that exists under the camera file's folder or the scene's."""
    for written in _spellings(file_path):
        candidate = _first_existing(root, base, written)
        if candidate.exists():
            return candidate
        if candidate.suffix == "":  # NeRF-synthetic omits the extension
            for suffix in IMAGE_SUFFIXES:
                if candidate.with_suffix(suffix).exists():
                    return candidate.with_suffix(suffix)
    for written in _spellings(file_path):
        for folder in (base, root):
            found = find_ignoring_case(folder, written)
            if found is not None:
                return found
    return None


def find_ignoring_case(folder: Path, relative: str) -> Path | None:
    """The one file under ``folder`` whose path is ``relative`` in other letter case, or None:
    a data set made on macOS or Windows (whose file systems ignore case) may name
    ``IMG_0001.JPG`` or ``Images/`` for ``img_0001.jpg`` in ``images/``, which Linux does not
    find. Two files that differ only in case make it ambiguous: None."""
    here = folder
    for part in PurePosixPath(relative.replace("\\", "/")).parts:
        if part in (".", ""):
            continue
        if part == "..":
            here = here.parent
            continue
        exact = here / part
        if exact.exists():
            here = exact
            continue
        try:
            matches = [entry for entry in here.iterdir() if entry.name.casefold() == part.casefold()]
        except OSError:  # not a folder, or not readable
            return None
        if len(matches) != 1:
            return None
        here = matches[0]
    return here if here.is_file() else None


def _spellings(file_path: str):
    """``file_path`` as written, then with / for \\, then (if absolute) its tails, longest first."""
    yield file_path
    posix = file_path.replace("\\", "/")
    if posix != file_path:
        yield posix
    drive = PureWindowsPath(posix).drive
    if posix.startswith("/") or drive:
        parts = (PureWindowsPath(posix) if drive else PurePosixPath(posix)).parts[1:]
        for k in range(len(parts), 0, -1):
            yield "/".join(parts[len(parts) - k:])


def _relocated(file_path: str, found: Path, root: Path, base: Path) -> bool:
    """Whether ``found`` came from another spelling than ``file_path`` as written."""
    literal = _first_existing(root, base, file_path)
    return not (found == literal or found.with_suffix("") == literal)


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
        if (int(round(float(declared_w))), int(round(float(declared_h)))) == (height, width) and width != height:
            _orientation_contradiction(where, file, width, height)
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
    model = str(get("camera_model") or ("OPENCV_FISHEYE" if get("is_fisheye") else "OPENCV")).upper()
    if model not in PINHOLE_MODELS + FISHEYE_MODELS:
        raise MaskFieldError(f"{where}: camera model {model} is not supported; use {', '.join(PINHOLE_MODELS)} or "
                             f"{', '.join(FISHEYE_MODELS)} (resample other lenses to a pinhole first, e.g. with "
                             "COLMAP's image_undistorter).")
    values = dict(fx=float(fx), fy=float(fy),
                  cx=float(cx) if cx is not None else width / 2.0,
                  cy=float(cy) if cy is not None else height / 2.0)
    # the coefficients under OpenCV's names, in the order of its model for this lens
    names = FISHEYE_COEFFICIENTS if model in FISHEYE_MODELS else PINHOLE_COEFFICIENTS
    coeffs = {name: float(get(name) or 0.0) for name in names}
    for key, value in {**values, **coeffs}.items():
        if not math.isfinite(value):
            raise MaskFieldError(f"{where}: intrinsic '{key}' is not a finite number in {file.name}.")
    if values["fx"] <= 0 or values["fy"] <= 0:
        raise MaskFieldError(f"{where}: focal length must be positive in {file.name}.")
    if model in FISHEYE_MODELS and any(float(get(k) or 0.0) for k in ("p1", "p2")):
        raise MaskFieldError(f"{where}: {file.name} gives a fisheye lens tangential terms p1/p2, which OpenCV's "
                             "fisheye model does not have; export the camera again with k1-k4 only.")
    values["lens"] = "fisheye" if model in FISHEYE_MODELS else "pinhole"
    values["distortion"] = np.array([coeffs[n] for n in names], dtype=np.float64)
    return values


# transforms.json's camera models (nerfstudio's names; Instant-NGP says "is_fisheye": true)
PINHOLE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE", "FULL_OPENCV", "SIMPLE_RADIAL", "RADIAL")
FISHEYE_MODELS = ("OPENCV_FISHEYE",)
PINHOLE_COEFFICIENTS = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")  # OpenCV's order
FISHEYE_COEFFICIENTS = ("k1", "k2", "k3", "k4")


def normalise_pose(c2w: np.ndarray, where: str, file: Path) -> tuple[np.ndarray, float | None]:
    """A 4x4 camera-to-world whose rotation part has unit scale, and the uniform scale removed
    (None when there was none). A non-uniform scale, a shear or a mirror cannot be a camera
    pose: refused with the frame named."""
    pose = np.eye(4)
    pose[:c2w.shape[0], :] = c2w[:3] if c2w.shape[0] == 3 else c2w
    m = pose[:3, :3]
    norms = np.linalg.norm(m, axis=0)
    if np.ptp(norms) > 1e-3 * norms.max():
        raise MaskFieldError(f"{where}: transform_matrix carries a non-uniform scale (axes scaled "
                             f"{', '.join(f'{v:.4g}' for v in norms)}) in {file.name}; a camera pose is a rotation and a "
                             "position. Apply the scale of the camera object (or its parents) and export again.")
    r = m / norms
    if np.abs(r.T @ r - np.eye(3)).max() > 1e-3:
        raise MaskFieldError(f"{where}: transform_matrix is sheared (its axes are not at right angles) in "
                             f"{file.name}; export the camera without shear.")
    if np.linalg.det(r) < 0:
        raise MaskFieldError(f"{where}: transform_matrix is mirrored (negative scale) in {file.name}; "
                             "export the camera without a negative scale.")
    scale = float(norms.mean())
    if abs(scale - 1.0) <= 1e-4:
        return pose, None
    pose[:3, :3] = r
    return pose, scale


def _orientation_contradiction(where: str, file: Path, width: int, height: int) -> None:
    """The camera file describes the photo turned by 90 degrees: say whether EXIF is the cause."""
    raise MaskFieldError(
        f"{where}: the camera file says {height}x{width} but the photo, shown upright (EXIF orientation applied), is "
        f"{width}x{height}. If the photo carries an EXIF orientation tag, the poses were computed on the stored, "
        "unrotated pixels: remove the tag (e.g. exiftool -Orientation= -n FILE, or re-save the photos upright) and "
        "run the pose estimation again; otherwise fix w/h and the intrinsics in " + file.name + ".", kind="input")


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


def name_apart(cameras: list[Camera], paths: list[Path]) -> str | None:
    """Where image names collide (the same file name in two folders: a camera rig's
    ``cam0/0001.jpg`` and ``cam1/0001.jpg``), name every view by its image's path under the
    images' common folder, folders joined by ``__`` (``cam0__0001``: one scheme for all);
    returns a note for the user, or None.

    A view's name keys its priors (``priors/<name>.npz``) and its label image: two views of one
    name would silently share one view's masks."""
    import os
    from collections import Counter

    counts = Counter(cam.name for cam in cameras)
    clashing = [i for i, cam in enumerate(cameras) if counts[cam.name] > 1]
    if not clashing:
        return None
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    for cam, path in zip(cameras, paths):
        cam.name = "__".join(path.relative_to(common).with_suffix("").parts)
    counts = Counter(cam.name for cam in cameras)
    still = sorted(name for name, n in counts.items() if n > 1)
    if still:
        raise MaskFieldError(f"several images are named {still[0]!r} even with their folders; rename them so that "
                             "each image has a name of its own.")
    first = clashing[0]
    return (f"{len(clashing)} images share a file name with an image in another folder (e.g. "
            f"{paths[first].relative_to(common).as_posix()}); every view is named by its folder too (e.g. "
            f"{cameras[first].name!r}) in priors/ and in the run.")


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
    # float64 until the scene is recentred (a geo-referenced cloud keeps its digits)
    pts = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)
    names = vertex.data.dtype.names
    if all(c in names for c in ("red", "green", "blue")):
        cols = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.uint8)
    else:
        cols = np.full((len(pts), 3), 128, dtype=np.uint8)
    return pts, cols


# --- COLMAP ------------------------------------------------------------------------------

def _load_colmap(sparse: Path, root: Path, skip_missing: bool, holdout_every: int, background,
                 check_readable: bool = False) -> Scene:
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
    other_case: list[str] = []  # found only in other letter case (a data set made on macOS or Windows)
    for image_id in sorted(rec.images):
        image = rec.images[image_id]
        if not image.has_pose:
            continue
        path = image_dir / image.name
        if not path.exists():
            path = find_ignoring_case(image_dir, image.name) or path
            if path.exists():
                other_case.append(image.name)
        if not path.exists():
            missing.append(image.name)
            continue
        if skip_missing and (why := unreadable(path, decode=check_readable)):
            missing.append(f"{image.name} (unreadable: {why})")
            continue
        cam = rec.cameras[image.camera_id]
        pose = image.cam_from_world()
        c2w = world_to_camera_to_c2w(np.asarray(pose.rotation.matrix()), np.asarray(pose.translation))
        _check_pose(c2w, f"COLMAP image {image.name}", sparse / "images")
        fx, fy, cx, cy, dist, lens = _colmap_intrinsics(cam, image.name)
        width, height = image_size(path)
        if (width, height) == (cam.height, cam.width) and width != height:
            _orientation_contradiction(f"COLMAP image {image.name}", sparse / "cameras.bin", width, height)
        if (width, height) != (cam.width, cam.height):
            if abs(width / height - cam.width / cam.height) > 0.01 * cam.width / cam.height:
                raise MaskFieldError(f"COLMAP image {image.name} is {width}x{height}, but its camera is "
                                     f"{cam.width}x{cam.height}, another aspect ratio; use the images COLMAP saw.")
            sx, sy = width / cam.width, height / cam.height
            fx, fy, cx, cy = fx * sx, fy * sy, cx * sx, cy * sy
        cameras.append(Camera(Path(image.name).stem, width, height, fx, fy, cx, cy, c2w, dist, lens))
        paths.append(path)
    if missing and not skip_missing:
        raise MaskFieldError(
            f"{len(missing)} image(s) of the COLMAP model are missing from {image_dir}: {', '.join(missing[:10])}. "
            "Restore them, or pass --skip-missing.", kind="missing_images")
    if not cameras:
        raise MaskFieldError(f"the COLMAP model in {sparse} has no posed images with files in {image_dir}.")
    points = colors = None
    if rec.num_points3D() > 0:
        pts = [(rec.points3D[pid].xyz, rec.points3D[pid].color) for pid in sorted(rec.points3D)]
        points = np.array([p[0] for p in pts], dtype=np.float64)
        colors = np.array([p[1] for p in pts], dtype=np.uint8)
    train, test = _holdout(len(cameras), holdout_every)
    renamed = name_apart(cameras, paths)
    scene = Scene(root=root, cameras=cameras, image_paths=paths, points=points, point_colors=colors,
                  train_indices=train, test_indices=test, source="colmap", background=background,
                  skipped=missing)
    if renamed:
        scene.notes.append(renamed)
    if other_case:
        scene.notes.append(f"{len(other_case)} image name(s) of the COLMAP model exist only in other letter case in "
                           f"{image_dir} (e.g. {other_case[0]!r}: made on macOS or Windows, which ignore case); "
                           "those files were used.")
    return scene


def _colmap_intrinsics(cam, image_name: str):
    """(fx, fy, cx, cy, distortion, lens) of a COLMAP camera; distortion in OpenCV's order
    (``Camera``'s note). COLMAP's parameter lists: colmap/src/colmap/sensor/models.h."""
    model = cam.model.name if hasattr(cam.model, "name") else str(cam.model)
    p = [float(v) for v in cam.params]
    zero = np.zeros(4)
    if model == "SIMPLE_PINHOLE":
        return p[0], p[0], p[1], p[2], zero, "pinhole"
    if model == "PINHOLE":
        return p[0], p[1], p[2], p[3], zero, "pinhole"
    if model == "SIMPLE_RADIAL":
        return p[0], p[0], p[1], p[2], np.array([p[3], 0, 0, 0]), "pinhole"
    if model == "RADIAL":
        return p[0], p[0], p[1], p[2], np.array([p[3], p[4], 0, 0]), "pinhole"
    if model in ("OPENCV", "FULL_OPENCV"):  # k1 k2 p1 p2, and k3 k4 k5 k6 for the full one
        return p[0], p[1], p[2], p[3], np.array(p[4:]), "pinhole"
    if model == "SIMPLE_RADIAL_FISHEYE":
        return p[0], p[0], p[1], p[2], np.array([p[3], 0, 0, 0]), "fisheye"
    if model == "RADIAL_FISHEYE":
        return p[0], p[0], p[1], p[2], np.array([p[3], p[4], 0, 0]), "fisheye"
    if model == "OPENCV_FISHEYE":
        return p[0], p[1], p[2], p[3], np.array(p[4:8]), "fisheye"
    raise MaskFieldError(
        f"COLMAP camera model {model} (image {image_name}) is not supported; run COLMAP's image_undistorter "
        "and use its PINHOLE model, or use SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV or the fisheye models "
        "SIMPLE_RADIAL_FISHEYE, RADIAL_FISHEYE, OPENCV_FISHEYE.")


# --- LLFF --------------------------------------------------------------------------------

def _load_llff(root: Path, images: str | None, holdout_every: int, background) -> Scene:
    """``poses_bounds.npy`` (N x 17: a 3x5 block per image — camera-to-world with rotation
    columns (down, right, back), then (H, W, focal) of the full-size photos — and near/far
    depths) beside ``images/`` and its downscaled copies ``images_<factor>/``. Images pair
    with poses in sorted file-name order, as LLFF's own tools write them."""
    file = root / "poses_bounds.npy"
    try:
        data = np.load(file, allow_pickle=False)
    except Exception as exc:  # numpy raises several kinds for a damaged file
        raise MaskFieldError(f"cannot read {file}: {exc}. Re-run LLFF's imgs2poses.py on the photos.") from None
    if data.ndim != 2 or data.shape[1] != 17 or len(data) == 0:
        raise MaskFieldError(f"{file} must be an N x 17 array (LLFF poses and bounds), got shape {data.shape}.")
    if not np.all(np.isfinite(data)):
        raise MaskFieldError(f"{file} holds NaN or infinite values; re-run LLFF's imgs2poses.py.")
    folder = _llff_image_folder(root, images)
    paths = sorted_images(folder)
    if len(paths) != len(data):
        raise MaskFieldError(
            f"{folder} has {len(paths)} images but {file.name} has {len(data)} poses; LLFF pairs them in sorted "
            "file-name order, so the folder must hold exactly the posed images (remove extra files, or re-run "
            "imgs2poses.py).")
    poses = data[:, :15].reshape(-1, 3, 5)
    cameras: list[Camera] = []
    for index, (pose, path) in enumerate(zip(poses, paths)):
        height_full, width_full, focal = (float(v) for v in pose[:, 4])
        if min(height_full, width_full, focal) <= 0:
            raise MaskFieldError(f"{file.name}, pose {index}: height, width and focal must be positive, got "
                                 f"{height_full:g}, {width_full:g}, {focal:g}.")
        c2w = llff_to_opencv(pose[:, :4])
        _check_pose(c2w, f"{file.name}, pose {index} ({path.name})", file)
        width, height = image_size(path)
        sx, sy = width / width_full, height / height_full
        if abs(sx - sy) > 0.02 * max(sx, sy):
            raise MaskFieldError(f"{path} is {width}x{height}, which is not the {width_full:g}x{height_full:g} of "
                                 f"{file.name} scaled evenly; use the images the poses were made for.")
        cameras.append(Camera(path.stem, width, height, focal * sx, focal * sy, width / 2.0, height / 2.0, c2w))
    train, test = _holdout(len(cameras), holdout_every)
    return Scene(root=root, cameras=cameras, image_paths=paths, train_indices=train, test_indices=test,
                 source="llff", background=background, depth_bounds=data[:, 15:17].astype(np.float64))


def sorted_images(folder: Path) -> list[Path]:
    """The image files of a folder in file-name order: how LLFF (and 3D-OVS's view numbers) pair them."""
    return sorted(p for p in folder.iterdir() if p.suffix in IMAGE_SUFFIXES and not p.name.startswith("."))


def _llff_image_folder(root: Path, images: str | None) -> Path:
    if images is not None:
        folder = root / images
        if not folder.is_dir():
            raise MaskFieldError(f"image folder {folder} does not exist; LLFF scenes keep their photos in images/ "
                                 "and downscaled copies in images_<factor>/.")
        return folder
    candidates = [root / "images"] + sorted((p for p in root.glob("images_*") if p.is_dir()),
                                            key=lambda p: _factor(p.name))
    for folder in candidates:
        if folder.is_dir():
            return folder
    raise MaskFieldError(f"{root} has poses_bounds.npy but no images/ (or images_<factor>/) folder beside it.")


def _factor(name: str) -> float:
    try:
        return float(name.split("_", 1)[1])
    except ValueError:
        return math.inf
