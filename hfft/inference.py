"""Using a finished run folder: evaluate it on labelled data, or predict labels for new inputs.

A run folder holds a full model or a LoRA adapter (rebuilt on its base model); a merged LoRA model (<run>/merged)
is a run folder of its own."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml

from . import runfolder
from .adapters import is_adapter_folder, load_adapter_model
from .errors import HfftError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
TEXT_FILE_SUFFIXES = {".csv", ".txt", ".jsonl", ".tsv"}


def run_config(run) -> dict:
    path = Path(run) / runfolder.CONFIG_NAME
    if not path.is_file():
        raise HfftError(f"{str(run)!r} is not an hfft run folder (no {runfolder.CONFIG_NAME}). Pass the output_dir "
                        "of a finished run.")
    refuse_stale_merged(run)
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def refuse_stale_merged(folder) -> None:
    """A <run>/merged folder made from an earlier adapter than the run's own would answer for a model the run no
    longer holds."""
    folder = Path(folder)
    run = folder.parent
    if folder.name == runfolder.MERGED_DIR and is_adapter_folder(run) and not runfolder.merged_is_current(run):
        raise HfftError(f"{str(folder)!r} was merged from an earlier adapter than the one in {str(run)!r} (their "
                        f"hfft.yaml or metrics.json differ). Use {str(run)!r} itself, which loads its adapter, or "
                        f"delete {str(folder)!r}: `hfft push {run} REPO --merged` makes it again.")


def run_task(run) -> str:
    task = (run_config(run).get("data") or {}).get("task")
    if task:
        return task
    config = json.loads((Path(run) / "config.json").read_text(encoding="utf-8"))
    return "image-classification" if any("Image" in a for a in config.get("architectures", [])) \
        else "text-classification"


def _expand_images(inputs, column: str | None = None) -> list[str]:
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files += sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            files.append(str(path))
        elif path.is_file() and path.suffix.lower() in TEXT_FILE_SUFFIXES:  # a list of image paths
            listed = [str(path.parent / p) for p in _read_texts(path, column, "image paths")]
            missing = [p for p in listed if Path(p).suffix.lower() not in IMAGE_SUFFIXES or not Path(p).is_file()]
            if missing:
                raise HfftError(f"{item!r}: {missing[0]!r} is not an image file; this model classifies images, so "
                                "a text file must list image paths (relative to the file), one per row.")
            files += listed
        elif path.is_file():
            raise HfftError(f"{item!r} is not an image file; this model classifies images.")
        else:
            raise HfftError(f"{item!r} is neither an image file nor a folder; this model classifies images "
                            "(give image paths or folders).")
    if not files:
        raise HfftError(f"No image files found in {list(inputs)!r}.")
    return files


def _expand_texts(inputs, column: str | None) -> list[str]:
    texts = []
    for item in inputs:
        path = Path(item) if len(str(item)) < 4096 else None
        if path is not None and path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            raise HfftError(f"{item!r} is an image, but this model classifies text.")
        if path is not None and path.is_dir():
            raise HfftError(f"{item!r} is a folder, but this model classifies text: give texts, or .txt/.csv/"
                            ".jsonl files of texts.")
        if path is not None and path.is_file() and path.suffix.lower() in TEXT_FILE_SUFFIXES:
            texts += _read_texts(path, column)
        else:
            texts.append(str(item))
    return texts


def _read_texts(path: Path, column: str | None, what: str = "text") -> list[str]:
    if path.suffix.lower() == ".txt":
        lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not lines:
            raise HfftError(f"{str(path)!r} holds no {what}: it has no non-blank line (one input per line).")
        return lines
    if path.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        names = list(rows[0]) if rows else []
    else:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
            rows, names = list(reader), list(reader.fieldnames or [])
    if not rows:
        shape = f"a header ({', '.join(names)}) but no rows" if names else "nothing in it"
        raise HfftError(f"{str(path)!r} holds no {what}: it has {shape}.")
    usual = ("text",) if what == "text" else ("image", "path", "file", "filename")
    chosen = column or next((c for c in usual if c in names), None)
    if chosen not in names:
        model = "this model classifies images, so " if what != "text" else ""
        raise HfftError(f"{str(path)!r}: {model}pass column= (--column) naming the column of {what}; columns: "
                        f"{names}.")
    return [str(row[chosen] or "") for row in rows]


def predict(run, inputs, *, top_k: int = 1, batch_size: int = 32, column: str | None = None,
            device=None) -> list[dict]:
    """[{"input": ..., "labels": [...top_k names], "scores": [...]}] for images, folders, texts or text files."""
    from transformers import pipeline

    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    task = run_task(run)
    items = _expand_images(inputs, column) if task == "image-classification" else _expand_texts(inputs, column)
    if not items:
        raise HfftError(f"Nothing to predict: {list(map(str, inputs))!r} holds no texts.")
    if is_adapter_folder(run):  # base model + adapter, merged in memory for speed
        from .tasks import get_task

        spec = get_task(task)
        processor = spec.load_processor(str(run))
        kind = "image_processor" if task == "image-classification" else "tokenizer"
        classify = pipeline(task, model=load_model(run, spec, merge=True), device=device, **{kind: processor})
    else:
        classify = pipeline(task, model=str(run), device=device)
    # The text pipeline does not truncate by default; the saved tokenizer's model_max_length is the training length.
    extra = {"truncation": True} if task == "text-classification" else {}
    outputs = classify(items, top_k=top_k, batch_size=batch_size, **extra)
    results = []
    for item, out in zip(items, outputs):
        out = out if isinstance(out, list) else [out]
        results.append({"input": item, "labels": [o["label"] for o in out], "scores": [float(o["score"]) for o in out]})
    return results


def load_model(run, task, *, merge: bool = False):
    """The run's model in eval mode: the saved model, or for a LoRA run its base model with the adapter loaded
    (merged into it with merge=True)."""
    if is_adapter_folder(run):
        return load_adapter_model(run, task, merge=merge)
    return task.auto_model_class().from_pretrained(str(run)).eval()


def write_predictions(results: list[dict], path) -> None:
    path = Path(path)
    if path.suffix.lower() == ".json":
        runfolder.save_json(path, results)
        return
    k = max((len(r["labels"]) for r in results), default=1)  # no results: the header alone
    header = ["input"] + [f"{kind}_{i + 1}" for i in range(k) for kind in ("label", "score")]
    rows = [[r["input"]] + [v for pair in zip(r["labels"], r["scores"]) for v in pair] for r in results]
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    from .config import write_text_atomic

    write_text_atomic(path, buffer.getvalue())


def evaluate_run(run, data=None, *, split: str | None = None, batch_size: int = 64) -> dict:
    """Metrics of a saved run on labelled data: by default the run's own evaluation split, rebuilt from its config."""
    import torch

    from .data import load_splits
    from .metrics import report
    from .tasks import get_task

    cfg = run_config(run)
    d, seed = cfg["data"], cfg["train"]["seed"]
    splits = load_splits(data if data is not None else _resolve(d["source"]), task=d.get("task"),
                         input_column=d.get("input_column"), label_column=d.get("label_column"),
                         train_split=d.get("train_split", "train"), eval_split=split or d.get("eval_split"),
                         val_fraction=d.get("val_fraction", 0.1), seed=seed,
                         max_eval_samples=d.get("max_eval_samples"), skip_bad_files=d.get("skip_bad_files", False),
                         encoding=d.get("encoding"))
    task = get_task(splits.task)
    processor = task.load_processor(str(run), max_length=d.get("max_length"))
    model = load_model(run, task)
    names = [model.config.id2label[i] for i in range(model.config.num_labels)]
    if splits.labels != names:
        unknown = sorted(set(splits.labels) - set(names))
        if unknown:
            raise HfftError(f"The data has labels the model never learned: {unknown}. The model knows {names}.")
    remap = torch.tensor([names.index(name) for name in splits.labels])
    dataset = task.prepare(splits.eval, processor, train=False, seed=seed, max_length=d.get("max_length"))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=task.collator(processor))
    preds, labels = [], []
    with torch.no_grad():
        for batch in loader:
            target = remap[batch.pop("labels")]
            preds.append(model(**batch).logits.argmax(-1))
            labels.append(target)
    return report(torch.cat(labels).numpy(), torch.cat(preds).numpy(), names)


def _resolve(source):
    from .zoo import resolve_data

    return resolve_data(source)
