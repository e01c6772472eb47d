"""The Gaussian model: means, log-scales, rotations (w x y z), opacity logits, SH colour."""
from __future__ import annotations

import math

import numpy as np
import torch

SH_C0 = 0.28209479177387814  # the degree-0 spherical-harmonic basis constant


def rgb_to_sh(rgb):
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(sh):
    return sh * SH_C0 + 0.5


def num_sh_bases(degree: int) -> int:
    return (degree + 1) ** 2


class Gaussians:
    """A bag of named tensors, the form gsplat's strategies and optimisers expect.

    ``params`` holds torch.nn.Parameters: means (N,3), scales (N,3, log), quats (N,4),
    opacities (N, logit), sh0 (N,1,3), shN (N,K-1,3).
    """

    def __init__(self, params: dict[str, torch.Tensor], sh_degree: int = 3):
        self.params = torch.nn.ParameterDict({k: torch.nn.Parameter(v) if not isinstance(v, torch.nn.Parameter) else v
                                              for k, v in params.items()})
        self.sh_degree = sh_degree

    # --- construction ---------------------------------------------------------------
    @classmethod
    def from_points(cls, points: np.ndarray, colors: np.ndarray | None = None, sh_degree: int = 3,
                    init_opacity: float = 0.1, scale_multiplier: float = 1.0, device="cpu") -> "Gaussians":
        """Seed one Gaussian per point; its size from the distance to its 3 nearest neighbours."""
        from scipy.spatial import cKDTree

        points = np.asarray(points, dtype=np.float32)
        if len(points) == 0:
            raise ValueError("no points to seed Gaussians from")
        if colors is None:
            colors = np.full((len(points), 3), 128, dtype=np.uint8)
        k = min(4, len(points))
        if k > 1:
            dist, _ = cKDTree(points).query(points, k=k)
            mean_dist = np.sqrt(np.mean(dist[:, 1:] ** 2, axis=1))
        else:
            mean_dist = np.full(len(points), 0.01, dtype=np.float32)
        mean_dist = np.clip(mean_dist, 1e-7, None) * scale_multiplier
        n = len(points)
        rgb = torch.as_tensor(np.asarray(colors, dtype=np.float32) / 255.0)
        params = {
            "means": torch.as_tensor(points),
            "scales": torch.log(torch.as_tensor(mean_dist, dtype=torch.float32))[:, None].repeat(1, 3),
            "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1),
            "opacities": torch.full((n,), math.log(init_opacity / (1 - init_opacity))),
            "sh0": rgb_to_sh(rgb)[:, None, :],
            "shN": torch.zeros(n, num_sh_bases(sh_degree) - 1, 3),
        }
        return cls({k: v.to(device) for k, v in params.items()}, sh_degree)

    @classmethod
    def random_in_bounds(cls, center: np.ndarray, radius: float, count: int, sh_degree: int = 3,
                         seed: int = 0, device="cpu") -> "Gaussians":
        """Points uniform in a cube around the scene centre, random colours, for scenes without
        points; each Gaussian 0.3 times as wide as the RMS distance to its 3 nearest neighbours."""
        rng = np.random.default_rng(seed)
        inner = int(count * 0.8)
        points = rng.uniform(-1, 1, size=(inner, 3)) * radius
        # a fifth on a far shell beyond the cameras (bounds() gives half their distance), for the
        # photo's background; shell points near a camera would cover whole images
        shell = rng.normal(size=(count - inner, 3))
        shell = shell / np.linalg.norm(shell, axis=1, keepdims=True) * radius * rng.uniform(4.0, 8.0, size=(count - inner, 1))
        points = (np.concatenate([points, shell]) + np.asarray(center)).astype(np.float32)
        colors = rng.integers(0, 256, size=(count, 3), dtype=np.uint8)
        # sizes from the nearest-neighbour distances as 3DGS does, at 0.3 of them: measured on the
        # fox at 1/8 (600 steps, compiled renderer), 3DGS's full size gave 21.2 dB held-out in
        # 554 s, 0.3 gave 20.4 dB in 90 s (a sparse random cloud's huge splats cost many pairs)
        return cls.from_points(points, colors, sh_degree=sh_degree, scale_multiplier=0.3, device=device)

    @classmethod
    def random_in_views(cls, cameras, count: int, near: float, far: float, sh_degree: int = 3, seed: int = 0,
                        device="cpu") -> "Gaussians":
        """Points along the cameras' own pixel rays at depths spread evenly in log between
        ``near`` and ``far``, random colours: for captures without points whose cameras look
        outward (a room from inside), where no cube around a centre holds what they see."""
        rng = np.random.default_rng(seed)
        which = rng.integers(0, len(cameras), size=count)
        points = np.empty((count, 3))
        for k, cam in enumerate(cameras):
            rows = np.nonzero(which == k)[0]
            u = rng.uniform(0, cam.width, size=len(rows))
            v = rng.uniform(0, cam.height, size=len(rows))
            rays = np.stack([(u - cam.cx) / cam.fx, (v - cam.cy) / cam.fy, np.ones(len(rows))], 1)
            rays /= np.linalg.norm(rays, axis=1, keepdims=True)
            depth = np.exp(rng.uniform(np.log(near), np.log(far), size=(len(rows), 1)))
            points[rows] = cam.center + (rays @ cam.camtoworld[:3, :3].T) * depth
        colors = rng.integers(0, 256, size=(count, 3), dtype=np.uint8)
        return cls.from_points(points.astype(np.float32), colors, sh_degree=sh_degree, scale_multiplier=0.3,
                               device=device)

    # --- views ------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def device(self) -> torch.device:
        return self.params["means"].device

    @property
    def means(self) -> torch.Tensor:
        return self.params["means"]

    def activated(self, split_sh: bool = False) -> dict[str, torch.Tensor]:
        """Renderer-ready values: real scales, unit quaternions, opacities in (0,1), SH (N,K,3);
        with ``split_sh``, SH as ``sh0`` (N,1,3) and ``shN`` (N,K-1,3) (no joined copy: the fit)."""
        p = self.params
        sh = {"sh0": p["sh0"], "shN": p["shN"]} if split_sh else {"sh": torch.cat([p["sh0"], p["shN"]], dim=1)}
        return {
            "means": p["means"],
            "scales": torch.exp(p["scales"]),
            "quats": torch.nn.functional.normalize(p["quats"], dim=-1),
            "opacities": torch.sigmoid(p["opacities"]),
            **sh,
        }

    def to(self, device) -> "Gaussians":
        self.params = self.params.to(device)
        return self

    def detached(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.params.items()}

    def state_dict(self) -> dict:
        return {"params": {k: v.detach().cpu() for k, v in self.params.items()}, "sh_degree": self.sh_degree}

    @classmethod
    def from_state_dict(cls, state: dict, device="cpu") -> "Gaussians":
        return cls({k: v.to(device) for k, v in state["params"].items()}, state["sh_degree"])

    def subset(self, indices) -> "Gaussians":
        return Gaussians({k: v.detach()[indices].clone() for k, v in self.params.items()}, self.sh_degree)
