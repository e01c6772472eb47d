"""One ``render`` function over three rasterisers with the same outputs.

- ``gsplat``: gsplat's CUDA rasteriser (fast, NVIDIA only; compiles its kernels on first use).
- ``cpu``: our compiled CPU rasteriser (numba, tile-based, multi-threaded; ``render_cpu.py``),
  the default on the CPU.
- ``torch``: our own differentiable renderer in plain PyTorch and float32 only, for Apple MPS
  (and for CUDA machines where gsplat cannot compile), and the reference the compiled one is
  tested against. All three use gsplat's PyTorch projection and spherical-harmonics maths
  (gsplat's own on CUDA); the torch renderer then:
    1. culls each Gaussian to its screen footprint (3-sigma box) and lists the
       (pixel, Gaussian) pairs inside it whose alpha is at least 1/255 — never a dense
       Gaussians x pixels matrix;
    2. orders the pairs front to back per pixel (Gaussians sorted by depth, then a stable
       sort by pixel);
    3. stops each pixel once its transmittance would fall below 1e-4, as 3DGS does;
    4. composites with a custom autograd function whose backward is the closed-form
       gradient of alpha blending (segmented prefix / suffix sums, in float32 by a
       log-step scan inside each pixel's segment), several times cheaper than letting
       autograd trace the blending.
Both return colour, extra feature channels, alpha and depth, plus ``means2d`` and ``radii``
in the form gsplat's densification strategies read.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..scene.cameras import DEFAULT_NEAR

ALPHA_MIN = 1.0 / 255.0  # contributions below this are skipped, as in 3DGS
ALPHA_MAX = 0.99  # keeps 1 - alpha away from zero (3DGS clamps the same way)
T_MIN = 1e-4  # a pixel stops blending before its transmittance would fall below this (3DGS)
RENDERERS = ("auto", "gsplat", "cpu", "torch")


@dataclass
class RenderCamera:
    """What a renderer needs of a camera, as tensors: world-to-camera (OpenCV axes) and K."""

    viewmat: torch.Tensor  # 4 x 4
    K: torch.Tensor  # 3 x 3
    width: int
    height: int
    near: float = DEFAULT_NEAR  # nearer Gaussians are not drawn (3DGS's and gsplat's default)

    @classmethod
    def from_camera(cls, camera, device="cpu") -> "RenderCamera":
        return cls(torch.as_tensor(camera.viewmat, dtype=torch.float32, device=device),
                   torch.as_tensor(camera.K, dtype=torch.float32, device=device),
                   int(camera.width), int(camera.height), float(camera.near))


def render(gaussians: dict[str, torch.Tensor], camera: RenderCamera, sh_degree: int | None = None,
           colors: torch.Tensor | None = None, features: torch.Tensor | None = None,
           background: torch.Tensor | None = None, backend: str = "auto") -> dict[str, torch.Tensor]:
    """Render activated Gaussians (see ``Gaussians.activated``) from one camera.

    Colour comes from SH (``gaussians['sh']`` up to ``sh_degree``) or from ``colors`` (N,3).
    ``features`` (N,C) are composited with the same weights (the mask field's 16-d features).
    Returns ``color`` (H,W,3), ``features`` (H,W,C) if asked, ``alpha`` (H,W), ``depth`` (H,W,
    expected depth), ``means2d`` (1,N,2), ``radii`` (1,N,2) and ``backend``.
    """
    backend = choose_backend(backend, gaussians["means"].device)
    if background is None:
        background = torch.zeros(3, device=gaussians["means"].device)
    if backend == "gsplat":
        return _render_gsplat(gaussians, camera, sh_degree, colors, features, background)
    if backend == "cpu":
        return _render_compiled(gaussians, camera, sh_degree, colors, features, background)
    return _render_torch(gaussians, camera, sh_degree, colors, features, background)


def choose_backend(requested: str, device: torch.device | str) -> str:
    """The renderer for tensors on ``device``: 'auto' is gsplat on CUDA, compiled on the CPU."""
    device = torch.device(device)
    if requested == "torch":
        return "torch"
    if requested == "gsplat":
        if device.type != "cuda":
            raise ValueError("the gsplat rasteriser runs on CUDA only; use backend='cpu' or 'torch' on this device")
        return "gsplat"
    if requested == "cpu":
        if device.type != "cpu":
            raise ValueError(f"the compiled rasteriser renders CPU tensors, these are on {device.type}; "
                             "move the Gaussians to the CPU or use backend='torch'")
        return "cpu"
    if requested != "auto":
        raise ValueError(f"unknown renderer {requested!r}: use one of {', '.join(RENDERERS)}")
    if device.type == "cuda":
        return "gsplat" if gsplat_available() else "torch"
    if device.type == "cpu" and compiled_available():
        return "cpu"
    return "torch"


@functools.lru_cache(maxsize=1)
def compiled_available() -> bool:
    """True when numba imports (a pinned dependency; without it the torch renderer stands in)."""
    try:
        import numba  # noqa: F401

        return True
    except ImportError as exc:
        import sys

        print(f"maskfield: the compiled CPU rasteriser is unavailable ({exc}); using the PyTorch renderer.",
              file=sys.stderr)
        return False


@functools.lru_cache(maxsize=1)
def gsplat_available() -> bool:
    """True when gsplat's CUDA kernels load (they compile on first use; that needs the CUDA toolkit)."""
    try:
        import gsplat
        from gsplat.cuda._backend import _C  # noqa: F401  (triggers the JIT build where needed)

        return _C is not None and hasattr(gsplat, "rasterization")
    except Exception as exc:  # no toolkit, no compiler, wrong arch: fall back, say why once
        import sys

        print(f"maskfield: gsplat's CUDA rasteriser is unavailable ({type(exc).__name__}: {exc}); "
              "using the built-in PyTorch renderer on the GPU instead.", file=sys.stderr)
        return False


# --- gsplat (CUDA) ----------------------------------------------------------------------------

def _render_gsplat(g, camera, sh_degree, colors, features, background):
    from gsplat import rasterization

    values, n_color = _colour_values_gsplat(g, camera, sh_degree, colors)
    if features is not None:
        values = torch.cat([values, features], dim=-1)
    bg = torch.cat([background, background.new_zeros(values.shape[-1] - 3)])
    out, alpha, info = rasterization(
        g["means"], g["quats"], g["scales"], g["opacities"], values,
        camera.viewmat[None], camera.K[None], camera.width, camera.height,
        sh_degree=None, backgrounds=bg[None], render_mode="RGB+ED", packed=False, near_plane=camera.near,
    )
    out = out[0]
    result = {
        "color": out[..., :3],
        "alpha": alpha[0, ..., 0],
        "depth": out[..., -1],
        "means2d": info["means2d"],
        "radii": info["radii"],
        "info": info,
        "backend": "gsplat",
    }
    if features is not None:
        result["features"] = out[..., 3:-1]
    return result


def _colour_values_gsplat(g, camera, sh_degree, colors):
    if colors is not None:
        return colors, 3
    from gsplat.cuda._wrapper import spherical_harmonics

    campos = torch.linalg.inv(camera.viewmat)[:3, 3]
    dirs = g["means"] - campos
    degree = _degree(g, sh_degree)
    rgb = spherical_harmonics(degree, dirs, sh_coefficients(g, degree))
    return torch.clamp_min(rgb + 0.5, 0.0), 3


def _degree(g, sh_degree):
    k = g["sh"].shape[1] if "sh" in g else 1 + g["shN"].shape[1]
    full = int(round(np.sqrt(k))) - 1
    return full if sh_degree is None else min(sh_degree, full)


def sh_coefficients(g: dict[str, torch.Tensor], degree: int) -> torch.Tensor:
    """(N, (degree + 1)^2, 3) SH coefficients, from ``sh`` or from ``sh0`` + ``shN`` (as the fit
    keeps them: the compiled renderer reads those two without joining them)."""
    k = (degree + 1) ** 2
    if "sh" in g:
        return g["sh"][:, :k]
    return g["sh0"] if k == 1 else torch.cat([g["sh0"], g["shN"][:, : k - 1]], dim=1)


# --- our PyTorch renderer --------------------------------------------------------------------

def project(g: dict[str, torch.Tensor], camera: RenderCamera):
    """gsplat's PyTorch projection: radii (1,N,2), means2d (1,N,2), depths (1,N), conics (1,N,3)."""
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    covars, _ = _quat_scale_to_covar_preci(g["quats"], g["scales"], compute_covar=True, compute_preci=False)
    radii, means2d, depths, conics, _ = _fully_fused_projection(
        g["means"], covars, camera.viewmat[None], camera.K[None], camera.width, camera.height,
        eps2d=0.3, near_plane=camera.near)
    return radii, means2d, depths, conics


def _torch_colors(g, camera, sh_degree, colors, visible):
    if colors is not None:
        return colors[visible]
    from gsplat.cuda._torch_impl import _spherical_harmonics

    campos = torch.linalg.inv(camera.viewmat)[:3, 3]
    dirs = g["means"][visible] - campos
    degree = _degree(g, sh_degree)
    sh = sh_coefficients(g, degree)[visible]
    return torch.clamp_min(_spherical_harmonics(degree, dirs, sh) + 0.5, 0.0)


@dataclass
class Pairs:
    """Front-to-back ordered (pixel, Gaussian) pairs of one view: the compositing layout."""

    pixel: torch.Tensor  # (P,) long, y * W + x
    gaussian: torch.Tensor  # (P,) long, index into the visible list
    seg_start: torch.Tensor  # (P,) long, first pair of the same pixel
    seg_end: torch.Tensor  # (P,) long, one past the last pair of the same pixel


@torch.no_grad()
def _pairs(means2d, conics, opacities, depths, width, height) -> Pairs:
    """List the pairs whose alpha is at least 1/255, ordered front to back per pixel.

    alpha >= 1/255 is an ellipse around each Gaussian; we walk its pixel rows and solve
    the quadratic for each row's x-interval, so only the pairs that count are generated
    (about half of a bounding-box enumeration) and no per-pair alpha test is needed.
    """
    device = means2d.device
    order = torch.argsort(depths)  # front to back
    m, c, o = means2d[order], conics[order], opacities[order]
    s_max = torch.log((o / ALPHA_MIN).clamp_min(1.0))  # alpha >= 1/255  <=>  sigma <= s_max
    det = (c[:, 0] * c[:, 2] - c[:, 1] ** 2).clamp_min(1e-12)
    reach_y = torch.sqrt(2.0 * s_max * c[:, 0] / det)  # half-height of the ellipse
    y0 = torch.clamp(torch.ceil(m[:, 1] - reach_y - 0.5), 0, height).long()
    y1 = torch.clamp(torch.floor(m[:, 1] + reach_y - 0.5), -1, height - 1).long()
    rows_per = (y1 - y0 + 1).clamp_min(0)
    row_g = torch.repeat_interleave(torch.arange(len(order), device=device), rows_per)
    row_y = y0[row_g] + torch.arange(row_g.numel(), device=device) - (torch.cumsum(rows_per, 0) - rows_per)[row_g]
    # on row y: 0.5 c0 dx^2 + c1 dy dx + 0.5 c2 dy^2 - s_max <= 0
    dy = row_y.to(m.dtype) + 0.5 - m[row_g, 1]
    a = 0.5 * c[row_g, 0]
    b = c[row_g, 1] * dy
    cc = 0.5 * c[row_g, 2] * dy * dy - s_max[row_g]
    root = torch.sqrt((b * b - 4 * a * cc).clamp_min(0.0))
    mx = m[row_g, 0]
    x0 = torch.clamp(torch.ceil(mx + (-b - root) / (2 * a) - 0.5), 0, width).long()
    x1 = torch.clamp(torch.floor(mx + (-b + root) / (2 * a) - 0.5), -1, width - 1).long()
    per_row = (x1 - x0 + 1).clamp_min(0)
    pair_row = torch.repeat_interleave(torch.arange(row_g.numel(), device=device), per_row)
    local = torch.arange(pair_row.numel(), device=device) - (torch.cumsum(per_row, 0) - per_row)[pair_row]
    pix = (row_y * width + x0)[pair_row] + local
    # stable: keeps depth order inside a pixel; int32 keys sort about twice as fast
    pix_sorted, perm = torch.sort(pix.to(torch.int32), stable=True)
    pix_sorted = pix_sorted.long()
    gid = order[row_g[pair_row[perm]]]
    per_pixel = torch.bincount(pix_sorted, minlength=width * height)
    seg_start = (torch.cumsum(per_pixel, 0) - per_pixel)[pix_sorted]
    return Pairs(pix_sorted, gid, seg_start, seg_start + per_pixel[pix_sorted])


def _segment_inclusive_scan(x: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """Sum of x over the pairs up to and including each one, within its pixel's segment.

    ``rank`` is each pair's place in its segment. A log-step (Hillis-Steele) scan: step k adds
    the partial sum k places back when that is still in the segment. Every sum only ever
    holds terms of one pixel, so float32 keeps its accuracy where one global cumsum over
    millions of pairs (then differenced per segment) would not.
    """
    out = x
    longest = int(rank.max()) + 1 if rank.numel() else 0
    k = 1
    while k < longest:
        shifted = torch.where(rank[k:] >= k, out[:-k], out.new_zeros(()))
        out = torch.cat([out[:k], out[k:] + shifted])
        k *= 2
    return out


def _segment_exclusive_cumsum(x: torch.Tensor, pairs: "Pairs") -> torch.Tensor:
    """Sum of x over earlier pairs of the same pixel."""
    rank = torch.arange(x.numel(), device=x.device) - pairs.seg_start
    return _segment_inclusive_scan(x, rank) - x


def _segment_exclusive_suffix(x: torch.Tensor, pairs: "Pairs") -> torch.Tensor:
    """Sum of x over later pairs of the same pixel."""
    rank_from_end = torch.flip(pairs.seg_end - 1 - torch.arange(x.numel(), device=x.device), (0,))
    return torch.flip(_segment_inclusive_scan(torch.flip(x, (0,)), rank_from_end), (0,)) - x


def _blend_alpha(alpha_raw: torch.Tensor, pairs: "Pairs") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(alpha, T in front, kept): clamped alpha, zero past each pixel's early termination."""
    alpha = alpha_raw.clamp(max=ALPHA_MAX)
    log_t = _segment_exclusive_cumsum(torch.log1p(-alpha), pairs)
    # 3DGS stops a pixel before the pair that would take T below T_MIN; T only falls, so the
    # kept pairs are a prefix of each segment
    kept = (log_t + torch.log1p(-alpha)) >= math.log(T_MIN)
    alpha = alpha * kept
    T = torch.exp(_segment_exclusive_cumsum(torch.log1p(-alpha), pairs))
    return alpha, T, kept


def _pair_geometry(means2d, conics, opacities, pairs: Pairs, width: int):
    g = pairs.gaussian
    px = (pairs.pixel % width).to(means2d.dtype) + 0.5
    py = torch.div(pairs.pixel, width, rounding_mode="floor").to(means2d.dtype) + 0.5
    mg = means2d[g]
    dx = px - mg[:, 0]
    dy = py - mg[:, 1]
    c = conics[g]
    sigma = 0.5 * (c[:, 0] * dx * dx + c[:, 2] * dy * dy) + c[:, 1] * dx * dy
    falloff = torch.exp(-sigma)
    alpha_raw = opacities[g] * falloff
    return dx, dy, c, falloff, alpha_raw


class _Rasterize(torch.autograd.Function):
    """Alpha of each pair and front-to-back blending, with a closed-form backward.

    alpha_i = min(0.99, o_g exp(-sigma_i)),  sigma_i = 0.5 d^T conic_g d,  d = pixel - mean_g
    out[p]  = sum_i T_i alpha_i v[g_i] + T_final[p] bg,  T_i = prod_{j<i} (1 - alpha_j)
    Backward, per pair i of pixel p with G = dL/dout[p]:
      dL/dv[g]     += T_i alpha_i G
      dL/dalpha_i   = T_i (v_i . G) - (sum_{k>i} T_k alpha_k (v_k . G) + T_final bg . G) / (1 - alpha_i)
    then through alpha to the opacity, the conic and the 2D mean of Gaussian g.
    """

    @staticmethod
    def forward(ctx, means2d, conics, opacities, values, background, pairs: Pairs, width, n_pix):
        dx, dy, c, falloff, alpha_raw = _pair_geometry(means2d, conics, opacities, pairs, width)
        alpha, T, kept = _blend_alpha(alpha_raw, pairs)
        w = alpha * T
        out = values.new_zeros(n_pix, values.shape[1]).index_add_(0, pairs.pixel, w[:, None] * values[pairs.gaussian])
        acc = values.new_zeros(n_pix).index_add_(0, pairs.pixel, w)
        t_final = (1.0 - acc).clamp_min(0.0)
        out = out + t_final[:, None] * background[None, :]
        ctx.pairs = pairs
        ctx.save_for_backward(values, background, dx, dy, c, falloff, alpha_raw, alpha, T, t_final, kept)
        return out, acc

    @staticmethod
    def backward(ctx, grad_out, grad_acc):
        values, background, dx, dy, c, falloff, alpha_raw, alpha, T, t_final, kept = ctx.saved_tensors
        pairs = ctx.pairs
        g, pix = pairs.gaussian, pairs.pixel
        w = alpha * T
        G = grad_out[pix]
        # the accumulated alpha is a channel of value 1 with no background
        dot = (values[g] * G).sum(1) + grad_acc[pix]
        later = _segment_exclusive_suffix(w * dot, pairs)
        bg_term = (t_final * (grad_out @ background))[pix]
        # pairs past the termination and clamped alphas pass no gradient to alpha
        grad_alpha = (T * dot - (later + bg_term) / (1.0 - alpha)) * ((alpha_raw < ALPHA_MAX) & kept)
        grad_sigma = -grad_alpha * alpha_raw
        # one scatter for every per-Gaussian gradient: [opacity | conic (3) | mean (2) | values]
        per_pair = torch.cat([
            (grad_alpha * falloff)[:, None],
            torch.stack([0.5 * dx * dx, dx * dy, 0.5 * dy * dy], 1) * grad_sigma[:, None],
            torch.stack([c[:, 0] * dx + c[:, 1] * dy, c[:, 1] * dx + c[:, 2] * dy], 1) * (-grad_sigma[:, None]),
            w[:, None] * G,
        ], dim=1)
        grads = values.new_zeros(values.shape[0], per_pair.shape[1]).index_add_(0, g, per_pair)
        return grads[:, 4:6], grads[:, 1:4], grads[:, 0], grads[:, 6:], None, None, None, None


def _visible(g, camera):
    """Project; keep the Gaussians in view: (radii, means2d, visible ids, their 2D means, conics, opacities, depths)."""
    radii, means2d, depths, conics = project(g, camera)
    visible = torch.nonzero((radii[0] > 0).all(dim=-1)).squeeze(1)
    return radii, means2d, visible, means2d[0][visible], conics[0][visible], g["opacities"][visible], depths[0][visible]


def _render_torch(g, camera, sh_degree, colors, features, background):
    width, height = camera.width, camera.height
    radii, means2d, visible, m2, con, opac, dep = _visible(g, camera)
    rgb = _torch_colors(g, camera, sh_degree, colors, visible)
    parts = [rgb]
    if features is not None:
        parts.append(features[visible])
    parts.append(dep[:, None])
    values = torch.cat(parts, dim=1)
    bg = torch.cat([background.to(values.dtype), values.new_zeros(values.shape[1] - 3)])
    pairs = _pairs(m2.detach(), con.detach(), opac.detach(), dep.detach(), width, height)
    out, acc = _Rasterize.apply(m2, con, opac, values, bg, pairs, width, width * height)
    return _result(out, acc, means2d, radii, features is not None, camera, "torch", int(pairs.pixel.numel()))


def _render_compiled(g, camera, sh_degree, colors, features, background):
    """Every stage compiled (projection, SH colour, compositing), over all Gaussians at once."""
    from . import render_cpu

    width, height = camera.width, camera.height
    radii, m2, dep, con = render_cpu.project(g, camera.viewmat, camera.K, width, height, camera.near)
    means2d = m2[None]  # what densification reads (and retains the gradient of)
    if colors is None:
        if "sh" in g:
            sh0, shN = g["sh"][:, :1], g["sh"][:, 1:]
        else:
            sh0, shN = g["sh0"], g["shN"]
        colors = render_cpu.sh_colors(g["means"], sh0, shN, camera.viewmat, _degree(g, sh_degree))
    parts = [colors] + ([features] if features is not None else []) + [dep[:, None]]
    values = torch.cat(parts, dim=1)
    bg = torch.cat([background.to(values.dtype), values.new_zeros(values.shape[1] - 3)])
    valid = (radii > 0).all(dim=-1)
    out, acc, entries = render_cpu.composite(means2d[0], con, g["opacities"], dep, valid, values, bg, width, height)
    return _result(out, acc, means2d, radii[None], features is not None, camera, "cpu", entries)


def _result(out, acc, means2d, radii, has_features, camera, backend, num_pairs):
    out = out.reshape(camera.height, camera.width, -1)
    acc = acc.reshape(camera.height, camera.width)
    result = {
        "color": out[..., :3],
        "alpha": acc,
        "depth": out[..., -1] / acc.clamp_min(1e-6),
        "means2d": means2d,
        "radii": radii,
        "backend": backend,
        "num_pairs": num_pairs,  # pixel-Gaussian pairs (torch), tile-Gaussian entries (cpu)
    }
    if has_features:
        result["features"] = out[..., 3:-1]
    return result


@torch.no_grad()
def compositing_weights(g: dict[str, torch.Tensor], camera: RenderCamera, backend: str = "auto"):
    """The blending weights of one view as (pixel, gaussian, weight) triples, by pixel then depth.

    With frozen geometry these never change, so the mask field renders a view as a sparse
    (pixels x Gaussians) matrix times the per-Gaussian features. On the CPU they come from
    the compiled kernel that renders colour; elsewhere from the torch renderer (gsplat does
    not hand out its weights).
    """
    if choose_backend(backend, g["means"].device) == "cpu":
        from . import render_cpu

        radii, m2, dep, con = render_cpu.project(g, camera.viewmat, camera.K, camera.width, camera.height,
                                                 camera.near)
        pixel, gaussian, weight = render_cpu.weights(m2, con, g["opacities"], dep, (radii > 0).all(dim=-1),
                                                     camera.width, camera.height)
        return pixel, gaussian, weight.to(m2.dtype)
    _, _, visible, m2, con, opac, dep = _visible(g, camera)
    pairs = _pairs(m2, con, opac, dep, camera.width, camera.height)
    _, _, _, _, alpha_raw = _pair_geometry(m2, con, opac, pairs, camera.width)
    alpha, T, kept = _blend_alpha(alpha_raw, pairs)
    return pairs.pixel[kept], visible[pairs.gaussian[kept]], (alpha * T)[kept]


# --- Apple GPUs: MPS or the compiled CPU renderer, whichever is faster here -----------------

def choose_fit_device(device: str, renderer: str = "auto", timer=None, log=None) -> tuple[str, str]:
    """(device, renderer) for fitting: on MPS with ``renderer='auto'``, time one small render on
    each of MPS (the torch renderer) and the CPU (the compiled one) and keep the faster.

    Apple's CPUs are fast and the torch renderer's many small ops are not, so either can win
    depending on the machine. ``timer(device, backend)`` returns seconds per render (injected
    in tests); ``log`` receives the sentence saying what was chosen and why.
    """
    if device != "mps" or renderer != "auto":
        return device, renderer
    if not compiled_available():
        return "mps", "torch"
    timer = timer or time_one_render
    t_mps, t_cpu = timer("mps", "torch"), timer("cpu", "cpu")
    choice = ("mps", "torch") if t_mps < t_cpu else ("cpu", "cpu")
    if log is not None:
        log(f"renderer: one test view took {t_mps:.3f} s on the Apple GPU (PyTorch renderer) and {t_cpu:.3f} s "
            f"on the CPU (compiled renderer); fitting on {'the Apple GPU' if choice[0] == 'mps' else 'the CPU'}")
    return choice


def time_one_render(device: str, backend: str, n: int = 20_000, width: int = 200, height: int = 150,
                    repeats: int = 3) -> float:
    """Median seconds of a forward+backward render of ``n`` random Gaussians on ``device``."""
    import time

    gen = torch.Generator().manual_seed(0)
    depth = 2.0 + 4.0 * torch.rand(n, generator=gen)
    f = 0.8 * width
    xy = (torch.rand(n, 2, generator=gen) - 0.5) * torch.tensor([width, height]) / f * depth[:, None]
    g = {"means": torch.cat([xy, depth[:, None]], 1),
         "scales": torch.exp(torch.empty(n, 3).uniform_(-5.5, -4.5, generator=gen)) * depth[:, None],
         "quats": torch.nn.functional.normalize(torch.randn(n, 4, generator=gen), dim=-1),
         "opacities": 0.1 + 0.8 * torch.rand(n, generator=gen),
         "sh": 0.3 * torch.randn(n, 16, 3, generator=gen)}
    g = {k: v.to(device).requires_grad_() for k, v in g.items()}
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    camera = RenderCamera(torch.eye(4, device=device), K.to(device), width, height)
    times = []
    for i in range(repeats + 1):  # the first run compiles / warms up
        t0 = time.perf_counter()
        out = render(g, camera, sh_degree=3, backend=backend)
        out["color"].sum().backward()
        if device == "mps":
            torch.mps.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]
