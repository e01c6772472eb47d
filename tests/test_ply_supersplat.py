"""Our 3DGS .ply files against an outside reader: SuperSplat's converter
(@playcanvas/splat-transform, installed into .venv/node by scripts/ensure_env.sh)."""
from __future__ import annotations

import csv
import subprocess

import numpy as np
import pytest
import torch

from maskfield.splats.model import Gaussians
from maskfield.splats.ply import read_ply, write_ply

from conftest import SPLAT_TRANSFORM as TOOL


def splat_transform(*args):
    assert TOOL.exists(), (f"{TOOL} is missing: run `bash scripts/ensure_env.sh` (it needs Node.js and npm) "
                           "to install SuperSplat's converter")
    proc = subprocess.run([str(TOOL), "-w", *map(str, args)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def random_gaussians(n=50, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return Gaussians({
        "means": torch.randn(n, 3, generator=gen),
        "scales": torch.randn(n, 3, generator=gen) - 3,
        "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
        "opacities": torch.randn(n, generator=gen),
        "sh0": torch.randn(n, 1, 3, generator=gen),
        "shN": torch.randn(n, 15, 3, generator=gen) * 0.2,
    })


def test_supersplat_reads_every_property_we_write(tmp_path):
    g = random_gaussians()
    score = np.linspace(0, 1, len(g)).astype(np.float32)
    write_ply(tmp_path / "segment.ply", g, extra={"segment_score": score})
    splat_transform(tmp_path / "segment.ply", tmp_path / "segment.csv")
    with open(tmp_path / "segment.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(g)

    def column(name):
        return np.array([float(r[name]) for r in rows], dtype=np.float32)

    p = {k: v.detach().numpy() for k, v in g.params.items()}
    np.testing.assert_allclose(np.stack([column(a) for a in "xyz"], 1), p["means"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.stack([column(f"scale_{i}") for i in range(3)], 1), p["scales"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.stack([column(f"rot_{i}") for i in range(4)], 1), p["quats"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(column("opacity"), p["opacities"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.stack([column(f"f_dc_{i}") for i in range(3)], 1), p["sh0"][:, 0], rtol=1e-6, atol=1e-6)
    # the Inria layout stores the higher bands channel-major: all of R, then G, then B
    f_rest = np.stack([column(f"f_rest_{i}") for i in range(45)], 1)
    np.testing.assert_allclose(f_rest, p["shN"].transpose(0, 2, 1).reshape(len(g), 45), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(column("segment_score"), score, rtol=1e-6)


def test_a_ply_written_by_supersplat_reads_back_here(tmp_path):
    g = random_gaussians(seed=1)
    write_ply(tmp_path / "ours.ply", g)
    # filter on the way through (SuperSplat reads opacity as the sigmoid of our logit), so the
    # file is SuperSplat's own output with only the opaque half left
    splat_transform(tmp_path / "ours.ply", "-V", "opacity,gt,0.5", tmp_path / "theirs.ply")
    back = read_ply(tmp_path / "theirs.ply")
    keep = (g.params["opacities"] > 0).numpy()
    assert 0 < keep.sum() < len(g)
    assert len(back) == keep.sum() and back.sh_degree == 3
    for key in ("means", "scales", "opacities", "sh0", "shN"):
        np.testing.assert_allclose(back.params[key].detach().numpy(), g.params[key].detach().numpy()[keep],
                                   atol=1e-5, err_msg=key)
    q_back = back.params["quats"].detach().numpy()
    q = g.params["quats"].detach().numpy()[keep]
    # a quaternion and its negative are the same rotation
    assert np.allclose(np.abs((q_back * q).sum(1)), 1.0, atol=1e-5)


def test_supersplat_compresses_our_scene_for_the_web(tmp_path):
    g = random_gaussians(n=600, seed=2)
    write_ply(tmp_path / "scene.ply", g)
    splat_transform(tmp_path / "scene.ply", tmp_path / "scene.compressed.ply")
    # (.sog is left out: its encoder wants a WebGPU device, which a headless machine lacks)
    # SuperSplat's compressed .ply quantises positions per chunk of 256: read it back
    splat_transform(tmp_path / "scene.compressed.ply", tmp_path / "back.csv")
    with open(tmp_path / "back.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(g)
    means = np.array([[float(r[a]) for a in "xyz"] for r in rows])
    ours = g.params["means"].detach().numpy()
    # the compressor may reorder the Gaussians (Morton order): compare as sets
    from scipy.spatial import cKDTree

    dist, _ = cKDTree(ours).query(means)
    extent = np.ptp(ours, axis=0).max()
    assert dist.max() < 2e-3 * extent
    with pytest.raises(AssertionError):
        splat_transform(tmp_path / "missing.ply", tmp_path / "x.csv")
    # handed to us, the compressed file is named for what it is, with the way back
    from maskfield.events import MaskFieldError
    from maskfield.splats.ply import read_ply

    with pytest.raises(MaskFieldError, match="compressed PLY.*splat-transform"):
        read_ply(tmp_path / "scene.compressed.ply")
