"""The one configuration schema of hfft: dataclasses hold the defaults, YAML gives values, the command line
gives dotted overrides (`train.epochs=3`). Unknown keys and wrong types fail with a suggestion, before any work.
The resolved config is saved in every run folder, so a run can be repeated from its own folder."""

from __future__ import annotations

import codecs
import dataclasses
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import HfftError, suggest
from .training_args import NUMBER


def _doc(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    kwargs = {"metadata": {"help": text}}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, **kwargs)
    return field(default=default, **kwargs)


@dataclass
class ModelConfig:
    name: str = _doc("Hub id, local folder, or an embedded model such as 'hfft:minilm-l6'.", "hfft:minilm-l6")
    revision: str | None = _doc("Hub revision (branch, tag or commit).", None)
    trust_remote_code: bool = _doc("Run code shipped with the model. Off by default: only for models you trust.", False)
    allow_pickle: bool = _doc("Accept pickle-based .bin weights (can execute code). Off by default.", False)


@dataclass
class DataConfig:
    source: str = _doc("Hub dataset id, image folder, CSV/JSON/Parquet file or folder, or 'hfft:rotten-tomatoes'.",
                       "hfft:rotten-tomatoes")
    task: str | None = _doc("'image-classification' or 'text-classification'; inferred from the data when empty.", None)
    input_column: str | None = _doc("Column holding the image or text; found automatically when empty.", None)
    label_column: str | None = _doc("Column holding the label; found automatically when empty.", None)
    train_split: str = _doc("Split to train on.", "train")
    eval_split: str | None = _doc("Split to evaluate on; validation/test when present, else a seeded hold-out.", None)
    val_fraction: float = _doc("Fraction of train held out for evaluation when there is no eval split.", 0.1)
    max_train_samples: int | None = _doc("Use a seeded subset of this many training examples.", None)
    max_eval_samples: int | None = _doc("Use a seeded subset of this many evaluation examples.", None)
    image_size: int | None = _doc("Resize images to this size instead of the model's (smaller is faster).", None)
    max_length: int | None = _doc("Truncate texts to this many tokens (default: model maximum, at most 512).", None)
    skip_bad_files: bool = _doc("Train without the image files that cannot be read (a warning says how many) "
                                "instead of stopping with their list.", False)
    encoding: str | None = _doc("Text encoding of CSV/TSV files, e.g. 'cp1252' (default: UTF-8).", None)


@dataclass
class TrainConfig:
    output_dir: str = _doc("Run folder: model, processor, config, metrics, logs.", "runs/hfft")
    epochs: int = _doc("Epochs with the whole model unfrozen (0: head only).", 3)
    freeze_epochs: int = _doc("Warm-up epochs training only the new head (0: plain full fine-tuning).", 1)
    base_lr: float = _doc("Peak learning rate of the head (fastai's base_lr; halved when the body unfreezes).", 2e-3)
    lr_mult: float = _doc("Ratio of the head's learning rate to the first layer group's.", 100.0)
    pct_start: float = _doc("Fraction of the unfrozen phase spent warming the learning rate up.", 0.3)
    div: float = _doc("Unfrozen phase starts at lr/div.", 5.0)
    weight_decay: float = _doc("Decoupled weight decay (none on norm and bias parameters).", 0.01)
    train_norm: bool = _doc("Train norm-layer weights while the body is frozen (fastai's train_bn). Off: it "
                            "makes a frozen step 2x dearer for no measured gain (README).", False)
    freeze_by: str = _doc("How the body is frozen: 'grad' (requires_grad off: no body gradients, a frozen step is "
                          "~3x cheaper), 'lr' (learning rate 0: every parameter stays in the optimizer's and "
                          "engine's view), or 'auto' ('lr' under DeepSpeed/FSDP, else 'grad').", "auto")
    bn_momentum: float | None = _doc("Momentum of BatchNorm running statistics while fine-tuning (PyTorch's 0.1); "
                                     "empty keeps the checkpoint's. See README.", 0.1)
    body_groups: int = _doc("Number of layer groups the body blocks are split into.", 3)
    batch_size: int = _doc("Per-device training batch size.", 32)
    eval_batch_size: int | None = _doc("Per-device evaluation batch size (default: 2x batch_size).", None)
    seed: int = _doc("Seed for initialisation, data order, augmentation and the validation split.", 42)
    overwrite: bool = _doc("Replace an existing run in output_dir.", False)
    resume: bool = _doc("Continue from the newest complete checkpoint in output_dir.", False)
    args: dict = _doc("Extra transformers.TrainingArguments (e.g. bf16, gradient_accumulation_steps).", factory=dict)

    def __repr__(self) -> str:  # the dataclass's own, with secrets (hub_token) masked: reprs end up in logs
        args = {k: "<hidden>" if k in SECRET_ARGS else v for k, v in self.args.items()}
        shown = ", ".join(f"{f.name}={args if f.name == 'args' else getattr(self, f.name)!r}"
                          for f in dataclasses.fields(self))
        return f"{type(self).__qualname__}({shown})"


