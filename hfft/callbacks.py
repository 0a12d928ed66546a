"""Trainer callbacks: the freeze/unfreeze switch and the per-group learning-rate log.

Whether the body is frozen is derived from the global step every time (never remembered), so a run resumed
from any checkpoint lands in the right phase without replaying the switch."""

from __future__ import annotations

import json
import logging
import os

import transformers
from transformers import TrainerCallback

from .layers import LayerGroup
from .optim import reset_state, unwrapped_parameters
from .schedule import FineTunePlan

log = logging.getLogger("hfft")


class FreezeCallback(TrainerCallback):
    """Freezes every group but the head while global_step < plan.frozen_steps.

    Freezing is `requires_grad=False`: autograd then computes no gradient for the body, and the backward pass
    stops at the first trainable layer, so a frozen step really is cheaper. Norm-layer weights listed in
    `keep_trainable` (fastai's train_bn) stay trainable while frozen.

    With `by_requires_grad=False` (DeepSpeed/FSDP) the schedule's zero learning rate freezes the body instead;
    its gradients still reach AdamW, whose moments and step count would then start the unfrozen phase warm.
    At the first unfrozen step this callback forgets the body's optimizer state, so the body starts fresh as
    with requires_grad (and fastai) -- where the optimizer keeps state per parameter (not DeepSpeed's ZeRO)."""

    def __init__(self, model, groups: list[LayerGroup], keep_trainable: set[str] = frozenset()):
        # Parameters are looked up by name when the phase changes: resuming from an adapter checkpoint may
        # replace the parameter objects. Only the groups' parameters are touched: under LoRA the groups hold the
        # adapters and saved modules, and the base weights stay frozen throughout.
        self.model = model
        self.body = [n for g in groups[:-1] for n in g.param_names]
        self.plan: FineTunePlan | None = None  # set by the trainer once it knows the steps per epoch
        self.keep_trainable = set(keep_trainable)
        self.frozen: bool | None = None
        self.by_requires_grad = True  # False: the schedule's zero learning rate freezes the body instead
        # The model as the Trainer trains it (trainer.model_wrapped), to check that it was wrapped for distributed
        # training before the body is frozen (see hfft/trainer.py). None: not checked.
        self.wrapped_model = None

    def frozen_at(self, step: int) -> bool:
        return step < self.plan.frozen_steps

    def _body_params(self) -> list:
        params = unwrapped_parameters(self.model)
        return [params[name] for name in self.body]

    def _check_wrapped(self, args) -> None:
        """DDP registers the parameters it all-reduces when it wraps the model: a body frozen before that would
        never be synced after unfreezing. transformers wraps before on_train_begin; fail loudly if it stops."""
        if args is None or args.world_size <= 1 or self.wrapped_model is None:
            return
        if self.wrapped_model() is self.model:
            raise RuntimeError(
                f"hfft: the body is about to be frozen before the Trainer wrapped the model for its {args.world_size} "
                f"processes (transformers {transformers.__version__} changed the order hfft relies on). DDP would "
                "then never all-reduce the body's gradients after unfreezing. Use train.freeze_by=lr, or a "
                "transformers version that wraps the model before on_train_begin.")

    def apply(self, step: int, args=None, optimizer=None) -> None:
        frozen = self.frozen_at(step)
        if not self.by_requires_grad:
            if step == self.plan.frozen_steps > 0 and optimizer is not None:
                self._reset_body_state(optimizer, step)
            self.frozen = frozen
            return
        if frozen == self.frozen:
            return
        if frozen:
            self._check_wrapped(args)
        params = unwrapped_parameters(self.model)
        for name in self.body:
            params[name].requires_grad_(not frozen or name in self.keep_trainable)
        if self.frozen is not None or frozen:
            log.info("step %d: body %s", step, "frozen (training the head)" if frozen else "unfrozen")
        self.frozen = frozen

    def _reset_body_state(self, optimizer, step: int) -> None:
        # At every run's first unfrozen step, resumed or not: a checkpoint saved at the boundary holds the warm state.
        if reset_state(optimizer, self._body_params()):
            log.info("step %d: body unfrozen (learning rate no longer 0, optimizer state reset)", step)
        else:
            log.warning("step %d: body unfrozen; this optimizer keeps no per-parameter state hfft can reset, so "
                        "the body's Adam moments from the frozen phase (learning rate 0) carry over.", step)

    def on_train_begin(self, args, state, control, **kwargs):
        # The first freeze. The Trainer has wrapped the model (DDP) by now, with every parameter trainable, so DDP
        # syncs the body's gradients once it unfreezes; _check_wrapped fails loudly if that order ever changes.
        self.apply(state.global_step, args)

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.apply(state.global_step, args, optimizer)

    def on_train_end(self, args, state, control, **kwargs):
        self.apply(self.plan.total_steps)  # leave the model as users expect it: every group trainable


class GroupLRLog(TrainerCallback):
    """Records the learning rate of every layer group at every optimizer step, plus losses as they are logged,
    to `<run>/log.jsonl` on the main process (the source of the plots and of the LR-schedule tests)."""

    def __init__(self, path, group_names: list[str]):
        self.path, self.group_names = path, group_names
        self.plan: FineTunePlan | None = None  # set by the trainer once it knows the steps per epoch
        self.records: list[dict] = []

    def _record(self, state, **values) -> None:
        if not state.is_world_process_zero:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **values}
        self.records.append(record)
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        # The lrs the coming optimizer step will use, read from the optimizer itself, not recomputed.
        if optimizer is None:
            return
        lrs = {}
        for group in optimizer.param_groups:
            if group.get("lr_scale", 1.0) == 1.0:  # LoRA+'s B matrices run at a multiple of their group's lr
                lrs[f"lr/{self.group_names[group['layer_group']]}"] = group["lr"]
        phase = 1 if state.global_step < self.plan.frozen_steps else 2
        self._record(state, phase=phase, **lrs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        kept = {k: v for k, v in (logs or {}).items() if k in ("loss", "eval_loss", "eval_accuracy", "eval_f1_macro")}
        if kept:
            self._record(state, **kept)
