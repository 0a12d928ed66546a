"""The model card (README.md) of a run folder, in the Hub's conventions: YAML metadata (library, pipeline tag, base
model, datasets, licence, tags, and a model-index the Hub shows as evaluation results), then what the model is,
its labels, how to use it, how it was trained (phases and the learning rate of every layer group), its results
and the resolved config.

The card is a function of the folder alone (hfft.yaml, metrics.json, log.jsonl, config.json and, for an
adapter, adapter_config.json), so it is written at the end of every run and rewritten, naming the repository,
when the folder is pushed. Three kinds of folder: a fully fine-tuned model, a LoRA adapter, a merged LoRA model.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from .config import write_text_atomic

CARD_NAME = "README.md"
IMAGE_EXAMPLE = "path/to/image.jpg"  # the image the card's snippet classifies: replace with yours
TEXT_EXAMPLE = "I loved every minute of it."
# A Hub repository id: name or owner/name, each part letters, digits, '-', '_', '.', not starting with a symbol.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")
# What a local data or model file ends in; no Hub id names a repository so.
FILE_SUFFIXES = {".csv", ".tsv", ".json", ".jsonl", ".parquet", ".arrow", ".txt", ".xlsx", ".xls", ".zip", ".gz",
                 ".tar", ".tgz", ".xz", ".bz2", ".zst", ".pkl", ".npy", ".npz", ".h5", ".yaml", ".yml",
                 ".safetensors", ".bin", ".pt", ".pth", ".onnx", ".png", ".jpg", ".jpeg"}


def write_card(folder, repo_id: str | None = None, location: str | None = None) -> Path:
    """README.md in `folder`. Its snippet loads `repo_id`, else `location` (where the folder will be), else the
    folder itself."""
    path = Path(folder) / CARD_NAME
    write_text_atomic(path, render(folder, repo_id, location))
    return path


def _read(folder: Path, name: str):
    path = folder / name
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    if name.endswith(".yaml"):
        return yaml.safe_load(text)
    if name.endswith(".jsonl"):
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


def hub_id(name) -> str | None:
    """`name` when it has the shape of a Hub id (name or owner/name, no file extension) and is no path here (not
    absolute, ./ or ../, nor existing); embedded hfft models map to their Hub id. Local data or models: None, so
    the card names no Hub dataset or base model for them."""
    from .zoo import PUBLIC_IDS

    if not isinstance(name, str):
        return None
    if name.startswith("hfft:"):
        return PUBLIC_IDS.get(name)
    shaped = _HUB_ID.fullmatch(name) and ".." not in name and "--" not in name and not name.endswith((".", "-"))
    if not shaped or Path(name).suffix.lower() in FILE_SUFFIXES or Path(name).exists():
        return None
    return name


def _display(source) -> str:
    """A data source as the card names it: Hub ids and hfft: names as they are, local paths by their last part."""
    text = str(source)
    return text if text.startswith("hfft:") or hub_id(text) or text.startswith("<") else Path(text).name


class _Run:
    """What the card needs from a folder."""

    def __init__(self, folder: Path, repo_id: str | None, location: str | None = None):
        self.folder = folder
        self.cfg = _read(folder, "hfft.yaml") or {}
        self.metrics = _read(folder, "metrics.json") or {}
        self.log = _read(folder, "log.jsonl") or []
        self.config = _read(folder, "config.json") or {}
        from .adapters import is_adapter_folder

        self.adapter = _read(folder, "adapter_config.json") if is_adapter_folder(folder) else None
        lora = self.cfg.get("lora") or {}
        self.kind = "adapter" if self.adapter else "merged" if lora.get("enabled") else "full"
        self.ref = repo_id or location or str(folder)
        self.name = repo_id or Path(self.ref).name
        data = self.cfg.get("data") or {}
        self.task = data.get("task") or "text-classification"
        self.image = self.task == "image-classification"
        id2label = self.config.get("id2label") or {}
        self.labels = [id2label[k] for k in sorted(id2label, key=int)]
        model_name = (self.cfg.get("model") or {}).get("name")
        self.base_name = model_name
        self.base_hub = hub_id(model_name)
        self.base_ref = (self.adapter or {}).get("base_model_name_or_path") or self.base_hub or model_name
        self.dataset = _display(data.get("source", "")) or "custom data"
        self.dataset_hub = hub_id(data.get("source"))
        train = self.cfg.get("train") or {}
        self.train_norm = bool(train.get("train_norm", self.metrics.get("train_norm")))


def metadata(run: _Run) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    from .zoo import LICENSES

    hub = run.cfg.get("hub") or {}
    tags = ["hfft", run.task] + (["lora", "peft"] if run.kind != "full" else [])
    results = []
    if "accuracy" in run.metrics:
        common = dict(task_type=run.task, task_name=run.task.replace("-", " ").capitalize(),
                      dataset_type=run.dataset_hub or "custom", dataset_name=run.dataset,
                      dataset_split=(run.cfg.get("data") or {}).get("eval_split") or "validation")
        results = [EvalResult(metric_type="accuracy", metric_name="Accuracy", metric_value=run.metrics["accuracy"],
                              **common),
                   EvalResult(metric_type="f1", metric_name="Macro F1", metric_value=run.metrics["f1_macro"],
                              metric_args={"average": "macro"}, **common)]
    extra = {"base_model_relation": "adapter" if run.kind == "adapter" else "finetune"} if run.base_hub else {}
    data = ModelCardData(
        library_name="peft" if run.kind == "adapter" else "transformers", pipeline_tag=run.task,
        base_model=run.base_hub, datasets=[run.dataset_hub] if run.dataset_hub else None,
        license=hub.get("license") or LICENSES.get(run.base_name) or "other", tags=tags,
        model_name=run.name, eval_results=results or None, **extra)
    return data.to_yaml()


def usage(run: _Run) -> str:
    """A snippet that runs as written once `run.ref` exists (a Hub repository, or the local folder)."""
    kind = "Image" if run.image else "SequenceClassification"
    auto = f"AutoModelFor{'ImageClassification' if run.image else kind}"
    example = f'"{IMAGE_EXAMPLE}"' if run.image else json.dumps(TEXT_EXAMPLE)
    top_k = min(3, max(len(run.labels), 1))
    if run.kind != "adapter":
        return (f'```python\nfrom transformers import pipeline\n\nclassify = pipeline("{run.task}", model="{run.ref}")'
                f"\nprint(classify({example}, top_k={top_k}))\n```")
    processor, argument = ("AutoImageProcessor", "image_processor") if run.image else ("AutoTokenizer", "tokenizer")
    revision = (run.adapter or {}).get("revision")
    rev = f', revision="{revision}"' if revision else ""
    return f"""```python
from peft import PeftModel
from transformers import AutoConfig, {auto}, {processor}, pipeline

config = AutoConfig.from_pretrained("{run.ref}")  # the base model's config with this adapter's labels
base = {auto}.from_pretrained("{run.base_ref}"{rev}, config=config, ignore_mismatched_sizes=True)
model = PeftModel.from_pretrained(base, "{run.ref}").merge_and_unload()  # or keep the PeftModel unmerged
classify = pipeline("{run.task}", model=model, {argument}={processor}.from_pretrained("{run.ref}"))
print(classify({example}, top_k={top_k}))
```"""


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def labels_table(run: _Run) -> str:
    per_class = run.metrics.get("per_class") or {}
    rows = [[i, label, f"{per_class[label]['f1']:.3f}" if label in per_class else "",
             per_class.get(label, {}).get("support", "")] for i, label in enumerate(run.labels)]
    return _table(["id", "label", "F1 (eval)", "eval examples"], rows)


def schedule(run: _Run) -> str:
    """Peak learning rate of every layer group in each phase, read from the run's own per-step log. In phase 1 the
    body groups are frozen (the log still shows the rate their trainable norms would get), unless train_norm
    trained their norm layers."""
    steps = [r for r in run.log if "phase" in r]
    if not steps:
        return "(no per-step log in this folder)"
    groups = [k[3:] for k in steps[0] if k.startswith("lr/")]
    phases = sorted({r["phase"] for r in steps})
    trains = {1: "head + body norm layers" if run.train_norm else "head only", 2: "all groups"}
    header = ["layer group"] + [f"phase {p}: {trains.get(p, '')} ({sum(r['phase'] == p for r in steps)} steps)"
                                for p in phases]
    rows = []
    for g in groups:
        row = [g]
        for p in phases:
            peak = max((r.get(f"lr/{g}", 0.0) for r in steps if r["phase"] == p), default=0.0)
            body_in_phase_1 = p == 1 and g != groups[-1]
            if body_in_phase_1 and (not run.train_norm or peak == 0.0):
                row.append("frozen")
            else:
                row.append(f"{peak:.2e}" + (" (norm layers only)" if body_in_phase_1 else ""))
        rows.append(row)
    return _table(header, rows) + (f"\n\n{phase_one(run)}" if 1 in phases else "")


def phase_one(run: _Run) -> str:
    """What trains while the body is frozen, in the run's own settings."""
    if run.train_norm:
        where = " (under LoRA, those of the BatchNorm layers saved whole)" if run.kind != "full" else ""
        text = ("Phase 1 trains the new head and the body's norm-layer weights" + where + " (`train_norm`); the "
                "rest of the body is frozen.")
    else:
        text = "Phase 1 trains the new head alone: the whole body is frozen, norm layers included (`train_norm` off)."
    if _has_batch_norm(run.folder):
        text += " BatchNorm layers still update their running statistics on the training data."
    return text