@dataclass
class LoraConfig:
    """LoRA adapters (peft) instead of full fine-tuning; `fine_tune(lora=True | {...} | peft.LoraConfig)`."""

    enabled: bool = _doc("Train LoRA adapters (plus the new head) instead of every weight. Adapters want larger "
                         "learning rates than full fine-tuning: README measures base_lr 1e-2 with lr_mult 10.", False)
    r: int = _doc("Rank of the LoRA update matrices.", 8)
    alpha: float = _doc("LoRA scaling numerator (the update is scaled by alpha / r).", 16.0)
    dropout: float = _doc("Dropout on the LoRA branch's input.", 0.05)
    target_modules: str | list[str] = _doc("'auto' (per architecture: attention query/value, decoder LLMs' "
                                           "attention projections, CNNs' pointwise convolutions), 'all-linear', "
                                           "or module names as peft takes them.", "auto")
    loraplus_lr_ratio: float | None = _doc("LoRA+: learning rate of the B matrices relative to the A matrices' "
                                           "(e.g. 16); empty: the same.", None)
    merge: bool = _doc("Also save the adapter merged into the base model, a plain model, in <run>/merged.", False)
    peft_args: dict = _doc("Further peft.LoraConfig arguments (use_rslora, init_lora_weights, ...).", factory=dict)


@dataclass
class HubConfig:
    push_to_hub: bool = _doc("Upload the run folder to the Hugging Face Hub when training ends (token: HF_TOKEN "
                             "or `hf auth login`).", False)
    repo_id: str | None = _doc("Hub repository 'user/name' (default: the run folder's name, under your account).",
                               None)
    private: bool = _doc("Create the repository private.", False)
    license: str | None = _doc("License in the model card's metadata, e.g. apache-2.0 (default: 'other').", None)
    push_merged: bool = _doc("Upload the merged model instead of the adapter (LoRA runs).", False)


# TrainingArguments whose hfft counterparts live in the hub section: the Trainer's own pushes are not used.
HUB_ARGS = {"push_to_hub": "hub.push_to_hub", "hub_model_id": "hub.repo_id", "hub_private_repo": "hub.private",
            "hub_strategy": "hub.push_to_hub"}
