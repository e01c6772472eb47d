"""Seed points for a capture that has none, from its own photos: SIFT features matched across
the training views and triangulated from the views' known poses (pycolmap: COLMAP's feature
extractor, matcher and point triangulator, as ``colmap point_triangulator`` does for a model
whose poses are given). The poses are not changed.

Random starts leave depth to the fit, and an even surface seen over a narrow range of angles
(a shelf's boards from a walk past it) is then painted by Gaussians far behind it, which any
other view sees as blots (docs/measurements.md, 28 November, last).
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import numpy as np

from ..events import Cancelled, Reporter

# the long side the features are found at (each photo resized by a whole number, as the fit's
# are) and how many a view keeps: the fox's 43 views take 42 s at 640 px and 2,048 features
# (7,176 points) against 74 s at 960 px (8,586) on 2 cores
MAX_SIDE = 640
MAX_FEATURES = 2048
# every pair of views is matched up to this many views; above, each view with its
# NEAREST_VIEWS nearest by camera centre (the fox's 903 pairs took 18 s of those 42)
EXHAUSTIVE_UP_TO = 40
NEAREST_VIEWS = 16


def triangulate(scene, views, reporter: Reporter | None = None, max_side: int = MAX_SIDE,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points (N x 3 float32, world units) and their colours (N x 3 uint8) seen in three or
    more of ``views`` (indices into ``scene``). Lens distortion is taken out first, as the fit
    sees the photos. Raises ``Cancelled`` if the reporter is cancelled meanwhile."""
    import pycolmap

    from .cameras import view_downscale

    reporter = reporter or Reporter("none")
    views = list(views)
    with tempfile.TemporaryDirectory(prefix="maskfield_sift_") as tmp, _quiet_colmap(pycolmap), \
            reporter.progress("triangulate", len(views) + 3, "triangulating seed points") as bar:
        work = Path(tmp)
        (work / "images").mkdir()
        names, cameras = [], []
        for i in views:
            reporter.check_cancel()
            scale = view_downscale(scene.cameras[i], 1.0, max_side)
            image = scene.load_image(i, scale)
            scene.forget_image(i, scale)  # the fit loads its own size; this one is not needed again
            name = f"{len(names):05d}.png"
            _write_png(work / "images" / name, image)
            names.append(name)
            cameras.append(scene.camera(i, scale))
            bar.update(1)
        database = work / "features.db"
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.num_threads = _threads()
        extraction.sift.max_num_features = MAX_FEATURES
        _cancellable(reporter, pycolmap.extract_features, database, work / "images", image_names=names,
                     camera_mode=pycolmap.CameraMode.PER_IMAGE, extraction_options=extraction,
                     device=pycolmap.Device.cpu)
        bar.update(1)
        matching = pycolmap.FeatureMatchingOptions()
        matching.num_threads = _threads()
        if len(names) <= EXHAUSTIVE_UP_TO:
            _cancellable(reporter, pycolmap.match_exhaustive, database, matching_options=matching,
                         device=pycolmap.Device.cpu)
        else:
            pairs = work / "pairs.txt"
            pairs.write_text("".join(f"{names[a]} {names[b]}\n" for a, b in nearest_pairs(cameras, NEAREST_VIEWS)))
            _cancellable(reporter, pycolmap.match_image_pairs, database, matching_options=matching,
                         pairing_options=pycolmap.ImportedPairingOptions(match_list_path=str(pairs)),
                         device=pycolmap.Device.cpu)
        bar.update(1)
        model = _posed_model(pycolmap, database, names, cameras)
        options = pycolmap.IncrementalPipelineOptions()
        options.num_threads = _threads()
        options.random_seed = seed  # the same photos give the same points
        (work / "model").mkdir()
        model = _cancellable(reporter, pycolmap.triangulate_points, model, database, work / "images",
                             work / "model", options=options)
        points = [p for p in model.points3D.values() if np.isfinite(p.xyz).all()]
        bar.update(1)
    xyz = np.array([p.xyz for p in points], dtype=np.float32).reshape(-1, 3)
    rgb = np.array([p.color for p in points], dtype=np.uint8).reshape(-1, 3)
    return xyz, rgb


def nearest_pairs(cameras, count: int) -> list[tuple[int, int]]:
    """Each view with its ``count`` nearest by camera centre, each pair once (a < b)."""
    centers = np.stack([cam.center for cam in cameras])
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    pairs = set()
    for a, row in enumerate(dist):
        for b in np.argsort(row)[:count]:
            pairs.add((min(a, int(b)), max(a, int(b))))
    return sorted(pairs)


def _posed_model(pycolmap, database: Path, names: list[str], cameras) -> "pycolmap.Reconstruction":
    """A model holding the views with their poses and undistorted pinhole lenses, under the
    database's own image and camera ids (the triangulator reads the matches by those)."""
    db = pycolmap.Database.open(str(database))
    try:
        by_name = {image.name: image for image in db.read_all_images()}
        model = pycolmap.Reconstruction()
        for name, cam in zip(names, cameras):
            stored = by_name[name]
            lens = pycolmap.Camera(model="PINHOLE", width=cam.width, height=cam.height,
                                   params=[cam.fx, cam.fy, cam.cx, cam.cy], camera_id=stored.camera_id)
            db.update_camera(lens)
            model.add_camera_with_trivial_rig(lens)
            world_to_camera = np.linalg.inv(cam.camtoworld)  # OpenCV axes, as COLMAP's
            image = pycolmap.Image(name=name, camera_id=stored.camera_id, image_id=stored.image_id)
            model.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(world_to_camera[:3, :3]),
                                                                       world_to_camera[:3, 3]))
    finally:
        db.close()
    return model


def _cancellable(reporter: Reporter, call, *args, **kwargs):
    """Run a pycolmap step in a thread, so that a cancel request (the Blender add-on's, a
    Ctrl-C) stops it through pycolmap's own cancellation token."""
    import pycolmap

    token = pycolmap.CancellationToken()
    outcome: dict = {}

    def work():
        try:
            outcome["value"] = call(*args, cancellation_token=token, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.2)
        if reporter.cancelled:
            token.cancel()
            thread.join()
            raise Cancelled()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


class _quiet_colmap:
    """COLMAP logs every file and image it handles at INFO, to stderr: keep warnings and errors."""

    def __init__(self, pycolmap):
        self.logging = pycolmap.logging

    def __enter__(self):
        self.before = self.logging.minloglevel
        self.logging.minloglevel = 1
        return self

    def __exit__(self, *exc):
        self.logging.minloglevel = self.before


def _threads() -> int:
    return max(1, min(os.cpu_count() or 1, 16))


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)).save(path)
