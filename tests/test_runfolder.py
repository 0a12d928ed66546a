"""The run folder's rules: an overwrite leaves only the new run's files (once the new training starts), resume
refuses a finished run it cannot resume, and saving the model stages the new set of files and moves it in only
once complete, so a crash leaves the complete old set, or a complete new one that the next run moves in."""

import os
import shutil
from pathlib import Path

import pytest

from hfft import HfftError, fine_tune, predict, runfolder
from hfft.adapters import is_adapter_folder
from hfft.hub import files_to_upload

FAST = {"batch_size": 16, "eval_strategy": "no", "save_strategy": "no"}


# ---- overwrite and resume, end to end ----


@pytest.fixture(scope="module")
def lora_then_full(tmp_path_factory, tiny_bert, text_csv):
    """A LoRA run (with merged/ and checkpoints) written over by a full fine-tune; a copy of the LoRA run kept."""
    out = tmp_path_factory.mktemp("overwrite") / "run"
    fine_tune(model=tiny_bert, data=text_csv, output_dir=str(out), freeze_epochs=1, epochs=1,
              lora={"r": 4, "merge": True}, **{**FAST, "save_strategy": "epoch"})
    lora_copy = Path(shutil.copytree(out, out.with_name("lora_copy")))
    (out / "notes.md").write_text("mine")  # not something a run writes
    fine_tune(model=tiny_bert, data=text_csv, output_dir=str(out), freeze_epochs=1, epochs=1, overwrite=True, **FAST)
    return out, lora_copy


def test_overwrite_leaves_only_the_new_runs_files(lora_then_full):
    run, _ = lora_then_full
    names = {p.name for p in run.iterdir()}
    assert not names & {"adapter_config.json", "adapter_model.safetensors", "merged", "checkpoints"}, names
    assert {"model.safetensors", "config.json", "hfft.yaml", "metrics.json", "README.md"} <= names
    assert (run / "notes.md").read_text() == "mine"
    assert not is_adapter_folder(run)
    assert "library_name: transformers" in (run / "README.md").read_text()
    assert not {"adapter_config.json", "adapter_model.safetensors"} & set(files_to_upload(run))
    assert predict(run, ["a great film"])[0]["labels"][0] in {"positive", "negative"}
    assert not (run / ".saving").exists() and sorted(p.name for p in run.parent.iterdir()) == ["lora_copy", "run"]


def test_a_folder_an_older_hfft_left_mixed_is_read_by_its_config(lora_then_full, tmp_path):
    """Before the fix, a full run over a LoRA run kept the adapter's files; such folders still exist."""
    run, lora = lora_then_full
    mixed = Path(shutil.copytree(run, tmp_path / "mixed"))
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(lora / name, mixed / name)
    assert not is_adapter_folder(mixed)  # hfft.yaml says lora is off: the adapter is a leftover
    assert not {"adapter_config.json", "adapter_model.safetensors"} & set(files_to_upload(mixed))
    from hfft.card import render

    assert "library_name: transformers" in render(mixed)
    assert is_adapter_folder(lora)


def test_overwrite_keeps_the_old_run_until_training_starts(lora_then_full, tmp_path, tiny_bert):
    _, lora = lora_then_full
    run = Path(shutil.copytree(lora, tmp_path / "run"))
    before = {p.name for p in run.iterdir()}
    with pytest.raises(HfftError):
        fine_tune(model=tiny_bert, data=str(tmp_path / "missing.csv"), output_dir=str(run), overwrite=True, **FAST)
    assert {p.name for p in run.iterdir()} == before


def test_resume_refuses_a_finished_run_without_checkpoints(lora_then_full, tmp_path, tiny_bert, text_csv):
    run, _ = lora_then_full
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(HfftError, match="nothing to resume from.*overwrite=True"):
        fine_tune(model=tiny_bert, data=text_csv, output_dir=str(run), resume=True, freeze_epochs=1, epochs=1,
                  **FAST)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == kept
    assert runfolder.prepare(tmp_path / "new", overwrite=False, resume=True) is None  # nothing there: starts fresh


# ---- saving the model: staged, marked complete, then moved in ----


class FakeTrainer:
    """What save_model uses of a Trainer: save_model(folder) writes the new set of model files."""

    def __init__(self, files: dict[str, str], fail: BaseException | None = None):
        self.files, self.fail = files, fail
        self.model = object()
        self.accelerator = type("Accelerator", (), {"unwrap_model": staticmethod(lambda model: model)})()

    def is_world_process_zero(self):
        return True

    def save_model(self, folder):
        Path(folder).mkdir(parents=True, exist_ok=True)
        for name, text in self.files.items():
            (Path(folder) / name).write_text(text)
        if self.fail:
            raise self.fail


OLD = {"model.safetensors": "old", "config.json": "old", "tokenizer.json": "old", "generation_config.json": "old"}
NEW = {"model.safetensors": "new", "config.json": "new", "tokenizer.json": "new"}


def old_run(tmp_path) -> Path:
    run = tmp_path / "runs" / "run"
    (run / "checkpoints" / "checkpoint-9").mkdir(parents=True)
    (run / "checkpoints" / "checkpoint-9" / "trainer_state.json").write_text("{}")
    (run / "merged").mkdir()
    (run / "merged" / "config.json").write_text("old")
    for name, text in {**OLD, "log.jsonl": "log\n", "hfft.yaml": "old: 1\n"}.items():
        (run / name).write_text(text)
    return run


