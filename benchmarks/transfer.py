"""Transfer benchmark: what does hfft's recipe buy over a plain Trainer, over random init and over a linear probe?

On the same train subset, the same test set, the same epoch budget, batch size and preprocessing/augmentation
(hfft's own data and tasks modules, so only the training recipe differs), for each task and training-set size:

  hfft      hfft.fine_tune with its defaults: freeze_epochs=1 (head only, one-cycle pct 0.99) then
            epochs=budget-1 unfrozen, discriminative lrs base_lr/2 / lr_mult .. base_lr/2, one-cycle pct 0.3 div 5
  trainer   what the transformers examples give: a plain transformers.Trainer full fine-tune with its
            defaults (lr 5e-5, linear decay, no warm-up, AdamW weight decay 0, max_grad_norm 1, no freezing)
  scratch   the same architecture from random initialisation, trained with hfft's recipe minus what only makes
            sense for pretrained weights: freeze_epochs=0, lr_mult=1 (one lr, base_lr/2 = 1e-3, for every group)
  head      head only: fine_tune(epochs=0, freeze_epochs=budget), the pretrained body frozen throughout
  (variants, run only when asked for with --methods: see VARIANTS)

Every finished run is appended to benchmarks/transfer_results.json and skipped when found there again, so an
interrupted benchmark resumes where it stopped. `--report` writes the plot and prints the markdown tables.

    python benchmarks/transfer.py                                   # the whole benchmark (see RESULTS.md)
    python benchmarks/transfer.py --tasks text --sizes 250 --seeds 0 --methods hfft,trainer
    python benchmarks/transfer.py --quick                           # one tiny run of every method, to time them
    python benchmarks/transfer.py --report                          # transfer.png + tables from the JSON
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "transfer_results.json"
PLOT = HERE / "transfer.png"

TASKS = {
    "text": {"title": "MiniLM-L6 on Rotten Tomatoes", "model": "hfft:minilm-l6", "data": "hfft:rotten-tomatoes",
             "prep": {"max_length": 64}},
    "image": {"title": "EfficientNet-Lite0 on Fashion-MNIST", "model": "hfft:efficientnet-lite0",
              "data": "hfft:fashion-mnist", "prep": {"image_size": 64}},
}
BASE_METHODS = ("hfft", "trainer", "scratch", "head")
# Targeted variants of hfft's recipe (extra fine_tune keywords), for the discussion in RESULTS.md.
VARIANTS = {
    "hfft-nofreeze": {"freeze_epochs": 0},                 # the whole budget unfrozen, discriminative one-cycle
    "hfft-lr5e-4": {"base_lr": 5e-4},                      # a transformer-sized base lr
    "hfft-lr5e-4-nofreeze": {"base_lr": 5e-4, "freeze_epochs": 0},
    "hfft-lrmult10": {"lr_mult": 10},                      # less discrimination: embeddings at base_lr/20
    "hfft-lr1e-2": {"base_lr": 1e-2},                      # a CNN-sized base lr
    "hfft-lr1e-2-mult10": {"base_lr": 1e-2, "lr_mult": 10},
    "trainer-lr2e-4": {"learning_rate": 2e-4},             # the plain Trainer, lr tuned by hand
    "trainer-lr1e-3": {"learning_rate": 1e-3},
    # BatchNorm running statistics: the converted EfficientNet-Lite0 keeps TF's slow momentum (0.01 in PyTorch's
    # convention); PyTorch/fastai/timm use 0.1. A model-config change, so it is applied to both recipes.
    "hfft-bn0.1": {"_config": {"batch_norm_momentum": 0.1}},
    "trainer-bn0.1": {"_config": {"batch_norm_momentum": 0.1}},
}
LABELS = {"hfft": "hfft fine_tune (defaults)", "trainer": "plain Trainer (lr 5e-5, linear)",
          "scratch": "random init (hfft recipe, no freeze)", "head": "head only (frozen body)"}


# ------------------------------------------------------------------------------------------------ results file


def load_results() -> list[dict]:
    if not RESULTS.is_file():
        return []
    return json.loads(RESULTS.read_text())


def save_result(record: dict) -> None:
    """Append one run; written beside the file and renamed, so an interruption never leaves half a file."""
    records = load_results() + [record]
    fd, tmp = tempfile.mkstemp(dir=HERE, prefix=".transfer_results.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(records, handle, indent=1)
    os.replace(tmp, RESULTS)


def run_key(task: str, method: str, size: int, seed: int, epochs: int, prep: dict) -> str:
    settings = ",".join(f"{k}={v}" for k, v in sorted(prep.items()))
    return f"{task}|{method}|n={size}|seed={seed}|epochs={epochs}|{settings}"


# ------------------------------------------------------------------------------------------------ the methods


def common(task: dict, size: int, seed: int, out: str) -> dict:
    return {"data": task["data"], "output_dir": out, "max_train_samples": size, "seed": seed, "batch_size": 32,
            "eval_strategy": "no", "save_strategy": "no", "logging_strategy": "no", "disable_tqdm": True, **task["prep"]}


def run_hfft(task: dict, size: int, seed: int, budget: int, out: str, **overrides) -> dict:
    """fine_tune with freeze_epochs + epochs = budget: a variant giving freeze_epochs alone gets the rest unfrozen."""
    from hfft import fine_tune

    kwargs = {"model": task["model"], "freeze_epochs": 1, "epochs": budget - 1, **common(task, size, seed, out)}
    kwargs.update(overrides)
    if "epochs" not in overrides:
        kwargs["epochs"] = budget - kwargs["freeze_epochs"]
    metrics = fine_tune(**kwargs).metrics
    recipe = {k: v for k, v in kwargs.items() if k in ("freeze_epochs", "epochs", "base_lr", "lr_mult", "train_norm",
                                                       "pct_start", "div", "body_groups", "model")}
    return {"metrics": metrics, "recipe": recipe}


def run_head(task, size, seed, epochs, out):
    return run_hfft(task, size, seed, epochs, out, freeze_epochs=epochs, epochs=0)


def random_init_folder(task: dict, seed: int) -> str:
    """The pretrained model's architecture with freshly initialised weights (seeded), saved as a model folder
    with the pretrained processor, so fine_tune loads it exactly as it loads the pretrained one."""
    import torch
    from transformers import AutoConfig

    from hfft.tasks import get_task
    from hfft.zoo import resolve_model

    name = task["model"].replace(":", "-")
    folder = Path(tempfile.gettempdir()) / "hfft-transfer-bench" / f"random-{name}-seed{seed}"
    if (folder / "model.safetensors").is_file():
        return str(folder)
    path = resolve_model(task["model"])
    config = AutoConfig.from_pretrained(path)
    kind = "image-classification" if "image_size" in task["prep"] else "text-classification"
    the_task = get_task(kind)
    torch.manual_seed(seed)
    model = the_task.auto_model_class().from_config(config)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent))
    model.save_pretrained(staging)
    the_task.load_processor(path).save_pretrained(staging)
    if folder.exists():
        shutil.rmtree(folder)
    os.rename(staging, folder)
    return str(folder)


def run_scratch(task, size, seed, epochs, out):
    random_task = dict(task, model=random_init_folder(task, seed))
    result = run_hfft(random_task, size, seed, epochs, out, freeze_epochs=0, lr_mult=1)
    result["recipe"]["model"] = f"random init of {task['model']} (seed {seed})"
    return result


def run_trainer(task: dict, size: int, seed: int, epochs: int, out: str, **overrides) -> dict:
    """A plain transformers.Trainer on exactly hfft's data pipeline: same subset, processor, transforms, collator,
    and the same model with its new head; only the optimiser, schedule and freezing are the Trainer's."""
    import torch
    from transformers import Trainer, TrainingArguments, set_seed

    from hfft.data import load_splits
    from hfft.metrics import report
    from hfft.models import load_classifier
    from hfft.tasks import get_task
    from hfft.zoo import resolve_data, resolve_model

    prep = task["prep"]
    set_seed(seed)  # as fine_tune: before the data (augmentation) and the head's initialisation
    splits = load_splits(resolve_data(task["data"]), max_train_samples=size, seed=seed)
    the_task = get_task(splits.task)
    model_path = resolve_model(task["model"])
    processor = the_task.load_processor(model_path, image_size=prep.get("image_size"),
                                        max_length=prep.get("max_length"))
    train = the_task.prepare(splits.train, processor, train=True, seed=seed, max_length=prep.get("max_length"))
    test = the_task.prepare(splits.eval, processor, train=False, seed=seed, max_length=prep.get("max_length"))
    model, _ = load_classifier(the_task, model_path, splits.labels,
                               pad_token_id=getattr(processor, "pad_token_id", None))
    args = {"output_dir": out, "num_train_epochs": epochs, "per_device_train_batch_size": 32,
            "per_device_eval_batch_size": 64, "seed": seed, "data_seed": seed, "report_to": "none",
            "eval_strategy": "no", "save_strategy": "no", "logging_strategy": "no", "remove_unused_columns": False,
            "dataloader_num_workers": 0, "disable_tqdm": True, "use_cpu": not torch.cuda.is_available(), **overrides}
    trainer = Trainer(model=model, args=TrainingArguments(**args), train_dataset=train,
                      data_collator=the_task.collator(processor), processing_class=processor)
    output = trainer.train()
    prediction = trainer.predict(test)
    logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
    metrics = report(prediction.label_ids, logits.argmax(-1), splits.labels)
    metrics.update(eval_examples=int(len(prediction.label_ids)), train_examples=len(splits.train),
                   train_runtime=output.metrics.get("train_runtime"))
    recipe = {"learning_rate": trainer.args.learning_rate, "lr_scheduler_type": str(trainer.args.lr_scheduler_type),
              "warmup_steps": trainer.args.warmup_steps, "weight_decay": trainer.args.weight_decay,
              "max_grad_norm": trainer.args.max_grad_norm, "num_train_epochs": epochs, "model": task["model"]}
    return {"metrics": metrics, "recipe": recipe}


