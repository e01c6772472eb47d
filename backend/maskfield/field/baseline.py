"""The approach MaskField replaces, kept for measurement: per-pixel distillation of the
full embedding (LERF / LangSplat style, without LangSplat's autoencoder).

Every Gaussian carries a D-dimensional (512 for CLIP ViT-B) semantic feature; a view's
feature image is rendered by the same frozen blending weights as the mask field, and each
pixel is pulled towards the embedding of the smallest 2D mask covering it. Segmentation
then compares every Gaussian's feature with the prompt. The cost grows with D at every
pixel and every Gaussian, which is what MaskField's 16-d features avoid.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..adam import Adam
from ..events import Reporter
from .data import FieldView


@dataclass
class BaselineSettings:
    iterations: int = 1500
    lr: float = 2e-2
    seed: int = 0


def pixel_embedding_targets(view: FieldView) -> tuple[torch.Tensor, torch.Tensor]:
    """(supervised pixels, D) target embeddings and a (supervised pixels,) bool of pixels
    that some mask covers: each pixel takes the smallest mask covering at least half of it."""
    targets = view.supervised_targets()
    covered = targets >= 0.5
    area = targets.sum(1)  # (M,)
    # smallest covering mask: among covering masks, the one with the least area
    rank = torch.where(covered, area[:, None], torch.full_like(targets, torch.inf))
    owner = rank.argmin(0)
    has = covered.any(0)
    emb = F.normalize(view.embeddings, dim=-1)
    return emb[owner], has


class EmbeddingField(torch.nn.Module):
    def __init__(self, num_gaussians: int, embed_dim: int, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.features = torch.nn.Parameter(torch.randn(num_gaussians, embed_dim, generator=gen) * 0.1)

    def render(self, view: FieldView) -> torch.Tensor:
        return view.blend(self.features)


def baseline_loss(field: EmbeddingField, view: FieldView, target: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    rendered = field.render(view)[has]
    return (1 - F.cosine_similarity(rendered, target[has], dim=-1)).mean()


def train_baseline(views: list[FieldView], num_gaussians: int, embed_dim: int, settings: BaselineSettings,
                   device: str = "cpu", reporter: Reporter | None = None) -> tuple[EmbeddingField, dict]:
    reporter = reporter or Reporter("none")
    field = EmbeddingField(num_gaussians, embed_dim, settings.seed).to(device)
    optimizer = Adam(field.parameters(), lr=settings.lr)
    targets = [pixel_embedding_targets(v) for v in views]
    rng = np.random.default_rng(settings.seed)
    t0 = time.perf_counter()
    with reporter.progress("baseline", settings.iterations, "per-pixel embedding baseline") as bar:
        for _ in range(settings.iterations):
            reporter.check_cancel()
            k = int(rng.integers(len(views)))
            loss = baseline_loss(field, views[k], *targets[k])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update(1, loss=loss.item())
    return field, {"seconds": round(time.perf_counter() - t0, 1), "settings": asdict(settings)}


def baseline_labels(features: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor,
                    temperature: float = 10.0, threshold: float = 0.5) -> np.ndarray:
    """A prompt per Gaussian (-1 none) from its own embedding: LERF's relevancy against
    canonical negatives, the most relevant prompt winning where it passes ``threshold``."""
    f = F.normalize(features, dim=-1)
    sim = f @ F.normalize(text, dim=-1).T  # (N, P)
    neg = (f @ F.normalize(negatives, dim=-1).T).max(1).values
    relevancy = torch.sigmoid(temperature * (sim - neg[:, None]))
    best, label = relevancy.max(1)
    return torch.where(best >= threshold, label, torch.full_like(label, -1)).numpy().astype(np.int32)
