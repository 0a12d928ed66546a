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

Overwriting a run removes every file the old run wrote (is_run_output) once the new training starts. The model
files are staged in <run>/.saving and moved in once complete (save_model), so a crash while saving leaves the old
set whole, or a complete new set that the next run of the folder moves in.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

from .config import write_text_atomic
from .errors import HfftError

log = logging.getLogger("hfft")

CONFIG_NAME = "hfft.yaml"
METRICS_NAME = "metrics.json"
LOG_NAME = "log.jsonl"
CHECKPOINTS = "checkpoints"
# The weights of a full model, and the files of a LoRA adapter: a run folder or checkpoint holds one kind.
FULL_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")
WEIGHT_FILES = (*FULL_WEIGHT_FILES, "adapter_model.safetensors")
MERGED_DIR = "merged"
# What Trainer.save_model writes for a model, an adapter and their processors (weights, shards and their index,
# configs, tokenizer files), and the files and folders hfft adds: together, what overwrite=True removes. Anything
# else a user keeps in the folder stays.
MODEL_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json",
                  "config.json", "generation_config.json", "adapter_config.json", "preprocessor_config.json",
                  "processor_config.json", "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab.*",
                  "merges.txt", "spiece.model", "sentencepiece.bpe.model", "chat_template.*", "training_args.bin")
RUN_FILES = (CONFIG_NAME, METRICS_NAME, LOG_NAME, "README.md", "training.png", "confusion_matrix.png")
SAVING = ".saving"  # the new model files, staged inside the run folder
STAGED = ".complete"  # written into SAVING once every file of the new set is there
SCRATCH = (SAVING, f".{MERGED_DIR}.saving", f".{MERGED_DIR}.old")  # half-made copies inside a run


def is_model_file(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in MODEL_PATTERNS)


def is_run_output(name: str) -> bool:
    """Whether a top-level entry of a run folder is something a run writes."""
    return is_model_file(name) or name in RUN_FILES or name in (CHECKPOINTS, MERGED_DIR) or name in SCRATCH


def complete_checkpoints(run: Path) -> list[Path]:
    """checkpoint-N folders holding every file a resume needs, oldest first. The Trainer writes
    trainer_state.json last, so a readable one beside weights, optimizer and scheduler state means the save
    finished. The engines name their state differently: a plain or DDP run writes optimizer.pt and
    model.safetensors, FSDP optimizer.bin or optimizer_0/ and pytorch_model_fsdp*, DeepSpeed a global_stepN/
    folder holding both."""
    folder = Path(run) / CHECKPOINTS
    found = []
    for path in folder.glob("checkpoint-*") if folder.is_dir() else ():
        match = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if match and (path / "scheduler.pt").is_file() and _readable_state(path) and _has_engine_state(path):
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _has_engine_state(checkpoint: Path) -> bool:
    names = {p.name for p in checkpoint.iterdir()}
    if any(n.startswith("global_step") and (checkpoint / n).is_dir() for n in names):  # DeepSpeed
        return True
    optimizer = bool(names & {"optimizer.pt", "optimizer.bin", "optimizer_0"})
    weights = bool(names & set(WEIGHT_FILES)) or any(n.startswith("pytorch_model_fsdp") for n in names)
    return optimizer and weights


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
    if int(os.environ.get("RANK", "0")) == 0:  # one process repairs; under accelerate launch every one runs this
        finish_interrupted_save(run)
    existing = sorted(p.name for p in run.iterdir()) if run.is_dir() else []
    if resume:
        checkpoints = complete_checkpoints(run)
        if checkpoints:
            log.info("resuming from %s", checkpoints[-1])
            return checkpoints[-1]
        finished = [name for name in existing if name in WEIGHT_FILES or name in (CONFIG_NAME, METRICS_NAME)]
        if finished:  # retraining would replace a finished model with nothing to resume from
            raise HfftError(f"resume: {str(run)!r} holds a finished run ({', '.join(finished)}) but no complete "
                            "checkpoint, so there is nothing to resume from. Pass overwrite=True "
                            "(train.overwrite=true) to train it again from the start, or choose another output_dir.")
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
    """overwrite=True: the old run's files (is_run_output: model or adapter, processor, hfft.yaml, metrics, log,
    card, plots, checkpoints/, merged/) go when the new training starts, not before, so a run that fails while
    loading its data or model leaves the old one whole. Files hfft does not write stay."""
    old = sorted(path for path in Path(run).iterdir() if is_run_output(path.name))
    if old:
        log.warning("overwrite: removing the previous run's checkpoints and log and every other file it wrote in %s "
                    "(%s)", run, ", ".join(p.name for p in old))
    for path in old:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


