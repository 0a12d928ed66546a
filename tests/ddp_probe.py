"""Run by tests/test_distributed.py under `accelerate launch` with 2 CPU processes (gloo): a full fine_tune that
records, per rank, the parameters when the body unfreezes and at the end, the examples of every training batch,
what evaluation counted, and when each process read the data.

    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml tests/ddp_probe.py MODEL DATA OUTPUT_DIR
"""

import json
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

import hfft.api
from hfft import fine_tune
from hfft.trainer import FineTuneTrainer


class Snapshots(TrainerCallback):
    def __init__(self):
        self.at_switch = None

    def on_step_begin(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        if self.at_switch is None and state.global_step == lr_scheduler.plan.frozen_steps:
            self.at_switch = {n: p.detach().clone() for n, p in model.named_parameters()}


def timed(fn, record):
    def wrapper(*args, **kwargs):
        record["data_start"] = time.time()
        try:
            return fn(*args, **kwargs)
        finally:
            record["data_end"] = time.time()

    return wrapper


if __name__ == "__main__":
    model, data, out = sys.argv[1:4]
    record = {}
    hfft.api.load_splits = timed(hfft.api.load_splits, record)
    from transformers import PreTrainedTokenizerBase

    record["tokenizer_calls"] = 0
    original_call = PreTrainedTokenizerBase.__call__

    def counting_call(self, *args, **kwargs):  # tokenising during data preparation (the collator only pads)
        record["tokenizer_calls"] += 1
        return original_call(self, *args, **kwargs)

    PreTrainedTokenizerBase.__call__ = counting_call

    record["batches"] = []  # per optimizer step, the token ids of each example this rank trained on
    original_step = FineTuneTrainer.training_step

    def recording_step(self, model, inputs, *args, **kwargs):
        ids, mask = inputs["input_ids"].tolist(), inputs["attention_mask"].tolist()
        record["batches"].append([[t for t, m in zip(row, keep) if m] for row, keep in zip(ids, mask)])
        return original_step(self, model, inputs, *args, **kwargs)

    FineTuneTrainer.training_step = recording_step
    snaps = Snapshots()
    result = fine_tune(model=model, data=data, output_dir=out, freeze_epochs=1, epochs=1, batch_size=8,
                       max_eval_samples=15, save_strategy="no", callbacks=[snaps])
    rank = torch.distributed.get_rank()
    record.update(rank=rank, world_size=torch.distributed.get_world_size(),
                  eval_examples=result.metrics["eval_examples"], support=sum(
                      c["support"] for c in result.metrics["per_class"].values()))
    final = {n: p.detach().clone() for n, p in result.model.named_parameters()}
    torch.save({"switch": snaps.at_switch, "final": final}, Path(out).parent / f"rank{rank}.pt")
    (Path(out).parent / f"rank{rank}.json").write_text(json.dumps(record))
