"""Loading a pretrained model with a new classification head for the user's labels.

The head is whatever the checkpoint did not provide (transformers' loading info names it: DistilBERT's
pre_classifier as well as its classifier) plus, when the checkpoint came with a head for other labels, that
head re-initialised. The body is loaded bit-identical to the checkpoint."""

from __future__ import annotations

import logging
import os

import torch
import transformers
from transformers import AutoConfig

from .errors import HfftError
from .layers import layer_groups

log = logging.getLogger("hfft")


def load_config_for(name: str, *, revision=None, trust_remote_code=False):
    try:
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        where = "with HF_HUB_OFFLINE set, only local folders and cached models load" if offline else \
            "check the id, your network, and for private models `hf auth login`"
        raise HfftError(f"Model {name!r} could not be found: {where}. Pass a local folder with config.json "
                        f"and model weights, or an embedded model such as 'hfft:minilm-l6'.") from err
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise HfftError(f"Model {name!r} ships its own code; it only loads with model.trust_remote_code=true. "
                            "Turn that on only for a model you trust.") from err
        raise


def _new_param_names(info: dict) -> set[str]:
    names = set(info.get("missing_keys") or ())
    names |= {entry[0] if isinstance(entry, (tuple, list)) else entry for entry in info.get("mismatched_keys") or ()}
    return names


def load_classifier(task, name: str, labels: list[str], *, revision=None, trust_remote_code=False,
                    allow_pickle=False, pad_token_id=None):
    """(model, new_param_names) with len(labels) outputs and id2label/label2id written into the config."""
    ckpt_config = load_config_for(name, revision=revision, trust_remote_code=trust_remote_code)
    model_cls = task.auto_model_class()
    if type(ckpt_config) not in model_cls._model_mapping and not trust_remote_code:
        raise HfftError(f"Model type {ckpt_config.model_type!r} has no {task.name} head in transformers "
                        f"({model_cls.__name__}). Choose a model made for {task.name}.")
    id2label = dict(enumerate(labels))
    kwargs = {"num_labels": len(labels), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()},
              "ignore_mismatched_sizes": True, "output_loading_info": True, "revision": revision,
              "trust_remote_code": trust_remote_code}
    if not allow_pickle:
        kwargs["use_safetensors"] = True  # pickle checkpoints can run code when loaded
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # its load report is replaced by one line below
    try:
        model, info = model_cls.from_pretrained(name, **kwargs)
    except (OSError, EnvironmentError) as err:
        if not allow_pickle and "safetensors" in str(err).lower():
            raise HfftError(f"Model {name!r} has only pickle (.bin) weights, which can execute code when loaded. "
                            "Convert it to safetensors, or set model.allow_pickle=true if you trust it.") from err
        raise HfftError(f"Model {name!r} could not be loaded: {err}") from err
    finally:
        transformers.logging.set_verbosity(verbosity)

    new = _new_param_names(info)
    old_labels = list((ckpt_config.id2label or {}).values())
    if old_labels != list(labels):
        new |= _reinit_head(model, new)
    if getattr(model.config, "pad_token_id", None) is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # decoder LLMs find the last real token through it
    log.info("new head for %d labels: %s", len(labels), ", ".join(sorted(new)) or "(none)")
    return model, new


def _reinit_head(model, already_new: set[str]) -> set[str]:
    """A checkpoint head trained for other labels but of the same size loads silently; it must not survive."""
    last = layer_groups(model, already_new)[-1]
    head = set(last.param_names) if last.name == "head" else set()
    stale = head - already_new
    if not stale:
        return set()
    modules = {name.rsplit(".", 1)[0] for name in stale}
    with torch.no_grad():
        for prefix, module in model.named_modules():
            if prefix in modules:
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                model._init_weights(module)
    return stale