def config_variant_folder(task: dict, changes: dict) -> str:
    """A copy of the pretrained model folder (weights linked, not copied) with config.json changed."""
    from hfft.zoo import resolve_model

    source = Path(resolve_model(task["model"]))
    tag = "-".join(f"{k}{v}" for k, v in sorted(changes.items()))
    folder = Path(tempfile.gettempdir()) / "hfft-transfer-bench" / f"{task['model'].replace(':', '-')}-{tag}"
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for item in source.iterdir():
            if item.is_file() and item.name != "config.json":
                os.symlink(item, folder / item.name)
        config = json.loads((source / "config.json").read_text())
        config.update(changes)
        (folder / "config.json").write_text(json.dumps(config, indent=1))
    return str(folder)


def run_method(method: str, task: dict, size: int, seed: int, epochs: int, out: str) -> dict:
    overrides = dict(VARIANTS.get(method, {}))
    if "_config" in overrides:
        task = dict(task, model=config_variant_folder(task, overrides.pop("_config")))
    if method == "hfft":
        return run_hfft(task, size, seed, epochs, out)
    if method == "trainer":
        return run_trainer(task, size, seed, epochs, out)
    if method == "scratch":
        return run_scratch(task, size, seed, epochs, out)
    if method == "head":
        return run_head(task, size, seed, epochs, out)
    if method.startswith("trainer-"):
        return run_trainer(task, size, seed, epochs, out, **overrides)
    return run_hfft(task, size, seed, epochs, out, **overrides)


