"""A resumed run lands in the right phase with the right learning rates and ends where an uninterrupted one does."""

import shutil
from pathlib import Path

import torch
from conftest import state_of

from hfft import fine_tune
from hfft.runfolder import complete_checkpoints, read_log

SETTINGS = {"freeze_epochs": 1, "epochs": 2, "batch_size": 16, "eval_strategy": "no", "save_strategy": "epoch",
            "save_total_limit": 3}


def test_resume_after_the_frozen_phase_matches_an_uninterrupted_run(tmp_path, tiny_bert, text_csv):
    whole = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "whole"), **SETTINGS)
    expected = state_of(whole.model)
    steps = {int(p.name.split("-")[1]) for p in complete_checkpoints(tmp_path / "whole")}
    first = min(steps)

    # The same run "died" right after its first checkpoint: later checkpoints and outputs never happened.
    run = tmp_path / "died"
    shutil.copytree(tmp_path / "whole", run)
    for checkpoint in complete_checkpoints(run):
        if checkpoint.name != f"checkpoint-{first}":
            shutil.rmtree(checkpoint)
    for name in ("model.safetensors", "metrics.json"):
        (run / name).unlink()
    log = [r for r in read_log(run) if r["step"] < first]
    (run / "log.jsonl").write_text("".join(__import__("json").dumps(r) + "\n" for r in log))
    # A half-written checkpoint (no trainer_state.json) must be ignored.
    partial = run / "checkpoints" / f"checkpoint-{max(steps) + 100}"
    partial.mkdir()
    (partial / "optimizer.pt").write_bytes(b"half")

    resumed = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(run), resume=True, **SETTINGS)
    after = [r for r in read_log(run) if "phase" in r and r["step"] >= first]
    reference = {r["step"]: r for r in read_log(tmp_path / "whole") if "phase" in r}
    assert after and after[0]["step"] == first and after[0]["phase"] == 2
    for record in after:
        lrs = {k: v for k, v in record.items() if k.startswith("lr/")}
        assert lrs == {k: v for k, v in reference[record["step"]].items() if k.startswith("lr/")}
    final = state_of(resumed.model)
    for name, value in expected.items():
        assert torch.equal(final[name], value), f"{name} differs from the uninterrupted run"
    assert Path(run / "model.safetensors").is_file()
