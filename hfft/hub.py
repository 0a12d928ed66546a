"""Publishing a run folder to the Hugging Face Hub: which files go up, the model card naming the repository, and
the token.

The token is the one given, else where huggingface_hub looks (HF_TOKEN, then the file `hf auth login` writes). It
goes to the Hub client and nowhere else: hfft never logs it, and it is kept out of hfft.yaml, out of the
TrainingArguments (so out of every checkpoint) and out of the card.

What goes up: the run folder without its checkpoints, its merged/ subfolder and hidden files; or, with
`merged=True` (LoRA runs), the merged/ folder (made from the adapter first when the run did not save one, or
when the one there was made from an earlier adapter). The card naming the repository goes up from memory; the
folder's own README.md is rewritten only once the upload succeeded.
"""

from __future__ import annotations

import logging
from pathlib import Path

from .card import CARD_NAME, render, write_card
from .errors import HfftError
from .runfolder import ADAPTER_FILES, CHECKPOINTS, FULL_WEIGHT_FILES, MERGED_DIR, merged_is_current

log = logging.getLogger("hfft")

EXCLUDED_DIRS = (CHECKPOINTS, MERGED_DIR)


def files_to_upload(folder) -> list[str]:
    """Relative paths (posix) of every file that a push of `folder` uploads, sorted. Weights of the other kind
    (an adapter's files in a full run, full weights in an adapter run), left by an older hfft, stay behind."""
    from .adapters import is_adapter_folder

    folder = Path(folder)
    stale = FULL_WEIGHT_FILES if is_adapter_folder(folder) else ADAPTER_FILES
    files = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and rel.parts[0] not in EXCLUDED_DIRS and not any(p.startswith(".") for p in rel.parts) \
                and rel.as_posix() not in stale:
            files.append(rel.as_posix())
    return files


def resolve_token(token: str | None = None) -> str:
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HfftError("No Hugging Face token found: log in with `hf auth login`, or set the HF_TOKEN environment "
                        "variable.")
    return token


def folder_to_push(run, merged: bool = False) -> Path:
    """The run folder, or with merged=True its merged/ folder, made from the adapter when it is not there yet or
    was made from an earlier adapter."""
    from .adapters import is_adapter_folder, save_merged

    run = Path(run)
    if not (run / "hfft.yaml").is_file():
        raise HfftError(f"{str(run)!r} is not an hfft run folder (no hfft.yaml). Pass the output_dir of a finished "
                        "run.")
    if not merged:
        return run
    if not is_adapter_folder(run):
        raise HfftError(f"{str(run)!r} is not a LoRA run: it already holds a plain model. Push it without --merged.")
    if not merged_is_current(run):
        from .inference import run_task
        from .tasks import get_task

        save_merged(run, get_task(run_task(run)))
    return run / MERGED_DIR


def _hub_errors() -> tuple[type[BaseException], ...]:
    """What a failed upload raises: the Hub's answers, offline mode, invalid card metadata, and the network errors
    of whichever HTTP client this huggingface_hub version uses."""
    import sys

    from huggingface_hub.errors import HFValidationError, HfHubHTTPError, OfflineModeIsEnabled

    errors = [HfHubHTTPError, OfflineModeIsEnabled, HFValidationError, ValueError, OSError]
    for client in ("httpx2", "httpx", "requests"):
        module = sys.modules.get(client)
        error = getattr(module, "HTTPError", None) if module is not None else None
        if isinstance(error, type) and issubclass(error, BaseException):
            errors.append(error)
    return tuple(errors)


def push(run, repo_id: str | None = None, *, private: bool = False, merged: bool = False, token: str | None = None,
         api=None, commit_message: str | None = None) -> str:
    """Upload a finished run to the Hub and return the repository's URL. `repo_id` defaults to the run folder's
    name under the token's account. `api`: a huggingface_hub.HfApi (or anything with its create_repo and
    create_commit), for another endpoint or for tests; by default one is made with the token."""
    from huggingface_hub import CommitOperationAdd

    folder = folder_to_push(run, merged)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=resolve_token(token))
    name = repo_id or Path(run).resolve().name
    try:
        # private=None, not False: a repository that is not asked to be private follows its owner's default.
        repo = api.create_repo(name, private=private or None, exist_ok=True, repo_type="model")
        full_id = getattr(repo, "repo_id", None) or name
        card = render(folder, full_id).encode("utf-8")  # its snippet names the repository
        files = sorted({*files_to_upload(folder), CARD_NAME})
        operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=card if f == CARD_NAME else str(folder / f))
                      for f in files]
        api.create_commit(repo_id=full_id, repo_type="model", operations=operations,
                          commit_message=commit_message or f"Upload {'merged model' if merged else 'run'} from hfft")
    except _hub_errors() as err:  # HTTP errors, offline mode, a refused token: one line naming the repository
        retry = f"hfft push {run} {name}" + (" --merged" if merged else "")
        raise HfftError(f"Pushing {str(folder)!r} to the Hub repository {name!r} failed: {type(err).__name__}: "
                        f"{err}\nThe run folder is complete; push it again with `{retry}`.") from err
    write_card(folder, full_id)  # only now: a failed push leaves the card naming no repository that may not exist
    url = str(repo)
    log.info("pushed %d files to %s", len(files), url)
    return url
