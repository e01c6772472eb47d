"""The CPU renderer against an independent brute-force compositor, its gradients, PLY files."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from maskfield.splats import Gaussians, read_ply, write_ply
from maskfield.splats.render import RenderCamera, _pairs, _Rasterize, compositing_weights, project, render


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


def brute_force(g, cam, colors, background):
    """Every pixel against every Gaussian, sorted by depth, the 3DGS blending rule written out."""
    radii, m2, depths, conics = project(g, cam)
    out = np.zeros((cam.height, cam.width, 3))
    alpha_out = np.zeros((cam.height, cam.width))
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
                c += T * alpha * colors[i].numpy()
                T *= 1 - alpha
            out[y, x] = c + T * background.numpy()
            alpha_out[y, x] = 1 - T
    return out, alpha_out


def test_cpu_renderer_matches_brute_force():
    g, cam = tiny_scene()
    colors = torch.rand(12, 3, generator=torch.Generator().manual_seed(1))
    bg = torch.tensor([0.2, 0.3, 0.4])
    out = render(g, cam, colors=colors, background=bg, backend="torch")
    ref, ref_alpha = brute_force(g, cam, colors, bg)
    assert out["color"].shape == (18, 24, 3)
    assert np.abs(out["color"].numpy() - ref).max() < 2e-3
    assert np.abs(out["alpha"].numpy() - ref_alpha).max() < 2e-3
    assert ref_alpha.max() > 0.5  # the scene is not empty


def test_features_are_composited_with_the_colour_weights():
    g, cam = tiny_scene()
    colors = torch.rand(12, 3)
    feats = torch.cat([colors, colors * 2], dim=1)
    out = render(g, cam, colors=colors, features=feats, backend="torch")
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


def test_gradients_reach_every_gaussian_parameter():
    g, cam = tiny_scene()
    params = {k: v.clone().requires_grad_() for k, v in g.items()}
    out = render(params, cam, sh_degree=3, backend="torch")
    (out["color"].sum() + out["alpha"].sum()).backward()
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert out["means2d"].shape == (1, 12, 2) and out["radii"].shape == (1, 12, 2)


def test_compositing_weights_reproduce_the_render():
    g, cam = tiny_scene()
    feats = torch.randn(12, 16)
    out = render(g, cam, colors=torch.zeros(12, 3), features=feats, backend="torch")
    pixel, gaussian, weight = compositing_weights(g, cam)
    W = torch.sparse_coo_tensor(torch.stack([pixel, gaussian]), weight, (cam.width * cam.height, 12))
    F = torch.sparse.mm(W, feats).reshape(cam.height, cam.width, 16)
    assert torch.allclose(F, out["features"], atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's rasteriser needs CUDA; compared on GPU machines")
def test_gsplat_and_cpu_renderers_agree_on_cuda():
    g, cam = tiny_scene(n=200, w=64, h=48)
    gc = {k: v.cuda() for k, v in g.items()}
    camc = RenderCamera(cam.viewmat.cuda(), cam.K.cuda(), cam.width, cam.height)
    a = render(gc, camc, sh_degree=3, backend="gsplat")["color"].cpu()
    b = render(gc, camc, sh_degree=3, backend="torch")["color"].cpu()
    assert (a - b).abs().mean() < 5e-3


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