def _has_batch_norm(folder: Path) -> bool:
    """Whether the saved weights hold BatchNorm running statistics (safetensors headers only; no tensor is read)."""
    from safetensors import safe_open

    for name in ("model.safetensors", "adapter_model.safetensors"):
        if (folder / name).is_file():
            with safe_open(str(folder / name), framework="np") as weights:
                names = weights.keys()
            return any(key.endswith("running_mean") for key in names)
    index = _read(folder, "model.safetensors.index.json") or {}
    return any(key.endswith("running_mean") for key in index.get("weight_map", {}))


def training(run: _Run) -> str:
    t = run.cfg.get("train") or {}
    lora = run.cfg.get("lora") or {}
    m = run.metrics
    text = [(f"Fine-tuned with hfft the fastai way: {phases(run, t)}. AdamW, weight decay {t.get('weight_decay')} "
             f"(none on norms and biases), batch size {t.get('batch_size')}, seed {t.get('seed')}, "
             f"{m.get('train_examples', '?')} training examples.")]
    if run.kind != "full":
        targets = (run.adapter or {}).get("target_modules") or lora.get("target_modules")
        targets = ", ".join(sorted(targets)) if isinstance(targets, list) else targets
        saved = ", ".join((run.adapter or {}).get("modules_to_save") or []) or "the head"
        plus = f" LoRA+: the B matrices learn {lora['loraplus_lr_ratio']}x faster." \
            if lora.get("loraplus_lr_ratio") else ""
        text.append(f"\nLoRA: rank {lora.get('r')}, alpha {lora.get('alpha')}, dropout {lora.get('dropout')}, on "
                    f"{targets}; trained and saved whole: {saved}.{plus}"
                    + (" This folder holds the adapter merged into the base model." if run.kind == "merged" else ""))
    if "trainable_params" in m:
        share = m["trainable_params"] / max(m.get("total_params") or 1, 1)
        text.append(f"\nTrained parameters: {m['trainable_params']:,} of {m.get('total_params', 0):,} "
                    f"({share:.2%}).")
    text.append("\n### Schedule\n\n" + schedule(run))
    return "\n".join(text)


