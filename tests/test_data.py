"""hfft.data: labelled data from folders, files, in-memory datasets and Hub ids, into canonical splits."""

import csv
import json

import datasets
import numpy as np
import pytest
from PIL import Image

from hfft import HfftError
from hfft.data import load_splits

# ---------------------------------------------------------------- fixtures


def write_images(folder, n, seed=0):
    """n small images in assorted modes: RGB, grayscale, RGBA, palette."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 255, size=(20, 24, 3), dtype=np.uint8))
        image = [image, image.convert("L"), image.convert("RGBA"), image.convert("P")][i % 4]
        image.save(folder / f"{i}.png")


@pytest.fixture
def image_dir(tmp_path):
    for i, name in enumerate(("dog", "cat")):
        write_images(tmp_path / "pets" / name, 10, seed=i)
    return tmp_path / "pets"


def write_csv(path, header, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def reviews(n, offset=0):
    """Unique review texts with string labels, a short title and an id column."""
    return [[i, f"t{i}", f"review number {i} says the film was {'great' if i % 2 else 'bad'}",
             "positive" if i % 2 else "negative"] for i in range(offset, offset + n)]


@pytest.fixture
def reviews_csv(tmp_path):
    return write_csv(tmp_path / "reviews.csv", ["id", "title", "review", "sentiment"], reviews(40))


@pytest.fixture
def classlabel_dsd():
    names = ["zebra", "apple", "mango"]  # deliberately unsorted: the order must survive
    features = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})

    def split(n, offset):
        return datasets.Dataset.from_dict({"sentence": [f"s{i}" for i in range(offset, offset + n)],
                                           "label": [i % 3 for i in range(n)]}, features=features)

    return datasets.DatasetDict({"train": split(30, 0), "validation": split(9, 100), "test": split(6, 200)})


def texts(ds):
    return set(ds["text"])


# ---------------------------------------------------------------- finding task, columns and labels


def test_image_folder_gives_image_task_with_class_folder_labels(image_dir):
    splits = load_splits(image_dir)
    assert splits.task == "image-classification"
    assert splits.labels == ["cat", "dog"]
    assert splits.source_columns == {"input": "image", "label": "label"}
    for ds in (splits.train, splits.eval):
        assert ds.column_names == ["image", "labels"]
        assert isinstance(ds.features["image"], datasets.Image)
        assert ds.features["labels"].dtype == "int64"
    assert len(splits.train) + len(splits.eval) == 20
    assert "of train" in splits.source_splits["eval"]  # no eval folder: held out of train


def test_image_folder_with_train_and_val_subfolders(tmp_path):
    for split, n in (("train", 8), ("val", 4)):
        for name in ("cat", "dog"):
            write_images(tmp_path / "data" / split / name, n)
    splits = load_splits(tmp_path / "data")
    assert splits.labels == ["cat", "dog"]
    assert (len(splits.train), len(splits.eval)) == (16, 8)
    assert splits.source_splits == {"train": "train", "eval": "validation"}
    assert sorted(splits.eval["labels"]) == [0] * 4 + [1] * 4


def test_csv_text_columns_and_sorted_string_labels(reviews_csv):
    splits = load_splits(reviews_csv)
    assert splits.task == "text-classification"
    assert splits.source_columns == {"input": "review", "label": "sentiment"}  # a conventional name beats title
    assert splits.labels == ["negative", "positive"]
    assert splits.train.column_names == ["text", "labels"]
    assert splits.train.features["labels"].dtype == "int64"
    row = splits.train[0]
    assert row["labels"] == (1 if "great" in row["text"] else 0)


def test_text_column_without_a_conventional_name_is_the_longest(tmp_path):
    rows = [[f"w{i}", f"a much longer piece of writing number {i}", i % 2] for i in range(20)]
    splits = load_splits(write_csv(tmp_path / "d.csv", ["code", "blurb", "label"], rows))
    assert splits.source_columns == {"input": "blurb", "label": "label"}


def test_classlabel_order_kept_and_validation_split_preferred(classlabel_dsd):
    splits = load_splits(classlabel_dsd)
    assert splits.labels == ["zebra", "apple", "mango"]
    assert splits.source_splits == {"train": "train", "eval": "validation"}
    assert texts(splits.eval) == {f"s{i}" for i in range(100, 109)}
    assert splits.train["labels"] == classlabel_dsd["train"]["label"]  # ids unchanged


def test_test_split_used_when_there_is_no_validation(classlabel_dsd):
    del classlabel_dsd["validation"]
    splits = load_splits(classlabel_dsd)
    assert splits.source_splits["eval"] == "test"
    assert len(splits.eval) == 6


def test_integer_labels_sorted_numerically_from_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"sentence": f"s{i}", "label": [10, 2, 0][i % 3]}) + "\n" for i in range(30)))
    splits = load_splits(path)
    assert splits.labels == ["0", "2", "10"]
    row = splits.train[0]
    assert splits.labels[row["labels"]] == str([10, 2, 0][int(row["text"][1:]) % 3])


def test_overrides_pick_columns_and_task(tmp_path):
    rows = [[f"short {i}", f"the other, longer text {i}", ["x", "y"][i % 2], ["a", "b", "c"][i % 3]] for i in range(30)]
    path = write_csv(tmp_path / "d.csv", ["sentence", "review", "label", "category"], rows)
    splits = load_splits(path, input_column="sentence", label_column="category", task="text-classification")
    assert splits.source_columns == {"input": "sentence", "label": "category"}
    assert splits.labels == ["a", "b", "c"]
    assert all(t.startswith("short") for t in splits.train["text"])


def test_several_label_candidates_is_an_error_naming_them(tmp_path):
    rows = [[f"text {i}", i % 2, i % 3] for i in range(10)]
    path = write_csv(tmp_path / "d.csv", ["text", "label", "category"], rows)
    with pytest.raises(HfftError, match=r"label.*category.*label_column="):
        load_splits(path)


def test_several_conventional_text_columns_is_an_error(tmp_path):
    rows = [[f"text {i}", f"review {i}", i % 2] for i in range(10)]
    with pytest.raises(HfftError, match=r"'text', 'review'.*input_column="):
        load_splits(write_csv(tmp_path / "d.csv", ["text", "review", "label"], rows))


def test_no_label_column_lists_the_columns(tmp_path):
    rows = [[f"text {i}", i % 2] for i in range(10)]
    with pytest.raises(HfftError, match=r"No label column.*text \(string\).*stars \(int64\).*label_column="):
        load_splits(write_csv(tmp_path / "d.csv", ["text", "stars"], rows))


def test_flat_image_folder_says_to_make_class_folders(tmp_path):
    write_images(tmp_path / "flat", 4)
    with pytest.raises(HfftError, match="subfolder per class"):
        load_splits(tmp_path / "flat")


@pytest.mark.parametrize("kwargs, named", [({"label_column": "sentimnt"}, "Did you mean 'sentiment'"),
                                           ({"input_column": "reveiw"}, "Did you mean 'review'"),
                                           ({"eval_split": "tset"}, "Did you mean 'test'"),
                                           ({"task": "text-clasification"}, "Did you mean 'text-classification'")])
def test_unknown_names_are_errors_with_a_suggestion(tmp_path, kwargs, named):
    folder = tmp_path / "csvs"
    folder.mkdir()
    write_csv(folder / "train.csv", ["review", "sentiment"], [r[2:] for r in reviews(20)])
    write_csv(folder / "test.csv", ["review", "sentiment"], [r[2:] for r in reviews(6, 100)])
    with pytest.raises(HfftError, match=named):
        load_splits(folder, **kwargs)


# ---------------------------------------------------------------- splits


def test_held_out_split_is_seeded_disjoint_and_stratified(reviews_csv):
    first, again = load_splits(reviews_csv, seed=3), load_splits(reviews_csv, seed=3)
    assert texts(first.eval) == texts(again.eval)
    assert texts(first.train) == texts(again.train)
    assert not texts(first.train) & texts(first.eval)
    assert len(texts(first.train) | texts(first.eval)) == 40
    assert len(first.eval) == 4 and sorted(first.eval["labels"]) == [0, 0, 1, 1]
    other = load_splits(reviews_csv, seed=4, val_fraction=0.25)
    assert len(other.eval) == 10 and texts(other.eval) != texts(first.eval)


def test_max_samples_subsample_deterministically(reviews_csv):
    a = load_splits(reviews_csv, max_train_samples=10, max_eval_samples=2)
    b = load_splits(reviews_csv, max_train_samples=10, max_eval_samples=2)
    assert (len(a.train), len(a.eval)) == (10, 2)
    assert a.train["text"] == b.train["text"] and a.eval["text"] == b.eval["text"]
    assert a.labels == ["negative", "positive"]  # labels come from the whole train split


def test_folder_of_files_maps_names_to_splits(tmp_path):
    folder = tmp_path / "csvs"
    folder.mkdir()
    write_csv(folder / "reviews_train.csv", ["review", "sentiment"], [r[2:] for r in reviews(20)])
    write_csv(folder / "reviews_test.csv", ["review", "sentiment"], [r[2:] for r in reviews(6, 100)])
    splits = load_splits(folder)
    assert (len(splits.train), len(splits.eval)) == (20, 6)
    assert splits.source_splits == {"train": "train", "eval": "test"}
    # the same files as a list
    listed = load_splits([folder / "reviews_train.csv", folder / "reviews_test.csv"])
    assert texts(listed.eval) == texts(splits.eval)


def test_rows_without_label_or_text_are_dropped(tmp_path):
    rows = [[f"text {i}", ["a", "b"][i % 2]] for i in range(20)] + [["", "a"], ["orphan", ""]]
    splits = load_splits(write_csv(tmp_path / "d.csv", ["text", "label"], rows), val_fraction=0.2)
    assert len(splits.train) + len(splits.eval) == 20
    assert splits.labels == ["a", "b"]


# ---------------------------------------------------------------- errors


def test_unseen_eval_labels_are_named(classlabel_dsd):
    train = classlabel_dsd["train"].filter(lambda row: row["label"] != 2)  # no mango in train
    with pytest.raises(HfftError, match=r"never has: \['mango'\]"):
        load_splits(datasets.DatasetDict({"train": train, "validation": classlabel_dsd["validation"]}))


def test_single_class_is_an_error(tmp_path):
    rows = [[f"text {i}", "only"] for i in range(10)]
    with pytest.raises(HfftError, match=r"single class \(\['only'\]\)"):
        load_splits(write_csv(tmp_path / "d.csv", ["text", "label"], rows))


def test_missing_path_is_named(tmp_path):
    with pytest.raises(HfftError, match="nowhere.csv.*does not exist"):
        load_splits(tmp_path / "nowhere.csv")
    with pytest.raises(HfftError, match=r"not_there.*does not exist"):
        load_splits([tmp_path / "not_there.csv"])


def test_empty_folder_is_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(HfftError, match=r"empty.*it is empty"):
        load_splits(tmp_path / "empty")


def test_empty_split_is_named(tmp_path):
    folder = tmp_path / "csvs"
    folder.mkdir()
    write_csv(folder / "train.csv", ["review", "sentiment"], [r[2:] for r in reviews(20)])
    write_csv(folder / "test.csv", ["review", "sentiment"], [])
    with pytest.raises(HfftError, match="Split 'test' is empty"):
        load_splits(folder)


def test_eval_split_without_the_columns_is_an_error(classlabel_dsd):
    classlabel_dsd["validation"] = classlabel_dsd["validation"].rename_column("label", "tag")
    with pytest.raises(HfftError, match=r"'validation' lacks column\(s\) \['label'\]"):
        load_splits(classlabel_dsd)


def test_non_integer_numbers_are_not_labels(tmp_path):
    rows = [[f"text {i}", i / 7] for i in range(10)]
    with pytest.raises(HfftError, match="non-integer"):
        load_splits(write_csv(tmp_path / "d.csv", ["text", "label"], rows))


def test_hub_id_offline_says_what_to_do():
    with pytest.raises(HfftError, match=r"someone/no-such-data.*(HF_HUB_OFFLINE|network).*local"):
        load_splits("someone/no-such-data")


# ---------------------------------------------------------------- more sources


def test_image_folder_layout_rules(tmp_path, caplog):
    root = tmp_path / "lab"
    write_images(root / "test", 6)      # a class that happens to be called "test": no split folder below it
    write_images(root / "control", 6)
    write_images(root, 1)               # a stray image outside every class folder
    splits = load_splits(root, val_fraction=0.25)
    assert splits.labels == ["control", "test"]
    assert len(splits.train) + len(splits.eval) == 12
    assert "dropped 1 rows" in caplog.text


def test_parquet_dict_and_saved_dataset_sources(tmp_path, classlabel_dsd):
    for split in ("train", "validation"):
        classlabel_dsd[split].to_parquet(tmp_path / f"{split}.parquet")
    from_dict = load_splits({"train": tmp_path / "train.parquet", "validation": [tmp_path / "validation.parquet"]})
    assert from_dict.labels == ["zebra", "apple", "mango"]  # parquet keeps the ClassLabel feature
    assert from_dict.source_splits["eval"] == "validation"
    classlabel_dsd.save_to_disk(tmp_path / "saved")
    saved = load_splits(tmp_path / "saved")
    assert texts(saved.eval) == texts(from_dict.eval)


def test_in_memory_dataset_with_images_and_int_labels():
    images = [Image.new("RGB", (8, 8), (i * 20, 0, 0)) for i in range(12)]
    ds = datasets.Dataset.from_dict({"img": images, "target": [i % 3 for i in range(12)]})
    splits = load_splits(ds, val_fraction=0.25)
    assert splits.task == "image-classification"
    assert splits.source_columns == {"input": "img", "label": "target"}
    assert splits.labels == ["0", "1", "2"] and sorted(splits.eval["labels"]) == [0, 1, 2]


def test_task_that_does_not_fit_the_data_is_an_error(reviews_csv):
    with pytest.raises(HfftError, match=r"No image column for image-classification.*input_column="):
        load_splits(reviews_csv, task="image-classification")


def test_mixed_file_formats_are_an_error(tmp_path, reviews_csv):
    (tmp_path / "more.jsonl").write_text('{"review": "x", "sentiment": "positive"}\n')
    with pytest.raises(HfftError, match="different formats"):
        load_splits([reviews_csv, tmp_path / "more.jsonl"])


# ---------------------------------------------------------------- odd sources and values, named


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), 1e300])
def test_non_finite_or_huge_float_labels_are_named(tmp_path, bad):
    labels = [0.0, 1.0] * 5 + [bad]
    ds = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(11)], "label": labels})
    with pytest.raises(HfftError, match=r"'label' holds NaN, infinite or huge numbers \(row\(s\) 10"):
        load_splits(ds)
    if bad == float("inf"):  # pandas reads "inf" in a CSV as infinity
        path = write_csv(tmp_path / "d.csv", ["text", "label"], [[f"t{i}", y] for i, y in enumerate(labels)])
        with pytest.raises(HfftError, match="infinite"):
            load_splits(path)


@pytest.mark.parametrize("source, fragment", [
    ([], "names no files"), ({}, "names no files"), ({"train": []}, "Split 'train' of the data source names no"),
    ({1: "a.csv"}, r"split names \(text\), got 1"), ({"train": None}, "must be a data file path or a list"),
    ([1, 2], "must be a data file path or a list"),
])
def test_empty_or_malformed_file_sources_are_named(source, fragment):
    with pytest.raises(HfftError, match=fragment):
        load_splits(source)


def test_garbage_parquet_and_bogus_saved_dataset_folders_are_named(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"not parquet at all" * 4)
    with pytest.raises(HfftError, match=r"train\.parquet' is not a readable Parquet file"):
        load_splits(tmp_path / "train.parquet")
    for marker, text in (("state.json", "{}"), ("dataset_dict.json", '{"splits": ["train"]}'),
                         ("dataset_dict.json", "garbage")):
        folder = tmp_path / f"saved_{marker}_{len(text)}"
        folder.mkdir()
        (folder / marker).write_text(text)
        with pytest.raises(HfftError, match=f"holds {marker}.*save_to_disk.*cannot be loaded"):
            load_splits(folder)


def test_bytes_to_bytes_codecs_are_refused_as_encodings(reviews_csv):
    for codec in ("rot13", "base64", "hex"):
        with pytest.raises(HfftError, match="name of a text encoding"):
            load_splits(reviews_csv, encoding=codec)


def corrupt_zlib_png(good: bytes) -> bytes:
    """`good` with a byte of its compressed image data flipped and the chunk's checksum fixed up: every CRC is
    right, so only decoding finds the damage."""
    import struct
    import zlib

    pos = good.index(b"IDAT") - 4
    (length,) = struct.unpack(">I", good[pos:pos + 4])
    data = bytearray(good[pos + 8:pos + 8 + length])
    data[length // 2] ^= 0xFF
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(data)) & 0xFFFFFFFF)
    return good[:pos + 8] + bytes(data) + crc + good[pos + 12 + length:]


def test_a_png_with_right_checksums_but_corrupt_data_is_named_up_front(image_dir):
    good = (image_dir / "dog" / "0.png").read_bytes()
    (image_dir / "dog" / "broken.png").write_bytes(corrupt_zlib_png(good))
    with pytest.raises(HfftError, match=r"1 input file\(s\) cannot be read:\n  .*broken\.png: unreadable"):
        load_splits(image_dir)
    splits = load_splits(image_dir, skip_bad_files=True)
    assert len(splits.train) + len(splits.eval) == 20
