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
    p.add_argument("--renderer", choices=["auto", "gsplat", "cpu", "torch"], default="auto",
                   help="auto: gsplat on CUDA, the compiled CPU renderer on the CPU, on MPS whichever of MPS "
                        "and the compiled CPU renderer renders a test view faster; torch: the PyTorch reference")
    p.add_argument("--overwrite", action="store_true", help="replace a run of another scene in --out")
    p.add_argument("--no-resume", action="store_true", help="start over instead of resuming a saved fit")
    p.add_argument("--max-gaussians", type=int, default=None)
    p.add_argument("--init-points", type=int, default=None, help="random seeds when the scene has no points")


def _field_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--field-iterations", type=int, default=None, help="mask-field steps (default 5000 CUDA, 1500 CPU)")
    p.add_argument("--field-resolution", type=int, default=None, help="long side of the supervised feature image")
    p.add_argument("--queries", type=int, default=None, help="number of scene-level queries (default 240)")
    p.add_argument("--field-lr", type=float, default=None, help="learning rate of the per-Gaussian features")
    p.add_argument("--dice-weight", type=float, default=None, help="weight of the dice loss (default 1.0; paper 0.05)")
    p.add_argument("--gaussian-weight", type=float, default=None,
                   help="weight of the per-Gaussian mask loss that keeps 3D labels consistent (default 1.0; 0 = paper)")


def _segment_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=float, default=None, help="mask probability for a Gaussian to count (0.5)")
    p.add_argument("--relevancy", type=float, default=None, help="query relevancy against negatives (0.6)")
    p.add_argument("--no-exclusive", action="store_true",
                   help="let a prompt keep Gaussians that a query of another meaning lights more strongly "
                        "(the plain union of the prompt's queries)")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--offline", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskfield", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fit", help="fit 3D Gaussians to camera-posed photos (colour)")
    p.add_argument("scene", help="scene folder (transforms.json, transforms_train.json or COLMAP sparse/0)")
    p.add_argument("--out", required=True, help="run folder to write")
    _fit_options(p)
    _common(p)

    p = sub.add_parser("info", help="versions and the devices torch sees, as JSON")

    p = sub.add_parser("train-field", help="train the mask field of a fitted run on its priors")
    p.add_argument("run", help="run folder with gaussians.ply and priors/")
    _field_options(p)
    _common(p)

    p = sub.add_parser("train", help="every stage: fit colour, compute priors, train the mask field (each resumes)")
    p.add_argument("scene")
    p.add_argument("--out", required=True)
    _fit_options(p)
    _field_options(p)
    p.add_argument("--from-labels", nargs="?", const="", default=None, metavar="DIR",
                   help="priors from instance-label images (DIR defaults to SCENE/labels) instead of SAM + CLIP")
    p.add_argument("--label-noise", nargs="?", const=0, default=None, type=int, metavar="SEED",
                   help="with --from-labels: SAM-like noise on the label masks")
    p.add_argument("--prior-views", type=int, default=None)
    p.add_argument("--sam-model", choices=("vit_b", "vit_l", "vit_h"), default=None)
    p.add_argument("--points-per-side", type=int, default=None, help="SAM grid (default 32 on CUDA, 16 on CPU)")
    p.add_argument("--weights-dir", default=None)
    p.add_argument("--offline", action="store_true", help="never download weights")
    p.add_argument("--embedding", choices=("dense", "crop"), default="dense")
    p.add_argument("--ply", default=None, help="start from this 3DGS .ply instead of fitting colour")
    _common(p)

    p = sub.add_parser("segment", help="select the Gaussians of text prompts")
    p.add_argument("run")
    p.add_argument("--prompt", action="append", default=[], help="a text prompt; repeat for several")
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
    _segment_options(p)
    _common(p)

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
        handler = COMMANDS.get(args.command) or getattr(args, "func", None)
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
    from .splats.render import choose_fit_device

    device = resolve_device(args.device)
    scene = load_scene(args.scene, skip_missing=args.skip_missing, holdout_every=args.holdout_every)
    if scene.skipped:
        reporter.log(f"left out {len(scene.skipped)} frame(s) whose images are missing: {', '.join(scene.skipped[:5])}"
                     + (" ..." if len(scene.skipped) > 5 else ""), level="warning")
    downscale = args.downscale if args.downscale else _auto_downscale(scene)
    run = RunFolder(args.out)
    run.claim(scene, args.scene, overwrite=args.overwrite)
    device, renderer = choose_fit_device(device, args.renderer, log=reporter.log)
    settings = FitSettings.for_device(device, iterations=args.iterations, downscale=downscale,
                                      renderer=renderer, max_gaussians=args.max_gaussians,
                                      init_points=args.init_points)
    _prepare_compiled_renderer(device, renderer, reporter)
    reporter.log(f"fitting {len(scene.train_indices)} views at {scene.camera(0, downscale).width}x"
                 f"{scene.camera(0, downscale).height} on {device}, {settings.iterations} steps")
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


def _field_settings(args, device):
    from .field.train import FieldSettings

    return FieldSettings.for_device(device, iterations=args.field_iterations,
                                    supervision_long_side=args.field_resolution,
                                    num_queries=args.queries, lr_features=args.field_lr,
                                    dice_weight=args.dice_weight, gaussian_weight=args.gaussian_weight)


