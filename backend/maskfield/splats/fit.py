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

from ..adam import Adam
from ..checks import check_cameras, check_cameras_face_points, check_fit_state
from ..events import Cancelled, MaskFieldError, Reporter
from ..run import RunFolder, load_torch_file, save_torch_atomic
from .losses import backdrop_alpha_penalty, psnr, ssim, surface_alpha_penalty
from .model import Gaussians
from .ply import write_ply
from .render import RenderCamera, choose_backend, project, render


BACKGROUND_MODES = ("auto", "learn", "random", "fixed")
# how a capture without seed points is started (see FitSettings.seedless_init)
SEEDLESS_INITS = ("triangulate", "random")
FILL_MODES = ("surfaces", "box")
# fewer triangulated points than this (a capture of blank surfaces): random starts instead
MIN_TRIANGULATED = 50


@dataclass
class FitSettings:
    iterations: int = 3000
    downscale: float = 1.0
    # With max_side (the automatic size), each view is brought by its own whole-number
    # downscale to at most this many pixels on its long side, so that a capture mixing 12 MP
    # photos and 1080p video frames keeps the frames at twice the size that one factor for all
    # (the photos') would leave them; 0: ``downscale`` for every view (--downscale)
    max_side: int = 0
    sh_degree: int = 3
    sh_degree_every: int = 500  # raise the SH degree by one every this many steps
    ssim_weight: float = 0.2
    # A capture without seed points starts from points triangulated from its own photos (SIFT
    # features matched across the training views, pycolmap, the poses as given: see
    # scene.triangulate), or from ``init_points`` random ones. Random starts leave depth to
    # the fit: the seedless bookshelf walked past kept Gaussians a metre and more behind the
    # shelf that painted its boards in every training view and blotted the held-out ones
    # (26.4 dB held out; 698 triangulated points: 28.5 dB; docs/measurements.md)
    seedless_init: str = "triangulate"
    # Points added among the triangulated ones, so that even surfaces with no features to
    # triangulate (a painted wall, a counter) have starts: from the triangulated points alone
    # the seedless room walk's side wall reached held-out IoU 0.64 (0.87 and 0.82 on two fits
    # with 5,000 added; docs/measurements.md). Where they go (``fill_mode``): "surfaces", on
    # the triangles the points make in each view (scene.triangulate.fill_between_points), or
    # "box", uniform in the box of the points' 2nd to 98th percentiles. On the seedless walks
    # the surfaces gave +0.5 to +1.5 dB held out, and background Gaussians in a segment 80 of
    # 197 -> 9 of 61 (bookshelf) and 49 of 124 -> 23 of 53 (room); mIoU moved within a fit's spread
    triangulated_fill: int = 5000
    fill_mode: str = "surfaces"
    init_points: int = 30_000  # random seeds when the scene has no points (or too few triangulate)
    max_gaussians: int = 400_000  # densification stops growing past this
    refine_start: int = 300
    refine_stop_fraction: float = 0.6  # of the iterations
    refine_every: int = 100
    # densify Gaussians whose mean screen-space gradient passes this. gsplat's 2e-4 (kept on
    # CUDA) against 3e-4 on held-out views, default CPU settings: the fox at 1/8 110k -> 72k
    # Gaussians, 26.82 -> 26.95 dB, 350 -> 281 s; the four 48-view item-1 scenes 20-38% faster,
    # the same PSNR, held-out mIoU +-0.022 per scene and the same on average
    # (docs/measurements.md)
    grow_grad2d: float = 0.0003
    reset_every: int = 1500
    checkpoint_every: int = 250
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # What is behind the Gaussians (see BACKGROUND_MODES): "auto" trains over a random colour
    # each step where images have alpha (so no Gaussian learns to paint the backdrop), and
    # learns one colour where they are opaque (a world or a sky behind the scene) instead of
    # leaving it to floaters and shells of Gaussians
    background_mode: str = "auto"
    background_lr: float = 1e-2
    # A learned background colour is held at the images' border colour for this many steps, while
    # the Gaussians find their places: until then they are faint, every pixel pulls on the colour,
    # and the largest even surface wins. A seedless walk past a white kitchen counter took the
    # counter's white by step 200 (the world's grey lost), and the counter went see-through
    # (held-out IoU 0.20; docs/measurements.md, session of 28 November, later)
    background_warmup: int = 500
    # With a learned background colour, Gaussians that paint pixels of that colour (the world
    # seen past the scene) cost the colour loss nothing, so a veil and bulges of them grow
    # there, which segmentation then reads as objects. This weighs the rendered alpha where the
    # target pixel has the background's colour (within about ``backdrop_alpha_sigma``; see
    # losses.backdrop_alpha_penalty), so that the background takes those pixels. Seedless
    # benchmark room (docs/measurements.md): backdrop Gaussians 713 -> 84, held-out mIoU
    # 0.885 -> 0.899.
    # The same weight on every pixel turned its floor half transparent (a brighter, fainter
    # Gaussian matches a surface lighter than the background as well), and so did sigma 0.05
    # (floor IoU 0.77): shaded floor lies within a few sigma of the grey world
    backdrop_alpha_weight: float = 0.05
    backdrop_alpha_sigma: float = 0.01
    # The other side of the same ambiguity: a surface lighter than the background is matched
    # as well by a brighter, fainter Gaussian (see losses.surface_alpha_penalty), and the
    # seedless benchmark room's floor and back wall were see-through (alpha < 0.5) on 4.1% of
    # their held-out pixels, which labels read as background. This weighs the transparency
    # where the target is clearly not the background's colour (sigma 0.1); ``inset`` leaves
    # out pixels within that many of a background-coloured one (silhouette edges). Measured
    # (docs/measurements.md, "Now the default: surface alpha"): 0.05 alone took the holes to
    # 0.2% and that room's held-out mIoU from 0.881 to 0.903, but faint Gaussians beside the seedless
    # bookshelf entered segments (silhouette pixels, half object colour, pushed opaque); inset
    # 1 keeps the gain on the seedless room (0.908 / 0.915 / 0.906 on field seeds 0-2, 0.904 on
    # another fit, against 0.888 / 0.899 / 0.893 and 0.892), 0 backdrop Gaussians in segments
    # with SegmentSettings.faint_min_supervised_share; over 16 fields of the four scenes the
    # mean went 0.904 -> 0.907, the seedless ones' 0.898 -> 0.907, the seeded bookshelf's 0.906
    # -> 0.896. Inset 2 lost the gain (holes 0.7% / 2.6%)
    surface_alpha_weight: float = 0.05
    surface_alpha_sigma: float = 0.1
    surface_alpha_inset: int = 1
    # pruning, on the densification steps and on until the end (see prune_floaters)
    prune_near_camera: float = 0.3  # closer to a training camera than this x its distance to the scene
    prune_angular_scale: float = 0.1  # 3D scale over the distance to the nearest camera (radians)
    renderer: str = "auto"
    seed: int = 0
    lr: dict = field(default_factory=lambda: {"means": 1.6e-4, "scales": 5e-3, "quats": 1e-3,
                                              "opacities": 5e-2, "sh0": 2.5e-3, "shN": 2.5e-3 / 20})

    def view_downscale(self, camera) -> float:
        """The downscale of the view whose full-size camera is ``camera``."""
        from ..scene.cameras import view_downscale

        return view_downscale(camera, self.downscale, self.max_side)

    @classmethod
    def for_device(cls, device: str, **overrides) -> "FitSettings":
        """Smaller defaults on the CPU (stated in run.json); the 3DGS schedule on a GPU."""
        if device == "cuda":
            base = dict(iterations=15_000, sh_degree_every=1000, refine_start=500, reset_every=3000,
                        max_gaussians=3_000_000, init_points=100_000, checkpoint_every=1000, grow_grad2d=0.0002)
        else:
            base = {}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**base)


