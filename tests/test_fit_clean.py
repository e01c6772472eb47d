# SPDX-License-Identifier: GPL-3.0-or-later
"""A clean colour fit: the learned background, random backgrounds for images with alpha,
floater pruning (near cameras, over-large), and the floater share of a view."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import look_at_c2w_gl, write_png

from maskfield.evaluate import floater_share
from maskfield.run import RunFolder
from maskfield.scene import load_scene
from maskfield.splats.fit import Backdrop, FitSettings, FloaterPruning, fit
from maskfield.splats.losses import backdrop_alpha_penalty, surface_alpha_penalty
from maskfield.splats.model import Gaussians


def test_floater_share_is_the_largest_wrong_blob_not_thin_edges():
    target = np.full((40, 50, 3), 0.5, np.float32)
    render = target.copy()
    render[5:15, 10:20] = 0.0  # a 10 x 10 floater
    render[30:34, 30:34] = 1.0  # a smaller blob
    render[:, 45] = 0.0  # a one-pixel line (an edge off by a pixel): not a floater
    assert floater_share(render, target) == pytest.approx(100 / (40 * 50))
    assert floater_share(target, target) == 0.0
    render[5:15, 10:20] = 0.6  # below the error threshold
    assert floater_share(render, target) == pytest.approx(16 / (40 * 50))


def _uniform_scene(tmp_path, colour, n=6, w=40, h=30):
    """Opaque images of one colour (a world background, nothing in front), seen from a ring."""
    folder = tmp_path / "uniform"
    frames = []
    for i in range(n):
        a = 2 * np.pi * i / n
        write_png(folder / "images" / f"{i:03d}.png", np.full((h, w, 3), np.round(np.array(colour) * 255), np.uint8))
        frames.append({"file_path": f"images/{i:03d}.png",
                       "transform_matrix": look_at_c2w_gl([3 * np.cos(a), 3 * np.sin(a), 1.0]).tolist()})
    meta = {"fl_x": 35.0, "fl_y": 35.0, "cx": w / 2, "cy": h / 2, "w": w, "h": h, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(meta))
    return folder


def test_a_seedless_fit_keeps_the_world_colour_behind_a_large_even_surface(tmp_path):
    """While random Gaussians are still faint, every pixel pulls on a learned background colour
    and the largest even surface wins: a seedless walk past a white kitchen counter took the
    counter's white, and the counter went see-through. Held at the images' border colour for
    the warm-up, the colour stays the world's."""
    world, panel = np.array([0.63, 0.63, 0.63]), np.array([0.85, 0.85, 0.82])
    folder, frames, w, h = tmp_path / "walk", [], 40, 30
    image = np.tile(world, (h, w, 1))
    image[4:-4, 4:-4] = panel  # a white panel filling most of each view, the world round it
    for i, x in enumerate(np.linspace(-0.6, 0.6, 6)):  # a short walk past it, every camera facing it
        write_png(folder / "images" / f"{i:03d}.png", np.round(image * 255).astype(np.uint8))
        frames.append({"file_path": f"images/{i:03d}.png",
                       "transform_matrix": look_at_c2w_gl([x, -3.0, 0.5]).tolist()})
    meta = {"fl_x": 30.0, "fl_y": 30.0, "cx": w / 2, "cy": h / 2, "w": w, "h": h, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(meta))
    scene = load_scene(folder, holdout_every=0)
    assert scene.points is None
    drift = {}
    for warmup in (0, 100):
        settings = FitSettings(iterations=150, init_points=400, background_mode="learn", refine_start=1000,
                               sh_degree=0, checkpoint_every=1000, background_warmup=warmup)
        result = fit(scene, RunFolder(tmp_path / f"run-{warmup}"), settings, resume=False)
        drift[warmup] = float(np.abs(np.array(result["background"]) - world).max())
    assert drift[0] > 0.15 and drift[100] < 0.05, drift  # the panel is 0.22 off the world


