"""Tasks: what hfft knows about one modality, looked up by name.

A task knows where its input lives in a dataset (which columns can hold it, which to pick), its model class, its
processor, how to turn canonical rows ({input_column, "labels"}) into model inputs, and how to batch them.
`hfft.data` and the trainer only talk to this interface, so a new modality is a new module here that subclasses
`Task` and registers itself with `@register_task`: no branches elsewhere.
"""

from __future__ import annotations

from ..errors import HfftError, suggest


class Task:
    """One modality. Subclasses set the class attributes and implement the methods that raise NotImplementedError."""

    name: str                          # "image-classification": the name in configs and in Splits.task
    input_column: str                  # the canonical input column in Splits ("image" | "text")
    pipeline_task: str                 # the transformers.pipeline task that serves the saved model
    input_names: tuple[str, ...] = ()  # conventional names of the input column, most telling first
    # When the task is not given, tasks with higher priority look at the data first: image datasets often carry
    # text columns too (file names, captions), text datasets never carry images.
    detect_priority: int = 0

    # ---- finding the input in a dataset (used by hfft.data) ----
    def input_feature(self):
        """The datasets feature of the canonical input column (datasets.Image(), Value("string"), ...)."""
        raise NotImplementedError

    def input_candidates(self, ds) -> list[str]:
        """Columns of `ds` whose type can hold this task's input; empty when the data is not for this task."""
        raise NotImplementedError

    def choose_input(self, ds, candidates: list[str]) -> str:
        """The input column among several candidates: the one with a conventional name, else an error."""
        if len(candidates) == 1:
            return candidates[0]
        named = [c for c in candidates if c.lower() in self.input_names]
        if len(named) == 1:
            return named[0]
        raise HfftError(f"Several columns could hold the {self.input_column} input: {named or candidates}. "
                        "Pass input_column= (data.input_column) naming the right one.")

    def check_input(self, ds, column: str) -> None:
        """Raise HfftError when `column` cannot serve as this task's input (wrong type, broken paths)."""

    def unreadable_inputs(self, ds, column: str) -> dict[int, str]:
        """{row: why} for the rows whose input cannot be read (corrupt or truncated files, missing paths). Run
        once over every row before training, so every bad file is reported at once instead of crashing an epoch
        later; cheap enough for that (no full decode where a format allows a cheaper check)."""
        return {}

    # ---- the model side (used by the trainer and inference) ----
    def auto_model_class(self):
        raise NotImplementedError

    def load_processor(self, model_path: str, *, image_size=None, max_length=None, trust_remote_code=False,
                       **hub_kwargs):
        raise NotImplementedError

    def prepare(self, ds, processor, *, train: bool, seed: int = 42, max_length: int | None = None):
        """Model-ready dataset (the "labels" column kept) from canonical rows."""
        raise NotImplementedError

    def collator(self, processor):
        raise NotImplementedError

    def _require_columns(self, ds) -> None:
        missing = [c for c in (self.input_column, "labels") if c not in ds.column_names]
        if missing:
            raise HfftError(f"{self.name} expects columns {self.input_column!r} and 'labels' (as made by "
                            f"hfft.data.load_splits); this dataset lacks {missing}, it has {ds.column_names}.")

    def __repr__(self) -> str:
        return f"<Task {self.name}>"


TASKS: dict[str, Task] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: registers one instance of the task under its name."""
    TASKS[cls.name] = cls()
    return cls


def get_task(name: str) -> Task:
    if name in TASKS:
        return TASKS[name]
    hint = suggest(name, TASKS)
    if not hint:  # "image" -> "image-classification"
        starts = [known for known in TASKS if known.startswith(str(name).lower())]
        hint = f" Did you mean {starts[0]!r}?" if len(starts) == 1 else ""
    raise HfftError(f"Unknown task {name!r}.{hint} Known tasks: {sorted(TASKS)}.")


def tasks_by_priority() -> list[Task]:
    return sorted(TASKS.values(), key=lambda task: -task.detect_priority)


# The modalities register themselves on import.
from . import image, text  # noqa: E402, F401