def fit(scene, run: RunFolder, settings: FitSettings, device: str = "cpu",
        reporter: Reporter | None = None, resume: bool = True, monitor=None) -> dict:
    """Fit colour Gaussians to the scene's training views; write gaussians.ply; return metrics.

    ``monitor(step, gaussians, background)``, if given, is called after every step (the
    fit benchmark scores held-out views from it every N steps)."""
    from gsplat.strategy import DefaultStrategy

    reporter = reporter or Reporter("none")
    if settings.background_mode not in BACKGROUND_MODES:
        raise MaskFieldError(f"unknown background mode {settings.background_mode!r}; use one of "
                             f"{', '.join(BACKGROUND_MODES)}.")
    if settings.seedless_init not in SEEDLESS_INITS:
        raise MaskFieldError(f"unknown start for a capture without points {settings.seedless_init!r}; use one of "
                             f"{', '.join(SEEDLESS_INITS)}.")
    if settings.fill_mode not in FILL_MODES:
        raise MaskFieldError(f"unknown fill between triangulated points {settings.fill_mode!r}; use one of "
                             f"{', '.join(FILL_MODES)}.")
    if scene.has_alpha:  # transparent images were composited over this colour on load
        settings.background = tuple(float(c) for c in scene.background)
    train = list(scene.train_indices) or list(range(len(scene)))
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    # OpenCV axes, view matrices: stop before minutes of nothing (first: view matrices also put
    # every "camera centre" at one place, which check_cameras would blame)
    away = check_cameras_face_points(scene, train)
    if away:
        reporter.log(away, level="warning")
    check_cameras(scene, train)  # no baseline or no extent: stop before fitting NaNs
    center, radius = scene.bounds()
    inside = looks_outward(scene, train, center)
    mode = settings.background_mode
    if mode == "auto":
        mode = "random" if scene.has_alpha or inside else "learn"
    if inside:
        surface = (" every pixel is taken for a surface, and the fit trains over a random background colour instead "
                   "of learning one, which the room's own walls would pass for;" if mode == "random" and not
                   scene.has_alpha else "")
        reporter.log(f"the cameras look outward from where they stand (a capture from inside):{surface} Gaussians "
                     "are not pruned for their size (the walls' are wide, and near the cameras)")
    if mode == "random" and not (scene.has_alpha or inside):
        raise MaskFieldError("--background random needs images with alpha (transparent background); these are "
                             "opaque. Use --background learn or fixed.")
    on_gpu = torch.device(device).type != "cpu"
    images = TrainingImages(eight_bit=on_gpu)
    scale = {i: settings.view_downscale(scene.cameras[i]) for i in train}
    for i in reporter.track(train, "load", desc="loading images"):
        images[i] = torch.as_tensor(scene.load_image(i, scale[i]), device=device)
        if on_gpu:  # copied to the GPU: a second copy in RAM would only take room
            scene.forget_image(i, scale[i])
    alphas = {i: torch.as_tensor(load_alpha(scene, i, scale[i]), device=device) for i in train} \
        if mode == "random" else {}
    backdrop = Backdrop(mode, settings, images, alphas, device)
    cameras = {i: RenderCamera.from_camera(scene.camera(i, scale[i]), device) for i in train}
    cam_centers = np.stack([scene.cameras[i].center for i in train])
    scene_scale = float(np.linalg.norm(cam_centers - cam_centers.mean(0), axis=1).max()) * 1.1 or 1.0

    refine_stop = int(settings.iterations * settings.refine_stop_fraction)
    strategy = DefaultStrategy(refine_start_iter=settings.refine_start, refine_stop_iter=refine_stop,
                               refine_every=settings.refine_every, reset_every=settings.reset_every,
                               grow_grad2d=settings.grow_grad2d, verbose=False)
    start_step = 0
    state = None
    ckpt = None
    if resume and run.fit_checkpoint.exists():
        try:
            ckpt = load_torch_file(run.fit_checkpoint, device)
        except MaskFieldError as exc:
            reporter.log(f"{exc} The fit starts over.", level="warning")
    if ckpt is not None:
        if ckpt.get("settings") == _comparable(settings):
            gaussians = Gaussians.from_state_dict(ckpt["gaussians"], device)
            optimizers = _optimizers(gaussians, settings, scene_scale)
            for name, opt in optimizers.items():
                opt.load_state_dict(ckpt["optimizers"][name])
            strategy_state = ckpt["strategy"]
            if ckpt.get("backdrop"):
                backdrop.load_state_dict(ckpt["backdrop"])
            start_step = int(ckpt["step"])
            state = "resumed"
            reporter.log(f"resuming the fit at step {start_step} of {settings.iterations}")
        else:
            reporter.log("the saved fit used other settings; starting over")
    seedless = scene.points is None or len(scene.points) == 0
    if state is None:
        found = triangulated_seeds(scene, train, settings, reporter) if seedless else None
        if not seedless:
            gaussians = Gaussians.from_points(scene.points, scene.point_colors, settings.sh_degree, device=device)
            seeded = f"{len(scene.points):,} scene points"
        elif found is not None:
            gaussians = Gaussians.from_points(found[0], found[1], settings.sh_degree, device=device)
            seeded = (f"{len(found[0]) - settings.triangulated_fill:,} points triangulated from the training views' "
                      f"features and {settings.triangulated_fill:,} more " +
                      ("on the surfaces between them" if settings.fill_mode == "surfaces" else "in their box"))
        elif inside:
            views = [scene.cameras[i] for i in train]
            spread = float(np.median(np.linalg.norm(cam_centers - cam_centers.mean(0), axis=1))) or radius or 1.0
            near, far = spread, OUTWARD_DEPTHS * spread
            gaussians = Gaussians.random_in_views(views, settings.init_points, near, far, settings.sh_degree,
                                                  seed=settings.seed, device=device)
            seeded = (f"{settings.init_points:,} random points along the views, {near:.3g} to {far:.3g} units out "
                      "(the cameras look outward from where they stand: a capture from inside)")
        else:
            gaussians = Gaussians.random_in_bounds(center, radius, settings.init_points, settings.sh_degree,
                                                   seed=settings.seed, device=device)
            seeded = f"{settings.init_points:,} random points in the scene bounds"
        reporter.log(f"seeded {len(gaussians):,} Gaussians from {seeded}")
        optimizers = _optimizers(gaussians, settings, scene_scale)
        strategy_state = strategy.initialize_state(scene_scale=scene_scale)
    strategy.check_sanity(gaussians.params, optimizers)
    grow_grad2d = strategy.grow_grad2d

    cam_dist = np.linalg.norm(cam_centers - center, axis=1)
    # from inside, every wall is near some camera and its flat Gaussians span wide angles: pruning
    # them as too large opened holes that held-out views saw (docs/measurements.md, 28 November)
    floaters = FloaterPruning(torch.as_tensor(cam_centers, dtype=torch.float32, device=device),
                              torch.as_tensor(cam_dist, dtype=torch.float32, device=device), settings,
                              angular_scale=math.inf if inside else settings.prune_angular_scale)
    pruned = {"near_camera": 0, "too_large": 0}
    zero = torch.zeros(3, device=device)
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
                background = backdrop.colour()
                # composited here rather than in the renderer, so that a learned colour gets its gradient
                out = render(gaussians.activated(split_sh=True), cameras[view], sh_degree=degree, background=zero,
                             backend=settings.renderer)
                out["color"] = out["color"] + (1.0 - out["alpha"]).clamp_min(0.0)[..., None] * background
                info = {"means2d": out["means2d"], "radii": out["radii"], "width": cameras[view].width,
                        "height": cameras[view].height, "n_cameras": 1, "gaussian_ids": None}
                strategy.step_pre_backward(gaussians.params, optimizers, strategy_state, step, info)
                target = backdrop.target(view, background)
                l1 = (out["color"] - target).abs().mean()
                loss = (1 - settings.ssim_weight) * l1 + settings.ssim_weight * (1 - ssim(out["color"], target))
                if settings.backdrop_alpha_weight > 0 and backdrop.mode == "learn":
                    loss = loss + settings.backdrop_alpha_weight * backdrop_alpha_penalty(
                        out["alpha"], target, background, settings.backdrop_alpha_sigma)
                if settings.surface_alpha_weight > 0 and backdrop.mode == "learn":
                    loss = loss + settings.surface_alpha_weight * surface_alpha_penalty(
                        out["alpha"], target, background, settings.surface_alpha_sigma,
                        settings.surface_alpha_inset)
                loss.backward()
                if not torch.isfinite(loss):
                    raise MaskFieldError(f"the colour fit diverged (loss is {float(loss)}) at step {step}; "
                                         "try a smaller --downscale or fewer --iterations.", kind="nan")
                for opt in optimizers.values():
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                backdrop.step(step)
                for group in optimizers["means"].param_groups:
                    group["lr"] *= gamma
                # at the size cap: keep pruning, stop growing
                strategy.grow_grad2d = grow_grad2d if len(gaussians) < settings.max_gaussians else math.inf
                strategy.step_post_backward(gaussians.params, optimizers, strategy_state, step, info, packed=False)
                if step > settings.refine_start and step % settings.refine_every == 0:
                    for why, count in floaters.prune(gaussians, optimizers, strategy_state).items():
                        pruned[why] += count
                check_fit_state(gaussians, step + 1, run.fit_checkpoint, full=False)
                last_loss = loss.item()
                bar.update(1, loss=last_loss, gaussians=len(gaussians), pairs=out.get("num_pairs", 0))
                if (step + 1) % settings.checkpoint_every == 0 and step + 1 < settings.iterations:
                    check_fit_state(gaussians, step + 1, run.fit_checkpoint)  # never save a broken state
                    _save(run, gaussians, optimizers, strategy_state, step + 1, settings, backdrop)
                if monitor is not None:
                    monitor(step + 1, gaussians, backdrop.render_colour())
        step = settings.iterations
    except Cancelled:
        _save(run, gaussians, optimizers, strategy_state, step, settings, backdrop)
        reporter.log(f"fit cancelled at step {step}; run the same command again to resume")
        raise
    fit_seconds = time.perf_counter() - t_start
    if seedless:
        pruned["in_no_view"] = _drop_unseen(gaussians, optimizers, strategy_state, cameras.values(), reporter)
    check_fit_state(gaussians, step, run.fit_checkpoint)
    _save(run, gaussians, optimizers, strategy_state, step, settings, backdrop)
    metrics = evaluate_views(scene, gaussians, scene.test_indices, settings, device, reporter,
                             background=backdrop.render_colour())
    write_ply(run.gaussians_ply, gaussians)
    result = {"gaussians": len(gaussians), "seconds": round(fit_seconds, 1), "final_loss": last_loss,
              "settings": asdict(settings), "device": device, "renderer": choose_backend(settings.renderer, device),
              "resumed_from": start_step,
              "background_mode": mode, "background": list(backdrop.render_colour()), "pruned": pruned, **metrics}
    run.update_stage("fit", **result)
    return result


