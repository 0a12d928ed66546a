"""Run by tests/test_faults.py in a subprocess: fine_tune that kills itself with a signal at a given step.

    python tests/fault_probe.py MODEL DATA OUTPUT_DIR STEP SIGNAL   (SIGNAL: KILL or INT)
"""

import os
import signal
import sys

from transformers import TrainerCallback

from hfft import fine_tune

SETTINGS = {"freeze_epochs": 1, "epochs": 2, "batch_size": 16, "eval_strategy": "no", "save_strategy": "steps",
            "save_steps": 4, "save_total_limit": None}


class KillAt(TrainerCallback):
    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.signum)


if __name__ == "__main__":
    model, data, out, step, name = sys.argv[1:6]
    signum = {"KILL": signal.SIGKILL, "INT": signal.SIGINT}[name]
    fine_tune(model=model, data=data, output_dir=out, callbacks=[KillAt(int(step), signum)], **SETTINGS)
