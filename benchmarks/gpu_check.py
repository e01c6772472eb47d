# SPDX-License-Identifier: GPL-3.0-or-later
"""The one-command GPU check (run through ``scripts/gpu_check.sh``), printed as one table.

    python benchmarks/gpu_check.py [--out out/gpu_check] [--quick] [--skip-demo] [--allow-cpu]
        [--scenes DIR] [--cpu-too]
    python benchmarks/gpu_check.py --prepare-scenes DIR [--quick]


On a CUDA machine it
  1. compares gsplat's rasteriser with ours on the GPU, values and gradients;
  2. exercises the fallback when gsplat's kernels cannot build (a child process in which the
     kernel module cannot load must say so once and render with our renderer, same image);
  3. times a colour fit on the tabletop, the priors (SAM ViT-H, 32x32 points, and CLIP, with
     random weights), and the mask field;
  4. runs the demo (``tools/demo.py``, what ``make demo`` runs) on the GPU;
and writes the table to ``OUT/table.md`` as well. Without CUDA it stops, unless ``--allow-cpu``
is given: then every check that can run on the CPU runs (the renderers compared with each
other), the rest are listed as skipped, which is how the tests keep this script working.

The scenes are rendered in Blender (``bpy``), whose wheels exist for one Python version only. A
GPU machine whose Python has no ``bpy`` takes them ready-made: ``--prepare-scenes DIR`` renders
them where Blender runs, ``--scenes DIR`` uses them. Each row is written to ``OUT/table.md`` as
soon as it is measured, so a check stopped at a time limit still leaves what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# Renderers agree to this relative error (values) and relative gradient norm error: gsplat
# culls at 3 sigma and in tiles, ours at alpha >= 1/255 per pixel, so a few edge pairs differ.
VALUE_TOLERANCE = 2e-2
GRADIENT_TOLERANCE = 5e-2
SECTIONS = ("renderers", "pipeline", "priors", "demo")


@dataclass
class Table:
    rows: list[tuple[str, str, str]] = field(default_factory=list)
    path: Path | None = None  # rewritten after every row
    title: str = "GPU check"

    def add(self, check: str, figure: str, status: str = "ok") -> None:
        self.rows.append((check, figure, status))
        print(f"[gpu-check] {check}: {figure} ({status})", flush=True)
        if self.path is not None:
            self.write()

    def write(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(self.markdown(self.title))
        os.replace(tmp, self.path)

    @property
    def failed(self) -> bool:
        return any(status.startswith("FAIL") for _, _, status in self.rows)

    def markdown(self, title: str) -> str:
        lines = [title, "", "| check | figure | status |", "|---|---|---|"]
        lines += [f"| {c} | {f} | {s} |" for c, f, s in self.rows]
        return "\n".join(lines) + "\n"


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||: one number per tensor, insensitive to its scale."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


def agreement_scene(device: str, n: int = 20_000, width: int = 320, height: int = 240, channels: int = 16):
    """A seeded random scene that fills the view, with colours and feature channels."""
    from bench_render import make_scene

    params, camera = make_scene(n, width, height, seed=1)
    gen = torch.Generator().manual_seed(2)
    params = {k: v.detach().to(device) for k, v in params.items()}
    params["colors"] = torch.rand(n, 3, generator=gen).to(device)
    params["features"] = torch.randn(n, channels, generator=gen).to(device)
    camera.viewmat, camera.K = camera.viewmat.to(device), camera.K.to(device)
    return params, camera


def render_with_grads(params, camera, backend: str, sh: bool):
    """Render with one backend; a fixed random linear loss gives comparable gradients."""
    from maskfield.splats.render import render

    leaves = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    g = {k: leaves[k] for k in ("means", "scales", "quats", "opacities", "sh")}
    out = render(g, camera, sh_degree=3 if sh else None, colors=None if sh else leaves["colors"],
                 features=leaves["features"], backend=backend)
    gen = torch.Generator().manual_seed(3)
    loss = 0.0
    values = {}
    for key in ("color", "features", "alpha", "depth"):
        value = out[key]
        weight = torch.randn(value.shape, generator=gen).to(value.device)
        loss = loss + (value * weight).sum()
        values[key] = value.detach()
    loss.backward()
    grads = {k: v.grad for k, v in leaves.items() if v.grad is not None}
    return values, grads, out["backend"]


def compare_renderers(table: Table, device: str, reference: str, candidates: list[str], quick: bool) -> None:
    params, camera = agreement_scene(device, n=5_000 if quick else 20_000)
    for sh in (False, True):
        colour = "SH degree 3" if sh else "colours"
        ref_values, ref_grads, _ = render_with_grads(params, camera, reference, sh)
        for name in candidates:
            try:
                values, grads, used = render_with_grads(params, camera, name, sh)
            except Exception as exc:  # report, do not stop the whole check
                table.add(f"renderer {name} vs {reference} ({colour})", f"{type(exc).__name__}: {exc}", "FAIL")
                continue
            v_err = max(relative_error(values[k], ref_values[k]) for k in ref_values if k != "depth")
            d_err = relative_error(values["depth"] * ref_values["alpha"], ref_values["depth"] * ref_values["alpha"])
            g_err = {k: relative_error(grads[k], ref_grads[k]) for k in ref_grads if k in grads}
            worst = max(g_err, key=g_err.get)
            ok_values = v_err < VALUE_TOLERANCE and d_err < VALUE_TOLERANCE
            ok_grads = g_err[worst] < GRADIENT_TOLERANCE
            table.add(f"renderer {used} vs {reference} ({colour}): values", f"rel. error {v_err:.1e} (depth {d_err:.1e})",
                      "ok" if ok_values else f"FAIL (> {VALUE_TOLERANCE})")
            table.add(f"renderer {used} vs {reference} ({colour}): gradients",
                      ", ".join(f"{k} {e:.1e}" for k, e in g_err.items()),
                      "ok" if ok_grads else f"FAIL ({worst} > {GRADIENT_TOLERANCE})")


def time_renderers(table: Table, device: str, names: list[str], repeats: int = 5) -> None:
    from bench_render import make_scene
    from maskfield.splats.render import render

    params, camera = make_scene(100_000, 240, 135)
    params = {k: v.detach().to(device).requires_grad_() for k, v in params.items()}
    camera.viewmat, camera.K = camera.viewmat.to(device), camera.K.to(device)
    target = torch.rand(135, 240, 3, device=device)
    for name in names:
        times = []
        for i in range(repeats + 1):
            sync(device)
            t0 = time.perf_counter()
            out = render(params, camera, sh_degree=3, backend=name)
            (out["color"] - target).abs().mean().backward()
            sync(device)
            if i:
                times.append(time.perf_counter() - t0)
        table.add(f"render fwd+bwd, 100k Gaussians 240x135, {out['backend']} on {device}",
                  f"{1000 * float(np.median(times)):.1f} ms median")


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


FALLBACK_CHILD = r"""
import sys, numpy as np, torch
sys.modules["gsplat.cuda._backend"] = None  # as if the kernels could not build
sys.path.insert(0, sys.argv[1])
from gpu_check import agreement_scene
from maskfield.splats.render import render
params, camera = agreement_scene("cuda")
g = {k: params[k] for k in ("means", "scales", "quats", "opacities", "sh")}
out = render(g, camera, colors=params["colors"], backend="auto")
np.save(sys.argv[2], out["color"].cpu().numpy())
print("BACKEND", out["backend"])
"""


def check_fallback(table: Table, out_dir: Path) -> None:
    """A child process where gsplat's kernel module cannot load: auto must fall back, and say so."""
    from maskfield.splats.render import render

    params, camera = agreement_scene("cuda")
    g = {k: params[k] for k in ("means", "scales", "quats", "opacities", "sh")}
    expected = render(g, camera, colors=params["colors"], backend="gsplat")["color"].cpu().numpy()
    image = out_dir / "fallback_color.npy"
    proc = subprocess.run([sys.executable, "-c", FALLBACK_CHILD, str(ROOT / "benchmarks"), str(image)],
                          capture_output=True, text=True, timeout=600)
    said = [line for line in proc.stderr.splitlines() if "unavailable" in line]
    backend = next((line.split()[1] for line in proc.stdout.splitlines() if line.startswith("BACKEND")), "none")
    if proc.returncode != 0 or not image.exists():
        table.add("fallback when gsplat's kernels cannot build", proc.stderr.strip().splitlines()[-1:], "FAIL")
        return
    err = relative_error(torch.from_numpy(np.load(image)), torch.from_numpy(expected))
    ok = backend != "gsplat" and len(said) == 1 and err < VALUE_TOLERANCE
    table.add("fallback when gsplat's kernels cannot build",
              f"rendered with '{backend}', said once: {bool(said)}, vs gsplat rel. error {err:.1e}",
              "ok" if ok else "FAIL")