def triangulated_seeds(scene, train, settings: FitSettings, reporter: Reporter):
    """(points, colours) triangulated from the training views for a capture without points, or
    None (``settings.seedless_init`` is "random", or too few points were found: the fit then
    starts from random points, and says why)."""
    if settings.seedless_init != "triangulate":
        return None
    from ..scene.triangulate import fill_in_box, triangulate

    try:
        found = triangulate(scene, train, reporter, seed=settings.seed,
                            fill=settings.triangulated_fill if settings.fill_mode == "surfaces" else 0)
    except (ImportError, RuntimeError, ValueError, OSError) as exc:  # a broken pycolmap must not stop the fit
        reporter.log(f"the seed points could not be triangulated ({type(exc).__name__}: {exc}): starting from "
                     f"{settings.init_points:,} random points instead", level="warning")
        return None
    if len(found.points) < MIN_TRIANGULATED:
        reporter.log(f"only {len(found.points)} points could be triangulated from the photos' features (blank or "
                     f"blurred surfaces?): starting from {settings.init_points:,} random points instead",
                     level="warning")
        return None
    if settings.fill_mode == "box":
        found.fill_points, found.fill_colours = fill_in_box(found.points, settings.triangulated_fill,
                                                            np.random.default_rng(settings.seed))
    return np.concatenate([found.points, found.fill_points]), np.concatenate([found.colours, found.fill_colours])


