"""hfft.tasks: the registry, image preprocessing (modes, augmentation, size) and text tokenisation and padding."""

import datasets
import numpy as np
import pytest
import torch
from conftest import minilm_folder
from PIL import Image
from transformers import AutoImageProcessor

from hfft import HfftError
from hfft.data import load_splits
from hfft.tasks import TASKS, Task, get_task
from hfft.tasks.image import output_size, to_rgb

IMAGE = get_task("image-classification")
TEXT = get_task("text-classification")

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vit_processor(tmp_path_factory) -> str:
    from transformers import ViTImageProcessorPil

    folder = tmp_path_factory.mktemp("vit_processor")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def odd_images() -> dict[str, Image.Image]:
    """One image per awkward mode, as files in the wild have them."""
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, size=(30, 40, 3), dtype=np.uint8))
    return {"rgb": rgb, "gray": rgb.convert("L"), "rgba": rgb.convert("RGBA"), "palette": rgb.convert("P"),
            "gray_alpha": rgb.convert("LA"), "bilevel": rgb.convert("1"), "cmyk": rgb.convert("CMYK"),
            "sixteen_bit": Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16))}


@pytest.fixture(scope="module")
def odd_image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    for label in ("a", "b"):
        (root / label).mkdir()
        for name, image in odd_images().items():
            image.save(root / label / f"{name}.{'jpg' if name == 'cmyk' else 'png'}")
    return root


@pytest.fixture(scope="module")
def image_splits(odd_image_folder):
    return load_splits(odd_image_folder, val_fraction=0.25)


@pytest.fixture(scope="module")
def tokenizer():
    return TEXT.load_processor(minilm_folder())


def text_ds(rows):
    return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "labels": [y for _, y in rows]})


# ---------------------------------------------------------------- registry


def test_registry_holds_both_modalities():
    assert set(TASKS) >= {"image-classification", "text-classification"}
    assert all(isinstance(task, Task) for task in TASKS.values())
    assert IMAGE.auto_model_class().__name__ == "AutoModelForImageClassification"
    assert TEXT.auto_model_class().__name__ == "AutoModelForSequenceClassification"
    assert (IMAGE.input_column, TEXT.input_column) == ("image", "text")
    assert (IMAGE.pipeline_task, TEXT.pipeline_task) == ("image-classification", "text-classification")


@pytest.mark.parametrize("name, hint", [("image-clasification", "image-classification"),
                                        ("text", "text-classification")])
def test_unknown_task_suggests_the_closest(name, hint):
    with pytest.raises(HfftError, match=f"Unknown task '{name}'. Did you mean '{hint}'"):
        get_task(name)


# ---------------------------------------------------------------- images


def test_every_image_mode_becomes_rgb():
    for name, image in odd_images().items():
        rgb = to_rgb(image)
        assert rgb.mode == "RGB" and rgb.size == (40, 30), name
    assert np.asarray(to_rgb(odd_images()["sixteen_bit"])).min() == 255  # scaled to 8 bits, not clipped to 255
    half = Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16))
    assert np.asarray(to_rgb(half)).max() == 128


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("RGB", (40, 20)).save(tmp_path / "phone.jpg", exif=exif)
    assert to_rgb(Image.open(tmp_path / "phone.jpg")).size == (20, 40)


def test_image_files_of_every_mode_give_three_channel_pixel_values(image_splits, vit_processor):
    processor = IMAGE.load_processor(vit_processor)
    for train in (True, False):
        ds = IMAGE.prepare(image_splits.train, processor, train=train)
        rows = ds[:]
        assert rows["pixel_values"].shape == (len(image_splits.train), 3, 32, 32)
        assert rows["labels"] == image_splits.train["labels"]
    white = IMAGE.prepare(image_splits.train.filter(lambda r: r["image"].mode.startswith("I")), processor,
                          train=False)
    assert torch.allclose(white[0]["pixel_values"], torch.ones(3, 32, 32))  # 16-bit white stays white


def test_train_augmentation_changes_per_epoch_reproducibly_and_eval_is_fixed(image_splits, vit_processor):
    processor = IMAGE.load_processor(vit_processor)
    train = IMAGE.prepare(image_splits.train, processor, train=True, seed=1)
    torch.manual_seed(0)
    epoch1, epoch2 = train[:4]["pixel_values"], train[:4]["pixel_values"]
    assert not torch.equal(epoch1, epoch2)
    torch.manual_seed(0)
    assert torch.equal(train[:4]["pixel_values"], epoch1)
    other_seed = IMAGE.prepare(image_splits.train, processor, train=True, seed=2)
    torch.manual_seed(0)
    assert not torch.equal(other_seed[:4]["pixel_values"], epoch1)

    evaluation = IMAGE.prepare(image_splits.eval, processor, train=False)
    first, second = evaluation[:]["pixel_values"], evaluation[:]["pixel_values"]
    assert torch.equal(first, second)
    direct = processor([to_rgb(image) for image in image_splits.eval["image"]], return_tensors="pt")
    assert torch.equal(first, direct["pixel_values"])


