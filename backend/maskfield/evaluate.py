# SPDX-License-Identifier: GPL-3.0-or-later
"""Segmentation metrics of the paper's tables: IoU / mIoU, pixel accuracy, boundary IoU.

Inputs are integer label images (H x W), one per view: a prediction and a ground truth
in the same label space. Two values are special, both parameters:

- ``ignore_index`` (default None): ground-truth pixels with this value are not scored at
  all (unlabelled pixels, e.g. 255). Predictions on them do not count either.
- ``background`` (default 0): the background class. Its pixels are scored (a prediction
  of an object there is a false positive for that object, and accuracy counts them), but
  the background is not one of the averaged classes unless ``include_background=True``.

Definitions
-----------
For class c, over a set of pixels: I_c = |pred == c and gt == c|, U_c = |pred == c or gt == c|,
IoU_c = I_c / U_c. mIoU is the mean of IoU_c over the *evaluated classes*: the classes
present in the ground truth (minus the background, see above), or an explicit ``classes``
list (a listed class that never appears in GT nor prediction has no IoU and is skipped; a
listed class predicted but absent from GT scores 0). Classes that appear only in the
prediction are not averaged when no list is given; their pixels still lower the accuracy
and the IoU of the class they were taken from.

Pixel accuracy = correctly labelled pixels / scored pixels (all classes, background
included).

Boundary IoU (Cheng et al., "Boundary IoU: Improving Object-Centric Image Segmentation
Evaluation", CVPR 2021): for a binary mask M, its boundary band M_d is the set of pixels
of M within distance d of M's contour, i.e. M minus M eroded d times by a 3x3 square
(chessboard distance; the image outside the frame counts as outside the mask, as in the
reference implementation). Boundary IoU = |G_d ∩ P_d| / |G_d ∪ P_d| for ground truth G
and prediction P of one class. d = ``boundary_ratio`` x image diagonal, rounded, at
least 1 (ratio 0.02 by default, the paper's setting). mBIoU averages it over the
evaluated classes as mIoU does. Computed with ``scipy.ndimage.distance_transform_cdt``
(chessboard) on the mask's bounding box, which equals the iterated erosion.

Accumulation over views
-----------------------
``average="dataset"`` (default, the standard for semantic segmentation benchmarks): the
intersections and unions of each class are summed over all views first, then IoU_c =
sum I / sum U, then the mean over classes; accuracy = total correct / total scored.
``average="view"``: each view is scored on its own (classes present in that view's GT),
then the per-view mIoU / accuracy / mBIoU are averaged over views (the protocol of
per-image evaluations such as LERF-Mask); per-class IoU is then the mean over the views
where the class is evaluated.

Undefined values (nothing to average) are returned as None, so results are JSON-ready.

Prompt matching
---------------
The segmenter labels pixels (or Gaussians) with a prompt index (-1 = background); the
ground truth uses object ids with names (``labels/objects.json``). ``match_prompts_to_objects``
pairs them by name, ``gt_to_prompt_classes`` and ``prompt_labels_to_classes`` bring both
into one label space: class k + 1 for prompt k, 0 for background.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import ndimage

from maskfield.events import MaskFieldError

__all__ = [
    "EvaluationError",
    "boundary_width",
    "mask_boundary",
    "binary_iou",
    "boundary_iou",
    "SegmentationMetrics",
    "evaluate_segmentation",
    "mean_iou",
    "pixel_accuracy",
    "mean_boundary_iou",
    "normalize_name",
    "match_prompts_to_objects",
    "gt_to_prompt_classes",
    "prompt_labels_to_classes",
    "floater_share",
    "colour_metrics",
]


class EvaluationError(MaskFieldError, ValueError):
    """Inputs that cannot be compared (shapes, counts, types)."""

    def __init__(self, message: str):
        super().__init__(message, kind="input")


# --------------------------------------------------------------------------------------
# binary masks
# --------------------------------------------------------------------------------------
def boundary_width(shape: Sequence[int], ratio: float = 0.02) -> int:
    """d = round(ratio x image diagonal), at least 1 (Boundary IoU's dilation ratio)."""
    h, w = int(shape[0]), int(shape[1])
    return max(1, int(round(ratio * math.hypot(h, w))))


def mask_boundary(mask: np.ndarray, width: int) -> np.ndarray:
    """The inner boundary band of a binary mask: pixels of ``mask`` whose chessboard
    distance to the nearest pixel outside it (the frame counts as outside) is <= width.
    Equals ``mask & ~erode(mask, 3x3 square, width times)``."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise EvaluationError(f"a mask must be 2-D, got shape {mask.shape}")
    out = np.zeros(mask.shape, dtype=bool)
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return out
    cols = np.flatnonzero(mask.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # crop to the bounding box and pad one outside pixel all round: every pixel beyond
    # is outside the mask too and farther away, so distances are unchanged
    crop = np.pad(mask[r0:r1, c0:c1], 1, mode="constant", constant_values=False)
    dist = ndimage.distance_transform_cdt(crop, metric="chessboard")[1:-1, 1:-1]
    out[r0:r1, c0:c1] = mask[r0:r1, c0:c1] & (dist <= width)
    return out


def _check_pair(pred: np.ndarray, gt: np.ndarray, what: str = "prediction and ground truth") -> None:
    if pred.shape != gt.shape:
        raise EvaluationError(f"{what} differ in shape: {pred.shape} vs {gt.shape}")
    if pred.ndim != 2:
        raise EvaluationError(f"label images must be 2-D (H x W), got shape {pred.shape}")


def binary_iou(pred: np.ndarray, gt: np.ndarray) -> float | None:
    """IoU of two binary masks; None when both are empty."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    _check_pair(pred, gt, "masks")
    union = np.count_nonzero(pred | gt)
    return None if union == 0 else np.count_nonzero(pred & gt) / union


def boundary_iou(pred: np.ndarray, gt: np.ndarray, ratio: float = 0.02, width: int | None = None) -> float | None:
    """Boundary IoU of two binary masks (see module notes); None when both are empty."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    _check_pair(pred, gt, "masks")
    d = width if width is not None else boundary_width(gt.shape, ratio)
    bp, bg = mask_boundary(pred, d), mask_boundary(gt, d)
    union = np.count_nonzero(bp | bg)
    return None if union == 0 else np.count_nonzero(bp & bg) / union


# --------------------------------------------------------------------------------------
# label images
# --------------------------------------------------------------------------------------
def _as_label_image(a, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise EvaluationError(f"{what} must be an integer label image, got dtype {arr.dtype}")
    return arr


def _as_views(x, what: str) -> list[np.ndarray]:
    if isinstance(x, np.ndarray):
        if x.ndim == 2:
            return [_as_label_image(x, what)]
        if x.ndim == 3:
            return [_as_label_image(v, what) for v in x]
        raise EvaluationError(f"{what}: expected H x W or V x H x W, got shape {x.shape}")
    views = list(x)
    if views and all(np.isscalar(v) for v in views):
        raise EvaluationError(f"{what}: expected label images, got a flat list of numbers")
    return [_as_label_image(v, what) for v in views]


@dataclass
class _ViewStats:
    labels: np.ndarray  # sorted labels seen in this view (gt or pred, scored pixels)
    inter: np.ndarray
    union: np.ndarray
    gt_count: np.ndarray
    b_inter: dict[int, int] = field(default_factory=dict)
    b_union: dict[int, int] = field(default_factory=dict)
    correct: int = 0
    scored: int = 0


class SegmentationMetrics:
    """Accumulates IoU, accuracy and boundary IoU over views. See the module notes.

    ``update(pred, gt)`` adds one view (H x W integer label images, same shape; sizes may
    differ between views). ``compute()`` returns the scores.
    """

    def __init__(
        self,
        ignore_index: int | None = None,
        background: int | None = 0,
        include_background: bool = False,
        classes: Iterable[int] | None = None,
        boundary: bool = True,
        boundary_ratio: float = 0.02,
        boundary_width: int | None = None,
    ):
        self.ignore_index = ignore_index
        self.background = background
        self.include_background = include_background
        self.classes = None if classes is None else sorted({int(c) for c in classes})
        self.boundary = boundary
        self.boundary_ratio = float(boundary_ratio)
        self.fixed_width = boundary_width
        self._views: list[_ViewStats] = []

    def __len__(self) -> int:
        return len(self._views)

    def reset(self) -> None:
        self._views.clear()

    def _scored_class(self, c: int) -> bool:
        if self.classes is not None:
            return c in self.classes
        return self.include_background or self.background is None or c != self.background

    def update(self, pred, gt) -> None:
        pred = _as_label_image(pred, "prediction")
        gt = _as_label_image(gt, "ground truth")
        _check_pair(pred, gt)
        valid = None if self.ignore_index is None else gt != self.ignore_index
        g = gt if valid is None else gt[valid]
        p = pred if valid is None else pred[valid]
        g = g.ravel()
        p = p.ravel()
        labels = np.union1d(np.unique(g), np.unique(p)).astype(np.int64)
        gi = np.searchsorted(labels, g)
        pi = np.searchsorted(labels, p)
        same = gi == pi
        gt_count = np.bincount(gi, minlength=labels.size).astype(np.int64)
        pred_count = np.bincount(pi, minlength=labels.size).astype(np.int64)
        inter = np.bincount(gi[same], minlength=labels.size).astype(np.int64)
        stats = _ViewStats(
            labels=labels, inter=inter, union=gt_count + pred_count - inter, gt_count=gt_count,
            correct=int(np.count_nonzero(same)), scored=int(g.size),
        )
        if self.boundary:
            d = self.fixed_width if self.fixed_width is not None else boundary_width(gt.shape, self.boundary_ratio)
            for c in labels.tolist():
                if not self._scored_class(c):
                    continue
                bg_c = mask_boundary(gt == c, d)
                bp_c = mask_boundary(pred == c, d)
                if valid is not None:
                    bg_c &= valid
                    bp_c &= valid
                stats.b_inter[c] = int(np.count_nonzero(bg_c & bp_c))
                stats.b_union[c] = int(np.count_nonzero(bg_c | bp_c))
        self._views.append(stats)

    # --- results ---------------------------------------------------------------------
    def _evaluated(self, gt_present: Iterable[int], seen: Iterable[int]) -> list[int]:
        if self.classes is not None:
            seen = set(seen)
            return [c for c in self.classes if c in seen]
        return sorted(c for c in gt_present if self._scored_class(c))

    @staticmethod
    def _ratio(num: float, den: float) -> float | None:
        return None if den <= 0 else float(num) / float(den)

    @staticmethod
    def _mean(values: Iterable[float | None]) -> float | None:
        vals = [v for v in values if v is not None]
        return float(np.mean(vals)) if vals else None

    def compute(self, average: str = "dataset", class_names: Mapping[int, str] | None = None) -> dict:
        """Scores: ``miou``, ``accuracy``, ``mbiou`` (None when boundary is off), per-class
        ``iou`` / ``biou`` (class -> value), the evaluated ``classes``, ``views``, ``pixels``
        (scored), ``average``; with ``class_names``, ``names`` (class -> name)."""
        if average not in ("dataset", "view"):
            raise ValueError("average must be 'dataset' or 'view'")
        result: dict = {"average": average, "views": len(self._views),
                        "pixels": int(sum(v.scored for v in self._views))}
        if average == "dataset":
            inter: dict[int, int] = {}
            union: dict[int, int] = {}
            gtc: dict[int, int] = {}
            b_inter: dict[int, int] = {}
            b_union: dict[int, int] = {}
            for v in self._views:
                for c, i, u, n in zip(v.labels.tolist(), v.inter.tolist(), v.union.tolist(), v.gt_count.tolist()):
                    inter[c] = inter.get(c, 0) + i
                    union[c] = union.get(c, 0) + u
                    gtc[c] = gtc.get(c, 0) + n
                for c, i in v.b_inter.items():
                    b_inter[c] = b_inter.get(c, 0) + i
                    b_union[c] = b_union.get(c, 0) + v.b_union[c]
            classes = self._evaluated([c for c, n in gtc.items() if n > 0], [c for c, u in union.items() if u > 0])
            iou = {c: self._ratio(inter.get(c, 0), union.get(c, 0)) for c in classes}
            biou = {c: self._ratio(b_inter.get(c, 0), b_union.get(c, 0)) for c in classes} if self.boundary else {}
            result["accuracy"] = self._ratio(sum(v.correct for v in self._views), result["pixels"])
            result["miou"] = self._mean(iou.values())
            result["mbiou"] = self._mean(biou.values()) if self.boundary else None
        else:
            per_class: dict[int, list[float]] = {}
            per_class_b: dict[int, list[float]] = {}
            mious, mbious, accs = [], [], []
            for v in self._views:
                present = [c for c, n in zip(v.labels.tolist(), v.gt_count.tolist()) if n > 0]
                seen = [c for c, u in zip(v.labels.tolist(), v.union.tolist()) if u > 0]
                classes_v = self._evaluated(present, seen)
                lookup = {c: k for k, c in enumerate(v.labels.tolist())}
                ious = {c: self._ratio(v.inter[lookup[c]], v.union[lookup[c]]) for c in classes_v}
                for c, val in ious.items():
                    if val is not None:
                        per_class.setdefault(c, []).append(val)
                mious.append(self._mean(ious.values()))
                accs.append(self._ratio(v.correct, v.scored))
                if self.boundary:
                    bious = {c: self._ratio(v.b_inter.get(c, 0), v.b_union.get(c, 0)) for c in classes_v}
                    for c, val in bious.items():
                        if val is not None:
                            per_class_b.setdefault(c, []).append(val)
                    mbious.append(self._mean(bious.values()))
            classes = sorted(per_class)
            iou = {c: float(np.mean(per_class[c])) for c in classes}
            biou = {c: float(np.mean(per_class_b[c])) for c in sorted(per_class_b)} if self.boundary else {}
            result["accuracy"] = self._mean(accs)
            result["miou"] = self._mean(mious)
            result["mbiou"] = self._mean(mbious) if self.boundary else None
        result["iou"] = iou
        result["biou"] = biou
        result["classes"] = list(classes)
        if class_names is not None:
            result["names"] = {c: class_names.get(c, str(c)) for c in classes}
        return result


def evaluate_segmentation(
    preds,
    gts,
    *,
    ignore_index: int | None = None,
    background: int | None = 0,
    include_background: bool = False,
    classes: Iterable[int] | None = None,
    boundary: bool = True,
    boundary_ratio: float = 0.02,
    boundary_width: int | None = None,
    average: str = "dataset",
    class_names: Mapping[int, str] | None = None,
) -> dict:
    """Score predictions against ground truth: one H x W label image each, or sequences
    (or V x H x W arrays) of them, paired in order. Returns ``SegmentationMetrics.compute``."""
    pred_views = _as_views(preds, "prediction")
    gt_views = _as_views(gts, "ground truth")
    if len(pred_views) != len(gt_views):
        raise EvaluationError(f"{len(pred_views)} predicted views but {len(gt_views)} ground-truth views")
    if not gt_views:
        raise EvaluationError("no views to evaluate")
    metrics = SegmentationMetrics(
        ignore_index=ignore_index, background=background, include_background=include_background,
        classes=classes, boundary=boundary, boundary_ratio=boundary_ratio, boundary_width=boundary_width,
    )
    for k, (p, g) in enumerate(zip(pred_views, gt_views)):
        try:
            metrics.update(p, g)
        except EvaluationError as exc:
            raise EvaluationError(f"view {k}: {exc}") from None
    return metrics.compute(average=average, class_names=class_names)


def mean_iou(preds, gts, **kwargs) -> float | None:
    """mIoU over the evaluated classes (keywords as ``evaluate_segmentation``)."""
    return evaluate_segmentation(preds, gts, boundary=False, **kwargs)["miou"]


def pixel_accuracy(preds, gts, **kwargs) -> float | None:
    """Correct / scored pixels (keywords as ``evaluate_segmentation``)."""
    return evaluate_segmentation(preds, gts, boundary=False, **kwargs)["accuracy"]


def mean_boundary_iou(preds, gts, **kwargs) -> float | None:
    """mBIoU over the evaluated classes (keywords as ``evaluate_segmentation``)."""
    return evaluate_segmentation(preds, gts, boundary=True, **kwargs)["mbiou"]


# --------------------------------------------------------------------------------------
# prompts <-> ground-truth objects
# --------------------------------------------------------------------------------------
_BLENDER_SUFFIX = re.compile(r"\.\d{3,}$")
_ARTICLES = {"a", "an", "the"}


def normalize_name(name: str) -> str:
    """Lower case, Blender's ``.001`` suffix dropped, ``_ - .`` as spaces, leading article
    dropped, whitespace collapsed: ``"The Red_Mug.001"`` -> ``"red mug"``."""
    s = _BLENDER_SUFFIX.sub("", str(name).strip()).lower()
    s = re.sub(r"[_\-.]+", " ", s)
    words = s.split()
    if len(words) > 1 and words[0] in _ARTICLES:
        words = words[1:]
    return " ".join(words)


def match_prompts_to_objects(
    prompts: Sequence[str], objects: Mapping[int | str, str], partial: bool = False
) -> list[list[int]]:
    """For each prompt, the ground-truth object ids whose name matches it (normalised,
    see ``normalize_name``), sorted; several objects may share a name ("chair" -> both
    chairs), a prompt may match none. ``objects`` is ``labels/objects.json`` (id -> name;
    ids may be strings). With ``partial``, a prompt with no exact match takes the objects
    whose name contains it as whole words ("mug" -> "red mug")."""
    objs = {int(k): normalize_name(v) for k, v in objects.items()}
    out: list[list[int]] = []
    for prompt in prompts:
        key = normalize_name(prompt)
        ids = sorted(i for i, n in objs.items() if n == key)
        if not ids and partial and key:
            pat = re.compile(r"(^| )" + re.escape(key) + r"( |$)")
            ids = sorted(i for i, n in objs.items() if pat.search(n))
        out.append(ids)
    return out


def gt_to_prompt_classes(
    gt: np.ndarray, matches: Sequence[Sequence[int]], background: int = 0, unmatched: int = 0
) -> np.ndarray:
    """Ground-truth object ids -> prompt classes: ids matched to prompt k become k + 1,
    ``background`` stays 0, ids no prompt asked about become ``unmatched`` (0: they are
    background for this evaluation; or an ignore value to leave them out). An id matched
    by several prompts goes to the first."""
    gt = _as_label_image(gt, "ground truth")
    mapping: dict[int, int] = {}
    for k, ids in enumerate(matches):
        for i in ids:
            mapping.setdefault(int(i), k + 1)
    out = np.full(gt.shape, unmatched, dtype=np.int64)
    out[gt == background] = 0
    for i, cls in mapping.items():
        out[gt == i] = cls
    return out


def prompt_labels_to_classes(pred: np.ndarray, background: int = -1) -> np.ndarray:
    """Per-pixel prompt indices (``background`` = none) -> classes: prompt k -> k + 1,
    background -> 0."""
    pred = _as_label_image(pred, "prediction").astype(np.int64)
    out = pred + 1
    out[pred == background] = 0
    return out


# --------------------------------------------------------------------------------------
# colour on held-out views: PSNR and floaters
# --------------------------------------------------------------------------------------
FLOATER_ERROR = 0.2  # colour error (max over channels, 0..1) that marks a pixel as wrong


def floater_share(render: np.ndarray, target: np.ndarray, threshold: float = FLOATER_ERROR) -> float:
    """The largest connected region of wrong colour, as a fraction of the view.

    A pixel is wrong where the rendered colour differs from the photo by more than
    ``threshold`` in some channel. A 3x3 opening first removes regions one or two pixels
    thin (edges off by a pixel, aliasing), so what remains are blobs: a floater painted in
    front of the scene, or a hole where the background or an object should be. The share is
    the largest 8-connected blob's pixel count over the view's. Works on photos as well as
    renders (no depth or mask needed).
    """
    render = np.asarray(render, dtype=np.float32)
    target = np.asarray(target, dtype=np.float32)
    if render.shape != target.shape:
        raise EvaluationError(f"render and photo differ in shape: {render.shape} vs {target.shape}")
    wrong = np.abs(render - target).max(axis=-1) > threshold
    wrong = ndimage.binary_opening(wrong, structure=np.ones((3, 3), bool))
    labels, count = ndimage.label(wrong, structure=np.ones((3, 3), bool))
    if count == 0:
        return 0.0
    return float(np.bincount(labels.ravel())[1:].max() / wrong.size)


def colour_metrics(gaussians, scene, indices, downscale: float = 1.0, background=(0.0, 0.0, 0.0),
                   sh_degree: int | None = None, renderer: str = "auto", device: str = "cpu",
                   max_side: int = 0) -> dict:
    """Colour PSNR of the given views and their floater shares (see ``floater_share``), each
    view at the fit's size for it (``scene.cameras.view_downscale``).

    Returns ``psnr`` (mean over views), ``psnr_min``, ``floater_share_max`` (the worst view's
    largest wrong region), ``floater_share_mean`` and per-view lists; Nones without views.
    """
    import torch

    from .scene.cameras import view_downscale
    from .splats.losses import psnr
    from .splats.render import RenderCamera, render

    indices = list(indices)
    if not indices:
        return {"psnr": None, "psnr_min": None, "floater_share_max": None, "floater_share_mean": None,
                "views": 0, "psnr_per_view": [], "floater_share_per_view": []}
    bg = torch.as_tensor(background, dtype=torch.float32, device=device)
    values, shares = [], []
    with torch.no_grad():
        g = {k: v.detach().to(device) for k, v in gaussians.activated().items()}
        for i in indices:
            scale = view_downscale(scene.cameras[i], downscale, max_side)
            cam = RenderCamera.from_camera(scene.camera(i, scale), device)
            target = torch.as_tensor(scene.load_image(i, scale), device=device)
            color = render(g, cam, sh_degree=sh_degree, background=bg, backend=renderer)["color"].clamp(0, 1)
            values.append(psnr(color, target))
            shares.append(floater_share(color.cpu().numpy(), target.cpu().numpy()))
    return {"psnr": float(np.mean(values)), "psnr_min": float(np.min(values)),
            "floater_share_max": float(np.max(shares)), "floater_share_mean": float(np.mean(shares)),
            "views": len(indices), "psnr_per_view": [round(v, 2) for v in values],
            "floater_share_per_view": [round(v, 4) for v in shares]}


def fit_background(run_info: dict) -> tuple[float, float, float]:
    """The background the colour fit rendered over (learned, or the scene's), from run.json."""
    fit = (run_info.get("stages") or {}).get("fit") or {}
    bg = fit.get("background") or (fit.get("settings") or {}).get("background") or (0.0, 0.0, 0.0)
    return tuple(float(c) for c in bg)


# --------------------------------------------------------------------------------------
# a trained run against ground-truth label images
# --------------------------------------------------------------------------------------
LABEL_MODES = ("features", "gaussians")


def render_gaussian_labels(seg, camera, all_scores: np.ndarray, min_alpha: float = 0.5) -> np.ndarray:
    """A view's prompt labels rendered from the 3D answer: each pixel blends the prompt
    scores of the Gaussians it is made of (``all_scores``, N x P, as ``Segmenter.segment``
    gives them) with their compositing weights, and takes the best prompt if it passes the
    mask threshold (-1 otherwise, and where the Gaussians cover less than ``min_alpha``).

    ``Segmenter.render_labels`` instead blends the 16-d features and decodes the blend;
    near an edge that blend can decode to a third query. This one shows what a user gets
    in 3D, seen from the camera.
    """
    import torch

    from .splats.render import RenderCamera, compositing_weights

    n_pix = camera.width * camera.height
    p = all_scores.shape[1]
    if p == 0:
        return np.full((camera.height, camera.width), -1, np.int32)
    g = {k: v.detach() for k, v in seg.gaussians.activated().items()}
    pixel, gauss, weight = compositing_weights(g, RenderCamera.from_camera(camera))
    scores = torch.as_tensor(all_scores, dtype=torch.float32)
    blended = torch.zeros(n_pix, p).index_add_(0, pixel, weight[:, None] * scores[gauss])
    alpha = torch.zeros(n_pix).index_add_(0, pixel, weight)
    blended = blended / alpha.clamp_min(1e-6)[:, None]
    best, label = blended.max(1)
    ok = (best >= seg.settings.mask_threshold) & (alpha >= min_alpha)
    return torch.where(ok, label, torch.full_like(label, -1)).numpy().astype(np.int32).reshape(camera.height,
                                                                                               camera.width)


def evaluate_run(seg, labels_dir, prompts=None, views: str = "test", reporter=None, colour: bool = True,
                 label_mode: str = "features", scene=None) -> dict:
    """Render each prompt's 2D masks for the chosen views and score them against the
    instance-label images (``labels/<image>.png`` + ``objects.json``).

    With ``colour``, the same views' colour is scored too (``colour_metrics``: PSNR and the
    largest floater share, at the fit's downscale, over the fit's background), so that a
    segmentation error can be told apart from a geometry error.

    ``label_mode``: how a view's labels are rendered, ``features`` (the blended mask
    features, decoded per pixel: ``Segmenter.render_labels``) or ``gaussians`` (the 3D
    answer's per-Gaussian scores, blended: ``render_gaussian_labels``).

    Also scores the answer in 3D: every Gaussian seen in these views gets the ground-truth
    object it is most blended into; ``gaussian_accuracy`` is the fraction of those visible
    Gaussians that the segmentation gives their own object (background ones excluded).
    """
    import json
    import time
    from pathlib import Path

    from .events import MaskFieldError, Reporter
    from .priors.from_labels import load_object_names
    from .scene import load_scene

    reporter = reporter or Reporter("none")
    labels_dir = Path(labels_dir)
    objects = load_object_names(labels_dir)
    if not objects:
        raise MaskFieldError(f"{labels_dir / 'objects.json'} is missing or empty; it maps label ids to names.")
    prompts = list(prompts) if prompts else [objects[k] for k in sorted(objects)]
    matches_gt = match_prompts_to_objects(prompts, objects)
    info = seg.run.read()
    if scene is None:  # the scene run.json names (the command passes it, checked, with --scene)
        scene = load_scene(info["scene"], skip_missing=True, images=info.get("image_folder"))
    if views == "test":
        indices = list(scene.test_indices)
    elif views == "train":
        indices = list(scene.train_indices)
    else:
        indices = list(range(len(scene)))
    if not indices:
        raise MaskFieldError("the scene has no held-out views; use --views train or all.")
    t0 = time.perf_counter()
    if label_mode not in LABEL_MODES:
        raise MaskFieldError(f"unknown label mode {label_mode!r}; use one of {', '.join(LABEL_MODES)}.")
    matches, label_g, _, all_scores = seg.segment(prompts)
    metrics = SegmentationMetrics(background=0)
    g = {k: v.detach() for k, v in seg.gaussians.activated().items()}
    n_obj = max(objects) + 1
    votes = np.zeros((len(seg.gaussians), n_obj), dtype=np.float64)
    scored = 0
    for cam, gt in labelled_views(scene, reporter.track(indices, "evaluate", desc="evaluating views"), labels_dir):
        if label_mode == "gaussians":
            pred = render_gaussian_labels(seg, cam, all_scores)
        else:
            pred, _ = seg.render_labels(cam, matches)
        metrics.update(prompt_labels_to_classes(pred), gt_to_prompt_classes(gt, matches_gt))
        add_object_votes(votes, g, cam, gt)
        scored += 1
    if scored == 0:
        raise MaskFieldError(f"no label image in {labels_dir} matches the evaluated views.")
    result = metrics.compute(class_names={k + 1: p for k, p in enumerate(prompts)})
    if colour:
        fit = (info.get("stages") or {}).get("fit") or {}
        fitted = fit.get("settings") or {}
        result["colour"] = colour_metrics(seg.gaussians, scene, indices, float(fitted.get("downscale") or 1.0),
                                          fit_background(info), max_side=int(fitted.get("max_side") or 0))
        result["psnr"] = result["colour"]["psnr"]
        result["floater_share_max"] = result["colour"]["floater_share_max"]
    accuracy, considered = gaussian_accuracy(label_g, votes, matches_gt)
    bg_labelled, bg_count = background_gaussians_labelled(label_g, votes)
    result.update({
        "background_gaussians_labelled": bg_labelled,
        "visible_background_gaussians": bg_count,
        "prompts": prompts,
        "views": scored,
        "view_set": views,
        "label_mode": label_mode,
        "gaussian_accuracy": accuracy,
        "visible_object_gaussians": considered,
        "found": [bool(m.found) for m in matches],
        "seconds": round(time.perf_counter() - t0, 2),
    })
    return json.loads(json.dumps(result, default=float))


def add_object_votes(votes: np.ndarray, g: dict, camera, gt: np.ndarray) -> None:
    """Add one view's blending weights to votes[gaussian, ground-truth object]."""
    from .splats.render import RenderCamera, compositing_weights

    pixel, gauss, weight = compositing_weights(g, RenderCamera.from_camera(camera))
    gt_flat = gt.reshape(-1).astype(np.int64)
    np.add.at(votes, (gauss.numpy(), np.clip(gt_flat[pixel.numpy()], 0, votes.shape[1] - 1)), weight.numpy())


def gaussian_accuracy(label_g: np.ndarray, votes: np.ndarray, matches_gt) -> tuple[float, int]:
    """Fraction of visible Gaussians on an object that carry that object's prompt.

    A Gaussian is visible when it is blended with total weight >= 0.05 in the views that
    voted, and its object is the one it is most blended into (background ones excluded).
    """
    visible = votes.sum(1) >= 0.05
    gt_object = votes.argmax(1)
    prompt_of_object = {}
    for k, ids in enumerate(matches_gt):
        for oid in ids:
            prompt_of_object.setdefault(oid, k)
    expected = np.array([prompt_of_object.get(int(o), -1) for o in gt_object])
    considered = visible & (gt_object > 0) & (expected >= 0)
    correct = considered & (label_g == expected)
    return float(correct.sum() / max(1, considered.sum())), int(considered.sum())


def background_gaussians_labelled(label_g: np.ndarray, votes: np.ndarray,
                                  share: float = 0.9) -> tuple[float | None, int]:
    """Fraction of the visible Gaussians that paint only background (at least ``share`` of
    their blending weight on ground-truth id 0: the world, floaters over it) which a prompt
    took anyway: such Gaussians belong to no object and must stay out of every segment.
    Gaussians on an object's silhouette, half over the background, are not counted."""
    total = votes.sum(1)
    visible = total >= 0.05
    background = visible & (votes[:, 0] >= share * total)
    count = int(background.sum())
    return (float((label_g[background] >= 0).sum() / count) if count else None), count


def prior_mask_iou(priors_dir, labels_dir) -> dict:
    """How good the field's teachers are: for each object in each labelled view's ground truth,
    the best IoU of any of that view's prior masks (the oracle choice among SAM's proposals;
    0 where no mask touches it), averaged per object over the views that show it, and the
    mean of those (``miou``). Set beside the field's IoU, it tells a field that falls short of
    its masks from masks that fall short (a 2-pixel jitter on a 5-pixel mug).

    ``priors_dir``: RUN/priors (one ``<image>.npz`` per view); ``labels_dir``: the scene's
    labels/ (instance-id images and objects.json). Views without a label image are skipped."""
    from pathlib import Path

    from .priors.from_labels import find_label_file, load_object_names, read_label_map
    from .priors.store import load_priors
    from .scene.images import resize_labels

    names = load_object_names(labels_dir)
    per_object: dict[int, list[float]] = {}
    views = 0
    for path in sorted(Path(priors_dir).glob("*.npz")):
        label_file = find_label_file(labels_dir, path.stem)
        if label_file is None:
            continue
        priors = load_priors(path)
        masks = np.asarray(priors.masks, dtype=bool)
        height, width = masks.shape[1:]  # (M, H, W), M may be 0
        gt = resize_labels(read_label_map(label_file), width, height).reshape(-1)
        flat = masks.reshape(len(masks), height * width).astype(np.float32)
        area = flat.sum(1)
        views += 1
        for oid in np.unique(gt):
            if oid == 0:
                continue
            obj = (gt == oid).astype(np.float32)
            inter = flat @ obj
            iou = inter / np.maximum(area + obj.sum() - inter, 1.0)
            per_object.setdefault(int(oid), []).append(float(iou.max()) if len(iou) else 0.0)
    iou = {oid: float(np.mean(v)) for oid, v in sorted(per_object.items())}
    return {"iou": iou, "names": {oid: names.get(oid, f"object {oid}") for oid in iou},
            "miou": float(np.mean(list(iou.values()))) if iou else None, "views": views}


def object_votes(gaussians, scene, indices, labels_dir) -> np.ndarray:
    """votes[gaussian, object] summed over the given views' label images (see gaussian_accuracy)."""
    from .priors.from_labels import load_object_names

    objects = load_object_names(labels_dir)
    g = {k: v.detach() for k, v in gaussians.activated().items()}
    votes = np.zeros((len(gaussians), max(objects) + 1), dtype=np.float64)
    for cam, gt in labelled_views(scene, indices, labels_dir):
        add_object_votes(votes, g, cam, gt)
    return votes


def labelled_views(scene, indices, labels_dir):
    """(camera, label image at the camera's size) for each view that has a label image."""
    from pathlib import Path

    from .priors.from_labels import find_label_file, read_label_map
    from .scene.images import to_view

    for i in indices:
        path = find_label_file(Path(labels_dir), scene.cameras[i].name)
        if path is not None:  # a label image is drawn through the lens as its photo is: undistorted alike
            yield scene.camera(i), to_view(read_label_map(path), scene.cameras[i], labels=True)
