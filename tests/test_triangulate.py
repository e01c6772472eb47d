"""Seed points triangulated from a capture's own photos (scene.triangulate, pycolmap), and the
fit starting from them when the scene has no points."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from conftest import look_at_c2w_gl, write_png

from maskfield.events import Cancelled, MaskFieldError, Reporter
from maskfield.run import RunFolder
from maskfield.scene import load_scene
from maskfield.scene.triangulate import _run_child, nearest_pairs, triangulate
from maskfield.splats.fit import FitSettings, fit
from maskfield.splats.model import SH_C0

TILE_HEIGHT, TILE_HALF = 0.4, 0.5  # a textured square floating over a textured ground


def _texture(x, y, seed):
    """Smooth colour blobs (corners and blobs for SIFT), the same wherever it is seen from."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-1.0, 1.0, size=(500, 2))
    sizes = rng.uniform(0.015, 0.045, size=500)
    colours = rng.uniform(-0.6, 0.6, size=(500, 3))
    out = np.full(x.shape + (3,), 0.5)
    for c, s, col in zip(centres, sizes, colours):
        out += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2) / (2 * s * s))[..., None] * col
    return np.clip(out, 0, 1)


def _colour_at(points):
    """What the scene shows at world points on its ground or its tile."""
    on_tile = np.abs(points[:, 2] - TILE_HEIGHT) < np.abs(points[:, 2])
    out = _texture(points[:, 0], points[:, 1], 1)
    out[on_tile] = _texture(points[on_tile, 0], points[on_tile, 1], 2)
    return out


def _tile_scene(tmp_path, n=10, w=200, h=150, fl=170.0):
    """Photos of a textured ground (z = 0) with a textured tile floating over it (z = 0.4),
    ray-traced here, from a ring looking down at about 40 degrees; no seed points."""
    folder, frames = tmp_path / "tiles", []
    v, u = np.mgrid[0:h, 0:w] + 0.5
    for i in range(n):
        a = 2 * np.pi * i / n
        c2w = look_at_c2w_gl([1.8 * np.cos(a), 1.8 * np.sin(a), 1.6])
        rays = np.stack([(u - w / 2) / fl, -(v - h / 2) / fl, -np.ones_like(u)], -1) @ c2w[:3, :3].T
        eye = c2w[:3, 3]
        t_tile = (TILE_HEIGHT - eye[2]) / rays[..., 2]
        hit = eye + rays * t_tile[..., None]
        on_tile = (np.abs(hit[..., 0]) < TILE_HALF) & (np.abs(hit[..., 1]) < TILE_HALF)
        ground = eye + rays * (-eye[2] / rays[..., 2])[..., None]
        points = np.where(on_tile[..., None], hit, ground).reshape(-1, 3)
        image = _colour_at(points).reshape(h, w, 3)
        write_png(folder / "images" / f"{i:03d}.png", np.round(image * 255).astype(np.uint8))
        frames.append({"file_path": f"images/{i:03d}.png", "transform_matrix": c2w.tolist()})
    meta = {"fl_x": fl, "fl_y": fl, "cx": w / 2, "cy": h / 2, "w": w, "h": h, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(meta))
    return folder


def test_points_triangulated_from_the_photos_lie_on_the_surfaces_they_show(tmp_path):
    scene = load_scene(_tile_scene(tmp_path), holdout_every=0)
    assert scene.points is None
    found = triangulate(scene, scene.train_indices)
    points, colours = found.points, found.colours
    assert points.dtype == np.float32 and colours.dtype == np.uint8 and points.shape == colours.shape
    assert len(points) >= 150
    # every point on one of the two surfaces (the poses' axes and the lens taken rightly), and
    # on the tile only over the tile
    off_ground, off_tile = np.abs(points[:, 2]), np.abs(points[:, 2] - TILE_HEIGHT)
    on_tile = off_tile < 0.03
    assert np.mean((off_ground < 0.03) | on_tile) > 0.97
    assert on_tile.sum() >= 20 and (off_ground < 0.03).sum() >= 100
    assert np.abs(points[on_tile, :2]).max() < TILE_HALF + 0.03
    # each point has the colour the photos show there
    error = np.abs(colours / 255.0 - _colour_at(points.astype(np.float64)))
    assert np.median(error) < 0.04, np.median(error)
    # the same photos and seed give the same points (the pairs' RANSAC is seeded)
    again = triangulate(scene, scene.train_indices)
    assert np.array_equal(again.points, points) and np.array_equal(again.colours, colours)
    assert again.fill_points.shape == (0, 3)


