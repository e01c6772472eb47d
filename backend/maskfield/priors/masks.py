# SPDX-License-Identifier: GPL-3.0-or-later
"""SAM automatic masks at three granularities.

Built on segment-anything's own pieces (``SamPredictor`` for the image embedding, which is
computed once per image and reused by every point batch, ``Sam.prompt_encoder`` /
``mask_decoder`` / ``postprocess_masks``, and ``segment_anything.utils.amg`` for the point
grid, batching, stability score and mask boxes). We do not use ``SamAutomaticMaskGenerator``
itself because it flattens SAM's three outputs and forgets which is which; here the three
multimask outputs of each point prompt are kept as the granularities

    output 0 -> 0 small (sub-part), output 1 -> 1 medium (part), output 2 -> 2 large (whole)

(SAM's decoder tends to order its ambiguity outputs from small to large).

Filtering, in this order (defaults in ``MaskSettings``, the MaskField paper's numbers):

1. predicted IoU >= ``pred_iou_thresh`` (0.7), applied on the 256x256 low-resolution
   logits before anything is upsampled (this keeps memory low);
2. stability score >= ``stability_score_thresh`` (0.85), SAM's definition (IoU of the
   mask thresholded at logit +1 and -1), at mask resolution;
3. area >= ``min_area`` (100 pixels at mask resolution);
4. box NMS at IoU ``box_nms_thresh`` (0.7) with ``torchvision.ops.batched_nms``,
   **per granularity** (the granularity is the NMS category, the predicted IoU the score):
   a part and its whole often share a box and must both survive;
5. the cross-mask pass ``filter_overlapping``: greedy in order of decreasing score, a mask
   is dropped when a kept mask (of *any* granularity) has mask IoU > ``dup_iou_thresh``
   (0.8) with it (near-duplicate), or when a kept mask of the *same* granularity and it
   overlap by more than ``contain_thresh`` (0.95) of the smaller one's area
   (near-contained: two nested masks at one level of the hierarchy are one too many; the
   more confident one stays). Nesting across granularities is the hierarchy and is kept.

Masks are computed on the image resized so that its long side is at most ``max_side``
(1024, SAM's own input size: a larger image gives SAM no more detail).

ViT-B is the default on the CPU; ``default_sam_model`` suggests ViT-H on a CUDA device with
at least 12 GB of memory.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..events import MaskFieldError
from .store import as_rgb_uint8, image_sha256

SAM_MODEL_TYPES = ("vit_b", "vit_l", "vit_h")
SAM_CHECKPOINT_FILES = {  # the official file names, to say which file is expected
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
}
_SAM_DEPTH = {12: "vit_b", 24: "vit_l", 32: "vit_h"}
_UPSAMPLE_CHUNK = 32


@dataclass
class MaskSettings:
    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.7
    stability_score_thresh: float = 0.85
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    min_area: int = 100
    dup_iou_thresh: float = 0.8
    contain_thresh: float = 0.95
    max_side: int = 1024

    def __post_init__(self):
        if self.points_per_side < 1:
            raise MaskFieldError("--points-per-side must be at least 1")
        if self.points_per_batch < 1:
            raise MaskFieldError("points_per_batch must be at least 1")
        if self.max_side < 32:
            raise MaskFieldError("max_side must be at least 32")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MaskSet:
    """One image's masks: masks M x H x W bool, and per mask its granularity and scores."""

    masks: np.ndarray
    granularity: np.ndarray  # int8
    scores: np.ndarray  # float32, SAM's predicted IoU
    stability: np.ndarray = field(default=None)  # float32
    points: np.ndarray = field(default=None)  # M x 2 float32, the prompt (x, y) at mask resolution

    def __post_init__(self):
        m = self.masks.shape[0]
        self.granularity = np.asarray(self.granularity, dtype=np.int8).reshape(m)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(m)
        self.stability = (np.ones(m, np.float32) if self.stability is None
                          else np.asarray(self.stability, dtype=np.float32).reshape(m))
        self.points = (np.full((m, 2), np.nan, np.float32) if self.points is None
                       else np.asarray(self.points, dtype=np.float32).reshape(m, 2))

    def __len__(self) -> int:
        return int(self.masks.shape[0])

    def subset(self, keep) -> "MaskSet":
        keep = np.asarray(keep)
        return MaskSet(self.masks[keep], self.granularity[keep], self.scores[keep],
                       self.stability[keep], self.points[keep])


