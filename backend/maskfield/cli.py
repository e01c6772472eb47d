"""The `maskfield` command line: fit, priors, train-field, train, segment, serve, evaluate, info."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .events import Cancelled, MaskFieldError, Reporter


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", choices=["tqdm", "jsonl", "none"], default="tqdm",
                   help="progress as tqdm bars (default), JSON lines on stdout for the Blender add-on, or none")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])


def _fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--downscale", type=float, default=None,
                   help="divide the image size by this (default: 1, or so the long side is <= 1600 px)")
    p.add_argument("--iterations", type=int, default=None, help="colour-fit steps (default: 3000 on CPU, 15000 on CUDA)")
    p.add_argument("--skip-missing", action="store_true", help="leave out frames whose images are missing")
    p.add_argument("--holdout-every", type=int, default=8, help="every Nth image is held out for PSNR (0: none)")
    p.add_argument("--renderer", choices=["auto", "gsplat", "torch"], default="auto")
    p.add_argument("--overwrite", action="store_true", help="replace a run of another scene in --out")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming a saved fit")
    p.add_argument("--max-gaussians", type=int, default=None)
    p.add_argument("--init-points", type=int, default=None, help="random seeds when the scene has no points")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskfield", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit 3D Gaussians to camera-posed photos (colour)")
    p.add_argument("scene", help="scene folder (transforms.json, transforms_train.json or COLMAP sparse/0)")
    p.add_argument("--out", required=True, help="run folder to write")
    _fit_options(p)
    _common(p)

    p = sub.add_parser("info", help="versions and the devices torch sees, as JSON")

    try:
        from .priors import command as priors_command

        priors_command.register(sub)
    except ImportError:  # the priors stage is optional at import time (its libraries are heavy)
        pass
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    reporter = Reporter(getattr(args, "events", "tqdm"))
    reporter.install_signal_handlers()
    try:
        handler = COMMANDS.get(args.command) or getattr(args, "handler", None)
        if handler is None:
            parser.error(f"unknown command {args.command}")
        result = handler(args, reporter)
        if result is not None and reporter.mode != "jsonl":
            print(json.dumps(result, indent=2, default=str))
        return 0
    except MaskFieldError as exc:
        reporter.error(str(exc), kind=exc.kind)
        return 2
    except Cancelled:
        reporter.emit("cancelled", message="cancelled; run the same command again to resume")
        if reporter.mode != "jsonl":
            print("cancelled; run the same command again to resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        reporter.error("interrupted", kind="cancelled")
        return 130


def run_fit(args, reporter: Reporter) -> dict:
    from .run import RunFolder, resolve_device
    from .scene import load_scene
    from .splats.fit import FitSettings, fit

    device = resolve_device(args.device)
    scene = load_scene(args.scene, skip_missing=args.skip_missing, holdout_every=args.holdout_every)
    if scene.skipped:
        reporter.log(f"left out {len(scene.skipped)} frame(s) whose images are missing: {', '.join(scene.skipped[:5])}"
                     + (" ..." if len(scene.skipped) > 5 else ""), level="warning")
    downscale = args.downscale if args.downscale else _auto_downscale(scene)
    run = RunFolder(args.out)
    run.claim(scene, args.scene, overwrite=args.overwrite)
    settings = FitSettings.for_device(device, iterations=args.iterations, downscale=downscale,
                                      renderer=args.renderer, max_gaussians=args.max_gaussians,
                                      init_points=args.init_points)
    reporter.log(f"fitting {len(scene.train_indices)} views at {scene.camera(0, downscale).width}x"
                 f"{scene.camera(0, downscale).height} on {device}, {settings.iterations} steps")
    result = fit(scene, run, settings, device=device, reporter=reporter, resume=not args.no_resume)
    summary = {k: result[k] for k in ("gaussians", "seconds", "test_psnr", "test_ssim", "test_views")}
    summary["ply"] = str(run.gaussians_ply)
    reporter.result("fit", **summary)
    return summary


def _auto_downscale(scene) -> float:
    long_side = max(scene.cameras[0].width, scene.cameras[0].height)
    return float(max(1, -(-long_side // 1600)))


def run_info(args, reporter: Reporter) -> dict:
    import torch

    from .run import versions
    from .splats.render import gsplat_available

    info = {"versions": versions(), "cuda": torch.cuda.is_available(),
            "mps": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
            "devices": ["cpu"]}
    if info["cuda"]:
        info["devices"].insert(0, "cuda")
        info["cuda_name"] = torch.cuda.get_device_name(0)
        info["cuda_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        info["gsplat_rasteriser"] = gsplat_available()
    if info["mps"]:
        info["devices"].insert(0, "mps")
    reporter.result("info", **info)
    return info


COMMANDS = {"fit": run_fit, "info": run_info}


if __name__ == "__main__":
    sys.exit(main())
