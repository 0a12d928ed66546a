"""`fine_tune`: the whole job, from a model name and labelled data to a saved run folder.

run() reads top to bottom in the order things must happen: check the config and the run folder (cheap, before
any work), load data on the main process first, load the model with its new head, split it into layer groups,
train both phases, evaluate, save."""

from __future__ import annotations

import copy
import dataclasses
import errno
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import adapters, runfolder
from .callbacks import FreezeCallback, GroupLRLog
from .card import write_card
from .config import SECRET_ARGS, Config, field_names, from_dict, read_config_file
from .data import load_splits
from .errors import HfftError, suggest
from .hub import push, resolve_token
from .layers import LayerGroup, layer_groups, norm_param_names
from .metrics import TrainerMetrics
from .models import check_head, load_classifier, load_config_for
from .schedule import FineTunePlan
from .tasks import get_task
from .trainer import FineTuneTrainer
from .training_args import MANAGED_ARGS, check_training_args
from .zoo import resolve_data, resolve_model

log = logging.getLogger("hfft")

@dataclass
class FineTuneResult:
    metrics: dict          # accuracy, f1_macro, loss, per_class, confusion_matrix, train_runtime...
    output_dir: str
    model: torch.nn.Module  # the trained model, unwrapped, on every process
    config: Config
    groups: list[LayerGroup]
    plan: FineTunePlan


def build_config(config: Config | dict | str | Path | None = None, **values) -> Config:
    """Flat keyword arguments onto the schema: on `config` (a Config, left unchanged; a {section: {key: value}}
    dict; or the path of a YAML config file). Unknown keys go to TrainingArguments when they are one of its
    fields; anything else is an error naming the nearest valid key."""
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)  # the keywords below must not change the caller's config
    elif isinstance(config, (str, os.PathLike)):
        cfg = from_dict(read_config_file(config))
    elif config is None or isinstance(config, dict):
        cfg = from_dict(config)
    else:
        raise HfftError(f"config= takes an hfft Config, a dict of sections ({{'train': {{'epochs': 3}}}}) or the "
                        f"path of a YAML config file, not a value of type {type(config).__name__}.")
    names = field_names()
    training_fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    nested: dict[str, dict] = {}
    for key, value in values.items():
        if value is None and key in ("model", "data", "task", "output_dir"):
            continue
        key = {"model": "name", "data": "source"}.get(key, key)
        if key == "lora":  # True, a dict of lora settings, or a peft.LoraConfig (None: as the config says)
            if value is not None:
                nested["lora"] = adapters.lora_section(value)
        elif key == "push_to_hub" and isinstance(value, str):  # push_to_hub="user/name"
            nested.setdefault("hub", {}).update(push_to_hub=True, repo_id=value)
        elif names.get(key) == "lora":
            raise HfftError(f"LoRA settings go in lora=, e.g. fine_tune(lora={{{key!r}: {value!r}}}).")
        elif key in names:
            nested.setdefault(names[key], {})[key] = value
        elif key in MANAGED_ARGS:
            raise HfftError(f"{key!r} is set by hfft; use {MANAGED_ARGS[key]!r} instead.")
        elif key in training_fields:
            cfg.train.args[key] = value
        else:
            raise HfftError(f"Unknown fine_tune argument {key!r}." + suggest(key, list(names) + sorted(training_fields))
                            + " It is neither an hfft setting nor a transformers.TrainingArguments field.")
    return from_dict(nested, base=cfg).validate()


def fine_tune(model: str | None = None, data=None, output_dir: str | None = None, task: str | None = None,
              config: Config | dict | str | Path | None = None, callbacks=(), **overrides) -> FineTuneResult:
    """Fine-tune `model` on `data` the fastai way; see README for every setting (`hfft.config` holds them all).
    `callbacks`: extra transformers.TrainerCallback objects."""
    in_memory = None if data is None or isinstance(data, (str, Path)) else data
    cfg = build_config(config, model=model, data=None if in_memory is not None else data,
                       output_dir=output_dir, task=task, **overrides)
    if in_memory is not None:
        cfg.data.source = "<in-memory dataset>"
    return run(cfg, dataset=in_memory, callbacks=callbacks)


