"""Image classification: PIL-only preprocessing (no torchvision) around the model's own image processor.

Training images get a random resized crop and a horizontal flip, done in PIL on the fly (a lazy
`with_transform`, so nothing is decoded or stored ahead), then the processor's rescale and normalisation.
Evaluation images go through the processor unchanged (its deterministic resize / center crop), which is exactly
what `transformers.pipeline` does with the saved processor at inference.
"""

from __future__ import annotations

import importlib.util
import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import HfftError
from . import Task, register_task

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
CROP_SCALE = (0.35, 1.0)        # fraction of the image area a training crop keeps
CROP_RATIO = (3 / 4, 4 / 3)     # aspect ratios of training crops (before they are resized to the model's size)
REDUCING_GAP = 3                # images over 3x the model's size are first shrunk by an integer factor (see shrink)

# transformers >= 5 chooses between torchvision and PIL processors; `backend="pil"` picks PIL explicitly and
# silences the "torchvision not installed" warning. Older versions have PIL processors only.
_HAS_BACKENDS = importlib.util.find_spec("transformers.image_processing_backends") is not None


def to_rgb(image: Image.Image) -> Image.Image:
    """3-channel 8-bit RGB, upright. Matches transformers.image_utils.load_image (EXIF orientation applied, alpha
    dropped) so training sees what the pipeline sees; 16-bit and float images are scaled to 8 bits first instead
    of being clipped."""
    if image.getexif().get(0x0112, 1) != 1:  # the orientation tag; most images have none, so no copy
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if image.mode == "F":
            top = 1.0 if pixels.max(initial=0) <= 1.0 else 255.0
        else:
            top = 65535.0 if pixels.max(initial=0) > 255 else 255.0
        image = Image.fromarray(np.clip(pixels / top * 255.0 + 0.5, 0, 255).astype(np.uint8))  # mode "L"
    return image if image.mode == "RGB" else image.convert("RGB")


def shrink(image: Image.Image, side: int) -> Image.Image:
    """A huge image (a 10,000 px scan for a 224 px model) box-reduced by an integer factor to at least
    REDUCING_GAP x `side` on its short edge: PIL's own two-step resize (`reducing_gap`), whose result is
    indistinguishable from a direct resize, while a direct one through the processor takes seconds and gigabytes.
    Images already near the model's size are returned as they are."""
    factor = min(image.size) // (REDUCING_GAP * side)
    if factor < 2:
        return image
    reducible = {"1": "L", "P": "RGBA", "I;16": "I", "I;16B": "I", "I;16L": "I", "I;16N": "I"}  # reduce() lacks these
    if image.mode in reducible:
        image = image.convert(reducible[image.mode])
    return image.reduce(factor)


def image_problem(source) -> str | None:
    """Why an image file (a path, or its encoded bytes) cannot be trained on, or None when it can. The file is
    read from disk once, into memory. Opening reads the header, so a file that is no image fails at once; PNG
    chunks are checked against their checksums (verify) and then decoded, because a PNG whose checksums are right
    can still hold a corrupt compressed stream that only decoding finds; JPEG is decoded at 1/8 scale, which still
    reads every byte, so a truncated file fails; other formats are decoded. Decoding every PNG in full is the
    dearest part of the check (about as long as one epoch's decoding of them, done once before training)."""
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # 90-180 MP: loads, and is shrunk
            with Image.open(io.BytesIO(data)) as image:
                if image.format == "PNG":
                    image.verify()  # the checksums; verify leaves the image unusable, so it is opened again
            with Image.open(io.BytesIO(data)) as image:
                if image.format == "JPEG":
                    image.draft(image.mode, (1, 1))
                image.load()
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not an image file"
    except Image.DecompressionBombError as err:
        return f"too large ({err}); resize it, or raise PIL.Image.MAX_IMAGE_PIXELS if you trust it"
    except Exception as err:  # broken files raise what the decoder happens to hit: OSError, SyntaxError, ...
        return f"unreadable ({type(err).__name__}: {err})"
    return None


