"""Scene loading: formats, camera conventions, distortion, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import FOX, fisheye_rays, look_at_c2w_gl, mix_image_sizes, move_scene, write_png

from maskfield.checks import check_cameras
from maskfield.events import MaskFieldError
from maskfield.scene import load_scene
from maskfield.scene.cameras import (Camera, distort, distort_normalized, opengl_to_opencv, sizes_text,
                                    undistort_image)


def test_opengl_camera_sees_the_point_it_looks_at(make_transforms_scene):
    folder, _ = make_transforms_scene(n=4)
    scene = load_scene(folder)
    for cam in scene.cameras:
        uv, depth = cam.project(np.zeros((1, 3)))
        assert depth[0] > 0, "the origin must be in front of every camera (OpenCV +z forward)"
        assert np.allclose(uv[0], [cam.cx, cam.cy], atol=1e-6)
        # a point above the target appears higher in the image: smaller v (y down)
        uv_up, _ = cam.project(np.array([[0.0, 0.0, 0.5]]))
        assert uv_up[0, 1] < cam.cy


def test_gl_to_cv_flips_camera_y_and_z_only():
    c2w = look_at_c2w_gl([1, 2, 3])
    cv = opengl_to_opencv(c2w)
    assert np.allclose(cv[:3, 0], c2w[:3, 0])
    assert np.allclose(cv[:3, 1], -c2w[:3, 1])
    assert np.allclose(cv[:3, 2], -c2w[:3, 2])
    assert np.allclose(cv[:3, 3], c2w[:3, 3])


def test_fox_loads_with_distortion_and_holdout():
    scene = load_scene(FOX)
    assert len(scene) == 50
    assert scene.test_indices == list(range(0, 50, 8))
    assert all(c.has_distortion for c in scene.cameras)
    img = scene.load_image(3, downscale=8)
    cam = scene.camera(3, downscale=8)
    assert img.shape == (cam.height, cam.width, 3) == (240, 135, 3)
    assert img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
    assert not cam.has_distortion  # images are undistorted on load
    assert cam.fx == pytest.approx(1375.52 * 135 / 1080)


def test_missing_frames_are_named_and_can_be_skipped():
    path = FOX / "transforms_with_missing_frames.json"
    with pytest.raises(MaskFieldError) as err:
        load_scene(path)
    msg = str(err.value)
    assert "17 image(s)" in msg and "images/0005.jpg" in msg and "--skip-missing" in msg
    scene = load_scene(path, skip_missing=True)
    assert len(scene) == 50 and len(scene.skipped) == 17


def test_paths_written_on_windows_or_another_machine_are_found(make_transforms_scene):
    # a camera file written on Windows (backslashes, a drive), or absolute on the machine that
    # made the data set, still finds its images by their folder and name under the scene
    written = {0: "C:\\Users\\alice\\capture\\images\\000.png",
               1: "/home/bob/datasets/capture/images/001.png",
               2: "images\\002.png"}
    folder, _ = make_transforms_scene(n=6, frame_extra={i: {"file_path": p} for i, p in written.items()})
    scene = load_scene(folder)
    assert [p.name for p in scene.image_paths] == [f"{i:03d}.png" for i in range(6)]
    assert all(p.parent == folder / "images" for p in scene.image_paths)
    assert any("3 image path(s)" in note and "another machine" in note for note in scene.notes)
    # a path that names no image anywhere under the scene is still reported as missing
    folder, _ = make_transforms_scene(n=6, name="gone", frame_extra={0: {"file_path": "D:\\x\\images\\999.png"}})
    with pytest.raises(MaskFieldError, match=r"1 image\(s\).*999\.png.*--skip-missing"):
        load_scene(folder)
    assert len(load_scene(folder, skip_missing=True)) == 5


def test_images_of_one_name_in_two_folders_get_names_of_their_own(make_transforms_scene):
    # a camera rig: cam0/000.png and cam1/000.png. A view's name keys its priors file and its
    # label image, so two views of one name would silently share one view's masks
    import shutil

    from maskfield.priors.from_labels import find_label_file

    folder, frames = make_transforms_scene(n=4)
    meta = json.loads((folder / "transforms.json").read_text())
    for i, frame in enumerate(meta["frames"]):
        rig_path = f"cam{i % 2}/{i // 2:03d}.png"
        (folder / rig_path).parent.mkdir(exist_ok=True)
        shutil.move(folder / frame["file_path"], folder / rig_path)
        frame["file_path"] = rig_path
    (folder / "transforms.json").write_text(json.dumps(meta))
    scene = load_scene(folder)
    assert [c.name for c in scene.cameras] == ["cam0__000", "cam1__000", "cam0__001", "cam1__001"]
    assert any("4 images share a file name" in note and "cam0__000" in note for note in scene.notes)
    # their label images may sit in the same folders under labels/
    write_png(folder / "labels" / "cam1" / "000.png", np.zeros((30, 40), np.uint8))
    assert find_label_file(folder / "labels", "cam1__000") == folder / "labels" / "cam1" / "000.png"
    assert find_label_file(folder / "labels", "cam0__000") is None
    # names that stay apart are left as they were
    plain, _ = make_transforms_scene(n=4, name="plain")
    assert [c.name for c in load_scene(plain).cameras] == ["000", "001", "002", "003"]


def test_undistortion_inverts_the_distortion_model():
    cam = Camera("c", 64, 48, 50.0, 50.0, 32.0, 24.0, np.eye(4), np.array([0.1, -0.05, 0.002, -0.001]))
    # an image whose value is its own (distorted) pixel x coordinate
    h, w = 48, 64
    xs = np.tile(np.arange(w, dtype=np.float32), (h, 1))
    out = undistort_image(xs[..., None].repeat(3, axis=2), cam)
    v, u = 20, 40
    x = (u + 0.5 - cam.cx) / cam.fx
    y = (v + 0.5 - cam.cy) / cam.fy
    xd, _ = distort_normalized(np.array(x), np.array(y), cam.distortion)
    assert out[v, u, 0] == pytest.approx(xd * cam.fx + cam.cx - 0.5, abs=1e-3)


def test_nan_pose_singular_pose_and_missing_fields(make_transforms_scene):
    bad = np.full((4, 4), np.nan).tolist()
    folder, _ = make_transforms_scene(frame_extra={2: {"transform_matrix": bad}}, name="nan")
    with pytest.raises(MaskFieldError, match="NaN"):
        load_scene(folder)
    folder, _ = make_transforms_scene(frame_extra={1: {"transform_matrix": np.zeros((4, 4)).tolist()}}, name="sing")
    with pytest.raises(MaskFieldError, match="singular"):
        load_scene(folder)
    folder, _ = make_transforms_scene(name="nofocal")
    meta = json.loads((folder / "transforms.json").read_text())
    del meta["fl_x"], meta["fl_y"]
    (folder / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(MaskFieldError, match="fl_x"):
        load_scene(folder)


def test_images_of_several_sizes_keep_cameras_of_their_own(make_transforms_scene):
    # a phone capture mixes landscape and portrait photos; a rig, cameras of two sensors
    folder, _ = make_transforms_scene(n=6, w=40, h=30, name="mixed")
    original = load_scene(folder)
    old_images = [original.load_image(i) for i in range(len(original))]
    mix_image_sizes(folder)
    scene = load_scene(folder)
    assert [(c.width, c.height) for c in scene.cameras] == [(40, 30), (30, 30), (30, 40)] * 2
    assert sizes_text(scene.cameras) == "40x30 (2 views), 30x30 (2), 30x40 (2)"
    assert sizes_text(original.cameras) == "40x30"
    # a world point shows the same pixel in the cropped and the turned view as in the original
    rng = np.random.default_rng(1)
    points = rng.uniform(-0.6, 0.6, (400, 3))
    for view, to_new in ((1, lambda u, v: (u - 5, v)), (2, lambda u, v: (v, 40 - u))):
        old_uv, _ = original.cameras[view].project(points)
        new_uv, _ = scene.cameras[view].project(points)
        assert np.allclose(new_uv, np.stack(to_new(old_uv[:, 0], old_uv[:, 1]), 1), atol=1e-6)
        old_img, new_img = old_images[view], scene.load_image(view)
        inside = ((new_uv >= 0) & (new_uv < [new_img.shape[1], new_img.shape[0]])).all(1)
        assert inside.sum() > 100
        got = new_img[new_uv[inside, 1].astype(int), new_uv[inside, 0].astype(int)]
        want = old_img[old_uv[inside, 1].astype(int), old_uv[inside, 0].astype(int)]
        assert np.array_equal(got, want)


def test_declared_size_must_match_the_image(make_transforms_scene):
    folder, _ = make_transforms_scene(extra={"w": 80, "h": 60}, name="declared")
    with pytest.raises(MaskFieldError, match="40x30"):
        load_scene(folder)


def test_nerf_synthetic_rgba_over_background(tmp_path):
    folder = tmp_path / "synthetic"
    for split in ("train", "test"):
        frames = []
        for i in range(2):
            img = np.zeros((8, 8, 4), np.uint8)
            img[..., 0] = 255
            img[:4, :, 3] = 255  # top half opaque red, bottom half transparent
            write_png(folder / split / f"r_{i}.png", img)
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": look_at_c2w_gl([2, 0, 1 + i]).tolist()})
        (folder / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))
    scene = load_scene(folder, background=(0.0, 1.0, 0.0))
    assert scene.source == "nerf-synthetic" and len(scene) == 4
    assert scene.has_alpha
    assert [scene.cameras[i].name.split("_")[0] for i in scene.test_indices] == ["test", "test"]
    img = scene.load_image(0)
    assert np.allclose(img[0, 0], [1, 0, 0]) and np.allclose(img[7, 0], [0, 1, 0])
    assert scene.cameras[0].fx == pytest.approx(0.5 * 8 / np.tan(0.5 * 0.69))


def _write_colmap_text(folder, c2ws, w=40, h=30, points=True, names=None, sizes=None):
    """A COLMAP text model; ``sizes`` gives each image its own (w, h), one camera per size."""
    sparse = folder / "sparse" / "0"
    sparse.mkdir(parents=True)
    sizes = sizes or [(w, h)] * len(c2ws)
    camera_ids = {size: k + 1 for k, size in enumerate(dict.fromkeys(sizes))}
    (sparse / "cameras.txt").write_text("".join(f"{k} PINHOLE {cw} {ch} 35 36 {cw / 2} {ch / 2}\n"
                                                for (cw, ch), k in camera_ids.items()))
    lines = []
    for i, c2w in enumerate(c2ws):
        from scipy.spatial.transform import Rotation

        w2c = np.linalg.inv(opengl_to_opencv(c2w))
        qx, qy, qz, qw = Rotation.from_matrix(w2c[:3, :3]).as_quat()
        t = w2c[:3, 3]
        name = names[i] if names else f"{i:03d}.png"
        lines.append(f"{i + 1} {qw} {qx} {qy} {qz} {t[0]} {t[1]} {t[2]} {camera_ids[sizes[i]]} {name}\n\n")
        write_png(folder / "images" / name, np.full((sizes[i][1], sizes[i][0], 3), 100, np.uint8))
    (sparse / "images.txt").write_text("".join(lines))
    (sparse / "points3D.txt").write_text("1 0.1 0.2 0.3 255 0 0 0.5\n2 -0.1 0 0 0 255 0 0.5\n" if points else "")
    return sparse


def test_colmap_model_matches_the_same_cameras_in_transforms_json(tmp_path):
    c2ws = [look_at_c2w_gl([3 * np.cos(a), 3 * np.sin(a), 1]) for a in np.linspace(0, 2, 3)]
    _write_colmap_text(tmp_path / "colmap", c2ws)
    scene = load_scene(tmp_path / "colmap")
    assert scene.source == "colmap" and len(scene) == 3
    for cam, c2w in zip(scene.cameras, c2ws):
        assert np.allclose(cam.camtoworld, opengl_to_opencv(c2w), atol=1e-6)
        assert (cam.fx, cam.fy) == (35, 36)
    assert scene.points.shape == (2, 3) and np.allclose(scene.points[0], [0.1, 0.2, 0.3])
    assert tuple(scene.point_colors[0]) == (255, 0, 0)


def test_colmap_images_of_one_name_in_two_folders_get_names_of_their_own(tmp_path):
    c2ws = [look_at_c2w_gl([3 * np.cos(a), 3 * np.sin(a), 1]) for a in np.linspace(0, 2, 3)]
    _write_colmap_text(tmp_path / "rig", c2ws, names=["left/0001.png", "right/0001.png", "left/0002.png"])
    scene = load_scene(tmp_path / "rig")
    assert [c.name for c in scene.cameras] == ["left__0001", "right__0001", "left__0002"]
    assert [p.relative_to(tmp_path / "rig" / "images").as_posix() for p in scene.image_paths] == \
        ["left/0001.png", "right/0001.png", "left/0002.png"]


def test_colmap_model_of_two_cameras_of_other_sizes(tmp_path):
    c2ws = [look_at_c2w_gl([3 * np.cos(a), 3 * np.sin(a), 1]) for a in np.linspace(0, 2, 3)]
    _write_colmap_text(tmp_path / "two", c2ws, sizes=[(40, 30), (30, 40), (40, 30)])
    scene = load_scene(tmp_path / "two")
    assert [(c.width, c.height, c.cx, c.cy) for c in scene.cameras] == \
        [(40, 30, 20, 15), (30, 40, 15, 20), (40, 30, 20, 15)]
    assert [scene.load_image(i).shape for i in range(3)] == [(30, 40, 3), (40, 30, 3), (30, 40, 3)]


def test_a_capture_far_from_its_origin_is_recentred_in_float64(make_transforms_scene):
    # geo-referenced coordinates (UTM easting, northing): 32-bit floats keep ~25 cm there
    folder, _ = make_transforms_scene(n=6, name="near")
    near = load_scene(folder)
    far_folder, _ = make_transforms_scene(n=6, name="far")
    offset = np.array([500000.25, 4000000.5, 100.0])
    move_scene(far_folder, offset)
    far = load_scene(far_folder)
    assert near.origin is None and not near.notes
    # the cameras' mean (offset + (0, 0, 1)) rounded to a power of ten under their spread (3)
    assert np.allclose(far.origin, [500000.0, 4000000.0, 101.0])
    residual = offset - far.origin
    for a, b in zip(near.cameras, far.cameras):
        assert np.allclose(b.center, a.center + residual, atol=1e-9)
        assert np.allclose(b.camtoworld[:3, :3], a.camtoworld[:3, :3])
    assert "geo-referenced" in far.notes[0] and "500000, 4000000, 101" in far.notes[0]
    check_cameras(far, far.train_indices)  # before: "all cameras at one position"
    # the add-on's renders keep Blender's coordinates, in which it hands over face centres,
    # the 3D cursor and the Gaussians it imports
    meta = json.loads((far_folder / "transforms.json").read_text())
    meta["blender"] = {"scene": "Scene"}
    (far_folder / "transforms.json").write_text(json.dumps(meta))
    rendered = load_scene(far_folder)
    assert rendered.origin is None and not rendered.notes
    assert np.allclose(rendered.cameras[0].center, near.cameras[0].center + offset)


def test_colmap_points_far_from_the_origin_keep_their_digits(tmp_path):
    offset = np.array([-2.5e6, 6.1e6, 3.3e3])  # ECEF-like
    c2ws = []
    for a in np.linspace(0, 2, 3):
        c2w = look_at_c2w_gl([3 * np.cos(a), 3 * np.sin(a), 1])
        c2w[:3, 3] += offset
        c2ws.append(c2w)
    sparse = _write_colmap_text(tmp_path / "geo", c2ws, points=False)
    (sparse / "points3D.txt").write_text(f"1 {offset[0] + 0.1:.4f} {offset[1] + 0.2:.4f} {offset[2] + 0.3:.4f} 255 0 0 0.5\n")
    scene = load_scene(tmp_path / "geo")
    assert scene.origin is not None
    assert np.allclose(scene.points[0] + scene.origin, offset + [0.1, 0.2, 0.3], atol=1e-6)
    assert np.abs(scene.points).max() < 10


def test_image_names_in_other_letter_case_are_found(make_transforms_scene, tmp_path):
    # made on macOS or Windows, whose file systems ignore case: "Images/IMG_0001.JPG" there is
    # "images/img_0001.jpg" here
    folder, frames = make_transforms_scene(n=4, name="case")
    meta = json.loads((folder / "transforms.json").read_text())
    for frame in meta["frames"]:
        frame["file_path"] = frame["file_path"].replace("images/", "Images/").replace(".png", ".PNG")
    (folder / "transforms.json").write_text(json.dumps(meta))
    scene = load_scene(folder)
    assert [p.name for p in scene.image_paths] == [f"{i:03d}.png" for i in range(4)]
    assert "other letter case" in scene.notes[0]
    # two files that differ only in case: which one was meant cannot be told
    write_png(folder / "images" / "000.Png", np.zeros((30, 40, 3), np.uint8))
    with pytest.raises(MaskFieldError, match="missing"):
        load_scene(folder)
    c2ws = [look_at_c2w_gl([3 * np.cos(a), 3 * np.sin(a), 1]) for a in np.linspace(0, 2, 3)]
    _write_colmap_text(tmp_path / "colmap", c2ws, names=["A.PNG", "b.png", "C.png"])
    for name in ("A.PNG", "C.png"):
        (tmp_path / "colmap" / "images" / name).rename(tmp_path / "colmap" / "images" / name.lower())
    scene = load_scene(tmp_path / "colmap")
    assert [p.name for p in scene.image_paths] == ["a.png", "b.png", "c.png"]
    assert "2 image name(s)" in scene.notes[0] and "'A.PNG'" in scene.notes[0]


def test_a_camera_file_saved_with_a_byte_order_mark_loads(make_transforms_scene):
    # Windows editors (Notepad) save UTF-8 with a BOM, which json.loads refuses as such
    folder, _ = make_transforms_scene(n=3, name="bom")
    path = folder / "transforms.json"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert len(load_scene(folder)) == 3


def test_folder_without_cameras_says_what_is_expected(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(MaskFieldError, match="transforms.json"):
        load_scene(tmp_path / "photos")


def test_an_image_forgotten_by_the_cache_loads_again_the_same(make_transforms_scene):
    # the fit forgets images it copied to a GPU, the priors those SAM has seen: a cache, not a store
    folder, _ = make_transforms_scene(n=3)
    scene = load_scene(folder)
    first = scene.load_image(1, 2)
    assert scene.load_image(1, 2) is first  # cached
    scene.forget_image(1, 2)
    again = scene.load_image(1, 2)
    assert again is not first and np.array_equal(again, first)
    scene.forget_image(2, 2)  # never loaded: nothing to do


# --- lenses: fisheye and OpenCV's full model --------------------------------------------------

def _ray_colour(dirs: np.ndarray) -> np.ndarray:
    """A smooth colour of each unit ray direction (OpenCV camera axes): what an environment
    seen from the camera's centre would give, the same through any lens."""
    return np.stack([0.5 + 0.45 * dirs[..., 0], 0.5 + 0.45 * dirs[..., 1], 0.2 + 0.7 * dirs[..., 2]], -1)