def _drop_unseen(gaussians: Gaussians, optimizers: dict, strategy_state: dict, cameras, reporter) -> int:
    """Remove the Gaussians of a seedless fit that fall in no training camera's image.

    Random starts that no camera looks at (a fifth start on a far shell, for a photo's
    background) never get a gradient: they would stay, at their random colours, as blobs around
    the scene in any other view and in exports (3,034 of the seedless benchmark room's 10,949).
    Removed after the fit rather than before it: while present they change nothing the cameras
    see, and the fit then takes the very path it was measured on."""
    from gsplat.strategy.ops import remove

    unseen = ~in_some_view(gaussians, cameras)
    count = int(unseen.sum())
    if 0 < count < len(gaussians):
        remove(params=gaussians.params, optimizers=optimizers, state=strategy_state, mask=unseen)
        reporter.log(f"left out {count:,} Gaussians no training view sees (starts no camera looks at)")
    return count if count < len(gaussians) else 0


@torch.no_grad()
def in_some_view(gaussians: Gaussians, cameras) -> torch.Tensor:
    """Per Gaussian, whether it falls inside at least one of ``cameras``' images (the
    renderer's own culling: in front of the near plane, its footprint on the image)."""
    g = gaussians.activated()
    seen = torch.zeros(len(gaussians), dtype=torch.bool, device=g["means"].device)
    for camera in cameras:
        radii = project(g, camera)[0]
        seen |= (radii[0] > 0).all(dim=-1)
    return seen


