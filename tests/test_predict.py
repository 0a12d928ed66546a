"""`hfft predict` and `hfft.predict` beyond the text cases of test_cli.py: images, folders and CSV columns of image
paths, batching, top-k, JSON output, LoRA adapters and merged models, and inputs of the wrong modality."""

import csv
import json
from pathlib import Path

import pytest

from hfft import HfftError, fine_tune, predict
from hfft.cli import main
from hfft.inference import evaluate_run

FAST = {"batch_size": 16, "eval_strategy": "no", "save_strategy": "no"}


@pytest.fixture(scope="module")
def image_runs(tmp_path_factory, tiny_vit, image_folder):
    """A fully fine-tuned ViT and a LoRA one (q_proj/v_proj adapters) with its merged copy."""
    root = tmp_path_factory.mktemp("predict")
    full = fine_tune(model=tiny_vit, data=image_folder, output_dir=str(root / "full"), freeze_epochs=1, epochs=1,
                     **FAST)
    lora = fine_tune(model=tiny_vit, data=image_folder, output_dir=str(root / "lora"), freeze_epochs=1, epochs=1,
                     lora={"merge": True}, **FAST)
    return Path(full.output_dir), Path(lora.output_dir)


def _images(folder, n=None):
    return sorted(str(p) for p in Path(folder).rglob("*.png"))[:n]


def _scores(results):
    return [score for r in results for score in r["scores"]]


def test_folders_top_k_and_json_output(image_runs, image_folder, tmp_path, capsys):
    full, _ = image_runs
    out = tmp_path / "preds.json"
    assert main(["predict", str(full), str(Path(image_folder) / "red"), _images(image_folder)[-1], "--top-k", "2",
                 "--batch-size", "8", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["input"] for r in rows] == _images(Path(image_folder) / "red") + _images(image_folder)[-1:]
    for r in rows:
        assert sorted(r["labels"]) == ["blue", "red"] and r["scores"] == sorted(r["scores"], reverse=True)
        assert sum(r["scores"]) == pytest.approx(1.0, abs=1e-5)
    assert len(capsys.readouterr().out.splitlines()) == len(rows)


def test_batching_does_not_change_predictions(image_runs, image_folder):
    full, _ = image_runs
    one = predict(full, _images(image_folder, 6), batch_size=1, top_k=2)
    many = predict(full, _images(image_folder, 6), batch_size=6, top_k=2)
    assert [r["labels"] for r in one] == [r["labels"] for r in many]
    assert _scores(one) == pytest.approx(_scores(many), abs=1e-5)


def test_csv_column_of_image_paths(image_runs, image_folder, tmp_path):
    full, _ = image_runs
    listing = tmp_path / "photos.csv"
    chosen = _images(image_folder, 3)
    with listing.open("w", newline="") as handle:
        csv.writer(handle).writerows([["id", "photo"], *[[i, p] for i, p in enumerate(chosen)]])
    assert [r["input"] for r in predict(full, listing, column="photo")] == chosen
    with pytest.raises(HfftError, match="classifies images.*column of image paths"):
        predict(full, listing)


def test_adapter_and_merged_model_predict_alike(image_runs, image_folder):
    _, lora = image_runs
    images = _images(image_folder, 8)
    adapter = predict(lora, images, top_k=2)
    merged = predict(lora / "merged", images, top_k=2)
    assert [r["labels"] for r in adapter] == [r["labels"] for r in merged]
    assert _scores(adapter) == pytest.approx(_scores(merged), abs=1e-5)
    metrics = evaluate_run(lora)
    assert metrics["accuracy"] == pytest.approx(json.loads((lora / "metrics.json").read_text())["accuracy"])


def test_inputs_of_the_wrong_modality_are_refused(image_runs, tmp_path, capsys):
    full, _ = image_runs
    texts = tmp_path / "reviews.csv"
    texts.write_text("text\na great film\n")
    for given, message in [("a great film", "neither an image file nor a folder"),
                           (str(texts), "this model classifies images")]:
        with pytest.raises(HfftError, match=message):
            predict(full, [given])
    text_run = tmp_path / "text_run"  # only what predict reads first: the task
    text_run.mkdir()
    (text_run / "hfft.yaml").write_text("data:\n  task: text-classification\n")
    assert main(["predict", str(text_run), str(tmp_path)]) == 2
    assert "is a folder, but this model classifies text" in capsys.readouterr().err