def random_resized_crop(image: Image.Image, size: tuple[int, int], rng: np.random.Generator, *,
                        scale=CROP_SCALE, ratio=CROP_RATIO, resample=Image.Resampling.BILINEAR) -> Image.Image:
    """A crop covering `scale` of the area with an aspect ratio in `ratio` (log-uniform), resized to size=(h, w)."""
    width, height = image.size
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            break
    else:  # a very elongated image: the central crop with the nearest allowed aspect ratio
        w, h = width, height
        if width / height < ratio[0]:
            h = round(width / ratio[0])
        elif width / height > ratio[1]:
            w = round(height * ratio[1])
        left, top = (width - w) // 2, (height - h) // 2
    return image.resize((size[1], size[0]), resample=resample, box=(left, top, left + w, top + h))


def output_size(processor) -> tuple[int, int]:
    """(height, width) of the processor's pixel_values, found by running it once: robust to every size convention
    (height/width, shortest_edge with crop_pct, resize then center crop)."""
    pixels = processor(Image.new("RGB", (320, 320)), return_tensors="np")["pixel_values"]
    return tuple(int(n) for n in pixels.shape[-2:])


def set_image_size(processor, size: int) -> None:
    """Make the processor output size x size images. The change lives on the processor, so the copy saved with
    the model makes `pipeline()` preprocess at the same size. Resize-then-crop processors keep their ratio."""
    def get(sizes, key):
        return sizes.get(key) if isinstance(sizes, dict) else getattr(sizes, key, None)

    def scaled(sizes, factor):
        if get(sizes, "shortest_edge"):
            return {"shortest_edge": round(get(sizes, "shortest_edge") * factor)}
        if get(sizes, "height") and get(sizes, "width"):
            return {"height": round(get(sizes, "height") * factor), "width": round(get(sizes, "width") * factor)}
        return None

    def like(old, new: dict):  # keep the processor's own size type (a SizeDict in transformers 5)
        return new if isinstance(old, dict) or old is None else type(old)(**new)

    crop = getattr(processor, "crop_size", None)
    resize_then_crop = getattr(processor, "do_center_crop", False) and get(crop, "height")
    if resize_then_crop:  # say 256 -> 224: the resize scales by the same factor, the crop becomes `size`
        new_size = scaled(processor.size, size / get(crop, "height"))
    elif get(processor.size, "height") and get(processor.size, "width"):
        new_size = {"height": size, "width": size}
    elif get(processor.size, "shortest_edge"):
        new_size = {"shortest_edge": size}  # ConvNeXt-style processors still crop to shortest_edge squared
    else:
        new_size = None
    if new_size is None:
        raise HfftError(f"Cannot set image_size for {type(processor).__name__} (size {processor.size}). Leave "
                        "data.image_size empty to use the model's own size.")
    if resize_then_crop:
        processor.crop_size = like(crop, {"height": size, "width": size})
    processor.size = like(processor.size, new_size)
    if output_size(processor) != (size, size):
        raise HfftError(f"{type(processor).__name__} did not produce {size}x{size} images after setting image_size "
                        f"(got {output_size(processor)}). Leave data.image_size empty to use the model's own size.")


