"""Bad input, end to end: every failure a user can cause gives one message naming the problem and the fix, before
any work where it can, and destroys nothing already done. One test per row of the bad-input table (README, "When
things go wrong"), then the safety defaults. Everything goes through `fine_tune` or the `hfft` command."""

import csv
import errno
import hashlib
import json
import logging
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import minilm_folder
from PIL import Image
from transformers import TrainerCallback

from hfft import HfftError, fine_tune
from hfft.cli import main
from hfft.runfolder import complete_checkpoints

QUICK = {"freeze_epochs": 1, "epochs": 0, "batch_size": 16, "eval_strategy": "no", "save_strategy": "no"}


def write_csv(path, header, rows, encoding="utf-8"):
    with open(path, "w", newline="", encoding=encoding) as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def reviews(n, offset=0):
    return [[f"review {i}: the film was {'great' if i % 2 else 'awful'}", "positive" if i % 2 else "negative"]
            for i in range(offset, offset + n)]


def fingerprint(folder) -> dict:
    """Every file under folder with a hash of its bytes: 'nothing changed' is then an equality."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}


def cli_error(argv, capsys) -> str:
    """The CLI's message for a user error: exit status 2 and exactly one line, no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    messages = re.findall(r"hfft: error: .*", err)  # besides it: progress bars at most
    assert len(messages) == 1 and "Traceback" not in err, err
    return messages[0]


def color_images(folder, n, channel, size=36, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        pixels = rng.integers(0, 90, size=(size, size, 3), dtype=np.uint8)
        pixels[..., channel] = 220
        Image.fromarray(pixels).save(folder / f"{i}.png")


# ---------------------------------------------------------------- the table, row by row


def test_model_not_found_or_hub_unreachable(tmp_path, text_csv, capsys, monkeypatch):
    # Offline (HF_HUB_OFFLINE=1, as in every test): fails at once, before the data is read, and says what to do.
    start = time.monotonic()
    with pytest.raises(HfftError, match=r"'no-such-org/no-such-model'.*HF_HUB_OFFLINE is set.*local folder"):
        fine_tune(model="no-such-org/no-such-model", data=text_csv, output_dir=str(tmp_path / "a"), **QUICK)
    assert time.monotonic() - start < 10
    with pytest.raises(HfftError, match=r"'./models/mine'.*no such folder"):
        fine_tune(model="./models/mine", data=text_csv, output_dir=str(tmp_path / "b"), **QUICK)
    (tmp_path / "empty_model").mkdir()
    with pytest.raises(HfftError, match="has no config.json"):
        fine_tune(model=str(tmp_path / "empty_model"), data=text_csv, output_dir=str(tmp_path / "c"), **QUICK)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "no-such-org/x"}, "data": {"source": text_csv},
                                      "train": {"output_dir": str(tmp_path / "d")}}))
    assert "HF_HUB_OFFLINE" in cli_error(["train", str(config)], capsys)

    # Online, the two failures are told apart (simulated: tests never touch the network).
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    from transformers import AutoConfig

    def failing(cause):
        def from_pretrained(*args, **kwargs):
            raise OSError("transformers' own wording") from cause
        return from_pretrained

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(AutoConfig, "from_pretrained", failing(LocalEntryNotFoundError("no connection")))
    with pytest.raises(HfftError, match=r"could not be reached.*not in the cache.*local folder.*HF_HUB_OFFLINE=1"):
        fine_tune(model="some-org/some-model", data=text_csv, output_dir=str(tmp_path / "e"), **QUICK)
    missing = RepositoryNotFoundError.__new__(RepositoryNotFoundError)  # as raised for a 404 (needs no response)
    Exception.__init__(missing, "404 Client Error: Repository Not Found")
    monkeypatch.setattr(AutoConfig, "from_pretrained", failing(missing))
    with pytest.raises(HfftError, match=r"no such model on the Hub.*hf auth login"):
        fine_tune(model="some-org/some-model", data=text_csv, output_dir=str(tmp_path / "f"), **QUICK)


