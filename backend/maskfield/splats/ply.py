"""The standard 3DGS .ply (Inria layout), read and written with plyfile.

Vertex properties, in this order: x y z, nx ny nz, f_dc_0..2, f_rest_0..(3*(K-1)-1),
opacity (logit), scale_0..2 (log), rot_0..3 (w x y z). f_rest is stored channel-major
(all red coefficients, then green, then blue), as the Inria code writes it; SuperSplat,
KIRI and the Inria viewers read this layout. Extra per-Gaussian arrays (e.g. a segment
score, or a whole scene's ``label`` and ``label_score``) may be appended as further
float properties (a label too: SuperSplat's reader takes an ``int`` property as unsigned, so
-1 would come back as 4294967295); readers ignore what they don't know.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..events import MaskFieldError
from .model import Gaussians


def write_ply(path: str | Path, gaussians: Gaussians | dict, extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write atomically (temp name, then rename) so a crash never leaves a half file."""
    from plyfile import PlyData, PlyElement

    params = gaussians.detached() if isinstance(gaussians, Gaussians) else gaussians
    means = _np(params["means"])
    n = len(means)
    sh0 = _np(params["sh0"]).reshape(n, 1, 3)
    shN = _np(params["shN"]).reshape(n, -1, 3)
    columns: list[tuple[str, np.ndarray]] = [("x", means[:, 0]), ("y", means[:, 1]), ("z", means[:, 2]),
                                             ("nx", np.zeros(n)), ("ny", np.zeros(n)), ("nz", np.zeros(n))]
    columns += [(f"f_dc_{i}", sh0[:, 0, i]) for i in range(3)]
    rest = shN.transpose(0, 2, 1).reshape(n, -1)  # channel-major
    columns += [(f"f_rest_{i}", rest[:, i]) for i in range(rest.shape[1])]
    columns.append(("opacity", _np(params["opacities"]).reshape(n)))
    scales = _np(params["scales"])
    columns += [(f"scale_{i}", scales[:, i]) for i in range(3)]
    quats = _np(params["quats"])
    columns += [(f"rot_{i}", quats[:, i]) for i in range(4)]
    for name, values in (extra or {}).items():
        columns.append((name, np.asarray(values).reshape(n)))
    data = np.empty(n, dtype=[(name, "f4") for name, _ in columns])
    for name, values in columns:
        data[name] = values
    from ..run import atomic_file

    path = Path(path)
    with atomic_file(path) as tmp:
        PlyData([PlyElement.describe(data, "vertex")], text=False).write(str(tmp))
    return path


def read_ply_extra(path: str | Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named extra per-Gaussian properties of a .ply (e.g. ``label``, ``label_score``)."""
    from plyfile import PlyData

    vertex = PlyData.read(str(path))["vertex"]
    have = set(vertex.data.dtype.names)
    missing = [n for n in names if n not in have]
    if missing:
        raise MaskFieldError(f"{path} has no {', '.join(missing)} properties; write it with `maskfield segment "
                             "--labels-ply`.")
    return {n: np.asarray(vertex[n]) for n in names}


def read_ply(path: str | Path, device="cpu") -> Gaussians:
    """Read a 3DGS .ply written by us, the Inria code, nerfstudio's exporter or SuperSplat."""
    from plyfile import PlyData

    path = Path(path)
    try:
        vertex = PlyData.read(str(path))["vertex"]
    except FileNotFoundError:
        raise MaskFieldError(f"Gaussian file not found: {path}") from None
    except Exception as exc:
        raise MaskFieldError(f"cannot read {path} as a PLY file: {exc}") from None
    names = set(vertex.data.dtype.names)
    if "packed_position" in names:  # SuperSplat / PlayCanvas compressed: quantised in chunks
        raise MaskFieldError(f"{path} is a compressed PLY (SuperSplat / PlayCanvas); decompress it first, e.g. "
                             f"`npx @playcanvas/splat-transform \"{path.name}\" uncompressed.ply`, and give "
                             "uncompressed.ply.", kind="input")
    if "scale_0" in names and "scale_2" not in names:
        raise MaskFieldError(f"{path} holds 2D Gaussian Splatting surfels (no scale_2); MaskField needs 3D "
                             "Gaussians (a 3DGS .ply), or fit colour from the photos without --ply.", kind="input")
    needed = {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
              "rot_0", "rot_1", "rot_2", "rot_3"}
    if not needed <= names:
        missing = ", ".join(sorted(needed - names))
        raise MaskFieldError(f"{path} is not a 3D Gaussian Splatting PLY (missing properties: {missing}). "
                             "A plain point cloud can seed a fit instead (ply_file_path in transforms.json).")
    n = len(vertex.data)
    col = lambda name: np.asarray(vertex[name], dtype=np.float32)  # noqa: E731
    rest_names = sorted((k for k in names if k.startswith("f_rest_")), key=lambda s: int(s.split("_")[-1]))
    k_minus_1 = len(rest_names) // 3
    degree = int(round(np.sqrt(k_minus_1 + 1))) - 1
    if (degree + 1) ** 2 - 1 != k_minus_1:
        raise MaskFieldError(f"{path} has {len(rest_names)} f_rest properties, which fits no SH degree.")
    rest = np.stack([col(k) for k in rest_names], axis=1) if rest_names else np.zeros((n, 0), np.float32)
    shN = rest.reshape(n, 3, k_minus_1).transpose(0, 2, 1)
    params = {
        "means": np.stack([col("x"), col("y"), col("z")], axis=1),
        "scales": np.stack([col(f"scale_{i}") for i in range(3)], axis=1),
        "quats": np.stack([col(f"rot_{i}") for i in range(4)], axis=1),
        "opacities": col("opacity"),
        "sh0": np.stack([col(f"f_dc_{i}") for i in range(3)], axis=1)[:, None, :],
        "shN": np.ascontiguousarray(shN),
    }
    return Gaussians({k: torch.as_tensor(v, device=device) for k, v in params.items()}, sh_degree=degree)


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
