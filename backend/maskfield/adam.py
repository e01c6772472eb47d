# SPDX-License-Identifier: GPL-3.0-or-later
"""Adam for the colour fit and the mask field, without torch.optim.

torch.optim's optimizers wrap their methods in ``torch._disable_dynamo``, whose first call
imports ``torch._dynamo``: 1.6-2.5 s of each command on a 2-core CPU (4 s under a profiler),
for a compiler we never use. This class keeps torch.optim.Adam's layout (``param_groups`` of dicts with
"params" and "lr", ``state[param]`` with "step", "exp_avg", "exp_avg_sq"), which gsplat's
densification edits in place, and its ``state_dict`` format, so fit checkpoints written by
either load into the other. The update is torch's own fused Adam kernel on the CPU and CUDA
(``torch._fused_adam_``, what ``Adam(fused=True)`` runs) and the same arithmetic in plain
tensor ops elsewhere (Apple's MPS; float32 only): ``adam_reference``, which the tests hold
to torch.optim.Adam.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, Iterable

import torch

FUSED_DEVICES = ("cpu", "cuda")
# the rest of torch.optim.Adam's hyperparameters, at the values this class runs with: written
# into state_dict so that torch.optim.Adam can load it
TORCH_ADAM_FIXED = {"weight_decay": 0.0, "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                    "differentiable": False, "fused": None, "decoupled_weight_decay": False}


class Adam:
    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        groups = list(params)
        if not groups:
            raise ValueError("Adam got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.defaults = {"lr": lr, "betas": tuple(betas), "eps": eps}
        self.param_groups: list[dict[str, Any]] = []
        for group in groups:
            group = {**self.defaults, **group}
            group["params"] = [group["params"]] if isinstance(group["params"], torch.Tensor) else list(group["params"])
            self.param_groups.append(group)
        self.state: defaultdict[torch.Tensor, dict] = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            for p in params:
                state = self.state[p]
                if not state:
                    # a float32 step counter on the parameter's device, as torch's fused Adam keeps it
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            states = [self.state[p] for p in params]
            steps = [s["step"] for s in states]
            torch._foreach_add_(steps, 1.0)
            beta1, beta2 = group["betas"]
            args = (params, [p.grad for p in params], [s["exp_avg"] for s in states],
                    [s["exp_avg_sq"] for s in states])
            if params[0].device.type in FUSED_DEVICES and params[0].dtype == torch.float32:
                torch._fused_adam_(*args, [], steps, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=0.0,
                                   eps=group["eps"], amsgrad=False, maximize=False)
            else:
                for p, g, m, v, t in zip(*args, steps):
                    adam_reference(p, g, m, v, float(t), group["lr"], beta1, beta2, group["eps"])

    def state_dict(self) -> dict:
        """torch.optim.Optimizer's format: parameters by their index over the groups."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            ids = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append({**TORCH_ADAM_FIXED, **{k: v for k, v in group.items() if k != "params"}, "params": ids})
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, saved: dict) -> None:
        if len(saved["param_groups"]) != len(self.param_groups):
            raise ValueError("the saved optimizer has another number of parameter groups")
        self.state = defaultdict(dict)
        for group, saved_group in zip(self.param_groups, saved["param_groups"]):
            if len(saved_group["params"]) != len(group["params"]):
                raise ValueError("a saved parameter group holds another number of parameters")
            for key in ("lr", "betas", "eps"):
                if key in saved_group:
                    group[key] = tuple(saved_group[key]) if key == "betas" else saved_group[key]
            for p, i in zip(group["params"], saved_group["params"]):
                if i in saved["state"]:
                    s = saved["state"][i]
                    step = torch.as_tensor(s["step"], dtype=torch.float32).reshape(()).to(p.device, copy=True)
                    # copies: the moments are updated in place, and must not be the saved dict's
                    self.state[p] = {"step": step, "exp_avg": s["exp_avg"].to(p, copy=True),
                                     "exp_avg_sq": s["exp_avg_sq"].to(p, copy=True)}


def adam_reference(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                   step: float, lr: float, beta1: float, beta2: float, eps: float) -> None:
    """One Adam update in plain tensor ops, in place (``step`` counts from 1)."""
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias1 = 1 - beta1 ** step
    bias2_sqrt = math.sqrt(1 - beta2 ** step)
    denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-lr / bias1)
