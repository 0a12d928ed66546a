"""A model's layer groups: embeddings, body blocks split into a few groups, head.

Layer groups are hfft's central abstraction (as fastai's splitters are): freezing and discriminative learning
rates are both defined over them. An architecture supplies a matcher, registered per `config.model_type`, that
names its embedding modules, its ordered body blocks and its classification head; any other model gets the
generic fallback (the largest list of repeated blocks in the base model). Everything works on the names of
`model.named_parameters()` by module-prefix matching, so a wrapped model (peft) keeps working.
"""

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import nn

from hfft.errors import HfftError, suggest


@dataclass
class LayerGroup:
    name: str  # "embeddings", "blocks.0-1", "blocks.2-3", ..., "head"
    param_names: list[str]  # names exactly as in model.named_parameters()


@dataclass
class ArchSplit:
    """What a matcher says about an architecture; every entry is a module (or parameter) name prefix."""

    embeddings: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)  # ordered input -> output, one entry per body block
    head: list[str] = field(default_factory=list)  # the classification head modules the architecture defines


Matcher = Callable[[nn.Module], ArchSplit]
_MATCHERS: dict[str, Matcher] = {}


def register_matcher(*model_types: str) -> Callable[[Matcher], Matcher]:
    """Register `fn(model) -> ArchSplit` for the given `model.config.model_type` values."""

    def register(fn: Matcher) -> Matcher:
        for model_type in model_types:
            _MATCHERS[model_type] = fn
        return fn

    return register


# ---------------------------------------------------------------------------------------------------------------
# Helpers for matchers: names are full names relative to the transformers model.


def _base(model: nn.Module) -> str:
    """'bert.' when the model wraps a base model under `base_model_prefix`, '' when it is the base model itself."""
    prefix = getattr(model, "base_model_prefix", "")
    return f"{prefix}." if prefix and isinstance(getattr(model, prefix, None), nn.Module) else ""


def _children(model: nn.Module, *paths: str) -> list[str]:
    """Prefixes 'path.0', 'path.1', ... of the first of `paths` that is a module list (paths differ by version)."""
    for path in paths:
        try:
            container = model.get_submodule(path)
        except AttributeError:
            continue
        return [f"{path}.{name}" if path else name for name, _ in container.named_children()]
    return []


def _nested(model: nn.Module, stages: str, inner: str) -> list[str]:
    """Every stage's blocks flattened in order: 'stages.0.layers.0', 'stages.0.layers.1', 'stages.1.layers.0', ..."""
    return [block for stage in _children(model, stages) for block in _children(model, f"{stage}.{inner}")]


# ---------------------------------------------------------------------------------------------------------------
# Matchers, one per architecture family.


@register_matcher("bert", "roberta", "xlm-roberta", "camembert", "electra")
def _bert_like(model: nn.Module) -> ArchSplit:
    # Encoders with embeddings -> encoder.layer.N -> (pooler). ELECTRA adds embeddings_project, still input side.
    # The pooler is pretrained in BERT checkpoints, so it joins the last body group unless passed as new.
    # RoBERTa/ELECTRA heads are a two-layer `classifier` (dense + out_proj), both new when fine-tuning.
    b = _base(model)
    return ArchSplit(
        embeddings=[f"{b}embeddings", f"{b}embeddings_project"],
        blocks=_children(model, f"{b}encoder.layer"),
        head=["classifier"],
    )


@register_matcher("distilbert")
def _distilbert(model: nn.Module) -> ArchSplit:
    # Only `classifier` is the head proper. `pre_classifier` is pretrained in fine-tuned DistilBERT checkpoints
    # and new in base ones; the caller says which by passing it in new_param_names (else: last body group).
    b = _base(model)
    return ArchSplit([f"{b}embeddings"], _children(model, f"{b}transformer.layer"), ["classifier"])


@register_matcher("vit", "deit", "dinov2")
def _vit_like(model: nn.Module) -> ArchSplit:
    # Patch embeddings (+ cls/position tokens) -> N identical layers -> final layernorm (last body group).
    # transformers 5 moved ViT/DeiT layers from encoder.layer to layers; DINOv2 keeps encoder.layer.
    # DeiT's distilled variant has two heads.
    b = _base(model)
    return ArchSplit(
        embeddings=[f"{b}embeddings"],
        blocks=_children(model, f"{b}layers", f"{b}encoder.layer"),
        head=["classifier", "cls_classifier", "distillation_classifier"],
    )