def save_model(trainer, run: Path) -> None:
    """Model, config and processor are written to <run>/.saving; once that set is complete a marker says so and
    the files move in by rename. A crash before the marker leaves the old files whole (the partial copy is
    dropped by the next prepare()); a crash among the renames leaves a marked, complete set that the next
    prepare() moves in. The run folder itself is never renamed: a shell or a viewer open in it stays valid.
    Called on every process (sharded engines gather the weights collectively); only the main process writes."""
    run = Path(run)
    staging = run / SAVING
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
    write_text_atomic(staging / STAGED, "complete\n")
    _move_in(run, staging)


def _move_in(run: Path, staging: Path) -> None:
    """Roll a complete staged set forward: its files replace the run's, model files of the old set that the new
    one lacks go (an adapter's over a full model's, a shard the new model does not have), as does merged/, which
    was made from the old model. Safe to repeat, so prepare() can finish what a crash interrupted."""
    names = {p.name for p in staging.iterdir()} - {STAGED}
    for path in sorted(run.iterdir()):
        if is_model_file(path.name) and path.name not in names and path.is_file():
            path.unlink()
    shutil.rmtree(run / MERGED_DIR, ignore_errors=True)
    for name in sorted(names):
        os.replace(staging / name, run / name)
    shutil.rmtree(staging)


def replace_folder(new: Path, dest: Path) -> None:
    """Put the folder `new` at its sibling `dest`, replacing the folder there. On Linux one atomic exchange
    (renameat2 RENAME_EXCHANGE): at every moment `dest` holds the complete old folder or the complete new one.
    Where that is not available, two renames: for the instant between them `dest` does not exist, and a crash
    there leaves the new folder complete beside it (for a run folder, the next prepare() puts it in place)."""
    new, dest = Path(new), Path(dest)
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if not dest.exists():
        os.replace(new, dest)
    elif _exchange(new, dest):
        os.replace(new, old)  # `new` now names the old folder
    else:
        os.replace(dest, old)
        os.replace(new, dest)
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 with RENAME_EXCHANGE); False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def finish_interrupted_save(run: Path) -> None:
    """A save killed once its staged set was complete is finished; the partial copy of one killed earlier goes
    (the old files are whole), as do the leftovers of an interrupted merged/ swap."""
    run = Path(run)
    staging = run / SAVING
    if (staging / STAGED).is_file():
        log.warning("finishing the interrupted save of the model in %s", run)
        _move_in(run, staging)
    elif staging.is_dir():
        shutil.rmtree(staging, ignore_errors=True)
    # merged/ is made from the model and can be made again (hfft push --merged does): the copies an interrupted
    # merge left go, whether or not they were complete.
    for name in (f".{MERGED_DIR}.saving", f".{MERGED_DIR}.old"):
        shutil.rmtree(run / name, ignore_errors=True)


def merged_is_current(run) -> bool:
    """Whether <run>/merged was made from the run's present adapter: merged/ carries copies of the run's hfft.yaml
    and metrics.json, and a later run over the same folder rewrites both (metrics.json holds its runtime)."""
    run = Path(run)
    merged = run / MERGED_DIR
    if not (merged / "config.json").is_file():
        return False
    return all(_bytes(run / name) == _bytes(merged / name) for name in (CONFIG_NAME, METRICS_NAME))


def _bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def save_json(path, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def read_log(run) -> list[dict]:
    path = Path(run) / LOG_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
