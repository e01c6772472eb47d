"""Mask losses and the Hungarian matching of queries to one view's 2D masks.

Predictions are logits (K, P) over the P supervised pixels; targets are masks (M, P) in
[0, 1] (soft where a low-resolution pixel is partly covered). ``pixel_weights`` (M, P), where
given, weigh each mask's pixels in the matched losses (``data.edge_band_weights``).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0
DICE_WEIGHT = 0.05


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor,
                       pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-mask focal loss (mean over pixels) for matched pairs: logits and targets (M, P)."""
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = FOCAL_ALPHA * targets + (1 - FOCAL_ALPHA) * (1 - targets)
    loss = alpha_t * ce * (1 - p_t) ** FOCAL_GAMMA
    if pixel_weights is not None:
        loss = loss * pixel_weights
    return loss.mean(dim=1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, pixel_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Per-mask soft dice loss; a pixel of weight w counts as w of a pixel on both sides."""
    prob = torch.sigmoid(logits)
    if pixel_weights is not None:
        prob = prob * pixel_weights
        targets = targets * pixel_weights
    num = 2 * (prob * targets).sum(1)
    den = prob.sum(1) + targets.sum(1)
    return 1 - (num + 1) / (den + 1)


def pairwise_focal_cost(logits: torch.Tensor, targets: torch.Tensor, prob: torch.Tensor | None = None) -> torch.Tensor:
    """Focal loss of every query (K) against every mask (M), as a (K, M) matrix.

    The focal loss is linear in the target for each pixel: with pos / neg its value for a
    target of 1 / 0, the pair's sum is (pos - neg) . t + sum(neg), one matrix product.
    """
    prob = torch.sigmoid(logits) if prob is None else prob
    ce_neg = F.softplus(logits)  # -log(1 - p)
    ce_pos = ce_neg - logits  # -log(p)
    pos = FOCAL_ALPHA * (1 - prob).square() * ce_pos if FOCAL_GAMMA == 2.0 else \
        FOCAL_ALPHA * (1 - prob) ** FOCAL_GAMMA * ce_pos
    neg = (1 - FOCAL_ALPHA) * prob.square() * ce_neg if FOCAL_GAMMA == 2.0 else \
        (1 - FOCAL_ALPHA) * prob ** FOCAL_GAMMA * ce_neg
    p = logits.shape[1]
    return ((pos - neg) @ targets.T + neg.sum(1, keepdim=True)) / p


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor, prob: torch.Tensor | None = None) -> torch.Tensor:
    prob = torch.sigmoid(logits) if prob is None else prob
    num = 2 * prob @ targets.T
    den = prob.sum(1)[:, None] + targets.sum(1)[None, :]
    return 1 - (num + 1) / (den + 1)


def embedding_cost(query_embed: torch.Tensor, mask_embed: torch.Tensor) -> torch.Tensor:
    """(1 - cos) + mean |c - e| for every (query, mask) pair: (K, M)."""
    c = F.normalize(query_embed, dim=-1)
    e = F.normalize(mask_embed, dim=-1)
    cos = c @ e.T
    l1 = torch.cdist(c, e, p=1) / c.shape[1]
    return (1 - cos) + l1


def matching_cost(logits, targets, query_embed, mask_embed, chunk: int = 64) -> torch.Tensor:
    """The (K, M) cost the Hungarian matching minimises; queries go in chunks so the
    temporaries stay at chunk x pixels rather than K x pixels."""
    parts = []
    for block in torch.split(logits, chunk):
        prob = torch.sigmoid(block)
        parts.append(pairwise_focal_cost(block, targets, prob) + DICE_WEIGHT * pairwise_dice_cost(block, targets, prob))
    return torch.cat(parts) + embedding_cost(query_embed, mask_embed)


LEVEL_MISMATCH_COST = 1e6  # above any real pair's cost (each term is at most a few units)


def match_levels(granularity: torch.Tensor) -> torch.Tensor:
    """Which queries may take a mask, by its SAM granularity: 0 for one object (a part or the
    whole: a part carries its object's meaning), 1 for a group (objects merged, their meanings
    mixed), -1 unknown."""
    g = granularity.long()
    return torch.where(g >= 2, 1, torch.where(g >= 0, 0, -1))


def forbid_other_levels(cost: torch.Tensor, query_level: torch.Tensor | None,
                        mask_granularity: torch.Tensor | None) -> torch.Tensor:
    """``cost`` (K, M) with every pair of a query and a mask of another known level
    (``match_levels``) priced out of the matching; -1 on either side pairs with anything."""
    if query_level is None or mask_granularity is None or not bool((query_level >= 0).any()):
        return cost
    q = query_level.to(cost.device).long()[:, None]
    m = match_levels(mask_granularity.to(cost.device))[None, :]
    return cost.masked_fill((q >= 0) & (m >= 0) & (q != m), LEVEL_MISMATCH_COST)


def hungarian_match(cost: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one assignment (scipy's linear_sum_assignment): query and mask indices."""
    from scipy.optimize import linear_sum_assignment

    cost_np = cost.detach().cpu().double().numpy()
    cost_np = np.nan_to_num(cost_np, nan=1e6, posinf=1e6, neginf=-1e6)
    rows, cols = linear_sum_assignment(cost_np)
    return rows, cols


def match_queries(logits, targets, query_embed, mask_embed, query_level: torch.Tensor | None,
                  mask_granularity: torch.Tensor | None) -> tuple[np.ndarray, np.ndarray]:
    """The matching of training: queries (logits K x pixels, embeddings) to one view's masks
    (targets M x the same pixels, embeddings), levels kept apart; query and mask indices."""
    with torch.no_grad():
        cost = forbid_other_levels(matching_cost(logits, targets, query_embed, mask_embed), query_level,
                                   mask_granularity)
    return hungarian_match(cost)


def maskfield_loss(logits, targets, query_embed, mask_embed, rows, cols,
                   dice_weight: float = DICE_WEIGHT,
                   pixel_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Focal + dice_weight * dice + (1 - cos) on matched pairs; unmatched queries pushed to empty masks.

    The paper weighs dice by 0.05 (the default here, and in the matching cost); the trainer
    passes its own setting (see FieldSettings.dice_weight).
    """
    matched = torch.as_tensor(rows, dtype=torch.long, device=logits.device)
    return loss_terms(logits.index_select(0, matched), targets, query_embed, mask_embed, rows, cols,
                      unmatched_penalty(logits, rows), dice_weight, pixel_weights)


def unmatched_penalty(logits: torch.Tensor, rows) -> torch.Tensor:
    """Mean p^2 over the rows of ``logits`` (K, S) not in ``rows`` (the unmatched queries,
    pushed to empty masks). Taken from the row norms of the whole matrix, the matched ones
    masked out afterwards: no copy of the unmatched rows, and none to scatter back."""
    unmatched = torch.ones(logits.shape[0], dtype=logits.dtype, device=logits.device)
    unmatched[torch.as_tensor(rows, dtype=torch.long, device=logits.device)] = 0.0
    count = logits.shape[0] - len(rows)
    if count == 0:
        return logits.sum() * 0
    row_sq = torch.linalg.vector_norm(torch.sigmoid(logits), dim=1).square()
    return (row_sq * unmatched).sum() / (count * logits.shape[1])


def foreign_penalty(logits: torch.Tensor, targets: torch.Tensor, query_embed: torch.Tensor,
                    mask_embed: torch.Tensor, rows, cols, max_cos: float) -> torch.Tensor:
    """The focal loss's negative term for each unmatched query (rows of ``logits`` (K, S) not
    in ``rows``) at the pixels of the view's matched masks whose meaning is not its own (cosine
    of the embeddings under ``max_cos``), summed over those queries and divided by the number
    matched: each counts as much as a matched query. Why: the unmatched term is a mean over
    every spare query, too weak to stop a query that means one object from lighting another that
    never shares a view with it (a room filmed from inside: the sofa's query lit the lamp across
    the room); here the other object's own mask says those pixels are not its."""
    device = logits.device
    matched = torch.zeros(logits.shape[0], dtype=torch.bool, device=device)
    matched[torch.as_tensor(rows, dtype=torch.long, device=device)] = True
    if not len(rows) or bool(matched.all()):
        return logits.sum() * 0
    free = torch.nonzero(~matched).squeeze(1)
    cols_t = torch.as_tensor(cols, dtype=torch.long, device=device)
    cos = F.normalize(query_embed.index_select(0, free), dim=-1) @ F.normalize(mask_embed.index_select(0, cols_t), dim=-1).T
    foreign = ((cos < max_cos).to(targets.dtype) @ targets.index_select(0, cols_t)).clamp_max(1.0)  # (U, S)
    lf = logits.index_select(0, free)
    prob = torch.sigmoid(lf)
    neg = (1 - FOCAL_ALPHA) * prob.square() * F.softplus(lf)  # the focal loss at target 0 (gamma 2)
    return (neg * foreign).mean(1).sum() / len(rows)