def test_a_seedless_fit_starts_from_the_triangulated_points(tmp_path, capsys):
    scene = load_scene(_tile_scene(tmp_path), holdout_every=5)
    started = {}

    def monitor(step, gaussians, background):
        if step == 1:
            started["means"] = gaussians.params["means"].detach().numpy().copy()

    settings = FitSettings(iterations=2, refine_start=1000, sh_degree=0, checkpoint_every=1000, triangulated_fill=0)
    fit(scene, RunFolder(tmp_path / "run"), settings, resume=False, monitor=monitor)
    assert "points triangulated from the training views' features and 0 more" in capsys.readouterr().err
    means = started["means"]
    assert 100 <= len(means) < 5000  # not the 30,000 random starts
    near_surface = (np.abs(means[:, 2]) < 0.05) | (np.abs(means[:, 2] - TILE_HEIGHT) < 0.05)
    assert near_surface.mean() > 0.95

    # points among them for surfaces without features: by default on the triangles the points
    # make in each view, so on the two surfaces, with the photos' colours there
    colours = {}

    def monitor_colours(step, gaussians, background):
        if step == 1:
            started["means"] = gaussians.params["means"].detach().numpy().copy()
            colours["dc"] = gaussians.params["sh0"].detach().numpy().reshape(len(gaussians), 3).copy()

    settings = FitSettings(iterations=2, refine_start=1000, sh_degree=0, checkpoint_every=1000, triangulated_fill=400)
    fit(scene, RunFolder(tmp_path / "filled"), settings, resume=False, monitor=monitor_colours)
    assert "and 400 more on the surfaces between them" in capsys.readouterr().err
    filled = started["means"]
    assert abs(len(filled) - 400 - len(means)) <= 0.05 * len(means)
    fill = filled[-400:]  # after the triangulated ones
    on_ground, on_tile = np.abs(fill[:, 2]) < 0.03, np.abs(fill[:, 2] - TILE_HEIGHT) < 0.03
    # triangles joining the tile to the ground (at its outline) put a few in between
    assert (on_ground | on_tile).mean() > 0.8, (on_ground | on_tile).mean()
    assert on_tile.sum() >= 20 and on_ground.sum() >= 100
    seen = on_ground | on_tile
    colour = 0.5 + SH_C0 * colours["dc"][-400:]  # the degree-0 SH term back to a colour
    assert np.median(np.abs(colour[seen] - _colour_at(fill[seen].astype(np.float64)))) < 0.08

    # or uniform in the triangulated points' box
    settings = FitSettings(iterations=2, refine_start=1000, sh_degree=0, checkpoint_every=1000, triangulated_fill=400,
                           fill_mode="box")
    fit(scene, RunFolder(tmp_path / "boxed"), settings, resume=False, monitor=monitor)
    assert "and 400 more in their box" in capsys.readouterr().err
    fill = started["means"][-400:]
    lo, hi = np.percentile(means, [2, 98], axis=0)
    assert ((fill >= lo - 0.05) & (fill <= hi + 0.05)).all()
    off_surface = (np.abs(fill[:, 2]) > 0.05) & (np.abs(fill[:, 2] - TILE_HEIGHT) > 0.05)
    assert off_surface.sum() > 200  # spread through the box, not on the surfaces

    random_start = {}
    settings = FitSettings(iterations=2, refine_start=1000, sh_degree=0, checkpoint_every=1000, init_points=3000,
                           seedless_init="random")
    fit(scene, RunFolder(tmp_path / "random"), settings, resume=False,
        monitor=lambda step, g, b: random_start.setdefault("n", len(g)))
    assert random_start["n"] == 3000 and "triangulated" not in capsys.readouterr().err


def test_a_capture_of_blank_surfaces_starts_from_random_points_and_says_why(tmp_path, capsys):
    folder, frames, w, h = tmp_path / "blank", [], 40, 30
    for i in range(6):
        a = 2 * np.pi * i / 6
        write_png(folder / "images" / f"{i:03d}.png", np.full((h, w, 3), 150, np.uint8))
        frames.append({"file_path": f"images/{i:03d}.png",
                       "transform_matrix": look_at_c2w_gl([3 * np.cos(a), 3 * np.sin(a), 1.0]).tolist()})
    (folder / "transforms.json").write_text(json.dumps({"fl_x": 35.0, "fl_y": 35.0, "cx": w / 2, "cy": h / 2,
                                                        "w": w, "h": h, "frames": frames}))
    scene = load_scene(folder, holdout_every=0)
    settings = FitSettings(iterations=2, init_points=500, refine_start=1000, sh_degree=0, checkpoint_every=1000)
    result = fit(scene, RunFolder(tmp_path / "run"), settings, resume=False)
    err = capsys.readouterr().err
    assert "only 0 points could be triangulated" in err and "starting from 500 random points instead" in err
    assert "seeded 500 Gaussians from 500 random points" in err and result["gaussians"] > 0


