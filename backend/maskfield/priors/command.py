# SPDX-License-Identifier: GPL-3.0-or-later
"""``maskfield priors``: per-image masks and embeddings, and the Python API behind it.

    maskfield priors SCENE --out RUN [--from-labels [DIR]] [--label-noise [SEED]]
        [--prior-views N] [--sam-model vit_b|vit_l|vit_h] [--points-per-side N]
        [--points-per-batch N] [--weights-dir DIR] [--offline] [--embedding dense|crop]
        [--downscale N] [--force] [--events jsonl] [--device auto|cpu|cuda|mps]

Writes ``RUN/priors/<image stem>.npz`` (format in ``store.py`` / docs/contracts.md) for the
training views, or an evenly spread subset of ``--prior-views N`` of them. Files whose
image, models and settings are unchanged are kept (``--force`` recomputes them).

Without ``--from-labels``: SAM masks (``masks.py``) and CLIP embeddings (``embeddings.py``);
the SAM model defaults to ViT-H on a CUDA device with >= 12 GB, else ViT-B. With
``--from-labels`` (``DIR`` defaults to ``SCENE/labels``): masks from the instance-id PNGs
and ``names:hash-512`` embeddings of the object names, exact, or SAM-like with
``--label-noise [SEED]`` (``from_labels.LabelNoise``).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..events import MaskFieldError, Reporter
from ..run import resolve_device
from .from_labels import (
    LabelNoise,
    find_label_file,
    label_settings,
    load_object_names,
    priors_from_label_map,
    read_label_map,
    resize_label_map,
)
from .store import PriorsCache, Priors, as_rgb_uint8, image_sha256, make_meta
from .text import HASH_ENCODER

ImageSource = np.ndarray | Callable[[], np.ndarray]


# SAM resizes every image to 1,024 px on its long side and predicts masks at a quarter of that;
# CLIP sees 224 px. Masks kept at a photo's full size (4032x3024 from a phone: 12 MB a mask,
# a hundred masks a view) add no detail and, all views loaded for the mask field, no memory
# holds them. The field supervises at 200 px (FieldSettings.supervision_long_side).
PRIOR_LONG_SIDE = 1024


def _settings_dict(settings: Any) -> dict[str, Any]:
    if settings is None:
        return {}
    if hasattr(settings, "to_dict"):
        return settings.to_dict()
    return dict(settings)


def _quiet_reporter(reporter: Reporter | None) -> Reporter:
    return reporter if reporter is not None else Reporter("none")


# --- Python API ----------------------------------------------------------------------------------

def compute_priors(
    images: Iterable[tuple[str, ImageSource]],
    out_dir: str | Path,
    mask_generator,
    embedder,
    *,
    reporter: Reporter | None = None,
    use_cache: bool = True,
    extra_settings: dict[str, Any] | None = None,
    total: int | None = None,
) -> dict[str, Any]:
    """Masks and embeddings for each ``(name, image)``, one ``out_dir/<name>.npz`` each.

    ``image`` is an H x W x C array (uint8, uint16, float in [0, 1]; grey, RGB or RGBA) or a
    function returning one, called when its turn comes (so the images need not all sit in
    memory; each is read even when its file is reused, since its hash decides that).
    ``mask_generator`` has ``name``, ``settings`` and ``generate(image, check_cancel=None)
    -> MaskSet`` (``masks.SamMaskGenerator``); ``embedder`` has ``name``, ``settings``,
    ``dim`` and ``embed(image, masks) -> (M, D)`` (``embeddings.ClipEmbedder``). Files whose
    image hash, model names and settings match are reused. Returns a summary dict.
    """
    reporter = _quiet_reporter(reporter)
    cache = PriorsCache(out_dir)
    items = list(images) if total is None else images
    total = len(items) if total is None else total  # type: ignore[arg-type]
    settings = {"masks": _settings_dict(mask_generator.settings),
                "embedding": _settings_dict(embedder.settings), **(extra_settings or {})}
    summary = {"views": 0, "computed": 0, "cached": 0, "empty": 0, "masks": 0,
               "mask_model": mask_generator.name, "embedding_model": embedder.name, "files": []}
    start = time.perf_counter()
    with reporter.progress("priors", total, desc="priors") as bar:
        for name, source in items:
            reporter.check_cancel()
            image = source() if callable(source) else source
            image = as_rgb_uint8(image, name=f"image {name}")
            sha = image_sha256(image)
            priors, reason = (cache.lookup(name, sha, mask_generator.name, embedder.name, settings)
                              if use_cache else (None, "recompute requested"))
            if priors is not None:
                summary["cached"] += 1
            else:
                if reason not in ("not computed yet", "recompute requested"):
                    reporter.log(f"{name}: recomputing priors ({reason})")
                found = mask_generator.generate(image, check_cancel=reporter.check_cancel)
                reporter.check_cancel()
                embeddings = embedder.embed(image, found.masks)
                if len(found) == 0:
                    reporter.log(f"{name}: no masks passed the filters; writing an empty priors file", level="warning")
                meta = make_meta(name, sha, mask_generator.name, embedder.name, settings)
                priors = Priors(masks=found.masks, embeddings=embeddings, granularity=found.granularity,
                                scores=found.scores, image_size=tuple(image.shape[:2]), meta=meta)
                cache.store(name, priors)
                summary["computed"] += 1
            _count_view(summary, cache, name, priors, bar)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


def compute_label_priors(
    views: Iterable[tuple[str, str | Path | np.ndarray, tuple[int, int] | None]],
    names: dict[int, str],
    out_dir: str | Path,
    *,
    noise: LabelNoise | None = None,
    reporter: Reporter | None = None,
    use_cache: bool = True,
    transform: Callable[[str, np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Priors from instance-id maps: ``(name, label file or array, (H, W) or None)`` per view.

    ``transform(name, labels)`` may adjust each resized map (the command undistorts it).
    """
    reporter = _quiet_reporter(reporter)
    cache = PriorsCache(out_dir)
    items = list(views)
    mask_model = "labels+noise" if noise is not None else "labels"
    settings = label_settings(names, noise)
    summary = {"views": 0, "computed": 0, "cached": 0, "empty": 0, "masks": 0,
               "mask_model": mask_model, "embedding_model": HASH_ENCODER, "files": []}
    start = time.perf_counter()
    with reporter.progress("priors", len(items), desc="priors") as bar:
        for name, source, size in items:
            reporter.check_cancel()
            labels = read_label_map(source) if not isinstance(source, np.ndarray) else np.asarray(source, np.int64)
            if size is not None:
                labels = resize_label_map(labels, int(size[0]), int(size[1]))
            if transform is not None:
                labels = transform(name, labels)
            sha = image_sha256(labels.astype(np.int64))
            priors, _reason = (cache.lookup(name, sha, mask_model, HASH_ENCODER, settings)
                               if use_cache else (None, ""))
            if priors is None:
                priors = priors_from_label_map(labels, names, name, noise=noise)
                cache.store(name, priors)
                summary["computed"] += 1
                if priors.count == 0:
                    reporter.log(f"{name}: no labelled objects in view; writing an empty priors file", level="warning")
            else:
                summary["cached"] += 1
            _count_view(summary, cache, name, priors, bar)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary


