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


@pytest.mark.parametrize("args, fragment", [
    ({"use_rslora": float("nan")}, "use_rslora must be a finite number"),
    ({"modules_to_save": object()}, "modules_to_save must be plain data"),
    ({"modules_to_save": ["head", 3]}, r"modules_to_save must be Optional\[list\[str\]\]"),
    ({"use_rslora": "yes"}, "use_rslora must be bool"),
    ({"bias": "some"}, "bias must be Literal"),
    ({"layers_pattern": "layers"}, "peft.LoraConfig refuses"),
])
def test_peft_args_are_checked_by_type_and_plainness(args, fragment):
    with pytest.raises(HfftError, match=f"lora.peft_args.*{fragment}"):
        from_dict({"lora": {"enabled": True, "peft_args": args}}).validate()


def test_peft_args_that_validate_round_trip(tmp_path):
    cfg = from_dict({"lora": {"enabled": True, "peft_args": {
        "use_rslora": True, "modules_to_save": ("pooler",), "init_lora_weights": "pissa_niter_4",
        "rank_pattern": {"query": 4}, "layers_to_transform": [0, 1]}}}).validate()
    assert cfg.lora.peft_args["modules_to_save"] == ["pooler"]  # a tuple is saved as the list it reloads as
    cfg.save(tmp_path / "hfft.yaml")
    assert load_config(tmp_path / "hfft.yaml").to_dict() == cfg.to_dict()


def test_training_args_that_yaml_cannot_hold_are_made_plain_or_refused(tmp_path):
    import numpy as np
    from transformers.trainer_utils import IntervalStrategy

    cfg = from_dict({"train": {"args": {"eval_strategy": IntervalStrategy.STEPS, "eval_steps": 5,
                                        "max_grad_norm": np.float64(1.0)}}}).validate()
    cfg.save(tmp_path / "hfft.yaml")  # yaml cannot write enum members or numpy scalars
    assert load_config(tmp_path / "hfft.yaml").train.args == {"eval_strategy": "steps", "eval_steps": 5,
                                                              "max_grad_norm": 1.0}
    with pytest.raises(HfftError, match="train.args.fsdp_config.x must be plain data"):
        from_dict({"train": {"args": {"fsdp_config": {"x": object()}}}}).validate()


@pytest.mark.parametrize("text", ["a\x85b", "\x85", "line\u2028sep", "para\u2029", "tab\tnul\x00 end ", "ümlaut 猫"])
def test_every_string_round_trips_through_the_saved_yaml(tmp_path, text):
    cfg = from_dict({"data": {"source": f"data/{text}", "label_column": text},
                     "train": {"args": {"run_name": text}}}).validate()
    cfg.save(tmp_path / "hfft.yaml")
    assert load_config(tmp_path / "hfft.yaml").to_dict() == cfg.to_dict()
    if text == "ümlaut 猫":  # ordinary non-ASCII text stays readable in the file
        assert "ümlaut 猫" in (tmp_path / "hfft.yaml").read_text(encoding="utf-8")


@pytest.mark.parametrize("key, value", [
    ("adam_epsilon", float("inf")), ("eval_steps", float("inf")), ("logging_steps", float("inf")),
    ("max_grad_norm", float("inf")), ("adam_beta1", 5), ("adam_beta2", 1.0), ("label_smoothing_factor", -1),
    ("logging_steps", -1), ("save_steps", 0), ("eval_steps", 2.5), ("adam_epsilon", 0), ("data_seed", 3),
])
def test_training_args_out_of_range_are_named(key, value):
    with pytest.raises(HfftError, match=f"train.args.{key}"):
        from_dict({"train": {"args": {key: value}}}).validate()


def test_training_args_in_range_pass():
    args = {"adam_beta1": 0.0, "adam_beta2": 0.99, "label_smoothing_factor": 0.1, "logging_steps": 0.25,
            "eval_steps": 10, "max_grad_norm": 0.0, "adam_epsilon": 1e-6}
    assert from_dict({"train": {"args": dict(args)}}).validate().train.args == args


@pytest.mark.parametrize("encoding", ["rot13", "base64", "hex", "zlib", "undefined", "no-such-codec"])
def test_only_text_encodings_are_accepted(encoding):
    with pytest.raises(HfftError, match="data.encoding must be the name of a text encoding"):
        from_dict({"data": {"encoding": encoding}}).validate()
    assert from_dict({"data": {"encoding": "cp1252"}}).validate().data.encoding == "cp1252"


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin.yaml"
    path.write_bytes("train:\n  output_dir: runs/café\n".encode("cp1252"))
    with pytest.raises(HfftError, match=r"latin\.yaml' is not UTF-8 text: line 2 .*Save it as UTF-8"):
        load_config(path)
    path.write_bytes("\ufefftrain:\n  output_dir: runs/café\n".encode("utf-8"))  # a BOM, as Notepad writes
    assert load_config(path).train.output_dir == "runs/café"


@pytest.mark.parametrize("values", [["train"], "train.epochs=3", 3])
def test_a_config_that_is_not_a_mapping_is_named(values):
    with pytest.raises(HfftError, match="A config must be a mapping of sections"):
        from_dict(values)


@pytest.mark.parametrize("section, key, value, fragment", [
    ("data", "source", "", "data.source cannot be empty"), ("data", "source", "  ", "data.source cannot be empty"),
    ("train", "output_dir", "", "train.output_dir cannot be empty"), ("model", "name", "", "model.name cannot be"),
    ("data", "task", "nope", "data.task: Unknown task 'nope'.*text-classification"),
    ("data", "task", "image", "Did you mean 'image-classification'"),
    ("train", "seed", -1, "train.seed must be between 0"), ("train", "seed", 2**32, "train.seed must be between 0"),
])
def test_empty_paths_unknown_tasks_and_bad_seeds_fail_validation(section, key, value, fragment):
    with pytest.raises(HfftError, match=fragment):
        from_dict({section: {key: value}}).validate()


def test_hub_token_is_masked_in_the_repr():
    cfg = from_dict({"train": {"args": {"hub_token": "hf_secretTOKEN", "bf16": True}}}).validate()
    for shown in (repr(cfg), str(cfg), repr(cfg.train)):
        assert "hf_secretTOKEN" not in shown and "'hub_token': '<hidden>'" in shown and "'bf16': True" in shown
    assert cfg.train.args["hub_token"] == "hf_secretTOKEN"  # still there to be used


def test_build_config_takes_a_yaml_path_and_refuses_other_types(tmp_path):
    from hfft.api import build_config

    path = tmp_path / "my.yaml"
    path.write_text("train:\n  epochs: 7\ndata:\n  image_size: 96\n")
    for given in (path, str(path)):
        cfg = build_config(given, batch_size=4)
        assert (cfg.train.epochs, cfg.data.image_size, cfg.train.batch_size) == (7, 96, 4)
    with pytest.raises(HfftError, match="config= takes an hfft Config.*not a value of type list"):
        build_config([path])
    with pytest.raises(HfftError, match="does not exist"):
        build_config(str(tmp_path / "missing.yaml"))


def test_build_config_leaves_the_callers_config_unchanged():
    from hfft.api import build_config

    base = Config()
    cfg = build_config(base, epochs=9, bf16=True)
    assert (cfg.train.epochs, cfg.train.args) == (9, {"bf16": True})
    assert (base.train.epochs, base.train.args) == (Config().train.epochs, {})
