"""The mask field's cost, side by side in one run:

  1. a mask-field training step against an RGB-only (colour fitting) step at the same
     resolution (target: under 1.5x);
  2. MaskField against the per-pixel 512-d embedding baseline (LERF / LangSplat style,
     ``maskfield.field.baseline``): step time and peak memory (target: at least 5x cheaper);
  3. segmentation latency for 1M Gaussians and 3 prompts once the text is encoded
     (target: under 50 ms on the CPU).

    python benchmarks/bench_field.py [--gaussians 100000] [--width 240] [--height 135]

Each training method runs in its own process, so that its peak memory (the rise of the
process's peak RSS over what the shared set-up already holds) is its own. The scene is the
random one of bench_render.py; the view's 2D masks are two granularities of regions (fine
cells and coarser groups of them), each with a random unit embedding.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_render import make_scene  # noqa: E402

METHODS = {
    "rgb": "RGB-only step (colour fit: render + L1 + backward + Adam on all Gaussian parameters)",
    "maskfield": "MaskField step as trained (16-d features, frozen blending weights, Hungarian matching)",
    "maskfield-rasterised": "MaskField step with the 16-d features rasterised anew each step",
    "baseline": "per-pixel 512-d embedding distillation (same frozen weights)",
}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (Linux) and return the current RSS in KiB."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    return _status_kib("VmRSS")


def region_masks(width: int, height: int, fine: int, coarse: int, seed: int = 0) -> np.ndarray:
    """(fine + coarse, H*W) float masks: a Voronoi partition into ``fine`` cells, and
    ``coarse`` groups of cells, like SAM's overlapping granularities."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    seeds = rng.uniform([0, 0], [width, height], size=(fine, 2))
    cell = np.argmin((xs.reshape(-1, 1) - seeds[:, 0]) ** 2 + (ys.reshape(-1, 1) - seeds[:, 1]) ** 2, axis=1)
    group = rng.integers(coarse, size=fine)
    masks = [(cell == k) for k in range(fine)] + [np.isin(cell, np.nonzero(group == j)[0]) for j in range(coarse)]
    return np.stack(masks).astype(np.float32)


def make_view(params, camera, embed_dim: int, fine: int, coarse: int):
    from maskfield.field.data import FieldView, blend_matrix

    weights, alpha = blend_matrix({k: v.detach() for k, v in params.items()}, camera)
    targets = torch.as_tensor(region_masks(camera.width, camera.height, fine, coarse))
    gen = torch.Generator().manual_seed(1)
    embeddings = torch.nn.functional.normalize(torch.randn(len(targets), embed_dim, generator=gen), dim=-1)
    view = FieldView("bench", weights, alpha, targets, embeddings, alpha > 0.5, camera.width, camera.height)
    return view, int(weights.values().numel())


def run_child(method: str, args) -> dict:
    """Time ``args.steps`` training steps of one method; report median time and peak memory."""
    from maskfield.field.baseline import EmbeddingField, baseline_loss, pixel_embedding_targets
    from maskfield.field.train import FieldSettings, MaskField, field_loss, matched_loss
    from maskfield.splats.render import render

    torch.manual_seed(0)
    params, camera = make_scene(args.gaussians, args.width, args.height)
    view, pairs = make_view(params, camera, args.embed_dim, args.fine_masks, args.coarse_masks)
    frozen = {k: v.detach() for k, v in params.items()}
    # per-view constants every trainer on frozen weights prepares once (not per step)
    view.supervised_weights()
    view.supervised_targets()
    base_kib = reset_peak_rss()

    if method == "rgb":
        target = torch.rand(args.height, args.width, 3)
        optimizer = torch.optim.Adam(params.values(), lr=1e-3)

        def step():
            out = render(params, camera, sh_degree=3, backend="torch")
            return (out["color"] - target).abs().mean()
    elif method in ("maskfield", "maskfield-rasterised"):
        settings = FieldSettings()
        field = MaskField(args.gaussians, args.embed_dim, settings)
        optimizer = torch.optim.Adam([{"params": [field.features], "lr": settings.lr_features},
                                      {"params": field.queries.parameters(), "lr": settings.lr_queries}])
        black = torch.zeros(args.gaussians, 3)

        if method == "maskfield":
            def step():
                return field_loss(field, view, settings.dice_weight)
        else:
            def step():
                out = render(frozen, camera, colors=black, features=field.features, backend="torch")
                feat = out["features"].reshape(-1, settings.feature_dim)[view.supervised]
                m, c = field.queries()
                return matched_loss(m @ feat.T, c, view, settings.dice_weight)[0]
    elif method == "baseline":
        field = EmbeddingField(args.gaussians, args.embed_dim)
        optimizer = torch.optim.Adam(field.parameters(), lr=2e-2)
        target, has = pixel_embedding_targets(view)

        def step():
            return baseline_loss(field, view, target, has)
    else:
        raise SystemExit(f"unknown method {method!r}; one of {', '.join(METHODS)}")

    times = []
    for i in range(args.steps + 1):
        t0 = time.perf_counter()
        loss = step()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i > 0:  # the first step warms up allocators and caches
            times.append(time.perf_counter() - t0)
        if not torch.isfinite(loss):
            raise SystemExit(f"{method}: the loss is {float(loss)}")
    peak_kib = _status_kib("VmHWM")
    return {"method": method, "median_s": float(np.median(times)), "best_s": float(np.min(times)),
            "peak_extra_mib": (peak_kib - base_kib) / 1024, "pairs": pairs,
            "supervised_pixels": int(view.supervised.sum()), "masks": len(view.targets)}