def loss_terms(matched_logits, targets, query_embed, mask_embed, rows, cols, unmatched: torch.Tensor,
               dice_weight: float = DICE_WEIGHT, pixel_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The MaskField loss from its two parts: the matched queries' logits (R, P) against
    ``targets[cols]``, and ``unmatched`` (``unmatched_penalty``, which may be over a sample of
    the pixels: a mean, so any sample estimates it)."""
    device = matched_logits.device
    cols_t = torch.as_tensor(cols, dtype=torch.long, device=device)
    targets_m = targets.index_select(0, cols_t)
    weights_m = pixel_weights.index_select(0, cols_t).to(matched_logits.dtype) if pixel_weights is not None else None
    zero = matched_logits.sum() * 0
    focal = sigmoid_focal_loss(matched_logits, targets_m, weights_m).mean() if len(rows) else zero
    dice = dice_loss(matched_logits, targets_m, weights_m).mean() if len(rows) else zero
    c = F.normalize(query_embed.index_select(0, torch.as_tensor(rows, dtype=torch.long, device=device)), dim=-1)
    e = F.normalize(mask_embed.index_select(0, cols_t), dim=-1)
    cos = (1 - (c * e).sum(-1)).mean() if len(rows) else zero
    total = focal + dice_weight * dice + cos + unmatched
    return {"total": total, "focal": focal, "dice": dice, "cos": cos, "unmatched": unmatched}