def test_model_without_a_head_for_the_task(tmp_path, tiny_vit, text_csv):
    # An image model given text: named by its type and the task, before its (missing) tokenizer is looked for.
    with pytest.raises(HfftError, match=r"type 'vit'.*no text-classification head"):
        fine_tune(model=tiny_vit, data=text_csv, output_dir=str(tmp_path / "run"), **QUICK)


def test_missing_path_empty_folder_and_empty_split_are_named(tmp_path, tiny_bert):
    with pytest.raises(HfftError, match=r"nowhere\.csv.*does not exist"):
        fine_tune(model=tiny_bert, data=str(tmp_path / "nowhere.csv"), output_dir=str(tmp_path / "a"), **QUICK)
    (tmp_path / "empty").mkdir()
    with pytest.raises(HfftError, match=r"'.*empty'.*it is empty"):
        fine_tune(model=tiny_bert, data=str(tmp_path / "empty"), output_dir=str(tmp_path / "b"), **QUICK)
    folder = tmp_path / "csvs"
    folder.mkdir()
    write_csv(folder / "train.csv", ["text", "label"], reviews(20))
    write_csv(folder / "test.csv", ["text", "label"], [])
    with pytest.raises(HfftError, match="Split 'test' is empty"):
        fine_tune(model=tiny_bert, data=str(folder), output_dir=str(tmp_path / "c"), **QUICK)
    (tmp_path / "images" / "cat").mkdir(parents=True)
    color_images(tmp_path / "images" / "dog", 4, 0)  # one class folder holds nothing
    with pytest.raises(HfftError, match=r"single class \(\['dog'\]\)"):
        fine_tune(model=tiny_bert, data=str(tmp_path / "images"), output_dir=str(tmp_path / "d"), **QUICK)


def test_label_column_missing_or_ambiguous(tmp_path, tiny_bert, capsys):
    none = write_csv(tmp_path / "none.csv", ["text", "stars"], [[t, i % 2] for i, (t, _) in enumerate(reviews(20))])
    with pytest.raises(HfftError, match=r"No label column.*text \(string\), stars \(int64\).*label_column="):
        fine_tune(model=tiny_bert, data=none, output_dir=str(tmp_path / "a"), **QUICK)
    rows = [[t, y, i % 3] for i, (t, y) in enumerate(reviews(20))]
    several = write_csv(tmp_path / "several.csv", ["text", "label", "category"], rows)
    with pytest.raises(HfftError, match=r"\['label', 'category'\].*label_column="):
        fine_tune(model=tiny_bert, data=several, output_dir=str(tmp_path / "b"), **QUICK)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": tiny_bert}, "data": {"source": several},
                                      "train": {"output_dir": str(tmp_path / "c")}}))
    assert "data.label_column" in cli_error(["train", str(config)], capsys)
    result = fine_tune(model=tiny_bert, data=several, output_dir=str(tmp_path / "d"), label_column="category",
                       **QUICK)
    assert result.metrics["train_examples"] + result.metrics["eval_examples"] == 20


def test_unseen_validation_labels_and_a_single_class_are_named(tmp_path, tiny_bert):
    folder = tmp_path / "csvs"
    folder.mkdir()
    write_csv(folder / "train.csv", ["text", "label"], reviews(20))
    write_csv(folder / "validation.csv", ["text", "label"], reviews(4) + [["so so", "meh"], ["hmm", "zany"]])
    with pytest.raises(HfftError, match=r"Split 'validation' has labels that split 'train' never has: \['meh', 'zany'\]"):
        fine_tune(model=tiny_bert, data=str(folder), output_dir=str(tmp_path / "a"), **QUICK)
    one = write_csv(tmp_path / "one.csv", ["text", "label"], [[f"text {i}", "only"] for i in range(10)])
    with pytest.raises(HfftError, match=r"single class \(\['only'\]\)"):
        fine_tune(model=tiny_bert, data=one, output_dir=str(tmp_path / "b"), **QUICK)


