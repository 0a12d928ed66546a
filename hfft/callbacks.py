"""Trainer callbacks: the freeze/unfreeze switch and the per-group learning-rate log.

Whether the body is frozen is derived from the global step every time (never remembered), so a run resumed
from any checkpoint lands in the right phase without replaying the switch."""

from __future__ import annotations

import json
import logging
import os

from transformers import TrainerCallback

from .layers import LayerGroup
from .schedule import FineTunePlan

log = logging.getLogger("hfft")


class FreezeCallback(TrainerCallback):
    """Freezes every group but the head while global_step < plan.frozen_steps.

    Freezing is `requires_grad=False`: autograd then computes no gradient for the body, and the backward pass
    stops at the first trainable layer, so a frozen step really is cheaper. Norm-layer weights listed in
    `keep_trainable` (fastai's train_bn) stay trainable while frozen."""

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

    def frozen_at(self, step: int) -> bool:
        return step < self.plan.frozen_steps

    def apply(self, step: int) -> None:
        frozen = self.frozen_at(step)
        if frozen == self.frozen or not self.by_requires_grad:
            return
        params = dict(self.model.named_parameters())
        for name in self.body:
            params[name].requires_grad_(not frozen or name in self.keep_trainable)
        if self.frozen is not None or frozen:
            log.info("step %d: body %s", step, "frozen (training the head)" if frozen else "unfrozen")
        self.frozen = frozen

    def on_train_begin(self, args, state, control, **kwargs):
        self.apply(state.global_step)

    def on_step_begin(self, args, state, control, **kwargs):
        self.apply(state.global_step)

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
