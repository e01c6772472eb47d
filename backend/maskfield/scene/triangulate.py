"""Seed points for a capture that has none, from its own photos: SIFT features matched across
the training views and triangulated from the views' known poses (pycolmap: COLMAP's feature
extractor, matcher and point triangulator, as ``colmap point_triangulator`` does for a model
whose poses are given). The poses are not changed.

Random starts leave depth to the fit, and an even surface seen over a narrow range of angles
(a shelf's boards from a walk past it) is then painted by Gaussians far behind it, which any
other view sees as blots (docs/measurements.md, 28 November, last). Even surfaces give no
features of their own, so more points are placed on the triangles the found ones make in each
view (``fill_between_points``).
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
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


@dataclass
class SeedPoints:
    """What ``triangulate`` finds: ``points`` (N x 3 float32, world units) and their ``colours``
    (N x 3 uint8); ``fill_points`` / ``fill_colours`` (F x 3) placed between them (empty unless
    asked for)."""
    points: np.ndarray
    colours: np.ndarray
    fill_points: np.ndarray
    fill_colours: np.ndarray


def triangulate(scene, views, reporter: Reporter | None = None, max_side: int = MAX_SIDE,
                seed: int = 0, fill: int = 0) -> SeedPoints:
    """Points seen in two or more of ``views`` (indices into ``scene``), and ``fill`` more on
    the surfaces between them (``fill_between_points``). Lens distortion is taken out first, as
    the fit sees the photos. Raises ``Cancelled`` if the reporter is cancelled meanwhile, and
    ``RuntimeError`` if pycolmap stops.

    pycolmap runs in a child process: where it fails inside (SQLite on a full disk) it aborts
    the whole process, which must not take the fit, its checkpoint and its message with it."""
    from .cameras import view_downscale

    reporter = reporter or Reporter("none")
    views = list(views)
    with tempfile.TemporaryDirectory(prefix="maskfield_sift_") as tmp, \
            reporter.progress("triangulate", len(views) + len(STEPS), "triangulating seed points") as bar:
        work = Path(tmp)
        (work / "images").mkdir()
        posed, cameras = [], []
        for i in views:
            reporter.check_cancel()
            scale = view_downscale(scene.cameras[i], 1.0, max_side)
            image = scene.load_image(i, scale)
            scene.forget_image(i, scale)  # the fit loads its own size; this one is not needed again
            name = f"{len(posed):05d}.png"
            _write_png(work / "images" / name, image)
            cam = scene.camera(i, scale)
            cameras.append(cam)
            posed.append({"name": name, "width": cam.width, "height": cam.height,
                          "pinhole": [cam.fx, cam.fy, cam.cx, cam.cy], "center": cam.center.tolist(),
                          # world to camera in OpenCV axes, as COLMAP's
                          "world_to_camera": np.linalg.inv(cam.camtoworld)[:3].tolist()})
            bar.update(1)
        (work / "views.json").write_text(json.dumps({"views": posed, "seed": seed}))
        _run_child(work, reporter, bar)
        found = np.load(work / "points.npz")
        points, colours = found["xyz"].astype(np.float32), found["rgb"].astype(np.uint8)
        photos = [work / "images" / view["name"] for view in posed]
        fill_points, fill_colours = fill_between_points(cameras, photos, points, found["seen_point"],
                                                        found["seen_view"], fill, np.random.default_rng(seed))
        return SeedPoints(points, colours, fill_points, fill_colours)


def fill_between_points(cameras: list, images: list[Path], points: np.ndarray, seen_point: np.ndarray,
                        seen_view: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points (float32) and colours (uint8) on the surfaces between triangulated points.

    Even surfaces (a painted wall, a counter, a shelf's boards) give SIFT nothing, so they have
    no points of their own, only at their corners and edges. In each view the points it saw are
    joined into triangles (Delaunay, in the image), and random pixels inside them are placed at
    the depth their triangle gives (inverse depth interpolated: exact on a plane), with the
    pixel's colour. A triangle that joins a near surface to a far one puts its pixels in the air
    between them; such a point is kept only where one of the nearest other views' triangles
    puts a surface at its depth too (within DEPTH_AGREEMENT), as depth maps are fused in
    multi-view stereo. A start uniform in the points' box instead puts most of its points in the
    air or behind surfaces, and from a walk past a shelf the fit keeps some there: the boards'
    edges, seen along the walk, give no parallax to push them back (docs/measurements.md).
    What the views cannot give is made up uniformly in the box of the points' 2nd to 98th
    percentiles, with random colours.

    ``cameras``: the views' pinhole ``scene.cameras.Camera``s at the photos' size; ``images``: the
    views' photos as seen (undistorted); ``seen_point``/``seen_view``: which point each view
    saw, as pairs of indices."""
    empty = np.zeros((0, 3), np.float32), np.zeros((0, 3), np.uint8)
    if count <= 0 or len(points) == 0:
        return empty
    meshes = [_ViewMesh.of(camera, points[seen_point[seen_view == k]]) for k, camera in enumerate(cameras)]
    centers = np.array([camera.center for camera in cameras], dtype=np.float64).reshape(-1, 3)
    per_view = -(-count // max(1, len(cameras)))
    out_points, out_colours = [empty[0]], [empty[1]]
    for k, (mesh, image) in enumerate(zip(meshes, images)):
        if mesh is None:
            continue
        # oversampled: pixels outside every triangle, and points no other view agrees with, go
        pixels = rng.uniform((0.0, 0.0), (mesh.camera.width, mesh.camera.height), size=(8 * per_view, 2))
        depth = mesh.depth_at(pixels)
        pixels, depth = pixels[np.isfinite(depth)], depth[np.isfinite(depth)]
        world = mesh.camera.unproject(pixels, depth)
        agreed = np.zeros(len(world), dtype=bool)
        others = [j for j in np.argsort(np.linalg.norm(centers - centers[k], axis=1)) if j != k and meshes[j]]
        for j in others[:CHECK_VIEWS]:
            seen_at, distance = meshes[j].camera.project(world)
            there = meshes[j].depth_at(seen_at)
            # nan (no triangle there) and points behind the camera (negative depth) never agree
            agreed |= np.abs(distance - there) <= DEPTH_AGREEMENT * there
        pixels, world = pixels[agreed][:per_view], world[agreed][:per_view]
        if len(world) == 0:
            continue
        photo = _read_rgb(image)
        row = np.clip(pixels[:, 1].astype(int), 0, photo.shape[0] - 1)
        col = np.clip(pixels[:, 0].astype(int), 0, photo.shape[1] - 1)
        out_points.append(world.astype(np.float32))
        out_colours.append(photo[row, col])
    placed, placed_colours = np.concatenate(out_points), np.concatenate(out_colours)
    if len(placed) > count:
        keep = rng.choice(len(placed), count, replace=False)
        placed, placed_colours = placed[keep], placed_colours[keep]
    boxed, boxed_colours = fill_in_box(points, count - len(placed), rng)
    return np.concatenate([placed, boxed]), np.concatenate([placed_colours, boxed_colours])


def fill_in_box(points: np.ndarray, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points (float32) uniform in the box of ``points``' 2nd to 98th percentiles (a
    few stray points must not stretch it), with random colours (uint8)."""
    lo, hi = np.percentile(points, [2, 98], axis=0)
    return (rng.uniform(lo, hi, size=(count, 3)).astype(np.float32),
            rng.integers(0, 256, size=(count, 3), dtype=np.uint8))


# a point placed from one view's triangles is kept where one of the CHECK_VIEWS nearest other
# views' triangles give its depth there within this share
CHECK_VIEWS = 6
DEPTH_AGREEMENT = 0.015


@dataclass
class _ViewMesh:
    """One view's triangles between the points it saw, in its image, with the points' depths."""
    camera: object  # scene.cameras.Camera, a pinhole
    triangles: object  # scipy.spatial.Delaunay
    inverse_depth: np.ndarray  # per vertex

    @classmethod
    def of(cls, camera, points: np.ndarray) -> "_ViewMesh | None":
        """None where the view saw fewer than three points in front of it, or all in a line."""
        from scipy.spatial import Delaunay, QhullError

        pixels, depth = camera.project(points.astype(np.float64))
        ahead = depth > 1e-6
        if ahead.sum() < 3:
            return None
        try:
            triangles = Delaunay(pixels[ahead])
        except QhullError:
            return None
        return cls(camera, triangles, 1.0 / depth[ahead])

    def depth_at(self, pixels: np.ndarray) -> np.ndarray:
        """The triangles' depth at each pixel (nan outside every triangle)."""
        simplex = self.triangles.find_simplex(pixels)
        inside = simplex >= 0
        affine = self.triangles.transform[simplex[inside]]
        first = np.einsum("nij,nj->ni", affine[:, :2], pixels[inside] - affine[:, 2])
        weights = np.concatenate([first, 1.0 - first.sum(1, keepdims=True)], 1)
        depth = np.full(len(pixels), np.nan)
        depth[inside] = 1.0 / (weights * self.inverse_depth[self.triangles.simplices[simplex[inside]]]).sum(1)
        return depth


# what the child reports on stdout, one line each, as it finishes them
STEPS = ("features", "matches", "points")


def _run_child(work: Path, reporter: Reporter, bar, command: list[str] | None = None) -> None:
    """Run ``command`` (the pycolmap child by default) on ``work``: a step of ``bar`` per line it
    reports, killed on a cancel; a RuntimeError naming its exit code and last words if it fails."""
    command = command or [sys.executable, "-m", "maskfield.scene.triangulate", str(work)]
    env = dict(os.environ)
    backend = str(Path(__file__).resolve().parents[2])  # so that the child imports this maskfield
    env["PYTHONPATH"] = os.pathsep.join(p for p in (backend, env.get("PYTHONPATH")) if p)
    err_path = work / "stderr.txt"
    with open(err_path, "w") as err:
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        lines: queue.Queue = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in child.stdout], daemon=True)
        reader.start()
        # until the child's stdout is read to its end (it exits first; its last line may still be on the way)
        while reader.is_alive() or not lines.empty():
            try:
                if lines.get(timeout=0.2).strip() in STEPS:
                    bar.update(1)
            except queue.Empty:
                pass
            if reporter.cancelled:
                child.kill()
                child.wait()
                raise Cancelled()
    child.wait()
    if child.returncode != 0 or not (work / "points.npz").exists():
        tail = err_path.read_text(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"pycolmap stopped (exit code {child.returncode}): " + " / ".join(tail)[-400:])