@pytest.mark.parametrize("mode", ["learn", "fixed"])
def test_learned_background_takes_the_world_colour(tmp_path, mode):
    colour = (0.45, 0.6, 0.3)
    folder = _uniform_scene(tmp_path, colour)
    scene = load_scene(folder, holdout_every=3)
    settings = FitSettings(iterations=40, init_points=300, background_mode=mode, refine_start=1000,
                           sh_degree=0, checkpoint_every=1000)
    result = fit(scene, RunFolder(tmp_path / f"run-{mode}"), settings, resume=False)
    if mode == "learn":
        # started from the border colour and kept it: the Gaussians need not paint the world
        assert np.allclose(result["background"], colour, atol=0.05), result["background"]
        assert result["test_psnr"] > 28, result["test_psnr"]
    else:  # a black backdrop leaves the Gaussians to paint the world, which 40 steps cannot do
        assert result["background"] == [0.0, 0.0, 0.0]
        assert result["test_psnr"] < 25


def test_backdrop_alpha_penalty_weighs_alpha_where_the_target_is_the_background():
    background = torch.tensor([0.6, 0.6, 0.6], requires_grad=True)
    target = background.detach().expand(4, 6, 3).clone()
    target[:, 3:] += 0.1  # right half: a surface 0.17 from the world colour, 17 sigma
    target[0, 0] += 0.01  # one world pixel with a little render noise: 1.7 sigma
    alpha = torch.full((4, 6, 1), 0.5, requires_grad=True)
    penalty = backdrop_alpha_penalty(alpha, target, background, sigma=0.01)
    noisy = np.exp(-3 * 0.01 ** 2 / (2 * 0.01 ** 2))
    assert penalty.item() == pytest.approx(0.5 * (11 + noisy) / 24, rel=1e-5)
    penalty.backward()
    grad = alpha.grad[..., 0]
    assert torch.allclose(grad[1:, :3], torch.full((3, 3), 1 / 24))  # the world's pixels
    assert grad[0, 0].item() == pytest.approx(noisy / 24, rel=1e-5)
    assert grad[:, 3:].abs().max().item() < 1e-30  # the surface's: free to be opaque
    assert background.grad is None  # the colour loss alone fits the background
    # a blown-out white (or black) world says nothing: a white wall clipped alike stays opaque
    for clipped in (1.0, 0.0):
        world = torch.full((3,), clipped)
        image = world.expand(2, 2, 3).clone()
        image[0, 0] = torch.tensor([clipped, clipped, 0.5])  # one pixel clipped in two channels only
        penalty = backdrop_alpha_penalty(torch.ones(2, 2, 1), image, world, sigma=0.5)
        assert penalty.item() == pytest.approx(np.exp(-0.25 / 0.5) / 4, rel=1e-5)


def test_surface_alpha_penalty_weighs_transparency_where_the_target_is_not_the_background():
    background = torch.tensor([0.6, 0.6, 0.6], requires_grad=True)
    target = background.detach().expand(4, 6, 3).clone()
    target[:, 3:] = torch.tensor([0.9, 0.85, 0.8])  # right half: a light floor, far from the world's grey
    target[0, 0] += 0.02  # a world pixel with render noise (per channel; 0.035 in all): a small weight
    alpha = torch.full((4, 6, 1), 0.6, requires_grad=True)
    penalty = surface_alpha_penalty(alpha, target, background, sigma=0.1)
    far = 1 - np.exp(-(0.3 ** 2 + 0.25 ** 2 + 0.2 ** 2) / (2 * 0.1 ** 2))
    noisy = 1 - np.exp(-3 * 0.02 ** 2 / (2 * 0.1 ** 2))
    assert penalty.item() == pytest.approx(0.4 * (12 * far + noisy) / 24, rel=1e-5)
    penalty.backward()
    grad = alpha.grad[..., 0]
    assert torch.allclose(grad[:, 3:], torch.full((4, 3), -far / 24))  # the floor: pushed opaque
    assert grad[1:, :3].abs().max().item() == 0.0  # the world's own colour: left to the other penalty
    assert grad[0, 0].item() == pytest.approx(-noisy / 24, rel=1e-5)
    assert noisy < 0.1 * far  # noise over the world: a nudge
    assert background.grad is None
    # inset by one pixel: the floor's edge column (beside the world) and the lone noisy world
    # pixel weigh nothing; the floor's inner columns keep their weight, the image border too
    alpha.grad = None
    surface_alpha_penalty(alpha, target, background, sigma=0.1, inset=1).backward()
    grad = alpha.grad[..., 0]
    assert grad[:, :4].abs().max().item() == 0.0
    assert torch.allclose(grad[:, 4:], torch.full((4, 2), -far / 24))


