"""SSIM compiled for the CPU (numba): the colour fit's structural term, forward and backward.

``losses.ssim`` with ``compiled=False`` (depthwise convolutions and ~40 small tensor ops in
PyTorch) stays the reference; tests hold the two together in value and gradient. In PyTorch
the term cost 6-8 ms a step at 128x128 and 11-13 ms at 135x240 on 2 cores, most of it the
convolutions' backward and per-op overhead; here it is two passes over the image.

SSIM over a Gaussian window: with the blurred maps mu_x, mu_y, e_xx, e_yy, e_xy (the
blur is a zero-padded separable cross-correlation, as ``losses._blur``),
    s = (2 mu_x mu_y + C1)(2 (e_xy - mu_x mu_y) + C2) / ((mu_x^2 + mu_y^2 + C1)(e_xx - mu_x^2 + e_yy - mu_y^2 + C2)).
Its gradient with respect to the rendered image x goes back through the blur, whose adjoint
is the same blur with the kernel reversed:
    dS/dx = blur^T(ds/dmu_x) + 2 x blur^T(ds/de_xx) + y blur^T(ds/de_xy),
    ds/dmu_x = (2 mu_y (A2 - A1) - 2 mu_x s (B2 - B1)) / D,
    ds/de_xx = -s B1 / D,  ds/de_xy = 2 A1 / D,
with A1, A2 the numerator's factors, B1, B2 the denominator's and D = B1 B2 (never divided
by A1 or A2, which cross zero).
"""
from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

FAST = {"contract", "afn", "arcp"}
C1 = np.float32(0.01 ** 2)
C2 = np.float32(0.03 ** 2)
F2 = np.float32(2.0)


@njit(cache=True, fastmath=FAST)
def _blur_row(src, dst, k, channels):
    """dst += ``src`` blurred along its pixels (``channels`` floats apart), zero beyond the ends.
    Each tap runs over two slices indexed from 0: indexing ``src[j + shift]`` with a shift that
    may be negative made numba check every index for wraparound, and that loop did not
    vectorise (5x slower: 1.9 against 0.35 ms for the five maps of a 128x128 image)."""
    length = src.shape[0]
    pad = k.shape[0] // 2
    for t in range(k.shape[0]):
        kt = k[t]
        shift = (t - pad) * channels
        lo, hi = max(0, -shift), min(length, length - shift)
        d = dst[lo:hi]
        s = src[lo + shift:hi + shift]
        for j in range(hi - lo):
            d[j] += kt * s[j]


@njit(cache=True, fastmath=FAST)
def _add_scaled(dst, src, scale):
    for j in range(dst.shape[0]):
        dst[j] += scale * src[j]


@njit(cache=True, parallel=True, fastmath=FAST)
def _blur(maps, k, channels):
    """Blur each (H, W*channels) map of ``maps`` (M, H, W*channels) by ``k`` along W, then
    along H. Every inner loop runs along a row in memory (written as small row functions,
    which numba vectorises; indexing the 3D arrays inside the loops ran 1.4x slower)."""
    m_count, h, length = maps.shape
    s = k.shape[0]
    pad = s // 2
    flat = maps.reshape(m_count * h, length)
    rows = np.zeros((m_count * h, length), dtype=np.float32)
    for r in prange(m_count * h):
        _blur_row(flat[r], rows[r], k, channels)
    out = np.zeros((m_count * h, length), dtype=np.float32)
    for r in prange(m_count * h):
        m, y = r // h, r % h
        for t in range(max(0, pad - y), min(s, h + pad - y)):
            _add_scaled(out[r], rows[m * h + y + t - pad], k[t])
    return out.reshape(m_count, h, length)


@njit(cache=True, parallel=True, fastmath=FAST)
def _five_maps(x, y):
    """x, y, x^2, y^2, xy as (5, H, L)."""
    h, length = x.shape
    maps = np.empty((5, h, length), dtype=np.float32)
    for r in prange(h):
        for j in range(length):
            a, b = x[r, j], y[r, j]
            maps[0, r, j] = a
            maps[1, r, j] = b
            maps[2, r, j] = a * a
            maps[3, r, j] = b * b
            maps[4, r, j] = a * b
    return maps


