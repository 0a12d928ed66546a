"""A resumed run lands in the right phase with the right learning rates and ends where an uninterrupted one does."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import state_of

from hfft import fine_tune
from hfft.runfolder import complete_checkpoints, read_log

SETTINGS = {"freeze_epochs": 1, "epochs": 2, "batch_size": 16, "eval_strategy": "no", "save_strategy": "steps",
            "save_steps": 3, "save_total_limit": None}
BOUNDARY = 9  # 144 training rows in batches of 16: the frozen phase is steps 0-8


@pytest.fixture(scope="module", params=["grad", "lr"])
def whole(request, tmp_path_factory, tiny_bert, text_csv):
    out = tmp_path_factory.mktemp(f"whole_{request.param}") / "run"
    result = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(out), freeze_by=request.param, **SETTINGS)
    return request.param, out, state_of(result.model)


@pytest.mark.parametrize("first", [BOUNDARY, 6])  # at the unfreeze, and in the middle of the frozen phase
def test_resume_matches_an_uninterrupted_run(tmp_path, tiny_bert, text_csv, whole, first):
    freeze_by, done, expected = whole
    # The same run "died" right after its checkpoint at `first`: later checkpoints and outputs never happened.
    run = tmp_path / "died"
    shutil.copytree(done, run)
    steps = {int(p.name.split("-")[1]) for p in complete_checkpoints(run)}
    assert first in steps
    for checkpoint in complete_checkpoints(run):
        if int(checkpoint.name.split("-")[1]) > first:
            shutil.rmtree(checkpoint)
    for name in ("model.safetensors", "metrics.json"):
        (run / name).unlink()
    log = [r for r in read_log(run) if r["step"] < first]
    (run / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    # A half-written checkpoint (no trainer_state.json) must be ignored.
    partial = run / "checkpoints" / f"checkpoint-{max(steps) + 100}"
    partial.mkdir()
    (partial / "optimizer.pt").write_bytes(b"half")

    resumed = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(run), resume=True, freeze_by=freeze_by,
                        **SETTINGS)
    after = [r for r in read_log(run) if "phase" in r and r["step"] >= first]
    reference = {r["step"]: r for r in read_log(done) if "phase" in r}
    assert after and after[0]["step"] == first and after[0]["phase"] == (2 if first >= BOUNDARY else 1)
    for record in after:
        lrs = {k: v for k, v in record.items() if k.startswith("lr/")}
        assert lrs == {k: v for k, v in reference[record["step"]].items() if k.startswith("lr/")}
    # freeze_by='lr': the body's optimizer state is reset at the unfreeze, also when the run resumes right there.
    final = state_of(resumed.model)
    for name, value in expected.items():
        assert torch.equal(final[name], value), f"{name} differs from the uninterrupted run"
    assert Path(run / "model.safetensors").is_file()