def run_timed(cmd: list, env=None, timeout=3600) -> tuple[float, subprocess.CompletedProcess]:
    t0 = time.perf_counter()
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, env=env)
    return time.perf_counter() - t0, proc


def failure(proc: subprocess.CompletedProcess) -> str:
    tail = (proc.stderr or proc.stdout).strip().splitlines()
    return f"FAIL (exit {proc.returncode}: {tail[-1] if tail else 'no output'})"


def tabletop_size(quick: bool) -> tuple[int, int]:
    """Views and resolution of the pipeline's tabletop."""
    return (12, 64) if quick else (40, 256)


def render_tabletop(scene: Path, quick: bool) -> subprocess.CompletedProcess:
    views, res = tabletop_size(quick)
    return run_timed([sys.executable, ROOT / "tools" / "make_tabletop.py", "--out", scene, "--views", views,
                      "--resolution", res, "--quiet"])[1]


def time_pipeline(table: Table, out_dir: Path, quick: bool, device: str, scenes: Path | None) -> None:
    """Tabletop: colour fit, label priors, mask field, each timed through the CLI as a user runs it."""
    py = sys.executable
    scene, run = out_dir / "tabletop", out_dir / "run"
    views, res = tabletop_size(quick)
    if scenes is not None:
        scene = scenes / "tabletop"
        meta = json.loads((scene / "transforms.json").read_text())
        views, res = len(meta["frames"]), max(meta["w"], meta["h"])
    else:
        proc = render_tabletop(scene, quick)
        if proc.returncode:
            table.add("tabletop scene (Blender)", "", failure(proc))
            return
    iterations = 100 if quick else 3000
    seconds, proc = run_timed([py, "-m", "maskfield.cli", "fit", scene, "--out", run, "--iterations", iterations,
                               "--device", device, "--events", "none", "--overwrite", "--no-resume"])
    if proc.returncode:
        table.add("colour fit", "", failure(proc))
        return
    fit = json.loads((run / "run.json").read_text())["stages"]["fit"]
    table.add(f"colour fit, tabletop {views} views at {res} px, {iterations} steps ({device})",
              f"{seconds:.0f} s in all, {iterations / fit['seconds']:.1f} steps/s, {fit['gaussians']:,} Gaussians, "
              f"held-out PSNR {fit['test_psnr']:.1f} dB")
    seconds, proc = run_timed([py, "-m", "maskfield.cli", "priors", scene, "--out", run, "--from-labels",
                               "--label-noise", "0", "--device", device, "--events", "none"])
    if proc.returncode:
        table.add("label priors", "", failure(proc))
        return
    steps = 300 if quick else 5000
    seconds, proc = run_timed([py, "-m", "maskfield.cli", "train-field", run, "--field-iterations", steps,
                               "--device", device, "--events", "none"])
    if proc.returncode:
        table.add("mask field", "", failure(proc))
        return
    field_info = json.loads((run / "run.json").read_text())["stages"].get("field", {})
    table.add(f"mask field, {steps} steps ({device})",
              f"{seconds:.0f} s in all" + (f", training {field_info['seconds']:.0f} s" if "seconds" in field_info else ""))