# --- the cross-mask pass --------------------------------------------------------------------

def pairwise_overlaps(masks: np.ndarray, max_cost: float = 2e8) -> tuple[np.ndarray, np.ndarray]:
    """Intersections (M x M) and areas (M,) of boolean masks, as float64 pixel counts.

    Uses a sparse product, exact at full resolution when the cost (sum over pixels of the
    squared number of masks covering it) is below ``max_cost``; otherwise the masks are
    subsampled on a regular grid until it is, and the counts are scaled back up.
    """
    from scipy import sparse

    m = masks.shape[0]
    if m == 0:
        return np.zeros((0, 0)), np.zeros((0,))
    sub = masks
    scale = 1.0
    cover = sub.reshape(m, -1).sum(axis=0, dtype=np.int64)
    cost = float((cover.astype(np.float64) ** 2).sum())
    if cost > max_cost:
        step = int(math.ceil(math.sqrt(cost / max_cost)))
        sub = masks[:, ::step, ::step]
        scale = masks.shape[1] * masks.shape[2] / float(sub.shape[1] * sub.shape[2])
    flat = sparse.csr_matrix(sub.reshape(m, -1), dtype=np.float32)
    inter = np.asarray((flat @ flat.T).todense(), dtype=np.float64) * scale
    areas = np.diag(inter).copy()
    return inter, areas


