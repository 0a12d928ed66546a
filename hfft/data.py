"""Labelled data from anywhere, into canonical train and eval splits.

`load_splits(source)` accepts an in-memory `datasets.Dataset`/`DatasetDict`, a folder of images with one
subfolder per class (optionally under train/ and validation|val|test/), a CSV/TSV/JSON/JSONL/Parquet file, a
list of such files, a {split: files} dict, a folder of such files (train.csv + test.csv name their splits), a
`save_to_disk` folder, or a Hub dataset id. It finds the label column, the task and the input column, maps labels
to ids 0..n-1, and returns splits with exactly two columns: the task's input ("image" or "text") and "labels"
(a ClassLabel, i.e. int64 ids that carry their names).

Everything here is a vectorised arrow/datasets operation: no Python loop over rows, and no image is decoded.
The one exception is deliberate: every input file is opened once (`Task.unreadable_inputs`), so corrupt or
truncated images are all named before training instead of crashing it an hour in.
Which columns hold a modality's input is asked of the tasks registry (`hfft.tasks`), so a new modality needs no
change here.
"""

from __future__ import annotations

import codecs
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .config import is_text_encoding
from .errors import HfftError, suggest
from .tasks import Task, get_task, tasks_by_priority

log = logging.getLogger("hfft")

LABEL_NAMES = ("label", "labels", "class", "classes", "target", "category", "sentiment", "y")
EVAL_SPLIT_NAMES = ("validation", "valid", "val", "dev", "test", "testing", "eval", "evaluation")  # preference order
FILE_SPLIT_WORDS = {"train": ("train", "training"), "validation": ("validation", "valid", "val", "dev"),
                    "test": ("test", "testing", "eval", "evaluation")}
# suffix -> (datasets builder, builder options)
TABLE_FORMATS = {".csv": ("csv", {}), ".tsv": ("csv", {"sep": "\t"}), ".json": ("json", {}),
                 ".jsonl": ("json", {}), ".parquet": ("parquet", {}), ".arrow": ("arrow", {})}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SYSTEM_FILES = ("thumbs.db", "desktop.ini")  # written into folders by file browsers; never data
SHOWN_BAD_FILES = 20  # an error lists this many unreadable files, then a count
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


@dataclass
class Splits:
    train: datasets.Dataset  # columns: the task's input ("image" | "text") and "labels" (ClassLabel ids 0..n-1)
    eval: datasets.Dataset   # same columns and label ids
    task: str                # "image-classification" | "text-classification"
    labels: list[str]        # id -> label name
    source_columns: dict     # what was found, for logs and the saved config: {"input": ..., "label": ...}
    source_splits: dict = field(default_factory=dict)  # {"train": "train", "eval": "test" | "10% of train ..."}


def load_splits(source, *, task: str | None = None, input_column: str | None = None,
                label_column: str | None = None, train_split: str = "train", eval_split: str | None = None,
                val_fraction: float = 0.1, seed: int = 42, max_train_samples: int | None = None,
                max_eval_samples: int | None = None, skip_bad_files: bool = False,
                encoding: str | None = None) -> Splits:
    """Canonical train/eval splits of `source` (see the module docstring). With no eval split in the data (and
    eval_split None), a seeded, stratified-when-possible `val_fraction` of train is held out. Labels come from
    the whole train split, before any hold-out or subsampling, so they are the same on every rebuild.
    Unreadable input files are an error naming all of them, or with `skip_bad_files` are dropped with a warning.
    `encoding`: of CSV/TSV files (default UTF-8)."""
    if not 0 < val_fraction < 1:
        raise HfftError(f"val_fraction must be between 0 and 1, got {val_fraction}.")
    if encoding is not None and not is_text_encoding(encoding):
        raise HfftError(f"encoding must be the name of a text encoding such as 'utf-8', 'cp1252' or 'latin-1', "
                        f"got {encoding!r}.")
    splits, hint = load_source(source, train_split=train_split, encoding=encoding)
    train_name, eval_name = _pick_splits(splits, train_split, eval_split)
    raw_train = splits[train_name]
    _require_rows(raw_train, train_name)

    label_col = find_label_column(raw_train, label_column, hint=hint)
    the_task = find_task(raw_train, task, label_col, input_column)
    input_col = find_input_column(raw_train, the_task, input_column, label_col)
    raw_train = drop_incomplete(raw_train, input_col, label_col, train_name)
    raw = drop_unreadable({train_name: raw_train, **({eval_name: splits[eval_name]} if eval_name else {})},
                          the_task, input_col, skip=skip_bad_files)
    raw_train = raw[train_name]
    labels, train_classes = label_names(raw_train, label_col)
    if len(train_classes) < 2:
        raise HfftError(f"Split {train_name!r} has a single class ({train_classes}) in label column {label_col!r}: "
                        "a classifier needs at least two. Check label_column or the data.")
    log.info("data: %s from columns input=%r label=%r, %d labels", the_task.name, input_col, label_col, len(labels))

    train = canonical(raw_train, the_task, input_col, label_col, labels, train_name)
    if eval_name is None:
        train, eval_ds = hold_out(train, val_fraction, seed, train_name)
        eval_name = f"{val_fraction:.0%} of {train_name} (seed {seed})"
    else:
        eval_ds = _eval_split(raw[eval_name], eval_name, the_task, input_col, label_col, labels,
                              seen=set(train_classes), train_name=train_name)

    train = subsample(train, max_train_samples, seed, "max_train_samples")
    eval_ds = subsample(eval_ds, max_eval_samples, seed, "max_eval_samples")
    _require_rows(train, train_name)
    _require_rows(eval_ds, eval_name)
    return Splits(train=train, eval=eval_ds, task=the_task.name, labels=labels,
                  source_columns={"input": input_col, "label": label_col},
                  source_splits={"train": train_name, "eval": eval_name})


