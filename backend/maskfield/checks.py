# SPDX-License-Identifier: GPL-3.0-or-later
"""Checks at the border of each stage, so that a degenerate input stops where it starts and
the message blames the right thing: cameras before a fit, the Gaussians during it (and when a
file of them is handed in), the priors against the cameras before the mask field trains."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .events import MaskFieldError

MIN_IMAGE_SIDE = 8  # pixels: the smallest image a fit or the mask field can learn from


def check_cameras(scene, indices) -> None:
    """Refuse cameras a 3D fit cannot use: one view, all at one position, no scene extent."""
    indices = list(indices)
    if len(indices) < 2:
        raise MaskFieldError(f"the fit has {len(indices)} training view(s); a 3D fit needs at least 2 views from "
                             "different positions (lower --holdout-every, or add photos).", kind="cameras")
    centers = np.stack([scene.cameras[i].center for i in indices])
    spread = float(np.linalg.norm(centers - centers.mean(0), axis=1).max())
    scale = max(1.0, float(np.abs(centers).max()))
    _, radius = scene.bounds()
    if spread <= 1e-6 * scale or (np.isfinite(radius) and radius > 0 and spread < 1e-4 * radius):
        where = ", ".join(f"{v:.3g}" for v in centers.mean(0))
        raise MaskFieldError(
            f"all {len(indices)} training cameras are at one position ({where}): with no baseline between the "
            "views there is no depth to fit. Check the poses (e.g. a transforms.json whose translations were "
            "lost), or capture from several places.", kind="cameras")
    if not np.isfinite(radius) or radius <= 0:
        raise MaskFieldError(f"the scene has no extent (radius {radius:g} from the cameras and seed points); "
                             "check the camera poses and the seed point cloud.", kind="cameras")


# A camera that has under this share of the seed points in its image does not look at them;
# a convention mistake is named when the other reading shows at least FACING_SHARE of them
SEEN_SHARE = 0.02
FACING_SHARE = 0.2


def _shares_seen(points: np.ndarray, cameras, pose) -> np.ndarray:
    """Per camera, the share of ``points`` in front of it and inside its image, each camera
    posed at ``pose(camtoworld)``."""
    from dataclasses import replace

    return np.asarray([float(replace(cam, camtoworld=pose(cam.camtoworld)).frames(points).mean()) for cam in cameras])


def _opencv_axes_error(evidence: str, inside_hint: bool = False) -> MaskFieldError:
    # from the poses alone, cameras in the middle of a room looking outward are an orbit in
    # OpenCV's axes read as OpenGL's; seed points tell the two apart
    hint = (" If the cameras do look outward (a room filmed from its middle), give the capture seed points (a "
            "ply_file_path in transforms.json, or a COLMAP model), which the poses are then checked against."
            if inside_hint else "")
    return MaskFieldError(
        f"{evidence}. transform_matrix must be camera-to-world in OpenGL's axes (x right, y up, the camera "
        "looking down -z), as Blender, nerfstudio and Instant-NGP write it; for OpenCV's (y down, z forward) "
        f"multiply each matrix's rotation columns y and z by -1.{hint}", kind="cameras")


def check_cameras_face_points(scene, indices, sample: int = 4000, points=None,
                              what: str = "the seed points") -> str | None:
    """Refuse poses that face away from the scene's seed points (or ``points``: the Gaussians
    of a given .ply, ``what`` naming them) where a known slip explains it (transforms.json
    written in OpenCV's camera axes, or with world-to-camera matrices): the fit would otherwise
    run for minutes on cameras that see nothing. Returns a warning where the cameras see little
    of the points for no known reason; None where they see them."""
    from .scene.cameras import GL_TO_CV

    if points is None:
        points = scene.points
    if points is None or len(points) < 10:
        _check_axes_meet_in_front(scene, indices)
        return None
    points = np.asarray(points, dtype=np.float64)
    if len(points) > sample:
        points = points[np.random.default_rng(0).choice(len(points), sample, replace=False)]
    cameras = [scene.cameras[i] for i in indices]

    def median_seen(pose) -> float:
        return float(np.median(_shares_seen(points, cameras, pose)))

    seen = median_seen(lambda m: m)
    if seen >= SEEN_SHARE:
        return None
    if scene.source in ("transforms", "nerf-synthetic"):
        as_opencv = median_seen(lambda m: m @ GL_TO_CV)
        if as_opencv >= FACING_SHARE:
            raise _opencv_axes_error(f"the cameras face away from {what} (a median {seen:.0%} of them in "
                                     f"view; {as_opencv:.0%} if the matrices were in OpenCV's camera axes)")
        if scene.origin is None:
            # a view matrix in OpenGL's axes, or in OpenCV's
            inverted = max(median_seen(lambda m: np.linalg.inv(m @ GL_TO_CV) @ GL_TO_CV),
                           median_seen(lambda m: np.linalg.inv(m @ GL_TO_CV)))
            if inverted >= FACING_SHARE:
                raise MaskFieldError(
                    f"the cameras face away from {what} (a median {seen:.0%} of them in view; "
                    f"{inverted:.0%} if each matrix were inverted): the transform_matrix entries look like "
                    "world-to-camera (view) matrices, where transforms.json takes camera-to-world. Invert "
                    "each one.", kind="cameras")
    return (f"the cameras see little of {what} (a median {seen:.1%} of them in view of a camera): the poses "
            "and the points may be in different coordinates (another scale, or another tool's frame). The run "
            "goes on; if it comes out empty, check where the points were made.")


def _check_axes_meet_in_front(scene, indices) -> None:
    """Without seed points: where the cameras surround one place (an orbit, a turntable), the
    point nearest to their optical axes must lie in front of them. Behind nearly all of them,
    and in front once the axes are read as OpenCV's, the file is in the wrong axes."""
    from .scene.cameras import GL_TO_CV
    from .scene.scene import _closest_point_to_rays

    if scene.source not in ("transforms", "nerf-synthetic") or len(indices) < 4 or scene.rendered_inside:
        return
    cameras = [scene.cameras[i] for i in indices]
    centers = np.stack([cam.center for cam in cameras])
    axes = np.stack([cam.camtoworld[:3, 2] for cam in cameras])
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    focus = _closest_point_to_rays(centers, axes)
    towards = focus - centers
    distance = np.linalg.norm(towards, axis=1)
    if not np.isfinite(focus).all() or np.median(distance) <= 0:
        return
    # the axes cross near one place, seen from several sides (not a forward-facing pan, whose
    # nearly parallel axes may also meet behind it)
    off_axis = np.linalg.norm(np.cross(axes, towards), axis=1)
    sides = np.linalg.norm((towards / np.maximum(distance, 1e-12)[:, None]).mean(axis=0))
    if np.median(off_axis) > 0.2 * np.median(distance) or sides > 0.9:
        return
    in_front = float(_shares_seen(focus[None], cameras, lambda m: m).mean())
    as_opencv = float(_shares_seen(focus[None], cameras, lambda m: m @ GL_TO_CV).mean())
    if in_front <= 0.1 and as_opencv >= 0.8:
        raise _opencv_axes_error(f"the cameras surround a place behind them: their optical axes meet behind "
                                 f"{1 - in_front:.0%} of them, in front of {as_opencv:.0%} if the matrices were in "
                                 "OpenCV's camera axes", inside_hint=True)


def check_image_size(scene, downscale: float, max_side: int = 0) -> None:
    """--downscale must leave images a fit can learn from (the smallest, where a capture mixes
    cameras); with ``max_side`` each view has its own downscale (``view_downscale``)."""
    from .scene.cameras import view_downscale

    def short_side(k: int) -> int:
        cam = scene.camera(k, view_downscale(scene.cameras[k], downscale, max_side))
        return min(cam.width, cam.height)

    i = min(range(len(scene.cameras)), key=short_side)
    cam = scene.cameras[i]
    scaled = scene.camera(i, view_downscale(cam, downscale, max_side))
    w, h = scaled.width, scaled.height
    if min(w, h) < MIN_IMAGE_SIDE:
        largest = min(cam.width, cam.height) / MIN_IMAGE_SIDE
        raise MaskFieldError(f"--downscale {downscale:g} makes the {cam.width}x{cam.height} images {w}x{h} pixels; "
                             f"allowed here: more than 0 and at most {largest:.4g} (keeps {MIN_IMAGE_SIDE} px on the "
                             "short side).", kind="input")


def require_gaussians(gaussians, source: str | Path) -> None:
    """A set of Gaussians handed in (a .ply) must hold some, with finite values."""
    if len(gaussians) == 0:
        raise MaskFieldError(f"{source} holds 0 Gaussians; give a trained 3DGS .ply (or fit colour without --ply).",
                             kind="input")
    bad = _non_finite(gaussians)
    if bad:
        raise MaskFieldError(f"{source} has non-finite values ({bad}); it cannot be used. Re-export it, or fit "
                             "colour without --ply.", kind="input")


def check_fit_state(gaussians, step: int, checkpoint: Path, full: bool = True) -> None:
    """Called during the colour fit: stop at the first step that empties or breaks the Gaussians.
    The checkpoint on disk is left as it is: it holds the last good state. Each step checks the
    count and the positions (cheap); ``full`` checks every parameter (before each save)."""
    kept = (f"The last good state is kept in {checkpoint.name} (saved before step {step})" if checkpoint.exists()
            else "No checkpoint had been saved yet")
    if len(gaussians) == 0:
        raise MaskFieldError(f"every Gaussian was pruned away at step {step}: the images give the fit nothing to "
                             f"hold on to (blank or all background?). {kept}. Check the photos and the "
                             "background, or seed from a point cloud.", kind="diverged")
    bad = _non_finite(gaussians, None if full else ("means",))
    if bad:
        raise MaskFieldError(f"the colour fit broke at step {step}: {bad}. {kept}; nothing else was written. "
                             "Check the camera poses and scale, or try a larger --downscale.", kind="diverged")


def _non_finite(gaussians, names=None) -> str:
    import torch

    params = gaussians.params if hasattr(gaussians, "params") else gaussians
    for name, value in params.items():
        if names is not None and name not in names:
            continue
        value = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        finite = torch.isfinite(value)
        if not bool(finite.all()):
            rows = (~finite).reshape(len(value), -1).any(1) if value.ndim else ~finite
            return f"{int(rows.sum()):,} Gaussians have NaN or infinite '{name}'"
    return ""


def check_priors_fit_cameras(priors: dict, scene, folder: Path) -> None:
    """Every priors file must have its image's aspect ratio: masks of another shape would be
    stretched onto the view without a word. Checked for all files before training starts."""
    by_name = {c.name: c for c in scene.cameras}
    wrong = []
    for name, p in priors.items():
        cam = by_name.get(name)
        if cam is None:
            continue
        shapes = [tuple(int(v) for v in np.asarray(p.image_size).reshape(-1)[:2])]
        mask_shape = getattr(p, "mask_shape", None)  # a PriorsFile says it without reading the masks
        if mask_shape is None and getattr(p, "masks", None) is not None and np.ndim(p.masks) == 3:
            mask_shape = p.masks.shape
        if mask_shape is not None and len(mask_shape) == 3 and mask_shape[0]:
            shapes.append(tuple(mask_shape[1:]))
        for h, w in shapes:
            expected_h = w * cam.height / cam.width
            if abs(h - expected_h) > max(1.0, 0.01 * expected_h):
                wrong.append(f"{name}.npz is {w}x{h}, the image {cam.width}x{cam.height}")
                break
    if wrong:
        shown = "; ".join(wrong[:4]) + (f"; and {len(wrong) - 4} more" if len(wrong) > 4 else "")
        raise MaskFieldError(f"priors in {folder} do not have their image's aspect ratio ({shown}), so their masks "
                             "would be stretched. Make the masks for the images as they are (same width:height), "
                             "or delete these files and compute them again.", kind="input")