def test_an_unknown_seedless_start_is_refused_before_any_work(tmp_path):
    scene = load_scene(_tile_scene(tmp_path, n=3, w=40, h=30, fl=35.0), holdout_every=0)
    with pytest.raises(MaskFieldError, match="unknown start for a capture without points 'sfm'; use one of "
                                             "triangulate, random"):
        fit(scene, RunFolder(tmp_path / "run"), FitSettings(iterations=2, seedless_init="sfm"), resume=False)
    with pytest.raises(MaskFieldError, match="unknown fill between triangulated points 'grid'; use one of "
                                             "surfaces, box"):
        fit(scene, RunFolder(tmp_path / "run"), FitSettings(iterations=2, fill_mode="grid"), resume=False)
    assert not (tmp_path / "run" / "gaussians.ply").exists()


def test_the_cli_passes_the_seedless_start_to_the_fit(tmp_path):
    from maskfield import cli

    folder = _tile_scene(tmp_path, n=4, w=60, h=45, fl=50.0)
    code = cli.main(["fit", str(folder), "--out", str(tmp_path / "run"), "--iterations", "2", "--seedless-init",
                     "random", "--init-points", "400", "--events", "none", "--device", "cpu"])
    assert code == 0
    settings = json.loads((tmp_path / "run" / "run.json").read_text())["stages"]["fit"]["settings"]
    assert settings["seedless_init"] == "random" and settings["init_points"] == 400
    code = cli.main(["fit", str(folder), "--out", str(tmp_path / "boxed"), "--iterations", "2", "--seedless-fill",
                     "box", "--events", "none", "--device", "cpu"])
    assert code == 0
    settings = json.loads((tmp_path / "boxed" / "run.json").read_text())["stages"]["fit"]["settings"]
    assert settings["seedless_init"] == "triangulate" and settings["fill_mode"] == "box"


def test_a_cancel_kills_the_pycolmap_child_and_a_crashed_child_is_reported(tmp_path):
    import sys

    from maskfield.events import Progress

    reporter = Reporter("none")
    bar = Progress(reporter, "triangulate", 3, "test")
    threading.Timer(0.3, reporter.cancel).start()
    started = time.perf_counter()
    with pytest.raises(Cancelled):
        _run_child(tmp_path, reporter, bar, [sys.executable, "-c", "import time; time.sleep(60)"])
    assert time.perf_counter() - started < 10
    # pycolmap aborts the process on some failures (SQLite on a full disk): the fit hears why
    with pytest.raises(RuntimeError, match=r"pycolmap stopped \(exit code -6\): .*disk I/O error"):
        _run_child(tmp_path, Reporter("none"), bar, [sys.executable, "-c", "import os, sys; "
                                                    "sys.stderr.write('SQLite error: disk I/O error\\n'); "
                                                    "sys.stderr.flush(); os.abort()"])
    # every step the child reports moves the bar
    bar = Progress(Reporter("none"), "triangulate", 3, "test")
    script = "import numpy as np, sys; print('features'); print('matches'); " \
             "np.savez(sys.argv[1] + '/points.npz', xyz=np.zeros((1, 3)), rgb=np.zeros((1, 3))); print('points')"
    _run_child(tmp_path, Reporter("none"), bar, [sys.executable, "-c", script, str(tmp_path)])
    assert bar.done == 3


def test_many_views_are_matched_with_their_nearest_neighbours_only():
    pairs = nearest_pairs([[float(i), 0.0, 0.0] for i in range(30)], 4)
    assert all(a < b for a, b in pairs) and len(set(pairs)) == len(pairs)
    assert max(b - a for a, b in pairs) == 4  # the ends reach 4 along; nothing farther
    partners = {i: {b if a == i else a for a, b in pairs if i in (a, b)} for i in range(30)}
    assert all(len(p) >= 4 for p in partners.values())
    assert partners[10] == {8, 9, 11, 12}