# Keys of train.args that hold secrets: used where needed, never passed on to TrainingArguments nor saved.
SECRET_ARGS = ("hub_token",)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def validate(self) -> "Config":
        """Nonsense values are named here, before a model is loaded or a file is written."""
        t, d = self.train, self.data
        checks = [
            (t.epochs >= 0, "train.epochs must be >= 0"),
            (t.freeze_epochs >= 0, "train.freeze_epochs must be >= 0"),
            (t.epochs + t.freeze_epochs > 0, "train.epochs + train.freeze_epochs must be > 0: nothing to train"),
            (t.base_lr > 0, "train.base_lr must be > 0"),
            (t.lr_mult >= 1, "train.lr_mult must be >= 1 (head lr / first group lr)"),
            (0 < t.pct_start < 1, "train.pct_start must be between 0 and 1"),
            (t.div >= 1, "train.div must be >= 1"),
            (t.weight_decay >= 0, "train.weight_decay must be >= 0"),
            (t.batch_size > 0, "train.batch_size must be > 0"),
            (t.eval_batch_size is None or t.eval_batch_size > 0, "train.eval_batch_size must be > 0"),
            (t.body_groups > 0, "train.body_groups must be > 0"),
            (t.freeze_by in ("auto", "grad", "lr"), "train.freeze_by must be 'auto', 'grad' or 'lr'"),
            (t.bn_momentum is None or 0 < t.bn_momentum < 1, "train.bn_momentum must be between 0 and 1"),
            (0 <= t.seed < 2**32, "train.seed must be between 0 and 2**32 - 1 (numpy's seed range)"),
            (t.output_dir.strip() != "", "train.output_dir cannot be empty: name the run folder, e.g. runs/my-run"),
            (self.model.name.strip() != "", "model.name cannot be empty: give a Hub id, a local folder or an hfft: "
                                            "model such as 'hfft:minilm-l6'"),
            (d.source.strip() != "", "data.source cannot be empty (it would read the whole working folder): give a "
                                     "folder, a data file, a Hub dataset id or 'hfft:rotten-tomatoes'"),
            (0 < d.val_fraction < 1, "data.val_fraction must be between 0 and 1"),
            (d.max_train_samples is None or d.max_train_samples > 0, "data.max_train_samples must be > 0"),
            (d.max_eval_samples is None or d.max_eval_samples > 0, "data.max_eval_samples must be > 0"),
            (d.image_size is None or d.image_size > 0, "data.image_size must be > 0"),
            (d.max_length is None or d.max_length > 0, "data.max_length must be > 0"),
            (d.encoding is None or is_text_encoding(d.encoding), "data.encoding must be the name of a text "
                                                                  "encoding such as 'utf-8', 'cp1252' or 'latin-1'"),
        ]
        for ok, message in checks:
            if not ok:
                raise HfftError(f"{message} (got {self._value_for(message)!r}).")
        if d.task is not None:
            from .tasks import get_task  # imports the task modules (torch, PIL): only when a task is named

            try:
                get_task(d.task)
            except HfftError as err:
                raise HfftError(f"data.task: {err} Leave it empty to infer the task from the data.") from None
        if t.train_norm and t.freeze_by == "lr":
            raise HfftError("train.train_norm needs train.freeze_by 'grad' or 'auto': with 'lr' the norms' learning "
                            "rate is 0 while frozen too.")
        if t.overwrite and t.resume:
            raise HfftError("train.overwrite and train.resume contradict each other: choose one.")
        for key in t.args:
            if key in HUB_ARGS:
                raise HfftError(f"train.args.{key}: hfft pushes the finished run itself; use {HUB_ARGS[key]} "
                                "instead (the Trainer's own pushes would upload checkpoints).")
        if t.args:
            from .training_args import check_training_args  # imports transformers: only when there are args

            check_training_args(t.args)
        self._validate_lora()
        if self.hub.push_merged and not self.lora.enabled:
            raise HfftError("hub.push_merged needs lora.enabled: without LoRA the run already is a plain model.")
        if self.hub.repo_id is not None and not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", self.hub.repo_id):
            raise HfftError(f"hub.repo_id must be 'name' or 'user/name' (letters, digits, '-', '_', '.'), got "
                            f"{self.hub.repo_id!r}.")
        return self

    def _validate_lora(self) -> None:
        lora = self.lora
        checks = [
            (lora.r > 0, "lora.r must be > 0"),
            (lora.alpha > 0, "lora.alpha must be > 0"),
            (0 <= lora.dropout < 1, "lora.dropout must be >= 0 and < 1"),
            (lora.loraplus_lr_ratio is None or lora.loraplus_lr_ratio >= 1, "lora.loraplus_lr_ratio must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise HfftError(f"{message} (got {self._value_for(message)!r}).")
        targets = lora.target_modules
        if isinstance(targets, str) and targets not in ("auto", "all-linear"):
            raise HfftError(f"lora.target_modules must be 'auto', 'all-linear' or a list of module names, got "
                            f"{targets!r}.{suggest(targets, ['auto', 'all-linear'])}")
        if isinstance(targets, list) and (not targets or not all(isinstance(t, str) and t for t in targets)):
            raise HfftError(f"lora.target_modules must be a non-empty list of module names, got {targets!r}.")
        if lora.merge and not lora.enabled:
            raise HfftError("lora.merge needs lora.enabled: without LoRA the run already is a plain model.")
        if lora.peft_args:
            from .adapters import check_peft_args  # imports peft: only when there is something to check

            check_peft_args(lora.peft_args)

    def _value_for(self, message: str):
        section, key = message.split()[0].split(".")
        return getattr(getattr(self, section), key)

    def to_dict(self) -> dict:
        """The config as plain data, secrets (train.args.hub_token) left out: this is what hfft.yaml holds."""
        values = dataclasses.asdict(self)
        values["train"]["args"] = {k: v for k, v in values["train"]["args"].items() if k not in SECRET_ARGS}
        return values

    def save(self, path) -> None:
        write_text_atomic(path, yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True))


class _Dumper(yaml.SafeDumper):
    """safe_dump that gives every string back exactly. With allow_unicode (so 'café' stays readable) yaml writes
    U+0085 (NEL) raw in plain and single-quoted scalars, and reads it back as a line break folded into a space;
    strings holding a character yaml counts as a line break are written double-quoted, where it is escaped."""


def _represent_str(dumper: yaml.SafeDumper, text: str):
    style = '"' if any(c in text for c in "\x85\u2028\u2029") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _represent_str)


