"""The `maskfield` command line: fit, priors, train-field, train, segment, serve, evaluate, info."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .events import Cancelled, MaskFieldError, Reporter, write_crash_log


def _number(kind, low=None, high=None, low_open=False, what=""):
    """An argparse type that refuses values outside [low, high] with the allowed range."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {'whole ' if kind is int else ''}number") from None
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if too_low or too_high or (kind is float and value != value):
            if high is None:
                allowed = f"{'more than' if low_open else 'at least'} {low}"
            else:
                allowed = f"{'more than' if low_open else 'from'} {low} {'and at most' if low_open else 'to'} {high}"
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed: {allowed}{what}")
        return value
    parse.__name__ = kind.__name__
    return parse


POSITIVE_INT = _number(int, 1)
POSITIVE_FLOAT = _number(float, 0, low_open=True)
NON_NEGATIVE_FLOAT = _number(float, 0)
PROBABILITY = _number(float, 0, 1, low_open=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", choices=["tqdm", "jsonl", "none"], default="tqdm",
                   help="progress as tqdm bars (default), JSON lines on stdout for the Blender add-on, or none")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])


def _fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--downscale", type=POSITIVE_FLOAT, default=None,
                   help="divide the image size by this (default: 1, or a whole number that brings the long side "
                        "to at most 1600 px on CUDA, 256 px on a CPU or MPS)")
    p.add_argument("--max-size", type=_number(int, 32, 100_000), default=None, metavar="PX",
                   help="instead of --downscale: the smallest whole-number downscale that brings each image's long "
                        "side to at most PX (default 1600 on CUDA, 256 on a CPU or MPS)")
    p.add_argument("--iterations", type=POSITIVE_INT, default=None, help="colour-fit steps (default: 3000 on CPU, 15000 on CUDA)")
    p.add_argument("--skip-missing", action="store_true",
                   help="leave out frames whose images are missing or cannot be read (checked up front)")
    p.add_argument("--images", default=None, metavar="FOLDER",
                   help="LLFF scenes: the image folder to use (images, images_4, images_8; default images)")
    p.add_argument("--holdout-every", type=_number(int, 0), default=8, help="every Nth image is held out for PSNR (0: none)")
    p.add_argument("--renderer", choices=["auto", "gsplat", "cpu", "torch"], default="auto",
                   help="auto: gsplat on CUDA, the compiled CPU renderer on the CPU, on MPS whichever of MPS "
                        "and the compiled CPU renderer renders a test view faster; torch: the PyTorch reference")
    p.add_argument("--overwrite", action="store_true", help="replace a run of another scene in --out")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming a saved fit")
    p.add_argument("--max-gaussians", type=POSITIVE_INT, default=None,
                   help="densification stops growing past this many Gaussians (at least the seed count)")
    p.add_argument("--seedless-init", choices=["triangulate", "random"], default=None,
                   help="a scene without points starts from points triangulated from its photos' features "
                        "(default; random points if too few are found) or from --init-points random ones")
    p.add_argument("--seedless-fill", choices=["surfaces", "box"], default=None,
                   help="where the 5000 points added to the triangulated ones go: on the surfaces between them "
                        "(default) or uniform in their box")
    p.add_argument("--init-points", type=POSITIVE_INT, default=None,
                   help="random seeds when the scene has no points and --seedless-init is random (default 30000)")
    p.add_argument("--background", choices=["auto", "learn", "random", "fixed"], default=None,
                   help="behind the Gaussians while fitting: auto (random colours where images have alpha, else a "
                        "learned colour), learn, random, or fixed (the scene's)")
    p.add_argument("--backdrop-alpha", type=_number(float, 0), default=None,
                   help="with a learned background: weight of the penalty on Gaussians painting pixels of the "
                        "background's own colour (default 0.05; 0 lets them stay)")
    p.add_argument("--surface-alpha", type=_number(float, 0), default=None,
                   help="with a learned background: weight of the penalty on see-through pixels whose colour is "
                        "clearly not the background's (default 0.05; 0 turns it off)")
    p.add_argument("--surface-alpha-inset", type=_number(int, 0, 64), default=None, metavar="PX",
                   help="with --surface-alpha: a pixel weighs the least of its neighbours up to PX away, so the "
                        "pixels at a silhouette's edge stay free (default 1; 0: every pixel as it is)")


