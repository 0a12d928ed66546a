"""The `hfft` command: train, eval, predict, groups, push. A user error prints one line naming the fix, not a
traceback."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .errors import HfftError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hfft", description="Fine-tune Hugging Face image and text classifiers.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="fine-tune from a YAML config, with dotted overrides")
    train.add_argument("config", nargs="?", help="YAML config (e.g. recipes/configs/minilm_rotten_tomatoes.yaml)")
    train.add_argument("overrides", nargs="*", help="section.key=value, e.g. train.epochs=3 data.image_size=112")
    train.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")

    ev = sub.add_parser("eval", help="evaluate a run folder on its evaluation split or on other labelled data")
    ev.add_argument("run")
    ev.add_argument("--data", help="labelled data (default: the run's own data)")
    ev.add_argument("--split", help="split to evaluate (default: the run's evaluation split)")
    ev.add_argument("--batch-size", type=int, default=64)

    pr = sub.add_parser("predict", help="labels and scores for images, folders, texts or text files")
    pr.add_argument("run")
    pr.add_argument("inputs", nargs="+")
    pr.add_argument("--top-k", type=int, default=1)
    pr.add_argument("--column", help="text column of a CSV/JSONL input")
    pr.add_argument("--batch-size", type=int, default=32)
    pr.add_argument("--output", help="write predictions to a .csv or .json file")

    gr = sub.add_parser("groups", help="print a model's layer groups and their learning rates")
    gr.add_argument("model")
    gr.add_argument("--labels", type=int, default=2, help="number of labels of the new head")
    gr.add_argument("--base-lr", type=float, default=None)
    gr.add_argument("--lr-mult", type=float, default=None)
    gr.add_argument("--body-groups", type=int, default=None)
    gr.add_argument("--trust-remote-code", action="store_true")

    pu = sub.add_parser("push", help="upload a run folder (model or adapter, card, metrics) to the Hugging Face Hub")
    pu.add_argument("run")
    pu.add_argument("repo_id", help="user/name or org/name (token: HF_TOKEN or `hf auth login`)")
    pu.add_argument("--private", action="store_true", help="create the repository private")
    pu.add_argument("--merged", action="store_true", help="LoRA runs: upload the adapter merged into its base model")
    return parser


def setup_logging() -> None:
    """hfft's progress lines on the main process only; under `accelerate launch` every process runs this."""
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format="%(message)s")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    setup_logging()
    try:
        return COMMANDS[args.command](args)
    except HfftError as err:
        print(f"hfft: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hfft: interrupted. Continue with --resume (train.resume=true).", file=sys.stderr)
        return 130


def cmd_train(args) -> int:
    from .api import run
    from .config import load_config

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not os.path.isfile(config):  # `hfft train train.epochs=1`
        config, overrides = None, [config, *overrides]
    overrides += ["train.resume=true"] if args.resume else []
    result = run(load_config(config, overrides))
    print(json.dumps({k: result.metrics[k] for k in ("accuracy", "f1_macro", "loss")}), "->", result.output_dir)
    return 0


def cmd_eval(args) -> int:
    from .inference import evaluate_run

    metrics = evaluate_run(args.run, args.data, split=args.split, batch_size=args.batch_size)
    print(json.dumps(metrics, indent=2, ensure_ascii=False))
    return 0


def cmd_predict(args) -> int:
    from .inference import predict, write_predictions

    results = predict(args.run, args.inputs, top_k=args.top_k, batch_size=args.batch_size, column=args.column)
    if args.output:
        write_predictions(results, args.output)
    for r in results:
        shown = ", ".join(f"{label} {score:.3f}" for label, score in zip(r["labels"], r["scores"]))
        print(f"{r['input'][:80]}\t{shown}")
    return 0


def cmd_groups(args) -> int:
    """Loaded as training loads it (the checkpoint's loading info decides what is new head), but on the meta
    device: no weights are read into memory, so any size of model answers at once."""
    from .config import Config, TrainConfig
    from .layers import format_groups, layer_groups
    from .models import load_classifier, load_config_for
    from .schedule import FineTunePlan
    from .tasks import TASKS
    from .zoo import resolve_model

    given = {"base_lr": args.base_lr, "lr_mult": args.lr_mult, "body_groups": args.body_groups}
    t = Config(train=TrainConfig(**{k: v for k, v in given.items() if v is not None})).validate().train
    path = resolve_model(args.model)
    config = load_config_for(path, trust_remote_code=args.trust_remote_code)
    task = next((k for k in TASKS.values() if type(config) in k.auto_model_class()._model_mapping), None)
    if task is None:
        raise HfftError(f"Model type {config.model_type!r} has no image- or text-classification head in transformers.")
    labels = [f"LABEL_{i}" for i in range(args.labels)]
    model, new_params = load_classifier(task, path, labels, trust_remote_code=args.trust_remote_code, meta=True)
    groups = layer_groups(model, new_params, t.body_groups)
    plan = FineTunePlan.build(n_groups=len(groups), steps_per_epoch=1, epochs=1, freeze_epochs=1, base_lr=t.base_lr,
                              lr_mult=t.lr_mult)
    print(f"{args.model} ({type(model).__name__})")
    for phase in plan.phases:
        print(f"\nphase '{phase.name}': peak learning rate per group")
        trainable = groups if phase.name == "unfrozen" else groups[-1:]
        lrs = [phase.lr_max[i] if g in trainable else 0.0 for i, g in enumerate(groups)]
        print(format_groups(groups, model, lrs))
    return 0


def cmd_push(args) -> int:
    from .hub import push

    print(push(args.run, args.repo_id, private=args.private, merged=args.merged))
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "groups": cmd_groups, "push": cmd_push}

if __name__ == "__main__":
    sys.exit(main())
