"""Training views for the mask field: frozen compositing weights and low-resolution targets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..events import MaskFieldError, Reporter
from ..splats.render import RenderCamera, compositing_weights


@dataclass
class FieldView:
    name: str
    weights: torch.Tensor  # sparse CSR (pixels, gaussians): the frozen blending weights
    alpha: torch.Tensor  # (pixels,) accumulated opacity
    targets: torch.Tensor  # (M, pixels) float in [0, 1]
    embeddings: torch.Tensor  # (M, D)
    supervised: torch.Tensor  # (pixels,) bool: covered by the Gaussians
    width: int
    height: int


def supervision_camera(camera, long_side: int):
    """The camera scaled so that its long side has ``long_side`` pixels."""
    scale = max(camera.width, camera.height) / float(long_side)
    return camera.scaled(max(scale, 1.0))


def weights_matrix(g: dict[str, torch.Tensor], camera, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse (pixels x Gaussians) blending weights of one view, and the accumulated alpha."""
    rc = RenderCamera.from_camera(camera, device)
    pixel, gaussian, weight = compositing_weights(g, rc)
    n_pix = camera.width * camera.height
    coo = torch.sparse_coo_tensor(torch.stack([pixel, gaussian]), weight, (n_pix, g["means"].shape[0]))
    alpha = torch.zeros(n_pix, device=device).index_add_(0, pixel, weight)
    return coo.coalesce().to_sparse_csr(), alpha


def area_resize_masks(masks: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean masks (M, H, W) -> coverage fractions (M, height, width) by area averaging."""
    from PIL import Image

    out = np.empty((len(masks), height, width), dtype=np.float32)
    for i, mask in enumerate(masks):
        img = Image.fromarray(mask.astype(np.float32))
        out[i] = np.asarray(img.resize((width, height), Image.Resampling.BOX), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


def build_views(scene, gaussians, priors: dict, indices, long_side: int, device,
                reporter: Reporter | None = None) -> list[FieldView]:
    reporter = reporter or Reporter("none")
    g = {k: v.detach().to(device) for k, v in gaussians.activated().items()}
    views = []
    for i in reporter.track(indices, "field_views", desc="preparing views"):
        name = scene.cameras[i].name
        if name not in priors:
            continue
        p = priors[name]
        cam = supervision_camera(scene.camera(i), long_side)
        W, alpha = weights_matrix(g, cam, device)
        masks = p.masks
        if len(masks) == 0:
            continue
        targets = area_resize_masks(masks, cam.width, cam.height).reshape(len(masks), -1)
        keep = targets.sum(1) >= 1.0  # masks smaller than a pixel at this resolution teach nothing
        if not keep.any():
            continue
        views.append(FieldView(
            name=name, weights=W, alpha=alpha,
            targets=torch.as_tensor(targets[keep], device=device),
            embeddings=torch.as_tensor(np.asarray(p.embeddings)[keep], dtype=torch.float32, device=device),
            supervised=alpha > 0.5, width=cam.width, height=cam.height))
    if not views:
        raise MaskFieldError("no training view has usable priors (masks) for the mask field; check RUN/priors "
                             "(run `maskfield priors`), or the image names in the priors files.", kind="missing_stage")
    return views


def load_priors_folder(folder: Path) -> dict[str, dict]:
    """Every RUN/priors/<image>.npz, validated, keyed by image stem."""
    from ..priors.store import load_priors

    out = {}
    for path in sorted(Path(folder).glob("*.npz")):
        out[path.stem] = load_priors(path)
    return out