def _lens_photo(w, h, fx, fy, cx, cy, rays_of_distorted) -> np.ndarray:
    """The 8-bit photo a lens takes of ``_ray_colour``: each pixel's distorted normalised
    coordinates to its ray by ``rays_of_distorted`` (the test's own inversion of the model)."""
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    dirs = rays_of_distorted((u + 0.5 - cx) / fx, (v + 0.5 - cy) / fy)
    return np.clip(np.round(_ray_colour(dirs) * 255), 0, 255).astype(np.uint8)


def _fisheye_rays(k):
    """Rays of OpenCV's equidistant fisheye (conftest.fisheye_rays: the test's own inversion by
    bisection, independent of the loader's forward formula)."""
    def rays(xd, yd):
        theta, phi = fisheye_rays(k, xd, yd)
        return np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], -1)
    return rays


def _rational_rays(k1, k2, p1, p2, k3, k4, k5, k6):
    """Rays of OpenCV's full pinhole model, inverted by fixed-point iteration."""
    def rays(xd, yd):
        x, y = xd.copy(), yd.copy()
        for _ in range(200):
            r2 = x * x + y * y
            radial = (1 + k1 * r2 + k2 * r2 ** 2 + k3 * r2 ** 3) / (1 + k4 * r2 + k5 * r2 ** 2 + k6 * r2 ** 3)
            dx, dy = 2 * p1 * x * y + p2 * (r2 + 2 * x * x), p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
            x, y = (xd - dx) / radial, (yd - dy) / radial
        d = np.stack([x, y, np.ones_like(x)], -1)
        return d / np.linalg.norm(d, axis=-1, keepdims=True)
    return rays