@njit(cache=True, fastmath=FAST)
def _factors(mu, r, j):
    """mu_x, mu_y and SSIM's factors A1, A2 (numerator), B1, B2 (denominator) at one element."""
    mx, my = mu[0, r, j], mu[1, r, j]
    a1 = F2 * mx * my + C1
    a2 = F2 * (mu[4, r, j] - mx * my) + C2
    b1 = mx * mx + my * my + C1
    b2 = (mu[2, r, j] - mx * mx) + (mu[3, r, j] - my * my) + C2
    return mx, my, a1, a2, b1, b2


@njit(cache=True, parallel=True, fastmath=FAST)
def _ssim_sum(mu):
    """Sum of the SSIM map over every pixel and channel, from the blurred maps (5, H, L)."""
    h, length = mu.shape[1], mu.shape[2]
    total = 0.0
    for r in prange(h):
        row = 0.0
        for j in range(length):
            _, _, a1, a2, b1, b2 = _factors(mu, r, j)
            row += (a1 * a2) / (b1 * b2)
        total += row
    return total


@njit(cache=True, parallel=True, fastmath=FAST)
def _ssim_coefficients(mu, scale):
    """``scale`` times ds/dmu_x, ds/de_xx and ds/de_xy at every pixel: (3, H, L)."""
    h, length = mu.shape[1], mu.shape[2]
    out = np.empty((3, h, length), dtype=np.float32)
    for r in prange(h):
        for j in range(length):
            mx, my, a1, a2, b1, b2 = _factors(mu, r, j)
            # over d = b1 b2 only (> 0: b1 >= C1, b2 >= C2 up to rounding); a1 and a2 cross
            # zero where a rendered colour leaves [0, 1] or the images anti-correlate
            inv_d = np.float32(1.0) / (b1 * b2)
            s = a1 * a2 * inv_d  # SSIM at this element
            out[0, r, j] = scale * (F2 * my * (a2 - a1) - F2 * mx * s * (b2 - b1)) * inv_d
            out[1, r, j] = -scale * s * b1 * inv_d
            out[2, r, j] = scale * F2 * a1 * inv_d
    return out


@njit(cache=True, parallel=True, fastmath=FAST)
def _combine(back, x, y):
    """dS/dx from the blurred-back coefficient maps (3, H, L)."""
    h, length = x.shape
    g = np.empty((h, length), dtype=np.float32)
    for r in prange(h):
        for j in range(length):
            g[r, j] = back[0, r, j] + F2 * x[r, j] * back[1, r, j] + y[r, j] * back[2, r, j]
    return g


class _SSIM(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, kernel):
        h, w, c = a.shape
        x = np.ascontiguousarray(a.detach().numpy().reshape(h, w * c))
        y = np.ascontiguousarray(b.detach().numpy().reshape(h, w * c))
        mu = _blur(_five_maps(x, y), kernel, c)
        ctx.saved = (x, y, mu, kernel, (h, w, c))
        return a.new_tensor(_ssim_sum(mu) / (h * w * c))

    @staticmethod
    def backward(ctx, grad):
        x, y, mu, kernel, (h, w, c) = ctx.saved
        coeffs = _ssim_coefficients(mu, np.float32(float(grad) / (h * w * c)))
        back = _blur(coeffs, np.ascontiguousarray(kernel[::-1]), c)
        return torch.from_numpy(_combine(back, x, y)).view(h, w, c), None, None


def supported(a: torch.Tensor, b: torch.Tensor, size: int) -> bool:
    """Whether ``ssim`` takes these images: H x W x C float32 on the CPU, an odd window, no
    gradient wanted for the target."""
    return (a.dim() == 3 and a.shape == b.shape and a.device.type == "cpu" and b.device.type == "cpu"
            and a.dtype == torch.float32 and b.dtype == torch.float32 and size % 2 == 1
            and not b.requires_grad)


def ssim(a: torch.Tensor, b: torch.Tensor, kernel_1d: torch.Tensor) -> torch.Tensor:
    """Mean SSIM of two H x W x C float32 CPU images (gradient for ``a`` only), window ``kernel_1d``."""
    if not supported(a, b, kernel_1d.shape[0]):
        raise ValueError("the compiled SSIM takes two H x W x C float32 CPU images of one shape, an odd "
                         "window, and no gradient for the second")
    kernel = np.ascontiguousarray(kernel_1d.detach().cpu().numpy().astype(np.float32))
    return _SSIM.apply(a, b, kernel)