# --- command line ----------------------------------------------------------------------------------

def register(subparsers, parents: Sequence[argparse.ArgumentParser] = ()) -> argparse.ArgumentParser:
    """Add ``priors`` to ``subparsers``; ``run(args, reporter)`` is set as ``args.func``.

    ``--events`` and ``--device`` are added here unless ``parents`` are given (then the
    parents are expected to carry them); their defaults are suppressed so that values given
    to the main parser are not overwritten.
    """
    p = subparsers.add_parser(
        "priors", parents=list(parents),
        help="compute per-image SAM masks and CLIP embeddings (or priors from labels)",
        description="Compute the 2D priors of a scene's training views: SAM masks at three granularities "
                    "with one CLIP embedding each, or masks from instance-label renders.",
    )
    p.add_argument("scene", help="scene folder (transforms.json, transforms_train.json or COLMAP sparse/0)")
    p.add_argument("--out", required=True, help="run folder; priors go to RUN/priors/")
    p.add_argument("--from-labels", nargs="?", const="", default=None, metavar="DIR",
                   help="make priors from instance-label PNGs and labels/objects.json (DIR defaults to SCENE/labels)")
    p.add_argument("--label-noise", nargs="?", const=0, default=None, type=int, metavar="SEED",
                   help="with --from-labels: SAM-like noisy masks (split parts, merged neighbours, missing masks, "
                        "jittered boundaries), deterministic for a SEED (default 0)")
    p.add_argument("--prior-views", type=int, default=None, metavar="N",
                   help="use an evenly spread subset of N training views (default: all)")
    p.add_argument("--sam-model", choices=("vit_b", "vit_l", "vit_h"), default=None,
                   help="SAM backbone (default: vit_h on a CUDA GPU with >= 12 GB, else vit_b)")
    p.add_argument("--points-per-side", type=int, default=32, metavar="N", help="SAM point grid (N x N, default 32)")
    p.add_argument("--points-per-batch", type=int, default=64, metavar="N", help="point prompts per SAM batch")
    p.add_argument("--weights-dir", default=None, metavar="DIR", help="folder holding (or receiving) the model weights")
    p.add_argument("--offline", action="store_true", help="never download weights; fail with what to put where")
    p.add_argument("--embedding", choices=("dense", "crop"), default="dense",
                   help="dense MaskCLIP features averaged over the mask (default), or the CLIP embedding of a masked crop")
    p.add_argument("--downscale", type=float, default=None, metavar="N",
                   help="compute on images downscaled by N (default: the smallest whole number that brings the "
                        f"long side to at most {PRIOR_LONG_SIDE} px, SAM's own input size)")
    p.add_argument("--images", default=None, metavar="FOLDER",
                   help="LLFF scenes: the image folder to use (images, images_4, ...)")
    p.add_argument("--force", action="store_true", help="recompute every view, ignoring files already there")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out frames whose images are missing or cannot be read (as the fit did)")
    p.add_argument("--holdout-every", type=int, default=8, metavar="N",
                   help="every Nth image is held out, as in the fit (default 8); held-out views get no priors")
    if not parents:
        p.add_argument("--events", choices=("tqdm", "jsonl", "none"), default=argparse.SUPPRESS,
                       help="progress as tqdm bars (default) or JSON lines on stdout")
        p.add_argument("--device", choices=("auto", "cpu", "cuda", "mps"), default=argparse.SUPPRESS,
                       help="torch device (default auto)")
    p.set_defaults(func=run)
    return p