def training_arguments(cfg: Config, run: Path) -> TrainingArguments:
    t = cfg.train
    check_training_args(t.args)
    epochs = t.freeze_epochs + t.epochs
    defaults = {
        "eval_strategy": "epoch", "save_strategy": "epoch", "save_total_limit": 2, "logging_strategy": "steps",
        "logging_steps": 1 / (10 * epochs),  # below 1: a fraction of all steps, here ten losses an epoch
        "report_to": "none", "dataloader_num_workers": 0,
        "max_grad_norm": 0.0,  # fastai does not clip; pass max_grad_norm to clip
        "use_cpu": not (torch.cuda.is_available() or torch.backends.mps.is_available()),
        # Frozen parameters produce no gradients; DDP must be told, or it waits for them forever.
        "ddp_find_unused_parameters": t.freeze_epochs > 0 or None,
    }
    defaults.update({k: v for k, v in t.args.items() if k not in SECRET_ARGS})  # the token is hfft's to use
    try:
        return TrainingArguments(
            output_dir=str(run / runfolder.CHECKPOINTS), num_train_epochs=t.freeze_epochs + t.epochs,
            per_device_train_batch_size=t.batch_size, per_device_eval_batch_size=t.eval_batch_size or 2 * t.batch_size,
            learning_rate=t.base_lr, weight_decay=t.weight_decay, seed=t.seed, data_seed=t.seed,
            remove_unused_columns=False,  # image transforms are lazy: the raw image column must reach them
            **defaults)
    except (TypeError, ValueError) as err:
        culprits = [key for key in t.args if not _valid_alone(key, t.args[key], run)]
        where = ", ".join(f"train.args.{key}" for key in culprits) or "train.args"
        raise HfftError(f"Invalid training argument {where}: {err}") from err


def _valid_alone(key: str, value, run: Path) -> bool:
    try:
        TrainingArguments(output_dir=str(run), use_cpu=True, **{key: value})
    except (TypeError, ValueError):
        return False
    return True