def _colmap_points(work: Path) -> None:
    """The child's work: features, matches and points for the views in ``work/views.json``,
    written to ``work/points.npz``; prints each of STEPS when done."""
    import pycolmap

    pycolmap.logging.minloglevel = 1  # COLMAP logs every file and image it handles at INFO
    setup = json.loads((work / "views.json").read_text())
    views = setup["views"]
    names = [v["name"] for v in views]
    database = work / "features.db"
    extraction = pycolmap.FeatureExtractionOptions()
    extraction.num_threads = _threads()
    extraction.sift.max_num_features = MAX_FEATURES
    pycolmap.extract_features(database, work / "images", image_names=names, camera_mode=pycolmap.CameraMode.PER_IMAGE,
                              extraction_options=extraction, device=pycolmap.Device.cpu)
    print("features", flush=True)
    matching = pycolmap.FeatureMatchingOptions()
    matching.num_threads = _threads()
    # the pairs' geometric verification is RANSAC, seeded from the clock by default: the same
    # photos then gave 670, 671 or 673 points
    verification = pycolmap.TwoViewGeometryOptions()
    ransac = verification.ransac
    ransac.random_seed = int(setup["seed"])
    verification.ransac = ransac
    if len(names) <= EXHAUSTIVE_UP_TO:
        pycolmap.match_exhaustive(database, matching_options=matching, verification_options=verification,
                                  device=pycolmap.Device.cpu)
    else:
        pairs = work / "pairs.txt"
        centers = [np.asarray(v["center"]) for v in views]
        pairs.write_text("".join(f"{names[a]} {names[b]}\n" for a, b in nearest_pairs(centers, NEAREST_VIEWS)))
        pycolmap.match_image_pairs(database, matching_options=matching,
                                   pairing_options=pycolmap.ImportedPairingOptions(match_list_path=str(pairs)),
                                   verification_options=verification, device=pycolmap.Device.cpu)
    print("matches", flush=True)
    model = _posed_model(pycolmap, database, views)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = _threads()
    options.random_seed = int(setup["seed"])
    (work / "model").mkdir()
    model = pycolmap.triangulate_points(model, database, work / "images", work / "model", options=options)
    points = [p for p in model.points3D.values() if np.isfinite(p.xyz).all()]
    xyz = np.array([p.xyz for p in points], dtype=np.float32).reshape(-1, 3)
    rgb = np.array([p.color for p in points], dtype=np.uint8).reshape(-1, 3)
    # which view saw which point (a view's position in views.json is its image's name)
    view_of_image = {image_id: int(image.name.split(".")[0]) for image_id, image in model.images.items()}
    seen = [(k, view_of_image[el.image_id]) for k, p in enumerate(points) for el in p.track.elements]
    seen = np.array(sorted(set(seen)), dtype=np.int64).reshape(-1, 2)
    np.savez(work / "points.tmp.npz", xyz=xyz, rgb=rgb, seen_point=seen[:, 0], seen_view=seen[:, 1])
    os.replace(work / "points.tmp.npz", work / "points.npz")
    print("points", flush=True)