def evaluate_views(scene, gaussians: Gaussians, indices, settings: FitSettings, device, reporter=None,
                   background=None) -> dict:
    """Held-out PSNR, SSIM and the worst floater share (the views never trained on)."""
    from ..evaluate import floater_share

    if not indices:
        return {"test_psnr": None, "test_ssim": None, "test_views": 0, "test_floater_share_max": None}
    values_psnr, values_ssim, shares = [], [], []
    background = torch.tensor(settings.background if background is None else background, dtype=torch.float32,
                              device=device)
    with torch.no_grad():
        g = gaussians.activated()
        for i in indices:
            scale = settings.view_downscale(scene.cameras[i])
            cam = RenderCamera.from_camera(scene.camera(i, scale), device)
            target = torch.as_tensor(scene.load_image(i, scale), device=device)
            color = render(g, cam, sh_degree=settings.sh_degree, background=background,
                           backend=settings.renderer)["color"].clamp(0, 1)
            values_psnr.append(psnr(color, target))
            values_ssim.append(float(ssim(color, target)))
            shares.append(floater_share(color.cpu().numpy(), target.cpu().numpy()))
    return {"test_psnr": float(np.mean(values_psnr)), "test_ssim": float(np.mean(values_ssim)),
            "test_views": len(indices), "test_floater_share_max": float(np.max(shares))}


