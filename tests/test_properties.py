"""Property-based tests: random configs and random small datasets thrown at the config and data layers. Each
either works, and then keeps its promises, or raises HfftError (a message for the user); never anything else."""

import csv
import dataclasses
import json
import math

import datasets
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hfft import HfftError
from hfft.api import build_config
from hfft.config import Config, field_names, from_dict, load_config
from hfft.data import load_splits

# Example counts come from the profile in conftest.py (ci: 80, replayed the same every run; explore: 1,000, fresh).
SETTINGS = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# ---------------------------------------------------------------- configs

KEYS = field_names()  # key -> section
TYPES = {f.name: str(f.type) for section in dict.fromkeys(KEYS.values())
         for f in dataclasses.fields(type(getattr(Config(), section)))}
# Text with the characters YAML treats specially (NEL, line and paragraph separators, BOM, NUL, quotes).
odd_text = st.text(st.one_of(st.characters(), st.sampled_from("\x85\u2028\u2029\ufeff\x00\t\n\r'\":#- ")),
                   max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True), odd_text,
                    st.sampled_from(["auto", "1e-3", "true", "train", "hfft:minilm-l6", ""]))
values = st.one_of(scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=6), scalars, max_size=2))
# Mostly real keys, some misspelled or invented.
keys = st.one_of(st.sampled_from(sorted(KEYS)), st.sampled_from(sorted(KEYS)).map(lambda k: k[:-1] + "x"),
                 st.text(min_size=1, max_size=10))
sections = st.sampled_from([*dict.fromkeys(KEYS.values()), "trian", "args", ""])


def plausible(annotation: str):
    """Values of about the right type for a field, edge cases included (0, negatives, NaN, huge, odd text)."""
    if annotation.startswith(("int", "float")):
        numbers = st.one_of(st.integers(-2, 50), st.floats(-1, 3), st.sampled_from([math.nan, math.inf, "1e-3", "-1"]))
        return numbers | st.none() if "None" in annotation else numbers
    if annotation.startswith("bool"):
        return st.booleans()
    if annotation.startswith("dict"):  # train.args and lora.peft_args keys, some of each, some neither
        return st.dictionaries(st.sampled_from(["bf16", "fp16x", "gradient_accumulation_steps", "use_rslora",
                                                "adam_beta1", "logging_steps", "hub_token", "modules_to_save",
                                                "init_lora_weights", "bias", "rank_pattern"]),
                               scalars | st.lists(scalars, max_size=2) | st.just(object()), max_size=2)
    return st.one_of(odd_text, st.sampled_from(["auto", "all-linear", "utf-8", "latin-1", "rot13", "hex", "nope",
                                                "text-classification", "image", "train", "test", ""]),
                     st.lists(st.text(min_size=1, max_size=5), max_size=2), st.none())


@st.composite
def raw_configs(draw):
    """{section: {key: value}}: mostly real keys in their section with plausible values, sometimes not."""
    config = {}
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.integers(0, 9)) < 8:
            key = draw(st.sampled_from(sorted(KEYS)))
            section, value = KEYS[key], draw(plausible(TYPES[key]))
        else:
            key, section, value = draw(keys), draw(sections), draw(values)
        config.setdefault(section, {})[key] = value
    return config


@SETTINGS
@given(raw=st.integers(0, 9).flatmap(lambda i: values if i == 0 else raw_configs()))  # now and then no mapping
def test_any_config_validates_or_names_the_problem(raw, tmp_path_factory):
    try:
        cfg = from_dict(raw).validate()
    except HfftError as err:
        event(f"HfftError: {str(err)[:40]}")
        return
    event("worked")
    # What validates round-trips through the saved hfft.yaml exactly.
    path = tmp_path_factory.mktemp("cfg") / "hfft.yaml"
    cfg.save(path)
    assert load_config(path).to_dict() == cfg.to_dict()


@st.composite
def key_and_value(draw, keys_from=None):
    """Mostly a real key with a plausible value; sometimes anything."""
    if draw(st.integers(0, 9)) < 8:
        key = draw(st.sampled_from(keys_from or sorted(KEYS)))
        return key, draw(plausible(TYPES[key]))
    return draw(keys), draw(values)


@SETTINGS
@given(pairs=st.lists(st.tuples(key_and_value(), st.booleans()), max_size=4))
def test_any_command_line_override_parses_or_names_the_problem(pairs):
    """section.key=value, the value written as YAML or as raw text (which may not be valid YAML)."""
    overrides = [f"{KEYS.get(key, 'train')}.{key}="
                 f"{value if raw and isinstance(value, str) else json.dumps(value, default=str)}"  # objects as text
                 for (key, value), raw in pairs]
    try:
        cfg = load_config(None, overrides)
    except HfftError as err:
        event(f"HfftError: {str(err)[:40]}")
        return
    event("worked")
    assert isinstance(cfg, Config)