# ------------------------------------------------------------------------------------------------ running


def benchmark(opts) -> None:
    import torch
    import datasets
    import transformers

    torch.set_num_threads(opts.threads)
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    done = {r["key"] for r in load_results()}
    plan = [(t, m, n, s) for n in opts.sizes for t in opts.tasks for s in opts.seeds for m in opts.methods
            if not (opts.first_seed_only_above and n > opts.first_seed_only_above and s != opts.seeds[0])]
    print(f"{len(plan)} runs planned, {sum(run_key(t, m, n, s, opts.epochs, TASKS[t]['prep']) in done for t, m, n, s in plan)} "
          "already in the results file", flush=True)
    for task_name, method, size, seed in plan:
        task = TASKS[task_name]
        key = run_key(task_name, method, size, seed, opts.epochs, task["prep"])
        if key in done:
            continue
        out = tempfile.mkdtemp(prefix="hfft-transfer-")
        start = time.perf_counter()
        try:
            result = run_method(method, task, size, seed, opts.epochs, os.path.join(out, "run"))
        finally:
            shutil.rmtree(out, ignore_errors=True)
        wall = time.perf_counter() - start
        m = result["metrics"]
        record = {"key": key, "task": task_name, "method": method, "size": size, "seed": seed, "epochs": opts.epochs,
                  "prep": task["prep"], "accuracy": m["accuracy"], "f1_macro": m["f1_macro"],
                  "train_runtime": m.get("train_runtime"), "wall_s": wall, "eval_examples": m.get("eval_examples"),
                  "train_examples": m.get("train_examples"), "recipe": result["recipe"],
                  "threads": opts.threads, "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        if not opts.dry:
            save_result(record)
        done.add(key)
        print(f"{key}: acc {m['accuracy']:.4f} f1 {m['f1_macro']:.4f} train {m.get('train_runtime') or 0:.0f}s "
              f"wall {wall:.0f}s", flush=True)


# ------------------------------------------------------------------------------------------------ text probe


def probe_text(opts) -> None:
    """Which frozen MiniLM feature can a linear head read? all-MiniLM-L6-v2 was trained as a mean-pooling
    sentence encoder, but BertForSequenceClassification puts its head on the pooler (tanh(W . [CLS])). A
    logistic regression trained to convergence (full-batch L-BFGS, small L2) on each feature of the frozen
    model, per size and seed: the ceiling of what the frozen phase and the head-only method can reach."""
    import torch
    from transformers import AutoModel

    from hfft.data import load_splits
    from hfft.tasks import get_task
    from hfft.zoo import resolve_data, resolve_model

    torch.set_num_threads(opts.threads)
    task = TASKS["text"]
    done = {r["key"] for r in load_results()}
    path = resolve_model(task["model"])
    encoder = AutoModel.from_pretrained(path).eval()
    the_task = get_task("text-classification")
    tokenizer = the_task.load_processor(path, max_length=task["prep"]["max_length"])
    collate = the_task.collator(tokenizer)

    @torch.no_grad()
    def features(ds):
        out = {"pooler": [], "cls": [], "mean": []}
        for start in range(0, len(ds), 128):
            rows = ds[start:start + 128]
            batch = collate([{"input_ids": i, "attention_mask": a} for i, a in zip(rows["input_ids"],
                                                                                   rows["attention_mask"])])
            h = encoder(**batch)
            mask = batch["attention_mask"].unsqueeze(-1).float()
            out["pooler"].append(h.pooler_output)
            out["cls"].append(h.last_hidden_state[:, 0])
            out["mean"].append((h.last_hidden_state * mask).sum(1) / mask.sum(1))
        return {k: torch.cat(v) for k, v in out.items()}

    test_feats = None
    for size in opts.sizes:
        for seed in opts.seeds:
            splits = load_splits(resolve_data(task["data"]), max_train_samples=size, seed=seed)
            prep = dict(max_length=task["prep"]["max_length"])
            train = the_task.prepare(splits.train, tokenizer, train=True, **prep)
            if test_feats is None:
                test_feats = features(the_task.prepare(splits.eval, tokenizer, train=False, **prep))
                test_y = torch.tensor(splits.eval["labels"])
            train_feats, train_y = features(train), torch.tensor(splits.train["labels"])
            for name in ("pooler", "cls", "mean"):
                key = run_key("text", f"probe-{name}", size, seed, 0, task["prep"])
                if key in done:
                    continue
                x, xt = train_feats[name], test_feats[name]
                mu, sd = x.mean(0), x.std(0) + 1e-6
                x, xt = (x - mu) / sd, (xt - mu) / sd
                torch.manual_seed(seed)
                linear = torch.nn.Linear(x.shape[1], len(splits.labels))
                lbfgs = torch.optim.LBFGS(linear.parameters(), max_iter=500, line_search_fn="strong_wolfe")

                def closure():
                    lbfgs.zero_grad()
                    loss = torch.nn.functional.cross_entropy(linear(x), train_y) + 1e-2 * linear.weight.square().sum()
                    loss.backward()
                    return loss

                lbfgs.step(closure)
                with torch.no_grad():
                    pred = linear(xt).argmax(-1)
                acc = float((pred == test_y).float().mean())
                spread_across = float(train_feats[name].std(0).mean())
                save_result({"key": key, "task": "text", "method": f"probe-{name}", "size": size, "seed": seed,
                             "epochs": 0, "prep": task["prep"], "accuracy": acc, "f1_macro": None,
                             "train_runtime": None, "wall_s": None, "feature_std": spread_across,
                             "recipe": {"probe": "logistic regression, L-BFGS, L2 1e-2, standardised features"}})
                print(f"probe {name:6s} n={size} seed={seed}: test acc {acc:.4f} (mean per-dim std of the raw "
                      f"feature {spread_across:.3f})", flush=True)


# ------------------------------------------------------------------------------------------------ reporting


def summarise(records: list[dict], epochs: int) -> dict:
    """{(task, method, size): {"acc": [...], "f1": [...], "train": [...], "wall": [...]}}."""
    out: dict = {}
    for r in records:
        if r["epochs"] != epochs or r["prep"] != TASKS[r["task"]]["prep"] or r["method"].startswith("probe"):
            continue
        cell = out.setdefault((r["task"], r["method"], r["size"]), {"acc": [], "f1": [], "train": [], "wall": []})
        cell["acc"].append(r["accuracy"])
        cell["f1"].append(r["f1_macro"])
        cell["train"].append(r["train_runtime"] or float("nan"))
        cell["wall"].append(r["wall_s"])
    return out


def mean(values):
    return statistics.fmean(values)


def spread(values):
    """Half the range (max - min) / 2: with 3 seeds, an honest +- without pretending to a distribution."""
    return (max(values) - min(values)) / 2


def fmt(values, pct=True) -> str:
    scale = 100 if pct else 1
    if len(values) == 1:
        return f"{scale * values[0]:.1f}"
    return f"{scale * mean(values):.1f} ± {scale * spread(values):.1f}"


def report(opts) -> None:
    records = load_results()
    cells = summarise(records, opts.epochs)
    lines = []
    for task_name, task in TASKS.items():
        sizes = sorted({n for (t, _, n) in cells if t == task_name})
        if not sizes:
            continue
        methods = [m for m in (*BASE_METHODS, *VARIANTS) if any((task_name, m, n) in cells for n in sizes)]
        lines += [f"### {task['title']} ({', '.join(f'{k} {v}' for k, v in task['prep'].items())}, "
                  f"{opts.epochs} epochs, batch 32, test set of {records[0].get('eval_examples', 1000)})", "",
                  "| method | train size | seeds | accuracy % | macro F1 % | train time s | wall s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for m in methods:
            for n in sizes:
                c = cells.get((task_name, m, n))
                if c is None:
                    continue
                lines.append(f"| {m} | {n:,} | {len(c['acc'])} | {fmt(c['acc'])} | {fmt(c['f1'])} | "
                             f"{mean(c['train']):.0f} | {mean(c['wall']):.0f} |")
        lines += ["", "| train size | hfft error % | Trainer error % | error ratio hfft / Trainer | goal ≤ 0.85 |",
                  "|---:|---:|---:|---:|:---:|"]
        for n in sizes:
            h, p = cells.get((task_name, "hfft", n)), cells.get((task_name, "trainer", n))
            if h and p:
                eh, ep = 1 - mean(h["acc"]), 1 - mean(p["acc"])
                ratio = eh / ep if ep > 0 else math.inf
                lines.append(f"| {n:,} | {100 * eh:.1f} | {100 * ep:.1f} | {ratio:.2f} | "
                             f"{'met' if ratio <= 0.85 else 'not met'} |")
        lines.append("")
    print("\n".join(lines))
    plot(cells)


def plot(cells: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(TASKS), figsize=(6 * len(TASKS), 4.5))
    for ax, (task_name, task) in zip(axes, TASKS.items()):
        for method in BASE_METHODS:
            points = sorted((n, c["acc"]) for (t, m, n), c in cells.items() if t == task_name and m == method)
            if not points:
                continue
            xs = [n for n, _ in points]
            ys = [100 * mean(a) for _, a in points]
            lo = [max(0.0, 100 * (mean(a) - min(a))) for _, a in points]
            hi = [max(0.0, 100 * (max(a) - mean(a))) for _, a in points]
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=LABELS[method])
        ax.set_xscale("log")
        sizes = sorted({n for (t, _, n) in cells if t == task_name})
        ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
        ax.minorticks_off()
        chance = {"text": 50.0, "image": 10.0}.get(task_name)
        if chance is not None:
            ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_xlabel("training examples (log scale)")
        ax.set_ylabel("test accuracy %")
        ax.set_title(task["title"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Same data, preprocessing and epoch budget; bars: min-max over seeds")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=110)
    print(f"plot: {PLOT}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="text,image", help="comma list of: " + ", ".join(TASKS))
    parser.add_argument("--methods", default=",".join(BASE_METHODS),
                        help="comma list of: " + ", ".join((*BASE_METHODS, *VARIANTS)))
    parser.add_argument("--sizes", default="250,1000,4000", help="training-set sizes (comma list)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds (comma list)")
    parser.add_argument("--first-seed-only-above", type=int, default=1000,
                        help="sizes above this run with the first seed only (0: every seed everywhere)")
    parser.add_argument("--epochs", type=int, default=3, help="total epoch budget of every method")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (1: on this shared 2-core machine 1 thread ran ~1.7x faster than 2)")
    parser.add_argument("--quick", action="store_true",
                        help="one run of every method at 100 examples, seed 0, not saved: to time things")
    parser.add_argument("--dry", action="store_true", help="do not save results")
    parser.add_argument("--report", action="store_true", help="only write the plot and print the tables")
    parser.add_argument("--probe", action="store_true",
                        help="linear probes of frozen MiniLM features (pooler / [CLS] / mean) instead of training")
    opts = parser.parse_args(argv)
    opts.tasks = [t for t in opts.tasks.split(",") if t]
    opts.methods = [m for m in opts.methods.split(",") if m]
    for m in opts.methods:
        if m not in BASE_METHODS and m not in VARIANTS:
            parser.error(f"unknown method {m!r}")
    opts.sizes = [int(s) for s in opts.sizes.split(",")]
    opts.seeds = [int(s) for s in opts.seeds.split(",")]
    if opts.quick:
        opts.sizes, opts.seeds, opts.dry = [100], [0], True
    if opts.report:
        report(opts)
        return
    if opts.probe:
        probe_text(opts)
        return
    print(f"python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cpus, "
          f"threads {opts.threads}: {' '.join(sys.argv)}", flush=True)
    benchmark(opts)


if __name__ == "__main__":
    main()