def _field_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--field-iterations", type=POSITIVE_INT, default=None, help="mask-field steps (default 5000 CUDA, 1500 CPU)")
    p.add_argument("--field-resolution", type=_number(int, 8, 8192), default=None, help="long side of the supervised feature image")
    p.add_argument("--queries", type=_number(int, 1, 100_000), default=None, help="number of scene-level queries (default 240)")
    p.add_argument("--field-lr", type=POSITIVE_FLOAT, default=None, help="learning rate of the per-Gaussian features")
    p.add_argument("--field-lr-final", type=_number(float, 0, 1, low_open=True), default=None, metavar="SHARE",
                   help="the mask field's learning rates fall steadily to this share of their start by the last "
                        "step (default 0.1; 1: constant)")
    p.add_argument("--dice-weight", type=NON_NEGATIVE_FLOAT, default=None, help="weight of the dice loss (default 1.0; paper 0.05)")
    p.add_argument("--gaussian-weight", type=NON_NEGATIVE_FLOAT, default=None,
                   help="weight of the per-Gaussian mask loss that keeps 3D labels consistent (default 1.0; 0 = paper)")
    p.add_argument("--mixed-queries", action="store_true",
                   help="let a query take both one object's masks and SAM's merged groups (as the paper; by "
                        "default a query takes one kind only, README)")
    p.add_argument("--uncalibrated-queries", action="store_true",
                   help="keep each query's logits as trained, without the per-query offset fitted to its "
                        "masks after training (as the paper; README, 'Calibrated queries')")
    p.add_argument("--field-average-last", type=_number(float, 0, 1), default=None,
                   help="keep the mean of the mask field over this last share of its steps (default 0.3; 0: the "
                        "last step, as the paper)")
    p.add_argument("--field-edge-weight", type=_number(float, 0, 1), default=None,
                   help="weight of the pixels on each side of a mask's edge, where masks disagree (default 1: "
                        "every pixel alike, as the paper; README, 'The edge band')")
    p.add_argument("--field-foreign-weight", type=NON_NEGATIVE_FLOAT, default=None,
                   help="weight of the term that keeps a query off other objects' masks in views where it is "
                        "not matched (default: 1 where the median Gaussian is in the frame of under half the "
                        "training views, as from inside a room, else 0; README, 'Captures from inside')")
    p.add_argument("--field-memory-gb", type=NON_NEGATIVE_FLOAT, default=None, metavar="GB",
                   help="memory the mask field's training views may hold (default: half of what is free on the "
                        "device; 0: no limit); past it an evenly spread subset of the views is used")
    p.add_argument("--field-sample-pixels", type=_number(int, 0, 10_000_000), default=None,
                   help="match queries to masks on this many random pixels of a view with more (default 4096; 0: "
                        "every pixel); fewer is faster per step")


def _segment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=_number(float, 0, 1, low_open=True), default=None, help="mask probability for a Gaussian to count (0.5)")
    p.add_argument("--relevancy", type=_number(float, 0, 1), default=None, help="query relevancy against negatives (0.6)")
    p.add_argument("--no-exclusive", action="store_true",
                   help="let a prompt keep Gaussians that a query of another meaning lights more strongly "
                        "(the plain union of the prompt's queries)")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--offline", action="store_true")