TRAINING_ARGS = {"gradient_accumulation_steps": "int", "eval_strategy": "str", "bf16": "bool",
                 "max_grad_norm": "float", "learning_rate": "float", "hub_token": "str | None",
                 "dataloader_num_workers": "int", "save_total_limit": "int | None", "adam_beta1": "float",
                 "adam_epsilon": "float", "label_smoothing_factor": "float", "logging_steps": "float",
                 "eval_steps": "float | None"}
FLAT_KEYS = sorted(k for k, section in KEYS.items() if section != "lora") + sorted(TRAINING_ARGS)


@SETTINGS
@given(pairs=st.lists(key_and_value(FLAT_KEYS), max_size=4))
def test_any_fine_tune_keywords_build_a_config_or_name_the_problem(pairs):
    from hfft.api import check_training_args

    TYPES.update(TRAINING_ARGS)
    try:
        cfg = build_config(None, **dict(pairs))
        check_training_args(cfg.train.args)  # what run() does before any work
    except HfftError as err:
        event(f"HfftError: {str(err)[:40]}")
        return
    event("worked")
    assert dataclasses.is_dataclass(cfg)


# ---------------------------------------------------------------- datasets

label_names = st.one_of(
    st.text(min_size=1, max_size=6),                             # unicode, spaces, emoji, control characters
    st.integers(-3, 12).map(str),                                # numbers as strings
    st.sampled_from([" a", "a ", "a b", "01", "1", "1.0", "True", "None", "NaN", "é", "猫", "ß", "-0"]))


@st.composite
def small_datasets(draw, names=None, empty_classes=True):
    """Text classification rows with odd label names, unbalanced classes, missing and empty values."""
    names = names or draw(st.lists(label_names, min_size=2, max_size=5, unique=True))
    count = st.one_of(st.integers(1, 12), st.just(0)) if empty_classes else st.integers(1, 12)
    counts = draw(st.lists(count, min_size=len(names), max_size=len(names)))
    rows = [(draw(st.one_of(st.text(max_size=20), st.none())) if draw(st.integers(0, 9)) == 0 else f"text {i} {name}",
             name) for i, (name, count) in enumerate((n, c) for n, c in zip(names, counts) for _ in range(c))]
    rows += [(f"no label {i}", None) for i in range(draw(st.integers(0, 2)))]
    order = draw(st.permutations(range(len(rows))))
    return [rows[i] for i in order]


@st.composite
def train_and_test(draw):
    """Two splits; the test split's labels are usually among the training split's."""
    names = draw(st.lists(label_names, min_size=2, max_size=5, unique=True))
    shared = draw(st.booleans()) or draw(st.booleans())
    test_names = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True)) if shared else None
    return draw(small_datasets(names, empty_classes=not shared)), draw(small_datasets(test_names))


def check_splits(splits, rows):
    complete = [(text, label) for text, label in rows if text is not None and label is not None]
    assert len(splits.labels) >= 2 and len(set(splits.labels)) == len(splits.labels)
    assert set(splits.labels) == {label for _, label in complete}
    assert len(splits.train) + len(splits.eval) == len(complete) and len(splits.train) and len(splits.eval)
    for ds in (splits.train, splits.eval):
        assert ds.column_names == ["text", "labels"]
        pairs = [(text, splits.labels[i]) for text, i in zip(ds["text"], ds["labels"])]
        assert all(pair in complete for pair in pairs)  # every label id points at the row's own label


