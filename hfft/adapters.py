"""LoRA adapters (peft) in an hfft run: which layers get adapters, which modules are trained and saved whole, how
the optimizer sees them, and how a saved adapter becomes a model again (for inference, or merged into a plain one).

The fine_tune recipe stays the same. The new head is trained and saved whole (peft's `modules_to_save`), and so
is every BatchNorm layer of the body, whose running statistics move while training and would otherwise be lost
from the adapter. The body gets low-rank adapters on the layers a per-architecture registry names (keyed by
`config.model_type`, like layers.py's matchers), or on every linear layer. Layer groups are computed on the
wrapped model and then restricted to what is trainable, so the frozen phase trains the head alone and the
unfrozen phase the adapters and the head, with discriminative learning rates. Base weights never train.

A LoRA run folder holds adapter_config.json + adapter_model.safetensors (the adapter and the saved modules),
config.json (the base model's config with the run's labels: what the base model is rebuilt with), the
processor, and with `lora.merge` a plain merged model in <run>/merged/.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import shutil
import warnings
from pathlib import Path

from torch import nn

from .errors import HfftError, suggest
from .layers import LayerGroup, layer_groups
from .runfolder import MERGED_DIR, replace_folder

log = logging.getLogger("hfft")

ADAPTER_CONFIG = "adapter_config.json"

# ---------------------------------------------------------------------------------------------------------------
# Which layers get adapters, by architecture.

_TARGETS: dict[str, tuple[str, ...]] = {}


def register_targets(*model_types: str, modules: tuple[str, ...]) -> None:
    """LoRA target layers for the given `config.model_type` values, as module-name suffixes (peft's convention).
    Names absent from a model are ignored, so one entry can list the spellings of several transformers versions."""
    for model_type in model_types:
        _TARGETS[model_type] = tuple(modules)


# Encoders: attention query and value, as in the LoRA paper. transformers 5 names the ViT family's attention
# q_proj/k_proj/v_proj/o_proj while BERT keeps query/key/value; older versions used query/value for ViT too.
register_targets("bert", "roberta", "xlm-roberta", "camembert", "electra", modules=("query", "value"))
register_targets("distilbert", modules=("q_lin", "v_lin"))
register_targets("vit", "deit", "dinov2", "swin", "swinv2", modules=("q_proj", "v_proj", "query", "value"))
# Decoder LLMs: every attention projection (Phi-3 fuses q, k and v into qkv_proj).
register_targets("llama", "qwen2", "qwen3", "mistral", "gemma", "phi3",
                 modules=("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj"))
# CNNs: the pointwise layers, which hold most of the weights. ConvNeXt's are Linear layers. EfficientNet's are
# 1x1 convolutions; its depthwise convolutions stay plain, and so does squeeze-excite (neutralised in the
# EfficientNet-Lite0 conversion). ResNet's 3x3 and 1x1 convolutions are all called `convolution`.
register_targets("convnext", "convnextv2", modules=("pwconv1", "pwconv2"))
register_targets("efficientnet", modules=("expand_conv", "project_conv", "top_conv"))
register_targets("resnet", modules=("convolution",))


def _is_lora_layer(module: nn.Module) -> bool:
    """Layers peft's LoRA can wrap (transformers' Conv1D is GPT-2's linear layer)."""
    return isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)) or \
        type(module).__name__ == "Conv1D"


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _matches(name: str, key: str) -> bool:
    """peft's rule for a target given as a name: the module itself or any module whose name ends in '.key'."""
    return name == key or name.endswith(f".{key}")


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(f"{p}.") for p in prefixes)


def head_modules(model: nn.Module, new_param_names=()) -> list[str]:
    """The modules holding the head: the owners of the head group's parameters, each widened to its parent while
    the parent holds head parameters only (ResNet's classifier.1 -> classifier, RoBERTa's classifier.dense and
    classifier.out_proj -> classifier; DistilBERT's new pre_classifier stays beside classifier)."""
    last = layer_groups(model, new_param_names)[-1]
    head = set(last.param_names) if last.name == "head" else set()
    if not head:
        raise HfftError(f"{type(model).__name__} has no classification head to train; LoRA needs one.")
    owned = {name: {f"{name}.{p}" if name else p for p, _ in module.named_parameters()}
             for name, module in model.named_modules()}
    chosen = set()
    for param in head:
        owner = param.rpartition(".")[0]
        if not owner:
            raise HfftError(f"Head parameter {param!r} belongs to the model itself, not to a module: peft cannot "
                            "save it with the adapter. Train this model without LoRA.")
        while "." in owner and owned[owner.rpartition(".")[0]] <= head:
            owner = owner.rpartition(".")[0]
        chosen.add(owner)
    return sorted(m for m in chosen if not any(m.startswith(f"{o}.") for o in chosen))