def test_gaussians_painting_the_learned_background_fade(tmp_path):
    """Gaussians of the world's own colour in front of a world of that colour cost the colour
    loss nothing, so without the penalty they stay as they were; with it they fade (and are
    pruned once faint enough), as the veil over the benchmark room's grey world did."""
    from maskfield.splats.ply import read_ply

    colour = (0.45, 0.6, 0.3)
    folder = _uniform_scene(tmp_path, colour)
    scene = load_scene(folder, holdout_every=3)
    rng = np.random.default_rng(0)
    scene.points = rng.uniform(-0.5, 0.5, (200, 3)).astype(np.float32)  # in every camera's view
    scene.point_colors = np.tile(np.round(np.array(colour) * 255).astype(np.uint8), (200, 1))
    opacity = {}
    # the colour learned from the first step: held at exactly the Gaussians' colour (the warm-up),
    # their opacity's gradient is rounding noise, which Adam scales up to full steps either way
    default = FitSettings().background_warmup
    for weight, warmup in ((0.0, 0), (0.05, 0), (0.05, default)):
        settings = FitSettings(iterations=60, background_mode="learn", refine_start=1000, sh_degree=0,
                               checkpoint_every=1000, backdrop_alpha_weight=weight, background_warmup=warmup)
        run = RunFolder(tmp_path / f"run-{weight}-{warmup}")
        fit(scene, run, settings, resume=False)
        opacity[weight, warmup] = float(torch.sigmoid(read_ply(run.gaussians_ply).params["opacities"]).mean())
    assert opacity[0.0, 0] > 0.08, opacity  # seeded at 0.1: nothing made them fade
    assert default > 0 and max(opacity[0.05, 0], opacity[0.05, default]) < 0.5 * opacity[0.0, 0], opacity


def test_the_default_fit_weighs_see_through_surfaces_over_a_learned_background(tmp_path, monkeypatch):
    """The surface-alpha term (values and gradients tested above) is on by default, with the
    silhouette inset, wherever the background is learned; 0 turns it off, and over random
    colours (images with alpha) there is no background colour to tell a surface from."""
    from maskfield.splats import fit as fit_module

    calls = []
    real = fit_module.surface_alpha_penalty

    def recording(alpha, target, background, sigma, inset=0):
        calls.append((sigma, inset))
        return real(alpha, target, background, sigma, inset)

    monkeypatch.setattr(fit_module, "surface_alpha_penalty", recording)
    default = FitSettings()
    assert default.surface_alpha_weight == 0.05 and default.surface_alpha_inset == 1
    scene = load_scene(_uniform_scene(tmp_path, (0.45, 0.6, 0.3)), holdout_every=0)
    for mode, weight, expected in (("learn", default.surface_alpha_weight, 5), ("learn", 0.0, 0),
                                   ("fixed", default.surface_alpha_weight, 0)):
        calls.clear()
        settings = FitSettings(iterations=5, init_points=50, background_mode=mode, refine_start=1000, sh_degree=0,
                               checkpoint_every=1000, surface_alpha_weight=weight)
        fit(scene, RunFolder(tmp_path / f"run-{mode}-{weight}"), settings, resume=False)
        assert calls == [(default.surface_alpha_sigma, 1)] * expected, (mode, weight, calls)