def is_text_encoding(name) -> bool:
    """A codec that decodes bytes to text: 'rot13', 'base64' or 'hex' are codecs too, but bytes-to-bytes ones."""
    try:
        if not getattr(codecs.lookup(name), "_is_text_encoding", True):
            return False
        codecs.getincrementaldecoder(name)().decode(b"a")  # 'undefined' looks up, then refuses everything
    except (LookupError, UnicodeError, TypeError):
        return False
    return True


def _section_classes() -> dict[str, type]:
    return {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "lora": LoraConfig, "hub": HubConfig}


def field_names() -> dict[str, str]:
    """Every config key, unqualified -> its section. Keys are unique across sections by design, so the Python
    API can take them flat (`fine_tune(epochs=3, image_size=112)`)."""
    names = {}
    for section, cls in _section_classes().items():
        for f in dataclasses.fields(cls):
            names[f.name] = section
    return names



def _coerce(value: Any, annotation, key: str):
    """Check (and gently convert) a value against the dataclass annotation; wrong types name the key."""
    text = str(annotation)  # a string under `from __future__ import annotations`: compare by name
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise HfftError(f"{key} cannot be empty (null); expected {text.replace(' | None', '')}.")
    if text.startswith("str | bool"):
        if isinstance(value, (bool, str)):
            return value
    elif text.startswith("str | list"):
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple, set)) and all(isinstance(v, str) for v in value):
            return sorted(value) if isinstance(value, set) else list(value)
    elif text.startswith("bool"):
        if isinstance(value, bool):
            return value
    elif text.startswith("int"):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif text.startswith("float"):
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str) and NUMBER.fullmatch(value.strip()):  # YAML 1.1 reads 1e-3 as text
            number = float(value)
        if number is not None and math.isfinite(number):  # no hfft setting means anything at NaN or infinity
            return number
    elif text.startswith("str"):
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
    elif text.startswith("dict"):
        if isinstance(value, dict):
            return dict(value)
    else:  # pragma: no cover - a new annotation kind must be handled above
        raise TypeError(f"unhandled annotation {text} for {key}")
    raise HfftError(f"{key} must be {text.replace(' | None', ' (or empty)')}, got {value!r} "
                    f"({type(value).__name__}).")


