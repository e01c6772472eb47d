"""Per-query logit offsets, fitted after training on the training views' own masks.

Why: the focal loss (alpha 0.25) weighs a missed object pixel a third as much as a wrongly
lit one, so where the masks' edges disagree from view to view (SAM's do, by a pixel or two)
a query settles under 0.5 on pixels that are its object in most views: objects come out a
pixel too small, and small and thin ones lose the most (the kitchen's apple and stool legs,
docs/measurements.md). Training with a calibrated loss instead (alpha 0.5) did not recover
it. One offset per query, the one under which its logits best reproduce the masks it was
matched to (IoU summed over the training views), moves each query's 0.5 level back to
where its masks put the edge; segmentation adds it to every logit of that query.
"""
from __future__ import annotations

from typing import Iterable

import torch

from .data import FieldView
from .losses import match_queries

# Offsets tried, in logits: +-4 moves a sigmoid of 0.5 to 0.02 / 0.98, beyond any edge's doubt.
OFFSET_GRID = torch.arange(-4.0, 4.0 + 1e-6, 0.25)


def matched_overlaps(features: torch.Tensor, mask_embed: torch.Tensor, query_embed: torch.Tensor,
                     views: Iterable[FieldView], query_level: torch.Tensor | None = None,
                     grid: torch.Tensor = OFFSET_GRID) -> tuple[torch.Tensor, torch.Tensor]:
    """Per query and offset (K, len(grid)): the pixels its offset mask shares with the masks it
    is matched to, and their union, summed over ``views`` (matched as in training, on every
    supervised pixel)."""
    k = mask_embed.shape[0]
    device = features.device
    grid = grid.to(device)
    inter = torch.zeros(k, len(grid), device=device)
    union = torch.zeros(k, len(grid), device=device)
    with torch.no_grad():
        for view in views:
            logits = mask_embed @ view.blend(features).T  # (K, P)
            targets = view.supervised_targets()
            rows, cols = match_queries(logits, targets, query_embed, view.embeddings, query_level, view.granularity)
            if not len(rows):
                continue
            rows_t = torch.as_tensor(rows, dtype=torch.long, device=device)
            masks = targets.index_select(0, torch.as_tensor(cols, dtype=torch.long, device=device)) > 0.5
            lit, both = lit_counts(logits.index_select(0, rows_t), masks, grid)
            inter.index_add_(0, rows_t, both)
            union.index_add_(0, rows_t, lit + masks.sum(1, keepdim=True).float() - both)
    return inter, union


def lit_counts(logits: torch.Tensor, masks: torch.Tensor, grid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For rows of ``logits`` (R, P) and their masks (R, P) bool: how many pixels each lights
    with each offset of the ascending ``grid`` (logit + offset > 0), and how many of those are
    in its mask, both (R, len(grid)). One pass over the pixels: a pixel lit at one offset is lit
    at every larger one, so counts of the first offset that lights each pixel, summed up the
    grid, give them all."""
    first = torch.searchsorted(grid.contiguous(), (-logits).contiguous(), right=True)  # (R, P) in 0..len(grid)
    size = len(grid) + 1
    lit = torch.zeros(logits.shape[0], size, device=logits.device).scatter_add_(1, first, torch.ones_like(logits))
    both = torch.zeros_like(lit).scatter_add_(1, first, masks.to(logits.dtype))
    return lit.cumsum(1)[:, :-1], both.cumsum(1)[:, :-1]


def query_offsets(features: torch.Tensor, mask_embed: torch.Tensor, query_embed: torch.Tensor,
                  views: Iterable[FieldView], query_level: torch.Tensor | None = None,
                  grid: torch.Tensor = OFFSET_GRID) -> torch.Tensor:
    """(K,) float32: each query's logit offset with the best IoU against its matched masks
    over ``views``; 0 for a query never matched. Of offsets within a hair of the best IoU
    the one nearest 0 is taken, so a query whose edges are already right keeps them."""
    inter, union = matched_overlaps(features, mask_embed, query_embed, views, query_level, grid)
    grid = grid.to(inter.device)
    iou = inter / union.clamp_min(1.0)
    best = (iou - 1e-6 * grid.abs()[None, :]).argmax(1)
    matched = union.amax(1) > 0
    return torch.where(matched, grid[best], torch.zeros_like(grid[best])).float().cpu()