def coeffs_of(cam) -> list:
    return list(np.pad(cam.distortion, (0, 8 - len(cam.distortion))))


def _expected_pinhole(cam) -> np.ndarray:
    v, u = np.mgrid[0:cam.height, 0:cam.width].astype(np.float64)
    d = np.stack([(u + 0.5 - cam.cx) / cam.fx, (v + 0.5 - cam.cy) / cam.fy, np.ones_like(u)], -1)
    return _ray_colour(d / np.linalg.norm(d, axis=-1, keepdims=True))


FISHEYE_K = [0.05, -0.02, 0.004, -0.001]


@pytest.mark.parametrize("how", ["nerfstudio", "instant-ngp"])
def test_fisheye_photos_in_transforms_json_become_the_pinhole_views_of_their_rays(make_transforms_scene, how):
    # a wide lens (f 30 px on an 80 px image: about 150 degrees across), as nerfstudio's
    # ns-process-data --camera-type fisheye or Instant-NGP's "is_fisheye" write it
    w, h, f = 80, 60, 30.0
    lens = {"camera_model": "OPENCV_FISHEYE"} if how == "nerfstudio" else {"is_fisheye": True}
    folder, frames = make_transforms_scene(n=4, w=w, h=h, fl=f, name=how,
                                           extra={**lens, **dict(zip(("k1", "k2", "k3", "k4"), FISHEYE_K))})
    photo = _lens_photo(w, h, f, f, w / 2, h / 2, _fisheye_rays(FISHEYE_K))
    for frame in frames:
        write_png(folder / frame["file_path"], photo)
    scene = load_scene(folder)
    assert all(cam.lens == "fisheye" and cam.has_distortion for cam in scene.cameras)
    assert np.allclose(scene.cameras[0].distortion, FISHEYE_K)
    got = scene.load_image(1)
    cam = scene.camera(1)
    assert cam.lens == "pinhole" and not cam.has_distortion
    # every pinhole pixel shows its own ray (8-bit photo, bilinear resampling of a smooth field)
    assert np.abs(got - _expected_pinhole(cam)).max() < 0.02
    # against the lens taken for a plain pinhole (the photo as it is), the error is large
    assert np.abs(photo / 255.0 - _expected_pinhole(cam)).max() > 0.1
    note = " ".join(scene.notes)
    side = _fisheye_rays(FISHEYE_K)(np.array(w / 2 / f), np.array(0.0))  # the ray at the image's side
    seen = 2 * np.degrees(np.arccos(side[2]))
    assert "4 fisheye view(s)" in note and f"about {seen:.0f} degrees" in note
    assert f"the central {2 * np.degrees(np.arctan(w / 2 / f)):.0f} are used" in note