def _apply(config: Config, section: str, key: str, value: Any) -> None:
    classes = _section_classes()
    if section not in classes:
        raise HfftError(f"Unknown config section {section!r}; the sections are {list(classes)}." +
                        suggest(section, classes))
    fields = {f.name: f for f in dataclasses.fields(classes[section])}
    if key not in fields:
        raise HfftError(f"Unknown config key {section}.{key}." + suggest(key, fields) +
                        f" Valid keys in {section}: {', '.join(fields)}.")
    setattr(getattr(config, section), key, _coerce(value, fields[key].type, f"{section}.{key}"))


def from_dict(values: dict | None, base: Config | None = None) -> Config:
    """Apply a nested {section: {key: value}} mapping on top of base (default: the schema's defaults)."""
    config = base if base is not None else Config()
    if values is not None and not isinstance(values, dict):
        raise HfftError(f"A config must be a mapping of sections ({', '.join(_section_classes())}) to their keys, "
                        f"e.g. {{'train': {{'epochs': 3}}}}; got a value of type {type(values).__name__}: "
                        f"{values!r:.80}.")
    for section, body in (values or {}).items():
        if not isinstance(body, dict):
            raise HfftError(f"Config section {section!r} must be a mapping of keys to values, got {body!r}." +
                            suggest(section, _section_classes()))
        for key, value in body.items():
            _apply(config, section, key, value)
    return config


def parse_override(text: str) -> tuple[str, str, Any]:
    """'train.epochs=3' -> ('train', 'epochs', 3). Values are parsed as YAML scalars (never evaluated)."""
    if "=" not in text:
        raise HfftError(f"Override {text!r} is not of the form section.key=value (e.g. train.epochs=3).")
    dotted, raw = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) == 3 and parts[:2] == ["train", "args"]:  # train.args.bf16=true
        return "train", "args", {parts[2]: _scalar(dotted, raw)}
    if len(parts) != 2:
        names = field_names()
        hint = f" Did you mean {names[parts[0]]}.{parts[0]}?" if len(parts) == 1 and parts[0] in names else ""
        raise HfftError(f"Override {dotted!r} must name section.key (e.g. train.epochs).{hint}")
    return parts[0], parts[1], _scalar(dotted, raw) if raw.strip() else None


def _scalar(key: str, raw: str):
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:  # python tags included: the safe loader refuses them
        why = getattr(err, "problem", None) or err  # a ReaderError (control characters) has no .problem
        raise HfftError(f"The value of {key} is not valid YAML ({why}): {raw!r}. Quote it if it is "
                        "meant as text.") from None


def load_config(path=None, overrides: list[str] = ()) -> Config:
    """Defaults < YAML file < command-line overrides, validated."""
    config = from_dict(read_config_file(path) if path is not None else {})
    for text in overrides:
        section, key, value = parse_override(text)
        if key == "args" and isinstance(value, dict):
            config.train.args.update(value)
        else:
            _apply(config, section, key, value)
    return config.validate()


def read_config_file(path) -> dict:
    """The {section: {key: value}} mapping a YAML config file holds (not yet applied nor validated)."""
    path = Path(path)
    if not path.is_file():
        raise HfftError(f"Config file {str(path)!r} does not exist.")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise HfftError(f"Config file {str(path)!r} is not UTF-8 text: line {line} holds the byte(s) "
                        f"{raw[err.start:err.end]!r}. Save it as UTF-8 (YAML files are UTF-8).") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise HfftError(f"Config file {str(path)!r} is not valid YAML: {err}") from None
    if not isinstance(values, dict):
        raise HfftError(f"Config file {str(path)!r} must hold a mapping of sections (model, data, train, lora, hub).")
    return values


def write_text_atomic(path, text: str) -> None:
    """Write beside the target, then rename: a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