def test_unreadable_images_are_all_named_up_front_then_skipped_on_request(tmp_path, tiny_vit, caplog):
    root = tmp_path / "photos"
    color_images(root / "blue", 12, 2)
    color_images(root / "red", 12, 0, seed=1)
    good = (root / "blue" / "0.png").read_bytes()
    (root / "blue" / "cut.png").write_bytes(good[: len(good) // 2])                  # truncated PNG
    buffer = root / "blue" / "photo.jpg"
    Image.new("RGB", (64, 64), (0, 0, 255)).save(buffer, quality=90)
    buffer.write_bytes(buffer.read_bytes()[:-300])                                   # truncated JPEG
    (root / "blue" / "page.jpg").write_text("<html>not found</html>")                # not an image at all
    (root / "blue" / "notes.txt").write_text("shot on a sunny day")                  # not an image file
    Image.new("1", (14_000, 13_000)).save(root / "blue" / "bomb.png")               # over PIL's 179 MP limit
    for i in range(22):
        (root / "red" / f"zero_{i:02d}.png").write_bytes(b"")                       # empty files
    (root / "README.md").write_text("beside the class folders: ignored")
    run = tmp_path / "run"

    with pytest.raises(HfftError) as err:
        fine_tune(model=tiny_vit, data=str(root), output_dir=str(run), **QUICK)
    message = str(err.value)
    assert message.startswith("27 input file(s) cannot be read")
    for name in ("cut.png: unreadable", "photo.jpg: unreadable", "page.jpg: not an image file",
                 "notes.txt: not an image file", "bomb.png: too large", "zero_00.png"):
        assert name in message, name
    assert "... and 7 more" in message and "skip_bad_files=True" in message
    assert not (run / "checkpoints").exists()

    caplog.set_level(logging.WARNING, logger="hfft")
    result = fine_tune(model=tiny_vit, data=str(root), output_dir=str(run), skip_bad_files=True, overwrite=True,
                       **QUICK)
    assert "skipping 27 unreadable input file(s)" in caplog.text
    assert result.metrics["train_examples"] + result.metrics["eval_examples"] == 24
    assert yaml.safe_load((run / "hfft.yaml").read_text())["data"]["skip_bad_files"] is True


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # 100 MP, on purpose
def test_odd_image_modes_exif_rotation_and_a_huge_image_train(tmp_path, tiny_vit):
    from transformers import AutoImageProcessor, pipeline

    from hfft.tasks.image import ImageTransform

    root = tmp_path / "odd"
    rng = np.random.default_rng(0)
    for label, channel in (("blue", 2), ("red", 0)):
        (root / label).mkdir(parents=True)
        pixels = rng.integers(0, 90, size=(30, 40, 3), dtype=np.uint8)
        pixels[..., channel] = 230
        rgb = Image.fromarray(pixels)
        for mode in ("L", "LA", "RGBA", "P", "1"):
            rgb.convert(mode).save(root / label / f"{mode}.png")
        rgb.convert("CMYK").save(root / label / "cmyk.jpg")
        Image.fromarray((np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)).save(root / label / "16bit.png")
        exif = Image.Exif()
        exif[0x0112] = 6  # stored on its side; viewers (and pipeline) turn it upright
        rgb.transpose(Image.Transpose.ROTATE_90).save(root / label / "phone.jpg", exif=exif)
    huge = Image.new("L", (10_000, 10_000), 40)  # 100 megapixels: over PIL's warning limit, under its hard one
    huge.paste(255, (0, 0, 5_000, 10_000))
    huge.save(root / "red" / "scan.png")  # compresses to a few kB

    start = time.monotonic()
    result = fine_tune(model=tiny_vit, data=str(root), output_dir=str(tmp_path / "run"), val_fraction=0.25,
                       **{**QUICK, "batch_size": 4})
    assert result.metrics["train_examples"] + result.metrics["eval_examples"] == 2 * 8 + 1
    assert time.monotonic() - start < 60

    # The huge image goes through preprocessing as fast as a small one would, and comes out as a direct
    # resize would make it.
    processor = AutoImageProcessor.from_pretrained(result.output_dir, backend="pil")
    start = time.monotonic()
    pixels = ImageTransform(processor, train=False)({"image": [Image.open(root / "red" / "scan.png")]})["pixel_values"]
    assert time.monotonic() - start < 3
    direct = processor(huge.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR), return_tensors="pt")
    assert (pixels - direct["pixel_values"]).abs().mean() < 0.02

    classify = pipeline("image-classification", model=result.output_dir)
    for name in ("phone.jpg", "16bit.png", "cmyk.jpg", "1.png"):
        assert {o["label"] for o in classify(str(root / "red" / name))} == {"red", "blue"}


def test_empty_none_and_very_long_texts_and_a_non_utf8_csv(tmp_path, tiny_bert, caplog):
    import datasets

    caplog.set_level(logging.WARNING, logger="hfft")
    rows = reviews(30) + [["", "positive"], ["no label here", ""], [" ".join(["long"] * 20_000), "negative"]]
    path = write_csv(tmp_path / "texts.csv", ["text", "label"], rows)
    result = fine_tune(model=tiny_bert, data=path, output_dir=str(tmp_path / "a"), **QUICK)
    assert result.metrics["train_examples"] + result.metrics["eval_examples"] == 31
    assert "dropped 2 rows of split 'train' without an input or a label (rows 30, 31" in caplog.text

    texts = [t for t, _ in reviews(20)] + [None, "", "   "]
    in_memory = datasets.Dataset.from_dict({"text": texts, "label": [i % 2 for i in range(23)]})
    result = fine_tune(model=tiny_bert, data=in_memory, output_dir=str(tmp_path / "b"), **QUICK)
    assert result.metrics["train_examples"] + result.metrics["eval_examples"] == 22  # None dropped, "" kept

    rows = reviews(20) + [["un café crème, très bon", "positive"], ["naïve", "negative"]]
    latin = write_csv(tmp_path / "excel.csv", ["text", "label"], rows, encoding="cp1252")
    with pytest.raises(HfftError, match=r"excel\.csv.*not UTF-8 text: line 22 .*encoding=.*cp1252"):
        fine_tune(model=tiny_bert, data=latin, output_dir=str(tmp_path / "c"), **QUICK)
    result = fine_tune(model=tiny_bert, data=latin, output_dir=str(tmp_path / "c"), encoding="cp1252", **QUICK)
    assert result.metrics["train_examples"] + result.metrics["eval_examples"] == 22
    for codec in ("windows-latin", "rot13"):  # no codec; a codec, but bytes to bytes
        with pytest.raises(HfftError, match="data.encoding must be the name of a text encoding"):
            fine_tune(model=tiny_bert, data=latin, output_dir=str(tmp_path / "d"), encoding=codec)


def test_unknown_misspelled_or_wrongly_typed_keys_name_the_nearest(tmp_path, tiny_bert, text_csv, capsys):
    run = tmp_path / "run"
    cases = [({"batchsize": 8}, r"Unknown fine_tune argument 'batchsize'\. Did you mean 'batch_size'"),
             ({"skip_bad_file": True}, r"Did you mean 'skip_bad_files'"),
             ({"epochs": "three"}, r"train\.epochs must be int, got 'three'"),
             ({"gradient_accumulation_steps": "2"}, r"train\.args\.gradient_accumulation_steps must be int"),
             ({"eval_strategy": "sometimes"}, r"train\.args\.eval_strategy: sometimes is not a valid")]
    for kwargs, message in cases:
        with pytest.raises(HfftError, match=message):
            fine_tune(model=tiny_bert, data=text_csv, output_dir=str(run), **kwargs)
    assert not run.exists()

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": tiny_bert}, "data": {"source": text_csv},
                                      "train": {"output_dir": str(run), "args": {"bf16x": True}}}))
    assert "Unknown training argument train.args.bf16x. Did you mean 'bf16'?" in cli_error(["train", str(config)],
                                                                                            capsys)
    config.write_text(yaml.safe_dump({"model": {"name": tiny_bert}, "data": {"source": text_csv},
                                      "train": {"output_dir": str(run), "args": {"learning_rate": 0.1}}}))
    assert "train.args.learning_rate is set by hfft; use 'base_lr'" in cli_error(["train", str(config)], capsys)
    assert "Did you mean 'label_column'" in cli_error(["train", str(config), "data.label_colum=x"], capsys)
    assert not run.exists()


