"""The optimizer over layer groups: AdamW with fastai's Adam settings, one param-group pair per layer group.

Every parameter is in the optimizer from the start, frozen or not: transformers' Trainer only keeps parameters
that require grad when the optimizer is created, so a body frozen at that moment would never be trained later.
Frozen parameters get no gradient, and AdamW skips parameters without one (no update, no weight decay).

Under FSDP the Trainer builds the optimizer from the already wrapped model, whose parameter names carry the
wrappers' module names and whose parameters are flat 1-D shards: parameters are found by their names in the
unwrapped model (`unwrapped_parameters`), and which of them are decayed is decided once, before wrapping
(`no_decay_names`)."""

from __future__ import annotations

import re

import torch

from .errors import HfftError
from .layers import LayerGroup

# fastai's Adam: eps 1e-5 and sqr_mom 0.99 (beta2); beta1 is cycled by the scheduler, starting at 0.95.
ADAM_BETAS = (0.95, 0.99)
ADAM_EPS = 1e-5

# What wrappers insert into parameter names: FSDP v1 (every wrapped unit), activation checkpointing, torch.compile.
_WRAPPER_PARTS = re.compile(r"(?:^|(?<=\.))(?:_fsdp_wrapped_module|_checkpoint_wrapped_module|_orig_mod)\.")


def unwrapped_name(name: str) -> str:
    """A parameter's name as the unwrapped model has it."""
    return _WRAPPER_PARTS.sub("", name)


def unwrapped_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """model.named_parameters() keyed by the names of the unwrapped model, through DDP/DataParallel (`module.`),
    FSDP v1 with use_orig_params, activation checkpointing and torch.compile wrappers."""
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return {unwrapped_name(name): param for name, param in model.named_parameters()}


def no_decay(name: str, param: torch.nn.Parameter, norm_names: set[str]) -> bool:
    """Norm weights and biases are not decayed: shrinking a scale or an offset towards 0 is not regularisation.
    DeepSpeed ZeRO-3 partitions parameters as they load (an empty 1-D tensor each); ds_shape keeps the real one."""
    return name in norm_names or name.endswith("bias") or len(getattr(param, "ds_shape", param.shape)) < 2


def no_decay_names(model: torch.nn.Module, norm_names: set[str]) -> set[str]:
    """The parameters that get no weight decay, decided on the unwrapped model (FSDP flattens every shard to 1-D,
    which would make every weight look like a bias)."""
    return {name for name, param in model.named_parameters() if no_decay(name, param, norm_names)}


def param_groups(model: torch.nn.Module, groups: list[LayerGroup], weight_decay: float,
                 plain_names: set[str], lr_scales: dict[str, float] | None = None) -> list[dict]:
    """Per layer group: decayed and non-decayed (`plain_names`, from no_decay_names) parameters. `lr_scales`
    (LoRA+: the B matrices) puts parameters in groups of their own whose learning rate is the layer group's times
    "lr_scale". `model` may be wrapped (see unwrapped_parameters)."""
    params = unwrapped_parameters(model)
    missing = [n for g in groups for n in g.param_names if n not in params]
    if missing:
        flat = any("_flat_param" in n for n in params)
        raise HfftError(f"The optimizer cannot find {len(missing)} layer-group parameters in the model it was given "
                        f"(first: {missing[0]!r})."
                        + (" FSDP flattened them: set fsdp_use_orig_params: true in the Accelerate config "
                           "(recipes/accelerate/fsdp.yaml does)." if flat else ""))
    scales = lr_scales or {}
    out = []
    for index, group in enumerate(groups):
        for scale in sorted({scales.get(n, 1.0) for n in group.param_names}):
            names = [n for n in group.param_names if scales.get(n, 1.0) == scale]
            decay = [params[n] for n in names if n not in plain_names]
            plain = [params[n] for n in names if n in plain_names]
            for members, wd in ((decay, weight_decay), (plain, 0.0)):
                if members:
                    entry = {"params": members, "weight_decay": wd, "layer_group": index, "group_name": group.name}
                    out.append(entry if scale == 1.0 else {**entry, "lr_scale": scale})
    return out


def build_optimizer(model, groups, weight_decay, plain_names: set[str], fused: bool = False,
                    lr_scales: dict[str, float] | None = None) -> torch.optim.AdamW:
    """fused: the single-kernel AdamW the Trainer itself picks by default on recent torch (faster than foreach)."""
    return torch.optim.AdamW(param_groups(model, groups, weight_decay, plain_names, lr_scales), lr=0.0,
                             betas=ADAM_BETAS, eps=ADAM_EPS, fused=fused or None)


def reset_state(optimizer, params: list[torch.nn.Parameter]) -> bool:
    """Forget the optimizer's state (AdamW's moments and step count) for `params`, as if they had never been
    stepped. False when the optimizer does not keep state per parameter (DeepSpeed's flat partitions)."""
    inner = optimizer
    while not isinstance(inner, torch.optim.Optimizer) and hasattr(inner, "optimizer"):
        inner = inner.optimizer  # accelerate's AcceleratedOptimizer
    if not isinstance(inner, torch.optim.Optimizer):
        return False
    owned = {id(p) for group in inner.param_groups for p in group["params"]}
    if not params or not all(id(p) in owned for p in params):
        return False
    for param in params:
        inner.state.pop(param, None)
    return True
