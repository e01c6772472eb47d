"""CPU renderer: forward + backward time per view, and peak memory.

    python benchmarks/bench_render.py [--gaussians 100000] [--width 240] [--height 135]

Random Gaussians fill the view (about 35 pixel-Gaussian pairs per Gaussian, like a fitted
scene at this resolution); the loss is an L1 on colour, as in fitting.
"""
from __future__ import annotations

import argparse
import resource
import time

import torch

from maskfield.splats.render import RenderCamera, render


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gaussians", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=240)
    ap.add_argument("--height", type=int, default=135)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--features", type=int, default=0, help="extra feature channels rendered too")
    args = ap.parse_args()
    params, camera = make_scene(args.gaussians, args.width, args.height)
    target = torch.rand(args.height, args.width, 3)
    feats = torch.randn(args.gaussians, args.features, requires_grad=True) if args.features else None
    times = []
    for i in range(args.repeats + 1):
        t0 = time.perf_counter()
        out = render(params, camera, sh_degree=3, features=feats, backend="torch")
        loss = (out["color"] - target).abs().mean()
        if feats is not None:
            loss = loss + out["features"].square().mean()
        loss.backward()
        if i > 0:  # the first run warms up allocators
            times.append(time.perf_counter() - t0)
    pairs = out["num_pairs"]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    times.sort()
    print(f"CPU renderer, {args.gaussians:,} Gaussians at {args.width}x{args.height}, "
          f"{pairs:,} pixel-Gaussian pairs, {torch.get_num_threads()} threads")
    print(f"forward+backward per view: median {times[len(times) // 2]:.3f} s, best {times[0]:.3f} s")
    print(f"peak memory (process RSS): {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