def run_train_field(args, reporter: Reporter, scene=None) -> dict:
    from .field.data import build_views, load_priors_folder
    from .field.train import train_field
    from .run import RunFolder, resolve_device
    from .scene import load_scene
    from .splats.ply import read_ply

    device = resolve_device(args.device)
    run = RunFolder(args.run)
    run.require("gaussians")
    run.require("priors")
    info = run.read()
    if scene is None:
        if not info.get("scene"):
            raise MaskFieldError(f"{run.json_path} does not name its scene; re-run `maskfield fit`.")
        scene = load_scene(info["scene"], skip_missing=True)
    gaussians = read_ply(run.gaussians_ply)
    priors = load_priors_folder(run.priors_dir)
    models = {p.embedding_model for p in priors.values()}
    dims = {int(p.embeddings.shape[1]) for p in priors.values() if p.embeddings.ndim == 2}
    if len(models) > 1 or len(dims) > 1:
        raise MaskFieldError(f"the priors in {run.priors_dir} mix embedding models {sorted(models)} / sizes "
                             f"{sorted(dims)}; delete the folder and recompute them with one model.")
    embedding_model = models.pop()
    settings = _field_settings(args, device)
    train_idx = [i for i in range(len(scene)) if i not in set(scene.test_indices)]
    views = build_views(scene, gaussians, priors, train_idx, settings.supervision_long_side, device, reporter)
    object_names = sorted({n for p in priors.values() for n in p.meta.get("object_names", [])})
    reporter.log(f"mask field: {len(gaussians):,} Gaussians, {len(views)} views, {settings.num_queries} queries, "
                 f"{settings.iterations} steps at {views[0].width}x{views[0].height} on {device}")
    _, result = train_field(views, len(gaussians), dims.pop(), run, settings, device, reporter,
                            extra={"embedding_model": embedding_model, "object_names": object_names,
                                   "num_gaussians": len(gaussians)})
    result["embedding_model"] = embedding_model
    run.update_stage("field", **result)
    summary = {k: result[k] for k in ("seconds", "steps", "final_loss", "views", "embedding_model")}
    summary["field"] = str(run.field_checkpoint)
    reporter.result("field", **summary)
    return summary


CPU_PRIOR_VIEWS = 8  # SAM + CLIP views on a CPU unless --prior-views says otherwise


def run_train(args, reporter: Reporter) -> dict:
    """fit -> priors -> field, skipping the stages a previous run finished."""
    from .priors import command as priors_command
    from .run import RunFolder
    from .scene import load_scene

    run = RunFolder(args.out)
    scene = load_scene(args.scene, skip_missing=args.skip_missing, holdout_every=args.holdout_every)
    out: dict = {}
    if args.ply:
        import shutil

        from .splats.ply import read_ply

        read_ply(args.ply)  # validates the file before anything is written
        run.claim(scene, args.scene, overwrite=args.overwrite)
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
        weights_dir=args.weights_dir, offline=args.offline, embedding=args.embedding, downscale=1.0,
        force=False, device=device, events=args.events)
    out["priors"] = priors_command.run(priors_args, reporter)
    field_args = argparse.Namespace(run=args.out, device=device, field_iterations=args.field_iterations,
                                    field_resolution=args.field_resolution, queries=args.queries,
                                    field_lr=args.field_lr, dice_weight=args.dice_weight,
                                    gaussian_weight=args.gaussian_weight)
    out["field"] = run_train_field(field_args, reporter, scene=scene)
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

    prompts, text = list(args.prompt), None
    if args.prompt_embeddings:
        prompts, text = load_prompt_embeddings(Path(args.prompt_embeddings), prompts)
    if not prompts or any(not p.strip() for p in prompts):
        raise MaskFieldError("empty prompt: give at least one non-empty --prompt, e.g. --prompt chair.")
    seg = _segmenter(args, reporter)
    if text is not None and text.shape[1] != seg.query_embed.shape[1]:
        raise MaskFieldError(f"{args.prompt_embeddings} holds {text.shape[1]}-d vectors, but this run's queries are "
                             f"{seg.query_embed.shape[1]}-d ({seg.embedding_model}); encode the prompts with that model.")
    out = Path(args.out) if args.out else seg.run.segments_dir
    summary = write_segments(seg, prompts, out, Path(args.points) if args.points else None, reporter, text=text)
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
        try:
            request = json.loads(line)
            cmd = request.get("cmd")
            if cmd == "quit":
                break
            if cmd != "segment":
                raise MaskFieldError(f"unknown request {cmd!r}; use 'segment' or 'quit'.")
            out = Path(request.get("out") or seg.run.segments_dir)
            points = request.get("points")
            summary = write_segments(seg, list(request.get("prompts") or []), out,
                                     Path(points) if points else None, reporter)
            summary["out"] = str(out)
            reporter.result("segment", id=request.get("id"), **summary)
        except MaskFieldError as exc:
            reporter.error(str(exc), kind=exc.kind)
        except json.JSONDecodeError as exc:
            reporter.error(f"not a JSON request: {exc}", kind="input")
    return None


def run_evaluate(args, reporter: Reporter) -> dict:
    from .evaluate import evaluate_run

    seg = _segmenter(args, reporter)
    result = evaluate_run(seg, Path(args.labels), args.prompt, args.views, reporter)
    seg.run.update_stage("evaluate", **result)
    reporter.result("evaluate", **result)
    return result


COMMANDS = {"fit": run_fit, "info": run_info, "train-field": run_train_field, "train": run_train,
            "segment": run_segment, "serve": run_serve, "evaluate": run_evaluate}


if __name__ == "__main__":
    sys.exit(main())
