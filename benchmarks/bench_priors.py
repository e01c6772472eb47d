# SPDX-License-Identifier: GPL-3.0-or-later
"""2D priors: seconds per image for SAM masks and for CLIP mask embeddings.

    python benchmarks/bench_priors.py [--width 1920] [--height 1080] [--points-per-side N]
        [--sam-model vit_b|vit_l|vit_h] [--device auto|cpu|cuda] [--masks 100] [--weights-dir DIR]

Defaults: on the CPU, SAM ViT-B with a 16 x 16 point grid; on CUDA, ViT-H with 32 x 32.
Models have random weights unless --weights-dir holds the real ones (nothing is downloaded).
With random weights SAM's predicted IoU filters out most masks early, which makes the
decoder look cheaper than it is; the "keep-all" line (every filter open) is the upper
bound, and real weights land between the two. The embedding lines use ``--masks`` box
masks of random sizes at mask resolution, so they do not depend on what SAM kept.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from maskfield.priors.embeddings import ClipEmbedder, build_clip, load_clip
from maskfield.priors.masks import MaskSettings, SamMaskGenerator, build_sam, load_sam


def synthetic_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like test card: smooth gradient background and a few coloured shapes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / width, y / height, 0.5 + 0.2 * np.sin(x / 50)], axis=-1) * 180
    for _ in range(12):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.03, 0.15) * min(width, height)
        colour = rng.integers(0, 256, 3)
        if rng.random() < 0.5:
            inside = (x - cx) ** 2 + (y - cy) ** 2 < r ** 2
        else:
            inside = (np.abs(x - cx) < r) & (np.abs(y - cy) < 0.6 * r)
        image[inside] = colour
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def box_masks(count: int, height: int, width: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    masks = np.zeros((count, height, width), bool)
    for m in masks:
        h = int(rng.uniform(0.05, 0.6) * height)
        w = int(rng.uniform(0.05, 0.6) * width)
        y0 = int(rng.integers(0, height - h))
        x0 = int(rng.integers(0, width - w))
        m[y0:y0 + h, x0:x0 + w] = True
    return masks


def timed(fn, device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=1920)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sam-model", default=None, choices=("vit_b", "vit_l", "vit_h"))
    parser.add_argument("--points-per-side", type=int, default=None)
    parser.add_argument("--points-per-batch", type=int, default=64)
    parser.add_argument("--masks", type=int, default=100, help="masks to embed")
    parser.add_argument("--weights-dir", default=None, help="use real weights from here (no download)")
    args = parser.parse_args()

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    cuda = device.startswith("cuda")
    model_type = args.sam_model or ("vit_h" if cuda else "vit_b")
    points = args.points_per_side or (32 if cuda else 16)
    weights = "random weights"
    torch.manual_seed(0)
    if args.weights_dir:
        sam = load_sam(model_type, weights_dir=args.weights_dir, device=device, allow_download=False)
        clip = load_clip(weights_dir=args.weights_dir, device=device, allow_download=False)
        weights = f"weights from {args.weights_dir}"
    else:
        sam = build_sam(model_type, device=device)
        clip = build_clip(device=device)
    image = synthetic_image(args.width, args.height)
    threads = torch.get_num_threads()
    print(f"device {device} ({torch.cuda.get_device_name() if cuda else f'{threads} CPU threads'}), "
          f"SAM {model_type}, CLIP ViT-B-16, {weights}")

    paper = MaskSettings(points_per_side=points, points_per_batch=args.points_per_batch)
    open_all = MaskSettings(points_per_side=points, points_per_batch=args.points_per_batch, pred_iou_thresh=0.0,
                            stability_score_thresh=0.0, min_area=0)
    gen = SamMaskGenerator(sam, paper)
    prepared = gen.prepare(image)
    mh, mw = prepared.shape[:2]
    print(f"image {args.width}x{args.height} -> masks at {mw}x{mh}, {points}x{points} points, "
          f"{args.points_per_batch} per batch")

    _, t_encoder = timed(lambda: gen.predictor.set_image(prepared), device)
    gen._embedded = None  # let generate() run the encoder itself below
    result, t_paper = timed(lambda: gen.generate(image), device)
    t_paper_decoder = t_paper - t_encoder
    gen.settings = open_all
    result_all, t_all = timed(lambda: gen.generate(image), device)  # embedding reused
    print(f"sam image encoder:                        {t_encoder:8.2f} s")
    print(f"sam decoder + filters (paper thresholds): {t_paper_decoder:8.2f} s  -> {len(result)} masks")
    print(f"sam decoder + filters (keep-all):         {t_all:8.2f} s  -> {len(result_all)} masks")
    print(f"masks per image, paper thresholds:        {t_paper:8.2f} s")
    print(f"masks per image, keep-all (upper bound):  {t_encoder + t_all:8.2f} s")

    masks = box_masks(args.masks, mh, mw)
    dense = ClipEmbedder(clip, mode="dense")
    crop = ClipEmbedder(clip, mode="crop")
    dense.embed(image[:64, :64], masks[:1, :64, :64])  # warm-up
    _, t_dense = timed(lambda: dense.embed(image, masks), device)
    _, t_crop = timed(lambda: crop.embed(image, masks), device)
    print(f"clip dense MaskCLIP ({dense.dense_short_side} short side), {args.masks} masks: {t_dense:8.2f} s")
    print(f"clip masked crops, {args.masks} masks:                  {t_crop:8.2f} s")
    print(f"priors per image (paper thresholds, dense): {t_paper + t_dense:8.2f} s")


if __name__ == "__main__":
    main()