def set_bn_momentum(model, momentum: float) -> None:
    """Checkpoints converted from TensorFlow carry its slow BatchNorm momentum (0.01 in PyTorch's convention):
    over a few hundred fine-tuning steps the running statistics then stay near ImageNet's while the weights adapt
    to the new data, and evaluation suffers (Fashion-MNIST, EfficientNet-Lite0, 1,000 images, 112 px, 1+2 epochs,
    seed 42: test accuracy 0.678 with 0.01, 0.736 with 0.1).
    PyTorch's and fastai's 0.1 lets them follow the new data."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum
    if hasattr(model.config, "batch_norm_momentum"):
        model.config.batch_norm_momentum = momentum


def freeze_by_lr(setting: str, trainer) -> bool:
    """DeepSpeed flattens the trainable parameters into its buffers when the engine is built, and FSDP shards
    them when it wraps: neither takes requires_grad changes mid-run, so there the frozen body gets a learning rate
    of 0 instead (correct, but the frozen phase is then no cheaper). DDP is told about parameters without
    gradients (find_unused_parameters), so it keeps the cheap path."""
    if setting == "auto":
        return bool(trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled)
    return setting == "lr"


def save_on_interrupt(trainer, out: Path) -> None:
    """Ctrl-C: keep the steps done so far as a checkpoint and say how to continue. With several processes a
    collective save could wait forever for a process that is already gone: the last complete checkpoint stays.
    A complete checkpoint of this very step is kept as it is: the Trainer writes in place, so saving it again
    and being killed midway would leave its old trainer_state.json beside a truncated optimizer.pt."""
    step = trainer.state.global_step
    folder = Path(trainer.args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
    if trainer.args.world_size == 1 and step > 0 and trainer.optimizer is not None:
        if folder.name in {done.name for done in runfolder.complete_checkpoints(out)}:
            where = f"step {step} is already saved in {folder.name}"
        else:
            shutil.rmtree(folder, ignore_errors=True)  # a save of this step that was itself interrupted
            trainer._save_checkpoint(trainer.model_wrapped, trial=None)
            where = f"checkpoint saved at step {step}"
    else:
        done = runfolder.complete_checkpoints(out)
        where = f"the newest complete checkpoint is {done[-1].name}" if done else "no checkpoint yet"
    log.warning("interrupted: %s. Continue with resume=True (hfft train ... --resume).", where)


def run(cfg: Config, dataset=None, callbacks=()) -> FineTuneResult:
    cfg.validate()
    t, d = cfg.train, cfg.data
    out = Path(t.output_dir)
    if cfg.hub.push_to_hub:  # no token: say so now, not after training
        resolve_token(t.args.get("hub_token"))
    args = training_arguments(cfg, out)
    checkpoint = runfolder.prepare(out, overwrite=t.overwrite, resume=t.resume)
    set_seed(t.seed)

    model_path = resolve_model(cfg.model.name)
    source = dataset if dataset is not None else resolve_data(d.source)
    hub = {"revision": cfg.model.revision, "trust_remote_code": cfg.model.trust_remote_code}
    model_config = load_config_for(model_path, **hub)  # a wrong model name fails here, before the data is read
    # Reading and tokenising the data happens once, on the main process first; the others then hit the cache.
    with args.main_process_first(desc="loading data"):
        splits = load_splits(source, task=d.task, input_column=d.input_column, label_column=d.label_column,
                             train_split=d.train_split, eval_split=d.eval_split, val_fraction=d.val_fraction,
                             seed=t.seed, max_train_samples=d.max_train_samples, max_eval_samples=d.max_eval_samples,
                             skip_bad_files=d.skip_bad_files, encoding=d.encoding)
        task = get_task(splits.task)
        check_head(task, model_config, cfg.model.name, cfg.model.trust_remote_code)
        processor = task.load_processor(model_path, image_size=d.image_size, max_length=d.max_length, **hub)
        train_ds = task.prepare(splits.train, processor, train=True, seed=t.seed, max_length=d.max_length)
        eval_ds = task.prepare(splits.eval, processor, train=False, seed=t.seed, max_length=d.max_length)
    d.task = splits.task
    log.info("data: %s, %d train / %d eval examples, %d labels", splits.task, len(splits.train), len(splits.eval),
             len(splits.labels))

    model, new_params = load_classifier(task, model_path, splits.labels, allow_pickle=cfg.model.allow_pickle,
                                        pad_token_id=getattr(processor, "pad_token_id", None), **hub)
    if t.bn_momentum is not None:
        set_bn_momentum(model, t.bn_momentum)
    if cfg.lora.enabled:  # before the groups: they are the wrapped model's trainable parameters
        model = adapters.wrap(model, cfg.lora, new_params, task_name=task.name, revision=cfg.model.revision,
                              base_model=adapters.base_model_id(cfg.model.name, model_path))
    groups = layer_groups(model, new_params, t.body_groups)
    if cfg.lora.enabled:
        groups = adapters.trainable_groups(model, groups)
    trained, total = adapters.parameter_counts(model, groups)
    log.info("trainable parameters: %s of %s (%.2f%%)", f"{trained:,}", f"{total:,}", 100 * trained / max(total, 1))
    norm_names = norm_param_names(model)
    train_norm = t.train_norm

    metrics_fn = TrainerMetrics(splits.labels)
    freeze = FreezeCallback(model, groups, keep_trainable=norm_names if train_norm else set())
    lr_log = GroupLRLog(out / runfolder.LOG_NAME, [g.name for g in groups])

    def on_plan(plan):
        freeze.plan = lr_log.plan = plan

    trainer = None
    transformers.logging.set_verbosity_warning()
    try:  # building the Trainer moves the model to the GPU: out of memory can happen there already
        trainer = FineTuneTrainer(
            model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
            data_collator=task.collator(processor), processing_class=processor,
            compute_metrics=metrics_fn, callbacks=[freeze, lr_log, *callbacks],
            groups=groups, norm_names=norm_names, total_epochs=t.freeze_epochs + t.epochs, on_plan=on_plan,
            plan_kwargs={"epochs": t.epochs, "freeze_epochs": t.freeze_epochs, "base_lr": t.base_lr,
                         "lr_mult": t.lr_mult, "pct_start": t.pct_start, "div": t.div},
            lr_scales=adapters.loraplus_scales(groups, cfg.lora.loraplus_lr_ratio) if cfg.lora.enabled else None)
        freeze.wrapped_model = lambda: trainer.model_wrapped  # checked before the body is frozen (hfft/trainer.py)
        if freeze_by_lr(t.freeze_by, trainer):
            if train_norm:
                raise HfftError("train.train_norm is not available under DeepSpeed/FSDP, where the frozen body's "
                                "learning rate is 0 (train.freeze_by 'lr'). Set train.train_norm=false.")
            freeze.by_requires_grad = False
            trainer.plan_kwargs["zero_body_lr"] = True
        if t.overwrite:
            runfolder.clear_previous(out)  # only now: a run that failed before this point leaves the old one whole
        train_output = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        metrics = final_evaluation(trainer, eval_ds, metrics_fn)
    except RuntimeError as err:  # torch.OutOfMemoryError (CUDA), and MPS's plain RuntimeError
        if "out of memory" not in str(err).lower():
            raise
        raise out_of_memory(cfg, out, placing_model=trainer is None) from err
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise disk_full(err, out, f"writing checkpoints to {out / runfolder.CHECKPOINTS}") from err
    except KeyboardInterrupt:
        if trainer is not None:
            save_on_interrupt(trainer, out)
        raise
    metrics.update(train_examples=len(splits.train), train_runtime=train_output.metrics.get("train_runtime"),
                   train_samples_per_second=train_output.metrics.get("train_samples_per_second"),
                   train_norm=train_norm, trainable_params=trained, total_params=total)

    runfolder.save_model(trainer, out)
    if trainer.is_world_process_zero():
        try:
            cfg.save(out / runfolder.CONFIG_NAME)
            runfolder.save_json(out / runfolder.METRICS_NAME, metrics)
            _plot(out, metrics, splits.labels)
            if cfg.lora.merge:
                adapters.save_merged(out, task)
            write_card(out, cfg.hub.repo_id)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise
            raise disk_full(err, out, f"writing the final files to {out}") from err
        if cfg.hub.push_to_hub:
            push(out, cfg.hub.repo_id, private=cfg.hub.private, merged=cfg.hub.push_merged,
                 token=t.args.get("hub_token"))
    trainer.accelerator.wait_for_everyone()
    log.info("accuracy %.4f, macro F1 %.4f -> %s", metrics["accuracy"], metrics["f1_macro"], out)
    return FineTuneResult(metrics=metrics, output_dir=str(out), model=trainer.model, config=cfg, groups=groups,
                          plan=trainer.plan)


def out_of_memory(cfg: Config, out: Path, placing_model: bool = False) -> HfftError:
    t = cfg.train
    if placing_model:  # the Trainer moves the model to the GPU when it is built, before any batch
        return HfftError("Out of GPU memory while moving the model to the GPU, before training: its weights alone "
                         "do not fit. Choose a smaller model, free the GPU of other processes, or shard the model "
                         "over several GPUs (accelerate launch --config_file recipes/accelerate/fsdp.yaml or "
                         "deepspeed_zero3.yaml).")
    steps = int(t.args.get("gradient_accumulation_steps", 1))
    half = max(1, t.batch_size // 2)
    lora = getattr(getattr(cfg, "lora", None), "enabled", False)
    ways = [f"a smaller batch: train.batch_size={half} with train.args.gradient_accumulation_steps={steps * 2} "
            "keeps the effective batch", "train.args.bf16=true", "train.args.gradient_checkpointing=true",
            "a smaller data.image_size or data.max_length"]
    if not lora:
        ways.append("LoRA (lora.enabled=true), which trains and stores optimizer state for far fewer weights")
    saved = runfolder.complete_checkpoints(out)
    kept = f" Checkpoints so far are kept in {saved[-1].parent}: continue with resume=True." if saved else ""
    return HfftError(f"Out of GPU memory while training with batch_size {t.batch_size}"
                     f"{f' x {steps} accumulation steps' if steps > 1 else ''}. Try " + "; ".join(ways) + "." + kept)


def disk_full(err: OSError, out: Path, doing: str) -> HfftError:
    """A full disk while training (checkpoints) or after it (the final files): what is safe, and how to continue."""
    saved = runfolder.complete_checkpoints(out)
    if saved:
        then = (f"Complete checkpoints are intact (newest: {saved[-1].name}): free space (or keep fewer, "
                "train.args.save_total_limit=1), then continue with resume=True.")
    else:
        then = "There is no complete checkpoint to continue from: free space, then run again with overwrite=True."
    return HfftError(f"The disk is full ({err}) while {doing}. {then}")


def final_evaluation(trainer, eval_ds, metrics_fn: TrainerMetrics) -> dict:
    """The full report on the evaluation set, reusing the Trainer's own evaluation of the final weights when it
    ran one at the last step (with eval_strategy="epoch" it did)."""
    history = [h for h in trainer.state.log_history if "eval_loss" in h]
    if metrics_fn.last is not None and history and history[-1]["step"] == trainer.state.global_step:
        metrics, loss = dict(metrics_fn.last), history[-1]["eval_loss"]
    else:
        prediction = trainer.predict(eval_ds, metric_key_prefix="eval")
        metrics, loss = dict(metrics_fn.last), prediction.metrics.get("eval_loss")
    metrics.update(loss=loss, eval_examples=sum(map(sum, metrics["confusion_matrix"])))
    return metrics


def _plot(out: Path, metrics: dict, labels: list[str]) -> None:
    try:
        from .plots import plot_confusion, plot_training
    except ImportError:  # matplotlib is optional: the run folder is complete without the pictures
        log.info("matplotlib not installed: skipping plots")
        return
    import numpy as np

    plot_training(runfolder.read_log(out), out / "training.png")
    plot_confusion(np.array(metrics["confusion_matrix"]), labels, out / "confusion_matrix.png")