@register_matcher("convnext", "convnextv2")
def _convnext(model: nn.Module) -> ArchSplit:
    # Four stages of very unequal depth (tiny: 3, 3, 9, 3 blocks). Grouping whole stages cannot give balanced
    # groups nor more than four, so the unit is a stage's block, flattened. A stage's downsampling layer comes
    # before its blocks and joins its first block; the final layernorm joins the last body group.
    b = _base(model)
    return ArchSplit([f"{b}embeddings"], _nested(model, f"{b}encoder.stages", "layers"), ["classifier"])


@register_matcher("resnet")
def _resnet(model: nn.Module) -> ArchSplit:
    # As ConvNeXt: stages of unequal depth (ResNet-50: 3, 4, 6, 3), so the unit is a stage's bottleneck layer.
    # The head is classifier = Sequential(Flatten, Linear).
    b = _base(model)
    return ArchSplit([f"{b}embedder"], _nested(model, f"{b}encoder.stages", "layers"), ["classifier"])


@register_matcher("efficientnet")
def _efficientnet(model: nn.Module) -> ArchSplit:
    # transformers already flattens the MBConv blocks into encoder.blocks.N (b0: 16). The 1x1 top_conv/top_bn
    # after them is pretrained body and joins the last body group.
    b = _base(model)
    return ArchSplit([f"{b}embeddings"], _children(model, f"{b}encoder.blocks"), ["classifier"])


@register_matcher("swin", "swinv2")
def _swin(model: nn.Module) -> ArchSplit:
    # Stages (encoder.layers.S) of unequal depth (tiny: 2, 2, 6, 2) hold transformer blocks; the unit is a
    # block. A stage's patch-merging `downsample` follows its blocks and joins the next stage's first block.
    b = _base(model)
    return ArchSplit([f"{b}embeddings"], _nested(model, f"{b}encoder.layers", "blocks"), ["classifier"])


@register_matcher("llama", "qwen2", "qwen3", "mistral", "gemma", "phi3")
def _decoder_llm(model: nn.Module) -> ArchSplit:
    # Decoder LLMs: embed_tokens -> layers.N -> final norm (last body group). `score` is the classification
    # head, `lm_head` the language-modelling one (deduplicated by named_parameters() when tied).
    b = _base(model)
    return ArchSplit([f"{b}embed_tokens"], _children(model, f"{b}layers"), ["score", "lm_head"])


# ---------------------------------------------------------------------------------------------------------------
# Generic fallback.


def _largest_block_list(base: nn.Module) -> str | None:
    """Name of the ModuleList/Sequential in `base` holding the most parameters across >= 2 parameterised children.

    Counting parameters (not children) picks the outermost list of a nested model (stages, not a stage's
    layers) and ignores small lists of e.g. embedding tables.
    """
    best, best_size = None, 0
    for name, module in base.named_modules():
        if not isinstance(module, (nn.ModuleList, nn.Sequential)):
            continue
        sizes = [sum(p.numel() for p in child.parameters()) for child in module.children()]
        size = sum(sizes)
        if sum(s > 0 for s in sizes) >= 2 and size > best_size:
            best, best_size = name, size
    return best


def _generic_split(model: nn.Module) -> ArchSplit:
    # Any model: the body blocks are the largest list of repeated modules in the base model; what comes before
    # them is embeddings (by position, see _assign), what lies outside the base model is head. Without such a
    # list every parameter of the base model is a block of its own, in registration order.
    b = _base(model)
    base = model.get_submodule(b[:-1]) if b else model
    head = [name for name, child in model.named_children() if child is not base] if b else []
    found = _largest_block_list(base)
    if found is None:
        return ArchSplit(blocks=[b + name for name, _ in base.named_parameters()], head=head)
    return ArchSplit(blocks=_children(model, ".".join(p for p in (b[:-1], found) if p)), head=head)


# ---------------------------------------------------------------------------------------------------------------
# Grouping.


