"""The `train.args` section: extra transformers.TrainingArguments, checked by name and type when the config is
validated. TrainingArguments itself takes gradient_accumulation_steps="two" or max_grad_norm=NaN without complaint
and fails (or trains on garbage) an hour later."""

from __future__ import annotations

import dataclasses
import enum
import math
import os
import re
import types
import typing

from .errors import HfftError, suggest

# TrainingArguments that hfft sets from its own config; passing them directly would be silently overridden.
MANAGED_ARGS = {
    "learning_rate": "base_lr", "num_train_epochs": "epochs / freeze_epochs", "max_steps": "epochs",
    "lr_scheduler_type": "(the fine_tune schedule)", "warmup_steps": "pct_start", "warmup_ratio": "pct_start",
    "weight_decay": "weight_decay", "per_device_train_batch_size": "batch_size", "seed": "seed",
    "per_device_eval_batch_size": "eval_batch_size", "output_dir": "output_dir", "optim": "(AdamW)",
    "data_seed": "seed", "remove_unused_columns": "(always False: image transforms need the raw columns)",
}

# Their sensible values: outside these TrainingArguments still starts, then fails or misbehaves (Adam with
# beta1 = 5 diverges, label smoothing of -1 trains on negative targets, logging_steps = -1 never logs).
_UNIT = (lambda v: 0 <= v < 1, "between 0 (included) and 1 (excluded)")
_STEPS = (lambda v: v > 0 and (v < 1 or float(v).is_integer()),
          "> 0: a fraction of all steps when below 1, else a whole number of steps")
ARG_RANGES = {
    "adam_beta1": _UNIT, "adam_beta2": _UNIT, "label_smoothing_factor": _UNIT,
    "adam_epsilon": (lambda v: v > 0, "> 0"),
    "max_grad_norm": (lambda v: v >= 0, ">= 0 (0: no clipping)"),
    "logging_steps": _STEPS, "eval_steps": _STEPS, "save_steps": _STEPS,
    "eval_delay": (lambda v: v >= 0, ">= 0"),
    "neftune_noise_alpha": (lambda v: v >= 0, ">= 0"),
    "gradient_accumulation_steps": (lambda v: v >= 1, ">= 1"),
    "eval_accumulation_steps": (lambda v: v >= 1, ">= 1"),
    "torch_empty_cache_steps": (lambda v: v >= 1, ">= 1"),
    "save_total_limit": (lambda v: v >= 1, ">= 1"),
    "dataloader_num_workers": (lambda v: v >= 0, ">= 0"),
    "dataloader_prefetch_factor": (lambda v: v >= 1, ">= 1"),
    "ddp_timeout": (lambda v: v > 0, "> 0 (seconds)"),
    "ddp_bucket_cap_mb": (lambda v: v > 0, "> 0"),
}

NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def training_fields() -> dict:
    from transformers import TrainingArguments  # imported here: the config schema itself stays light

    return {f.name: f.type for f in dataclasses.fields(TrainingArguments)}


def check_training_args(args: dict) -> None:
    """TrainingArguments fields only, none that hfft sets itself, each of its field's type and plain data (what
    hfft.yaml can hold); numbers finite and in their sensible range (ARG_RANGES). Done in place: numbers YAML 1.1
    read as text (1e-8) become floats, enum members their values, paths text."""
    fields = training_fields()
    for key, value in args.items():
        name = f"train.args.{key}"
        if key in MANAGED_ARGS:
            raise HfftError(f"{name} is set by hfft; use {MANAGED_ARGS[key]!r} instead.")
        if key not in fields:
            raise HfftError(f"Unknown training argument {name}.{suggest(key, fields)} train.args takes "
                            "transformers.TrainingArguments fields.")
        if _admits(fields[key], float) and isinstance(value, str) and NUMBER.fullmatch(value.strip()):
            value = float(value)
        args[key] = value = plain(value, name)
        if not fits(value, fields[key]):
            shown = "a value that is hidden here" if "token" in key else repr(value)
            raise HfftError(f"{name} must be {type_text(fields[key])}, got {shown}.")
        check_range(name, value, ARG_RANGES.get(key))


def check_range(name: str, value, allowed) -> None:
    """HfftError unless a number `value` passes `allowed`, a (test, text) pair (None: any value)."""
    if allowed is not None and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and not allowed[0](value):
        raise HfftError(f"{name} must be {allowed[1]} (got {value!r}).")


def plain(value, name: str):
    """`value` as plain data that hfft.yaml holds and gives back equal: None, true/false, finite numbers, text,
    and lists and text-keyed mappings of them. Enum members become their values, tuples lists, paths text, numpy
    scalars Python numbers; anything else (objects, NaN, infinity) is an HfftError naming `name`."""
    if isinstance(value, enum.Enum):
        value = value.value
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        value = value.item()  # np.float32(0.9), np.int64(4): yaml cannot write numpy scalars
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):  # NaN fails no comparison, so no range check would catch it
            raise HfftError(f"{name} must be a finite number, got {value!r}.")
        return float(value)
    if isinstance(value, (str, os.PathLike)):
        return str(os.fspath(value))
    if isinstance(value, (list, tuple)):
        return [plain(item, f"{name}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        keys = [k for k in value if not isinstance(k, str)]
        if keys:
            raise HfftError(f"{name} must be a mapping with text keys, got the key {keys[0]!r}.")
        return {str(k): plain(v, f"{name}.{k}") for k, v in value.items()}
    raise HfftError(f"{name} must be plain data that the run's hfft.yaml can hold (a number, text, true/false, or "
                    f"a list or text-keyed mapping of them), got a value of type {type(value).__name__}.")


def _options(annotation) -> tuple:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _admits(annotation, kind) -> bool:
    return kind in _options(annotation)


def fits(value, annotation) -> bool:
    """Whether `value` (plain data) is of a dataclass field's annotation; shared with lora.peft_args."""
    options = _options(annotation)
    if len(options) > 1:
        return any(fits(value, option) for option in options)
    if annotation is type(None):
        return value is None
    if annotation is typing.Any:
        return True
    if annotation in (int, float) and isinstance(value, bool):
        return False
    if annotation is float:
        return isinstance(value, (int, float))
    if annotation is str:
        return isinstance(value, (str, os.PathLike))  # a path given as pathlib.Path
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, (str, annotation))  # TrainingArguments names a wrong choice itself
    if dataclasses.is_dataclass(annotation):
        return isinstance(value, dict)  # a settings object (peft's LoftQConfig, ...), given as its fields
    origin, inner = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:  # 'pissa_niter_[number of iters]' stands for pissa_niter_16, ...
        return value in inner or isinstance(value, str) and any(
            isinstance(c, str) and "[" in c and value.startswith(c.split("[")[0]) and value != c.split("[")[0]
            for c in inner)
    if origin in (list, tuple) and isinstance(value, (list, tuple)):  # plain data: tuples arrive as lists
        if origin is tuple and inner and inner[-1] is not Ellipsis:
            return len(value) == len(inner) and all(fits(v, a) for v, a in zip(value, inner))
        return not inner or all(fits(v, inner[0]) for v in value)
    if origin is dict and isinstance(value, dict) and len(inner) == 2:
        return all(fits(k, inner[0]) and fits(v, inner[1]) for k, v in value.items())
    annotation = origin or annotation
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def type_text(annotation) -> str:
    return re.sub(r"<class '(\w+)'>|[\w.]+\.(\w+)", lambda m: m.group(1) or m.group(2), str(annotation))