class ImageTransform:
    """The lazy per-batch transform: canonical rows {"image": PIL, "labels": int} -> {"pixel_values", "labels"}.

    Randomness: each call draws one number from torch's global generator and seeds a numpy Generator with
    (seed, that number). The Trainer seeds torch (set_seed) and gives every DataLoader worker its own torch seed
    per epoch, so augmentation is reproducible for a given seed, differs across epochs and workers, and resumes
    exactly (the Trainer checkpoints torch's RNG state). Outside the Trainer, torch.manual_seed() fixes it."""

    def __init__(self, processor, *, train: bool, seed: int = 42):
        self.processor = processor
        self.train = train
        self.seed = seed
        self.size = output_size(processor)
        resample = getattr(processor, "resample", None)
        self.resample = Image.Resampling(int(resample)) if resample is not None else Image.Resampling.BILINEAR

    def __call__(self, batch: dict) -> dict:
        images = [to_rgb(shrink(image, max(self.size))) for image in batch["image"]]
        if self.train:
            draw = int(torch.randint(0, 2**31 - 1, ()).item())
            rng = np.random.default_rng([self.seed, draw])
            images = [self._augment(image, rng) for image in images]
            # The crop already has the model's size: the processor only rescales and normalises.
            pixels = self.processor(images, do_resize=False, do_center_crop=False, return_tensors="pt")
        else:
            pixels = self.processor(images, return_tensors="pt")
        out = {"pixel_values": pixels["pixel_values"]}
        if "labels" in batch:
            out["labels"] = batch["labels"]
        return out

    def _augment(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        image = random_resized_crop(image, self.size, rng, resample=self.resample)
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def collate_images(examples: list[dict]) -> dict:
    batch = {"pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples])}
    if "labels" in examples[0]:
        batch["labels"] = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long)
    return batch


@register_task
class ImageClassification(Task):
    name = "image-classification"
    input_column = "image"
    pipeline_task = "image-classification"
    input_names = ("image", "img", "images", "picture", "photo", "pixel_values", "image_path", "image_file",
                   "file_name", "filename", "filepath", "file", "path")
    detect_priority = 10

    def input_feature(self):
        import datasets

        return datasets.Image()

    def input_candidates(self, ds) -> list[str]:
        """Image features; failing those, columns with an image-like name holding image file paths."""
        import datasets

        images = [c for c, f in ds.features.items() if isinstance(f, datasets.Image)]
        return images or [c for c, f in ds.features.items() if c.lower() in self.input_names
                          and _is_string(f) and _looks_like_paths(ds, c)]

    def check_input(self, ds, column: str) -> None:
        import datasets

        feature = ds.features[column]
        if isinstance(feature, datasets.Image):
            return
        if not _is_string(feature):
            raise HfftError(f"Column {column!r} holds {feature}, not images or image paths. Pass input_column= "
                            "naming the image column.")
        first = next((p for p in ds.select_columns([column])[:20][column] if p), None)
        if first is None or not Path(first).is_file():
            raise HfftError(f"Column {column!r} should hold image file paths, but {first!r} is not a file (paths "
                            f"are read relative to {Path.cwd()}). Use absolute paths or run from their folder.")

    def unreadable_inputs(self, ds, column: str) -> dict[int, str]:
        """{row: why} over every image, read in chunks of rows (paths, or the bytes datasets stores; nothing is
        decoded in full unless the format needs it)."""
        import datasets

        embedded = isinstance(ds.features[column], datasets.Image)
        problems = {}
        table = ds.select_columns([column]).with_format("arrow")
        for start in range(0, len(ds), 1000):
            values = table[start:start + 1000][column].to_pylist()  # {"bytes", "path"} structs, or path strings
            rows = ((v["bytes"], v["path"]) if embedded and v else (None, v) for v in values)
            for row, (data, path) in enumerate(rows, start):
                if data is None and (path is None or "://" in path or "::" in path):
                    continue  # no input (dropped elsewhere), or a remote file datasets fetches itself
                problem = image_problem(data if data is not None else path)
                if problem:
                    problems[row] = problem
        return problems

    def auto_model_class(self):
        from transformers import AutoModelForImageClassification

        return AutoModelForImageClassification

    def load_processor(self, model_path: str, *, image_size=None, max_length=None, trust_remote_code=False,
                       **hub_kwargs):
        from transformers import AutoImageProcessor

        kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
        if _HAS_BACKENDS:
            kwargs["backend"] = "pil"
        try:
            processor = AutoImageProcessor.from_pretrained(model_path, trust_remote_code=trust_remote_code, **kwargs)
        except (OSError, ValueError) as err:
            raise HfftError(f"No image processor could be loaded for {str(model_path)!r}: {err}. An image model "
                            "needs a preprocessor_config.json beside its weights; is this an image model?") from err
        if image_size:
            set_image_size(processor, int(image_size))
        return processor

    def prepare(self, ds, processor, *, train: bool, seed: int = 42, max_length: int | None = None):
        self._require_columns(ds)
        return ds.with_transform(ImageTransform(processor, train=train, seed=seed))

    def collator(self, processor):
        return collate_images


def _is_string(feature) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _looks_like_paths(ds, column: str) -> bool:
    values = [v for v in ds.select_columns([column])[:20][column] if v]
    return bool(values) and all(str(v).lower().endswith(IMAGE_SUFFIXES) for v in values)