def test_the_background_penalties_are_fit_options(tmp_path):
    from maskfield import cli

    folder = _uniform_scene(tmp_path, (0.45, 0.6, 0.3))
    out = tmp_path / "run"
    assert cli.main(["fit", str(folder), "--out", str(out), "--iterations", "3", "--backdrop-alpha", "0.2",
                     "--surface-alpha", "0.3", "--surface-alpha-inset", "2", "--events", "none"]) == 0
    stage = json.loads((out / "run.json").read_text())["stages"]["fit"]
    assert stage["settings"]["backdrop_alpha_weight"] == 0.2 and stage["background_mode"] == "learn"
    assert stage["settings"]["surface_alpha_weight"] == 0.3 and stage["settings"]["surface_alpha_inset"] == 2
    for option in ("--backdrop-alpha", "--surface-alpha", "--surface-alpha-inset"):
        with pytest.raises(SystemExit):  # argparse refuses a negative weight
            cli.main(["fit", str(folder), "--out", str(out), option, "-1", "--events", "none"])


def test_a_fit_without_downscale_works_at_256_px_on_a_cpu_1600_on_cuda_or_at_max_size(tmp_path, capsys):
    """The fox's 1920x1080 photos: 1/8 on a CPU (and MPS), 1/2 on CUDA; small images are kept;
    --max-size sets another long side, and with --downscale it is refused."""
    from conftest import FOX

    from maskfield import cli

    fox = load_scene(FOX)
    assert (fox.cameras[0].width, fox.cameras[0].height) == (1080, 1920)
    assert [cli._auto_downscale(fox, d) for d in ("cpu", "mps", "cuda")] == [8.0, 8.0, 2.0]
    small = load_scene(_uniform_scene(tmp_path, (0.45, 0.6, 0.3)))
    assert max(small.cameras[0].width, small.cameras[0].height) <= 256
    assert cli._auto_downscale(small, "cpu") == 1.0
    from types import SimpleNamespace

    mixed = SimpleNamespace(cameras=[SimpleNamespace(width=640, height=480), SimpleNamespace(width=1080, height=1920)])
    assert cli._auto_downscale(mixed, "cpu") == 8.0  # the largest image decides

    out = tmp_path / "fox"
    assert cli.main(["fit", str(FOX), "--out", str(out), "--iterations", "1", "--device", "cpu",
                     "--events", "none"]) == 0
    assert json.loads((out / "run.json").read_text())["stages"]["fit"]["settings"]["downscale"] == 8.0
    assert "images of 1080x1920 fitted at 1/8, long side at most 256 px" in capsys.readouterr().err
    # a size of one's own: 1920 / 500 -> 1/4 (480 px)
    assert cli._auto_downscale(fox, "cpu", 500) == 4.0 and cli._auto_downscale(fox, "cuda", 4000) == 1.0
    with pytest.raises(SystemExit):  # argparse: too small to fit
        cli.build_parser().parse_args(["fit", str(FOX), "--out", str(out), "--max-size", "8"])
    assert cli.main(["fit", str(FOX), "--out", str(tmp_path / "both"), "--max-size", "500", "--downscale", "2",
                     "--events", "none"]) == 2
    assert "--downscale or --max-size, not both" in capsys.readouterr().err


def test_the_densification_threshold_is_the_fits_setting(tmp_path):
    """grow_grad2d reaches gsplat's strategy: at 0 every seen Gaussian grows, at infinity none."""
    folder = _uniform_scene(tmp_path, (0.45, 0.6, 0.3))
    scene = load_scene(folder, holdout_every=3)
    counts = {}
    for threshold in (0.0, float("inf")):
        settings = FitSettings(iterations=40, init_points=300, background_mode="fixed", refine_start=5,
                               refine_every=10, refine_stop_fraction=0.9, sh_degree=0, checkpoint_every=1000,
                               prune_angular_scale=10.0, grow_grad2d=threshold)
        counts[threshold] = fit(scene, RunFolder(tmp_path / f"run-{threshold}"), settings, resume=False)["gaussians"]
    assert counts[float("inf")] <= 300 < counts[0.0], counts


