"""Fitting the Gaussians to the photos (colour), with gsplat's densification strategy.

Resumable: the whole state (Gaussians, optimisers, strategy, step) is saved to
``fit_checkpoint.pt`` every ``checkpoint_every`` steps and when cancelled.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from ..checks import check_cameras, check_fit_state
from ..events import Cancelled, MaskFieldError, Reporter
from ..run import RunFolder, save_torch_atomic
from .losses import psnr, ssim
from .model import Gaussians
from .ply import write_ply
from .render import RenderCamera, render


@dataclass
class FitSettings:
    iterations: int = 3000
    downscale: float = 1.0
    sh_degree: int = 3
    sh_degree_every: int = 500  # raise the SH degree by one every this many steps
    ssim_weight: float = 0.2
    init_points: int = 30_000  # random seeds when the scene has no points
    max_gaussians: int = 400_000  # densification stops growing past this
    refine_start: int = 300
    refine_stop_fraction: float = 0.6  # of the iterations
    refine_every: int = 100
    reset_every: int = 1500
    checkpoint_every: int = 250
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    renderer: str = "auto"
    seed: int = 0
    lr: dict = field(default_factory=lambda: {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3,
                                              "opacities": 5e-2, "sh0": 2.5e-3, "shN": 2.5e-3 / 20})

    @classmethod
    def for_device(cls, device: str, **overrides) -> "FitSettings":
        """Smaller defaults on the CPU (stated in run.json); the 3DGS schedule on a GPU."""
        if device == "cuda":
            base = dict(iterations=15_000, sh_degree_every=1000, refine_start=500, reset_every=3000,
                        max_gaussians=3_000_000, init_points=100_000, checkpoint_every=1000)
        else:
            base = {}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def fit(scene, run: RunFolder, settings: FitSettings, device: str = "cpu",
        reporter: Reporter | None = None, resume: bool = True) -> dict:
    """Fit colour Gaussians to the scene's training views; write gaussians.ply; return metrics."""
    from gsplat.strategy import DefaultStrategy

    reporter = reporter or Reporter("none")
    if scene.has_alpha:  # transparent images were composited over this colour on load
        settings.background = tuple(float(c) for c in scene.background)
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    train = list(scene.train_indices) or list(range(len(scene)))
    check_cameras(scene, train)  # no baseline or no extent: stop before fitting NaNs
    images = {i: torch.as_tensor(scene.load_image(i, settings.downscale), device=device)
              for i in reporter.track(train, "load", desc="loading images")}
    cameras = {i: RenderCamera.from_camera(scene.camera(i, settings.downscale), device) for i in train}
    center, radius = scene.bounds()
    cam_centers = np.stack([scene.cameras[i].center for i in train])
    scene_scale = float(np.linalg.norm(cam_centers - cam_centers.mean(0), axis=1).max()) * 1.1 or 1.0

    refine_stop = int(settings.iterations * settings.refine_stop_fraction)
    strategy = DefaultStrategy(refine_start_iter=settings.refine_start, refine_stop_iter=refine_stop,
                               refine_every=settings.refine_every, reset_every=settings.reset_every,
                               verbose=False)
    start_step = 0
    state = None
    if resume and run.fit_checkpoint.exists():
        ckpt = torch.load(run.fit_checkpoint, map_location=device, weights_only=False)
        if ckpt.get("settings") == _comparable(settings):
            gaussians = Gaussians.from_state_dict(ckpt["gaussians"], device)
            optimizers = _optimizers(gaussians, settings, scene_scale)
            for name, opt in optimizers.items():
                opt.load_state_dict(ckpt["optimizers"][name])
            strategy_state = ckpt["strategy"]
            start_step = int(ckpt["step"])
            state = "resumed"
            reporter.log(f"resuming the fit at step {start_step} of {settings.iterations}")
        else:
            reporter.log("the saved fit used other settings; starting over")
    if state is None:
        if scene.points is not None and len(scene.points) > 0:
            gaussians = Gaussians.from_points(scene.points, scene.point_colors, settings.sh_degree, device=device)
            seeded = f"{len(scene.points):,} scene points"
        else:
            gaussians = Gaussians.random_in_bounds(center, radius, settings.init_points, settings.sh_degree,
                                                   seed=settings.seed, device=device)
            seeded = f"{settings.init_points:,} random points in the scene bounds"
        reporter.log(f"seeded {len(gaussians):,} Gaussians from {seeded}")
        optimizers = _optimizers(gaussians, settings, scene_scale)
        strategy_state = strategy.initialize_state(scene_scale=scene_scale)
    strategy.check_sanity(gaussians.params, optimizers)
    grow_grad2d = strategy.grow_grad2d

    background = torch.tensor(settings.background, dtype=torch.float32, device=device)
    means_lr_end = settings.lr["means"] * 0.01
    gamma = (means_lr_end / settings.lr["means"]) ** (1.0 / max(1, settings.iterations))
    for group in optimizers["means"].param_groups:
        group["lr"] = settings.lr["means"] * scene_scale * gamma ** start_step

    t_start = time.perf_counter()
    order = rng.permutation(np.repeat(train, math.ceil(settings.iterations / len(train)) + 1))
    step = start_step
    last_loss = float("nan")
    try:
        with reporter.progress("fit", settings.iterations, "fitting colour", initial=start_step) as bar:
            for step in range(start_step, settings.iterations):
                reporter.check_cancel()
                view = int(order[step])
                degree = min(settings.sh_degree, step // settings.sh_degree_every)
                out = render(gaussians.activated(), cameras[view], sh_degree=degree, background=background,
                             backend=settings.renderer)
                info = {"means2d": out["means2d"], "radii": out["radii"], "width": cameras[view].width,
                        "height": cameras[view].height, "n_cameras": 1, "gaussian_ids": None}
                strategy.step_pre_backward(gaussians.params, optimizers, strategy_state, step, info)
                target = images[view]
                l1 = (out["color"] - target).abs().mean()
                loss = (1 - settings.ssim_weight) * l1 + settings.ssim_weight * (1 - ssim(out["color"], target))
                loss.backward()
                if not torch.isfinite(loss):
                    raise MaskFieldError(f"the colour fit diverged (loss is {float(loss)}) at step {step}; "
                                         "try a smaller --downscale or fewer --iterations.", kind="nan")
                for opt in optimizers.values():
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                for group in optimizers["means"].param_groups:
                    group["lr"] *= gamma
                # at the size cap: keep pruning, stop growing
                strategy.grow_grad2d = grow_grad2d if len(gaussians) < settings.max_gaussians else math.inf
                strategy.step_post_backward(gaussians.params, optimizers, strategy_state, step, info, packed=False)
                check_fit_state(gaussians, step + 1, run.fit_checkpoint, full=False)
                last_loss = loss.item()
                bar.update(1, loss=last_loss, gaussians=len(gaussians), pairs=out.get("num_pairs", 0))
                if (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.iterations:
                    check_fit_state(gaussians, step + 1, run.fit_checkpoint)  # never save a broken state
                    _save(run, gaussians, optimizers, strategy_state, step + 1, settings)
        step = settings.iterations
    except Cancelled:
        _save(run, gaussians, optimizers, strategy_state, step, settings)
        reporter.log(f"fit cancelled at step {step}; run the same command again to resume")
        raise
    fit_seconds = time.perf_counter() - t_start
    check_fit_state(gaussians, step, run.fit_checkpoint)
    _save(run, gaussians, optimizers, strategy_state, step, settings)
    metrics = evaluate_views(scene, gaussians, scene.test_indices, settings, device, reporter)
    write_ply(run.gaussians_ply, gaussians)
    result = {"gaussians": len(gaussians), "seconds": round(fit_seconds, 1), "final_loss": last_loss,
              "settings": asdict(settings), "device": device, "resumed_from": start_step, **metrics}
    run.update_stage("fit", **result)
    return result


def evaluate_views(scene, gaussians: Gaussians, indices, settings: FitSettings, device, reporter=None) -> dict:
    """Held-out PSNR and SSIM (the views never trained on)."""
    if not indices:
        return {"test_psnr": None, "test_ssim": None, "test_views": 0}
    values_psnr, values_ssim = [], []
    background = torch.tensor(settings.background, dtype=torch.float32, device=device)
    with torch.no_grad():
        g = gaussians.activated()
        for i in indices:
            cam = RenderCamera.from_camera(scene.camera(i, settings.downscale), device)
            target = torch.as_tensor(scene.load_image(i, settings.downscale), device=device)
            color = render(g, cam, sh_degree=settings.sh_degree, background=background,
                           backend=settings.renderer)["color"].clamp(0, 1)
            values_psnr.append(psnr(color, target))
            values_ssim.append(float(ssim(color, target)))
    return {"test_psnr": float(np.mean(values_psnr)), "test_ssim": float(np.mean(values_ssim)),
            "test_views": len(indices)}


def _optimizers(gaussians: Gaussians, settings: FitSettings, scene_scale: float) -> dict:
    opts = {}
    for name, param in gaussians.params.items():
        lr = settings.lr[name] * (scene_scale if name == "means" else 1.0)
        opts[name] = torch.optim.Adam([{"params": param, "lr": lr, "name": name}], eps=1e-15)
    return opts


def _comparable(settings: FitSettings) -> dict:
    d = asdict(settings)
    d.pop("checkpoint_every", None)
    return d


def _save(run: RunFolder, gaussians, optimizers, strategy_state, step, settings):
    save_torch_atomic({
        "gaussians": gaussians.state_dict(),
        "optimizers": {k: v.state_dict() for k, v in optimizers.items()},
        "strategy": {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in strategy_state.items()},
        "step": step,
        "settings": _comparable(settings),
    }, run.fit_checkpoint)