def test_nonsense_hyperparameters_are_named_before_any_work(tmp_path, text_csv, capsys):
    run = tmp_path / "run"
    for kwargs, key in [({"base_lr": -1e-3}, "train.base_lr"), ({"freeze_epochs": -1}, "train.freeze_epochs"),
                        ({"batch_size": 0}, "train.batch_size"),
                        ({"gradient_accumulation_steps": 0}, "train.args.gradient_accumulation_steps"),
                        ({"adam_beta1": 5}, "train.args.adam_beta1"),
                        ({"logging_steps": -1}, "train.args.logging_steps"),
                        ({"max_grad_norm": float("inf")}, "train.args.max_grad_norm")]:
        # The model does not exist: had anything been loaded, the error would be about the model.
        with pytest.raises(HfftError, match=key.replace(".", r"\.") + " must be"):
            fine_tune(model="no-such-org/no-such-model", data=text_csv, output_dir=str(run), **kwargs)
    assert "train.base_lr must be > 0" in cli_error(["train", "train.base_lr=-1e-3", f"train.output_dir={run}"], capsys)
    assert not run.exists()


def test_a_config_file_path_is_read_and_other_config_types_are_refused(tmp_path, text_csv, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "my.yaml"
    config.write_text("train:\n  epochs: -1\n")
    # The data does not exist: had the file been ignored, the error would be about the data.
    for given in (str(config), config):
        with pytest.raises(HfftError, match=r"train\.epochs must be >= 0"):
            fine_tune(data=str(tmp_path / "missing.csv"), config=given)
    with pytest.raises(HfftError, match="config= takes an hfft Config"):
        fine_tune(data=text_csv, config=["train.epochs=3"])
    with pytest.raises(HfftError, match="data.source cannot be empty"):  # "" would read the whole folder
        fine_tune(data="", output_dir="run")
    assert list(tmp_path.iterdir()) == [config]  # nothing written


def test_an_existing_run_is_refused_and_never_deleted_silently(tmp_path, tiny_bert, text_csv, caplog):
    run = tmp_path / "run"
    fine_tune(model=tiny_bert, data=text_csv, output_dir=str(run), **{**QUICK, "save_strategy": "epoch"})
    before = fingerprint(run)
    assert complete_checkpoints(run) and "model.safetensors" in before

    with pytest.raises(HfftError, match=r"already holds a run.*overwrite=True.*resume=True"):
        fine_tune(model=tiny_bert, data=text_csv, output_dir=str(run), **QUICK)
    assert fingerprint(run) == before
    # overwrite=True, but the new run fails before training: the old one is still whole, checkpoints included.
    with pytest.raises(HfftError, match="does not exist"):
        fine_tune(model=tiny_bert, data=str(tmp_path / "typo.csv"), output_dir=str(run), overwrite=True, **QUICK)
    assert fingerprint(run) == before

    caplog.set_level(logging.WARNING, logger="hfft")
    fine_tune(model=tiny_bert, data=text_csv, output_dir=str(run), overwrite=True, **QUICK)
    assert "removing the previous run's checkpoints and log" in caplog.text
    assert not complete_checkpoints(run)


def test_disk_full_or_killed_while_saving_keeps_the_previous_outputs(tmp_path, tiny_bert, text_csv, monkeypatch):
    import os

    from hfft import runfolder
    from hfft.config import write_text_atomic
    from hfft.trainer import FineTuneTrainer

    # Killed while writing a checkpoint (here: the disk fills after the weights, before trainer_state.json).
    settings = {**QUICK, "freeze_epochs": 1, "epochs": 1, "save_strategy": "epoch", "save_total_limit": 3}
    real_save = FineTuneTrainer._save_rng_state
    calls = []

    def disk_full_on_second_save(self, output_dir):
        calls.append(output_dir)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(self, output_dir)

    monkeypatch.setattr(FineTuneTrainer, "_save_rng_state", disk_full_on_second_save)
    run = tmp_path / "run"
    with pytest.raises(HfftError, match=r"No space left.*resume=True"):
        fine_tune(model=tiny_bert, data=text_csv, output_dir=str(run), **settings)
    monkeypatch.undo()
    first, *_ = complete_checkpoints(run)
    half_written = Path(calls[1])
    assert half_written.is_dir() and complete_checkpoints(run) == [first]  # never picked for resume
    result = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(run), resume=True, **settings)
    assert (run / "model.safetensors").is_file() and result.metrics["train_examples"] == 144

    # The final outputs: a save that fails half way leaves the previous files whole and no temporary files.
    before = fingerprint(run)

    def fsync_fails(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync_fails)
    with pytest.raises(OSError):
        write_text_atomic(run / "hfft.yaml", "half of a config")
    monkeypatch.undo()

    class DiskFillsWhileSaving:
        def is_world_process_zero(self):
            return True

        def save_model(self, folder):
            Path(folder).mkdir(parents=True)
            (Path(folder) / "model.safetensors").write_bytes(b"the first half of the weights")
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(HfftError, match="No space left"):
        runfolder.save_model(DiskFillsWhileSaving(), run)
    assert fingerprint(run) == before
    assert not [p for p in run.iterdir() if p.name.startswith(".")]


