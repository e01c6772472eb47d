# SPDX-License-Identifier: GPL-3.0-or-later
"""The users'-scenes benchmark: build a scene, fit, train the mask field on SAM-like noisy
priors, evaluate on held-out views off the training trajectory, print one table.

    python tools/bench_scenes.py --out out/bench_scenes [--scenes bookshelf,room] [--seeds with,without]
        [--variants before,after] [--views 48] [--resolution 200x150] [--holdout-views 8]
        [--fit-iterations 3000] [--field-iterations 1500] [--field-resolution 96] [--json FILE]

For each scene (``tools/make_scenes.py``: world background, training rings at 20 and 40
degrees, held-out ring at 30 degrees and 0.85x the distance; ``room-inside``: the room with its
other two walls, filmed from its middle, ``make_scenes.py --layout inside``; ``kitchen-walk``:
the kitchen filmed walking past its front, ``--layout walk``) and each seeding
(surface points, or none), each fit variant is run:

- ``before``: the fit as it was: a fixed black background, no floater pruning;
- ``after``: this project's defaults (learned background colour, floater pruning, alpha
  penalised where the target is the background's colour);
- ``no-backdrop-alpha``: ``after`` without that penalty;
- ``learned-background``: ``after`` with one background colour learned whatever the capture
  (captures from inside are otherwise fitted over random colours);
- ``no-background-warmup``: ``after`` with that colour learned from the first step;
- ``random-init``: ``after`` with a seedless scene started from random points rather than
  points triangulated from its photos;
- ``box-fill``: ``after`` with the points added among the triangulated ones uniform in their
  box rather than on the surfaces between them.

then ``maskfield priors --from-labels --label-noise`` and ``maskfield train-field``, and
``maskfield evaluate`` on the held-out and on the training views. Columns: held-out colour
PSNR (mean and worst view), the largest floater share of a held-out view
(``evaluate.floater_share``), training-view mIoU, held-out mIoU / mBIoU, and the share of
visible background Gaussians that a prompt took; "3D" columns render a view's labels from
the per-Gaussian answer (``evaluate.render_gaussian_labels``) instead of decoding blended
features. Colour and segmentation side by side tell
geometry errors from segmentation errors. The scale is a parameter: small settings run in
minutes on 2 cores; the defaults are the issue's scene (48 views at 200x150).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "backend"))

VARIANTS = {
    "before": dict(background_mode="fixed", prune_near_camera=0.0, prune_angular_scale=float("inf")),
    "after": {},
    # the defaults without the alpha penalty on background-coloured pixels (FitSettings.backdrop_alpha_weight)
    "no-backdrop-alpha": dict(backdrop_alpha_weight=0.0),
    # the defaults without the transparency penalty where the target is not the background (surface_alpha_weight)
    "no-surface-alpha": dict(surface_alpha_weight=0.0),
    # one background colour learned whatever the capture (before captures from inside were fitted
    # over random colours: fit.looks_outward)
    "learned-background": dict(background_mode="learn"),
    # the defaults with the learned background colour free from the first step (FitSettings.background_warmup)
    "no-background-warmup": dict(background_warmup=0),
    # the defaults, but a scene without seed points starts from random points instead of points
    # triangulated from its photos (FitSettings.seedless_init)
    "random-init": dict(seedless_init="random"),
    # the defaults, but the points added among the triangulated ones uniform in their box rather
    # than on the surfaces between them (FitSettings.fill_mode)
    "box-fill": dict(fill_mode="box"),
}
# a scene name with one of these endings is that scene filmed with another layout: from its middle
# (make_scenes.py --layout inside) or walking past its front (--layout walk)
LAYOUT_ENDINGS = {"-inside": "inside", "-walk": "walk"}


def build_scene(name: str, folder: Path, args, points: bool) -> None:
    if (folder / "transforms.json").exists():
        return
    layout = []
    for ending, which in LAYOUT_ENDINGS.items():
        if name.endswith(ending):
            name, layout = name[: -len(ending)], ["--layout", which]
    cmd = [sys.executable, str(ROOT / "tools" / "make_scenes.py"), "--scene", name, *layout, "--out", str(folder),
           "--views", str(args.views), "--resolution", args.resolution, "--holdout-views", str(args.holdout_views),
           "--seed", str(args.seed), "--points", str(args.points), "--quiet"]
    if not points:
        cmd.append("--no-points")
    subprocess.run(cmd, check=True)


def run_variant(scene_dir: Path, run_dir: Path, variant: str, args) -> dict:
    from maskfield import cli
    from maskfield.evaluate import evaluate_run, prior_mask_iou
    from maskfield.events import Reporter
    from maskfield.run import RunFolder
    from maskfield.scene import load_scene
    from maskfield.segment import Segmenter
    from maskfield.splats.fit import FitSettings, fit

    reporter = Reporter(args.events)
    scene = load_scene(scene_dir)
    run = RunFolder(run_dir)
    run.claim(scene, scene_dir, overwrite=True)
    schedule = {k: getattr(args, k) for k in ("refine_start", "refine_every", "sh_degree_every") if getattr(args, k)}
    settings = FitSettings.for_device("cpu", iterations=args.fit_iterations, **schedule, **VARIANTS[variant])
    t0 = time.perf_counter()
    fitted = fit(scene, run, settings, device="cpu", reporter=reporter, resume=True)
    fit_s = time.perf_counter() - t0
    common = ["--events", args.events, "--device", "cpu"]
    if cli.main(["priors", str(scene_dir), "--out", str(run_dir), "--from-labels", "--label-noise",
                 str(args.noise_seed), *common]) != 0:
        raise SystemExit("priors failed")
    field = ["train-field", str(run_dir), "--field-iterations", str(args.field_iterations), *common]
    if args.field_resolution:
        field += ["--field-resolution", str(args.field_resolution)]
    if args.field_foreign_weight is not None:
        field += ["--field-foreign-weight", str(args.field_foreign_weight)]
    t1 = time.perf_counter()
    if cli.main(field) != 0:
        raise SystemExit("train-field failed")
    field_s = time.perf_counter() - t1
    seg = Segmenter(run_dir)
    labels = scene_dir / "labels"
    held = evaluate_run(seg, labels, views="test")
    train = evaluate_run(seg, labels, views="train", colour=False)
    held_3d = evaluate_run(seg, labels, views="test", colour=False, label_mode="gaussians")
    teachers = prior_mask_iou(run_dir / "priors", labels)  # the noisy masks' own best IoU, training views
    return {
        "variant": variant, "fit_s": round(fit_s, 1), "field_s": round(field_s, 1),
        "gaussians": fitted["gaussians"], "pruned": fitted.get("pruned"), "background": fitted.get("background"),
        "psnr": held["psnr"], "psnr_min": held["colour"]["psnr_min"], "floater_max": held["floater_share_max"],
        "train_miou": train["miou"], "test_miou": held["miou"], "test_mbiou": held["mbiou"],
        "train_mbiou": train["mbiou"], "test_miou_3d": held_3d["miou"], "test_mbiou_3d": held_3d["mbiou"],
        "gaussian_accuracy": held["gaussian_accuracy"],
        "background_labelled": held.get("background_gaussians_labelled"),
        "background_visible": held.get("visible_background_gaussians"),
        "iou": held["iou"], "names": held.get("names"), "biou": held["biou"],
        "prior_miou": teachers["miou"], "prior_iou": teachers["iou"],
    }


def fmt(v, pattern="{:.3f}"):
    return "-" if v is None else pattern.format(v)


def background_taken(row: dict) -> str:
    """The share of visible background Gaussians a prompt took, and how many of how many."""
    share, visible = row["background_labelled"], row.get("background_visible")
    if share is None or visible is None:
        return fmt(share, "{:.1%}")
    return f"{share:.1%} ({round(share * visible)} of {visible})"


def table(rows: list[dict]) -> str:
    head = ("scene", "seeds", "variant", "gaussians", "fit s", "PSNR", "PSNR min", "floater max",
            "prior mIoU", "train mIoU", "test mIoU", "test mBIoU", "test mIoU 3D", "test mBIoU 3D", "bg->seg")
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        lines.append(" | ".join([
            r["scene"], r["seeds"], r["variant"], f"{r['gaussians']:,}", f"{r['fit_s']:.0f}",
            fmt(r["psnr"], "{:.2f}"), fmt(r["psnr_min"], "{:.2f}"), fmt(r["floater_max"], "{:.2%}"),
            fmt(r.get("prior_miou")), fmt(r["train_miou"]), fmt(r["test_miou"]), fmt(r["test_mbiou"]),
            fmt(r["test_miou_3d"]), fmt(r["test_mbiou_3d"]), background_taken(r),
        ]))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--scenes", default="bookshelf,room")
    ap.add_argument("--seeds", default="with,without", help="with: surface seed points; without: random init")
    ap.add_argument("--variants", default="before,after", help=f"of {', '.join(VARIANTS)}")
    ap.add_argument("--views", type=int, default=48)
    ap.add_argument("--resolution", default="200x150")
    ap.add_argument("--holdout-views", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise-seed", type=int, default=0, help="seed of the SAM-like label noise")
    ap.add_argument("--fit-iterations", type=int, default=3000)
    ap.add_argument("--refine-start", type=int, default=None, help="densification schedule (small runs)")
    ap.add_argument("--refine-every", type=int, default=None)
    ap.add_argument("--sh-degree-every", type=int, default=None)
    ap.add_argument("--points", type=int, default=20000, help="surface seed points when seeded")
    ap.add_argument("--field-iterations", type=int, default=1500)
    ap.add_argument("--field-resolution", type=int, default=None, help="mask-field supervision long side")
    ap.add_argument("--field-foreign-weight", type=float, default=None,
                    help="the mask field's foreign term (default: on where the views do not share their objects)")
    ap.add_argument("--events", default="none", choices=["none", "tqdm"])
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:  # before minutes of building and fitting
        raise SystemExit(f"unknown variant {unknown[0]!r}; use {', '.join(VARIANTS)}")
    out = Path(args.out).resolve()
    rows = []
    for name in args.scenes.split(","):
        for seeds in args.seeds.split(","):
            tag = f"{name}-{args.views}v-{args.resolution}-{seeds}"
            scene_dir = out / "scenes" / tag
            build_scene(name, scene_dir, args, points=seeds == "with")
            for variant in args.variants.split(","):
                row = run_variant(scene_dir, out / "runs" / f"{tag}-{variant}", variant, args)
                row.update(scene=name, seeds=seeds)
                rows.append(row)
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(f"\n{args.views} training views on rings at 20/40 deg, {args.holdout_views} held out at 30 deg and "
          "0.85x distance (scenes named *-inside: on a circle in the middle looking outward, held out on a circle "
          "1.5x as wide; *-walk: two passes along the front at 20/40 deg, held out on a pass at 30 deg and 0.85x "
          f"the distance), {args.resolution}; fit {args.fit_iterations} steps, mask field {args.field_iterations} "
          "steps on SAM-like noisy label priors; floater = largest wrong-colour region of a held-out view; "
          "prior mIoU = the best IoU of any prior mask per object and training view (what the field is taught); "
          "bg->seg = visible background Gaussians given to a prompt\n")
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