def batch_norm_modules(model: nn.Module, exclude=()) -> list[str]:
    """BatchNorm layers outside `exclude`: their running statistics change in training, so they are saved whole."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
            and not _under(name, exclude)]


def resolve_targets(model: nn.Module, setting, exclude=()) -> list[str]:
    """Full names of the layers that get adapters: 'auto' (the registry, else every linear layer), 'all-linear',
    or a list of names matched as peft matches them. Layers under `exclude` (the saved modules) never do."""
    layers = {name: m for name, m in model.named_modules() if name and _is_lora_layer(m) and not _under(name, exclude)}
    examples = ", ".join(sorted({n.rpartition(".")[2] for n in layers})[:12])
    if setting == "auto":
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        keys = _TARGETS.get(model_type, ())
        found = [n for n in layers if any(_matches(n, k) for k in keys)]
        if found:
            return found
        log.info("lora: no target layers registered for model type %r; adapting every linear layer", model_type)
        setting = "all-linear"
    if setting == "all-linear":
        found = [n for n, m in layers.items() if _is_linear(m)]
        if not found:
            raise HfftError(f"lora.target_modules: {type(model).__name__} has no linear layers outside its head. "
                            f"List the layers to adapt in lora.target_modules; its layers are named: {examples}.")
        return found
    found = [n for n in layers if any(_matches(n, k) for k in setting)]
    unmatched = [k for k in setting if not any(_matches(n, k) for n in layers)]
    if unmatched:
        raise HfftError(f"lora.target_modules {unmatched} match no layer LoRA can adapt in the body of "
                        f"{type(model).__name__}.{suggest(unmatched[0].rpartition('.')[2], examples.split(', '))} "
                        f"Its layers are named: {examples}.")
    return found


# ---------------------------------------------------------------------------------------------------------------
# hfft's lora section <-> peft.LoraConfig


# peft.LoraConfig arguments that hfft's lora section sets itself.
_MANAGED = {"r": "lora.r", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
            "target_modules": "lora.target_modules", "task_type": "(set from the task)"}
# peft.LoraConfig fields that describe where an adapter came from, not how to train it.
_PROVENANCE = {"peft_type", "base_model_name_or_path", "revision", "inference_mode", "auto_mapping", "peft_version"}


def check_peft_args(args: dict) -> None:
    """peft.LoraConfig fields only, none that the lora section sets, each of its field's type and plain data (what
    hfft.yaml can hold; converted in place like train.args), and a combination peft itself accepts."""
    import typing

    import peft

    from .training_args import fits, plain, type_text

    fields = {f.name for f in dataclasses.fields(peft.LoraConfig)}
    try:
        types = typing.get_type_hints(peft.LoraConfig)
    except Exception:  # an annotation this peft version cannot resolve: check names and plainness only
        types = {}
    for key, value in args.items():
        name = f"lora.peft_args.{key}"
        if key in _MANAGED:
            raise HfftError(f"{name}: use {_MANAGED[key]} instead.")
        if key not in fields or key in _PROVENANCE:
            raise HfftError(f"{name} is not a peft.LoraConfig training argument."
                            f"{suggest(key, fields - _PROVENANCE)}")
        args[key] = value = plain(value, name)
        if key in types and not fits(value, types[key]):
            raise HfftError(f"{name} must be {type_text(types[key])}, got {value!r}.")
    try:
        with warnings.catch_warnings():  # peft warns about some valid combinations
            warnings.simplefilter("ignore")
            peft.LoraConfig(**args)  # its own checks (loftq_config without init_lora_weights='loftq', ...)
    except (TypeError, ValueError) as err:
        raise HfftError(f"lora.peft_args: peft.LoraConfig refuses {args}: {err}") from None


def _plain(value):
    """A peft config value as YAML-safe data."""
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return value


def section_from_peft(config) -> dict:
    """The lora section equivalent to a peft.LoraConfig: r, alpha, dropout, targets, and every other field that
    differs from peft's default in peft_args (so the saved hfft.yaml repeats the run)."""
    import peft

    if not isinstance(config, peft.LoraConfig):
        raise HfftError(f"lora= takes True, a dict of lora settings or a peft.LoraConfig, not {type(config).__name__}.")
    targets = config.target_modules
    if targets is None:
        targets = "auto"
    elif isinstance(targets, str) and targets not in ("all-linear",):
        raise HfftError(f"peft.LoraConfig(target_modules={targets!r}): a regular expression is not supported; "
                        "give a list of module names, 'all-linear', or leave it empty for hfft's choice.")
    defaults = peft.LoraConfig()
    extra = {}
    for f in dataclasses.fields(config):
        if f.name in _MANAGED or f.name in _PROVENANCE:
            continue
        value = getattr(config, f.name)
        if value != getattr(defaults, f.name):
            extra[f.name] = _plain(value)
    return {"enabled": True, "r": config.r, "alpha": float(config.lora_alpha), "dropout": float(config.lora_dropout),
            "target_modules": _plain(targets), "peft_args": extra}