def _eval_split(raw, name, task, input_col, label_col, labels, *, seen, train_name) -> datasets.Dataset:
    _require_rows(raw, name)
    missing = [c for c in (input_col, label_col) if c not in raw.column_names]
    if missing:
        raise HfftError(f"Split {name!r} lacks column(s) {missing} that split {train_name!r} has; its columns: "
                        f"{raw.column_names}. Pass eval_split= naming another split.")
    raw = drop_incomplete(raw, input_col, label_col, name)
    _check_seen(raw, label_col, seen, name, train_name)
    return canonical(raw, task, input_col, label_col, labels, name)


# ---------------------------------------------------------------- loading


def load_source(source, *, train_split: str = "train", encoding: str | None = None) \
        -> tuple[datasets.DatasetDict, str]:
    """(DatasetDict, hint): the hint is added to 'no label column' errors (image folders need class folders)."""
    if isinstance(source, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise HfftError("Streaming (iterable) datasets are not supported: load it without streaming=True.")
    if isinstance(source, datasets.DatasetDict):
        return source, ""
    if isinstance(source, datasets.Dataset):
        return datasets.DatasetDict({train_split: source}), ""
    if isinstance(source, dict):
        named = [split for split in source if not isinstance(split, str)]
        if named:
            raise HfftError(f"The keys of a {{split: files}} data source are split names (text), got {named[0]!r}: "
                            "write e.g. {'train': 'train.csv', 'test': 'test.csv'}.")
        return _load_files({split: _as_list(files, split) for split, files in source.items()}, encoding), ""
    if isinstance(source, (list, tuple)):
        return _load_files(_files_by_split([Path(p) for p in _as_list(source)]), encoding), ""
    if not isinstance(source, (str, os.PathLike)):
        raise HfftError(f"Cannot load data from a {type(source).__name__}. Pass a datasets.Dataset/DatasetDict, a "
                        "folder, a CSV/JSON/Parquet file (or a list of them), or a Hub dataset id.")
    path = Path(source).expanduser()
    if path.is_file():
        return _load_files(_files_by_split([path]), encoding), ""
    if path.is_dir():
        return _load_folder(path, train_split, encoding)
    if not _HUB_ID.match(str(source)) or path.suffix.lower() in (*TABLE_FORMATS, *IMAGE_SUFFIXES):
        raise HfftError(f"Data path {str(source)!r} does not exist. Check the path (relative paths are read from "
                        f"{Path.cwd()}).")
    return _load_hub(str(source)), ""


def _load_folder(path: Path, train_split: str, encoding: str | None) -> tuple[datasets.DatasetDict, str]:
    marker = next((name for name in ("dataset_dict.json", "state.json") if (path / name).is_file()), None)
    if marker:  # made by save_to_disk
        try:
            loaded = datasets.load_from_disk(str(path))
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as err:  # JSON errors are ValueErrors
            raise HfftError(f"Folder {str(path)!r} holds {marker}, so it was read as a datasets save_to_disk "
                            f"folder, but it cannot be loaded ({type(err).__name__}: {err}). Save the dataset "
                            f"again with save_to_disk, or remove {marker} if the folder holds other data.") from None
        return (loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({train_split: loaded})), ""
    files = [p for p in sorted(path.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)]
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if images:
        hint = " (an image folder needs one subfolder per class, e.g. cats/1.jpg, dogs/2.jpg)"
        if any(p.stem == "metadata" and p.suffix.lower() in TABLE_FORMATS for p in files):
            return datasets.load_dataset("imagefolder", data_dir=str(path)), hint  # labels in a metadata file
        # Other files inside class folders are reported as unreadable (or skipped), not silently left out.
        others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES and p.name.lower() not in SYSTEM_FILES]
        return _image_folder(path, images, others), hint
    tables = [p for p in files if p.suffix.lower() in TABLE_FORMATS]
    if tables:
        return _load_files(_files_by_split(tables, root=path), encoding), ""
    found = f"it holds e.g. {files[0].relative_to(path)}" if files else "it is empty"
    raise HfftError(f"No images and no CSV/JSON/Parquet files in folder {str(path)!r} ({found}). Point the data "
                    "at a folder of class subfolders of images, or at labelled data files.")