class OutOfMemoryAt(TrainerCallback):
    """Raises what CUDA raises when a step needs more memory than the GPU has."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total)")


def test_out_of_gpu_memory_names_the_remedies_and_keeps_checkpoints(tmp_path, tiny_bert, text_csv, capsys):
    run = tmp_path / "run"
    settings = {**QUICK, "freeze_epochs": 1, "epochs": 1, "save_strategy": "epoch"}
    with pytest.raises(HfftError) as err:
        fine_tune(model=tiny_bert, data=text_csv, output_dir=str(run), callbacks=[OutOfMemoryAt(12)], **settings)
    message = str(err.value)
    for remedy in ("Out of GPU memory", "batch_size 16", "train.batch_size=8",
                   "gradient_accumulation_steps=2", "LoRA", "resume=True"):
        assert remedy in message, remedy
    assert [p.name for p in complete_checkpoints(run)] == ["checkpoint-9"]  # the epoch before: intact
    from safetensors.torch import load_file

    assert load_file(str(run / "checkpoints" / "checkpoint-9" / "model.safetensors"))

    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": tiny_bert}, "data": {"source": text_csv},
                                      "train": {"output_dir": str(tmp_path / "cli"), "batch_size": 16,
                                                "freeze_epochs": 1, "epochs": 0}}))
    from hfft import api

    real_run = api.run
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(api, "run", lambda cfg: real_run(cfg, callbacks=[OutOfMemoryAt(2)]))
        assert "Out of GPU memory" in cli_error(["train", str(config)], capsys)


# ---------------------------------------------------------------- safety defaults


def test_remote_code_does_not_run_unless_trusted(tmp_path, text_csv):
    model = tmp_path / "custom"
    model.mkdir()
    marker = tmp_path / "REMOTE_CODE_RAN"
    (model / "config.json").write_text(json.dumps({
        "model_type": "custom_thing",
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig",
                     "AutoModelForSequenceClassification": "modeling_custom.CustomModel"}}))
    (model / "configuration_custom.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    with pytest.raises(HfftError, match=r"ships its own code.*trust_remote_code=true"):
        fine_tune(model=str(model), data=text_csv, output_dir=str(tmp_path / "run"), **QUICK)
    assert not marker.exists()


def test_pickle_weights_are_refused_unless_allowed(tmp_path, text_csv):
    from transformers import AutoTokenizer, BertConfig, BertModel

    model = tmp_path / "pickled"
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    config.save_pretrained(model)
    torch.save(BertModel(config).state_dict(), model / "pytorch_model.bin")  # the only weights: a pickle
    AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(model)
    with pytest.raises(HfftError, match=r"only pickle \(\.bin\) weights.*model\.allow_pickle=true"):
        fine_tune(model=str(model), data=text_csv, output_dir=str(tmp_path / "a"), **QUICK)
    result = fine_tune(model=str(model), data=text_csv, output_dir=str(tmp_path / "b"), allow_pickle=True, **QUICK)
    assert (Path(result.output_dir) / "model.safetensors").is_file()  # and what hfft writes is safetensors


def test_hub_tokens_never_reach_logs_configs_or_training_arguments(tmp_path, tiny_bert, text_csv, monkeypatch,
                                                                  caplog, capsys):
    given, ambient = "hf_givenTOKENabcdefghijklmnopqrstuv", "hf_ambientTOKENabcdefghijklmnopqrs"
    monkeypatch.setenv("HF_TOKEN", ambient)
    caplog.set_level(logging.DEBUG)
    run = tmp_path / "run"
    result = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(run), hub_token=given,
                       **{**QUICK, "save_strategy": "epoch"})
    files = [p for p in run.rglob("*") if p.is_file()]
    assert {"hfft.yaml", "log.jsonl", "training_args.bin"} <= {p.name for p in files}  # what must stay clean
    if (Path(__file__).parents[1] / "hfft" / "card.py").is_file():
        assert (run / "README.md").is_file()  # the model card, once hfft writes one
    printed = capsys.readouterr()
    for secret in (given, ambient):
        for path in files:  # the pickled TrainingArguments of every checkpoint included
            assert secret.encode() not in path.read_bytes(), path
        assert secret not in caplog.text + printed.out + printed.err
        assert secret not in repr(result.metrics) + repr(result.config)
    with pytest.raises(HfftError) as err:
        fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "x"), hub_token=12345678)
    assert "12345678" not in str(err.value)


def test_config_values_are_never_executed(tmp_path, tiny_bert, text_csv, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"name": "__import__('os').system('touch pwned_model')"},
        "data": {"source": "$(touch pwned_data)`touch pwned_tick`"},
        "train": {"output_dir": "runs/$(touch pwned_out)"}}))
    assert "does not exist" in cli_error(["train", str(config), f"model.name={tiny_bert}"], capsys)
    assert "could not be loaded" in cli_error(["train", str(config), f"data.source={text_csv}"], capsys)
    tagged = "train.args.report_to=!!python/object/apply:os.system ['touch pwned_tag']"
    assert "not valid YAML" in cli_error(["train", str(config), tagged], capsys)
    evil = tmp_path / "evil.yaml"
    evil.write_text("model:\n  name: !!python/object/apply:os.system ['touch pwned_file']\n")
    assert "not valid YAML" in cli_error(["train", str(evil)], capsys)
    assert not list(tmp_path.glob("pwned*"))
