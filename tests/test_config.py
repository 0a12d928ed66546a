"""The config schema: precedence, unknown keys, wrong types, nonsense values, and every shipped config parses."""

from pathlib import Path

import pytest
import yaml

from hfft import HfftError
from hfft.config import Config, from_dict, load_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "recipes" / "configs").glob("*.yaml"))


def test_precedence_defaults_then_yaml_then_command_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 7\n  batch_size: 8\ndata:\n  image_size: 96\n")
    cfg = load_config(path, ["train.epochs=2", "train.args.bf16=true"])
    assert cfg.train.epochs == 2            # command line beats YAML
    assert cfg.train.batch_size == 8        # YAML beats default
    assert cfg.data.image_size == 96
    assert cfg.train.freeze_epochs == Config().train.freeze_epochs  # default kept
    assert cfg.train.args == {"bf16": True}


@pytest.mark.parametrize("override, fragment", [
    ("train.epoch=3", "Did you mean 'epochs'"),
    ("trian.epochs=3", "Did you mean 'train'"),
    ("model.nme=x", "Did you mean 'name'"),
    ("epochs=3", "train.epochs"),
])
def test_unknown_keys_name_the_nearest_valid_one(override, fragment):
    with pytest.raises(HfftError) as err:
        load_config(None, [override])
    assert fragment in str(err.value)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr_mul: 10\n")
    with pytest.raises(HfftError, match="train.lr_mul.*lr_mult"):
        load_config(path)


@pytest.mark.parametrize("override, key", [
    ("train.epochs=three", "train.epochs"),
    ("train.base_lr=[1]", "train.base_lr"),
    ("train.overwrite=maybe", "train.overwrite"),
])
def test_wrong_types_name_the_key(override, key):
    with pytest.raises(HfftError, match=key):
        load_config(None, [override])


@pytest.mark.parametrize("override", ["train.base_lr=-0.1", "train.freeze_epochs=-1", "train.batch_size=0",
                                      "train.lr_mult=0.5", "data.val_fraction=1.5", "train.train_norm=sometimes"])
def test_nonsense_hyperparameters_fail_before_any_work(override):
    with pytest.raises(HfftError, match=override.split("=")[0]):
        load_config(None, [override])


@pytest.mark.parametrize("section, key, value", [
    ("train", "base_lr", float("inf")), ("train", "weight_decay", float("nan")), ("lora", "alpha", float("inf")),
    ("args", "max_grad_norm", float("nan")), ("args", "bf16", float("nan")), ("args", "adam_epsilon", "nan"),
])
def test_nan_and_infinity_are_named_by_validate(section, key, value):
    """NaN passes every comparison-based check by failing none of them (and breaks the saved config's
    round trip), so non-finite numbers are refused at validation, train.args included."""
    raw = {"train": {"args": {key: value}}} if section == "args" else {section: {key: value}}
    with pytest.raises(HfftError, match=key):
        from_dict(raw).validate()


def test_training_args_are_checked_by_validate():
    with pytest.raises(HfftError, match="train.args.gradient_accumulation_steps must be int"):
        load_config(None, ["train.args.gradient_accumulation_steps=two"])
    with pytest.raises(HfftError, match="train.args.learning_rate is set by hfft; use 'base_lr'"):
        load_config(None, ["train.args.learning_rate=1e-3"])
    assert load_config(None, ["train.args.adam_epsilon=1e-8"]).train.args == {"adam_epsilon": 1e-8}


def test_yaml_is_never_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model:\n  name: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(HfftError, match="not valid YAML"):
        load_config(path)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["train.epochs=4", "data.source=my/data"])
    cfg.save(tmp_path / "hfft.yaml")
    again = load_config(tmp_path / "hfft.yaml")
    assert again.to_dict() == cfg.to_dict()


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_config_parses(path):
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    assert cfg.model.name == raw["model"]["name"]
    assert cfg.train.output_dir.startswith("runs/")


def test_shipped_configs_cover_the_promised_families():
    names = " ".join(p.stem for p in SHIPPED)
    for family in ("vit", "convnext", "efficientnet", "bert", "qwen"):
        assert family in names, family