def _image_folder(root: Path, images: list[Path], others: list[Path] = ()) -> datasets.DatasetDict:
    """What datasets' imagefolder reads (class = the image's folder; train/ val/ test/ folders above the class
    folders name splits; class names sorted), built straight from the file list: imagefolder's pattern matching
    takes seconds on a few thousand files. `others` (files without an image suffix) are kept where they sit in a
    class folder, so that the check for unreadable files names them; elsewhere (a README beside the class
    folders) they are ignored."""
    split_of = {word: split for split, words in FILE_SPLIT_WORDS.items() for word in words}
    rows: dict[str, tuple[list[str], list[str | None]]] = {}
    for file in sorted([*images, *others]):
        parts = file.relative_to(root).parts
        split = split_of.get(parts[0].lower()) if len(parts) >= 3 else None  # split/class/image
        below = parts[1:] if split else parts
        folder = below[-2] if len(below) >= 2 else None  # the image's own folder; none at the top
        if folder is None and file.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        paths, classes = rows.setdefault(split or "train", ([], []))
        paths.append(str(file))
        classes.append(folder)
    names = sorted({c for _, classes in rows.values() for c in classes if c is not None})
    ids = {name: i for i, name in enumerate(names)}
    features = datasets.Features({"image": datasets.Image(), **({"label": datasets.ClassLabel(names=names)}
                                                                 if names else {})})
    out = {}
    for split, (paths, classes) in rows.items():
        data = {"image": paths, **({"label": [ids.get(c, -1) for c in classes]} if names else {})}
        out[split] = datasets.Dataset.from_dict(data, features=features)
    return datasets.DatasetDict(out)


def _files_by_split(files: list[Path], root: Path | None = None) -> dict[str, list[str]]:
    """Split names from file names: train.csv, reviews_test.csv, val/part-0.parquet. Files naming no split are
    the train split, unless another file is named train."""
    groups: dict[str, list[str]] = {}
    unnamed = []
    for file in files:
        words = re.split(r"[^a-z0-9]+", str(file.relative_to(root) if root else file.name).lower())
        split = next((split for word in words for split, names in FILE_SPLIT_WORDS.items() if word in names), None)
        (groups.setdefault(split, []) if split else unnamed).append(str(file))
    if unnamed and "train" in groups:
        raise HfftError(f"Cannot tell which split these files belong to: {unnamed}. Name them like train.csv / "
                        "test.csv, or pass a {split: files} dict.")
    if unnamed:
        groups["train"] = unnamed
    return groups


