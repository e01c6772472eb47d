"""Training views for the mask field: frozen compositing weights and low-resolution targets."""
from __future__ import annotations

from dataclasses import dataclass, field
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
    # per visible Gaussian: its blending-weighted share of each mask (see gaussian_shares)
    gaussian_index: torch.Tensor | None = None  # (V,) Gaussians seen at supervised pixels
    gaussian_share: torch.Tensor | None = None  # (V, M) sum_p w_pg t_mp
    gaussian_weight: torch.Tensor | None = None  # (V,) sum_p w_pg
    # per mask: SAM granularity (0 small, 1 medium, 2 large, -1 unknown) and its share of the
    # image's area, recorded per query when it is matched (segment.py's granularity choice)
    granularity: torch.Tensor | None = None  # (M,) int8
    mask_area: torch.Tensor | None = None  # (M,) float, fraction of the view's pixels
    # per mask: the weight of each supervised pixel in the matched losses (set_edge_weight;
    # half precision: it takes two values); None weighs every pixel alike
    mask_pixel_weights: torch.Tensor | None = None  # (M, supervised pixels)
    gaussian_mask_weight: torch.Tensor | None = None  # (V, M) sum_p w_pg weight_mp, with the above
    _supervised_weights: tuple | None = field(default=None, repr=False)
    _supervised_targets: torch.Tensor | None = field(default=None, repr=False)
    _cores: tuple[int, torch.Tensor] | None = field(default=None, repr=False)  # (inset, cores)
    # (Gaussians seen, their weight over all pixels, over supervised ones), kept by compact()
    _totals: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def supervised_targets(self) -> torch.Tensor:
        """(M, supervised pixels) targets, selected once."""
        if self._supervised_targets is None:
            self._supervised_targets = self.targets[:, self.supervised].contiguous()
        return self._supervised_targets

    def supervised_cores(self, inset: int) -> torch.Tensor:
        """(M, supervised pixels) bool: each mask eroded by ``inset`` pixels (a 3x3 cross each;
        the image's border does not erode), the pixels SAM's jitter of a pixel or two at its
        edge leaves inside it. Built once per inset."""
        if self._cores is None or self._cores[0] != inset:
            from scipy import ndimage

            masks = (self.targets > 0.5).cpu().numpy().reshape(-1, self.height, self.width)
            if inset > 0:
                cross = ndimage.generate_binary_structure(2, 1)
                masks = np.stack([ndimage.binary_erosion(m, cross, iterations=inset, border_value=1) for m in masks])
            cores = torch.as_tensor(masks.reshape(len(masks), -1), device=self.targets.device)
            self._cores = (inset, cores[:, self.supervised].contiguous())
        return self._cores[1]

    def supervised_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights' rows at supervised pixels as CSR, and their transpose (for the backward)."""
        if self._supervised_weights is None:
            build = _supervised_csr_cpu if self.weights.device.type == "cpu" else _supervised_csr_torch
            self._supervised_weights = build(self.weights, self.supervised)
        return self._supervised_weights

    def weight_totals(self, num_gaussians: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each Gaussian's blending weight summed over all of this view's pixels, and over its
        supervised pixels only (N,) each."""
        if self._totals is not None:
            index, total, supervised = self._totals
            return (torch.zeros(num_gaussians).index_put_((index,), total),
                    torch.zeros(num_gaussians).index_put_((index,), supervised))
        return _column_sums(self.weights, num_gaussians), _column_sums(self.supervised_weights()[0], num_gaussians)

    def compact(self) -> "FieldView":
        """Keep what training reads and drop the rest: the supervised rows of the weights and
        their transpose are built now, each Gaussian's weight totals kept, and the matrix over
        all pixels let go (a third of a view's memory: docs/measurements.md, "Memory")."""
        if self.weights is None:
            return self
        self.supervised_weights()
        total, supervised = self.weight_totals(self.weights.shape[1])
        index = torch.nonzero(total > 0).squeeze(1)
        self._totals = (index, total[index], supervised[index])
        self.weights = None
        return self

    def nbytes(self) -> int:
        """The bytes this view holds in tensors (weights, targets, embeddings, shares)."""
        held = [self.alpha, self.targets, self.embeddings, self.supervised, self._supervised_targets,
                self.gaussian_index, self.gaussian_share, self.gaussian_weight, self.mask_pixel_weights,
                self.gaussian_mask_weight, *(self._totals or ()), *(self._cores or (None, None))[1:]]
        matrices = [self.weights, *(self._supervised_weights or ())]
        return sum(_tensor_bytes(t) for t in held) + sum(_csr_bytes(m) for m in matrices)

    def blend(self, features: torch.Tensor) -> torch.Tensor:
        """Per-Gaussian features (N, C) -> composited features at the supervised pixels (P, C)."""
        w, wt = self.supervised_weights()
        return _FrozenBlend.apply(features, w, wt)

    def set_edge_weight(self, weight: float) -> None:
        """Weigh each mask's pixels by ``edge_band_weights`` (1: every pixel alike)."""
        if weight >= 1.0:
            if self.mask_pixel_weights is None:
                return  # the default, unchanged: the Gaussian shares already computed still hold
            self.mask_pixel_weights = None
        else:
            masks = (self.targets > 0.5).cpu().numpy().reshape(-1, self.height, self.width)
            weights = edge_band_weights(masks, weight).reshape(len(masks), -1)
            weights = torch.as_tensor(weights, dtype=torch.float16, device=self.targets.device)
            self.mask_pixel_weights = weights[:, self.supervised].contiguous()
        self.gaussian_index = self.gaussian_share = self.gaussian_weight = self.gaussian_mask_weight = None

    def with_gaussian_shares(self) -> "FieldView":
        if self.gaussian_index is None:
            weights_t = self.supervised_weights()[1]
            targets, pixel_weights = self.supervised_targets(), self.mask_pixel_weights
            if pixel_weights is not None:
                pixel_weights = pixel_weights.to(targets.dtype)
                targets = targets * pixel_weights
            self.gaussian_index, self.gaussian_share, self.gaussian_weight = gaussian_shares(weights_t, targets)
            if pixel_weights is not None:
                mask_weight = torch.sparse.mm(weights_t, pixel_weights.T.contiguous())
                self.gaussian_mask_weight = mask_weight[self.gaussian_index]
        return self


def _column_sums(csr: torch.Tensor, num_gaussians: int) -> torch.Tensor:
    return torch.zeros(num_gaussians).index_add_(0, csr.col_indices().cpu().long(), csr.values().float().cpu())


def _tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def _csr_bytes(m: torch.Tensor | None) -> int:
    if m is None:
        return 0
    if m.layout == torch.sparse_csr:
        return sum(_tensor_bytes(t) for t in (m.crow_indices(), m.col_indices(), m.values()))
    return _tensor_bytes(m)


def edge_band_weights(masks: np.ndarray, weight: float) -> np.ndarray:
    """Per mask (M, H, W bool) and pixel, the weight of its supervision (float32, same shape):
    ``weight`` in the band one pixel wide on each side of the edge of the mask's thick parts,
    1 elsewhere.

    SAM's masks put an object's edge a pixel or so either way from view to view, and the masks
    of small things that survive are wider than the things (docs/measurements.md): the field
    should lean on the pixels whose side is sure. Parts thinner than 3 pixels (a lamp's stem, a
    chair's legs), those an opening with a 3-pixel cross removes, keep full weight on and
    beside them: the band would be all there is of them.
    """
    from scipy import ndimage

    cross = ndimage.generate_binary_structure(2, 1)
    out = np.ones(masks.shape, np.float32)
    for mask, weights in zip(masks, out):
        thick = ndimage.binary_opening(mask, cross)
        inner_edge = thick & ~ndimage.binary_erosion(mask, cross, border_value=1)
        outer_edge = ndimage.binary_dilation(thick, cross) & ~mask
        weights[inner_edge | outer_edge] = weight
    return out


def _supervised_csr_cpu(weights: torch.Tensor, supervised: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``FieldView.supervised_weights`` on the CPU, by counting sorts (``sparse_cpu``)."""
    from .sparse_cpu import csr_keep_rows, csr_transpose

    arrays = (weights.crow_indices().numpy(), weights.col_indices().numpy(), weights.values().numpy())
    crow, col, val = csr_keep_rows(*arrays, supervised.numpy())
    shape = (len(crow) - 1, weights.shape[1])
    crow_t, col_t, val_t = csr_transpose(crow, col, val, shape[1])
    return _checked_csr(crow, col, val, shape), _checked_csr(crow_t, col_t, val_t, shape[::-1])


def _checked_csr(crow: np.ndarray, col: np.ndarray, val: np.ndarray, shape) -> torch.Tensor:
    """A CSR tensor from our own arrays, PyTorch's invariants checked (rows in order, columns
    sorted and distinct within a row): a few ms a view, against a wrong product later. Indices
    are 32-bit where they fit (``index_dtype``): a third less memory, the same products."""
    dtype = index_dtype(len(col), shape)
    return torch.sparse_csr_tensor(torch.from_numpy(crow.astype(dtype, copy=False)),
                                   torch.from_numpy(col.astype(dtype, copy=False)), torch.from_numpy(val), shape,
                                   check_invariants=True)


def index_dtype(nnz: int, shape) -> type:
    """int32 for a CSR matrix whose entries and columns all fit in it (PyTorch's sparse products
    take either), else int64."""
    return np.int32 if max(nnz, *shape) < 2**31 - 1 else np.int64


def _supervised_csr_torch(weights: torch.Tensor, supervised: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The same through PyTorch's COO tensors, on any device (the reference)."""
    coo = weights.to_sparse_coo().coalesce()
    pixel, gaussian = coo.indices()
    keep = supervised[pixel]
    row = (torch.cumsum(supervised.long(), 0) - 1)[pixel[keep]]
    gaussian, values = gaussian[keep], coo.values()[keep]
    shape = (int(supervised.sum()), weights.shape[1])
    return _pairs_csr_torch(row, gaussian, values, shape), _pairs_csr_torch(gaussian, row, values, shape[::-1])


class _FrozenBlend(torch.autograd.Function):
    """W @ f with the backward W^T @ grad from a transpose kept in CSR: autograd's own
    backward of a CSR product transposes W on every step, which costs 40x the product."""

    @staticmethod
    def forward(ctx, features, w, wt):
        ctx.wt = wt
        return torch.sparse.mm(w, features)

    @staticmethod
    def backward(ctx, grad):
        return torch.sparse.mm(ctx.wt, grad.contiguous()), None, None


def supervised_share(views: list[FieldView], num_gaussians: int) -> torch.Tensor:
    """Per Gaussian, the share of its blending weight (over all training views) that falls on
    supervised pixels, those the priors' masks speak for; -1 for a Gaussian no view shows.

    A Gaussian that paints mostly unsupervised pixels (the thin veil over a backdrop the
    Gaussians barely cover) gets almost no teaching from the masks, so its features say
    nothing: segmentation leaves such Gaussians out (``SegmentSettings.min_supervised_share``)."""
    total = torch.zeros(num_gaussians)
    supervised = torch.zeros(num_gaussians)
    for view in views:
        t, s = view.weight_totals(num_gaussians)
        total += t
        supervised += s
    return torch.where(total > 0, supervised / total.clamp_min(1e-12), torch.full_like(total, -1.0))


def gaussian_shares(weights_t: torch.Tensor, targets: torch.Tensor):
    """What each Gaussian is shown of each mask: with frozen weights these are constants.

    ``weights_t``: the (Gaussians x supervised pixels) transposed blending weights (CSR);
    ``targets``: (M, supervised pixels). For Gaussian g and mask m, share = sum_p w_pg t_mp,
    and weight = sum_p w_pg; share / weight is the mask's coverage of the pixels g paints.
    Returned for the Gaussians that paint some supervised pixel only.
    """
    index = torch.nonzero(weights_t.crow_indices().diff()).squeeze(1)
    share = torch.sparse.mm(weights_t, targets.T.contiguous())[index]
    weight = torch.sparse.mm(weights_t, torch.ones(targets.shape[1], 1, dtype=targets.dtype,
                                                   device=targets.device))[index, 0]
    return index, share, weight


def supervision_camera(camera, long_side: int):
    """The camera scaled so that its long side has ``long_side`` pixels."""
    scale = max(camera.width, camera.height) / float(long_side)
    return camera.scaled(max(scale, 1.0))


def weights_matrix(g: dict[str, torch.Tensor], camera, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse (pixels x Gaussians) blending weights of one view, and the accumulated alpha."""
    return blend_matrix(g, RenderCamera.from_camera(camera, device))


def blend_matrix(g: dict[str, torch.Tensor], camera: RenderCamera) -> tuple[torch.Tensor, torch.Tensor]:
    """The same for a render camera: the CSR weights and the accumulated alpha per pixel."""
    pixel, gaussian, weight = compositing_weights(g, camera)
    n_pix = camera.width * camera.height
    shape = (n_pix, g["means"].shape[0])
    alpha = torch.zeros(n_pix, device=weight.device).index_add_(0, pixel, weight)
    build = _pairs_csr_cpu if weight.device.type == "cpu" else _pairs_csr_torch
    return build(pixel, gaussian, weight, shape), alpha


def _pairs_csr_cpu(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """A CSR matrix from unique (row, col, value) pairs, by counting sort (``sparse_cpu``)."""
    from .sparse_cpu import csr_from_pairs

    return _checked_csr(*csr_from_pairs(rows.numpy(), cols.numpy(), values.numpy(), shape[0]), shape)


def _pairs_csr_torch(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    """The same through PyTorch's COO tensors, on any device (the reference)."""
    csr = torch.sparse_coo_tensor(torch.stack([rows.long(), cols.long()]), values, shape).coalesce().to_sparse_csr()
    dtype = torch.int32 if index_dtype(csr.values().numel(), shape) == np.int32 else torch.int64
    return torch.sparse_csr_tensor(csr.crow_indices().to(dtype), csr.col_indices().to(dtype), csr.values(), shape)


def area_resize_masks(masks: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boolean masks (M, H, W) -> coverage fractions (M, height, width) by area averaging."""
    from PIL import Image

    out = np.empty((len(masks), height, width), dtype=np.float32)
    for i, mask in enumerate(masks):
        img = Image.fromarray(mask.astype(np.float32))
        out[i] = np.asarray(img.resize((width, height), Image.Resampling.BOX), dtype=np.float32)
    return np.clip(out, 0.0, 1.0)


MIN_FIELD_VIEWS = 8  # a memory budget never leaves the field fewer training views than this


def frame_share(scene, gaussians, indices, sample: int = 20_000, seed: int = 0) -> float:
    """The median, over the Gaussians (a random ``sample`` of them), of the share of the views
    ``indices`` whose frame holds the Gaussian's centre (in front of the camera, inside the
    image; occlusion ignored). About 1 for an orbit or a ring, where every view shows the whole
    scene; well under a half for a room filmed from its middle, where each object is in a few."""
    means = gaussians.params["means"].detach().cpu().numpy().astype(np.float64)
    if len(means) > sample:
        means = means[np.random.default_rng(seed).choice(len(means), sample, replace=False)]
    if not len(means) or not len(indices):
        return 1.0
    seen = sum(scene.cameras[i].frames(means).astype(np.float64) for i in indices)
    return float(np.median(seen / len(indices)))


def build_views(scene, gaussians, priors: dict, indices, long_side: int, device,
                reporter: Reporter | None = None, memory_bytes: float | None = None) -> list[FieldView]:
    """The training views of the mask field (``compact``: what training reads, nothing more).

    ``memory_bytes``: what the views may hold in all (``None``: ``view_memory_budget``, half of
    the memory free on the device; 0: no limit). Each view keeps its blending weights for the
    whole training, so a large capture (hundreds of photos, millions of Gaussians) would not fit:
    when the first view's size times the number of views passes the budget, an evenly spread
    subset of the views is used, and the log says how many and why. Each step trains on one
    view, so with hundreds of views each is seen only a few times in the 1,500 (CPU) to 5,000
    (GPU) steps. What a subset costs, measured on the 48-view kitchen (held-out mIoU, one field):
    0.8894 with all 48 views, 0.8843 with 19, 0.8284 with 9 (docs/measurements.md, "Memory").
    """
    reporter = reporter or Reporter("none")
    g = {k: v.detach().to(device) for k, v in gaussians.activated().items()}
    candidates = [i for i in indices if scene.cameras[i].name in priors]
    budget = view_memory_budget(device) if memory_bytes is None else float(memory_bytes)
    built: dict[int, FieldView | None] = {}
    if budget > 0 and len(candidates) > MIN_FIELD_VIEWS:
        for i in candidates:  # the first view that has masks sizes them all
            built[i] = _build_view(scene, g, priors[scene.cameras[i].name], i, long_side, device, reporter)
            if built[i] is not None:
                candidates = _within_budget(candidates, built[i].with_gaussian_shares().nbytes(), budget, reporter)
                break
    views = []
    for i in reporter.track(candidates, "field_views", desc="preparing views"):
        view = built[i] if i in built else _build_view(scene, g, priors[scene.cameras[i].name], i, long_side,
                                                       device, reporter)
        if view is not None:
            views.append(view)
    if not views:
        raise MaskFieldError("no training view has usable priors (masks) for the mask field; check RUN/priors "
                             "(run `maskfield priors`), or the image names in the priors files.", kind="missing_stage")
    return views


def _within_budget(candidates: list[int], view_bytes: int, budget: float, reporter: Reporter) -> list[int]:
    """``candidates``, or an evenly spread subset of them whose views fit in ``budget`` bytes."""
    fits = max(MIN_FIELD_VIEWS, int(budget // max(view_bytes, 1)))
    if fits >= len(candidates):
        return candidates
    keep = np.unique(np.linspace(0, len(candidates) - 1, fits).round().astype(np.int64))
    reporter.log(f"the mask field trains on {len(keep)} of the {len(candidates)} training views, spread evenly: "
                 f"each view holds about {view_bytes / 2**20:.0f} MB of blending weights and masks, and all of "
                 f"them would need {view_bytes * len(candidates) / 2**30:.1f} GB, over the "
                 f"{budget / 2**30:.2f} GB allowed (--field-memory-gb; by default half the memory free).",
                 level="warning")
    return [candidates[k] for k in keep]


def view_memory_budget(device) -> float:
    """Half of the memory free for the views on ``device`` (bytes); 0 where it cannot be read."""
    if str(device).startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return 0.5 * free
    available = _available_ram()
    return 0.5 * available if available else 0.0


def _available_ram() -> float | None:
    """The memory available to a new allocation: Linux's MemAvailable, else the physical total."""
    import os

    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # macOS and other Unixes
        return float(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        pass
    try:  # Windows
        import ctypes

        class MemoryStatus(ctypes.Structure):
            _fields_ = [("length", ctypes.c_ulong), ("load", ctypes.c_ulong), ("total", ctypes.c_ulonglong),
                        ("available", ctypes.c_ulonglong), ("page_total", ctypes.c_ulonglong),
                        ("page_available", ctypes.c_ulonglong), ("virtual_total", ctypes.c_ulonglong),
                        ("virtual_available", ctypes.c_ulonglong), ("extended", ctypes.c_ulonglong)]

        status = MemoryStatus()
        status.length = ctypes.sizeof(MemoryStatus)
        if ctypes.windll.kernel32.GlobalMemoryStatusEx(ctypes.byref(status)):  # type: ignore[attr-defined]
            return float(status.available)
    except (AttributeError, OSError):
        pass
    return None


def _build_view(scene, g: dict, prior, i: int, long_side: int, device, reporter: Reporter) -> FieldView | None:
    """One training view, compacted; None where it teaches nothing (no masks, none covered)."""
    name = scene.cameras[i].name
    cam = supervision_camera(scene.camera(i), long_side)
    masks = prior.masks
    if len(masks) == 0:
        return None
    W, alpha = weights_matrix(g, cam, device)
    targets = area_resize_masks(masks, cam.width, cam.height).reshape(len(masks), -1)
    keep = targets.sum(1) >= 1.0  # masks smaller than a pixel at this resolution teach nothing
    if not keep.any():
        return None
    if not bool((alpha > 0.5).any()):  # the Gaussians cover none of it: nothing to supervise
        reporter.log(f"view {name}: the Gaussians cover none of its pixels; it is left out of the mask field",
                     level="warning")
        return None
    return FieldView(
        name=name, weights=W, alpha=alpha,
        targets=torch.as_tensor(targets[keep], device=device),
        embeddings=torch.as_tensor(np.asarray(prior.embeddings)[keep], dtype=torch.float32, device=device),
        supervised=alpha > 0.5, width=cam.width, height=cam.height,
        granularity=torch.as_tensor(np.asarray(prior.granularity).reshape(-1)[keep].astype(np.int8)),
        mask_area=torch.as_tensor(targets[keep].mean(1), dtype=torch.float32)).compact()


class PriorsFile:
    """One RUN/priors file for the mask field: validated when opened, then only its small arrays
    kept (embeddings, granularity, scores, size, meta); its masks are read again when a view is
    built, and let go once resized. Every view's masks at once (a hundred masks of 0.8 MB a view
    at 1,024 px, hundreds of views) would not fit in memory."""

    def __init__(self, path: Path):
        from ..priors.store import load_priors

        priors = load_priors(path)
        self.path = Path(path)
        self.mask_shape = tuple(priors.masks.shape)
        self.embeddings, self.granularity, self.scores = priors.embeddings, priors.granularity, priors.scores
        self.image_size, self.meta = priors.image_size, priors.meta
        self.embedding_model = priors.embedding_model

    @property
    def masks(self) -> np.ndarray:
        from ..priors.store import load_priors

        return load_priors(self.path, validate=False).masks

    @property
    def count(self) -> int:
        return int(self.mask_shape[0])


def load_priors_folder(folder: Path) -> dict[str, PriorsFile]:
    """Every RUN/priors/<image>.npz, validated, keyed by image stem (``PriorsFile``: masks read
    when used)."""
    return {path.stem: PriorsFile(path) for path in sorted(Path(folder).glob("*.npz"))}
