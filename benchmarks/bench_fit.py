# SPDX-License-Identifier: GPL-3.0-or-later
"""The colour fit: steps per second and held-out PSNR over time, renderers side by side.

    python benchmarks/bench_fit.py [--renderers torch,cpu] [--datasets fox,bookshelf]
        [--iterations 3000] [--eval-every 250] [--downscale 8] [--json FILE] [--set NAME=VALUE ...]

Datasets: ``fox`` is ``../shared/data/fox`` (50 real photos with lens distortion, no seed
points) at 1/``--downscale``; ``bookshelf`` / ``room`` are ``tools/make_scenes.py`` scenes
rendered without seed points (world background, held-out views off the training rings),
built under ``--work`` if missing (``--views``, ``--resolution`` set their size); any other
dataset is a path to a scene folder. Each
renderer fits each dataset with the default settings (``FitSettings.for_device('cpu')``,
``--iterations`` steps); every ``--eval-every`` steps the held-out views are rendered and
scored (PSNR, worst floater share). Evaluation time is left out of the steps per second.
A renderer name the backend does not know is skipped with a message (e.g. ``cpu`` before the
compiled rasteriser exists). Timings on a shared machine are noisy: say so when reporting.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "backend"))


def known_renderer(name: str) -> str | None:
    """None if the backend can render with ``name`` on the CPU, else why not."""
    from maskfield.splats.render import choose_backend

    try:
        choose_backend(name, "cpu")
    except ValueError as exc:
        return str(exc)
    return None


def dataset_folder(name: str, args) -> Path:
    if Path(name).is_dir():  # any scene folder
        return Path(name)
    if name == "fox":
        folder = Path(args.fox)
        if not (folder / "transforms.json").exists():
            raise SystemExit(f"the fox scene is not at {folder}; pass --fox DIR")
        return folder
    folder = Path(args.work) / f"{name}-{args.views}v-{args.resolution}-nopoints"
    if not (folder / "transforms.json").exists():
        subprocess.run([sys.executable, str(ROOT / "tools" / "make_scenes.py"), "--scene", name, "--out", str(folder),
                        "--views", str(args.views), "--resolution", args.resolution, "--holdout-views",
                        str(args.holdout_views), "--no-points", "--quiet"], check=True)
    return folder


def fit_curve(folder: Path, renderer: str, downscale: float, args) -> dict:
    """One fit; held-out PSNR every ``eval_every`` steps; fit time without the evaluations."""
    from maskfield.evaluate import colour_metrics
    from maskfield.events import Reporter
    from maskfield.run import RunFolder
    from maskfield.scene import load_scene
    from maskfield.splats.fit import FitSettings, fit

    scene = load_scene(folder)
    test = list(scene.test_indices)[: args.max_eval_views]
    settings = FitSettings.for_device("cpu", iterations=args.iterations, downscale=downscale, renderer=renderer,
                                      **args.overrides)
    curve: list[dict] = []
    eval_seconds = [0.0]
    t_start = time.perf_counter()

    def monitor(step: int, gaussians, background) -> None:
        if step % args.eval_every and step != settings.iterations:
            return
        t0 = time.perf_counter()
        m = colour_metrics(gaussians, scene, test, downscale, background, renderer=renderer)
        eval_seconds[0] += time.perf_counter() - t0
        elapsed = time.perf_counter() - t_start - eval_seconds[0]
        curve.append({"step": step, "seconds": round(elapsed, 1), "psnr": round(m["psnr"], 2),
                      "floater_share_max": round(m["floater_share_max"], 4), "gaussians": len(gaussians)})
        print(f"  {folder.name} [{renderer}] step {step}: {elapsed:.0f} s, held-out PSNR {m['psnr']:.2f} dB, "
              f"worst floater {m['floater_share_max']:.2%}, {len(gaussians):,} Gaussians", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_fit_") as tmp:
        run = RunFolder(Path(tmp) / "run")
        run.claim(scene, folder)
        result = fit(scene, run, settings, device="cpu", reporter=Reporter(args.events), resume=False,
                     monitor=monitor)
    fit_s = time.perf_counter() - t_start - eval_seconds[0]
    cam = scene.camera(scene.train_indices[0], downscale)
    return {"renderer": renderer, "steps": settings.iterations, "fit_s": round(fit_s, 1),
            "steps_per_s": round(settings.iterations / fit_s, 3), "final_psnr": result["test_psnr"],
            "floater_share_max": result.get("test_floater_share_max"), "gaussians": result["gaussians"],
            "size": f"{cam.width}x{cam.height}", "train_views": len(scene.train_indices), "test_views": len(test),
            "curve": curve}


def overrides(pairs: list[str]) -> dict:
    """``--set name=value`` pairs as FitSettings overrides (numbers parsed), for schedule sweeps."""
    from dataclasses import fields

    from maskfield.splats.fit import FitSettings

    known = {f.name for f in fields(FitSettings)}
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or name not in known:
            raise SystemExit(f"--set {pair!r}: give NAME=VALUE with NAME one of FitSettings' fields "
                             f"({', '.join(sorted(known))})")
        out[name] = _number_or_text(value)
    return out


def _number_or_text(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--renderers", default="torch,cpu")
    ap.add_argument("--datasets", default="fox,bookshelf")
    ap.add_argument("--iterations", type=int, default=3000)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--max-eval-views", type=int, default=8)
    ap.add_argument("--downscale", type=float, default=8.0, help="for the fox")
    ap.add_argument("--fox", default=str(SHARED / "data" / "fox"))
    ap.add_argument("--work", default=str(ROOT / "out" / "bench_fit"), help="where generated scenes are kept")
    ap.add_argument("--views", type=int, default=48)
    ap.add_argument("--resolution", default="200x150")
    ap.add_argument("--holdout-views", type=int, default=8)
    ap.add_argument("--events", default="none", choices=["none", "tqdm"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="override a FitSettings field (repeatable), e.g. grow_grad2d=0.0003")
    args = ap.parse_args(argv)
    args.overrides = overrides(args.set)  # before any scene is built: a wrong name stops at once

    renderers = []
    for name in [r.strip() for r in args.renderers.split(",") if r.strip()]:
        why = known_renderer(name)
        if why:
            print(f"skipping renderer {name!r}: {why}", flush=True)
        else:
            renderers.append(name)
    if not renderers:
        raise SystemExit("no usable renderer among --renderers " + args.renderers)
    import torch

    rows = []
    for dataset in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        folder = dataset_folder(dataset, args)
        downscale = args.downscale if dataset == "fox" else 1.0
        for renderer in renderers:
            row = fit_curve(folder, renderer, downscale, args)
            row["dataset"] = folder.name if Path(dataset).is_dir() else dataset
            rows.append(row)
    print(f"\ncolour fit, default settings, {args.iterations} steps, {torch.get_num_threads()} threads "
          "(CPU; timings on a shared machine are noisy)")
    head = "dataset | size | renderer | steps/s | fit s | Gaussians | held-out PSNR | worst floater | PSNR over time (step: dB)"
    print(head + "\n" + " | ".join("---" for _ in head.split(" | ")))
    for r in rows:
        over_time = ", ".join(f"{c['step']}: {c['psnr']:.1f}" for c in r["curve"])
        print(f"{r['dataset']} | {r['size']} | {r['renderer']} | {r['steps_per_s']:.2f} | {r['fit_s']:.0f} | "
              f"{r['gaussians']:,} | {r['final_psnr']:.2f} | {r['floater_share_max']:.2%} | {over_time}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
