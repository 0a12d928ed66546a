"""Throughput: does hfft cost anything over a plain Trainer, and is its frozen phase really cheaper?

On the same model, data, batch size and preprocessing, training samples per second of
  (a) a plain transformers.Trainer full fine-tune (its defaults: AdamW, linear decay),
  (b) hfft's unfrozen phase (fine_tune with freeze_epochs=0, with DDP's find_unused_parameters on as in a real
      fine_tune, where the frozen phase before it needs it),
  (c) hfft's frozen phase (fine_tune with epochs=0),
timed per optimizer step after a warm-up, so start-up and evaluation are left out. Prints b/a (target >= 0.97)
and c/b (target >= 2.5 with default settings).

    python benchmarks/throughput.py                        # MiniLM on Rotten Tomatoes (LayerNorm)
    python benchmarks/throughput.py --model hfft:efficientnet-lite0 --data hfft:fashion-mnist --image-size 112
    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml benchmarks/throughput.py --runs b,c
                                                           # distributed: is the frozen phase still cheaper?
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed  # noqa: E402

from hfft import fine_tune  # noqa: E402
from hfft.data import load_splits  # noqa: E402
from hfft.models import load_classifier  # noqa: E402
from hfft.tasks import get_task  # noqa: E402
from hfft.zoo import resolve_data, resolve_model  # noqa: E402


class StepTimer(TrainerCallback):
    """Wall time of every optimizer step after the first `warmup` steps."""

    def __init__(self, warmup: int = 3):
        self.warmup, self.times, self._start = warmup, [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step > self.warmup:
            self.times.append(time.perf_counter() - self._start)

    def samples_per_second(self, batch_size: int) -> float:
        return batch_size / statistics.median(self.times)


def plain_trainer(opts, workdir) -> float:
    set_seed(0)
    splits = load_splits(resolve_data(opts.data), max_train_samples=opts.samples, seed=0)
    task = get_task(splits.task)
    model_path = resolve_model(opts.model)
    processor = task.load_processor(model_path, image_size=opts.image_size, max_length=opts.max_length)
    train = task.prepare(splits.train, processor, train=True, max_length=opts.max_length)
    model, _ = load_classifier(task, model_path, splits.labels)
    timer = StepTimer()
    args = TrainingArguments(output_dir=workdir, num_train_epochs=1, per_device_train_batch_size=opts.batch_size,
                             learning_rate=5e-5, report_to="none", save_strategy="no", eval_strategy="no",
                             remove_unused_columns=False, use_cpu=not torch.cuda.is_available(),
                             disable_tqdm=True, dataloader_num_workers=0)
    Trainer(model=model, args=args, train_dataset=train, data_collator=task.collator(processor),
            callbacks=[timer]).train()
    return timer.samples_per_second(opts.batch_size)


def hfft_phase(opts, workdir, frozen: bool, **extra) -> float:
    timer = StepTimer()
    if not frozen:
        # freeze_epochs=0 alone leaves find_unused_parameters off; a real fine_tune's unfrozen phase runs with it on
        # (DDP then searches the autograd graph every step), so (b) does too. Without DDP it changes nothing.
        extra.setdefault("ddp_find_unused_parameters", True)
    fine_tune(model=opts.model, data=opts.data, output_dir=workdir, freeze_epochs=1 if frozen else 0,
              epochs=0 if frozen else 1, batch_size=opts.batch_size, max_train_samples=opts.samples, seed=0,
              image_size=opts.image_size, max_length=opts.max_length, eval_strategy="no", save_strategy="no",
              disable_tqdm=True, callbacks=[timer], **extra)
    return timer.samples_per_second(opts.batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="hfft:minilm-l6")
    parser.add_argument("--data", default="hfft:rotten-tomatoes")
    parser.add_argument("--samples", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="alternate the runs this many times, keep the best")
    parser.add_argument("--runs", default="a,b,c,c_train_norm,c_no_train_norm", help="which runs, comma-separated")
    opts = parser.parse_args()

    runs = {"a": lambda d: plain_trainer(opts, d), "b": lambda d: hfft_phase(opts, d, frozen=False),
            "c": lambda d: hfft_phase(opts, d, frozen=True),
            "c_train_norm": lambda d: hfft_phase(opts, d, frozen=True, train_norm=True),
            "c_no_train_norm": lambda d: hfft_phase(opts, d, frozen=True, train_norm=False)}
    runs = {k: v for k, v in runs.items() if k in opts.runs.split(",")}
    best = {k: 0.0 for k in runs}
    for _ in range(opts.repeats):  # alternating, so a slow spell of a shared machine hits every kind alike
        for key, job in runs.items():
            with tempfile.TemporaryDirectory() as workdir:
                best[key] = max(best[key], job(os.path.join(workdir, "run")))

    if int(os.environ.get("RANK", "0")) != 0:
        return
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    print(f"\nmodel {opts.model}, data {opts.data}, {opts.samples} samples, batch {opts.batch_size} per process, "
          f"{processes} process(es), torch threads {torch.get_num_threads()}")
    names = {"a": "plain Trainer, full fine-tune", "b": "hfft unfrozen phase", "c": "hfft frozen phase (default)",
             "c_train_norm": "hfft frozen phase, train_norm=True", "c_no_train_norm": "hfft frozen, train_norm=False"}
    for key in best:
        print(f"  ({key}) {names[key]:40s} {best[key]:8.1f} samples/s per process")
    ratios = [("b/a", "b", "a", "target >= 0.97"), ("c/b", "c", "b", "target >= 2.5 with default settings"),
              ("c/b with train_norm=True", "c_train_norm", "b", ""), ("c/b with train_norm=False", "c_no_train_norm", "b", "")]
    for label, top, bottom, target in ratios:
        if top in best and bottom in best:
            print(f"  {label} = {best[top] / best[bottom]:.3f}   {target}")


if __name__ == "__main__":
    main()
