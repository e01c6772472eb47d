"""Image losses and metrics for colour fitting."""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


@functools.lru_cache(maxsize=4)
def _kernel_1d(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float32) - size // 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (two 1D passes: 2k instead of k^2 taps per pixel)."""
    c = x.shape[1]
    k = _kernel_1d(size, sigma).to(x.device, x.dtype)
    pad = size // 2
    x = F.conv2d(x, k.view(1, 1, 1, size).expand(c, 1, 1, size), padding=(0, pad), groups=c)
    return F.conv2d(x, k.view(1, 1, size, 1).expand(c, 1, size, 1), padding=(pad, 0), groups=c)


def ssim(a: torch.Tensor, b: torch.Tensor, size: int = 11, sigma: float = 1.5,
         compiled: bool | None = None) -> torch.Tensor:
    """Structural similarity of two H x W x C images in [0, 1] (Gaussian window, as 3DGS).

    ``compiled``: the compiled CPU kernel (``ssim_cpu``) or this function's PyTorch code, its
    reference; by default the kernel wherever it applies (float32 images on the CPU, the
    gradient wanted for ``a`` only)."""
    if compiled is None:
        from .ssim_cpu import supported

        compiled = supported(a, b, size)
    if compiled:
        from .ssim_cpu import ssim as ssim_compiled

        return ssim_compiled(a, b, _kernel_1d(size, sigma))
    x = a.permute(2, 0, 1)[None]
    y = b.permute(2, 0, 1)[None]
    c = x.shape[1]
    # one blur pass over all five maps
    stats = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), size, sigma)
    mu_x, mu_y, exx, eyy, exy = torch.split(stats, c, dim=1)
    sxx = exx - mu_x ** 2
    syy = eyy - mu_y ** 2
    sxy = exy - mu_x * mu_y
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x ** 2 + mu_y ** 2 + c1) * (sxx + syy + c2)
    return (num / den).mean()


CLIPPED_HIGH, CLIPPED_LOW = 254.5 / 255.0, 0.5 / 255.0  # 8-bit 255 and 0


def backdrop_alpha_penalty(alpha: torch.Tensor, target: torch.Tensor, background: torch.Tensor,
                           sigma: float) -> torch.Tensor:
    """Mean rendered alpha, each pixel weighted by how closely its target colour is the
    background's: exp(-|target - background|^2 / (2 sigma^2)), 1 on the world itself and
    about 0 a few sigma away. Only the alpha gets a gradient: the background colour is
    fitted by the colour loss, not pulled toward whatever the penalty prefers.

    Clipped pixels (pure white or pure black in every channel) are left out: a blown-out
    white wall looks exactly like a blown-out sky, and fading it would open holes in it."""
    distance2 = ((target - background.detach()) ** 2).sum(-1)
    backdrop_like = torch.exp(-distance2 / (2.0 * sigma * sigma))
    clipped = (target >= CLIPPED_HIGH).all(-1) | (target <= CLIPPED_LOW).all(-1)
    backdrop_like = backdrop_like.masked_fill(clipped, 0.0)
    return (alpha.reshape(backdrop_like.shape) * backdrop_like).mean()


def surface_alpha_penalty(alpha: torch.Tensor, target: torch.Tensor, background: torch.Tensor,
                          sigma: float, inset: int = 0) -> torch.Tensor:
    """Mean rendered transparency (1 - alpha), each pixel weighted by how surely its target
    colour is *not* the background's: 1 - exp(-|target - background|^2 / (2 sigma^2)).

    With a learned background colour, a surface brighter than it is matched as well by a
    brighter, fainter Gaussian as by an opaque one of its own colour (c a + b (1 - a)); the
    faint answer leaves see-through holes that segmentation reads as background. A pixel
    clearly unlike the background must be covered by something: this makes it opaque.
    ``sigma`` is wide (image noise over the world stays near weight 0). With ``inset``, a
    pixel weighs the least of its (2 inset + 1)^2 neighbourhood, so a silhouette's edge pixels,
    part object and part world, are left free: pushed opaque, they would grow a rim that
    novel views see over the world."""
    distance2 = ((target - background.detach()) ** 2).sum(-1)
    unlike = 1.0 - torch.exp(-distance2 / (2.0 * sigma * sigma))
    if inset > 0:
        size = 2 * inset + 1
        unlike = -F.max_pool2d(-unlike[None, None], size, stride=1, padding=inset)[0, 0]
    return ((1.0 - alpha.reshape(unlike.shape)) * unlike).mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(torch.mean((a.clamp(0, 1) - b) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-10))
