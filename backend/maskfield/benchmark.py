# SPDX-License-Identifier: GPL-3.0-or-later
"""The published benchmarks, in their own layouts, with their own protocols.

``maskfield benchmark 3d-ovs DIR`` and ``maskfield benchmark lerf-mask DIR``: DIR is a data
set's root (one folder per scene) or one scene's folder. Each scene is trained (every stage
of ``maskfield train``, on every view, the test views included, as the data sets' and the
paper's protocols do), queried with the data set's own class names or text queries, and
scored against its ground-truth masks; one table per run prints the figures beside the
paper's own for MaskField (3DGS). Predicted masks are written as PNGs in the data set's
layout (``OUT/<scene>/predictions/<view>/<query>.png``) so that any outside script can
score them again.

3D-OVS (Liu et al., NeurIPS 2023), per scene::

    poses_bounds.npy  images/  [images_4/ ...]
    segmentations/classes.txt            one class name per line
    segmentations/<NN>/<class>.png       a binary mask per class (255 = the class) of the
                                         test view NN (its index among the sorted images)

  Protocol: every class name is a prompt and all compete, so each pixel takes one class
  (or none). IoU per class is summed over the test views (intersections and unions), mIoU
  is its mean over the classes, accuracy is the share of labelled pixels given their class.

LERF-Mask (Gaussian Grouping's masks for LERF scenes), per scene::

    images/  sparse/0/ (COLMAP)
    test_mask/<image stem>/<text query>.png   the query's mask in that view (> 128 = in)

  Protocol (Gaussian Grouping's ``eval_lerf_mask.py``): each query alone; IoU and boundary
  IoU (band of 0.02 x the image diagonal) per view and query, averaged per query over its
  views, then over the queries: mIoU and mBIoU.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .events import MaskFieldError, Reporter
from .evaluate import binary_iou, boundary_iou

LAYOUTS = ("3d-ovs", "lerf-mask")
# MaskField's own figures (3DGS variant, arXiv 2407.01220), in percent
PAPER = {
    ("3d-ovs", "sofa"): {"miou": 94.6, "accuracy": 98.7},
    ("lerf-mask", "figurines"): {"miou": 74.2, "mbiou": 71.6},
}


@dataclass
class BenchmarkScene:
    """One scene of a data set: where it is, its queries, and the ground truth per test view."""

    layout: str
    name: str
    root: Path
    queries: list[str]
    ground_truth: dict[str, dict[str, Path]]  # test view (image stem) -> query -> mask file


# --- layouts -----------------------------------------------------------------------------

def find_scenes(layout: str, root: Path, names: list[str] | None = None) -> list[BenchmarkScene]:
    """The scenes under ``root`` (or ``root`` itself) in the layout, optionally only ``names``."""
    reader = {"3d-ovs": read_3dovs_scene, "lerf-mask": read_lerf_mask_scene}.get(layout)
    if reader is None:
        raise MaskFieldError(f"unknown benchmark layout {layout!r}; use one of {', '.join(LAYOUTS)}.")
    root = Path(root)
    if not root.is_dir():
        raise MaskFieldError(f"benchmark folder {root} does not exist.")
    marker = "segmentations" if layout == "3d-ovs" else "test_mask"
    folders = [root] if (root / marker).is_dir() else sorted(p for p in root.iterdir() if (p / marker).is_dir())
    if names:
        unknown = sorted(set(names) - {p.name for p in folders})
        if unknown:
            raise MaskFieldError(f"no {layout} scene named {', '.join(unknown)} in {root}; it has "
                                 f"{', '.join(p.name for p in folders) or 'none'}.")
        folders = [p for p in folders if p.name in names]
    if not folders:
        raise MaskFieldError(f"{root} holds no {layout} scene: each scene folder needs {marker}/ "
                             "(see `maskfield benchmark --help` and the README for the layout).")
    return [reader(folder) for folder in folders]


def read_3dovs_scene(folder: Path) -> BenchmarkScene:
    seg_dir = folder / "segmentations"
    classes_file = seg_dir / "classes.txt"
    if not classes_file.exists():
        raise MaskFieldError(f"{classes_file} is missing; 3D-OVS lists a scene's class names there.")
    classes = sorted(line.strip() for line in classes_file.read_text(encoding="utf-8-sig").splitlines() if line.strip())
    if not classes:
        raise MaskFieldError(f"{classes_file} names no class.")
    images = _sorted_images(folder / "images")
    truth: dict[str, dict[str, Path]] = {}
    for view_dir in sorted(p for p in seg_dir.iterdir() if p.is_dir()):
        if not view_dir.name.isdigit() or int(view_dir.name) >= len(images):
            raise MaskFieldError(f"{view_dir} should be named by a test view's index among the {len(images)} "
                                 "sorted images (e.g. 00, 03).")
        masks = {c: view_dir / f"{c}.png" for c in classes}
        missing = [c for c, p in masks.items() if not p.exists()]
        if missing:
            raise MaskFieldError(f"{view_dir} lacks the mask of {', '.join(missing)} (one {'{class}'}.png per "
                                 "class of classes.txt).")
        truth[images[int(view_dir.name)].stem] = masks
    if not truth:
        raise MaskFieldError(f"{seg_dir} has no test view folder (segmentations/<NN>/).")
    return BenchmarkScene("3d-ovs", folder.name, folder, classes, truth)


def read_lerf_mask_scene(folder: Path) -> BenchmarkScene:
    truth: dict[str, dict[str, Path]] = {}
    queries: set[str] = set()
    for view_dir in sorted(p for p in (folder / "test_mask").iterdir() if p.is_dir()):
        masks = {p.stem: p for p in sorted(view_dir.glob("*.png"))}
        if masks:
            truth[view_dir.name] = masks
            queries |= set(masks)
    if not truth:
        raise MaskFieldError(f"{folder / 'test_mask'} has no view folder with query masks "
                             "(test_mask/<image name>/<query>.png).")
    return BenchmarkScene("lerf-mask", folder.name, folder, sorted(queries), truth)


def _sorted_images(folder: Path) -> list[Path]:
    from .scene.loaders import sorted_images

    if not folder.is_dir():
        raise MaskFieldError(f"{folder} does not exist; the benchmark's scene needs its photos there.")
    return sorted_images(folder)


def read_mask(path: Path) -> np.ndarray:
    """A ground-truth mask as bool: grey level > 128 (both data sets store 0 / 255)."""
    from PIL import Image

    try:
        return np.asarray(Image.open(path).convert("L")) > 128
    except OSError as exc:
        raise MaskFieldError(f"cannot read the mask {path}: {exc}") from None


# --- protocols ---------------------------------------------------------------------------

def view_camera(scene, view: str, shape: tuple[int, int]):
    """The scene's camera of ``view`` at the ground truth's resolution."""
    names = [c.name for c in scene.cameras]
    if view not in names:
        raise MaskFieldError(f"the ground truth names view {view!r}, which is not among the scene's images.")
    camera = scene.cameras[names.index(view)]
    return camera.scaled(camera.width / shape[1])


def predict(seg, camera, matches, shape) -> np.ndarray:
    """Per-pixel prompt index (-1 none) at the ground truth's shape."""
    from PIL import Image

    labels, _ = seg.render_labels(camera, matches)
    if labels.shape != tuple(shape):  # a rounding pixel: nearest, as the data sets' scripts resize
        labels = np.asarray(Image.fromarray(labels.astype(np.int32)).resize((shape[1], shape[0]), Image.NEAREST))
    return labels


