# SPDX-License-Identifier: GPL-3.0-or-later
"""Priors from instance-label renders: exact masks and names, SAM-like noise, the command."""
import argparse
import io
import json

import numpy as np
import pytest
from PIL import Image

from maskfield.events import MaskFieldError, Reporter
from maskfield.priors import load_priors
from maskfield.priors.command import register, run
from maskfield.priors.from_labels import (
    LabelNoise,
    label_masks,
    load_object_names,
    priors_from_label_map,
    read_label_map,
)
from maskfield.priors.text import hash_embed

NAMES = {1: "Red_Mug.001", 2: "Table", 3: "Blue Plate", 300: "Lamp"}


def label_map(h=48, w=64):
    labels = np.zeros((h, w), np.int64)
    labels[30:48, :] = 2  # table along the bottom
    labels[10:30, 8:24] = 1  # mug standing on it (touches the table)
    labels[20:30, 34:58] = 3  # plate on the table
    labels[0:6, 56:64] = 300  # lamp in a corner (uint16 id), touches nothing
    return labels


def test_exact_masks_and_names():
    labels = label_map()
    masks, emb, gran, scores, names = label_masks(labels, NAMES)
    assert names == ["Red_Mug.001", "Table", "Blue Plate", "Lamp"]  # ascending ids
    for mask, ident in zip(masks, (1, 2, 3, 300)):
        np.testing.assert_array_equal(mask, labels == ident)
    np.testing.assert_array_equal(emb, hash_embed(names))
    assert gran.tolist() == [1, 1, 1, 1] and scores.tolist() == [1.0] * 4
    # a prompt finds its object by name
    sim = hash_embed(["red mug", "table", "plate", "lamp"]) @ emb.T
    assert sim.argmax(axis=1).tolist() == [0, 1, 2, 3]


def test_priors_from_label_map_and_unnamed_ids():
    labels = label_map()
    labels[0:4, 0:4] = 7  # an id objects.json does not name
    p = priors_from_label_map(labels, NAMES, "frame_001")
    assert p.count == 5 and p.meta["mask_names"][3] == "object 7"  # ids ascending: 1 2 3 7 300
    assert p.meta["mask_model"] == "labels" and p.meta["embedding_model"] == "names:hash-512"
    assert p.image_size == (48, 64)
    # resized to the training image size with nearest neighbour
    half = priors_from_label_map(labels, NAMES, "frame_001", image_size=(24, 32))
    assert half.masks.shape == (5, 24, 32)
    np.testing.assert_array_equal(half.masks[0], (labels == 1)[::2, ::2])
    # an empty view gives an empty but valid set
    assert priors_from_label_map(np.zeros((40, 40), np.int64), NAMES, "none").count == 0