def lora_section(value) -> dict:
    """fine_tune's lora= argument as the lora config section: True/False, a dict of its keys, or a peft.LoraConfig."""
    if isinstance(value, bool):
        return {"enabled": value}
    if isinstance(value, dict):
        return {"enabled": True, **value}
    return section_from_peft(value)


def base_model_id(name: str, path: str) -> str:
    """What adapter_config.json names as the base model: the Hub id of an embedded hfft model when it has one,
    a local folder as an absolute path (the adapter then loads from any working directory), else the Hub id."""
    from .zoo import PUBLIC_IDS

    if name.startswith("hfft:"):
        return PUBLIC_IDS.get(name, str(path))
    return str(Path(path).resolve()) if Path(path).exists() else name


def lora_config(model: nn.Module, spec, new_param_names=(), task_name: str | None = None):
    """The peft.LoraConfig for `model` from hfft's lora section `spec`: targets resolved on this very model and
    written as name suffixes (readable in adapter_config.json), with any other layer those suffixes would also
    catch excluded by full name; the head and BatchNorm layers saved whole."""
    import peft

    saved = head_modules(model, new_param_names)
    saved += batch_norm_modules(model, exclude=saved)
    targets = set(resolve_targets(model, spec.target_modules, exclude=saved))
    suffixes = sorted({name.rpartition(".")[2] for name in targets})
    extra = sorted(name for name, m in model.named_modules() if name and _is_lora_layer(m) and name not in targets
                   and not _under(name, saved) and any(_matches(name, s) for s in suffixes))
    kwargs = dict(spec.peft_args)
    saved += [m for m in kwargs.pop("modules_to_save", None) or () if m not in saved]
    excluded = sorted(set(extra) | set(kwargs.pop("exclude_modules", None) or ()))
    return peft.LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=suffixes,
                           exclude_modules=excluded or None, modules_to_save=saved,
                           task_type="SEQ_CLS" if task_name == "text-classification" else None, **kwargs)


def wrap(model: nn.Module, spec, new_param_names=(), *, task_name: str | None = None, base_model: str | None = None,
         revision: str | None = None):
    """`model` with LoRA adapters (a peft model); only adapters and saved modules require grad.
    `base_model` is what adapter_config.json names as the base (a Hub id where there is one)."""
    import peft

    config = lora_config(model, spec, new_param_names, task_name)
    with warnings.catch_warnings():  # peft calls transformers APIs that transformers 5 deprecates
        warnings.simplefilter("ignore", FutureWarning)
        wrapped = peft.get_peft_model(model, config)
    settings = wrapped.peft_config["default"]
    if base_model is not None:
        settings.base_model_name_or_path = base_model
    settings.revision = revision
    # peft adds `classifier` and `score` to a text classifier's saved modules, whichever exists: keep the real ones.
    names = {name for name, _ in model.named_modules()}
    settings.modules_to_save = [m for m in dict.fromkeys(settings.modules_to_save or ())
                                if any(_matches(n, m) for n in names)]
    log.info("lora: r=%d, alpha=%g on %s; trained whole: %s", spec.r, spec.alpha,
             ", ".join(sorted(settings.target_modules)), ", ".join(settings.modules_to_save or ()))
    return wrapped