def test_fisheye_with_all_coefficients_zero_is_still_not_a_pinhole():
    cam = Camera("c", 64, 48, 30.0, 30.0, 32.0, 24.0, np.eye(4), np.zeros(4), lens="fisheye")
    assert cam.has_distortion
    assert not cam.undistorted().has_distortion and cam.scaled(2).lens == "fisheye"
    with pytest.raises(ValueError, match="lens"):
        Camera("c", 64, 48, 30.0, 30.0, 32.0, 24.0, np.eye(4), lens="equirectangular")


def test_opencv_full_model_k3_to_k6_in_transforms_json(make_transforms_scene):
    # k3 (and the rational k4-k6) used to be dropped without a word
    w, h, f = 80, 60, 60.0
    coeffs = dict(k1=0.12, k2=-0.03, p1=0.002, p2=-0.001, k3=0.01, k4=0.05, k5=-0.01, k6=0.002)
    folder, frames = make_transforms_scene(n=4, w=w, h=h, fl=f, name="full",
                                           extra={**coeffs, "camera_model": "FULL_OPENCV"})
    photo = _lens_photo(w, h, f, f, w / 2, h / 2, _rational_rays(*coeffs.values()))
    for frame in frames:
        write_png(folder / frame["file_path"], photo)
    scene = load_scene(folder)
    assert np.allclose(scene.cameras[0].distortion, list(coeffs.values()))
    got, cam = scene.load_image(2), scene.camera(2)
    assert np.abs(got - _expected_pinhole(cam)).max() < 0.02
    # where the model sends the image's corner, against the test's own inversion: exact with
    # every coefficient, a pixel off at the corner without k3-k6 (as before)
    full = scene.cameras[2]
    corner = np.array([(w - 0.5 - full.cx) / full.fx, (h - 0.5 - full.cy) / full.fy])
    for coeffs, close in ((full.distortion, True), (full.distortion[:4], False)):
        xd, yd = distort(Camera("c", w, h, f, f, w / 2, h / 2, np.eye(4), coeffs), *corner)
        ray = _rational_rays(*coeffs_of(full))(np.array(xd), np.array(yd))
        miss = np.abs(ray[:2] / ray[2] - corner).max() * f  # in pixels
        assert (miss < 1e-6) if close else (miss > 0.5), (close, miss)