def _count_view(summary: dict, cache: PriorsCache, name: str, priors: Priors, bar) -> None:
    """Add one finished view (computed or kept) to the stage summary and the progress bar."""
    summary["views"] += 1
    summary["masks"] += priors.count
    summary["empty"] += int(priors.count == 0)
    summary["files"].append(str(cache.path_for(name)))
    bar.update(1, masks=priors.count)


def prior_downscales(scene, views: Sequence[int]) -> dict[int, float]:
    """Each view's smallest whole-number downscale that brings its own long side to at most
    ``PRIOR_LONG_SIDE`` (1: smaller images are used as they are). By view, as the fit's: where a
    capture mixes 12 MP photos and 1080p video frames, the frames are not brought to a quarter
    of SAM's size by the photos' factor."""
    from ..scene.cameras import whole_downscale

    return {i: whole_downscale([scene.cameras[i]], PRIOR_LONG_SIDE) for i in views}


def _downscales_text(scene, factors: dict[int, float]) -> str:
    """"1/3 for 2100x1500", or by size where views differ: "1/4 for 4032x3024 (30 views), 1/2 for 1920x1080 (10)"."""
    from collections import Counter

    counts = sorted(Counter((scene.cameras[i].width, scene.cameras[i].height, factors[i]) for i in factors).items(),
                    key=lambda item: (-item[1], -item[0][2]))  # commonest first, then the largest factor
    if len(counts) == 1:
        (w, h, f), _ = counts[0]
        return f"1/{f:g} for {w}x{h}"
    return ", ".join(f"1/{f:g} for {w}x{h} ({n}{' views' if k == 0 else ''})" for k, ((w, h, f), n) in enumerate(counts))


