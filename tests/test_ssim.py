# SPDX-License-Identifier: GPL-3.0-or-later
"""SSIM: the compiled CPU kernel (splats/ssim_cpu.py) against the PyTorch reference
(losses.ssim with compiled=False), in value and gradient, and against a plain formula."""
import numpy as np
import pytest
import torch

from maskfield.splats import losses, ssim_cpu


@pytest.mark.parametrize("shape", [(64, 48, 3), (9, 31, 3), (7, 5, 1), (4, 13, 2)])  # some below the window
def test_compiled_ssim_matches_the_reference_in_value_and_gradient(shape):
    gen = torch.Generator().manual_seed(sum(shape))
    a = torch.rand(*shape, generator=gen, requires_grad=True)
    b = (a.detach() * 0.7 + 0.3 * torch.rand(*shape, generator=gen)).clamp(0, 1)  # related, as a fit's are
    ref = losses.ssim(a, b, compiled=False)
    (g_ref,) = torch.autograd.grad(2.5 * ref, a)
    got = losses.ssim(a, b, compiled=True)
    (g_got,) = torch.autograd.grad(2.5 * got, a)
    assert got.dtype == torch.float32 and got.shape == ()
    assert float(got.detach()) == pytest.approx(float(ref.detach()), abs=1e-6)
    assert float((g_got - g_ref).abs().max()) <= 1e-5 * float(g_ref.abs().max())
    assert float(g_ref.abs().max()) > 0


def test_identical_images_score_one_and_the_default_picks_the_kernel_on_the_cpu():
    a = torch.rand(20, 24, 3)
    assert float(losses.ssim(a, a)) == pytest.approx(1.0, abs=1e-5)
    assert ssim_cpu.supported(a, a, 11)
    assert not ssim_cpu.supported(a.double(), a.double(), 11)  # float64: the reference
    assert not ssim_cpu.supported(a, a, 10)  # an even window: the reference
    assert not ssim_cpu.supported(a, a.clone().requires_grad_(), 11)  # a gradient for the target: the reference
    with pytest.raises(ValueError, match="float32"):
        ssim_cpu.ssim(a.double(), a.double(), losses._kernel_1d(11, 1.5))


def test_compiled_ssim_by_a_plain_formula():
    """One pixel by hand: the 11-tap blur of a constant image away from the border is the
    constant, so SSIM there is the textbook formula of two constants."""
    a = torch.full((40, 40, 1), 0.6)
    b = torch.full((40, 40, 1), 0.2)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    inner = (2 * 0.6 * 0.2 + c1) * c2 / ((0.6 ** 2 + 0.2 ** 2 + c1) * c2)
    mu = ssim_cpu._blur(ssim_cpu._five_maps(a.numpy().reshape(40, 40), b.numpy().reshape(40, 40)),
                        losses._kernel_1d(11, 1.5).numpy(), 1)
    assert np.allclose(mu[:, 20, 20], [0.6, 0.2, 0.36, 0.04, 0.12], atol=1e-6)
    # the SSIM map at an inner pixel, from the kernel's own sum over a one-pixel crop of mu
    assert ssim_cpu._ssim_sum(np.ascontiguousarray(mu[:, 20:21, 20:21])) == pytest.approx(inner, rel=1e-4)


def test_compiled_ssim_gradient_stays_finite_where_the_formula_crosses_zero():
    """Rendered colours leave [0, 1] (SH before clamping) and a fit's first images anti-correlate
    with the target: the numerator's factors (2 mu_x mu_y + C1, 2 sigma_xy + C2) cross zero
    there, and a gradient divided by them was NaN on the fox at step 413."""
    gen = torch.Generator().manual_seed(7)
    b = torch.rand(40, 56, 3, generator=gen)
    a = (0.5 - b + 0.05 * torch.randn(40, 56, 3, generator=gen)).requires_grad_()  # around 0, anti-correlated
    ref = losses.ssim(a, b, compiled=False)
    (g_ref,) = torch.autograd.grad(ref, a)
    got = losses.ssim(a, b, compiled=True)
    (g_got,) = torch.autograd.grad(got, a)
    assert torch.isfinite(g_got).all()
    assert float(got.detach()) == pytest.approx(float(ref.detach()), abs=1e-5)
    assert float((g_got - g_ref).abs().max()) <= 1e-4 * float(g_ref.abs().max())


def test_ssim_coefficients_where_the_numerator_is_exactly_zero():
    """At mu_x = 0.5, mu_y = -C1 the factor 2 mu_x mu_y + C1 is exactly 0 (so s = 0): the
    derivatives are still finite, as the float64 formula over D = B1 B2 gives them."""
    c1, c2 = np.float32(0.01 ** 2), np.float32(0.03 ** 2)
    mx, my, exx, eyy, exy = 0.5, float(-c1), 0.3, 0.2, 0.1
    mu = np.array([mx, my, exx, eyy, exy], dtype=np.float32).reshape(5, 1, 1)
    got = ssim_cpu._ssim_coefficients(mu, np.float32(1.0))[:, 0, 0]
    a1 = 2 * mx * my + float(c1)
    a2 = 2 * (exy - mx * my) + float(c2)
    b1 = mx ** 2 + my ** 2 + float(c1)
    b2 = exx - mx ** 2 + eyy - my ** 2 + float(c2)
    d = b1 * b2
    s = a1 * a2 / d
    want = [(2 * my * (a2 - a1) - 2 * mx * s * (b2 - b1)) / d, -s * b1 / d, 2 * a1 / d]
    assert np.isfinite(got).all()
    assert np.allclose(got, want, rtol=1e-4, atol=1e-6)
