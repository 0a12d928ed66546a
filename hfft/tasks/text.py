"""Text classification: the model's tokenizer, truncation when the dataset is prepared, padding per batch."""

from __future__ import annotations

from ..errors import HfftError
from . import Task, register_task

DEFAULT_MAX_LENGTH = 512  # cap for tokenizers whose model_max_length is "unlimited" (a huge sentinel) or long


@register_task
class TextClassification(Task):
    name = "text-classification"
    input_column = "text"
    pipeline_task = "text-classification"
    input_names = ("text", "sentence", "review", "content", "document", "comment", "body", "tweet", "message",
                   "utterance", "passage", "question", "abstract", "description", "excerpt", "snippet")

    def input_feature(self):
        import datasets

        return datasets.Value("string")

    def input_candidates(self, ds) -> list[str]:
        return [c for c, f in ds.features.items() if getattr(f, "dtype", None) in ("string", "large_string")]

    def choose_input(self, ds, candidates: list[str]) -> str:
        """A single string column; else the one with a conventional name; else the longest on average."""
        if len(candidates) == 1:
            return candidates[0]
        named = [c for c in candidates if c.lower() in self.input_names]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            raise HfftError(f"Several columns could hold the text: {named}. Pass input_column= (data.input_column) "
                            "naming the right one.")
        import pyarrow.compute as pc

        sample = ds.with_format("arrow")[:1000]
        lengths = {c: pc.mean(pc.utf8_length(sample[c])).as_py() or 0 for c in candidates}
        return max(candidates, key=lambda c: lengths[c])

    def check_input(self, ds, column: str) -> None:
        feature = ds.features[column]
        if getattr(feature, "dtype", None) not in ("string", "large_string"):
            raise HfftError(f"Column {column!r} holds {feature}, not text. Pass input_column= naming the text column.")

    def auto_model_class(self):
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def load_processor(self, model_path: str, *, image_size=None, max_length=None, trust_remote_code=False,
                       **hub_kwargs):
        """The tokenizer; `max_length` is stored on it (model_max_length), so the copy saved with the model
        truncates at the length it was trained with."""
        from transformers import AutoTokenizer

        kwargs = {k: v for k, v in hub_kwargs.items() if v is not None}
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code, **kwargs)
        except (OSError, ValueError) as err:
            raise HfftError(f"No tokenizer could be loaded for {str(model_path)!r}: {err}. A text model needs its "
                            "tokenizer files beside the weights; is this a text model?") from err
        if tokenizer.pad_token is None:
            # Decoder LLMs (Llama, Qwen, ...) ship without a pad token. Batches are padded and the attention mask
            # hides the padding, so any token will do: eos is the usual choice and needs no new embedding. The
            # model config's pad_token_id (which the classifier uses to find the last real token) is set when
            # the model is loaded (hfft.models).
            if tokenizer.eos_token is None:
                raise HfftError(f"The tokenizer of {str(model_path)!r} has neither a pad nor an eos token, so "
                                "batches cannot be padded. Add a pad token to the tokenizer and save it.")
            tokenizer.pad_token = tokenizer.eos_token
        positions = _position_limit(model_path, trust_remote_code=trust_remote_code, **kwargs)
        if positions and tokenizer.model_max_length > positions:
            tokenizer.model_max_length = positions  # a tokenizer shared by a smaller model would overrun it
        if max_length:
            if max_length > tokenizer.model_max_length:
                raise HfftError(f"max_length {max_length} exceeds what the model accepts "
                                f"({tokenizer.model_max_length} tokens). Use data.max_length <= "
                                f"{tokenizer.model_max_length}.")
            tokenizer.model_max_length = int(max_length)
        return tokenizer

    def prepare(self, ds, processor, *, train: bool, seed: int = 42, max_length: int | None = None):
        """Token ids truncated to max_length (default: the tokenizer's maximum, at most 512); padding is left to
        the collator, so each batch is only as long as its longest text."""
        self._require_columns(ds)
        limit = int(max_length or min(processor.model_max_length, DEFAULT_MAX_LENGTH))

        def tokenize(batch):
            return processor(batch["text"], truncation=True, max_length=limit)

        others = [c for c in ds.column_names if c != "labels"]  # the collator takes token ids and labels only
        return ds.map(tokenize, batched=True, remove_columns=others, desc="Tokenizing")

    def collator(self, processor):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(processor)


def _position_limit(model_path: str, **kwargs) -> int | None:
    """How many positions the model itself embeds (max_position_embeddings), when its config says."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(model_path, **kwargs)
    except (OSError, ValueError):
        return None
    limit = getattr(config, "max_position_embeddings", None)
    return limit if isinstance(limit, int) and limit > 0 else None
