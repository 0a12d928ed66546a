"""hfft: fine-tune Hugging Face image and text classifiers the fastai way.

    from hfft import fine_tune
    result = fine_tune(model="hfft:minilm-l6", data="hfft:rotten-tomatoes", output_dir="runs/rt")

Heavy imports (torch, transformers) happen on first use, so `hfft --help` answers at once."""

from .errors import HfftError

__version__ = "0.1.0"

_LAZY = {
    "fine_tune": "api", "FineTuneResult": "api", "run": "api", "build_config": "api",
    "Config": "config", "load_config": "config",
    "layer_groups": "layers", "LayerGroup": "layers",
    "predict": "inference", "evaluate_run": "inference",
}

__all__ = ["HfftError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hfft' has no attribute {name!r}")