def _load_files(groups: dict[str, list[str]], encoding: str | None = None) -> datasets.DatasetDict:
    if not groups:
        raise HfftError("The data source names no files: give a data file, a list of them, or a {split: files} "
                        "dict such as {'train': 'train.csv'}.")
    for split, files in groups.items():
        if not files:
            raise HfftError(f"Split {split!r} of the data source names no files: give it a file, or leave it out.")
    formats = {}
    for files in groups.values():
        for file in files:
            if not Path(file).is_file():
                raise HfftError(f"Data file {file!r} does not exist.")
            suffix = Path(file).suffix.lower()
            if suffix not in TABLE_FORMATS:
                raise HfftError(f"Unsupported data file {file!r}: use one of {sorted(TABLE_FORMATS)}, or a folder of "
                                "images with one subfolder per class.")
            builder, options = TABLE_FORMATS[suffix]
            formats[(builder, tuple(options.items()))] = file
    if len(formats) > 1:
        raise HfftError(f"Data files of different formats cannot be read together: {sorted(formats.values())}. "
                        "Convert them to one format.")
    (builder, options), = formats
    options = dict(options)
    for split, files in groups.items():
        groups[split] = [f for f in files if _has_rows(Path(f))]
        if not groups[split]:
            raise HfftError(f"Split {split!r} is empty: {files} hold no rows. Fill or remove the file.")
        if builder in ("csv", "json"):
            for file in groups[split]:
                _check_encoding(Path(file), encoding if builder == "csv" else None)
    if builder == "csv" and encoding:
        options["encoding"] = encoding
    # Split by split, as datasets infers column types per file: labels that are numbers in train.csv but words
    # in test.csv must reach the label checks, not fail the reader.
    out = _read_splits(builder, groups, options)
    if builder == "csv":  # ... and read as written: "01" must not become 1 in one split and stay "01" in another
        types = {}
        for ds in out.values():
            for column, feature in ds.features.items():
                types.setdefault(column, set()).add(getattr(feature, "dtype", None))
        first = next(iter(out.values()))
        if any(len(kinds) > 1 for kinds in types.values()) and all(ds.column_names == first.column_names
                                                                   for ds in out.values()):
            as_text = datasets.Features({column: datasets.Value("string") if len(types[column]) > 1 else feature
                                         for column, feature in first.features.items()})
            out = _read_splits(builder, groups, {**options, "features": as_text})
    return datasets.DatasetDict(out)


def _read_splits(builder: str, groups: dict[str, list[str]], options: dict) -> dict[str, datasets.Dataset]:
    out = {}
    for split, files in groups.items():
        try:
            out[split] = datasets.load_dataset(builder, data_files={split: files}, split=split, **options)
        except (datasets.exceptions.DatasetGenerationError, pa.ArrowInvalid, ValueError) as err:
            raise HfftError(f"Could not read {files} as {builder}: {err.__cause__ or err}. If the files of one "
                            "split disagree on a column's type, make them agree.") from err
    return out


def _check_encoding(path: Path, encoding: str | None) -> None:
    """Read the file once through the decoder: a file saved in another encoding (Excel on Windows writes cp1252)
    is named with its line, instead of failing deep inside the CSV reader."""
    decoder = codecs.getincrementaldecoder(encoding or "utf-8")()
    line = 1
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                line += chunk.count(b"\n", 0, err.start)
                bad = chunk[err.start:err.end]
                fix = ("Pass encoding= (data.encoding), e.g. 'cp1252' or 'latin-1' for files saved by Excel on "
                       "Windows, or save the file as UTF-8." if path.suffix.lower() in (".csv", ".tsv")
                       else "JSON files must be UTF-8: save the file as UTF-8.")
                raise HfftError(f"Data file {str(path)!r} is not {encoding or 'UTF-8'} text: line {line} holds the "
                                f"byte(s) {bad!r}. {fix}") from None
            line += chunk.count(b"\n")