def score_3dovs(seg, scene, bench: BenchmarkScene, predictions: Path) -> dict:
    matches = seg.match(bench.queries)
    inter = np.zeros(len(bench.queries))
    union = np.zeros(len(bench.queries))
    correct = labelled = 0
    for view, files in bench.ground_truth.items():
        gt_masks = np.stack([read_mask(files[c]) for c in bench.queries])
        gt = np.where(gt_masks.any(0), gt_masks.argmax(0), -1)  # -1: no class, not scored
        pred = predict(seg, view_camera(scene, view, gt.shape), matches, gt.shape)
        scored = gt >= 0
        correct += int(np.count_nonzero((pred == gt) & scored))
        labelled += int(np.count_nonzero(scored))
        for c, query in enumerate(bench.queries):
            p, g = (pred == c) & scored, gt == c
            inter[c] += np.count_nonzero(p & g)
            union[c] += np.count_nonzero(p | g)
            write_mask(predictions / view / f"{query}.png", pred == c)
    per_class = {q: (float(inter[c] / union[c]) if union[c] else None) for c, q in enumerate(bench.queries)}
    valid = [v for v in per_class.values() if v is not None]
    return {"miou": float(np.mean(valid)) if valid else None,
            "accuracy": correct / labelled if labelled else None,
            "per_query_iou": per_class, "views": len(bench.ground_truth)}