def test_a_failing_triangulation_falls_back_to_random_starts_and_says_why(tmp_path, capsys, monkeypatch):
    import maskfield.scene.triangulate as triangulation

    def broken(*args, **kwargs):
        raise RuntimeError("database is locked")

    monkeypatch.setattr(triangulation, "triangulate", broken)
    scene = load_scene(_tile_scene(tmp_path, n=4, w=60, h=45, fl=50.0), holdout_every=0)
    settings = FitSettings(iterations=2, init_points=600, refine_start=1000, sh_degree=0, checkpoint_every=1000)
    starts = {}
    fit(scene, RunFolder(tmp_path / "run"), settings, resume=False,
        monitor=lambda step, g, b: starts.setdefault("n", len(g)))
    err = capsys.readouterr().err
    assert "could not be triangulated (RuntimeError: database is locked): starting from 600 random points" in err
    assert starts["n"] == 600


def _looking_down(center):
    """A pinhole 100x100 px looking straight down at z = 0 from ``center`` (OpenCV axes)."""
    from maskfield.scene.cameras import Camera

    c2w = np.eye(4)
    c2w[:3, :3] = np.diag([1.0, -1.0, -1.0])
    c2w[:3, 3] = center
    return Camera("down", 100, 100, 60.0, 60.0, 50.0, 50.0, c2w, np.zeros(4))


def test_a_camera_unprojects_what_it_projects():
    from maskfield.scene.cameras import Camera

    c2w = np.eye(4)
    c2w[:3, :3] = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))[0]
    c2w[:3, 3] = (0.4, -1.2, 2.0)
    camera = Camera("tilted", 160, 120, 150.0, 140.0, 78.0, 61.0, c2w, np.zeros(4))
    world = c2w[:3, 3] + np.random.default_rng(4).normal(size=(50, 3)) + 3 * c2w[:3, 2]
    pixels, depth = camera.project(world)
    assert (depth > 0).all()
    assert np.abs(camera.unproject(pixels, depth) - world).max() < 1e-9


def test_the_fill_lies_on_the_plane_its_points_span_with_the_photos_colours(tmp_path):
    from maskfield.scene.triangulate import fill_between_points

    views = [_looking_down(c) for c in ([0, 0, 2], [0.3, 0, 2.2], [0, 0.3, 1.8], [-0.2, -0.2, 2])]
    photos = []
    for k in range(len(views)):
        photos.append(tmp_path / f"{k}.png")
        write_png(photos[-1], np.full((100, 100, 3), (10, 200, 30), dtype=np.uint8))
    # a tilted plane (z = 0.2 x): inverse depth interpolated in the image is exact on any plane
    xy = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1], [0.2, -0.3], [-0.4, 0.5]], dtype=np.float64)
    points = np.concatenate([xy, 0.2 * xy[:, :1]], 1).astype(np.float32)
    seen_point = np.tile(np.arange(len(points)), len(views))
    seen_view = np.repeat(np.arange(len(views)), len(points))
    fill, colours = fill_between_points(views, photos, points, seen_point, seen_view, 200, np.random.default_rng(0))
    assert fill.shape == (200, 3) and fill.dtype == np.float32 and colours.dtype == np.uint8
    assert np.abs(fill[:, 2] - 0.2 * fill[:, 0]).max() < 1e-4  # none made up in the box
    assert (np.abs(fill[:, :2]) <= 1 + 1e-4).all()
    assert (colours == (10, 200, 30)).all()

    # views that saw fewer than three points give nothing: the box makes up all of it
    few = seen_point < 2
    boxed, boxed_colours = fill_between_points(views, photos, points, seen_point[few], seen_view[few], 50,
                                               np.random.default_rng(0))
    lo, hi = np.percentile(points, [2, 98], axis=0)
    assert boxed.shape == (50, 3) and ((boxed >= lo - 1e-6) & (boxed <= hi + 1e-6)).all()
    assert np.abs(boxed[:, 2] - 0.2 * boxed[:, 0]).max() > 0.05


def test_past_forty_views_each_is_matched_with_its_nearest_and_the_points_hold(tmp_path):
    from maskfield.scene.triangulate import EXHAUSTIVE_UP_TO

    scene = load_scene(_tile_scene(tmp_path, n=EXHAUSTIVE_UP_TO + 2, w=160, h=120, fl=136.0), holdout_every=0)
    found = triangulate(scene, scene.train_indices)  # pycolmap's match_image_pairs, seeded verification
    off = np.minimum(np.abs(found.points[:, 2]), np.abs(found.points[:, 2] - TILE_HEIGHT))
    assert len(found.points) >= 150 and np.median(off) < 0.01 and (off < 0.05).mean() > 0.97, np.percentile(off, 97)