def time_priors(table: Table, quick: bool, device: str) -> None:
    """SAM (ViT-H 32x32 on CUDA) and CLIP with random weights, through bench_priors.py."""
    size = ["--width", "640", "--height", "360"] if quick else []
    model = ["--sam-model", "vit_b", "--points-per-side", "8"] if quick else []
    seconds, proc = run_timed([sys.executable, ROOT / "benchmarks" / "bench_priors.py", "--device", device,
                               *size, *model, "--masks", "20" if quick else "100"])
    if proc.returncode:
        table.add("priors (SAM + CLIP, random weights)", "", failure(proc))
        return
    lines = proc.stdout.splitlines()
    head = lines[0] if lines else ""
    per_image = next((line.split(":")[-1].strip() for line in lines if line.startswith("priors per image")), "?")
    masks = next((line.split(":")[-1].strip() for line in lines if line.startswith("masks per image, paper")), "?")
    table.add(f"priors per 1080p image ({head.split(', ', 1)[-1]})" if not quick else "priors per 640x360 image",
              f"SAM {masks}; SAM + CLIP {per_image}")


def run_demo(table: Table, out_dir: Path, scenes: Path | None) -> None:
    reuse = ["--scene-from", scenes / "demo"] if scenes is not None else []
    seconds, proc = run_timed([sys.executable, ROOT / "tools" / "demo.py", "--out", out_dir / "demo", *reuse])
    if proc.returncode:
        table.add("make demo (tools/demo.py)", "", failure(proc))
        return
    figures = json.loads((out_dir / "demo" / "figures.json").read_text())
    ev = figures["evaluate"]
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in figures["times_s"].items())
    if scenes is not None:
        stages += "; scene rendered beforehand in Blender"
    table.add("make demo on the GPU", f"{seconds:.0f} s ({stages}); held-out mIoU {ev['miou']:.3f}, "
              f"mBIoU {ev['mbiou']:.3f}")


