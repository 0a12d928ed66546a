"""Crashes: a run killed (SIGKILL) or interrupted (Ctrl-C) in either phase resumes into the right phase with the
right per-group learning rates, and ends bit-identical to a run that was never interrupted (CPU)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import state_of
from fault_probe import SETTINGS

from hfft import fine_tune
from hfft.runfolder import complete_checkpoints, read_log

PROBE = Path(__file__).with_name("fault_probe.py")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}
STEPS_PER_EPOCH = 9  # 144 training rows (160, 10% held out) in batches of 16: the frozen phase is steps 0-8


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_bert, text_csv):
    out = tmp_path_factory.mktemp("whole") / "run"
    result = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(out), **SETTINGS)
    return state_of(result.model), {r["step"]: r for r in read_log(out) if "phase" in r}


@pytest.mark.parametrize("signal_name, step, phase", [
    ("KILL", 6, 1),    # killed in the frozen phase; newest checkpoint: step 4
    ("KILL", 14, 2),   # killed in the unfrozen phase; newest checkpoint: step 12
    ("INT", 11, 2),    # Ctrl-C: a checkpoint is saved at the very step
])
def test_resume_after_a_crash_matches_an_uninterrupted_run(tmp_path, tiny_bert, text_csv, uninterrupted,
                                                           signal_name, step, phase):
    expected, reference_log = uninterrupted
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(PROBE), tiny_bert, text_csv, str(out), str(step), signal_name],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode != 0, "the probe was meant to die"
    if signal_name == "INT":
        assert "Continue with resume=True" in done.stderr
    saved = [int(p.name.split("-")[1]) for p in complete_checkpoints(out)]
    newest = step if signal_name == "INT" else step - step % 4
    assert max(saved) == newest
    assert not (out / "model.safetensors").exists()  # the run never finished

    result = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(out), resume=True, **SETTINGS)
    resumed = [r for r in read_log(out) if "phase" in r and r["step"] >= newest]
    assert resumed[0]["step"] == newest
    assert phase == (1 if step < STEPS_PER_EPOCH else 2)  # the kill happened in the phase the case names
    assert resumed[0]["phase"] == (1 if newest < STEPS_PER_EPOCH else 2)
    for record in resumed:
        lrs = {k: v for k, v in record.items() if k.startswith("lr/")}
        assert lrs == {k: v for k, v in reference_log[record["step"]].items() if k.startswith("lr/")}
    final = state_of(result.model)
    for name, value in expected.items():
        assert torch.equal(final[name], value), f"{name} differs from the uninterrupted run"


def test_ctrl_c_at_a_saved_step_keeps_that_checkpoint_as_it_is(tmp_path):
    """The Trainer writes a checkpoint in place: saving step N again over a complete checkpoint-N, and being killed
    midway, would leave its old trainer_state.json beside a truncated optimizer.pt, and be resumed."""
    from types import SimpleNamespace

    from hfft.api import save_on_interrupt

    out = tmp_path / "run"
    checkpoints = out / "checkpoints"
    saved = checkpoints / "checkpoint-5"
    saved.mkdir(parents=True)
    for name in ("optimizer.pt", "scheduler.pt", "model.safetensors"):
        (saved / name).write_bytes(b"complete")
    (saved / "trainer_state.json").write_text("{}")
    calls = []
    trainer = SimpleNamespace(state=SimpleNamespace(global_step=5), optimizer=object(), model_wrapped=None,
                              args=SimpleNamespace(world_size=1, output_dir=str(checkpoints)),
                              _save_checkpoint=lambda model, trial: calls.append(trainer.state.global_step))
    save_on_interrupt(trainer, out)
    assert calls == [] and complete_checkpoints(out) == [saved]
    # A checkpoint of this step whose own save was interrupted (no trainer_state.json) is made again from scratch.
    trainer.state.global_step = 7
    half = checkpoints / "checkpoint-7"
    half.mkdir()
    (half / "optimizer.pt").write_bytes(b"trunc")
    save_on_interrupt(trainer, out)
    assert calls == [7] and not half.exists()


def test_disk_full_while_writing_the_final_files_says_how_to_continue(tmp_path, tiny_bert, text_csv, monkeypatch):
    import errno

    import hfft.api
    from hfft import HfftError

    settings = {**SETTINGS, "epochs": 1, "save_strategy": "epoch"}
    out = tmp_path / "run"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hfft.api, "write_card", disk_full)
    with pytest.raises(HfftError, match=r"No space left.*final files.*intact.*resume=True"):
        fine_tune(model=tiny_bert, data=text_csv, output_dir=str(out), **settings)
    monkeypatch.undo()
    assert [p.name for p in complete_checkpoints(out)][-1] == f"checkpoint-{2 * STEPS_PER_EPOCH}"
    result = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(out), resume=True, **settings)
    assert (out / "README.md").is_file() and (out / "hfft.yaml").is_file() and result.metrics["accuracy"] >= 0


def test_out_of_gpu_memory_while_placing_the_model_is_an_hfft_error(tmp_path, tiny_bert, text_csv, monkeypatch):
    from hfft import HfftError
    from hfft.trainer import FineTuneTrainer

    def no_room(self, *args, **kwargs):  # what Trainer.__init__ raises when model.to("cuda") does not fit
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 14.00 GiB (GPU 0; 15.77 GiB total)")

    monkeypatch.setattr(FineTuneTrainer, "__init__", no_room)
    with pytest.raises(HfftError, match="Out of GPU memory while moving the model to the GPU"):
        fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "run"), **SETTINGS)