def test_learned_background_gets_a_gradient_after_its_warmup():
    """Held at its start for the warm-up steps (while the Gaussians are faint), then fitted."""
    images = {0: torch.full((6, 8, 3), 0.8)}
    backdrop = Backdrop("learn", FitSettings(background_lr=0.1, background_warmup=10), images, {}, "cpu")
    with torch.no_grad():
        backdrop.logit.fill_(0.0)  # 0.5, away from the images' 0.8
    for step in range(40):
        colour = backdrop.colour()
        loss = (colour - images[0]).abs().mean()  # nothing in front: the image is all backdrop
        loss.backward()
        backdrop.step(step)
        if step == 9:
            assert np.allclose(backdrop.render_colour(), 0.5)
            assert backdrop.logit.grad is None  # the warm-up's gradients are dropped, not saved up
    assert np.allclose(backdrop.render_colour(), 0.8, atol=0.05)


def test_random_background_recomposites_the_target():
    fixed = (1.0, 1.0, 1.0)
    rgb = torch.tensor([0.2, 0.4, 0.6])
    alpha = torch.zeros(4, 5)
    alpha[1:3, 1:4] = 1.0
    alpha[0, 0] = 0.5
    image = rgb * alpha[..., None] + torch.tensor(fixed) * (1 - alpha[..., None])  # as loaded over white
    settings = FitSettings(background=fixed)
    backdrop = Backdrop("random", settings, {0: image}, {0: alpha}, "cpu")
    colours = [backdrop.colour() for _ in range(3)]
    assert not torch.allclose(colours[0], colours[1])
    for b in colours:
        expected = rgb * alpha[..., None] + b * (1 - alpha[..., None])
        assert torch.allclose(backdrop.target(0, b), expected, atol=1e-6)


def test_floater_pruning_removes_near_camera_and_over_large_gaussians():
    cams = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [-4.0, 0.0, 0.0]])
    dist = cams.norm(dim=1)  # the scene centre is the origin
    means = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.1, 0.0],  # in the scene
                          [3.5, 0.1, 0.0],  # 0.5 from a camera: a floater in its face
                          [0.0, -0.3, 0.2],  # in the scene but 2 units wide: spans half a view
                          [0.1, 0.0, 0.3]])
    scales = torch.log(torch.tensor([[0.02] * 3, [0.05] * 3, [0.02] * 3, [2.0, 0.1, 0.1], [0.1] * 3]))
    n = len(means)
    g = Gaussians({"means": means, "scales": scales, "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                   "opacities": torch.zeros(n), "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3)}, 0)
    from maskfield.adam import Adam

    opts = {k: Adam([{"params": p, "lr": 1e-3, "name": k}]) for k, p in g.params.items()}
    (sum(p.sum() for p in g.params.values())).backward()
    for o in opts.values():
        o.step()
    pruning = FloaterPruning(cams, dist, FitSettings(prune_near_camera=0.3, prune_angular_scale=0.1))
    flags = pruning.flags(g)
    assert flags["near_camera"].tolist() == [False, False, True, False, False]
    assert flags["too_large"].tolist() == [False, False, False, True, False]
    # a capture from inside keeps its wide Gaussians (its walls'), not those in a camera's face
    inside = FloaterPruning(cams, dist, FitSettings(prune_near_camera=0.3), angular_scale=float("inf")).flags(g)
    assert inside["near_camera"].tolist() == flags["near_camera"].tolist() and not bool(inside["too_large"].any())
    state = {"grad2d": torch.arange(n, dtype=torch.float32)}
    counts = pruning.prune(g, opts, state)
    assert counts == {"near_camera": 1, "too_large": 1}
    assert len(g) == 3 and torch.allclose(g.means.detach()[:, 0], torch.tensor([0.0, 0.2, 0.1]), atol=1e-2)
    assert state["grad2d"].tolist() == [0.0, 1.0, 4.0]  # the strategy's running state follows
    assert opts["means"].state[g.params["means"]]["exp_avg"].shape == (3, 3)  # and Adam's