def write_csv(path, rows) -> None:
    """(text, label) rows as a CSV file with a header; None becomes an empty cell."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(["" if v is None else v for v in row] for row in rows)


def check_label_ids(splits) -> None:
    """Two non-empty splits, at least two labels, and every label id points at one of them."""
    assert len(splits.labels) >= 2 and len(splits.train) and len(splits.eval)
    assert all(0 <= i < len(splits.labels) for i in [*splits.train["labels"], *splits.eval["labels"]])


@SETTINGS
@given(rows=small_datasets(), fraction=st.floats(0.05, 0.6))
def test_any_small_dataset_splits_or_names_the_problem(rows, fraction):
    ds = datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [y for _, y in rows]},
                                    features=datasets.Features({"text": datasets.Value("string"),
                                                                "label": datasets.Value("string")}))
    try:
        splits = load_splits(ds, val_fraction=fraction, seed=0)
    except HfftError as err:
        event(f"HfftError: {str(err)[:40]}")
        return
    event("worked")
    check_splits(splits, rows)


@settings(max_examples=max(25, settings.default.max_examples // 3), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(splits=train_and_test())
def test_any_small_csv_pair_loads_or_names_the_problem(splits, tmp_path_factory):
    """The same through CSV files, where pandas reads "1", "NaN", "True" and empty cells its own way."""
    rows, eval_rows = splits
    folder = tmp_path_factory.mktemp("csv")
    for name, part in (("train.csv", rows), ("test.csv", eval_rows)):
        write_csv(folder / name, part)
    try:
        splits = load_splits(folder, seed=0)
    except HfftError as err:
        event(f"HfftError: {str(err)[:40]}")
        return
    event("worked")
    check_label_ids(splits)
    assert not any(isinstance(x, float) and math.isnan(x) for x in splits.labels)


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_rows_are_named(n):
    ds = datasets.Dataset.from_dict({"text": ["a"] * n, "label": ["x"] * n},
                                    features=datasets.Features({"text": datasets.Value("string"),
                                                                "label": datasets.Value("string")}))
    with pytest.raises(HfftError):
        load_splits(ds)


# ---------------------------------------------------------------- label types and file sources


@st.composite
def typed_label_datasets(draw):
    """A DatasetDict whose label column is a ClassLabel (-1: no label), integers or floats (NaN, infinity and
    huge values included), with sometimes a validation split of its own (ClassLabel names may differ)."""
    kind = draw(st.sampled_from(["classlabel", "int", "float"]))
    names = draw(st.lists(label_names, min_size=1, max_size=4, unique=True))

    def split(size):
        n = draw(st.integers(0, size))
        if kind == "classlabel":
            split_names = draw(st.just(names) | st.lists(label_names, min_size=1, max_size=4, unique=True))
            labels = draw(st.lists(st.integers(-1, len(split_names) - 1), min_size=n, max_size=n))
            feature = datasets.ClassLabel(names=split_names)
        elif kind == "int":
            labels = draw(st.lists(st.one_of(st.integers(-3, 4), st.none(), st.sampled_from([2**62, -2**63])),
                                   min_size=n, max_size=n))
            feature = datasets.Value("int64")
        else:
            labels = draw(st.lists(st.one_of(st.sampled_from([0.0, 1.0, 2.0, -1.0, 0.5, 1e300]), st.none(),
                                             st.floats(allow_nan=True, allow_infinity=True)), min_size=n, max_size=n))
            feature = datasets.Value("float64")
        features = datasets.Features({"text": datasets.Value("string"), "label": feature})
        return datasets.Dataset.from_dict({"text": [f"text {i}" for i in range(n)], "label": labels},
                                          features=features)

    out = {"train": split(20)}
    if draw(st.booleans()):
        out["validation"] = split(8)
    return datasets.DatasetDict(out)


@SETTINGS
@given(dsd=typed_label_datasets())
def test_any_label_type_splits_or_names_the_problem(dsd):
    try:
        splits = load_splits(dsd, seed=0)
    except HfftError as err:
        event(f"HfftError: {str(err)[:40]}")
        return
    event("worked")
    feature = dsd["train"].features["label"]
    for ds, source in ((splits.train, None), (splits.eval, dsd.get("validation"))):
        assert ds.column_names == ["text", "labels"] and len(ds)
        names = [splits.labels[i] for i in ds["labels"]]
        if source is not None:  # every row keeps its own label, by name
            given = {t: y for t, y in zip(source["text"], source["label"])}
            own = source.features["label"]
            assert all(n == (own.names[given[t]] if isinstance(own, datasets.ClassLabel) else str(int(given[t])))
                       for t, n in zip(ds["text"], names))
    if isinstance(feature, datasets.ClassLabel):
        assert splits.labels == feature.names


SPLIT_WORDS = ["train", "test", "validation", "reviews", "dev"]


@st.composite
def file_sources(draw):
    """How to build a list or {split: files} source of CSV files: mostly sound, now and then a file empty or
    missing, a key that is no split name, or no file at all."""
    rows = st.integers(0, 9).flatmap(lambda i: st.none() if i == 0 else st.just([]) if i == 1 else small_datasets())
    words = st.integers(0, 4).flatmap(lambda i: st.sampled_from(SPLIT_WORDS) if i == 0
                                      else st.sampled_from(["train", "test"]))
    files = draw(st.lists(st.tuples(words, rows), min_size=draw(st.sampled_from([0, 1, 1, 1, 1, 1])), max_size=3,
                          unique_by=lambda f: f[0]))
    form = draw(st.integers(0, 9).map(lambda i: "int keys" if i == 0 else ["list", "dict", "dict of lists"][i % 3]))
    return form, files


@settings(max_examples=max(25, settings.default.max_examples // 3), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=file_sources())
def test_any_list_or_dict_of_files_loads_or_names_the_problem(spec, tmp_path_factory):
    form, files = spec
    folder = tmp_path_factory.mktemp("files")
    paths = []
    for i, (word, rows) in enumerate(files):
        path = folder / f"{word}_{i}.csv"
        paths.append((word, str(path)))
        if rows is not None:  # None: a file that does not exist
            write_csv(path, rows)
    if form == "list":
        source = [path for _, path in paths]
    elif form == "int keys":
        source = {i: path for i, (_, path) in enumerate(paths)}
    else:
        source = {}
        for word, path in paths:
            source.setdefault(word, []).append(path)
        if form == "dict":
            source = {word: group[0] for word, group in source.items()}
    try:
        splits = load_splits(source, seed=0)
    except HfftError as err:
        event(f"HfftError: {str(err)[:40]}")
        return
    event("worked")
    check_label_ids(splits)
