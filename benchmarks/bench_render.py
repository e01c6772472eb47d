"""CPU renderers side by side: forward + backward time per view, pairs per second, memory.

    python benchmarks/bench_render.py [--gaussians 100000] [--width 240] [--height 135]
                                      [--renderers cpu torch] [--threads N]

Random Gaussians fill the view (about 35 pixel-Gaussian pairs per Gaussian, like a fitted
scene at this resolution); the loss is an L1 on colour, as in fitting. ``cpu`` is the compiled
(numba) renderer, ``torch`` the PyTorch reference. Its compile time is printed too: the first
call on a machine compiles the kernels and caches them on disk, later processes load them.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch

from maskfield.splats.render import RenderCamera, compositing_weights, render


def make_scene(n: int, width: int, height: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    f = 0.8 * width
    depth = 2.0 + 4.0 * torch.rand(n, generator=gen)
    u = torch.rand(n, generator=gen) * width
    v = torch.rand(n, generator=gen) * height
    means = torch.stack([(u - width / 2) / f * depth, (v - height / 2) / f * depth, depth], 1)
    scales = torch.exp(torch.empty(n, 3).uniform_(-6.0, -4.9, generator=gen)) * depth[:, None]
    params = {
        "means": means, "scales": scales,
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
        "opacities": 0.1 + 0.8 * torch.rand(n, generator=gen),
        "sh": 0.3 * torch.randn(n, 16, 3, generator=gen),
    }
    camera = RenderCamera(torch.eye(4), torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]]), width, height)
    return {k: v.requires_grad_() for k, v in params.items()}, camera


def time_renderer(backend, params, camera, target, feats, repeats):
    """(wall seconds, CPU seconds over all threads) of each forward+backward after a warm-up."""
    times, cpu = [], []
    for i in range(repeats + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        out = render(params, camera, sh_degree=3, features=feats, backend=backend)
        loss = (out["color"] - target).abs().mean()
        if feats is not None:
            loss = loss + out["features"].square().mean()
        loss.backward()
        if i > 0:  # the first run warms up allocators
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        for p in list(params.values()) + ([feats] if feats is not None else []):
            p.grad = None
    return times, cpu


def cold_compile_seconds() -> float:
    """What a user's first run pays: compile every kernel with an empty numba cache."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        code = "from maskfield.splats import render_cpu; print(render_cpu.warm_up())"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gaussians", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=240)
    ap.add_argument("--height", type=int, default=135)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--features", type=int, default=0, help="extra feature channels rendered too")
    ap.add_argument("--renderers", nargs="+", default=["cpu", "torch"], choices=["cpu", "torch"])
    ap.add_argument("--threads", type=int, default=0, help="threads for torch and numba (default: their own)")
    ap.add_argument("--cold-compile", action="store_true",
                    help="also time compiling the kernels from scratch (a fresh process with an empty cache)")
    args = ap.parse_args()
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    params, camera = make_scene(args.gaussians, args.width, args.height)
    target = torch.rand(args.height, args.width, 3)
    feats = torch.randn(args.gaussians, args.features, requires_grad=True) if args.features else None
    # pairs that really blend (after early termination): the same for both renderers
    pixel, _, _ = compositing_weights({k: v.detach() for k, v in params.items()}, camera, backend="torch")
    pairs = pixel.numel()
    import numba

    print(f"{args.gaussians:,} Gaussians at {args.width}x{args.height}, {pairs:,} pixel-Gaussian pairs blended; "
          f"threads: torch {torch.get_num_threads()}, numba {numba.get_num_threads()}")
    if args.cold_compile:
        print(f"compiled renderer, cold compile (empty cache) in a fresh process: {cold_compile_seconds():.1f} s")
    if "cpu" in args.renderers:
        from maskfield.splats import render_cpu

        print(f"compiled renderer: kernels compiled or loaded from the cache in {render_cpu.warm_up():.1f} s "
              f"(numba threading layer: {render_cpu.threading_layer()})")
    medians = {}
    for backend in args.renderers:
        times, cpu = time_renderer(backend, params, camera, target, feats, args.repeats)
        medians[backend] = statistics.median(times)
        print(f"{backend:>5}: forward+backward per view median {medians[backend]:.3f} s, best {min(times):.3f} s, "
              f"{pairs / medians[backend] / 1e6:.1f} M pairs/s; CPU time (all threads) median "
              f"{statistics.median(cpu):.3f} s")
    if len(medians) == 2:
        print(f"compiled / torch speed-up: {medians['torch'] / medians['cpu']:.1f}x")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory (process RSS): {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