def is_peft_model(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def trainable_groups(model: nn.Module, groups: list[LayerGroup]) -> list[LayerGroup]:
    """The layer groups restricted to what LoRA trains (adapters and saved modules); groups left empty are
    dropped, so the discriminative learning rates spread over the groups that train."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    kept = [LayerGroup(g.name, [n for n in g.param_names if n in trainable]) for g in groups]
    return [g for g in kept if g.param_names]


def loraplus_scales(groups: list[LayerGroup], ratio: float | None) -> dict[str, float]:
    """LoRA+ (Hayou et al. 2024): the B matrices learn `ratio` times faster than the A matrices."""
    if not ratio or ratio == 1:
        return {}
    return {name: float(ratio) for g in groups for name in g.param_names if ".lora_B." in name}


def parameter_counts(model: nn.Module, groups: list[LayerGroup]) -> tuple[int, int]:
    """(trained, total) parameters. peft keeps a frozen original beside every saved module; it is not counted."""
    params = dict(model.named_parameters())
    trained = sum(params[n].numel() for g in groups for n in g.param_names)
    total = sum(p.numel() for n, p in params.items() if ".original_module." not in n)
    return trained, total


# ---------------------------------------------------------------------------------------------------------------
# From a saved adapter back to a model.


def is_adapter_folder(folder) -> bool:
    """A folder holding a LoRA adapter: adapter_config.json, and where the folder is an hfft run, a config with
    LoRA on (a full run that an older hfft wrote over a LoRA run left the adapter's files behind)."""
    import yaml

    folder = Path(folder)
    if not (folder / ADAPTER_CONFIG).is_file():
        return False
    path = folder / "hfft.yaml"
    lora = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("lora") if path.is_file() else None
    return not isinstance(lora, dict) or bool(lora.get("enabled"))


def _run_model_settings(folder: Path) -> dict:
    import yaml

    path = folder / "hfft.yaml"
    return (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("model") or {} if path.is_file() else {}


def base_model_path(folder) -> str:
    """Where the adapter's base model loads from: an embedded hfft model from this installation, else what
    adapter_config.json names (a Hub id or a local folder)."""
    from .zoo import resolve_model

    folder = Path(folder)
    name = _run_model_settings(folder).get("name")
    if isinstance(name, str) and name.startswith("hfft:"):
        return resolve_model(name)
    base = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise HfftError(f"{str(folder)!r}: {ADAPTER_CONFIG} names no base model (base_model_name_or_path).")
    return base


def load_adapter_model(folder, task, *, merge: bool = False):
    """The base model rebuilt with the run's config (labels, pad token) and the adapter loaded onto it, in eval
    mode; with merge=True the adapter is merged in and a plain transformers model is returned."""
    import peft
    import transformers
    from transformers import AutoConfig

    folder = Path(folder)
    settings = _run_model_settings(folder)
    trust = bool(settings.get("trust_remote_code", False))
    base = base_model_path(folder)
    revision = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("revision")
    config = AutoConfig.from_pretrained(folder, trust_remote_code=trust)
    kwargs = {} if settings.get("allow_pickle") else {"use_safetensors": True}
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # "newly initialised head" warnings: the adapter brings the head
    try:
        model = task.auto_model_class().from_pretrained(base, config=config, ignore_mismatched_sizes=True,
                                                        revision=revision, trust_remote_code=trust, **kwargs)
    except OSError as err:
        raise HfftError(f"The base model {base!r} of the adapter in {str(folder)!r} could not be loaded: {err}") \
            from err
    finally:
        transformers.logging.set_verbosity(verbosity)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = peft.PeftModel.from_pretrained(model, str(folder)).eval()
    return model.merge_and_unload() if merge else model


# Small files of a run that a merged model folder carries too, so it can be published on its own.
RUN_FILES = ("hfft.yaml", "metrics.json", "log.jsonl", "training.png", "confusion_matrix.png")


def save_merged(run, task, dest=None) -> Path:
    """The adapter merged into its base model, saved as a plain model folder (default <run>/merged) that
    transformers.pipeline() loads, with the processor, the run's config, metrics, plots and a model card.
    Written beside its place, then swapped in (runfolder.replace_folder): a crash leaves the old merged folder
    or the new one, never half of one."""
    from .card import write_card

    run = Path(run)
    dest = Path(dest) if dest is not None else run / MERGED_DIR
    staging = dest.with_name(f".{dest.name}.saving")
    shutil.rmtree(staging, ignore_errors=True)
    model = load_adapter_model(run, task, merge=True)
    model.save_pretrained(staging)
    task.load_processor(str(run)).save_pretrained(staging)
    for name in RUN_FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, staging / name)
    write_card(staging, location=str(dest))
    replace_folder(staging, dest)
    log.info("merged model -> %s", dest)
    return dest
