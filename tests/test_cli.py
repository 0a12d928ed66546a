"""The `hfft` command and the recipe, end to end, as a user runs them (real subprocesses where it matters)."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hfft.cli import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "TRANSFORMERS_VERBOSITY": "error"}


def _config(tmp_path, model, data, **train) -> Path:
    path = tmp_path / "config.yaml"
    body = {"model": {"name": model}, "data": {"source": data},
            "train": {"output_dir": str(tmp_path / "run"), "epochs": 1, "freeze_epochs": 1, "batch_size": 16,
                      **train}}
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture(scope="module")
def trained_text_run(tmp_path_factory, tiny_bert, text_csv):
    tmp = tmp_path_factory.mktemp("cli")
    assert main(["train", str(_config(tmp, tiny_bert, text_csv)), "train.epochs=1"]) == 0
    return tmp / "run"


def test_train_writes_a_complete_run(trained_text_run):
    cfg = yaml.safe_load((trained_text_run / "hfft.yaml").read_text())
    assert cfg["train"]["epochs"] == 1 and cfg["data"]["task"] == "text-classification"
    assert json.loads((trained_text_run / "metrics.json").read_text())["eval_examples"] == 16


def test_eval_recomputes_the_runs_metrics(trained_text_run, capsys):
    assert main(["eval", str(trained_text_run)]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((trained_text_run / "metrics.json").read_text())
    assert printed["accuracy"] == pytest.approx(saved["accuracy"])
    assert printed["confusion_matrix"] == saved["confusion_matrix"]


def test_predict_texts_and_csv_to_file(trained_text_run, tmp_path, capsys):
    reviews = tmp_path / "in.csv"
    with reviews.open("w", newline="") as handle:
        csv.writer(handle).writerows([["id", "body"], ["1", "a great film"], ["2", "an awful plot"]])
    out = tmp_path / "preds.csv"
    assert main(["predict", str(trained_text_run), "what a lovely story", str(reviews), "--column", "body",
                 "--top-k", "2", "--output", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["input"] for r in rows] == ["what a lovely story", "a great film", "an awful plot"]
    for r in rows:
        assert {r["label_1"], r["label_2"]} == {"negative", "positive"}
        assert float(r["score_1"]) >= float(r["score_2"])
        assert float(r["score_1"]) + float(r["score_2"]) == pytest.approx(1.0, abs=1e-5)


def test_predict_refuses_an_image_for_a_text_model(trained_text_run, image_folder, capsys):
    image = str(next(Path(image_folder).rglob("*.png")))
    assert main(["predict", str(trained_text_run), image]) == 2
    assert "is an image, but this model classifies text" in capsys.readouterr().err


def test_user_errors_print_one_line_not_a_traceback(tmp_path, tiny_bert, text_csv):
    config = _config(tmp_path, tiny_bert, text_csv)
    done = subprocess.run([sys.executable, "-m", "hfft.cli", "train", str(config), "train.epoch=2"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert done.returncode == 2
    assert "Did you mean 'epochs'" in done.stderr and "Traceback" not in done.stderr


def test_groups_prints_every_group_with_both_phases(capsys, tiny_bert):
    assert main(["groups", tiny_bert, "--labels", "5"]) == 0
    out = capsys.readouterr().out
    for name in ("embeddings", "blocks", "head", "phase 'frozen'", "phase 'unfrozen'"):
        assert name in out, name


@pytest.fixture(scope="module")
def tiny_distilbert(tmp_path_factory) -> str:
    """A base DistilBERT checkpoint: no pre_classifier, so training makes it new head."""
    import torch
    from transformers import DistilBertConfig, DistilBertModel

    folder = tmp_path_factory.mktemp("tiny_distilbert")
    torch.manual_seed(0)
    DistilBertModel(DistilBertConfig(vocab_size=100, dim=16, n_layers=2, n_heads=2, hidden_dim=32)).save_pretrained(
        folder)
    return str(folder)


def test_groups_are_the_groups_training_uses(capsys, tiny_distilbert):
    from hfft.layers import layer_groups
    from hfft.models import load_classifier
    from hfft.tasks import get_task

    model, new = load_classifier(get_task("text-classification"), tiny_distilbert, ["a", "b"])  # as run() does
    trained = layer_groups(model, new)
    assert "pre_classifier.weight" in trained[-1].param_names
    assert main(["groups", tiny_distilbert]) == 0
    tables = capsys.readouterr().out.split("phase ")[1:]
    for table in tables:
        rows = [line.split() for line in table.splitlines()[2:] if line.strip()]
        assert [row[1] for row in rows] == [g.name for g in trained]
        assert rows[-1][-3:] == ["pre_classifier", "..", "classifier"]  # the head holds both, as in training


def test_groups_takes_explicit_learning_rates_as_given(capsys, tiny_distilbert):
    assert main(["groups", tiny_distilbert, "--base-lr", "0"]) == 2  # refused as training refuses it, not defaulted
    assert "train.base_lr must be > 0" in capsys.readouterr().err
    assert main(["groups", tiny_distilbert, "--base-lr", "1e-2", "--lr-mult", "1", "--body-groups", "1"]) == 0
    unfrozen = capsys.readouterr().out.split("phase 'unfrozen'")[1]
    lrs = [line.split()[3] for line in unfrozen.splitlines()[2:] if line.strip()]
    assert lrs == ["5.00e-03"] * 3  # embeddings, one body group, head: base_lr / 2 everywhere with lr_mult 1


def test_recipe_under_accelerate_launch(tmp_path, tiny_vit, image_folder):
    """The recipe as a user starts it: `accelerate launch recipes/finetune.py --config ...` (one CPU process)."""
    config = _config(tmp_path, tiny_vit, image_folder, eval_batch_size=8)
    done = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
         str(ROOT / "recipes" / "finetune.py"), "--config", str(config), "data.image_size=32"],
        capture_output=True, text=True, env=ENV, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    assert (run / "model.safetensors").is_file() and (run / "preprocessor_config.json").is_file()
    assert '"accuracy"' in done.stdout
    assert yaml.safe_load((run / "hfft.yaml").read_text())["data"]["image_size"] == 32
