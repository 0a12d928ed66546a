"""The fine_tune schedule: fastai's one-cycle policy, per layer group, over a frozen and an unfrozen phase.

fastai's `Learner.fine_tune(epochs, base_lr, freeze_epochs, lr_mult, pct_start=0.3, div=5)` is
    freeze();   fit_one_cycle(freeze_epochs, slice(base_lr), pct_start=0.99)
    base_lr /= 2
    unfreeze(); fit_one_cycle(epochs, slice(base_lr/lr_mult, base_lr), pct_start, div)
with fit_one_cycle's defaults div=25, div_final=1e5, moms=(0.95, 0.85, 0.95). `slice(lr)` gives the last group lr
and every other group lr/10; `slice(lo, hi)` spreads geometrically from lo (first group) to hi (last group).
Here both phases are one plan over global optimizer steps, so a resumed run recomputes its place from the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MOMS = (0.95, 0.85, 0.95)  # Adam's beta1 follows the inverse of the lr cycle, as in fastai
DIV_FINAL = 1e5


def cos_anneal(start: float, end: float, pos: float) -> float:
    """Half a cosine from start (pos=0) to end (pos=1)."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def combined_cos(pos: float, pct_start: float, start: float, middle: float, end: float) -> float:
    """Cosine warm-up from start to middle over pct_start of the phase, then cosine down to end."""
    if pos < pct_start:
        return cos_anneal(start, middle, pos / pct_start)
    return cos_anneal(middle, end, (pos - pct_start) / (1 - pct_start))


def even_mults(start: float, stop: float, n: int) -> list[float]:
    """n values spaced geometrically from start to stop (fastai's discriminative learning rates)."""
    if n == 1:
        return [stop]
    step = (stop / start) ** (1 / (n - 1))
    return [start * step**i for i in range(n)]


@dataclass(frozen=True)
class Phase:
    name: str  # "frozen" | "unfrozen"
    first_step: int
    n_steps: int
    lr_max: tuple[float, ...]  # one per layer group
    pct_start: float
    div: float

    def lr(self, step: int, group: int) -> float:
        pos = (step - self.first_step) / self.n_steps
        top = self.lr_max[group]
        return combined_cos(pos, self.pct_start, top / self.div, top, top / DIV_FINAL)

    def beta1(self, step: int) -> float:
        return combined_cos((step - self.first_step) / self.n_steps, self.pct_start, *MOMS)


@dataclass(frozen=True)
class FineTunePlan:
    phases: tuple[Phase, ...]

    @classmethod
    def build(cls, *, n_groups: int, steps_per_epoch: int, epochs: int, freeze_epochs: int, base_lr: float,
              lr_mult: float, pct_start: float = 0.3, div: float = 5.0,
              zero_body_lr: bool = False) -> "FineTunePlan":
        """zero_body_lr: freeze the body by a learning rate of 0 in the frozen phase (for engines that cannot
        take requires_grad changes mid-run) instead of fastai's base_lr/10, which only trainable norms see."""
        phases, step = [], 0
        if freeze_epochs > 0:
            body_lr = 0.0 if zero_body_lr else base_lr / 10
            lrs = tuple([body_lr] * (n_groups - 1) + [base_lr])
            n = freeze_epochs * steps_per_epoch
            phases.append(Phase("frozen", step, n, lrs, pct_start=0.99, div=25.0))
            step += n
        if epochs > 0:
            half = base_lr / 2
            lrs = tuple(even_mults(half / lr_mult, half, n_groups))
            phases.append(Phase("unfrozen", step, epochs * steps_per_epoch, lrs, pct_start=pct_start, div=div))
        return cls(tuple(phases))

    @property
    def frozen_steps(self) -> int:
        return sum(p.n_steps for p in self.phases if p.name == "frozen")

    @property
    def total_steps(self) -> int:
        return sum(p.n_steps for p in self.phases)

    def phase_at(self, step: int) -> Phase:
        for phase in self.phases:
            if step < phase.first_step + phase.n_steps:
                return phase
        return self.phases[-1]  # the step after the last one (logged once at the end)

    def lr(self, step: int, group: int) -> float:
        return self.phase_at(step).lr(min(step, self.total_steps), group)


class FineTuneScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Sets every param group's lr (and Adam's beta1) from the plan at the current optimizer step.
    Each optimizer param group carries its layer-group index as "layer_group", and may carry an "lr_scale"."""

    def __init__(self, optimizer: torch.optim.Optimizer, plan: FineTunePlan, last_epoch: int = -1):
        self.plan = plan
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [self.plan.lr(self.last_epoch, g["layer_group"]) * g.get("lr_scale", 1.0)
                for g in self.optimizer.param_groups]

    def step(self, epoch=None):
        super().step()
        step = min(self.last_epoch, self.plan.total_steps)
        beta1 = self.plan.phase_at(step).beta1(step)
        for group in self.optimizer.param_groups:
            if "betas" in group:
                group["betas"] = (beta1, group["betas"][1])

    def state_dict(self):
        # The plan is rebuilt from the config on resume; only the step count is state.
        return {k: v for k, v in super().state_dict().items() if k != "plan"}