def test_gaussian_label_rendering_blends_the_3d_answer():
    """Two splats side by side: each pixel takes the prompt of the Gaussians it is made of."""
    from types import SimpleNamespace

    from maskfield.evaluate import render_gaussian_labels
    from maskfield.scene.cameras import Camera
    from maskfield.segment import SegmentSettings

    n = 2
    g = Gaussians({"means": torch.tensor([[-0.5, 0.0, 3.0], [0.5, 0.0, 3.0]]),
                   "scales": torch.log(torch.full((n, 3), 0.2)), "quats": torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
                   "opacities": torch.full((n,), 5.0), "sh0": torch.zeros(n, 1, 3), "shN": torch.zeros(n, 0, 3)}, 0)
    camera = Camera("c", 32, 16, 60.0, 60.0, 16.0, 8.0, np.eye(4))  # the splats at x = 6 and 26, 4 px wide
    seg = SimpleNamespace(gaussians=g, settings=SegmentSettings(mask_threshold=0.5))
    scores = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)  # Gaussian 0 is prompt 0's, 1 is prompt 1's
    labels = render_gaussian_labels(seg, camera, scores)
    assert labels.shape == (16, 32)
    assert labels[8, 6] == 0 and labels[8, 26] == 1  # under each splat
    assert labels[0, 0] == -1 and labels[8, 16] == -1  # too thin a cover there
    weak = render_gaussian_labels(seg, camera, np.array([[0.4, 0.1], [0.2, 0.3]], np.float32))
    assert (weak == -1).all()  # no prompt passes the mask threshold


def test_random_starts_that_no_training_view_sees_are_left_out(tmp_path):
    """Seedless fits start from random points, a fifth on a far shell; the ones outside every
    training camera's image never get a gradient and would stay as random blobs around the
    scene (3,034 of 10,949 fitted Gaussians on the seedless benchmark room)."""
    from maskfield.splats.fit import in_some_view
    from maskfield.splats.ply import read_ply
    from maskfield.splats.render import RenderCamera

    scene = load_scene(_uniform_scene(tmp_path, (0.5, 0.5, 0.5)), holdout_every=3)
    train = [RenderCamera.from_camera(scene.camera(i)) for i in scene.train_indices]
    # in_some_view by hand: the scene centre is in view; far above and far below the ring
    # (outside every camera's 46-degree field), and past the centre on camera 1's axis, in view
    g = Gaussians.from_points(np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 30.0], [0.0, 0.0, -30.0], [-3.0, -5.2, -2.0]],
                                       np.float32), scale_multiplier=0.001)  # small: footprints count
    assert in_some_view(g, train).tolist() == [True, False, False, True]

    center, radius = scene.bounds()
    starts = Gaussians.random_in_bounds(center, radius, 2000)
    unseen = int((~in_some_view(starts, train)).sum())
    assert unseen > 100  # the far shell reaches behind the cameras
    settings = FitSettings(iterations=3, init_points=2000, background_mode="learn", refine_start=1000, sh_degree=0,
                           checkpoint_every=1000)
    run = RunFolder(tmp_path / "run")
    result = fit(scene, run, settings, resume=False)
    # removed after the fit (which took the same path as with them): about the same ones
    assert abs(result["pruned"]["in_no_view"] - unseen) <= 20
    assert result["gaussians"] == 2000 - result["pruned"]["in_no_view"]
    assert bool(in_some_view(read_ply(run.gaussians_ply), train).all())


