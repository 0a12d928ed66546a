"""Loading a pretrained model with a new classification head for the user's labels.

The head is whatever the checkpoint did not provide (transformers' loading info names it: DistilBERT's
pre_classifier as well as its classifier) plus, when the checkpoint came with a head for other labels, that
head re-initialised. The body is loaded bit-identical to the checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig

from .errors import HfftError
from .layers import layer_groups

log = logging.getLogger("hfft")


def load_config_for(name: str, *, revision=None, trust_remote_code=False):
    """The checkpoint's config: the cheap first look at a model, so a wrong name fails before any other work."""
    folder = Path(name)
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise HfftError(f"Model folder {name!r} has no config.json, so it is not a transformers model folder. Pass "
                        "the folder that holds config.json and the weights (what save_pretrained writes).")
    try:
        return AutoConfig.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise HfftError(f"Model {name!r} could not be loaded: {_why_not_found(name, err)}") from err
    except ValueError as err:
        if "trust_remote_code" in str(err):
            raise HfftError(f"Model {name!r} ships its own code; it only loads with model.trust_remote_code=true. "
                            "Turn that on only for a model you trust.") from err
        if "does not recognize this architecture" in str(err):
            raise HfftError(f"Model {name!r} is of a type this transformers {transformers.__version__} does not "
                            "know. Upgrade transformers, or choose another model.") from err
        raise


def _why_not_found(name: str, err: OSError) -> str:
    """Which of the ways a model id fails this is: a missing folder, the Hub unreachable, no such repository."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, HFValidationError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    causes = []
    while err is not None:
        causes.append(err)
        err = err.__cause__ or err.__context__
    kinds = tuple(type(c) for c in causes)
    local = "Pass a local folder with config.json and weights, or an embedded model such as 'hfft:minilm-l6'."
    if any(issubclass(k, HFValidationError) for k in kinds) or name.startswith((".", "/", "~")):
        return f"there is no such folder (relative paths are read from {Path.cwd()}), and it is no Hub id. {local}"
    if any(issubclass(k, GatedRepoError) for k in kinds):
        return "it is a gated repository: accept its terms on the Hub, then log in (`hf auth login` or HF_TOKEN)."
    if any(issubclass(k, RevisionNotFoundError) for k in kinds):
        return "the Hub repository has no such revision (model.revision): check the branch, tag or commit."
    if any(issubclass(k, RepositoryNotFoundError) for k in kinds):
        return ("no such model on the Hub (or it is private: log in with `hf auth login`). Check the id. " + local)
    if constants.HF_HUB_OFFLINE:
        return ("it is not a local folder and not in the Hub cache, and HF_HUB_OFFLINE is set, so the Hub was not "
                f"asked. {local} Or unset HF_HUB_OFFLINE to download it.")
    if any(issubclass(k, LocalEntryNotFoundError) for k in kinds):
        return (f"the Hub ({constants.ENDPOINT}) could not be reached and the model is not in the cache. Check your "
                f"network. {local} Set HF_HUB_OFFLINE=1 to use only local and cached models without waiting for "
                "the network.")
    return (f"{causes[0]}. {local} Without a network, set HF_HUB_OFFLINE=1 so that missing models fail at once "
            "instead of after a long wait.")


def check_head(task, config, name: str, trust_remote_code: bool = False) -> None:
    """The model type must have a classification head for the task in transformers (remote code brings its own)."""
    model_cls = task.auto_model_class()
    if type(config) not in model_cls._model_mapping and not trust_remote_code:
        raise HfftError(f"Model {name!r} is of type {config.model_type!r}, which has no {task.name} head in "
                        f"transformers ({model_cls.__name__}). Choose a model made for {task.name}, or check "
                        "data.task.")


def _new_param_names(info: dict) -> set[str]:
    names = set(info.get("missing_keys") or ())
    names |= {entry[0] if isinstance(entry, (tuple, list)) else entry for entry in info.get("mismatched_keys") or ()}
    return names


def load_classifier(task, name: str, labels: list[str], *, revision=None, trust_remote_code=False,
                    allow_pickle=False, pad_token_id=None, meta=False):
    """(model, new_param_names) with len(labels) outputs and id2label/label2id written into the config.
    meta: parameters on the meta device, no weights read (`hfft groups`), the same loading info as training."""
    ckpt_config = load_config_for(name, revision=revision, trust_remote_code=trust_remote_code)
    check_head(task, ckpt_config, name, trust_remote_code)
    model_cls = task.auto_model_class()
    id2label = dict(enumerate(labels))
    kwargs = {"num_labels": len(labels), "id2label": id2label, "label2id": {v: k for k, v in id2label.items()},
              "ignore_mismatched_sizes": True, "output_loading_info": True, "revision": revision,
              "trust_remote_code": trust_remote_code}
    if not allow_pickle:
        kwargs["use_safetensors"] = True  # pickle checkpoints can run code when loaded
    if meta:
        kwargs["device_map"] = "meta"
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