def model_set(run: Path) -> str:
    """'old', 'new', 'absent' or 'mixed': which complete set of model files the run folder holds right now."""
    if not run.is_dir():
        return "absent"
    found = {p.name: p.read_text() for p in run.iterdir() if p.is_file() and runfolder.is_model_file(p.name)}
    return "old" if found == OLD else "new" if found == NEW else "mixed"


def test_save_model_replaces_the_whole_set_and_leaves_no_copy(tmp_path):
    run = old_run(tmp_path)
    runfolder.save_model(FakeTrainer(NEW), run)
    assert model_set(run) == "new"  # generation_config.json of the old set is gone too
    assert (run / "checkpoints" / "checkpoint-9" / "trainer_state.json").is_file()
    assert (run / "log.jsonl").read_text() == "log\n" and (run / "hfft.yaml").read_text() == "old: 1\n"
    assert not (run / "merged").exists()  # made from the old model: gone with it
    assert not (run / ".saving").exists() and sorted(p.name for p in run.parent.iterdir()) == ["run"]


def test_a_crash_while_writing_the_new_set_leaves_the_old_one(tmp_path):
    run = old_run(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        runfolder.save_model(FakeTrainer(NEW, fail=KeyboardInterrupt()), run)
    assert model_set(run) == "old" and (run / "merged").is_dir()
    (run / ".saving").mkdir()  # as a SIGKILL would leave it: a partial copy, never marked complete
    (run / ".saving" / "model.safetensors").write_text("half")
    runfolder.prepare(run, overwrite=True, resume=False)
    assert model_set(run) == "old" and not (run / ".saving").exists()


def test_a_crash_among_the_renames_is_finished_by_the_next_run(tmp_path, monkeypatch):
    run = old_run(tmp_path)
    original, moved = os.replace, []

    def replace(src, dst):  # killed after the first file of the new set moved in
        if moved:
            raise KeyboardInterrupt
        moved.append(dst)
        return original(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        runfolder.save_model(FakeTrainer(NEW), run)
    monkeypatch.undo()
    assert model_set(run) == "mixed" and (run / ".saving" / ".complete").is_file()
    runfolder.prepare(run, overwrite=True, resume=False)  # the next run of the folder starts by finishing it
    assert model_set(run) == "new" and not (run / ".saving").exists()
    assert (run / "checkpoints" / "checkpoint-9").is_dir() and (run / "log.jsonl").is_file()


def test_a_failed_save_names_a_full_disk_and_keeps_the_old_set(tmp_path):
    import errno

    run = old_run(tmp_path)
    with pytest.raises(HfftError, match="disk is full.*resume=True"):
        runfolder.save_model(FakeTrainer(NEW, fail=OSError(errno.ENOSPC, "No space left on device")), run)
    assert model_set(run) == "old" and (run / "merged").is_dir() and not (run / ".saving").exists()


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_replace_folder_never_shows_half_a_folder(tmp_path, monkeypatch, exchange):
    """merged/ is swapped whole: at every step it holds the old complete folder, the new one, or (two renames,
    where RENAME_EXCHANGE is missing) briefly nothing."""
    dest, new = tmp_path / "merged", tmp_path / ".merged.saving"
    for folder, text in ((dest, "old"), (new, "new")):
        folder.mkdir()
        for name in ("config.json", "model.safetensors"):
            (folder / name).write_text(text)
    seen = []

    def state():
        found = {p.read_text() for p in dest.iterdir()} if dest.is_dir() else {"absent"}
        seen.append(found.pop() if len(found) == 1 else "mixed")

    original_replace, original_exchange = os.replace, runfolder._exchange
    monkeypatch.setattr(os, "replace", lambda a, b: (original_replace(a, b), state())[0])
    monkeypatch.setattr(runfolder, "_exchange",
                        (lambda a, b: (original_exchange(a, b), state())[0]) if exchange else (lambda a, b: False))
    runfolder.replace_folder(new, dest)
    assert {p.read_text() for p in dest.iterdir()} == {"new"} and sorted(p.name for p in tmp_path.iterdir()) == ["merged"]
    assert "mixed" not in seen


@pytest.mark.parametrize("engine, files", [
    ("plain", ["model.safetensors", "optimizer.pt"]),
    ("lora", ["adapter_model.safetensors", "optimizer.pt"]),
    ("fsdp-full", ["model.safetensors", "optimizer.bin"]),
    ("fsdp-sharded", ["pytorch_model_fsdp_0/", "optimizer_0/"]),
    ("deepspeed", ["global_step12/"]),
])
def test_checkpoints_of_every_engine_count_as_complete_only_with_a_readable_state(tmp_path, engine, files):
    """Otherwise resume=True under FSDP or DeepSpeed would silently start over."""
    checkpoint = tmp_path / "checkpoints" / "checkpoint-12"
    checkpoint.mkdir(parents=True)
    for name in [*files, "scheduler.pt"]:
        (checkpoint / name.rstrip("/")).mkdir() if name.endswith("/") else (checkpoint / name).write_bytes(b"x")
    assert runfolder.complete_checkpoints(tmp_path) == []  # no trainer_state.json yet: still being written
    (checkpoint / "trainer_state.json").write_text('{"global_step": 1')  # cut short
    assert runfolder.complete_checkpoints(tmp_path) == []
    (checkpoint / "trainer_state.json").write_text('{"global_step": 12}')
    assert runfolder.complete_checkpoints(tmp_path) == [checkpoint]
    first = sorted(checkpoint.iterdir())[0]  # any engine state missing: not complete
    shutil.rmtree(first) if first.is_dir() else first.unlink()
    assert runfolder.complete_checkpoints(tmp_path) == []
