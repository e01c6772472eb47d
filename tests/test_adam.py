"""Our Adam (torch's fused kernel, without torch.optim) against torch.optim.Adam: the same
parameters after many steps, the same checkpoints both ways, the state layout gsplat's
densification edits, the plain-tensor reference (the MPS path), and no torch._dynamo import."""
from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch

from conftest import ROOT
from maskfield.adam import Adam, adam_reference


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(50, 3, generator=gen).requires_grad_()
    b = torch.randn(7, generator=gen).requires_grad_()
    grads = [(torch.randn(50, 3, generator=gen), torch.randn(7, generator=gen)) for _ in range(40)]
    return a, b, grads


def _run(optimizer, params, grads, lr_decay=0.97):
    for ga, gb in grads:
        params[0].grad, params[1].grad = ga.clone(), gb.clone()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        for group in optimizer.param_groups:
            group["lr"] *= lr_decay


@pytest.mark.parametrize("eps", [1e-8, 1e-15])
def test_matches_torch_adam_over_many_steps(eps):
    a, b, grads = _problem()
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    ours = Adam([{"params": [a], "lr": 0.05, "name": "a"}, {"params": [b], "lr": 0.01}], eps=eps)
    theirs = torch.optim.Adam([{"params": [a2], "lr": 0.05}, {"params": [b2], "lr": 0.01}], eps=eps)
    _run(ours, [a, b], grads)
    _run(theirs, [a2, b2], grads)
    torch.testing.assert_close(a, a2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b, b2, rtol=1e-5, atol=1e-6)
    assert float(ours.state[a]["step"]) == 40
    assert not torch.equal(a.detach(), _problem()[0].detach())  # it moved


def test_the_reference_matches_torch_adam_in_float32():
    a, _, grads = _problem(1)
    a2 = a.detach().clone().requires_grad_()
    m, v = torch.zeros_like(a), torch.zeros_like(a)
    theirs = torch.optim.Adam([a2], lr=0.02, eps=1e-15, foreach=False)
    for step, (ga, _) in enumerate(grads, start=1):
        with torch.no_grad():
            adam_reference(a, ga, m, v, float(step), 0.02, 0.9, 0.999, 1e-15)
        a2.grad = ga.clone()
        theirs.step()
    torch.testing.assert_close(a, a2, rtol=1e-5, atol=1e-6)
    assert a.dtype == m.dtype == v.dtype == torch.float32


def test_checkpoints_load_both_ways_and_resume_the_same():
    a, b, grads = _problem(2)
    ours = Adam([{"params": [a], "lr": 0.05}, {"params": [b], "lr": 0.01}])
    _run(ours, [a, b], grads[:20])

    # ours -> torch.optim.Adam: both continue identically
    a2, b2 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    theirs = torch.optim.Adam([{"params": [a2], "lr": 1.0}, {"params": [b2], "lr": 1.0}], fused=True)
    theirs.load_state_dict(copy.deepcopy(ours.state_dict()))  # torch's keeps the tensors it is given
    assert theirs.param_groups[0]["lr"] == pytest.approx(ours.param_groups[0]["lr"])

    # torch.optim.Adam -> ours (a fit checkpoint written before this class)
    a3, b3 = a.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    again = Adam([{"params": [a3], "lr": 1.0}, {"params": [b3], "lr": 1.0}])
    again.load_state_dict(theirs.state_dict())
    assert float(again.state[a3]["step"]) == 20

    _run(ours, [a, b], grads[20:])
    _run(theirs, [a2, b2], grads[20:])
    _run(again, [a3, b3], grads[20:])
    torch.testing.assert_close(a2, a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a3, a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b3, b, rtol=1e-5, atol=1e-6)

    wrong = Adam([a3])
    with pytest.raises(ValueError, match="number of parameter groups"):
        wrong.load_state_dict(ours.state_dict())


def test_gsplat_densification_edits_its_state():
    # gsplat's strategy replaces a parameter and its moments by index (duplicate, split, prune)
    from gsplat.strategy.ops import remove

    params = torch.nn.ParameterDict({"means": torch.nn.Parameter(torch.randn(6, 3)),
                                     "opacities": torch.nn.Parameter(torch.randn(6))})
    optimizers = {k: Adam([{"params": [p], "lr": 0.01, "name": k}]) for k, p in params.items()}
    (params["means"].sum() + params["opacities"].sum()).backward()
    for opt in optimizers.values():
        opt.step()
    before = optimizers["means"].state[params["means"]]["exp_avg"].clone()
    mask = torch.tensor([False, True, False, False, True, False])
    remove(params=params, optimizers=optimizers, state={}, mask=mask)
    new = params["means"]
    assert new.shape == (4, 3) and optimizers["means"].param_groups[0]["params"][0] is new
    torch.testing.assert_close(optimizers["means"].state[new]["exp_avg"], before[~mask])
    new.grad = torch.ones_like(new)
    optimizers["means"].step()  # the edited state steps on
    assert float(optimizers["means"].state[new]["step"]) == 2


def test_using_it_does_not_import_torch_dynamo():
    code = ("import sys, torch\nfrom maskfield.adam import Adam\n"
            "p = torch.zeros(3, requires_grad=True); opt = Adam([p], lr=0.1)\n"
            "p.grad = torch.ones(3); opt.step(); opt.zero_grad(); opt.state_dict()\n"
            "print('torch._dynamo' in sys.modules, float(p[0]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "backend")})
    assert out.returncode == 0, out.stderr
    imported, value = out.stdout.split()
    assert imported == "False" and float(value) == pytest.approx(-0.1, rel=1e-3)