@pytest.mark.parametrize("processor_class, kwargs", [
    ("ViTImageProcessorPil", {"size": {"height": 32, "width": 32}}),
    ("ConvNextImageProcessorPil", {"size": {"shortest_edge": 32}, "crop_pct": 0.875}),
    ("CLIPImageProcessorPil", {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}}),
])
def test_image_size_override_lives_on_the_saved_processor(tmp_path, processor_class, kwargs):
    import transformers

    getattr(transformers, processor_class)(**kwargs).save_pretrained(tmp_path / "model")
    processor = IMAGE.load_processor(str(tmp_path / "model"), image_size=16)
    assert output_size(processor) == (16, 16)
    processor.save_pretrained(tmp_path / "run")
    reloaded = AutoImageProcessor.from_pretrained(str(tmp_path / "run"), backend="pil")  # what pipeline() loads
    assert output_size(reloaded) == (16, 16)
    features = datasets.Features({"image": datasets.Image(), "labels": datasets.Value("int64")})
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (50, 30))], "labels": [0]}, features=features)
    assert IMAGE.prepare(ds, processor, train=True)[0]["pixel_values"].shape == (3, 16, 16)


def test_image_collator_stacks_pixels_and_labels(image_splits, vit_processor):
    processor = IMAGE.load_processor(vit_processor)
    ds = IMAGE.prepare(image_splits.eval, processor, train=False)
    batch = IMAGE.collator(processor)([ds[i] for i in range(len(ds))])
    assert batch["pixel_values"].shape == (len(ds), 3, 32, 32)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == image_splits.eval["labels"]


def test_image_batch_runs_through_a_model(image_splits, tiny_vit):
    processor = IMAGE.load_processor(tiny_vit)
    ds = IMAGE.prepare(image_splits.train, processor, train=True)
    batch = IMAGE.collator(processor)([ds[i] for i in range(3)])
    model = IMAGE.auto_model_class().from_pretrained(tiny_vit, num_labels=2)
    assert model(**batch).logits.shape == (3, 2)


def test_image_path_column_is_read_as_images(odd_image_folder):
    paths = sorted(str(p) for p in odd_image_folder.rglob("*.png"))
    ds = datasets.Dataset.from_dict({"file_name": paths, "label": [p.split("/")[-2] for p in paths]})
    splits = load_splits(ds)
    assert splits.task == "image-classification" and splits.source_columns["input"] == "file_name"
    assert isinstance(splits.train.features["image"], datasets.Image)
    assert splits.train[0]["image"].size == (40, 30)


def test_text_model_folder_has_no_image_processor():
    with pytest.raises(HfftError, match="No image processor"):
        IMAGE.load_processor(minilm_folder())


def test_prepare_wants_canonical_columns(vit_processor, tokenizer):
    with pytest.raises(HfftError, match=r"lacks \['image'\]"):
        IMAGE.prepare(datasets.Dataset.from_dict({"img": [1], "labels": [0]}), None, train=False)
    with pytest.raises(HfftError, match=r"lacks \['labels'\]"):
        TEXT.prepare(datasets.Dataset.from_dict({"text": ["x"], "label": [0]}), tokenizer, train=False)


# ---------------------------------------------------------------- text


def test_text_is_truncated_and_padded_per_batch(tokenizer):
    long_text = " ".join(["word"] * 100)
    ds = TEXT.prepare(text_ds([(long_text, 1), ("short one", 0), ("a bit longer one here", 1)]), tokenizer,
                      train=True, max_length=8)
    assert set(ds.column_names) == {"input_ids", "token_type_ids", "attention_mask", "labels"}
    assert len(ds[0]["input_ids"]) == 8
    collate = TEXT.collator(tokenizer)
    short_batch = collate([ds[1], ds[2]])
    longest = max(len(ds[1]["input_ids"]), len(ds[2]["input_ids"]))
    assert short_batch["input_ids"].shape == (2, longest) < (2, 8)  # padded to the batch, not to max_length
    assert short_batch["attention_mask"].sum().item() == len(ds[1]["input_ids"]) + len(ds[2]["input_ids"])
    assert short_batch["labels"].tolist() == [0, 1]
    assert collate([ds[0], ds[1]])["input_ids"].shape == (2, 8)


def test_default_max_length_is_the_model_maximum_capped_at_512(tokenizer):
    ds = TEXT.prepare(text_ds([(" ".join(["word"] * 2000), 0)]), tokenizer, train=False)
    assert len(ds[0]["input_ids"]) == min(tokenizer.model_max_length, 512)


def test_max_length_is_stored_on_the_tokenizer_and_bounded():
    assert TEXT.load_processor(minilm_folder(), max_length=64).model_max_length == 64
    with pytest.raises(HfftError, match="max_length 4096 exceeds"):
        TEXT.load_processor(minilm_folder(), max_length=4096)


def test_tokenizer_without_pad_token_pads_with_eos(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "hello": 2, "world": 3}, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>", eos_token="</s>").save_pretrained(tmp_path)
    tokenizer = TEXT.load_processor(str(tmp_path))
    assert tokenizer.pad_token == "</s>"
    ds = TEXT.prepare(text_ds([("hello", 0), ("hello world world", 1)]), tokenizer, train=True)
    batch = TEXT.collator(tokenizer)([ds[0], ds[1]])
    assert batch["input_ids"].tolist()[0] == [2, 1, 1]


def test_image_model_folder_has_no_tokenizer(vit_processor):
    with pytest.raises(HfftError, match="No tokenizer"):
        TEXT.load_processor(vit_processor)


def test_text_batch_runs_through_a_model(tiny_bert, tokenizer):
    ds = TEXT.prepare(text_ds([("good film", 1), ("a dull and boring story", 0)]), tokenizer, train=True)
    model = TEXT.auto_model_class().from_pretrained(tiny_bert, num_labels=2)
    batch = TEXT.collator(tokenizer)([ds[0], ds[1]])
    out = model(**batch)
    assert out.logits.shape == (2, 2) and torch.isfinite(out.loss)
