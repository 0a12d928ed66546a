"""transformers.Trainer with hfft's optimizer and schedule: discriminative AdamW over layer groups and the
two-phase one-cycle plan. Everything else (loops, mixed precision, Accelerate, checkpoints) is the Trainer's.

One invariant the freeze relies on: the Trainer wraps the model (DDP, FSDP, DeepSpeed) in train() before any
callback's on_train_begin, so the model is wrapped with every parameter trainable and only then frozen
(FreezeCallback). DDP decides which parameters it all-reduces when it is built: built around a frozen body, it
would never sync the body's gradients after unfreezing, and the ranks would silently drift apart.
FreezeCallback refuses to freeze a distributed model that is not wrapped yet (`wrapped_model`)."""

from __future__ import annotations

from transformers import Trainer

from .errors import HfftError
from .layers import LayerGroup
from .optim import build_optimizer, no_decay_names
from .schedule import FineTunePlan, FineTuneScheduler


class FineTuneTrainer(Trainer):
    def __init__(self, *args, groups: list[LayerGroup], norm_names: set[str], plan_kwargs: dict,
                 total_epochs: int, on_plan=None, lr_scales: dict[str, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.groups, self.norm_names = groups, norm_names
        # Decided now, on the unwrapped model: FSDP hands create_optimizer its flat 1-D shards.
        self.no_decay_names = no_decay_names(self.model, norm_names)
        self.lr_scales = lr_scales  # parameter name -> learning-rate multiplier (LoRA+)
        self.plan_kwargs, self.total_epochs = plan_kwargs, total_epochs
        self.on_plan = on_plan  # called with the plan once the number of steps per epoch is known
        self.plan: FineTunePlan | None = None

    def create_optimizer(self, model=None):
        # FSDP: the Trainer delays this until the model is wrapped, and passes the wrapped model.
        if self.optimizer is None:
            self.optimizer = build_optimizer(self.model if model is None else model, self.groups,
                                             self.args.weight_decay, self.no_decay_names,
                                             fused=self.args.optim == "adamw_torch_fused", lr_scales=self.lr_scales)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            steps_per_epoch, rest = divmod(num_training_steps, self.total_epochs)
            if rest:
                raise HfftError("hfft schedules by whole epochs: remove max_steps from the training arguments "
                                "and set train.epochs / train.freeze_epochs instead.")
            self.plan = FineTunePlan.build(n_groups=len(self.groups), steps_per_epoch=steps_per_epoch,
                                           **self.plan_kwargs)
            if self.on_plan is not None:
                self.on_plan(self.plan)
            self.lr_scheduler = FineTuneScheduler(optimizer or self.optimizer, self.plan)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _get_learning_rate(self) -> float:
        # The Trainer logs one learning rate; the head's is the one fastai's base_lr refers to.
        # Every group's is in <run>/log.jsonl.
        return self.optimizer.param_groups[-1]["lr"]
