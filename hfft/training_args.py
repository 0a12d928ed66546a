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
}

# Their least sensible values: below these TrainingArguments still starts, then fails or misbehaves.
ARG_MINIMUM = {"gradient_accumulation_steps": 1, "eval_accumulation_steps": 1, "dataloader_num_workers": 0,
               "max_grad_norm": 0, "save_total_limit": 1}

NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def training_fields() -> dict:
    from transformers import TrainingArguments  # imported here: the config schema itself stays light

    return {f.name: f.type for f in dataclasses.fields(TrainingArguments)}


def check_training_args(args: dict) -> None:
    """TrainingArguments fields only, none that hfft sets itself, each of its field's type; numbers finite.
    Numbers YAML 1.1 read as text (1e-8) become floats in place."""
    fields = training_fields()
    for key, value in args.items():
        name = f"train.args.{key}"
        if key in MANAGED_ARGS:
            raise HfftError(f"{name} is set by hfft; use {MANAGED_ARGS[key]!r} instead.")
        if key not in fields:
            raise HfftError(f"Unknown training argument {name}.{suggest(key, fields)} train.args takes "
                            "transformers.TrainingArguments fields.")
        if _admits(fields[key], float) and isinstance(value, str) and NUMBER.fullmatch(value.strip()):
            args[key] = value = float(value)
        if not _fits(value, fields[key]):
            shown = "a value that is hidden here" if "token" in key else repr(value)
            raise HfftError(f"{name} must be {_type_text(fields[key])}, got {shown}.")
        if isinstance(value, float) and math.isnan(value):
            raise HfftError(f"{name} must be a number, got NaN.")
        if key in ARG_MINIMUM and value is not None and value < ARG_MINIMUM[key]:
            raise HfftError(f"{name} must be >= {ARG_MINIMUM[key]} (got {value!r}).")


def _options(annotation) -> tuple:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _admits(annotation, kind) -> bool:
    return kind in _options(annotation)


def _fits(value, annotation) -> bool:
    options = _options(annotation)
    if len(options) > 1:
        return any(_fits(value, option) for option in options)
    if annotation is type(None):
        return value is None
    if annotation in (int, float) and isinstance(value, bool):
        return False
    if annotation is float:
        return isinstance(value, (int, float))
    if annotation is str:
        return isinstance(value, (str, os.PathLike))  # a path given as pathlib.Path
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return isinstance(value, (str, annotation))  # TrainingArguments names a wrong choice itself
    annotation = typing.get_origin(annotation) or annotation
    return isinstance(value, annotation) if isinstance(annotation, type) else True


def _type_text(annotation) -> str:
    return re.sub(r"<class '(\w+)'>|[\w.]+\.(\w+)", lambda m: m.group(1) or m.group(2), str(annotation))