def load_alpha(scene, index: int, downscale: float) -> np.ndarray:
    """The image's alpha (H x W float32 in [0, 1]) at the fit's size, as ``Scene.load_image`` sizes colour."""
    from PIL import Image

    from ..scene.images import to_view

    with Image.open(scene.image_paths[index]) as img:
        alpha = np.asarray(img.convert("RGBA"), dtype=np.float32)[..., 3:] / 255.0
    return np.ascontiguousarray(to_view(alpha, scene.cameras[index], downscale)[..., 0])


# a seedless capture from inside: random points from the cameras' spread out to this many times it
OUTWARD_DEPTHS = 30.0


def looks_outward(scene, views, center) -> bool:
    """True when the cameras do not look at the point their axes pass nearest: half or more of
    them face it at over 60 degrees off their axis, or away (a room filmed from its middle, a
    turn on the spot), so the scene lies around the cameras. Rings, orbits and forward-facing
    captures face it (the tabletop, the fox and the benchmark scenes: a median cosine of 0.99
    and more; a room filmed from inside: 0.0)."""
    facing = []
    for i in views:
        cam = scene.cameras[i]
        to_center = np.asarray(center) - cam.center
        dist = np.linalg.norm(to_center)
        if dist > 0:
            facing.append(float(cam.camtoworld[:3, 2] @ to_center) / dist)
    return bool(facing) and float(np.median(facing)) < 0.5


