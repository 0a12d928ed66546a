"""Freezing under DDP (2 CPU processes, gloo, `accelerate launch`): the places where distributed training breaks
silently. One launch; each test checks one promise from the files every rank left behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import checkpoint_tensors

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TRANSFORMERS_VERBOSITY": "error"}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, tiny_bert, text_csv):
    work = tmp_path_factory.mktemp("ddp")
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml"), str(ROOT / "tests" / "ddp_probe.py"),
         tiny_bert, text_csv, str(work / "run")], capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    records = [json.loads((work / f"rank{r}.json").read_text()) for r in (0, 1)]
    states = [torch.load(work / f"rank{r}.pt") for r in (0, 1)]
    return records, states


def test_two_processes_really_ran(ranks):
    records, _ = ranks
    assert [r["rank"] for r in records] == [0, 1] and all(r["world_size"] == 2 for r in records)


def test_every_parameter_is_identical_on_both_ranks(ranks):
    _, states = ranks
    for phase in ("switch", "final"):
        assert states[0][phase].keys() == states[1][phase].keys()
        for name, value in states[0][phase].items():
            assert torch.equal(value, states[1][phase][name]), f"{name} differs across ranks ({phase})"


def test_body_frozen_then_trained_on_every_rank(ranks, tiny_bert):
    _, states = ranks
    original = checkpoint_tensors(tiny_bert)
    for state in states:
        body = [n for n in state["switch"] if n.startswith("bert.") and "LayerNorm" not in n]
        assert body
        for name in body:
            assert torch.equal(state["switch"][name], original[name[len("bert."):]]), f"{name} moved while frozen"
        changed = [n for n in body if not torch.equal(state["final"][n], state["switch"][n])]
        assert len(changed) > 0.9 * len(body)


def test_evaluation_counts_each_example_once(ranks):
    records, _ = ranks
    # 15 examples over 2 processes: a sampler padding to equal shards would count one twice (16).
    assert all(r["eval_examples"] == 15 and r["support"] == 15 for r in records)


def test_data_is_read_on_the_main_process_first(ranks):
    records, _ = ranks
    main, other = records
    assert main["data_end"] <= other["data_start"]


def test_preprocessing_runs_once(ranks):
    """The main process tokenises; the other finds the result in the datasets cache."""
    records, _ = ranks
    assert records[0]["tokenizer_calls"] > 0
    assert records[1]["tokenizer_calls"] == 0