def spread_subset(indices: Sequence[int], count: int | None) -> list[int]:
    """``count`` indices spread evenly over ``indices`` (first and last included), in order."""
    indices = list(indices)
    if count is None or count >= len(indices):
        return indices
    if count < 1:
        raise MaskFieldError("--prior-views must be at least 1")
    if count == 1:
        return [indices[len(indices) // 2]]
    picks = np.unique(np.round(np.linspace(0, len(indices) - 1, count)).astype(int))
    return [indices[i] for i in picks]


def _name_other_missing_weights(exc: MaskFieldError, weights_dir) -> None:
    """SAM's file is missing or unusable: say in the same message whether CLIP's is missing too,
    so that one trip to the downloads fetches everything."""
    from .embeddings import CLIP_WEIGHTS
    from .weights import missing_checkpoints, missing_weights_message

    if exc.kind != "weights":
        return
    others = missing_checkpoints([CLIP_WEIGHTS[("ViT-B-16", "openai")]], weights_dir)
    if others:
        raise MaskFieldError(f"{exc}\n\nThe CLIP weights are missing too.\n"
                             + missing_weights_message(others, weights_dir), kind="weights") from exc


def run(args: argparse.Namespace, reporter: Reporter, scene=None) -> dict[str, Any]:
    """The ``priors`` command. Returns (and reports as a ``result`` event) the summary.
    ``train`` hands its ``scene`` over, loaded once with its --skip-missing and --holdout-every,
    so that the priors are made for exactly the views the fit trained on."""
    from ..scene import load_scene

    if scene is None:
        scene = load_scene(args.scene, skip_missing=getattr(args, "skip_missing", False),
                           holdout_every=getattr(args, "holdout_every", 8), images=getattr(args, "images", None))
    views = spread_subset(scene.train_indices or list(range(len(scene.cameras))), getattr(args, "prior_views", None))
    if not views:
        raise MaskFieldError(f"the scene {args.scene} has no training views")
    given = getattr(args, "downscale", None)
    if given is not None and float(given) <= 0:
        raise MaskFieldError("--downscale must be positive")
    factors = ({i: float(given) for i in views} if given is not None else prior_downscales(scene, views))
    if given is None and max(factors.values()) > 1:
        reporter.log(f"priors on images downscaled ({_downscales_text(scene, factors)}): SAM sees at most "
                     f"{PRIOR_LONG_SIDE} px a side anyway, and full-size masks would fill the memory "
                     "(--downscale to choose one factor for all)")
    # recorded with the priors: one number where every view has it (as before), else the rule
    recorded = factors[views[0]] if len(set(factors.values())) == 1 else f"each view to {PRIOR_LONG_SIDE} px"
    out_dir = Path(args.out) / "priors"
    use_cache = not getattr(args, "force", False)
    reporter.log(f"priors for {len(views)} of {len(scene.cameras)} views -> {out_dir}")

    if getattr(args, "from_labels", None) is not None:
        labels_dir = Path(args.from_labels) if args.from_labels else Path(args.scene) / "labels"
        if not labels_dir.is_dir():
            raise MaskFieldError(f"label folder not found: {labels_dir}. It must hold <image stem>.png instance "
                                 "maps and objects.json (the add-on writes them with its renders).")
        names = load_object_names(labels_dir)
        if not names:
            reporter.log(f"{labels_dir / 'objects.json'} is missing or empty; objects are named 'object <id>'",
                         level="warning")
        noise_seed = getattr(args, "label_noise", None)
        noise = LabelNoise(seed=noise_seed) if noise_seed is not None else None
        items, missing = [], []
        for i in views:
            cam = scene.camera(i, factors[i])
            path = find_label_file(labels_dir, cam.name)
            if path is None:
                missing.append(cam.name)
            items.append((cam.name, path, (cam.height, cam.width)))
        if missing:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise MaskFieldError(f"no label image in {labels_dir} for {len(missing)} view(s): {shown}. "
                                 "Render the labels for every view, or run without --from-labels.")
        # Label maps follow the photos: resized, and undistorted where the photos are.
        distorted = {scene.cameras[i].name: scene.cameras[i].scaled(factors[i])
                     for i in views if scene.cameras[i].has_distortion}

        def undistort(name: str, labels: np.ndarray) -> np.ndarray:
            if name not in distorted:
                return labels
            from ..scene import undistort_image

            return undistort_image(labels, distorted[name], order=0)

        reporter.log("embeddings: names:hash-512 (hashed object names, not CLIP)"
                     + (f"; SAM-like label noise, seed {noise.seed}" if noise else ""))
        summary = compute_label_priors(items, names, out_dir, noise=noise, reporter=reporter,
                                       use_cache=use_cache, transform=undistort if distorted else None)
    else:
        from .embeddings import ClipEmbedder, load_clip
        from .masks import MaskSettings, SamMaskGenerator, default_sam_model, load_sam

        device = resolve_device(getattr(args, "device", None) or "auto")
        model_type = args.sam_model or default_sam_model(device)
        settings = MaskSettings(points_per_side=args.points_per_side, points_per_batch=args.points_per_batch)
        allow_download = not getattr(args, "offline", False)
        reporter.log(f"loading SAM {model_type} and CLIP ViT-B-16 on {device}")
        try:
            sam = load_sam(model_type, weights_dir=args.weights_dir, device=device,
                           allow_download=allow_download, reporter=reporter)
        except MaskFieldError as exc:
            _name_other_missing_weights(exc, args.weights_dir)
            raise
        clip = load_clip("ViT-B-16", "openai", weights_dir=args.weights_dir, device=device,
                         allow_download=allow_download, reporter=reporter)
        generator = SamMaskGenerator(sam, settings, name=f"sam:{model_type}")
        embedder = ClipEmbedder(clip, mode=args.embedding, name="open_clip:ViT-B-16:openai")
        def loader(i: int) -> Callable[[], np.ndarray]:
            def load() -> np.ndarray:
                image = scene.load_image(i, factors[i])
                scene.forget_image(i, factors[i])  # the scene keeps images; priors need each once
                return image
            return load

        images = [(scene.cameras[i].name, loader(i)) for i in views]
        summary = compute_priors(images, out_dir, generator, embedder, reporter=reporter, use_cache=use_cache,
                                 extra_settings={"downscale": recorded})
    summary["dir"] = str(out_dir)
    files = summary.pop("files")
    reporter.log(f"priors: {summary['views']} views, {summary['computed']} computed, {summary['cached']} kept, "
                 f"{summary['masks']} masks, {summary['empty']} empty views")
    reporter.result("priors", **summary)
    summary["files"] = files
    return summary