def _unwrap(model: nn.Module) -> tuple[nn.Module, str]:
    """The transformers model inside a wrapper (peft's get_base_model) and its name prefix inside `model`."""
    if not hasattr(model, "get_base_model"):
        return model, ""
    inner = model.get_base_model()
    for name, module in model.named_modules():
        if module is inner:
            return inner, f"{name}." if name else ""
    return model, ""


def _arch_split(model: nn.Module) -> ArchSplit:
    """The matcher's split for `model` (or the generic one), with names relative to `model` itself."""
    inner, prefix = _unwrap(model)
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    split = _MATCHERS[model_type](inner) if model_type in _MATCHERS else ArchSplit()
    if not split.blocks:  # no matcher, or the architecture's layout changed: fall back
        split = _generic_split(inner)
    return ArchSplit(*([prefix + p for p in part] for part in (split.embeddings, split.blocks, split.head)))


def _owner(name: str, prefixes: dict[str, int]) -> int | None:
    """The value of the longest prefix in `prefixes` that `name` equals or lies under (module-boundary aware)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        hit = prefixes.get(".".join(parts[:end]))
        if hit is not None:
            return hit
    return None


_EMB, _HEAD = -1, -2


def _assign(names: list[str], split: ArchSplit, new: set[str], base: str) -> dict[str, int]:
    """Map each parameter to _EMB, _HEAD or a block index.

    Parameters no prefix claims go by position in registration order: before the first block they are
    embeddings; between blocks they join the next block (a stage's downsampling layer); after the last block,
    or outside the base model, they join the last block (final norm, pooler, pre-classifier).
    """
    head = {p: _HEAD for p in split.head}
    claimed = {**{p: _EMB for p in split.embeddings}, **{p: i for i, p in enumerate(split.blocks)}}
    where, pending, seen_block = {}, [], False
    for name in names:
        owner = _HEAD if name in new or _owner(name, head) is not None else _owner(name, claimed)
        if owner is None and not name.startswith(base):
            owner = len(split.blocks) - 1 if split.blocks else _HEAD
        if owner is None:
            pending.append(name)
            continue
        if owner >= 0 and not seen_block:
            where.update(dict.fromkeys(pending, _EMB))
            pending, seen_block = [], True
        elif owner >= 0:
            where.update(dict.fromkeys(pending, owner))
            pending = []
        where[name] = owner
    where.update(dict.fromkeys(pending, len(split.blocks) - 1 if seen_block else _EMB))
    return where


# What peft inserts into a wrapped module's parameter names (classifier.weight -> classifier.base_layer.weight).
_PEFT_INSERTS = re.compile(r"\.(base_layer|original_module|modules_to_save\.[^.]+)(?=\.)")


def _resolve_new(model: nn.Module, names: list[str], new_param_names: Iterable[str]) -> set[str]:
    """Parameter names covered by `new_param_names` (parameter names or module prefixes, as seen from the model
    or from the transformers model inside a peft wrapper).

    Names of buffers or tied aliases (loading info's missing keys may hold them) are allowed and cover nothing;
    anything else is a mistake.
    """
    prefix = _unwrap(model)[1]
    plain = {n: _PEFT_INSERTS.sub("", n) for n in names}
    new, known = set(), None
    for given in new_param_names:
        covered = [n for n in names if any(p == g or p.startswith(f"{g}.") for p in (n, plain[n])
                                           for g in (given, prefix + given))]
        if not covered:
            known = known if known is not None else set(model.state_dict()) | set(_unwrap(model)[0].state_dict())
            if given not in known:
                raise HfftError(f"new_param_names: {given!r} is no parameter of the model.{suggest(given, names)}")
        new.update(covered)
    return new


def _chunks(n_items: int, n_chunks: int) -> list[range]:
    """range(n_items) cut into min(n_chunks, n_items) contiguous runs whose lengths differ by at most one."""
    n_chunks = min(n_chunks, n_items)
    size, extra = divmod(n_items, n_chunks) if n_chunks else (0, 0)
    runs, start = [], 0
    for i in range(n_chunks):
        stop = start + size + (i < extra)
        runs.append(range(start, stop))
        start = stop
    return runs


def layer_groups(model: nn.Module, new_param_names: Iterable[str] = (), n_body_groups: int = 3) -> list[LayerGroup]:
    """The model's parameters as layer groups, ordered input -> output: embeddings, body groups, head.

    Every parameter of model.named_parameters() appears in exactly one group, in registration order within
    it. The head holds `new_param_names` (parameters or module prefixes the checkpoint did not provide) plus the
    architecture's classification head. The body blocks are split into `n_body_groups` contiguous groups of
    nearly equal block count (fewer if there are fewer blocks); anything after the last block that is not head
    joins the last body group. Empty groups are dropped.
    """
    if n_body_groups < 1:
        raise HfftError(f"n_body_groups must be at least 1, got {n_body_groups}.")
    names = [name for name, _ in model.named_parameters()]
    inner, prefix = _unwrap(model)
    split = _arch_split(model)
    where = _assign(names, split, _resolve_new(model, names, new_param_names), prefix + _base(inner))
    groups = [LayerGroup("embeddings", [n for n in names if where[n] == _EMB])]
    for run in _chunks(len(split.blocks), n_body_groups):
        label = f"blocks.{run[0]}" if len(run) == 1 else f"blocks.{run[0]}-{run[-1]}"
        groups.append(LayerGroup(label, [n for n in names if where[n] in run]))
    groups.append(LayerGroup("head", [n for n in names if where[n] == _HEAD]))
    return [g for g in groups if g.param_names]


# ---------------------------------------------------------------------------------------------------------------
# Normalisation layers.


_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.modules.batchnorm._NormBase)  # _NormBase: Batch/InstanceNorm
_NORM_NAME = re.compile(r"Norm([123]d)?$")  # LlamaRMSNorm, ConvNextLayerNorm, LayerNorm2d, ...


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or _NORM_NAME.search(type(module).__name__) is not None


def _is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or "BatchNorm" in type(module).__name__


def _norm_modules(model: nn.Module) -> list[nn.Module]:
    return [module for module in model.modules() if _is_norm(module)]


def norm_param_names(model: nn.Module) -> set[str]:
    """Names of parameters owned directly by normalisation layers: nn.LayerNorm, every BatchNorm, GroupNorm,
    RMSNorm, and any module whose class name ends in 'Norm' (LlamaRMSNorm, ConvNextLayerNorm, ...)."""
    name_of = {id(p): name for name, p in model.named_parameters()}
    owned = (p for module in _norm_modules(model) for p in module.parameters(recurse=False))
    return {name_of[id(p)] for p in owned if id(p) in name_of}


def norm_kind(model: nn.Module) -> str:
    """'batch' if most norm layers are BatchNorm (running statistics matter when freezing), 'layer' if they
    are LayerNorm/RMSNorm/GroupNorm-like, 'none' if the model has no norm layers."""
    norms = _norm_modules(model)
    if not norms:
        return "none"
    n_batch = sum(_is_batch_norm(m) for m in norms)
    return "batch" if n_batch > len(norms) / 2 else "layer"


# ---------------------------------------------------------------------------------------------------------------
# Printing.


def _human(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def _units(names: list[str], blocks: list[str]) -> list[str]:
    """The distinct modules a group's parameters belong to, in order: a body block, or the parameter's module."""
    block_of = {p: p for p in blocks}
    units = []
    for name in names:
        unit = _owner(name, block_of) or name.rpartition(".")[0] or name
        if unit not in units:
            units.append(unit)
    return units


def format_groups(groups: list[LayerGroup], model: nn.Module, lrs: list[float] | None = None) -> str:
    """A plain-text table of the groups: index, name, parameter count, lr (if given) and what the group holds."""
    if lrs is not None and len(lrs) != len(groups):
        raise HfftError(f"format_groups: {len(lrs)} learning rates for {len(groups)} groups.")
    params = dict(model.named_parameters())
    blocks = _arch_split(model).blocks
    header = ["#", "group", "params"] + (["lr"] if lrs is not None else []) + ["holds"]
    rows = [header]
    for i, group in enumerate(groups):
        units = _units(group.param_names, blocks)
        holds = units[0] if len(units) == 1 else f"{units[0]} .. {units[-1]}" if units else ""
        numel = sum(params[n].numel() for n in group.param_names)
        lr = [f"{lrs[i]:.2e}"] if lrs is not None else []
        rows.append([str(i), group.name, _human(numel), *lr, holds])
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