def test_the_smallest_image_of_a_mixed_capture_decides_how_far_it_may_be_downscaled():
    from types import SimpleNamespace

    from maskfield.checks import MIN_IMAGE_SIDE, check_image_size
    from maskfield.events import MaskFieldError

    cams = [SimpleNamespace(width=1920, height=1080), SimpleNamespace(width=320, height=240)]
    scene = SimpleNamespace(cameras=cams, camera=lambda i, d: SimpleNamespace(width=int(cams[i].width / d),
                                                                              height=int(cams[i].height / d)))
    factor = 240 / MIN_IMAGE_SIDE
    check_image_size(scene, factor)  # the small camera keeps exactly the least short side
    with pytest.raises(MaskFieldError, match="makes the 320x240 images"):
        check_image_size(scene, factor * 1.5)  # fine for the large camera, too small for the other


def test_training_images_kept_in_eight_bits_hand_out_the_same_image():
    # on a GPU the fit keeps its targets in 8 bits (4x less memory); what a step reads differs
    # from the float image by at most half a level
    import torch

    from maskfield.splats.fit import TrainingImages

    image = torch.rand(30, 40, 3)
    eight, full = TrainingImages(eight_bit=True), TrainingImages()
    eight[3], full[3] = image, image
    assert eight._store[3].dtype == torch.uint8 and full[3] is image
    got = eight[3]
    assert got.dtype == torch.float32 and got.shape == image.shape
    assert float((got - image).abs().max()) <= 0.5 / 255 + 1e-7
    assert len(eight) == 1 and torch.equal(next(iter(eight.values())), got)


def _turning_capture(n=24, outward=True):
    """Cameras stepping round a small circle (radius 0.5) at 1.3 m, each looking out (a room
    filmed from its middle) or in at the middle (an orbit)."""
    from maskfield.scene.cameras import Camera
    from maskfield.scene.scene import Scene

    cams = []
    for i in range(n):
        yaw = 2 * np.pi * i / n
        pos = np.array([0.5 * np.cos(3 * yaw + 1), 0.5 * np.sin(3 * yaw + 1), 1.3])
        forward = np.array([np.cos(yaw), np.sin(yaw), -0.2]) if outward else -np.array([pos[0], pos[1], 0.3])
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0, 0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(forward, right)
        c2w = np.eye(4)
        c2w[:3, :3] = np.stack([right, down, forward], 1)  # OpenCV axes: x right, y down, z forward
        c2w[:3, 3] = pos
        cams.append(Camera(f"v{i}", 40, 30, 30.0, 30.0, 20.0, 15.0, c2w))
    return Scene(root=Path("."), cameras=cams, image_paths=[Path(f"v{i}.png") for i in range(n)],
                 train_indices=list(range(n)), test_indices=[])


def test_a_capture_from_inside_is_told_from_an_orbit():
    from maskfield.splats.fit import looks_outward

    for outward in (True, False):
        scene = _turning_capture(outward=outward)
        assert looks_outward(scene, scene.train_indices, scene.bounds()[0]) is outward


def test_the_share_of_views_that_frame_the_scene_tells_a_capture_from_inside():
    """An orbit frames its whole scene in every view; from inside a room each thing is in the
    frames of a few (the mask field's foreign term goes by it)."""
    from maskfield.field.data import frame_share

    rng = np.random.default_rng(0)
    a = rng.uniform(0, 2 * np.pi, 3000)
    walls = np.stack([3 * np.cos(a), 3 * np.sin(a), rng.uniform(0.5, 2.0, 3000)], 1)  # round the cameras
    middle = rng.normal(0, 0.05, (3000, 3)) + [0, 0, 1.2]  # where an orbit's cameras look
    for outward, points, low, high in ((True, walls, 0.0, 0.3), (False, middle, 0.9, 1.0)):
        scene = _turning_capture(outward=outward)
        g = Gaussians.from_points(points.astype(np.float32), np.full((3000, 3), 128, np.uint8), 0)
        assert low <= frame_share(scene, g, scene.train_indices) <= high, outward