def score_lerf_mask(seg, scene, bench: BenchmarkScene, predictions: Path) -> dict:
    ious: dict[str, list[float]] = {q: [] for q in bench.queries}
    bious: dict[str, list[float]] = {q: [] for q in bench.queries}
    for view, files in bench.ground_truth.items():
        for query, path in files.items():
            gt = read_mask(path)
            pred = predict(seg, view_camera(scene, view, gt.shape), seg.match([query]), gt.shape) == 0
            write_mask(predictions / view / f"{query}.png", pred)
            # both empty: the reference script divides 0 by 0 (NaN); we score such a pair as a hit
            iou = binary_iou(pred, gt)
            biou = boundary_iou(pred, gt)
            ious[query].append(1.0 if iou is None else iou)
            bious[query].append(1.0 if biou is None else biou)
    per_iou = {q: float(np.mean(v)) for q, v in ious.items() if v}
    per_biou = {q: float(np.mean(v)) for q, v in bious.items() if v}
    return {"miou": float(np.mean(list(per_iou.values()))), "mbiou": float(np.mean(list(per_biou.values()))),
            "per_query_iou": per_iou, "per_query_biou": per_biou, "views": len(bench.ground_truth)}


SCORERS = {"3d-ovs": score_3dovs, "lerf-mask": score_lerf_mask}


def write_mask(path: Path, mask: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.png")
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8)).save(tmp)
    os.replace(tmp, path)


# --- the command -------------------------------------------------------------------------

def run_benchmark(args: argparse.Namespace, reporter: Reporter) -> dict:
    """Train, query and score every scene; print one table beside the paper's figures."""
    from .cli import run_train
    from .run import resolve_device, write_json_atomic
    from .scene import load_scene
    from .segment import Segmenter

    scenes = find_scenes(args.layout, Path(args.dir), args.scene or None)
    out = Path(args.out)
    device = resolve_device(args.device)
    results = []
    for bench in scenes:
        run_dir = out / bench.name
        reporter.log(f"{args.layout} {bench.name}: {len(bench.queries)} queries, {len(bench.ground_truth)} test "
                     "views; training on every view")
        train_args = argparse.Namespace(**{**vars(args), "scene": str(bench.root), "out": str(run_dir),
                                           "holdout_every": 0})
        run_train(train_args, reporter)
        scene = load_scene(bench.root, skip_missing=True, holdout_every=0, images=args.images)
        seg = Segmenter(run_dir, device=device, weights_dir=args.weights_dir, allow_download=not args.offline)
        metrics = SCORERS[args.layout](seg, scene, bench, run_dir / "predictions")
        results.append({"scene": bench.name, **metrics, "paper": PAPER.get((args.layout, bench.name))})
    summary = {"layout": args.layout, "scenes": results, "table": format_table(args.layout, results)}
    write_json_atomic(out / "benchmark.json", summary)
    if reporter.mode != "jsonl":
        print(summary["table"])
    reporter.result("benchmark", **{k: v for k, v in summary.items() if k != "table"})
    return {"layout": args.layout, "out": str(out / "benchmark.json"),
            "scenes": [{k: r[k] for k in r if not k.startswith("per_")} for r in results]}


def format_table(layout: str, results: list[dict]) -> str:
    columns = ["miou", "accuracy"] if layout == "3d-ovs" else ["miou", "mbiou"]
    titles = {"miou": "mIoU", "accuracy": "accuracy", "mbiou": "mBIoU"}
    head = "| scene | " + " | ".join(f"{titles[c]} (ours) | {titles[c]} (paper)" for c in columns) + " |"
    lines = [f"{layout}: MaskField here vs the paper's MaskField (3DGS), percent", head,
             "|" + "---|" * (1 + 2 * len(columns))]
    for r in results:
        cells = []
        for c in columns:
            ours = r.get(c)
            paper = (r.get("paper") or {}).get(c)
            cells += ["—" if ours is None or math.isnan(ours) else f"{100 * ours:.1f}",
                      "—" if paper is None else f"{paper:.1f}"]
        lines.append(f"| {r['scene']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