class TrainingImages:
    """The training images on the fit's device, by view: float32 in [0, 1] as read, or kept in
    8 bits (``eight_bit``, on a GPU) and handed out as float32. 300 photos at 1,600 px take
    6.9 GB of GPU memory in float32 and 1.7 GB in 8 bits; the photos are 8-bit, and their
    resized values lose under 1/510 (a PSNR ceiling of 54 dB). The CPU keeps float32: its
    images are small (256 px) and its figures were measured so."""

    def __init__(self, eight_bit: bool = False):
        self.eight_bit = eight_bit
        self._store: dict[int, torch.Tensor] = {}

    def __setitem__(self, view: int, image: torch.Tensor) -> None:
        if self.eight_bit:
            image = (image * 255.0).round_().clamp_(0, 255).to(torch.uint8)
        self._store[view] = image

    def __getitem__(self, view: int) -> torch.Tensor:
        image = self._store[view]
        return image.float().div_(255.0) if image.dtype == torch.uint8 else image

    def __len__(self) -> int:
        return len(self._store)

    def values(self):
        return (self[view] for view in self._store)


class Backdrop:
    """What the Gaussians are composited over while fitting, and the matching targets.

    - ``fixed``: the settings' colour (images with alpha were composited over it on load);
    - ``learn``: one colour, a parameter fitted with the Gaussians (opaque images whose
      backdrop is a world colour or a distant, even sky);
    - ``random``: a new random colour every step, the target re-composited over it from the
      image's alpha, so that Gaussians cannot paint the backdrop (transparent renders).
    """

    def __init__(self, mode: str, settings: FitSettings, images: dict, alphas: dict, device):
        self.mode, self.images, self.alphas, self.device = mode, images, alphas, device
        self.fixed = torch.tensor(settings.background, dtype=torch.float32, device=device)
        self.gen = torch.Generator(device="cpu").manual_seed(settings.seed + 1)
        self.logit = None
        self.optimizer = None
        self.warmup = settings.background_warmup
        if mode == "learn":
            # start from the images' border colour, which is mostly backdrop
            border = torch.cat([torch.cat([im[0], im[-1], im[:, 0], im[:, -1]]) for im in images.values()])
            start = border.median(0).values.clamp(0.02, 0.98)
            self.logit = torch.nn.Parameter(torch.logit(start).to(device))
            self.optimizer = Adam([self.logit], lr=settings.background_lr)

    def colour(self) -> torch.Tensor:
        if self.mode == "learn":
            return torch.sigmoid(self.logit)
        if self.mode == "random":
            return torch.rand(3, generator=self.gen).to(self.device)
        return self.fixed

    def target(self, view: int, background: torch.Tensor) -> torch.Tensor:
        image = self.images[view]
        if self.mode != "random":
            return image
        alpha = self.alphas[view][..., None]
        # the image is colour * alpha + fixed * (1 - alpha): swap the fixed colour for this step's
        return image + (background.detach() - self.fixed) * (1.0 - alpha)

    def step(self, step: int) -> None:
        if self.optimizer is not None:
            if step >= self.warmup:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

    def render_colour(self) -> tuple[float, float, float]:
        """The colour to render novel views over: the learned one, else the fixed one."""
        c = torch.sigmoid(self.logit.detach()) if self.mode == "learn" else self.fixed
        return tuple(float(v) for v in c)

    def state_dict(self) -> dict:
        return {"mode": self.mode, "logit": None if self.logit is None else self.logit.detach().cpu(),
                "optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.mode == "learn" and state.get("logit") is not None:
            with torch.no_grad():
                self.logit.copy_(state["logit"].to(self.device))
            self.optimizer.load_state_dict(state["optimizer"])


class FloaterPruning:
    """Removes Gaussians that only a camera's near field or a huge footprint explains.

    - near a camera: closer to a training camera's centre than ``prune_near_camera`` times
      that camera's distance to the scene centre. Such a Gaussian covers much of one view
      and little of the others: the floaters that held-out views show as dark blots;
    - too large: the largest 3D scale over the distance to the nearest training camera (the
      angle it spans, in radians) above ``angular_scale`` (the settings' ``prune_angular_scale``
      unless given; infinite for captures from inside); angular, so distant backgrounds of
      photos keep their big Gaussians while a blob across the view goes.
    """

    def __init__(self, cam_centers: torch.Tensor, cam_dist: torch.Tensor, settings: FitSettings,
                 angular_scale: float | None = None):
        self.centers, self.dist, self.settings = cam_centers, cam_dist, settings
        self.angular_scale = settings.prune_angular_scale if angular_scale is None else angular_scale

    @torch.no_grad()
    def flags(self, gaussians: Gaussians) -> dict[str, torch.Tensor]:
        means = gaussians.params["means"].detach()
        near = torch.zeros(len(means), dtype=torch.bool, device=means.device)
        nearest = torch.full((len(means),), torch.inf, device=means.device)
        for chunk in torch.split(torch.arange(len(means), device=means.device), 65_536):
            d = torch.cdist(means[chunk], self.centers)  # (n, cameras)
            near[chunk] = (d < self.settings.prune_near_camera * self.dist[None]).any(1)
            nearest[chunk] = d.min(1).values
        scale = torch.exp(gaussians.params["scales"].detach()).max(1).values
        large = scale > self.angular_scale * nearest.clamp_min(1e-6)
        return {"near_camera": near, "too_large": large & ~near}

    @torch.no_grad()
    def prune(self, gaussians: Gaussians, optimizers: dict, strategy_state: dict) -> dict[str, int]:
        from gsplat.strategy.ops import remove

        flags = self.flags(gaussians)
        mask = flags["near_camera"] | flags["too_large"]
        if mask.any() and not mask.all():
            remove(params=gaussians.params, optimizers=optimizers, state=strategy_state, mask=mask)
        return {k: int(v.sum()) for k, v in flags.items()} if not mask.all() else {k: 0 for k in flags}


def _optimizers(gaussians: Gaussians, settings: FitSettings, scene_scale: float) -> dict:
    opts = {}
    for name, param in gaussians.params.items():
        lr = settings.lr[name] * (scene_scale if name == "means" else 1.0)
        # torch's fused kernel: one per parameter instead of ~10 tensor ops (a third of the step on the CPU)
        opts[name] = Adam([{"params": param, "lr": lr, "name": name}], eps=1e-15)
    return opts


def _comparable(settings: FitSettings) -> dict:
    d = asdict(settings)
    d.pop("checkpoint_every", None)
    return d


def _save(run: RunFolder, gaussians, optimizers, strategy_state, step, settings, backdrop=None):
    save_torch_atomic({
        "backdrop": backdrop.state_dict() if backdrop is not None else None,
        "gaussians": gaussians.state_dict(),
        "optimizers": {k: v.state_dict() for k, v in optimizers.items()},
        "strategy": {k: (v.detach().cpu() if isinstance(v, torch.Tensor) else v) for k, v in strategy_state.items()},
        "step": step,
        "settings": _comparable(settings),
    }, run.fit_checkpoint)