def segmentation_latency(n: int, repeats: int, objects: int = 60, queries_per_object: int = 4) -> dict:
    """segment() on ``n`` Gaussians and 3 prompts whose text is already encoded.

    The field is built like a trained one: Gaussians in ``objects`` groups, each group's
    features near its own direction, ``queries_per_object`` queries per group (parts and
    granularities) whose masks light that group, and whose meanings are the group's name.
    So each prompt selects its object's queries, and every other query is a competitor
    (SegmentSettings.exclusive), as in a real scene.
    """
    from maskfield.priors.text import encode_texts
    from maskfield.segment import Segmenter

    gen = torch.Generator().manual_seed(0)
    dim = 16
    directions = torch.nn.functional.normalize(torch.randn(objects, dim - 1, generator=gen), dim=-1)
    group = torch.randint(objects, (n,), generator=gen)
    features = torch.cat([directions[group] + 0.15 * torch.randn(n, dim - 1, generator=gen),
                          torch.ones(n, 1)], dim=1)  # the last component is a constant: a mask bias
    owner = torch.arange(objects * queries_per_object) // queries_per_object
    mask_embed = torch.cat([10.0 * directions[owner], torch.full((len(owner), 1), -5.0)], dim=1)
    names = [f"object {k}" for k in range(objects)]
    meaning = torch.as_tensor(encode_texts(names, "names:hash-512"))[owner]
    prompts = [names[3], names[25], names[48]]
    text = encode_texts(prompts, "names:hash-512")
    seg = Segmenter.from_field(None, features, lambda: (mask_embed, meaning), embedding_model="names:hash-512",
                               text_encoder=lambda texts: encode_texts(texts, "names:hash-512"))
    matches, label, _, _ = seg.segment(prompts, text)  # encodes the canonical negatives once
    if not all(m.found for m in matches):
        raise SystemExit("segmentation benchmark: a prompt matched no query; the set-up is wrong")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        matches, label, _, _ = seg.segment(prompts, text)
        times.append(time.perf_counter() - t0)
    expected = sum(int((group == k).sum()) for k in (3, 25, 48))
    return {"median_s": float(np.median(times)), "best_s": float(np.min(times)),
            "labelled": int((label >= 0).sum()), "expected": expected,
            "queries": [len(m.queries) for m in matches], "competitors": [len(m.competitors) for m in matches]}