def _train_options(p: argparse.ArgumentParser) -> None:
    """Every stage's options, for `train` and `benchmark`."""
    _fit_options(p)
    _field_options(p)
    p.add_argument("--from-labels", nargs="?", const="", default=None, metavar="DIR",
                   help="priors from instance-label images (DIR defaults to SCENE/labels) instead of SAM + CLIP")
    p.add_argument("--label-noise", nargs="?", const=0, default=None, type=int, metavar="SEED",
                   help="with --from-labels: SAM-like noise on the label masks")
    p.add_argument("--prior-views", type=POSITIVE_INT, default=None)
    p.add_argument("--sam-model", choices=("vit_b", "vit_l", "vit_h"), default=None)
    p.add_argument("--points-per-side", type=_number(int, 1, 256), default=None, help="SAM grid (default 32 on CUDA, 16 on CPU)")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--offline", action="store_true", help="never download weights")
    p.add_argument("--embedding", choices=("dense", "crop"), default="dense")
    p.add_argument("--ply", default=None, help="start from this 3DGS .ply instead of fitting colour")
    _common(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="maskfield", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit 3D Gaussians to camera-posed photos (colour)")
    p.add_argument("scene", help="scene folder (transforms.json, transforms_train.json or COLMAP sparse/0)")
    p.add_argument("--out", required=True, help="run folder to write")
    _fit_options(p)
    _common(p)

    p = sub.add_parser("info", help="versions and the devices torch sees, as JSON")

    p = sub.add_parser("train-field", help="train the mask field of a fitted run on its priors")
    p.add_argument("run", help="run folder with gaussians.ply and priors/")
    p.add_argument("--scene", default=None, help="the run's scene folder, if it moved since training")
    _field_options(p)
    _common(p)

    p = sub.add_parser("train", help="every stage: fit colour, compute priors, train the mask field (each resumes)")
    p.add_argument("scene")
    p.add_argument("--out", required=True)
    _train_options(p)

    p = sub.add_parser("benchmark", help="train, query and score the scenes of 3D-OVS or LERF-Mask in their "
                                         "published layout, beside the paper's figures")
    p.add_argument("layout", choices=("3d-ovs", "lerf-mask"))
    p.add_argument("dir", help="the data set's folder (one folder per scene) or one scene's folder")
    p.add_argument("--scene", action="append", default=[], help="only this scene (repeat for several)")
    p.add_argument("--out", required=True, help="folder for one run per scene, predictions and benchmark.json")
    _train_options(p)

    p = sub.add_parser("segment", help="select the Gaussians of text prompts, or of what is at a 3D position")
    p.add_argument("run")
    p.add_argument("--prompt", action="append", default=[], help="a text prompt; repeat for several")
    p.add_argument("--at", action="append", nargs=3, type=float, default=[], metavar=("X", "Y", "Z"),
                   help="select what is at this 3D position (no text, no CLIP; in the run's coordinates, "
                        "see run.json's 'origin'); repeat for several")
    p.add_argument("--granularity", action="append", choices=("auto", "part", "object", "group", "any"), default=[],
                   help="part, object or group (SAM's small / medium / large masks), or any; once for all, or once "
                        "per --prompt in order; default: for a prompt what its best queries mostly matched, for "
                        "--at object")
    p.add_argument("--name", action="append", default=[],
                   help="a name for what --at finds when its meaning is near it (default: the prompts, and "
                        "the run's object names)")
    p.add_argument("--rest", action="store_true", help="also write what no segment took as rest.ply")
    p.add_argument("--labels-ply", action="store_true",
                   help="also write the whole scene as labels.ply with per-Gaussian label and label_score")
    p.add_argument("--mesh", action="store_true", help="also a closed, vertex-coloured mesh per segment")
    p.add_argument("--supersplat", action="store_true",
                   help="also SuperSplat's compressed .ply per segment (needs Node.js and @playcanvas/splat-transform)")
    p.add_argument("--prompt-embeddings", default=None, metavar="FILE",
                   help="prompts as vectors instead of text: a .npy (P x D), or a .npz with 'embeddings' (P x D) "
                        "and optional 'names'; --prompt then names them")
    p.add_argument("--points", default=None, help="N x 3 .npy of positions (e.g. mesh face centres) to label")
    p.add_argument("--out", default=None, help="output folder (default RUN/segments)")
    _segment_options(p)
    _common(p)

    p = sub.add_parser("serve", help="keep a run loaded and answer JSON requests on stdin (for the add-on)")
    p.add_argument("run")
    _segment_options(p)
    _common(p)

    p = sub.add_parser("evaluate", help="mIoU, mBIoU and accuracy on held-out views against label images")
    p.add_argument("run")
    p.add_argument("--labels", required=True, help="folder of <image>.png instance labels + objects.json")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompts to evaluate (default: every object name in objects.json)")
    p.add_argument("--views", choices=["test", "train", "all"], default="test")
    p.add_argument("--scene", default=None, help="the run's scene folder, if it moved since training")
    _segment_options(p)
    _common(p)

    try:
        from .priors import command as priors_command

        priors_command.register(sub)
    except ImportError:  # the priors stage is optional at import time (its libraries are heavy)
        pass
    return parser


class _Parser(argparse.ArgumentParser):
    """argparse, plus an ``error`` event for usage errors when the caller reads JSON lines."""

    jsonl = False

    def error(self, message):
        if _Parser.jsonl:
            sys.stdout.write(json.dumps({"event": "error", "message": f"{self.prog}: {message}",
                                         "kind": "usage"}) + "\n")
            sys.stdout.flush()
        super().error(message)


# the folder each command works in: where its lock and crash logs go
RUN_ARGUMENT = {"fit": "out", "train": "out", "priors": "out", "train-field": "run", "evaluate": "run",
                "segment": "run", "serve": "run", "benchmark": "out"}
WRITERS = ("fit", "train", "priors", "train-field", "evaluate", "benchmark")  # commands that lock the run folder


REQUIREMENTS = ("numpy", "torch", "PIL", "scipy", "plyfile", "tqdm")  # backend/pyproject.toml dependencies


def missing_requirements() -> list[str]:
    """The backend's core packages this Python cannot import (found without importing them)."""
    import importlib.util

    missing = []
    for name in REQUIREMENTS:
        try:
            if importlib.util.find_spec(name) is None:
                missing.append(name)
        except (ImportError, ValueError):
            missing.append(name)
    return missing


PARENT_ENV = "MASKFIELD_PARENT_PID"  # set by the add-on: the Blender process that started us


def watch_parent(reporter: Reporter, poll_s: float = 1.0, grace_s: float = 60.0) -> None:
    """When started by Blender, stop when Blender is gone (quit, crashed, killed): save like a
    cancel, so the run resumes, and leave no orphan. A thread checks that the parent is alive."""
    import os
    import threading
    import time

    try:
        parent = int(os.environ.get(PARENT_ENV, "0"))
    except ValueError:
        return
    if parent <= 0 or os.name != "posix":
        return

    def gone() -> bool:
        if os.getppid() != parent:  # re-parented: the parent exited
            return True
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return True
        except OSError:
            pass
        return False

    def watch() -> None:
        while not gone():
            time.sleep(poll_s)
        try:
            reporter.log("the program that started this run has exited; saving and stopping (the same command "
                         "resumes)", level="warning")
        except (OSError, ValueError):  # nobody reads stdout any more
            pass
        reporter.cancel()
        time.sleep(grace_s)  # a stage that cannot stop in time ends here
        os._exit(130)

    threading.Thread(target=watch, name="maskfield-parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.jsonl = any(a == "--events=jsonl" or (a == "--events" and argv[i + 1:i + 2] == ["jsonl"])
                        for i, a in enumerate(argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    reporter = Reporter(getattr(args, "events", "tqdm"))
    reporter.install_signal_handlers()
    watch_parent(reporter)
    folder = getattr(args, RUN_ARGUMENT.get(args.command, ""), None)
    missing = missing_requirements()
    if missing:  # every missing package at once, before any work
        reporter.error(f"the Python running MaskField ({sys.executable}) lacks {', '.join(repr(m) for m in missing)}, "
                       "which the backend needs. Install the backend with its requirements into this Python (in "
                       "Blender: Preferences > Add-ons > MaskField > Set up backend), or choose the Python where it "
                       "is installed.", kind="setup")
        return 2
    try:
        handler = COMMANDS.get(args.command) or getattr(args, "func", None)
        if handler is None:
            parser.error(f"unknown command {args.command}")
        if args.command in WRITERS:
            from .run import run_lock

            with run_lock(folder, f"maskfield {args.command}", reporter):
                result = handler(args, reporter)
        else:
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
    except ImportError as exc:  # this Python lacks a library the backend needs (e.g. torch)
        missing = getattr(exc, "name", None) or str(exc)
        reporter.error(f"the Python running MaskField ({sys.executable}) cannot import '{missing}', which the "
                       f"backend needs ({exc}). Install the backend with its requirements into this Python (in "
                       "Blender: Preferences > Add-ons > MaskField > Set up backend), or choose the Python where "
                       "it is installed.", kind="setup")
        return 2
    except OSError as exc:  # the system refused a path: permissions, a full disk, a name too long
        from .run import io_error_message

        log = write_crash_log(exc, folder, argv)
        reporter.error(f"{io_error_message(exc)} (details in {log})", kind="io")
        return 2
    except Exception as exc:  # a bug: one line for the person, the traceback in a file
        log = write_crash_log(exc, folder, argv)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        reporter.error(f"internal error ({type(exc).__name__}: {first}). This is a bug in MaskField; the full "
                       f"report is in {log}, please attach it when you report it.", kind="internal")
        return 1
    except KeyboardInterrupt:
        reporter.error("interrupted", kind="cancelled")
        return 130


def run_fit(args, reporter: Reporter) -> dict:
    from .checks import check_image_size
    from .run import RunFolder, resolve_device
    from .scene import load_scene
    from .scene.cameras import sizes_text
    from .splats.fit import MIN_TRIANGULATED, FitSettings, fit
    from .splats.render import choose_fit_device

    device = resolve_device(args.device)
    scene = load_scene(args.scene, skip_missing=args.skip_missing, holdout_every=args.holdout_every,
                       images=args.images)
    if scene.skipped:
        reporter.log(f"left out {len(scene.skipped)} frame(s) whose images are missing or unreadable: "
                     f"{', '.join(scene.skipped[:5])}"
                     + (" ..." if len(scene.skipped) > 5 else ""), level="warning")
    for note in scene.notes:
        reporter.log(note, level="warning")
    max_size = getattr(args, "max_size", None)
    if args.downscale and max_size:
        raise MaskFieldError("give --downscale or --max-size, not both.", kind="input")
    downscale = args.downscale if args.downscale else _auto_downscale(scene, device, max_size)
    # without --downscale each view is brought to the long side by its own whole number
    max_side = 0 if args.downscale else _long_side_cap(device, max_size)
    if not args.downscale and downscale > 1:
        cam = _largest_camera(scene)
        why = "--max-size" if max_size else f"the default on {device}; --max-size or --downscale to choose"
        each = "" if len({(c.width, c.height) for c in scene.cameras}) == 1 else \
            " (the largest; each size by its own whole number)"
        reporter.log(f"images of {cam.width}x{cam.height} fitted at 1/{downscale:g}{each}, long side at most "
                     f"{max_side} px ({why})")
    check_image_size(scene, downscale, max_side)
    has_points = scene.points is not None and len(scene.points) > 0
    seeds = len(scene.points) if has_points else args.init_points
    if seeds is not None and not has_points and getattr(args, "seedless_init", None) != "random":
        # triangulated points and their random fill, or --init-points where too few are found
        seeds = min(seeds, FitSettings.triangulated_fill + MIN_TRIANGULATED)
    if args.max_gaussians is not None and seeds is not None and args.max_gaussians < seeds:
        raise MaskFieldError(f"--max-gaussians {args.max_gaussians} is below the {seeds:,} Gaussians the fit starts "
                             f"from ({'the scene points' if has_points else '--init-points'}); "
                             f"it only stops densification from growing, so give at least {seeds}.")
    run = RunFolder(args.out)
    run.claim(scene, args.scene, overwrite=args.overwrite)
    device, renderer = choose_fit_device(device, args.renderer, log=reporter.log)
    settings = FitSettings.for_device(device, iterations=args.iterations, downscale=downscale, max_side=max_side,
                                      renderer=renderer, max_gaussians=args.max_gaussians,
                                      init_points=args.init_points, background_mode=getattr(args, "background", None),
                                      seedless_init=getattr(args, "seedless_init", None),
                                      fill_mode=getattr(args, "seedless_fill", None),
                                      backdrop_alpha_weight=getattr(args, "backdrop_alpha", None),
                                      surface_alpha_weight=getattr(args, "surface_alpha", None),
                                      surface_alpha_inset=getattr(args, "surface_alpha_inset", None))
    _prepare_compiled_renderer(device, renderer, reporter)
    fitted = [scene.camera(i, settings.view_downscale(scene.cameras[i])) for i in scene.train_indices]
    reporter.log(f"fitting {len(fitted)} views at {sizes_text(fitted)} on {device}, {settings.iterations} steps")
    result = fit(scene, run, settings, device=device, reporter=reporter, resume=not args.no_resume)
    summary = {k: result[k] for k in ("gaussians", "seconds", "test_psnr", "test_ssim", "test_views")}
    summary["ply"] = str(run.gaussians_ply)
    reporter.result("fit", **summary)
    return summary


def _prepare_compiled_renderer(device: str, renderer: str, reporter: Reporter) -> None:
    """Compile (first run on this machine, about a minute) or load the CPU renderer, saying so."""
    from .splats.render import choose_backend

    if choose_backend(renderer, device) != "cpu":
        return
    from .splats import render_cpu

    reporter.log("loading the compiled CPU renderer (the first run on a machine compiles it, about a minute)")
    reporter.log(f"compiled CPU renderer ready in {render_cpu.warm_up():.1f} s")


# The long side a fit works at when --downscale is not given: 3DGS's 1,600 px on CUDA. On a CPU
# (and Apple's GPU, which races the CPU renderer) 256 px: the fox's 1920x1080 photos become
# 240x135 (1/8), whose 3,000 steps took 134-272 s on 2 cores at 26.9-27.2 dB held-out (README);
# at 1,600 px's 1/2 the same fit took 966 s against 133 s (one machine), too long for a first Train.
AUTO_LONG_SIDE = {"cuda": 1600, "cpu": 256, "mps": 256}


def _long_side_cap(device: str, max_size: int | None = None) -> int:
    """``max_size``, or by default the device's ``AUTO_LONG_SIDE``."""
    return max_size or AUTO_LONG_SIDE.get(device, AUTO_LONG_SIDE["cpu"])


def _largest_camera(scene):
    """The camera with the longest image side: it decides, where a capture mixes cameras."""
    return max(scene.cameras, key=lambda cam: max(cam.width, cam.height))


def _auto_downscale(scene, device: str, max_size: int | None = None) -> float:
    """The smallest whole-number downscale that brings the largest image's long side to
    ``_long_side_cap`` (1 for images already that small)."""
    from .scene.cameras import whole_downscale

    return whole_downscale(scene.cameras, _long_side_cap(device, max_size))


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


def _field_settings(args, device):
    from .field.train import FieldSettings

    return FieldSettings.for_device(device, iterations=args.field_iterations,
                                    supervision_long_side=args.field_resolution,
                                    num_queries=args.queries, lr_features=args.field_lr,
                                    lr_final_fraction=getattr(args, "field_lr_final", None),
                                    dice_weight=args.dice_weight, gaussian_weight=args.gaussian_weight,
                                    sample_pixels=args.field_sample_pixels,
                                    average_last=getattr(args, "field_average_last", None),
                                    edge_weight=getattr(args, "field_edge_weight", None),
                                    foreign_weight=getattr(args, "field_foreign_weight", None),
                                    query_levels=False if getattr(args, "mixed_queries", False) else None,
                                    calibrate_queries=False if getattr(args, "uncalibrated_queries", False) else None)


def _train_field_args(train_args, device: str) -> argparse.Namespace:
    """`train`'s arguments as `train-field` reads them: every mask-field option passes through."""
    return argparse.Namespace(**{**vars(train_args), "run": train_args.out, "device": device})


def run_train_field(args, reporter: Reporter, scene=None) -> dict:
    from .field.data import build_views, frame_share, load_priors_folder
    from .field.train import resolved_foreign_weight, train_field
    from .checks import check_priors_fit_cameras, require_gaussians
    from .run import RunFolder, resolve_device, scene_of_run
    from .scene.cameras import sizes_text
    from .splats.ply import read_ply

    device = resolve_device(args.device)
    if device == "mps":
        # the field is sparse (CSR) products over frozen weights, which PyTorch's MPS backend does
        # not run (pytorch/pytorch#196192); on the CPU they are the compiled kernel's and fast
        reporter.log("the mask field trains on the CPU: PyTorch has no Apple-GPU kernels for its sparse products")
        device = "cpu"
    run = RunFolder(args.run)
    run.require("gaussians")
    run.require("priors")
    if scene is None:
        scene = scene_of_run(run, getattr(args, "scene", None), "train-field", reporter)
    gaussians = read_ply(run.gaussians_ply)
    require_gaussians(gaussians, run.gaussians_ply)
    priors = load_priors_folder(run.priors_dir)
    check_priors_fit_cameras(priors, scene, run.priors_dir)  # before anything is trained or written
    models = {p.embedding_model for p in priors.values()}
    dims = {int(p.embeddings.shape[1]) for p in priors.values() if p.embeddings.ndim == 2}
    if len(models) > 1 or len(dims) > 1:
        raise MaskFieldError(f"the priors in {run.priors_dir} mix embedding models {sorted(models)} / sizes "
                             f"{sorted(dims)}; delete the folder and recompute them with one model.")
    embedding_model = models.pop()
    settings = _field_settings(args, device)
    train_idx = [i for i in range(len(scene)) if i not in set(scene.test_indices)]
    share = frame_share(scene, gaussians, train_idx)
    settings = dataclasses.replace(settings, foreign_weight=resolved_foreign_weight(settings, share))
    if settings.foreign_weight > 0:
        reporter.log(f"the training views do not share their objects (the median Gaussian is in {share:.0%} of their "
                     "frames, as from inside a room): each query is also kept off other objects' masks in the views "
                     f"where it is not matched (weight {settings.foreign_weight:g})")
    memory_gb = getattr(args, "field_memory_gb", None)
    views = build_views(scene, gaussians, priors, train_idx, settings.supervision_long_side, device, reporter,
                        memory_bytes=None if memory_gb is None else memory_gb * 2**30)
    object_names = sorted({n for p in priors.values() for n in p.meta.get("object_names", [])})
    reporter.log(f"mask field: {len(gaussians):,} Gaussians, {len(views)} views, {settings.num_queries} queries, "
                 f"{settings.iterations} steps at {sizes_text(views)} on {device}")
    _, result = train_field(views, len(gaussians), dims.pop(), run, settings, device, reporter,
                            extra={"embedding_model": embedding_model, "object_names": object_names,
                                   "num_gaussians": len(gaussians)})
    result["embedding_model"] = embedding_model
    result["frame_share"] = round(share, 3)
    result["training_views"] = len([i for i in train_idx if scene.cameras[i].name in priors])
    result["view_memory_mb"] = round(sum(v.nbytes() for v in views) / 2**20, 1)
    run.update_stage("field", **result)
    summary = {k: result[k] for k in ("seconds", "steps", "final_loss", "views", "training_views", "view_memory_mb",
                                      "embedding_model")}
    summary["field"] = str(run.field_checkpoint)
    reporter.result("field", **summary)
    return summary


CPU_PRIOR_VIEWS = 8  # SAM + CLIP views on a CPU unless --prior-views says otherwise


def _in_file_coordinates(means, scene) -> bool:
    """Whether Gaussians (their ``means``) handed to a recentred scene sit in the camera file's
    coordinates (made by another tool from the same capture) rather than in the run's (a
    MaskField run's own)."""
    import numpy as np

    middle = np.median(means, axis=0)
    cameras = np.stack([cam.center for cam in scene.cameras]).mean(axis=0)
    return bool(np.linalg.norm(middle - (cameras + scene.origin)) < np.linalg.norm(middle - cameras))


def run_train(args, reporter: Reporter) -> dict:
    """fit -> priors -> field, skipping the stages a previous run finished."""
    from .priors import command as priors_command
    from .run import RunFolder
    from .scene import load_scene

    run = RunFolder(args.out)
    scene = load_scene(args.scene, skip_missing=args.skip_missing, holdout_every=args.holdout_every,
                       images=args.images)
    out: dict = {}
    if args.ply:
        import shutil

        from .splats.ply import read_ply

        from .checks import check_cameras_face_points, require_gaussians

        given = read_ply(args.ply)
        require_gaussians(given, args.ply)  # validates the file before anything is written
        for note in scene.notes:
            reporter.log(note, level="warning")
        means = given.detached()["means"].double().numpy()
        moved = scene.origin is not None and _in_file_coordinates(means, scene)
        if moved:
            means = means - scene.origin
        # Gaussians in another tool's frame (another scale, a normalised one) that the cameras do
        # not see; a slip in the camera file stops here, before the run folder is written
        away = check_cameras_face_points(scene, scene.train_indices or range(len(scene)), points=means,
                                         what=f"the Gaussians of {Path(args.ply).name}")
        if away:
            reporter.log(away, level="warning")
        run.claim(scene, args.scene, overwrite=args.overwrite)
        if moved:
            import torch

            from .splats.ply import write_ply

            params = given.detached()
            params["means"] = torch.as_tensor(means, dtype=torch.float32)
            write_ply(run.gaussians_ply, params)
            reporter.log(f"{args.ply} is in the camera file's coordinates: its Gaussians were moved into the run's")
        else:
            shutil.copyfile(args.ply, run.gaussians_ply)
        run.update_stage("fit", source=str(Path(args.ply).resolve()))
        reporter.log(f"using the Gaussians of {args.ply}; no colour fit")
    elif run.gaussians_ply.exists() and run.read().get("stages", {}).get("fit") and not args.overwrite:
        run.claim(scene, args.scene)
        reporter.log("colour fit already done; skipping (delete gaussians.ply to redo it)")
    else:
        out["fit"] = run_fit(args, reporter)
    device = args.device
    cuda = _is_cuda(device)
    prior_views, points_per_side = args.prior_views, args.points_per_side or (32 if cuda else 16)
    if args.from_labels is None:
        # SAM takes about a minute per photo on a CPU: a spread subset of the views keeps the
        # stage in minutes; on a GPU every training view, as the paper
        n_train = len(scene.train_indices)
        if prior_views is None and not cuda:
            prior_views = min(CPU_PRIOR_VIEWS, n_train)
        from .priors.masks import default_sam_model
        from .run import resolve_device

        sam = args.sam_model or default_sam_model(resolve_device(device))
        reporter.log(f"priors: SAM {sam} with {points_per_side}x"
                     f"{points_per_side} points on {min(prior_views or n_train, n_train)} of {n_train} training "
                     f"views ({'GPU' if cuda else 'CPU'} defaults; --prior-views, --points-per-side, --sam-model "
                     "to change)")
    priors_args = argparse.Namespace(
        scene=args.scene, out=args.out, from_labels=args.from_labels, label_noise=args.label_noise,
        prior_views=prior_views, sam_model=args.sam_model,
        points_per_side=points_per_side, points_per_batch=64,
        weights_dir=args.weights_dir, offline=args.offline, embedding=args.embedding, downscale=None,
        force=False, device=device, events=args.events, images=args.images)
    out["priors"] = priors_command.run(priors_args, reporter, scene=scene)
    out["field"] = run_train_field(_train_field_args(args, device), reporter, scene=scene)
    reporter.result("train", run=str(run.path))
    return out


def _is_cuda(device: str) -> bool:
    from .run import resolve_device

    return resolve_device(device) == "cuda"


def _segmenter(args, reporter):
    from .run import resolve_device
    from .segment import Segmenter, SegmentSettings

    settings = SegmentSettings()
    if args.threshold is not None:
        settings.mask_threshold = args.threshold
    if args.relevancy is not None:
        settings.relevancy_threshold = args.relevancy
    settings.exclusive = not args.no_exclusive
    return Segmenter(args.run, device=resolve_device(args.device), settings=settings,
                     weights_dir=args.weights_dir, allow_download=not args.offline)


def run_segment(args, reporter: Reporter) -> dict:
    from .segment import write_segments

    from .segment import SegmentRequest

    prompts, text = list(args.prompt), None
    if args.prompt_embeddings:
        prompts, text = load_prompt_embeddings(Path(args.prompt_embeddings), prompts)
    if (not prompts and not args.at) or any(not p.strip() for p in prompts):
        raise MaskFieldError("empty prompt: give at least one non-empty --prompt, e.g. --prompt chair "
                             "(or a position: --at X Y Z).")
    seg = _segmenter(args, reporter)
    if text is not None and text.shape[1] != seg.query_embed.shape[1]:
        raise MaskFieldError(f"{args.prompt_embeddings} holds {text.shape[1]}-d vectors, but this run's queries are "
                             f"{seg.query_embed.shape[1]}-d ({seg.embedding_model}); encode the prompts with that model.")
    if args.prompt_embeddings:
        seg.negative_vectors = load_negative_embeddings(Path(args.prompt_embeddings), seg.query_embed.shape[1])
    out = Path(args.out) if args.out else seg.run.segments_dir
    grans = [None if g == "auto" else g for g in args.granularity]
    if len(grans) > 1 and (args.at or len(grans) != len(prompts)):
        raise MaskFieldError(f"{len(grans)} --granularity values: give one for everything, or one per --prompt "
                             f"({len(prompts)}) and no --at.")
    gran = grans if len(grans) > 1 else (grans[0] if grans else None)
    request = SegmentRequest(granularity=gran, at=[list(a) for a in args.at],
                             at_granularity=(gran if isinstance(gran, str) else None) or "object",
                             names=list(args.name), rest=args.rest, labels_ply=args.labels_ply, mesh=args.mesh,
                             supersplat=args.supersplat)
    summary = write_segments(seg, prompts, out, Path(args.points) if args.points else None, reporter, text=text,
                             request=request)
    summary["out"] = str(out)
    reporter.result("segment", **summary)
    return summary


def load_prompt_embeddings(path: Path, names: list[str]) -> tuple[list[str], "np.ndarray"]:
    """Prompt vectors from a .npy (P x D) or .npz ('embeddings', optional 'names'), and their names."""
    import numpy as np

    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            if "embeddings" not in data:
                raise ValueError(f"it has no 'embeddings' array (it has {', '.join(data.files) or 'none'})")
            vectors = data["embeddings"]
            names = names or ([str(n) for n in data["names"]] if "names" in data else [])
        else:
            vectors = data
    except (OSError, ValueError) as exc:
        raise MaskFieldError(f"cannot read --prompt-embeddings {path}: {exc}. Give a .npy of shape P x D, or a "
                             ".npz with 'embeddings' (P x D) and optional 'names'.") from None
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise MaskFieldError(f"--prompt-embeddings {path} must hold a P x D array, got shape {vectors.shape}.")
    if not np.isfinite(vectors).all() or (np.linalg.norm(vectors, axis=1) == 0).any():
        raise MaskFieldError(f"--prompt-embeddings {path} has a zero or non-finite vector; every row must be a "
                             "real embedding.")
    names = names or [f"embedding {i + 1}" for i in range(len(vectors))]
    if len(names) != len(vectors):
        raise MaskFieldError(f"{len(names)} --prompt names for {len(vectors)} vectors in {path}; give one name "
                             "per row, or none.")
    return names, vectors


def load_negative_embeddings(path: Path, dim: int) -> "np.ndarray | None":
    """Optional 'negatives' (N x D) beside the prompt vectors in a .npz: relevancy is measured
    against them instead of the canonical phrases (which a model of the user's cannot encode)."""
    import numpy as np

    if path.suffix.lower() != ".npz":
        return None
    with np.load(path, allow_pickle=False) as data:
        if "negatives" not in data:
            return None
        vectors = np.asarray(data["negatives"], dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim or len(vectors) == 0 or not np.isfinite(vectors).all() \
            or (np.linalg.norm(vectors, axis=1) == 0).any():
        raise MaskFieldError(f"'negatives' in {path} must be an N x {dim} array of real, non-zero vectors, got "
                             f"shape {vectors.shape}; leave it out to measure relevancy against the scene's mean "
                             "query.")
    return vectors


def run_serve(args, reporter: Reporter) -> None:
    """One JSON request per stdin line; every answer ends with a result (or error) event."""
    from .segment import write_segments

    reporter.mode = "jsonl"
    seg = _segmenter(args, reporter)
    reporter.emit("ready", gaussians=len(seg.gaussians), text_encoder=seg.embedding_model)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        request_id = None
        try:
            request = parse_request(line)
            request_id = request.get("id")
            if request["cmd"] == "quit":
                break
            out = Path(request.get("out") or seg.run.segments_dir)
            points = request.get("points")
            summary = write_segments(seg, request["prompts"], out, Path(points) if points else None, reporter,
                                     request=_serve_request(request))
            summary["out"] = str(out)
            reporter.result("segment", id=request_id, **summary)
        except MaskFieldError as exc:
            reporter.emit("error", message=str(exc), kind=exc.kind, id=request_id)
        except OSError as exc:
            from .run import io_error_message

            reporter.emit("error", message=io_error_message(exc), kind="io", id=request_id)
        except Exception as exc:  # a bug answering one request must not end the server
            log = write_crash_log(exc, args.run)
            reporter.emit("error", message=f"internal error ({type(exc).__name__}: {exc}); the server goes on. "
                          f"The full report is in {log}.", kind="internal", id=request_id)
    return None


def _serve_request(request: dict):
    """The options of a server request: {"at": [[x, y, z], ...], "granularity": "part" or one per
    prompt, "at_granularity", "names", "rest", "labels_ply", "mesh", "supersplat"}."""
    from .segment import SegmentRequest

    at = request.get("at") or []
    try:
        at = [[float(v) for v in p] for p in at]
    except (TypeError, ValueError):
        raise MaskFieldError("'at' must be a list of [x, y, z] positions.") from None
    if any(len(p) != 3 for p in at):
        raise MaskFieldError("'at' must be a list of [x, y, z] positions.")
    gran = request.get("granularity")
    gran = None if gran == "auto" else gran
    return SegmentRequest(granularity=gran, at=at, at_granularity=request.get("at_granularity") or "object",
                          names=list(request.get("names") or []), rest=bool(request.get("rest")),
                          labels_ply=bool(request.get("labels_ply")), mesh=bool(request.get("mesh")),
                          supersplat=bool(request.get("supersplat")))


def parse_request(line: str) -> dict:
    """One serve request, checked: {"cmd": "segment", "prompts": [str, ...], "out": str?,
    "points": str?, "id": any} or {"cmd": "quit"}. Raises MaskFieldError saying what is wrong."""
    example = '{"cmd": "segment", "prompts": ["red mug"], "out": "DIR"}'
    try:
        request = json.loads(line)
    except json.JSONDecodeError as exc:
        raise MaskFieldError(f"not a JSON request ({exc}); send one object per line, e.g. {example}.") from None
    if not isinstance(request, dict):
        raise MaskFieldError(f"a request must be a JSON object, got {type(request).__name__}; e.g. {example}.")
    cmd = request.get("cmd")
    if cmd not in ("segment", "quit"):
        raise MaskFieldError(f"unknown request {cmd!r}; use 'segment' or 'quit'.")
    if cmd == "quit":
        return request
    prompts = request.get("prompts")
    if prompts is None and request.get("at"):
        request["prompts"] = prompts = []  # pointing only
    if isinstance(prompts, str):
        raise MaskFieldError(f"'prompts' must be a list of strings, got the string {prompts[:60]!r}; "
                             f"write [{json.dumps(prompts[:60])}].")
    if not isinstance(prompts, list) or not (prompts or request.get("at")):
        raise MaskFieldError(f"'prompts' must be a non-empty list of strings (or give 'at' positions); e.g. {example}.")
    bad = [p for p in prompts if not isinstance(p, str)]
    if bad:
        raise MaskFieldError(f"every prompt must be a string; got {json.dumps(bad[0])[:60]} "
                             f"({type(bad[0]).__name__}).")
    for key in ("out", "points"):
        if request.get(key) is not None and not isinstance(request[key], str):
            raise MaskFieldError(f"'{key}' must be a path (a string) or null, got {type(request[key]).__name__}.")
    return request


def run_evaluate(args, reporter: Reporter) -> dict:
    from .evaluate import evaluate_run

    from .run import scene_of_run

    seg = _segmenter(args, reporter)
    scene = scene_of_run(seg.run, args.scene, "evaluate", reporter)
    result = evaluate_run(seg, Path(args.labels), args.prompt, args.views, reporter, scene=scene)
    seg.run.update_stage("evaluate", **result)
    reporter.result("evaluate", **result)
    return result


COMMANDS = {"fit": run_fit, "info": run_info, "train-field": run_train_field, "train": run_train,
            "segment": run_segment, "serve": run_serve, "evaluate": run_evaluate,
            "benchmark": lambda args, reporter: _benchmark(args, reporter)}


def _benchmark(args, reporter: Reporter) -> dict:
    from .benchmark import run_benchmark

    return run_benchmark(args, reporter)


if __name__ == "__main__":
    sys.exit(main())