def test_colmap_fisheye_and_full_opencv_models(tmp_path):
    c2ws = [look_at_c2w_gl([3 * np.cos(a), 3 * np.sin(a), 1]) for a in np.linspace(0, 2, 3)]
    w, h = 80, 60
    cases = {
        "OPENCV_FISHEYE": (f"30 30 {w / 2} {h / 2} " + " ".join(map(str, FISHEYE_K)), _fisheye_rays(FISHEYE_K)),
        "SIMPLE_RADIAL_FISHEYE": (f"30 {w / 2} {h / 2} 0.05", _fisheye_rays([0.05, 0, 0, 0])),
        "RADIAL_FISHEYE": (f"30 {w / 2} {h / 2} 0.05 -0.02", _fisheye_rays([0.05, -0.02, 0, 0])),
        "FULL_OPENCV": (f"60 60 {w / 2} {h / 2} 0.12 -0.03 0.002 -0.001 0.01 0.05 -0.01 0.002",
                        _rational_rays(0.12, -0.03, 0.002, -0.001, 0.01, 0.05, -0.01, 0.002)),
    }
    for model, (params, rays) in cases.items():
        folder = tmp_path / model
        sparse = _write_colmap_text(folder, c2ws, w=w, h=h)
        (sparse / "cameras.txt").write_text(f"1 {model} {w} {h} {params}\n")
        f = float(params.split()[0])
        for i in range(3):
            write_png(folder / "images" / f"{i:03d}.png", _lens_photo(w, h, f, f, w / 2, h / 2, rays))
        scene = load_scene(folder)
        assert scene.cameras[0].lens == ("pinhole" if model == "FULL_OPENCV" else "fisheye"), model
        got, cam = scene.load_image(0), scene.camera(0)
        assert np.abs(got - _expected_pinhole(cam)).max() < 0.02, model


def test_lenses_the_loader_cannot_take_are_named(make_transforms_scene, tmp_path):
    folder, _ = make_transforms_scene(n=4, name="equirect", extra={"camera_model": "EQUIRECTANGULAR"})
    with pytest.raises(MaskFieldError, match="EQUIRECTANGULAR is not supported.*OPENCV_FISHEYE"):
        load_scene(folder)
    folder, _ = make_transforms_scene(n=4, name="fisheye_p", extra={"camera_model": "OPENCV_FISHEYE", "p1": 0.01})
    with pytest.raises(MaskFieldError, match="fisheye.*p1/p2"):
        load_scene(folder)
    c2ws = [look_at_c2w_gl([3 * np.cos(a), 3 * np.sin(a), 1]) for a in np.linspace(0, 2, 3)]
    sparse = _write_colmap_text(tmp_path / "fov", c2ws)
    (sparse / "cameras.txt").write_text("1 FOV 40 30 35 35 20 15 0.9\n")
    with pytest.raises(MaskFieldError, match="FOV .*not supported.*OPENCV_FISHEYE"):
        load_scene(tmp_path / "fov")