def quality_on_run(run_dir: Path, labels_dir: Path) -> dict:
    """Train MaskField and the baseline on a fitted run's views and priors (same steps);
    seconds and the 3D accuracy of each on the held-out views."""
    from maskfield.evaluate import gaussian_accuracy, match_prompts_to_objects, object_votes
    from maskfield.field.baseline import BaselineSettings, baseline_labels, train_baseline
    from maskfield.field.data import build_views, load_priors_folder
    from maskfield.field.train import FieldSettings, train_field
    from maskfield.priors.from_labels import load_object_names
    from maskfield.priors.text import encode_texts
    from maskfield.run import RunFolder
    from maskfield.scene import load_scene
    from maskfield.segment import CANONICAL_NEGATIVES, Segmenter
    from maskfield.splats.ply import read_ply

    run = RunFolder(run_dir)
    scene = load_scene(run.read()["scene"], skip_missing=True)
    gaussians = read_ply(run.gaussians_ply)
    priors = load_priors_folder(run.priors_dir)
    model = next(iter(priors.values())).embedding_model
    settings = FieldSettings()
    train_idx = [i for i in range(len(scene)) if i not in set(scene.test_indices)]
    views = build_views(scene, gaussians, priors, train_idx, settings.supervision_long_side, "cpu")
    embed_dim = int(views[0].embeddings.shape[1])
    objects = load_object_names(labels_dir)
    prompts = [objects[k] for k in sorted(objects)]
    matches_gt = match_prompts_to_objects(prompts, objects)
    votes = object_votes(gaussians, scene, scene.test_indices, labels_dir)

    def encoder(texts):
        return encode_texts(list(texts), model)

    with tempfile.TemporaryDirectory() as tmp:
        field, mf = train_field(views, len(gaussians), embed_dim, RunFolder(tmp), settings, resume=False)
    seg = Segmenter.from_field(gaussians, field.features.detach(), field.queries, embedding_model=model,
                               text_encoder=encoder)
    _, label_mf, _, _ = seg.segment(prompts)
    baseline, bl = train_baseline(views, len(gaussians), embed_dim, BaselineSettings(iterations=settings.iterations))
    label_bl = baseline_labels(baseline.features.detach(), torch.as_tensor(encoder(prompts)),
                               torch.as_tensor(encoder(CANONICAL_NEGATIVES)))
    acc_mf, considered = gaussian_accuracy(label_mf, votes, matches_gt)
    acc_bl, _ = gaussian_accuracy(label_bl, votes, matches_gt)
    return {"run": str(run_dir), "gaussians": len(gaussians), "views": len(views), "steps": settings.iterations,
            "embedding_model": model, "visible_object_gaussians": considered,
            "maskfield": {"seconds": mf["seconds"], "gaussian_accuracy": acc_mf},
            "baseline": {"seconds": bl["seconds"], "gaussian_accuracy": acc_bl}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gaussians", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=240)
    ap.add_argument("--height", type=int, default=135)
    ap.add_argument("--embed-dim", type=int, default=512)
    ap.add_argument("--fine-masks", type=int, default=40)
    ap.add_argument("--coarse-masks", type=int, default=12)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--segment-gaussians", type=int, default=1_000_000)
    ap.add_argument("--segment-repeats", type=int, default=20)
    ap.add_argument("--child", choices=list(METHODS), help=argparse.SUPPRESS)
    ap.add_argument("--run", type=Path, help="also train both methods on this fitted run with priors ...")
    ap.add_argument("--labels", type=Path, help="... and score their 3D labels against these label images")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_child(args.child, args)))
        return 0

    passthrough = [f"--gaussians={args.gaussians}", f"--width={args.width}", f"--height={args.height}",
                   f"--embed-dim={args.embed_dim}", f"--fine-masks={args.fine_masks}",
                   f"--coarse-masks={args.coarse_masks}", f"--steps={args.steps}"]
    results = {}
    for method in METHODS:
        proc = subprocess.run([sys.executable, __file__, "--child", method, *passthrough],
                              capture_output=True, text=True, env=os.environ)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"the {method} benchmark failed")
        results[method] = json.loads(proc.stdout.strip().splitlines()[-1])
    seg = segmentation_latency(args.segment_gaussians, args.segment_repeats)

    rgb, mf, mfr, base = (results[k] for k in METHODS)
    print(f"mask field benchmark: {args.gaussians:,} Gaussians at {args.width}x{args.height} "
          f"({rgb['pairs']:,} pixel-Gaussian pairs, {mf['supervised_pixels']:,} supervised pixels, "
          f"{mf['masks']} masks), {torch.get_num_threads()} threads, median of {args.steps} steps")
    print(f"{'method':<24}{'step (s)':>10}{'peak extra memory (MiB)':>26}")
    for key in METHODS:
        r = results[key]
        print(f"{key:<24}{r['median_s']:>10.3f}{r['peak_extra_mib']:>26.0f}   {METHODS[key]}")
    print(f"mask-field step / RGB step:             {mf['median_s'] / rgb['median_s']:.2f}x  (target < 1.5x)")
    print(f"  rasterising the features every step:  {mfr['median_s'] / rgb['median_s']:.2f}x")
    print(f"baseline / MaskField, step time:        {base['median_s'] / mf['median_s']:.1f}x  (target >= 5x)")
    print(f"baseline / MaskField, peak memory:      {base['peak_extra_mib'] / max(mf['peak_extra_mib'], 1e-3):.1f}x"
          "  (target >= 5x)")
    print(f"segmentation, {args.segment_gaussians:,} Gaussians, 3 prompts (text encoded): median "
          f"{seg['median_s'] * 1000:.1f} ms, best {seg['best_s'] * 1000:.1f} ms (target < 50 ms); "
          f"{seg['labelled']:,} Gaussians labelled ({seg['expected']:,} in the prompted objects) by "
          f"{seg['queries']} queries against {seg['competitors']} competitors")
    quality = None
    if args.run:
        if not args.labels:
            raise SystemExit("--run needs --labels (the scene's label images and objects.json)")
        quality = quality_on_run(args.run, args.labels)
        print(f"on {quality['run']} ({quality['gaussians']:,} Gaussians, {quality['views']} views, "
              f"{quality['steps']} steps, {quality['embedding_model']}): visible Gaussians labelled with their object")
        for key in ("maskfield", "baseline"):
            q = quality[key]
            print(f"  {key:<10} {q['gaussian_accuracy']:.1%}   training {q['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"training": results, "segmentation": seg, "quality": quality},
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