def phases(run: _Run, t: dict) -> str:
    """The run's phases as its config set them: a head-only warm-up (freeze_epochs), then the body (epochs)."""
    what = "LoRA adapters and the new head" if run.kind != "full" else "the whole model"
    head = "the new head and the body's norm layers" if run.train_norm else "the new head alone"
    norms = "`train_norm`=true, " if run.train_norm else ""
    warm_up = (f"{head} first (`freeze_epochs`={t.get('freeze_epochs')}, {norms}one-cycle peaking at `base_lr`="
               f"{t.get('base_lr')})")
    unfrozen = (f"{what} (`epochs`={t.get('epochs')}) with discriminative learning rates spread geometrically over "
                f"the layer groups (`lr_mult`={t.get('lr_mult')}) and one-cycle (`pct_start`={t.get('pct_start')}, "
                f"`div`={t.get('div')})")
    if not t.get("epochs"):
        return f"{warm_up}, and nothing after it: the body stayed frozen (`epochs`=0)"
    if not t.get("freeze_epochs"):
        return (f"{unfrozen}, from the first step (`freeze_epochs`=0: no head-only warm-up; "
                f"`base_lr`={t.get('base_lr')})")
    return f"{warm_up}, then {unfrozen}"


def results(run: _Run) -> str:
    m = run.metrics
    if "accuracy" not in m:
        return "(no metrics in this folder)"
    parts = [f"On {m.get('eval_examples', '?')} evaluation examples: accuracy **{m['accuracy']:.4f}**, macro F1 "
             f"**{m['f1_macro']:.4f}**" + (f", loss {m['loss']:.4f}." if isinstance(m.get("loss"), float) else ".")]
    per_class = m.get("per_class") or {}
    rows = [[label, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"]]
            for label, v in per_class.items()]
    parts.append(_table(["label", "precision", "recall", "F1", "support"], rows))
    for image, title in (("confusion_matrix.png", "Confusion matrix"), ("training.png", "Training curves")):
        if (run.folder / image).is_file():
            parts.append(f"![{title}]({image})")
    return "\n\n".join(parts)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("hfft", "transformers", "peft", "torch"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


def render(folder, repo_id: str | None = None, location: str | None = None) -> str:
    run = _Run(Path(folder), repo_id, location)
    modality = "images" if run.image else "texts"
    shown = ", ".join(run.labels[:10]) + (", ..." if len(run.labels) > 10 else "")
    base = f"[{run.base_hub}](https://huggingface.co/{run.base_hub})" if run.base_hub else f"`{run.base_ref}`"
    what = {"full": f"a fine-tuned {base}",
            "adapter": f"a LoRA adapter for {base} (load it on top of that base model, below)",
            "merged": f"{base} with a fine-tuned LoRA adapter merged in (a plain transformers model)"}[run.kind]
    config_text = yaml.safe_dump(run.cfg, sort_keys=False, allow_unicode=True).strip()
    return f"""---
{metadata(run).strip()}
---

# {run.name}

Classifies {modality} into {len(run.labels)} labels ({shown}). It is {what}, trained with hfft on
{run.dataset}.

## Labels

{labels_table(run)}

## How to use

{usage(run)}

## Training

{training(run)}

## Results

{results(run)}

## Config

The resolved hfft config: `hfft train hfft.yaml` repeats the run.

```yaml
{config_text}
```

Framework versions: {versions()}.
"""