def filter_overlapping(masks: np.ndarray, scores: np.ndarray, granularity: np.ndarray,
                       dup_iou_thresh: float = 0.8, contain_thresh: float = 0.95) -> np.ndarray:
    """Indices of the masks kept by the cross-mask pass, in order of decreasing score.

    Greedy, most confident first. Mask j is dropped if an already kept mask i has
    IoU(i, j) > ``dup_iou_thresh`` (any granularities), or has the same granularity and
    |i ∩ j| / min(|i|, |j|) > ``contain_thresh``. Empty masks are always dropped.
    """
    masks = np.asarray(masks, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    granularity = np.asarray(granularity).reshape(-1)
    m = masks.shape[0]
    if not (scores.shape[0] == granularity.shape[0] == m):
        raise ValueError("masks, scores and granularity must have the same length")
    if m == 0:
        return np.zeros((0,), dtype=np.int64)
    inter, areas = pairwise_overlaps(masks)
    union = areas[:, None] + areas[None, :] - inter
    iou = inter / np.maximum(union, 1e-9)
    smaller = np.minimum(areas[:, None], areas[None, :])
    contained = inter / np.maximum(smaller, 1e-9)
    same = granularity[:, None] == granularity[None, :]
    conflict = (iou > dup_iou_thresh) | (same & (contained > contain_thresh))
    order = np.argsort(-scores, kind="stable")
    removed = areas <= 0
    keep: list[int] = []
    for i in order:
        if removed[i]:
            continue
        keep.append(int(i))
        removed |= conflict[i]
    return np.asarray(keep, dtype=np.int64)


# --- models -----------------------------------------------------------------------------------

def default_sam_model(device: str) -> str:
    """ViT-H on a CUDA device with >= 12 GB, else ViT-B (the CPU default)."""
    try:
        import torch

        if str(device).startswith("cuda") and torch.cuda.is_available():
            index = torch.device(device).index or 0
            if torch.cuda.get_device_properties(index).total_memory >= 12 * 2**30:
                return "vit_h"
    except Exception:  # noqa: BLE001
        pass
    return "vit_b"


def _guess_sam_type(state: Any) -> str | None:
    if not isinstance(state, dict):
        return None
    blocks = {k.split(".")[2] for k in state if isinstance(k, str) and k.startswith("image_encoder.blocks.")}
    return _SAM_DEPTH.get(len(blocks))


def build_sam(model_type: str = "vit_b", checkpoint: str | Path | None = None, device: str = "cpu"):
    """SAM of ``model_type``: with the weights in ``checkpoint``, or random weights if None.

    A file that does not hold this model's weights gives a MaskFieldError that names the
    file, the expected model and (if it can tell) the model the file is for.
    """
    import torch
    from segment_anything import sam_model_registry

    if model_type not in SAM_MODEL_TYPES:
        raise MaskFieldError(f"unknown SAM model {model_type!r}; choose one of {', '.join(SAM_MODEL_TYPES)}")
    model = sam_model_registry[model_type](checkpoint=None)
    if checkpoint is not None:
        path = Path(checkpoint)
        expected = f"SAM {model_type} weights ({SAM_CHECKPOINT_FILES[model_type]})"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise MaskFieldError(f"SAM weights file not found: {path}. Put {expected} there.") from None
        except Exception as exc:  # noqa: BLE001 - torch raises many kinds here
            raise MaskFieldError(f"cannot read {path} as {expected}: {exc}. "
                                 "The file may be damaged or incomplete; download it again.") from None
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            state = state["model"]
        try:
            model.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001
            guess = _guess_sam_type(state)
            hint = (f" It looks like SAM {guess} weights: pass --sam-model {guess}, or put the {model_type} file there."
                    if guess and guess != model_type else f" Put {expected} there.")
            first = str(exc).strip().splitlines()[0][:200]
            raise MaskFieldError(f"{path} does not hold {expected} ({first}).{hint}") from None
    return model.to(device).eval()


def load_sam(model_type: str = "vit_b", weights_dir: str | Path | None = None, device: str = "cpu",
             allow_download: bool = True, reporter=None):
    """SAM with its official weights, found (or downloaded) by ``priors.weights``."""
    from .weights import resolve_checkpoint

    if model_type not in SAM_MODEL_TYPES:
        raise MaskFieldError(f"unknown SAM model {model_type!r}; choose one of {', '.join(SAM_MODEL_TYPES)}")
    path = resolve_checkpoint(f"sam_{model_type}", weights_dir=weights_dir, allow_download=allow_download,
                              reporter=reporter)
    return build_sam(model_type, path, device)


def _model_type_of(model) -> str:
    try:
        return _SAM_DEPTH.get(len(model.image_encoder.blocks), "custom")
    except AttributeError:
        return "custom"


# --- the generator -----------------------------------------------------------------------------

class SamMaskGenerator:
    """Automatic masks from a point grid, three granularities per point (see the module doc).

    ``model`` is a ``segment_anything.modeling.Sam`` (``build_sam`` / ``load_sam``);
    ``name`` goes into the priors' meta as ``mask_model`` (default ``sam:<type>``).
    ``calls`` counts the images processed (tests use it to see the cache at work). The
    image embedding of the last image is kept, so asking again for the same image (with
    other settings) does not run the image encoder again.
    """

    def __init__(self, model, settings: MaskSettings | None = None, name: str | None = None):
        from segment_anything import SamPredictor

        self.model = model
        self.settings = settings or MaskSettings()
        self.name = name or f"sam:{_model_type_of(model)}"
        self.predictor = SamPredictor(model)
        self.calls = 0  # images asked for
        self.encoder_calls = 0  # image-encoder runs (an image given twice in a row is encoded once)
        self._embedded: str | None = None

    @property
    def device(self):
        return self.model.device

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """uint8 RGB at the mask resolution (long side <= settings.max_side)."""
        image = as_rgb_uint8(image)
        h, w = image.shape[:2]
        scale = self.settings.max_side / max(h, w)
        if scale < 1.0:
            from PIL import Image

            size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
            image = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
        return image

    def generate(self, image: np.ndarray, check_cancel=None) -> MaskSet:
        """Masks for one image (any dtype/channels ``as_rgb_uint8`` takes)."""
        import torch
        from segment_anything.utils.amg import (
            batch_iterator,
            batched_mask_to_box,
            build_point_grid,
            calculate_stability_score,
        )
        from torchvision.ops import batched_nms

        s = self.settings
        self.calls += 1
        image = self.prepare(image)
        h, w = image.shape[:2]
        model = self.model
        key = image_sha256(image)
        with torch.inference_mode():
            if self._embedded != key or not self.predictor.is_image_set:
                self._embedded = None
                self.predictor.set_image(image)  # the image embedding, computed once per image
                self.encoder_calls += 1
                self._embedded = key
            points = build_point_grid(s.points_per_side) * np.array([[w, h]], dtype=np.float64)
            packed, iou_all, stab_all, gran_all, box_all, pts_all = [], [], [], [], [], []
            image_pe = model.prompt_encoder.get_dense_pe()
            for (batch,) in batch_iterator(s.points_per_batch, points):
                if check_cancel is not None:
                    check_cancel()
                coords = self.predictor.transform.apply_coords(batch, (h, w))
                in_points = torch.as_tensor(coords, dtype=torch.float32, device=self.device)[:, None, :]
                in_labels = torch.ones((in_points.shape[0], 1), dtype=torch.int, device=self.device)
                sparse_emb, dense_emb = model.prompt_encoder(points=(in_points, in_labels), boxes=None, masks=None)
                low_res, iou_pred = model.mask_decoder(
                    image_embeddings=self.predictor.features,
                    image_pe=image_pe,
                    sparse_prompt_embeddings=sparse_emb,
                    dense_prompt_embeddings=dense_emb,
                    multimask_output=True,
                )  # (B, 3, 256, 256), (B, 3)
                n_out = low_res.shape[1]
                low_res = low_res.flatten(0, 1)
                iou_pred = iou_pred.flatten(0, 1).float()
                gran = torch.arange(n_out, device=low_res.device).repeat(len(batch))
                pts = torch.as_tensor(np.repeat(batch, n_out, axis=0), dtype=torch.float32)
                keep = iou_pred >= s.pred_iou_thresh
                if not bool(keep.any()):
                    continue
                low_res, iou_pred, gran, pts = low_res[keep], iou_pred[keep], gran[keep], pts[keep.cpu()]
                # Upsample a few masks at a time: a 1024 x 1024 float logit map is 4 MB each.
                for lo in range(0, low_res.shape[0], _UPSAMPLE_CHUNK):
                    hi = lo + _UPSAMPLE_CHUNK
                    logits = model.postprocess_masks(low_res[lo:hi, None], self.predictor.input_size, (h, w))[:, 0]
                    stab = calculate_stability_score(logits, model.mask_threshold, s.stability_score_offset)
                    binary = logits > model.mask_threshold
                    del logits
                    area = binary.flatten(1).sum(1)
                    ok = (stab >= s.stability_score_thresh) & (area >= s.min_area)
                    if not bool(ok.any()):
                        continue
                    binary = binary[ok]
                    box_all.append(batched_mask_to_box(binary).float().cpu())
                    packed.append(np.packbits(binary.cpu().numpy(), axis=-1))
                    iou_all.append(iou_pred[lo:hi][ok].cpu())
                    stab_all.append(stab[ok].float().cpu())
                    gran_all.append(gran[lo:hi][ok].cpu())
                    pts_all.append(pts[lo:hi][ok.cpu()])
        if not packed:
            return MaskSet(np.zeros((0, h, w), bool), np.zeros(0, np.int8), np.zeros(0, np.float32))
        boxes = torch.cat(box_all)
        iou = torch.cat(iou_all)
        gran = torch.cat(gran_all)
        nms_keep = batched_nms(boxes, iou, gran, iou_threshold=s.box_nms_thresh).numpy()
        bits = np.concatenate(packed)[nms_keep]
        masks = np.unpackbits(bits, axis=-1, count=w).astype(bool)
        result = MaskSet(masks, gran.numpy()[nms_keep], iou.numpy()[nms_keep],
                         torch.cat(stab_all).numpy()[nms_keep], torch.cat(pts_all).numpy()[nms_keep])
        keep = filter_overlapping(result.masks, result.scores, result.granularity,
                                  s.dup_iou_thresh, s.contain_thresh)
        return result.subset(keep)