def nearest_pairs(centers, count: int) -> list[tuple[int, int]]:
    """Each view with its ``count`` nearest by camera centre, each pair once (a < b)."""
    centers = np.stack([np.asarray(c, dtype=np.float64) for c in centers])
    dist = np.linalg.norm(centers[:, None] - centers[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    pairs = set()
    for a, row in enumerate(dist):
        for b in np.argsort(row)[:count]:
            pairs.add((min(a, int(b)), max(a, int(b))))
    return sorted(pairs)


def _posed_model(pycolmap, database: Path, views: list[dict]) -> "pycolmap.Reconstruction":
    """A model holding the views with their poses and undistorted pinhole lenses, under the
    database's own image and camera ids (the triangulator reads the matches by those)."""
    db = pycolmap.Database.open(str(database))
    try:
        by_name = {image.name: image for image in db.read_all_images()}
        model = pycolmap.Reconstruction()
        for view in views:
            stored = by_name[view["name"]]
            lens = pycolmap.Camera(model="PINHOLE", width=view["width"], height=view["height"],
                                   params=view["pinhole"], camera_id=stored.camera_id)
            db.update_camera(lens)
            model.add_camera_with_trivial_rig(lens)
            pose = np.asarray(view["world_to_camera"], dtype=np.float64)
            image = pycolmap.Image(name=view["name"], camera_id=stored.camera_id, image_id=stored.image_id)
            model.add_image_with_trivial_frame(image, pycolmap.Rigid3d(pycolmap.Rotation3d(pose[:3, :3]), pose[:3, 3]))
    finally:
        db.close()
    return model


def _threads() -> int:
    return max(1, min(os.cpu_count() or 1, 16))


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as photo:
        return np.asarray(photo.convert("RGB"), dtype=np.uint8)


def _write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)).save(path)


if __name__ == "__main__":  # the child process of triangulate()
    _colmap_points(Path(sys.argv[1]))
