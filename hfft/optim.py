"""The optimizer over layer groups: AdamW with fastai's Adam settings, one param-group pair per layer group.

Every parameter is in the optimizer from the start, frozen or not: transformers' Trainer only keeps parameters
that require grad when the optimizer is created, so a body frozen at that moment would never be trained later.
Frozen parameters get no gradient, and AdamW skips parameters without one (no update, no weight decay)."""

from __future__ import annotations

import torch

from .layers import LayerGroup

# fastai's Adam: eps 1e-5 and sqr_mom 0.99 (beta2); beta1 is cycled by the scheduler, starting at 0.95.
ADAM_BETAS = (0.95, 0.99)
ADAM_EPS = 1e-5


def no_decay(name: str, param: torch.nn.Parameter, norm_names: set[str]) -> bool:
    """Norm weights and biases are not decayed: shrinking a scale or an offset towards 0 is not regularisation."""
    return name in norm_names or name.endswith("bias") or param.ndim < 2


def param_groups(model: torch.nn.Module, groups: list[LayerGroup], weight_decay: float,
                 norm_names: set[str], lr_scales: dict[str, float] | None = None) -> list[dict]:
    """Per layer group: decayed and non-decayed parameters. `lr_scales` (LoRA+: the B matrices) puts parameters in
    groups of their own whose learning rate is the layer group's times "lr_scale"."""
    params = dict(model.named_parameters())
    scales = lr_scales or {}
    out = []
    for index, group in enumerate(groups):
        for scale in sorted({scales.get(n, 1.0) for n in group.param_names}):
            names = [n for n in group.param_names if scales.get(n, 1.0) == scale]
            decay = [params[n] for n in names if not no_decay(n, params[n], norm_names)]
            plain = [params[n] for n in names if no_decay(n, params[n], norm_names)]
            for members, wd in ((decay, weight_decay), (plain, 0.0)):
                if members:
                    entry = {"params": members, "weight_decay": wd, "layer_group": index, "group_name": group.name}
                    out.append(entry if scale == 1.0 else {**entry, "lr_scale": scale})
    return out


def build_optimizer(model, groups, weight_decay, norm_names, fused: bool = False,
                    lr_scales: dict[str, float] | None = None) -> torch.optim.AdamW:
    """fused: the single-kernel AdamW the Trainer itself picks by default on recent torch (faster than foreach)."""
    return torch.optim.AdamW(param_groups(model, groups, weight_decay, norm_names, lr_scales), lr=0.0,
                             betas=ADAM_BETAS, eps=ADAM_EPS, fused=fused or None)