def environment(table: Table, device: str) -> None:
    import gsplat

    from maskfield.splats.render import gsplat_available

    name = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    table.add("device", f"{name}; torch {torch.__version__} (CUDA {torch.version.cuda}); gsplat {gsplat.__version__}")
    if device == "cuda":
        t0 = time.perf_counter()
        ok = gsplat_available()
        table.add("gsplat's CUDA kernels load (built on first use)", f"{time.perf_counter() - t0:.0f} s",
                  "ok" if ok else "FAIL (see the message above; our renderer is used instead)")


def cpu_renderers() -> list[str]:
    """Our renderers besides the PyTorch reference that run on the CPU (the compiled one)."""
    from maskfield.splats.render import RENDERERS, compiled_available

    return ["cpu"] if "cpu" in RENDERERS and compiled_available() else []


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/gpu_check")
    ap.add_argument("--quick", action="store_true", help="small sizes everywhere (minutes, not tens of minutes)")
    ap.add_argument("--skip-demo", action="store_true")
    ap.add_argument("--allow-cpu", action="store_true", help="without CUDA, run what can run on the CPU")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                    help="run only these parts, in this order")
    ap.add_argument("--scenes", type=Path, default=None,
                    help="scenes rendered beforehand by --prepare-scenes (for a machine without Blender)")
    ap.add_argument("--prepare-scenes", type=Path, default=None, metavar="DIR",
                    help="render the check's scenes into DIR in Blender, then stop")
    ap.add_argument("--cpu-too", action="store_true", help="on a CUDA machine, also compare and time the CPU renderers")
    args = ap.parse_args(argv)
    if args.prepare_scenes is not None:
        return prepare_scenes(args.prepare_scenes.resolve(), args.quick)
    scenes = args.scenes.resolve() if args.scenes is not None else None
    if scenes is not None:
        missing = [p for p in (scenes / "tabletop" / "transforms.json", scenes / "demo" / "scene",
                               scenes / "demo" / "faces.npy") if not p.exists()]
        if missing:
            print(f"gpu_check: {scenes} lacks {', '.join(str(p.relative_to(scenes)) for p in missing)}; make it with "
                  "--prepare-scenes DIR on a machine with Blender (bpy).", file=sys.stderr)
            return 2
    cuda = torch.cuda.is_available()
    if not cuda and not args.allow_cpu:
        print("gpu_check: torch sees no CUDA GPU here. Run it on an NVIDIA machine, or pass --allow-cpu to run the "
              "CPU part only.", file=sys.stderr)
        return 2
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    device = "cuda" if cuda else "cpu"
    title = f"GPU check, {time.strftime('%Y-%m-%d')}, {'quick' if args.quick else 'full'}"
    table = Table(path=out_dir / "table.md", title=title)
    try:
        environment(table, device)
    except Exception as exc:
        table.add("device", f"{type(exc).__name__}: {exc}", "FAIL")
    for section in dict.fromkeys(args.only):  # in the order given: the most wanted first under a time limit
        try:
            run_section(section, table, args, out_dir, device, scenes)
        except Exception as exc:  # one broken part must not hide the others' figures
            table.add(f"{section}", f"{type(exc).__name__}: {exc}", "FAIL")
    table.write()
    print("\n" + table.markdown(title))
    return 1 if table.failed else 0