def test_seedless_points_of_a_capture_from_inside_lie_in_its_views_at_the_depths_asked():
    # a cube round the cameras' nearest point, as an orbit gets, would sit among the cameras
    # themselves here; the points must lie in the cameras' views, out to the walls and beyond
    from maskfield.splats.model import Gaussians

    scene = _turning_capture()
    cam = scene.cameras[5]
    g = Gaussians.random_in_views([cam], 2000, near=0.5, far=15.0, seed=1)
    pts = g.means.detach().numpy().astype(np.float64)
    uv, z = cam.project(pts)
    assert (z > 0).all() and (uv >= 0).all() and (uv[:, 0] <= cam.width).all() and (uv[:, 1] <= cam.height).all()
    depth = np.linalg.norm(pts - cam.center, axis=1)
    assert depth.min() >= 0.5 - 1e-4 and depth.max() <= 15.0 + 1e-3
    # spread evenly in log: about as many from 0.5 to 2.7 units out as from 2.7 to 15
    assert 0.45 < np.mean(depth < np.sqrt(0.5 * 15.0)) < 0.55
    # over the whole capture, every camera seeds some of them
    g = Gaussians.random_in_views(scene.cameras, 2400, near=0.5, far=15.0, seed=2)
    pts = g.means.detach().numpy().astype(np.float64)
    seen_by = np.zeros(len(pts), int)
    for cam in scene.cameras:
        uv, z = cam.project(pts)
        seen_by += (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] <= cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] <= cam.height)
    assert (seen_by > 0).all()


def _inside_scene(tmp_path, colour, n=12, w=40, h=30):
    """Opaque images of one colour seen by cameras on a small circle looking outward at two
    pitches: the walls of a room filmed from its middle, all of one paint (their border colour
    is no backdrop)."""
    folder = tmp_path / "inside"
    frames = []
    for i in range(n):
        a = 2 * np.pi * i / n
        r = 0.2 + 0.25 * (i % 3)  # a person stepping about the middle
        eye = np.array([r * np.cos(a), r * np.sin(a), 1.2 + 0.2 * (i % 2)])
        write_png(folder / "images" / f"{i:03d}.png", np.full((h, w, 3), np.round(np.array(colour) * 255), np.uint8))
        frames.append({"file_path": f"images/{i:03d}.png",
                       "transform_matrix": look_at_c2w_gl(eye, eye + [np.cos(a), np.sin(a), -0.2 - 0.4 * (i % 2)]).tolist()})
    meta = {"fl_x": 35.0, "fl_y": 35.0, "cx": w / 2, "cy": h / 2, "w": w, "h": h, "frames": frames}
    (folder / "transforms.json").write_text(json.dumps(meta))
    return folder


def test_a_capture_from_inside_fits_every_pixel_as_a_surface(tmp_path):
    """From inside a room the images' border is wall, not a world behind the scene: a learned
    background would take the walls' colour and let them fade (the benchmark room filmed from
    inside: its floor see-through on half its held-out pixels). The default fit trains such a
    capture over random colours instead, so its Gaussians stay opaque; told to learn, they fade."""
    from maskfield.splats.ply import read_ply
    from maskfield.splats.render import RenderCamera, render

    colour = (0.7, 0.68, 0.65)
    scene = load_scene(_inside_scene(tmp_path, colour), holdout_every=4)
    alpha = {}
    for mode in ("auto", "learn"):
        settings = FitSettings(iterations=300, init_points=2000, background_mode=mode, refine_start=1000,
                               sh_degree=0, checkpoint_every=1000)
        run = RunFolder(tmp_path / f"run-{mode}")
        result = fit(scene, run, settings, resume=False)
        gaussians = read_ply(run.gaussians_ply)
        views = [RenderCamera.from_camera(scene.camera(i)) for i in scene.train_indices]
        with torch.no_grad():
            alpha[mode] = float(np.mean([render(gaussians.activated(), cam, backend="torch")["alpha"].mean()
                                         for cam in views]))
        alpha[mode + " mode"] = result["background_mode"]
    assert alpha["auto mode"] == "random" and alpha["learn mode"] == "learn", alpha
    assert alpha["auto"] > 0.9 > 0.5 > alpha["learn"], alpha