def test_read_label_pngs(tmp_path):
    labels = label_map()
    Image.fromarray(labels.astype(np.uint16)).save(tmp_path / "u16.png")
    small = np.where(labels == 300, 4, labels).astype(np.uint8)
    Image.fromarray(small).save(tmp_path / "u8.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "u16.png"), labels)
    np.testing.assert_array_equal(read_label_map(tmp_path / "u8.png"), small)
    grey_rgb = np.repeat(small[..., None], 3, axis=2)
    Image.fromarray(grey_rgb).save(tmp_path / "rgb_grey.png")
    np.testing.assert_array_equal(read_label_map(tmp_path / "rgb_grey.png"), small)
    colour = grey_rgb.copy()
    colour[0, 0] = (1, 2, 3)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    with pytest.raises(MaskFieldError, match="colour image"):
        read_label_map(tmp_path / "colour.png")
    with pytest.raises(MaskFieldError, match="not found"):
        read_label_map(tmp_path / "absent.png")


def test_object_names_file(tmp_path):
    assert load_object_names(tmp_path) == {}
    (tmp_path / "objects.json").write_text(json.dumps({"1": "red mug", "0": "background", "12": "table"}))
    assert load_object_names(tmp_path) == {1: "red mug", 12: "table"}
    # saved by a Windows editor, with a byte order mark
    (tmp_path / "objects.json").write_bytes("\ufeff{\"1\": \"tasse\"}".encode("utf-8"))
    assert load_object_names(tmp_path) == {1: "tasse"}
    (tmp_path / "objects.json").write_text("{not json")
    with pytest.raises(MaskFieldError, match="objects.json"):
        load_object_names(tmp_path)
    (tmp_path / "objects.json").write_text(json.dumps({"mug": "red mug"}))
    with pytest.raises(MaskFieldError, match="not an integer"):
        load_object_names(tmp_path)


def test_noise_is_deterministic_and_sam_like():
    labels = label_map()
    noise = LabelNoise(seed=3, p_split=1.0, p_merge=1.0, p_drop=0.0, jitter_px=2)
    a = label_masks(labels, NAMES, noise=noise, view="frame_001")
    b = label_masks(labels, NAMES, noise=noise, view="frame_001")
    for x, y in zip(a[:4], b[:4]):
        np.testing.assert_array_equal(x, y)
    masks, emb, gran, scores, names = a
    assert set(gran.tolist()) == {0, 1, 2}  # parts, objects, merged groups
    exact = label_masks(labels, NAMES)[0]
    objects = masks[gran == 1]
    assert objects.shape[0] == 4 and not all(np.array_equal(o, e) for o, e in zip(objects, exact))
    # groups are unions of touching objects: mug+table, plate+table (the lamp touches nothing)
    assert sorted(n for n, g in zip(names, gran) if g == 2) == ["Red_Mug.001 + Table", "Table + Blue Plate"]
    # parts lie (up to the boundary jitter) inside their object
    from scipy.ndimage import binary_dilation

    part_names = [n for n, g in zip(names, gran) if g == 0]
    assert part_names.count("Red_Mug.001") == 2  # p_split = 1: the mug is cut in two
    grown = binary_dilation(labels == 1, iterations=noise.jitter_px)
    for part, name in zip(masks[gran == 0], part_names):
        if name == "Red_Mug.001":
            assert not np.any(part & ~grown) and part.sum() < (labels == 1).sum()
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert np.all((scores >= noise.score_low) & (scores <= 1.0))
    # another view or another seed: other masks
    c = label_masks(labels, NAMES, noise=noise, view="frame_002")
    d = label_masks(labels, NAMES, noise=LabelNoise(seed=4, p_split=1.0, p_merge=1.0, p_drop=0.0), view="frame_001")
    assert not (len(c[0]) == len(masks) and np.array_equal(c[0], masks))
    assert not (len(d[0]) == len(masks) and np.array_equal(d[0], masks))


def test_noise_drops_masks():
    labels = label_map()
    kept = [len(label_masks(labels, NAMES, noise=LabelNoise(seed=s, p_drop=0.5), view="v")[0]) for s in range(8)]
    full = [len(label_masks(labels, NAMES, noise=LabelNoise(seed=s, p_drop=0.0), view="v")[0]) for s in range(8)]
    assert sum(kept) < sum(full)


# --- the command, end to end on a tiny scene ------------------------------------------------------

def write_scene(root, n=4, h=48, w=64, labels=True):
    (root / "images").mkdir(parents=True)
    frames = []
    for i in range(n):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(root / "images" / f"f{i}.png")
        c2w = np.eye(4)
        c2w[:3, 3] = (np.cos(i), np.sin(i), 2.0)
        frames.append({"file_path": f"images/f{i}.png", "transform_matrix": c2w.tolist()})
    meta = {"fl_x": 50.0, "fl_y": 50.0, "cx": w / 2, "cy": h / 2, "w": w, "h": h, "frames": frames}
    (root / "transforms.json").write_text(json.dumps(meta))
    if labels:
        (root / "labels").mkdir()
        for i in range(n):
            Image.fromarray(label_map(h, w).astype(np.uint16)).save(root / "labels" / f"f{i}.png")
        (root / "labels" / "objects.json").write_text(json.dumps({str(k): v for k, v in NAMES.items()}))


def parse(argv):
    parser = argparse.ArgumentParser(prog="maskfield")
    sub = parser.add_subparsers(dest="command")
    register(sub)
    return parser.parse_args(argv)


def test_command_from_labels(tmp_path):
    from maskfield.scene import load_scene

    write_scene(tmp_path / "scene", n=4)
    stream = io.StringIO()
    reporter = Reporter("jsonl", stream=stream)
    args = parse(["priors", str(tmp_path / "scene"), "--out", str(tmp_path / "run"), "--from-labels",
                  "--downscale", "2", "--events", "jsonl"])
    assert args.func is run
    summary = run(args, reporter)
    scene = load_scene(tmp_path / "scene")
    expected = [scene.cameras[i].name for i in scene.train_indices]
    files = sorted(p.stem for p in (tmp_path / "run" / "priors").glob("*.npz"))
    assert files == sorted(expected) and summary["computed"] == len(expected)
    p = load_priors(tmp_path / "run" / "priors" / f"{expected[0]}.npz")
    assert p.masks.shape == (4, 24, 32)  # downscaled like the training images
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    result = [e for e in events if e["event"] == "result"]
    assert result and result[-1]["stage"] == "priors" and result[-1]["embedding_model"] == "names:hash-512"
    # second run: kept; --label-noise: recomputed; --prior-views: a subset
    assert run(args, Reporter("none"))["cached"] == len(expected)
    noisy = parse(["priors", str(tmp_path / "scene"), "--out", str(tmp_path / "run"), "--from-labels",
                   "--downscale", "2", "--label-noise", "5"])
    assert run(noisy, Reporter("none"))["computed"] == len(expected)
    assert load_priors(tmp_path / "run" / "priors" / f"{expected[0]}.npz").meta["mask_model"] == "labels+noise"
    subset = parse(["priors", str(tmp_path / "scene"), "--out", str(tmp_path / "run2"), "--from-labels",
                    str(tmp_path / "scene" / "labels"), "--prior-views", "2"])
    assert run(subset, Reporter("none"))["views"] == 2


def test_large_photos_get_priors_at_sam_size_not_their_own(tmp_path):
    # a phone's photos: masks kept at 4032x3024 would be 12 MB each, a hundred a view, all views
    # loaded for the mask field; SAM sees 1,024 px anyway. Without --downscale the priors are
    # made at the smallest whole-number downscale that brings the long side to 1,024 or less
    from maskfield.priors.command import PRIOR_LONG_SIDE, prior_downscales
    from maskfield.scene import load_scene

    write_scene(tmp_path / "big", n=3, h=1500, w=2100)
    stream = io.StringIO()
    args = parse(["priors", str(tmp_path / "big"), "--out", str(tmp_path / "run"), "--from-labels"])
    run(args, Reporter("jsonl", stream=stream))
    scene = load_scene(tmp_path / "big")
    assert set(prior_downscales(scene, scene.train_indices).values()) == {3.0}
    p = load_priors(tmp_path / "run" / "priors" / f"{scene.cameras[scene.train_indices[0]].name}.npz")
    assert p.masks.shape[1:] == (500, 700) and max(p.masks.shape[1:]) <= PRIOR_LONG_SIDE
    assert int(p.masks.sum()) > 0
    logs = [json.loads(line).get("message", "") for line in stream.getvalue().splitlines()]
    assert any("1/3 for 2100x1500" in m and "--downscale" in m for m in logs)
    # --downscale still decides where given; small images are used as they are
    full = parse(["priors", str(tmp_path / "big"), "--out", str(tmp_path / "run1"), "--from-labels", "--downscale", "1"])
    run(full, Reporter("none"))
    assert load_priors(next((tmp_path / "run1" / "priors").glob("*.npz"))).masks.shape[1:] == (1500, 2100)
    write_scene(tmp_path / "small", n=3)
    assert set(prior_downscales(load_scene(tmp_path / "small"), [0, 1, 2]).values()) == {1.0}


def test_priors_of_a_capture_of_two_sizes_are_made_at_each_views_own_size(tmp_path):
    # 12 MP photos beside video frames at half their size: each view is brought to SAM's 1,024 px
    # by its own factor (3 and 2), not the frames by the photos' 3 (350x250, a third of SAM's size)
    from conftest import halve_some_views

    from maskfield.scene import load_scene

    write_scene(tmp_path / "mixed", n=4, h=1500, w=2100)
    halve_some_views(tmp_path / "mixed")  # views 0 and 2
    for name in ("f0", "f2"):
        path = tmp_path / "mixed" / "labels" / f"{name}.png"
        img = Image.open(path)
        img.resize((img.width // 2, img.height // 2), Image.Resampling.NEAREST).save(path)
    stream = io.StringIO()
    run(parse(["priors", str(tmp_path / "mixed"), "--out", str(tmp_path / "run"), "--from-labels",
               "--holdout-every", "0"]), Reporter("jsonl", stream=stream))
    scene = load_scene(tmp_path / "mixed", holdout_every=0)
    shapes = {cam.name: load_priors(tmp_path / "run" / "priors" / f"{cam.name}.npz").masks.shape[1:]
              for cam in scene.cameras}
    assert shapes == {"f0": (375, 525), "f1": (500, 700), "f2": (375, 525), "f3": (500, 700)}
    logs = [json.loads(line).get("message", "") for line in stream.getvalue().splitlines()]
    assert any("1/3 for 2100x1500 (2 views), 1/2 for 1050x750 (2)" in m for m in logs), logs
    # the masks are the labels' own objects at that size, not an empty or shifted map
    for cam in scene.cameras:
        p = load_priors(tmp_path / "run" / "priors" / f"{cam.name}.npz")
        assert p.masks.any(axis=(1, 2)).all()


def test_command_errors(tmp_path):
    write_scene(tmp_path / "scene", n=3, labels=False)
    args = parse(["priors", str(tmp_path / "scene"), "--out", str(tmp_path / "run"), "--from-labels"])
    with pytest.raises(MaskFieldError, match="label folder not found"):
        run(args, Reporter("none"))
    (tmp_path / "scene" / "labels").mkdir()
    with pytest.raises(MaskFieldError, match="no label image"):
        run(args, Reporter("none"))
    # SAM without weights, offline: says which file to put where
    args = parse(["priors", str(tmp_path / "scene"), "--out", str(tmp_path / "run"), "--offline",
                  "--weights-dir", str(tmp_path / "weights"), "--device", "cpu"])
    with pytest.raises(MaskFieldError, match="sam_vit_b_01ec64.pth"):
        run(args, Reporter("none"))