def run_section(section: str, table: Table, args, out_dir: Path, device: str, scenes: Path | None) -> None:
    cuda = device == "cuda"
    if section == "renderers":
        check_renderers(table, cuda, args.quick, out_dir, args.cpu_too)
    elif section == "pipeline":
        time_pipeline(table, out_dir, args.quick, device, scenes)
    elif section == "priors":
        if cuda or not args.quick:
            time_priors(table, args.quick, device)
        else:
            table.add("priors (SAM ViT-H 32x32 + CLIP)", "", "skipped: --quick on the CPU")
    elif args.skip_demo or not cuda:
        table.add("make demo on the GPU", "", "skipped" + ("" if cuda else ": no CUDA"))
    else:
        run_demo(table, out_dir, scenes)


def prepare_scenes(target: Path, quick: bool) -> int:
    """Render the pipeline's tabletop and the demo's scene (with its .blend and face centres) in Blender."""
    demo = target / "demo"
    demo.mkdir(parents=True, exist_ok=True)
    proc = render_tabletop(target / "tabletop", quick)
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
        return proc.returncode
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "demo.py"), "--out", str(demo), "--render-only",
                           *(["--quick"] if quick else [])], text=True)
    if proc.returncode:
        return proc.returncode
    print(f"scenes for the GPU check in {target}: pass --scenes {target}")
    return 0


def check_renderers(table: Table, cuda: bool, quick: bool, out_dir: Path, cpu_too: bool = False) -> None:
    if cuda:
        from maskfield.splats.render import gsplat_available

        if gsplat_available():
            compare_renderers(table, "cuda", "gsplat", ["torch"], quick)
            check_fallback(table, out_dir)
        else:
            table.add("gsplat vs ours", "gsplat's kernels did not load", "FAIL")
        time_renderers(table, "cuda", ["auto", "torch"])
    else:
        for check in ("gsplat vs ours (values, gradients)", "fallback when gsplat's kernels cannot build"):
            table.add(check, "", "skipped: no CUDA")
    if cuda and not cpu_too:
        return  # the CPU renderers are checked on CPU machines (and by the tests)
    if cpu_renderers():
        compare_renderers(table, "cpu", "torch", cpu_renderers(), quick)
    time_renderers(table, "cpu", ["torch", *cpu_renderers()], repeats=1 if quick else 5)


if __name__ == "__main__":
    sys.exit(main())
