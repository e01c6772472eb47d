"""The renderers against an independent brute-force compositor and each other, their gradients, PLY files.

``torch`` (the PyTorch reference) and ``cpu`` (the compiled one) must give the same values
and gradients; both must match the 3DGS blending rule written out pixel by pixel.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from maskfield.splats import Gaussians, read_ply, write_ply
from maskfield.splats import render_cpu
from maskfield.splats.render import (T_MIN, RenderCamera, _pairs, _Rasterize, _segment_exclusive_cumsum,
                                     _segment_exclusive_suffix, compositing_weights, project, render)

BACKENDS = ["torch", "cpu"]


def tiny_scene(n=12, w=24, h=18, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    g = {
        "means": torch.randn(n, 3, generator=gen) * 0.5 + torch.tensor([0, 0, 4.0]),
        "scales": torch.rand(n, 3, generator=gen) * 0.2 + 0.05,
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
        "opacities": torch.rand(n, generator=gen) * 0.9 + 0.05,
        "sh": torch.randn(n, 16, 3, generator=gen) * 0.3,
    }
    g = {k: v.to(dtype) for k, v in g.items()}
    cam = RenderCamera(torch.eye(4, dtype=dtype), torch.tensor([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]], dtype=dtype), w, h)
    return g, cam


def dense_scene(n=60, w=36, h=28, seed=5):
    """Large, nearly opaque Gaussians stacked in depth: most pixels reach the early termination."""
    g, cam = tiny_scene(n=n, w=w, h=h, seed=seed)
    g["means"] = g["means"] * torch.tensor([0.4, 0.4, 1.0])
    g["scales"] = g["scales"] * 3.0
    g["opacities"] = 0.5 + 0.5 * g["opacities"]
    return g, cam


def brute_force(g, cam, colors, background):
    """Every pixel against every Gaussian, sorted by depth, the 3DGS blending rule written out
    (skip alpha < 1/255, clamp at 0.99, stop before transmittance would fall below 1e-4)."""
    radii, m2, depths, conics = project(g, cam)
    out = np.zeros((cam.height, cam.width, 3))
    alpha_out = np.zeros((cam.height, cam.width))
    stopped = 0
    order = torch.argsort(depths[0]).tolist()
    for y in range(cam.height):
        for x in range(cam.width):
            T, c = 1.0, np.zeros(3)
            for i in order:
                if not bool((radii[0, i] > 0).all()):
                    continue
                dx, dy = x + 0.5 - float(m2[0, i, 0]), y + 0.5 - float(m2[0, i, 1])
                a_, b_, c_ = conics[0, i].tolist()
                sigma = 0.5 * (a_ * dx * dx + c_ * dy * dy) + b_ * dx * dy
                alpha = min(0.99, float(g["opacities"][i]) * np.exp(-sigma))
                if sigma < 0 or alpha < 1 / 255:
                    continue
                if T * (1 - alpha) < T_MIN:
                    stopped += 1
                    break
                c += T * alpha * colors[i].numpy()
                T *= 1 - alpha
            out[y, x] = c + T * background.numpy()
            alpha_out[y, x] = 1 - T
    return out, alpha_out, stopped


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scene", ["sparse", "dense"])
def test_renderers_match_brute_force(backend, scene):
    g, cam = tiny_scene() if scene == "sparse" else dense_scene()
    n = g["means"].shape[0]
    colors = torch.rand(n, 3, generator=torch.Generator().manual_seed(1))
    bg = torch.tensor([0.2, 0.3, 0.4])
    out = render(g, cam, colors=colors, background=bg, backend=backend)
    assert out["backend"] == backend
    ref, ref_alpha, stopped = brute_force(g, cam, colors, bg)
    assert out["color"].shape == (cam.height, cam.width, 3)
    assert np.abs(out["color"].numpy() - ref).max() < 2e-3
    assert np.abs(out["alpha"].numpy() - ref_alpha).max() < 2e-3
    assert ref_alpha.max() > 0.5  # the scene is not empty
    if scene == "dense":  # the early termination is exercised
        assert stopped > 0.1 * cam.width * cam.height


def _render_with_grads(backend, g, cam, colors=None, features=None, bg=None):
    params = {k: v.clone().requires_grad_() for k, v in g.items()}
    extra = [t.clone().requires_grad_() if t is not None else None for t in (colors, features)]
    out = render(params, cam, sh_degree=3, colors=extra[0], features=extra[1], background=bg, backend=backend)
    out["means2d"].retain_grad()  # as gsplat's densification does
    gen = torch.Generator().manual_seed(7)
    loss = (out["color"] * torch.rand(out["color"].shape, generator=gen)).sum() + 0.5 * out["alpha"].square().sum()
    loss = loss + 0.1 * (out["depth"] * out["alpha"]).sum()
    if features is not None:
        loss = loss + (out["features"] * torch.randn(out["features"].shape, generator=gen)).sum()
    loss.backward()
    grads = {k: p.grad for k, p in params.items()}
    grads["means2d"] = out["means2d"].grad
    for name, t in zip(("colors", "features"), extra):
        if t is not None:
            grads[name] = t.grad
    return out, grads


@pytest.mark.parametrize("scene", ["sparse", "dense"])
@pytest.mark.parametrize("colour_source", ["sh", "colors+features"])
def test_compiled_and_torch_renderers_agree_in_values_and_gradients(scene, colour_source):
    g, cam = tiny_scene(n=40, w=40, h=30) if scene == "sparse" else dense_scene()
    n = g["means"].shape[0]
    g["means"][:4, 0] += 3.0  # some beyond the frustum's clamp, some off screen
    gen = torch.Generator().manual_seed(2)
    colors = torch.rand(n, 3, generator=gen) if colour_source != "sh" else None
    features = torch.randn(n, 5, generator=gen) if colour_source != "sh" else None
    bg = torch.tensor([0.3, 0.1, 0.6])
    ref, ref_grads = _render_with_grads("torch", g, cam, colors, features, bg)
    out, grads = _render_with_grads("cpu", g, cam, colors, features, bg)
    for key in ("color", "alpha", "depth") + (("features",) if features is not None else ()):
        assert torch.allclose(out[key], ref[key], atol=2e-4), (key, (out[key] - ref[key]).abs().max())
    assert torch.equal(out["radii"], ref["radii"]) and out["means2d"].shape == ref["means2d"].shape == (1, n, 2)
    assert torch.allclose(out["means2d"], ref["means2d"], atol=1e-4)
    assert set(grads) == set(ref_grads) and len(grads) >= 6
    for name, ref_grad in ref_grads.items():
        if ref_grad is None:  # the SH when colours are given
            assert grads[name] is None and name == "sh" and colors is not None
            continue
        scale = ref_grad.abs().max()
        assert scale > 0, name
        assert (grads[name] - ref_grad).abs().max() <= 2e-3 * scale, (name, (grads[name] - ref_grad).abs().max(), scale)


def test_compiled_results_do_not_depend_on_how_tiles_are_dealt_to_threads(monkeypatch):
    """The tiles are dealt to as many workers as numba has threads; values and gradients must
    come out bit for bit the same for any count (a tile is always one worker's)."""
    g, cam = dense_scene(n=90, w=70, h=50)  # 5 x 4 tiles of uneven work
    bg = torch.tensor([0.3, 0.1, 0.6])
    runs = []
    for workers in (1, 2, 5):
        monkeypatch.setattr(render_cpu.numba, "get_num_threads", lambda w=workers: w)
        tiles = render_cpu.Tiles(*project_for_tiles(g, cam), cam.width, cam.height)
        assert tiles.plan[0].shape == (workers + 1,) and sorted(tiles.plan[1]) == list(range(20))
        if workers == 1:
            lists = (tiles.offsets, tiles.entries, tiles.slots, tiles.start)
        else:  # binned by several workers, each a run of the depth order: the same tile lists
            for mine, single in zip((tiles.offsets, tiles.entries, tiles.slots, tiles.start), lists):
                assert np.array_equal(mine, single)
        runs.append(_render_with_grads("cpu", g, cam, None, None, bg))
    (out0, grads0), rest = runs[0], runs[1:]
    assert float(out0["alpha"].detach().max()) > 0.99  # pixels that stop early, in some tiles
    for out, grads in rest:
        for key in ("color", "alpha", "depth"):
            assert torch.equal(out[key], out0[key]), key
        for name, grad in grads0.items():
            assert torch.equal(grads[name], grad), name


def test_the_radix_depth_order_is_numpys_stable_argsort():
    rng = np.random.default_rng(4)
    depths = rng.uniform(0.01, 50.0, 20_000).astype(np.float32)
    depths[::5] = depths[7]  # many ties: kept in id order
    depths[1::9] = np.float32(1e-3) * rng.random(len(depths[1::9]), dtype=np.float32) + np.float32(0.01)
    ids = np.flatnonzero(rng.random(len(depths)) < 0.7)
    order = render_cpu._depth_order(ids, depths.view(np.uint32))
    assert np.array_equal(order, ids[np.argsort(depths[ids], kind="stable")])


def project_for_tiles(g, cam):
    radii, means2d, depths, conics = project(g, cam)
    return means2d[0], conics[0], g["opacities"], depths[0], (radii[0] > 0).all(-1)


def test_tiles_are_dealt_so_that_each_thread_gets_a_like_share_of_the_work():
    # the work of a photo's tiles: the object's tiles together, dear ones beside cheap ones
    cost = np.array([0, 0, 0, 500, 5400, 4200, 3100, 1800, 900, 0, 0, 0, 40, 30, 20, 10], dtype=np.int64)
    offsets, tiles = render_cpu._share_tiles(cost, 2)
    assert sorted(tiles.tolist()) == list(range(len(cost)))
    loads = [int(cost[tiles[offsets[w]:offsets[w + 1]]].sum()) for w in range(2)]
    assert abs(loads[0] - loads[1]) <= cost.max() // 4, loads  # two contiguous halves: 15000 vs 1000
    for w in range(2):  # each worker runs its tiles in order
        assert list(tiles[offsets[w]:offsets[w + 1]]) == sorted(tiles[offsets[w]:offsets[w + 1]])
    offsets, tiles = render_cpu._share_tiles(cost, 40)  # more workers than tiles: some idle, none lost
    assert offsets[-1] == len(cost) and sorted(tiles.tolist()) == list(range(len(cost)))


def test_compiled_projection_and_sh_match_gsplats_reference_maths():
    g, cam = tiny_scene(n=50, w=40, h=30, seed=4)
    g["means"][:6, 0] += torch.tensor([2.5, 2.5, 3.0, 3.0, 12.0, 12.0])  # past the Jacobian's clamp; off screen
    g["means"][6, 2] = -1.0  # behind the camera
    g["quats"] = g["quats"] * 1.7  # not unit: the normalisation's gradient counts too
    results = {}
    for name in ("torch", "cpu"):
        p = {k: v.clone().requires_grad_() for k, v in g.items()}
        if name == "torch":
            radii, m2, dep, con = (t[0] for t in project(p, cam))
            from gsplat.cuda._torch_impl import _spherical_harmonics

            campos = torch.linalg.inv(cam.viewmat)[:3, 3]
            rgb = torch.clamp_min(_spherical_harmonics(3, p["means"] - campos, p["sh"]) + 0.5, 0.0)
        else:
            radii, m2, dep, con = render_cpu.project(p, cam.viewmat, cam.K, cam.width, cam.height)
            rgb = render_cpu.sh_colors(p["means"], p["sh"][:, :1], p["sh"][:, 1:], cam.viewmat, 3)
        gen = torch.Generator().manual_seed(0)
        loss = sum((t * torch.randn(t.shape, generator=gen)).sum() for t in (m2, con, dep, rgb))
        loss.backward()
        results[name] = (radii, m2, dep, con, rgb, {k: p[k].grad for k in ("means", "quats", "scales", "sh")})
    ref, got = results["torch"], results["cpu"]
    assert torch.equal(ref[0], got[0]) and (ref[0] == 0).any() and (ref[0] > 0).any()
    for a, b in zip(ref[1:5], got[1:5]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)
    for name, a in ref[5].items():
        assert (got[5][name] - a).abs().max() <= 1e-4 * a.abs().max(), name


def test_features_are_composited_with_the_colour_weights():
    g, cam = tiny_scene()
    colors = torch.rand(12, 3)
    feats = torch.cat([colors, colors * 2], dim=1)
    out = render(g, cam, colors=colors, features=feats)
    assert out["backend"] == "cpu"  # the default on the CPU
    assert out["features"].shape == (18, 24, 6)
    assert torch.allclose(out["features"][..., :3], out["color"], atol=1e-6)
    assert torch.allclose(out["features"][..., 3:], 2 * out["color"], atol=1e-5)


def test_gradients_match_finite_differences():
    g, cam = tiny_scene(n=8, w=14, h=10, seed=3, dtype=torch.float64)
    radii, m2, depths, con = project(g, cam)
    vis = torch.nonzero((radii[0] > 0).all(-1)).squeeze(1)
    m = m2[0][vis].detach().requires_grad_()
    c = con[0][vis].detach().requires_grad_()
    o = g["opacities"][vis].detach().requires_grad_()
    vals = torch.rand(len(vis), 4, dtype=torch.float64, requires_grad=True)
    bg = torch.rand(4, dtype=torch.float64)
    pairs = _pairs(m.detach(), c.detach(), o.detach(), depths[0][vis], cam.width, cam.height)
    assert pairs.pixel.numel() > 20

    def f(m, c, o, v):
        return _Rasterize.apply(m, c, o, v, bg, pairs, cam.width, cam.width * cam.height)

    assert torch.autograd.gradcheck(f, (m, c, o, vals), atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_reach_every_gaussian_parameter(backend):
    g, cam = tiny_scene()
    params = {k: v.clone().requires_grad_() for k, v in g.items()}
    out = render(params, cam, sh_degree=3, backend=backend)
    (out["color"].sum() + out["alpha"].sum()).backward()
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert out["means2d"].shape == (1, 12, 2) and out["radii"].shape == (1, 12, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scene", ["sparse", "dense"])
def test_compositing_weights_reproduce_the_render(backend, scene):
    g, cam = tiny_scene() if scene == "sparse" else dense_scene()
    n = g["means"].shape[0]
    feats = torch.randn(n, 16)
    out = render(g, cam, colors=torch.zeros(n, 3), features=feats, backend="torch")
    pixel, gaussian, weight = compositing_weights(g, cam, backend=backend)
    assert pixel.dtype == gaussian.dtype == torch.int64 and weight.dtype == torch.float32
    assert (pixel[1:] >= pixel[:-1]).all()  # by pixel
    W = torch.sparse_coo_tensor(torch.stack([pixel, gaussian]), weight, (cam.width * cam.height, n))
    F = torch.sparse.mm(W, feats).reshape(cam.height, cam.width, 16)
    assert torch.allclose(F, out["features"], atol=1e-5)


def test_both_renderers_give_the_same_compositing_weights():
    g, cam = dense_scene()
    a = compositing_weights(g, cam, backend="torch")
    b = compositing_weights(g, cam, backend="cpu")
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.allclose(a[2], b[2], atol=1e-6)


class _NoFloat64(torch.utils._python_dispatch.TorchDispatchMode):
    """Raises on any op that takes or makes a float64 tensor (MPS has no float64)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        flat = torch.utils._pytree.tree_leaves((args, kwargs, out))
        if any(isinstance(t, torch.Tensor) and t.dtype == torch.float64 for t in flat):
            raise AssertionError(f"{func} uses float64")
        return out


def test_the_torch_renderer_keeps_to_float32():
    g, cam = dense_scene()
    params = {k: v.clone().requires_grad_() for k, v in g.items()}
    feats = torch.randn(g["means"].shape[0], 4, requires_grad=True)
    with pytest.raises(AssertionError, match="float64"), _NoFloat64():  # the guard does catch float64
        torch.ones(2, dtype=torch.float64) + 1
    with _NoFloat64():
        out = render(params, cam, sh_degree=3, features=feats, backend="torch")
        (out["color"].sum() + out["features"].sum() + out["depth"].sum()).backward()
        pixel, gaussian, weight = compositing_weights(g, cam, backend="torch")
    assert params["means"].grad.abs().sum() > 0 and feats.grad.abs().sum() > 0 and weight.numel() > 0


def test_float32_segment_sums_are_as_accurate_as_float64_over_millions_of_pairs():
    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 400, (12_000,), generator=gen)  # ~2.4M pairs, segments up to 400 long
    x = -torch.rand(int(lengths.sum()), generator=gen) * 3.0  # log(1 - alpha)-like terms
    seg_end = torch.cumsum(lengths, 0).repeat_interleave(lengths)
    seg_start = seg_end - lengths.repeat_interleave(lengths)
    from maskfield.splats.render import Pairs

    pairs = Pairs(torch.zeros_like(seg_start), torch.zeros_like(seg_start), seg_start, seg_end)
    prefix = _segment_exclusive_cumsum(x, pairs)
    suffix = _segment_exclusive_suffix(x, pairs)
    assert prefix.dtype == suffix.dtype == torch.float32
    xd = x.double()
    cs = torch.cumsum(xd, 0)
    ref_prefix = cs - xd - (cs[seg_start] - xd[seg_start])
    ref_suffix = cs[seg_end - 1] - cs
    # relative to the segment's own sum, as float32 allows (a global float32 cumsum is off by ~1e-2)
    seg_total = (cs[seg_end - 1] - cs[seg_start] + xd[seg_start]).abs()
    assert ((prefix.double() - ref_prefix).abs() / seg_total).max() < 1e-5
    assert ((suffix.double() - ref_suffix).abs() / seg_total).max() < 1e-5
    naive = torch.cumsum(x, 0)
    naive_prefix = naive - x - (naive[seg_start] - x[seg_start])
    assert ((naive_prefix.double() - ref_prefix).abs() / seg_total).max() > 1e-4  # why the scan is needed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's rasteriser needs CUDA; compared on GPU machines")
def test_gsplat_and_cpu_renderers_agree_on_cuda():
    g, cam = tiny_scene(n=200, w=64, h=48)
    gc = {k: v.cuda() for k, v in g.items()}
    camc = RenderCamera(cam.viewmat.cuda(), cam.K.cuda(), cam.width, cam.height)
    a = render(gc, camc, sh_degree=3, backend="gsplat")["color"].cpu()
    b = render(gc, camc, sh_degree=3, backend="torch")["color"].cpu()
    assert (a - b).abs().mean() < 5e-3
    c = render(g, cam, sh_degree=3, backend="cpu")["color"]
    assert (a - c).abs().mean() < 5e-3


def test_ply_round_trip_keeps_every_parameter(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 3)).astype(np.float32)
    g = Gaussians.from_points(pts, rng.integers(0, 255, (50, 3), dtype=np.uint8))
    with torch.no_grad():
        g.params["shN"].normal_()
        g.params["quats"].normal_()
    path = write_ply(tmp_path / "g.ply", g, extra={"segment_score": np.linspace(0, 1, 50)})
    back = read_ply(path)
    assert back.sh_degree == 3 and len(back) == 50
    for k in g.params:
        assert torch.allclose(back.params[k], g.params[k].detach(), atol=1e-6), k
    from plyfile import PlyData

    names = PlyData.read(str(path))["vertex"].data.dtype.names
    assert names[:9] == ("x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2")
    assert "f_rest_44" in names and "opacity" in names and "rot_3" in names and "segment_score" in names
    assert not (tmp_path / "g.ply.tmp").exists()


def test_reading_a_plain_point_cloud_as_gaussians_says_what_it_is(tmp_path):
    from plyfile import PlyData, PlyElement

    from maskfield.events import MaskFieldError

    data = np.zeros(3, dtype=[("x", "f4"), ("y", "f4"), ("z", "f4")])
    PlyData([PlyElement.describe(data, "vertex")]).write(str(tmp_path / "p.ply"))
    with pytest.raises(MaskFieldError, match="not a 3D Gaussian Splatting PLY"):
        read_ply(tmp_path / "p.ply")


def test_reading_2d_gaussian_surfels_says_what_they_are(tmp_path):
    """A 2DGS .ply (as Brush and splat-transform write it: no scale_2) is named, not mis-read."""
    from plyfile import PlyData, PlyElement

    from maskfield.events import MaskFieldError

    write_ply(tmp_path / "g.ply", Gaussians.from_points(np.random.default_rng(1).normal(size=(5, 3))))
    full = PlyData.read(str(tmp_path / "g.ply"))["vertex"].data
    kept = [n for n in full.dtype.names if n != "scale_2"]
    surfels = np.empty(len(full), dtype=[(n, "f4") for n in kept])
    for n in kept:
        surfels[n] = full[n]
    PlyData([PlyElement.describe(surfels, "vertex")]).write(str(tmp_path / "s.ply"))
    with pytest.raises(MaskFieldError, match="2D Gaussian Splatting surfels"):
        read_ply(tmp_path / "s.ply")


@pytest.mark.parametrize("t_mps, t_cpu, expected", [(0.05, 0.2, ("mps", "torch")), (0.3, 0.1, ("cpu", "cpu"))])
def test_on_apple_gpus_the_faster_renderer_is_kept_and_said(t_mps, t_cpu, expected):
    from maskfield.splats.render import choose_fit_device

    calls, said = [], []

    def timer(device, backend):
        calls.append((device, backend))
        return {"mps": t_mps, "cpu": t_cpu}[device]

    assert choose_fit_device("mps", "auto", timer=timer, log=said.append) == expected
    assert sorted(calls) == [("cpu", "cpu"), ("mps", "torch")]
    assert len(said) == 1 and f"{t_mps:.3f} s" in said[0] and f"{t_cpu:.3f} s" in said[0]
    assert ("Apple GPU" if expected[0] == "mps" else "the CPU") in said[0].split("fitting on")[1]


@pytest.mark.parametrize("device, renderer", [("cpu", "auto"), ("cuda", "auto"), ("mps", "torch"), ("mps", "cpu")])
def test_no_timing_unless_mps_is_left_to_choose(device, renderer):
    from maskfield.splats.render import choose_fit_device

    def timer(*_):
        raise AssertionError("timed although the choice was made")

    assert choose_fit_device(device, renderer, timer=timer) == (device, renderer)


def test_the_render_timer_times_a_real_render():
    from maskfield.splats.render import time_one_render

    seconds = time_one_render("cpu", "cpu", n=500, width=32, height=24, repeats=1)
    assert 0 < seconds < 60


def test_auto_picks_the_compiled_renderer_on_the_cpu_and_says_what_is_wrong():
    from maskfield.splats.render import choose_backend

    assert choose_backend("auto", "cpu") == "cpu"
    assert choose_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="CPU tensors"):
        choose_backend("cpu", "meta")
    with pytest.raises(ValueError, match="unknown renderer"):
        choose_backend("numba", "cpu")


def test_random_initialisation_sizes_gaussians_by_their_nearest_neighbours():
    g = Gaussians.random_in_bounds(np.array([1.0, 2.0, 3.0]), 2.0, 300, seed=3)
    pts = g.means.detach().numpy().astype(np.float64)
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    nearest3 = np.sort(d, axis=1)[:, 1:4]  # brute force, column 0 is the point itself
    expected = np.sqrt((nearest3 ** 2).mean(1))
    scales = np.exp(g.params["scales"].detach().numpy())
    assert np.allclose(scales, 0.3 * expected[:, None], rtol=1e-4)
    assert (np.abs(pts[:240] - [1.0, 2.0, 3.0]) <= 2.0 + 1e-5).all()  # four fifths inside the bounds


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("degree", [0, 1, 3])
def test_sh_kept_in_two_parts_renders_and_learns_as_joined(backend, degree):
    """The fit hands the renderer SH band 0 and the rest apart (no joined copy per step): same
    colours, same gradients as the joined array, and none past the bands in use."""
    g, cam = tiny_scene(n=60, w=40, h=30, seed=7)
    joined = {k: v.clone().requires_grad_() for k, v in g.items()}
    split = {k: v.clone() for k, v in g.items() if k != "sh"}
    split["sh0"] = g["sh"][:, :1].clone().requires_grad_()
    split["shN"] = g["sh"][:, 1:].clone().requires_grad_()
    for k in ("means", "quats", "scales", "opacities"):
        split[k].requires_grad_()
    target = torch.rand(cam.height, cam.width, 3, generator=torch.Generator().manual_seed(1))
    outs = []
    for p in (joined, split):
        out = render(p, cam, sh_degree=degree, backend=backend)
        (out["color"] - target).abs().mean().backward()
        outs.append(out["color"].detach())
    assert torch.allclose(outs[0], outs[1], atol=1e-6)
    k = (degree + 1) ** 2
    assert torch.allclose(split["sh0"].grad, joined["sh"].grad[:, :1], atol=1e-7)
    assert split["sh0"].grad.abs().max() > 0
    if degree == 0:
        assert split["shN"].grad is None or not split["shN"].grad.any()
    else:
        assert torch.allclose(split["shN"].grad[:, : k - 1], joined["sh"].grad[:, 1:k], atol=1e-7)
        assert not split["shN"].grad[:, k - 1:].any()
    for name in ("means", "scales", "opacities"):
        assert torch.allclose(split[name].grad, joined[name].grad, atol=1e-6), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_scene_in_small_units_renders_as_at_its_own_scale(backend):
    # the tiny scene a thousand times smaller, its camera's near plane scaled alike (as the
    # loader sets it, scene.cameras.near_plane): the same picture; with 3DGS's 0.01 none of it
    g, cam = tiny_scene()
    small = {k: (v * 1e-3 if k in ("means", "scales") else v) for k, v in g.items()}
    reference = render(g, cam, sh_degree=3, backend=backend)
    near = RenderCamera(cam.viewmat, cam.K, cam.width, cam.height, near=1e-5)
    got = render(small, near, sh_degree=3, backend=backend)
    assert float(reference["alpha"].max()) > 0.5
    assert torch.allclose(got["color"], reference["color"], atol=1e-4)
    assert torch.allclose(got["depth"], reference["depth"] * 1e-3, atol=1e-6)
    assert float(render(small, cam, sh_degree=3, backend=backend)["alpha"].max()) == 0.0


def test_the_near_plane_follows_the_cameras_distance_below_one_unit():
    from maskfield.scene.cameras import DEFAULT_NEAR, Camera, near_plane

    def at(distance):
        c2w = np.eye(4)
        c2w[:3, 3] = (0, 0, -distance)
        return Camera("c", 10, 10, 10.0, 10.0, 5.0, 5.0, c2w)

    assert near_plane([at(4.0), at(5.0), at(6.0)], np.zeros(3)) == DEFAULT_NEAR  # the usual scale: 3DGS's
    assert near_plane([at(2e-3), at(3e-3), at(9.0)], np.zeros(3)) == pytest.approx(DEFAULT_NEAR * 3e-3)
    assert near_plane([at(0.0)], np.zeros(3)) == DEFAULT_NEAR  # degenerate: left to the fit's checks
    cam = at(1.0)
    cam.near = 1e-4
    assert cam.scaled(2).near == cam.undistorted().near == 1e-4  # the views made of a camera keep it
