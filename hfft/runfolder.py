"""The run folder: what a finished run leaves behind, and the rules that keep earlier work safe.

    <run>/model.safetensors, config.json   the fine-tuned model, id2label included (pipeline() loads the folder)
    <run>/tokenizer* | preprocessor_config.json
    <run>/hfft.yaml                          the resolved hfft config (repeat the run with `hfft train <run>/hfft.yaml`)
    <run>/metrics.json                       final evaluation: accuracy, macro F1, loss, per class, confusion matrix
    <run>/log.jsonl                          per-step learning rate of every layer group, losses, phase
    <run>/checkpoints/checkpoint-N/          Trainer checkpoints (resume from the newest complete one)
    <run>/README.md                          the model card (hfft.card)

A LoRA run holds adapter_config.json + adapter_model.safetensors instead of model.safetensors (config.json stays:
the base model is rebuilt with it), and with lora.merge a plain merged model in <run>/merged/.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path

from .config import write_text_atomic
from .errors import HfftError

log = logging.getLogger("hfft")

CONFIG_NAME = "hfft.yaml"
METRICS_NAME = "metrics.json"
LOG_NAME = "log.jsonl"
CHECKPOINTS = "checkpoints"
# A checkpoint is complete only when the Trainer has written all of these; trainer_state.json comes last.
# The Trainer writes them in place, not atomically: a run killed while saving leaves a folder without them, or
# with a truncated trainer_state.json, and such a folder is never resumed from.
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                "pytorch_model.bin", "pytorch_model.bin.index.json")


def complete_checkpoints(run: Path) -> list[Path]:
    """checkpoint-N folders holding every file a resume needs, oldest first."""
    folder = Path(run) / CHECKPOINTS
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else ():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and all((path / name).is_file() for name in CHECKPOINT_FILES) and _readable_state(path) \
                and any((path / name).is_file() for name in WEIGHT_FILES):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _readable_state(checkpoint: Path) -> bool:
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def prepare(run, *, overwrite: bool, resume: bool) -> Path | None:
    """Checks the run folder before any work; returns the checkpoint to resume from, if any.
    A folder that already holds something is never written over unless the user said so."""
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise HfftError(f"output_dir {str(run)!r} is a file, not a folder. Choose another output_dir.")
    existing = sorted(p.name for p in run.iterdir()) if run.is_dir() else []
    if resume:
        checkpoints = complete_checkpoints(run)
        if checkpoints:
            log.info("resuming from %s", checkpoints[-1])
            return checkpoints[-1]
        log.warning("resume: no complete checkpoint in %s, starting from the beginning", run)
        return None
    if existing and not overwrite:
        shown = ", ".join(existing[:5]) + (", ..." if len(existing) > 5 else "")
        raise HfftError(f"output_dir {str(run)!r} already holds a run ({shown}). Pass overwrite=True "
                        f"(train.overwrite=true) to replace it, resume=True to continue it, or choose another "
                        f"output_dir.")
    if existing:
        log.warning("overwrite: the run in %s will be replaced once training starts", run)
    run.mkdir(parents=True, exist_ok=True)
    return None


def clear_previous(run: Path) -> None:
    """overwrite=True: the old run's checkpoints and log go when the new training starts, not before, so a run
    that fails while loading its data or model leaves the old one whole. Its other files are replaced as the new
    run writes them."""
    if (run / CHECKPOINTS).exists() or (run / LOG_NAME).exists():
        log.warning("overwrite: removing the previous run's checkpoints and log in %s", run)
    shutil.rmtree(run / CHECKPOINTS, ignore_errors=True)
    (run / LOG_NAME).unlink(missing_ok=True)


def save_model(trainer, run: Path) -> None:
    """Model, config and processor written beside the run, then moved in file by file with os.replace, so an
    interrupted save leaves the previous files whole. Called on every process (sharded engines gather the
    weights collectively); only the main process writes."""
    staging = Path(run) / ".saving"
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)
    try:
        trainer.save_model(str(staging))
    except BaseException as err:  # a full disk, an interrupt: the previous files stay, the half-written copy goes
        if trainer.is_world_process_zero():
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError) and err.errno == errno.ENOSPC:
            raise HfftError(f"The disk is full ({err}) while saving the model to {run}; the files already there "
                            "are untouched. Free space, then run again with resume=True: it starts from the newest "
                            "checkpoint.") from err
        raise
    if not trainer.is_world_process_zero():
        return
    (staging / "training_args.bin").unlink(missing_ok=True)  # a pickle; the hfft.yaml beside it says it all
    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "peft_config"):  # a LoRA adapter: add the config (labels, pad token) the base is rebuilt with
        model.get_base_model().config.save_pretrained(staging)
        (staging / "README.md").unlink(missing_ok=True)  # peft's template; hfft writes the run's own card
    for path in sorted(staging.iterdir()):
        os.replace(path, Path(run) / path.name)
    staging.rmdir()


def save_json(path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_log(run) -> list[dict]:
    path = Path(run) / LOG_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