def _has_rows(path: Path) -> bool:
    """Cheap look at a data file: datasets fails obscurely on empty ones."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        return False
    if suffix in (".csv", ".tsv", ".jsonl"):
        with path.open("rb") as handle:
            lines = [line for _, line in zip(range(1000), handle) if line.strip()]
        return len(lines) >= (1 if suffix == ".jsonl" else 2)  # CSV: a header and a row
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(path).metadata.num_rows > 0
        except (pa.ArrowException, OSError) as err:
            raise HfftError(f"Data file {str(path)!r} is not a readable Parquet file ({err}). Replace it with a "
                            "good copy, or remove it.") from None
    return True


def _load_hub(name: str) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(name)
    except (OSError, ValueError) as err:  # DatasetNotFoundError and ConnectionError are OSErrors
        offline = any(os.environ.get(v, "0").lower() not in ("0", "", "false", "no")
                      for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
        why = ("HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set, so only local data and cached Hub datasets load"
               if offline else "check the dataset id and your network (private datasets need `hf auth login`)")
        raise HfftError(f"{name!r} is not a local path, and loading it as a Hub dataset failed ({err}): {why}. "
                        "Or pass a local folder or CSV/JSON/Parquet file.") from err


def _as_list(files, split: str | None = None) -> list[str]:
    """Data file paths from one path or a list of them; anything else is an error saying what was expected."""
    if isinstance(files, (str, os.PathLike)):
        return [os.fspath(files)]
    if isinstance(files, (list, tuple)) and all(isinstance(f, (str, os.PathLike)) for f in files):
        return [os.fspath(f) for f in files]
    where = f"Split {split!r} of the data source" if split is not None else "A list data source"
    raise HfftError(f"{where} must be a data file path or a list of them, got {files!r:.80}.")


def _pick_splits(splits: datasets.DatasetDict, train_split: str, eval_split: str | None) -> tuple[str, str | None]:
    names = list(splits)
    if not names:
        raise HfftError("The dataset has no splits.")
    if train_split not in splits:
        if len(names) == 1 and train_split == "train":
            log.info("data: using the only split %r for training", names[0])
            train_split = names[0]
        else:
            raise HfftError(f"No split {train_split!r} in the data.{suggest(train_split, names)} Splits: {names}. "
                            "Pass train_split= naming one.")
    if eval_split is None:
        return train_split, next((n for n in EVAL_SPLIT_NAMES if n in splits and n != train_split), None)
    if eval_split not in splits:
        raise HfftError(f"No split {eval_split!r} in the data.{suggest(eval_split, names)} Splits: {names}. Pass "
                        "eval_split= naming one, or leave it empty to hold out part of train.")
    if eval_split == train_split:
        raise HfftError(f"eval_split and train_split are both {train_split!r}: evaluating on the training data "
                        "says nothing. Leave eval_split empty to hold out part of train.")
    return train_split, eval_split


def drop_unreadable(raw: dict[str, datasets.Dataset], task: Task, column: str, *, skip: bool) \
        -> dict[str, datasets.Dataset]:
    """`raw` splits without the rows whose input cannot be read. Every split is checked before anything is
    raised, so one error lists all the bad files; with `skip`, they are dropped and a warning says how many."""
    found = {split: task.unreadable_inputs(ds, column) for split, ds in raw.items() if column in ds.column_names}
    named = sorted(f"{_input_name(raw[split], column, row, split)}: {why}"
                   for split, problems in found.items() for row, why in problems.items())
    if not named:
        return raw
    shown = "\n  ".join(named[:SHOWN_BAD_FILES]) + (f"\n  ... and {len(named) - SHOWN_BAD_FILES} more"
                                                     if len(named) > SHOWN_BAD_FILES else "")
    if not skip:
        raise HfftError(f"{len(named)} input file(s) cannot be read:\n  {shown}\nFix or remove them, or pass "
                        "skip_bad_files=True (data.skip_bad_files: true) to train without them.")
    log.warning("data: skipping %d unreadable input file(s) (skip_bad_files):\n  %s", len(named), shown)
    out = dict(raw)
    for split, problems in found.items():
        if problems:
            out[split] = raw[split].select([i for i in range(len(raw[split])) if i not in problems])
            _require_rows(out[split], split)
    return out


def _input_name(ds: datasets.Dataset, column: str, row: int, split: str) -> str:
    """The file behind a row's input (its path), else the row's position."""
    value = ds.with_format("arrow")[row:row + 1][column][0].as_py()
    path = value.get("path") if isinstance(value, dict) else value
    return str(path) if isinstance(path, str) and path else f"split {split!r} row {row}"


def _require_rows(ds: datasets.Dataset, split: str) -> None:
    if len(ds) == 0:
        raise HfftError(f"Split {split!r} is empty. Check the data source (an empty file or folder?).")


# ---------------------------------------------------------------- columns


def _describe(ds: datasets.Dataset) -> str:
    def kind(f):
        return f.dtype.replace("large_", "") if isinstance(f, datasets.Value) else type(f).__name__

    return ", ".join(f"{name} ({kind(f)})" for name, f in ds.features.items())


def _require_column(ds: datasets.Dataset, column: str, what: str) -> None:
    if column not in ds.column_names:
        raise HfftError(f"{what}={column!r} is not a column.{suggest(column, ds.column_names)} "
                        f"Columns: {_describe(ds)}.")


def find_label_column(ds: datasets.Dataset, override: str | None = None, *, hint: str = "") -> str:
    """The ClassLabel column, else the column with a conventional label name."""
    if override is not None:
        _require_column(ds, override, "label_column")
        return override
    for candidates in ([c for c, f in ds.features.items() if isinstance(f, datasets.ClassLabel)],
                       [c for c in ds.column_names if c.lower() in LABEL_NAMES]):
        if len(candidates) == 1:
            return candidates[0]
        if candidates:
            raise HfftError(f"Several columns could hold the labels: {candidates}. Pass label_column= "
                            "(data.label_column) naming the right one.")
    raise HfftError(f"No label column found among the columns: {_describe(ds)}{hint}. Pass label_column= "
                    "(data.label_column) naming it.")


def find_task(ds: datasets.Dataset, task: str | None, label_col: str, input_column: str | None = None) -> Task:
    """The named task, else the first task (by detect_priority) that finds its kind of input in the columns."""
    if task is not None:
        return get_task(task)
    for candidate in tasks_by_priority():
        columns = [c for c in candidate.input_candidates(ds) if c != label_col]
        if columns and (input_column is None or input_column in columns):
            return candidate
    if input_column is not None:
        _require_column(ds, input_column, "input_column")
    raise HfftError(f"No column holds images or text (label column: {label_col!r}); columns: {_describe(ds)}. "
                    "Pass task= and input_column=.")


def find_input_column(ds: datasets.Dataset, task: Task, override: str | None, label_col: str) -> str:
    if override is not None:
        _require_column(ds, override, "input_column")
        if override == label_col:
            raise HfftError(f"input_column and label_column are both {override!r}: pass different columns.")
        column = override
    else:
        candidates = [c for c in task.input_candidates(ds) if c != label_col]
        if not candidates:
            raise HfftError(f"No {task.input_column} column for {task.name} among the columns: {_describe(ds)}. "
                            "Pass input_column= naming it, or check task=.")
        column = task.choose_input(ds, candidates)
    task.check_input(ds, column)
    return column


# ---------------------------------------------------------------- labels


def _label_keys(values, feature, column: str):
    """The label of every row as a string (null where missing): ClassLabel ids become their names, integers and
    booleans their decimal text. Non-integer numbers are rejected: hfft classifies."""
    if isinstance(feature, datasets.ClassLabel):
        ids = pc.if_else(pc.less(values, 0), pa.scalar(None, values.type), values)  # -1 marks "no label"
        return pc.take(pa.array(feature.names, pa.string()), ids)
    kind = values.type
    if pa.types.is_floating(kind):
        valid = values.drop_null()
        odd = pc.invert(pc.and_(pc.is_finite(values), pc.less_equal(pc.abs(values), 2.0 ** 53)))
        rows = pc.indices_nonzero(pc.fill_null(odd, False)).to_pylist()
        if rows:  # no class id; the cast to int64 below would fail with an arrow error
            raise HfftError(f"Label column {column!r} holds NaN, infinite or huge numbers (row(s) "
                            f"{', '.join(map(str, rows[:10]))}{', ...' if len(rows) > 10 else ''}, counting from 0): "
                            "labels must be class names or integer ids. Fix or remove those rows (an empty cell "
                            "is a missing label, dropped with a warning).")
        if len(valid) and not pc.all(pc.equal(valid, pc.floor(valid))).as_py():
            raise HfftError(f"Label column {column!r} holds non-integer numbers: hfft trains classifiers, not "
                            "regressors. Bin the values into classes, or pass label_column= naming the class column.")
        values, kind = pc.cast(values, pa.int64()), pa.int64()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind) \
            or pa.types.is_boolean(kind):
        return pc.cast(values, pa.string())
    raise HfftError(f"Label column {column!r} holds {feature}; labels must be class names or integer ids. Pass "
                    "label_column= naming the class column.")


def _column(ds: datasets.Dataset, column: str):
    return ds.with_format("arrow")[column]


def label_names(ds: datasets.Dataset, column: str) -> tuple[list[str], list[str]]:
    """(names, present): every label name in id order, and those that occur in `ds`. ClassLabel names keep their
    order; other labels are sorted (numbers numerically) and turned into strings."""
    feature = ds.features[column]
    present = pc.unique(_label_keys(_column(ds, column), feature, column)).drop_null().to_pylist()
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        return names, [n for n in names if n in set(present)]
    values = _column(ds, column).drop_null()
    if pa.types.is_floating(values.type):
        values = pc.cast(values, pa.int64())
    unique = pc.unique(values)
    ordered = pc.cast(unique.take(pc.array_sort_indices(unique)), pa.string()).to_pylist()
    return ordered, ordered


def _check_seen(ds: datasets.Dataset, column: str, seen: set[str], split: str, train_split: str) -> None:
    keys = pc.unique(_label_keys(_column(ds, column), ds.features[column], column)).drop_null().to_pylist()
    unseen = sorted(set(keys) - seen)
    if unseen:
        shown = unseen[:10] + (["..."] if len(unseen) > 10 else [])
        raise HfftError(f"Split {split!r} has labels that split {train_split!r} never has: {shown}. The model "
                        f"cannot learn them; remove those rows, or pick other splits (train_split / eval_split).")


# ---------------------------------------------------------------- canonical splits


def drop_incomplete(ds: datasets.Dataset, input_col: str, label_col: str, split: str) -> datasets.Dataset:
    """`ds` without the rows that lack an input or a label (empty CSV cells, ClassLabel -1), with a warning."""
    feature = ds.features[label_col]
    valid = pc.and_(pc.is_valid(_column(ds, input_col)),
                    pc.is_valid(_label_keys(_column(ds, label_col), feature, label_col)))
    dropped = pc.indices_nonzero(pc.invert(valid)).to_pylist()
    if not dropped:
        return ds
    kept = ds.select(pc.indices_nonzero(valid).to_pylist())
    shown = ", ".join(map(str, dropped[:10])) + (", ..." if len(dropped) > 10 else "")
    log.warning("data: dropped %d rows of split %r without an input or a label (rows %s, counting from 0)",
                len(dropped), split, shown)
    _require_rows(kept, split)
    return kept


def canonical(ds: datasets.Dataset, task: Task, input_col: str, label_col: str, labels: list[str],
              split: str) -> datasets.Dataset:
    """Exactly {task.input_column, "labels"}: the input cast to the task's feature, labels to ids of `labels`."""
    feature = ds.features[label_col]
    features = datasets.Features({task.input_column: task.input_feature(),
                                  "labels": datasets.ClassLabel(names=labels)})

    def convert(table):
        ids = pc.index_in(_label_keys(table[label_col], feature, label_col), value_set=pa.array(labels, pa.string()))
        return pa.table({task.input_column: table[input_col], "labels": pc.cast(ids, pa.int64())})

    out = ds.with_format("arrow").map(convert, batched=True, remove_columns=ds.column_names, features=features,
                                      desc=f"Mapping labels ({split})")
    return out.with_format(None)


def hold_out(ds: datasets.Dataset, fraction: float, seed: int, split: str) -> tuple[datasets.Dataset, ...]:
    """(train, eval): a seeded `fraction` of `ds` held out, stratified by label when every class can be."""
    if len(ds) < 2:
        raise HfftError(f"Split {split!r} has {len(ds)} example(s): too few to hold out an evaluation set. Add data "
                        "or pass eval_split=.")
    n_eval = min(len(ds) - 1, max(1, round(len(ds) * fraction)))
    try:
        parts = ds.train_test_split(test_size=n_eval, seed=seed, stratify_by_column="labels")
    except ValueError:  # a class with one example, or fewer eval rows than classes: a plain random split
        parts = ds.train_test_split(test_size=n_eval, seed=seed)
    return parts["train"], parts["test"]


def subsample(ds: datasets.Dataset, n: int | None, seed: int, what: str) -> datasets.Dataset:
    """A seeded random subset of n rows, kept in their original order."""
    if n is None or n >= len(ds):
        return ds
    if n <= 0:
        raise HfftError(f"{what} must be a positive number, got {n}.")
    keep = np.sort(np.random.default_rng(seed).choice(len(ds), size=n, replace=False))
    return ds.select(keep)
