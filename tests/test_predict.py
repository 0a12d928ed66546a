"""`hfft predict` and `hfft.predict` beyond the text cases of test_cli.py: images, folders and CSV columns of image
paths, batching, top-k, JSON output, LoRA adapters and merged models (refused when made from an earlier adapter),
.txt and .jsonl text files, empty inputs, and inputs of the wrong modality."""

import csv
import json
import shutil
from pathlib import Path

import pytest

from hfft import HfftError, fine_tune, predict
from hfft.cli import main
from hfft.inference import evaluate_run, write_predictions

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


def test_a_merged_folder_from_an_earlier_adapter_is_refused(image_runs, image_folder, tmp_path):
    _, lora = image_runs
    run = Path(shutil.copytree(lora, tmp_path / "lora"))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["train_runtime"] += 1.0  # as a later run over the folder, leaving the old merged/, would write
    (run / "metrics.json").write_text(json.dumps(metrics))
    with pytest.raises(HfftError, match="merged from an earlier adapter"):
        predict(run / "merged", _images(image_folder, 2))
    with pytest.raises(HfftError, match="merged from an earlier adapter"):
        evaluate_run(run / "merged")
    assert len(predict(run, _images(image_folder, 2))) == 2  # the run itself loads its own adapter


# ---- text files ----


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_bert, text_csv):
    out = tmp_path_factory.mktemp("predict") / "text"
    return Path(fine_tune(model=tiny_bert, data=text_csv, output_dir=str(out), freeze_epochs=1, epochs=1,
                          **FAST).output_dir)


def test_txt_lines_and_jsonl_rows(text_run, tmp_path):
    texts = ["a great film", "an awful boring plot", "the story was lovely"]
    lines = tmp_path / "reviews.txt"
    lines.write_text(f"{texts[0]}\n\n{texts[1]}\n  \n{texts[2]}\n")  # blank lines are no inputs
    rows = tmp_path / "reviews.jsonl"
    rows.write_text("".join(json.dumps({"id": i, "text": t, "review": t.upper()}) + "\n" for i, t in enumerate(texts)))
    expected = predict(text_run, texts, top_k=2)
    assert predict(text_run, lines, top_k=2) == expected
    assert predict(text_run, rows, top_k=2) == expected  # the "text" column by default
    assert [r["input"] for r in predict(text_run, rows, column="review")] == [t.upper() for t in texts]
    for r in expected:
        assert sorted(r["labels"]) == ["negative", "positive"]


def test_empty_inputs_name_the_file(text_run, tmp_path, capsys):
    empty_txt, empty_csv, header_only = tmp_path / "empty.txt", tmp_path / "empty.csv", tmp_path / "header.csv"
    empty_txt.write_text("\n  \n")
    empty_csv.write_text("")
    header_only.write_text("text,label\n")
    for path, message in [(empty_txt, "no non-blank line"), (empty_csv, "nothing in it"),
                          (header_only, r"a header \(text, label\) but no rows")]:
        with pytest.raises(HfftError, match=f"{path.name}.*holds no text: it has {message}"):
            predict(text_run, path)
        assert main(["predict", str(text_run), str(path)]) == 2
        assert path.name in capsys.readouterr().err
    with pytest.raises(HfftError, match="Nothing to predict"):
        predict(text_run, [])


def test_no_predictions_write_a_header_alone(tmp_path):
    write_predictions([], tmp_path / "none.csv")
    assert (tmp_path / "none.csv").read_text().splitlines() == ["input,label_1,score_1"]
    write_predictions([], tmp_path / "none.json")
    assert json.loads((tmp_path / "none.json").read_text()) == []
