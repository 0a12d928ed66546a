"""Publishing: the model card (Hub metadata that parses, sections, a usage snippet that runs against the folder),
the files a push uploads, the upload itself (an injected client, and a local HTTP endpoint standing in for the
Hub), and the token, which reaches the Hub's Authorization header and nothing else."""

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from hfft import HfftError, fine_tune
from hfft.card import IMAGE_EXAMPLE, hub_id
from hfft.cli import main
from hfft.hub import files_to_upload, push

ROOT = Path(__file__).resolve().parents[1]
FAST = {"batch_size": 16, "eval_strategy": "no", "save_strategy": "no"}
TOKEN = "hf_TESTsecret0123456789abcdef"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, tiny_vit, image_folder):
    out = tmp_path_factory.mktemp("hub") / "colours"
    return Path(fine_tune(model=tiny_vit, data=image_folder, output_dir=str(out), freeze_epochs=1, epochs=1,
                          **FAST).output_dir)


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, tiny_bert, text_csv):
    out = tmp_path_factory.mktemp("hub") / "reviews"
    return Path(fine_tune(model=tiny_bert, data=text_csv, output_dir=str(out), freeze_epochs=1, epochs=1,
                          lora={"r": 4, "merge": True}, license="mit", **{**FAST, "save_strategy": "epoch"}).output_dir)


def split_card(text: str) -> tuple[dict, str]:
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert match, "the card does not start with YAML metadata"
    return yaml.safe_load(match.group(1)), match.group(2)


def run_snippets(*cards: tuple[str, str, Path], image: str | None = None) -> list[str]:
    """Execute each card's Python snippet, its repository id pointing at a local folder, in one fresh interpreter;
    returns what each printed. cards: (card text, the id it names, the folder standing in for it)."""
    codes = []
    for card, ref, folder in cards:
        code = re.search(r"```python\n(.*?)```", card, re.S).group(1).replace(f'"{ref}"', json.dumps(str(folder)))
        codes.append(code.replace(IMAGE_EXAMPLE, image) if image else code)
    program = "\nprint('=====')\n".join(codes)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.split("=====\n")


# ---- the card ----


def test_card_metadata_follows_hub_conventions(image_run, adapter_run):
    from huggingface_hub import ModelCard

    for run, library in ((image_run, "transformers"), (adapter_run, "peft")):
        text = (run / "README.md").read_text()
        meta, body = split_card(text)
        metrics = json.loads((run / "metrics.json").read_text())
        assert meta["library_name"] == library and "hfft" in meta["tags"]
        assert meta["pipeline_tag"] == yaml.safe_load((run / "hfft.yaml").read_text())["data"]["task"]
        results = ModelCard(text).data.eval_results  # the Hub's own reading of model-index
        assert {(r.metric_type, r.metric_value) for r in results} == {("accuracy", metrics["accuracy"]),
                                                                      ("f1", metrics["f1_macro"])}
        assert "base_model" not in meta  # a local folder is no Hub id
        for section in ("## Labels", "## How to use", "## Training", "### Schedule", "## Results", "## Config",
                        "![Confusion matrix](confusion_matrix.png)"):
            assert section in body, section
        for label, values in metrics["per_class"].items():
            assert f"| {label} | {values['precision']:.3f} |" in body
    assert split_card((image_run / "README.md").read_text())[0]["license"] == "other"
    adapter_meta, adapter_body = split_card((adapter_run / "README.md").read_text())
    assert adapter_meta["license"] == "mit" and {"lora", "peft"} <= set(adapter_meta["tags"])
    assert "PeftModel.from_pretrained" in adapter_body and "LoRA adapter for" in adapter_body
    assert "| head | " in adapter_body and "frozen" in adapter_body  # learning rate per group and phase
    assert "Trained parameters:" in adapter_body


def test_base_model_and_dataset_ids(tmp_path, monkeypatch):
    assert hub_id("hfft:minilm-l6") == "sentence-transformers/all-MiniLM-L6-v2"
    assert hub_id("google/vit-base-patch16-224-in21k") == "google/vit-base-patch16-224-in21k"
    assert hub_id(str(ROOT)) is None and hub_id("hfft:efficientnet-lite0") is None
    monkeypatch.chdir(tmp_path)  # none of these exists here: their shape alone decides
    for name in ("imdb", "stanfordnlp/imdb", "facebook/opt-1.3b", "user/data.v2"):
        assert hub_id(name) == name, name
    for name in ("reviews.csv", "data/train.csv", "train.parquet", "user/reviews.jsonl", "notes.txt", "./data",
                 "../data", "/data/reviews", "~/data", "a/b/c", "user/", "user--x/name", "name."):
        assert hub_id(name) is None, name
    (tmp_path / "reviews").mkdir()
    assert hub_id("reviews") is None  # a local folder, though shaped like an id


def edited_copy(run: Path, dest: Path, **sections) -> Path:
    """A copy of a run folder whose hfft.yaml has the given sections updated."""
    folder = Path(shutil.copytree(run, dest))
    cfg = yaml.safe_load((folder / "hfft.yaml").read_text())
    for section, values in sections.items():
        cfg[section].update(values)
    (folder / "hfft.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return folder


def test_card_names_hub_base_models_and_datasets(image_run, adapter_run, tmp_path):
    from hfft.card import render

    for run, relation in ((image_run, "finetune"), (adapter_run, "adapter")):
        folder = edited_copy(run, tmp_path / run.name, model={"name": "google/vit-base-patch16-224-in21k"},
                             data={"source": "alice/colours"})
        meta, body = split_card(render(folder))
        assert meta["base_model"] == "google/vit-base-patch16-224-in21k", relation
        assert meta["base_model_relation"] == relation and meta["datasets"] == ["alice/colours"]
        assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "alice/colours"
        assert "https://huggingface.co/google/vit-base-patch16-224-in21k" in body


def test_card_names_no_hub_dataset_for_local_data(image_run, tmp_path, monkeypatch):
    from hfft.card import render

    for source in ("reviews.csv", "data/train.csv", "./images", "data/photos.parquet"):
        folder = edited_copy(image_run, tmp_path / source.replace("/", "_"), data={"source": source})
        monkeypatch.chdir(tmp_path)  # a push from elsewhere: the relative path does not exist here
        meta, body = split_card(render(folder))
        assert "datasets" not in meta, source
        assert meta["model-index"][0]["results"][0]["dataset"]["type"] == "custom"
        assert f"on\n{Path(source).name}." in body


@pytest.fixture(scope="module")
def schedule_runs(tmp_path_factory, tiny_resnet, tiny_vit, image_folder):
    """A BatchNorm CNN with train_norm on, and a ViT without a head-only phase."""
    root = tmp_path_factory.mktemp("schedule")
    norms = fine_tune(model=tiny_resnet, data=image_folder, output_dir=str(root / "norms"), freeze_epochs=1,
                      epochs=1, train_norm=True, **FAST).output_dir
    direct = fine_tune(model=tiny_vit, data=image_folder, output_dir=str(root / "direct"), freeze_epochs=0,
                       epochs=1, **FAST).output_dir
    return Path(norms), Path(direct)


def schedule_rows(body: str) -> dict[str, list[str]]:
    table = body.split("### Schedule")[1].split("## Results")[0]
    lines = [line for line in table.splitlines() if line.startswith("|")]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]
    return {row[0]: row[1:] for row in rows[2:]} | {"header": rows[0][1:]}


def test_schedule_says_what_phase_one_trains(image_run, schedule_runs):
    _, plain = split_card((image_run / "README.md").read_text())  # train_norm off, LayerNorm model
    rows = schedule_rows(plain)
    assert rows["header"][0].startswith("phase 1: head only")
    assert all(cells[0] == "frozen" for group, cells in rows.items() if group not in ("head", "header"))
    assert rows["head"][0] != "frozen"
    assert "the whole body is frozen, norm layers included (`train_norm` off)" in plain
    assert "BatchNorm" not in plain and "the new head alone first (`freeze_epochs`=1, one-cycle" in plain

    norms, direct = schedule_runs
    _, body = split_card((norms / "README.md").read_text())  # train_norm on, BatchNorm model
    rows = schedule_rows(body)
    assert rows["header"][0].startswith("phase 1: head + body norm layers")
    body_cells = [cells[0] for group, cells in rows.items() if group not in ("head", "header")]
    assert body_cells and all(cell.endswith("(norm layers only)") for cell in body_cells), body_cells
    assert "norm-layer weights (`train_norm`)" in body
    assert "the new head and the body's norm layers first (`freeze_epochs`=1, `train_norm`=true" in body
    assert "BatchNorm layers still update their running statistics" in body

    _, body = split_card((direct / "README.md").read_text())  # freeze_epochs=0: no head-only phase
    assert "head alone" not in body and "from the first step (`freeze_epochs`=0" in body
    assert "phase 1" not in body and schedule_rows(body)["header"][0].startswith("phase 2")


def test_card_snippets_run_against_the_local_folders(image_run, adapter_run, image_folder):
    merged = adapter_run / "merged"
    meta, body = split_card((merged / "README.md").read_text())
    assert meta["library_name"] == "transformers" and "merged in" in body
    cards = [((run / "README.md").read_text(), str(run), run) for run in (image_run, adapter_run, merged)]
    images, adapter, plain = run_snippets(*cards, image=str(next(Path(image_folder).rglob("*.png"))))
    assert "'red'" in images and "'blue'" in images
    assert "'positive'" in adapter and "'negative'" in adapter
    assert "'positive'" in plain and "'negative'" in plain


# ---- what goes up, through an injected client ----


class RecordingApi:
    """Stands in for huggingface_hub.HfApi: records what a push asks of it."""

    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        self.calls.append(("create_repo", repo_id, kwargs))
        return RepoUrl(f"https://huggingface.co/{repo_id if '/' in repo_id else 'me/' + repo_id}")

    def create_commit(self, **kwargs):
        self.calls.append(("create_commit", kwargs["repo_id"], kwargs))


def test_push_uploads_the_run_folder_without_checkpoints(adapter_run, tmp_path):
    run = Path(shutil.copytree(adapter_run, tmp_path / "reviews"))
    api = RecordingApi()
    url = push(run, "alice/reviews", private=True, api=api)
    assert url == "https://huggingface.co/alice/reviews"
    (_, repo, created), (_, committed_to, commit) = api.calls
    assert (repo, created["private"], committed_to) == ("alice/reviews", True, "alice/reviews")
    assert created["exist_ok"]  # pushing again updates the repository
    uploaded = {op.path_in_repo: op.path_or_fileobj if isinstance(op.path_or_fileobj, bytes)
                else Path(op.path_or_fileobj) for op in commit["operations"]}
    expected = {"README.md", "adapter_config.json", "adapter_model.safetensors", "config.json", "hfft.yaml",
                "metrics.json", "log.jsonl", "tokenizer.json", "tokenizer_config.json", "confusion_matrix.png",
                "training.png"}
    assert set(uploaded) == expected == set(files_to_upload(run))
    assert (run / "checkpoints").is_dir() and (run / "merged").is_dir()  # there, but not uploaded
    card = uploaded.pop("README.md")  # the card naming the repository goes up from memory
    assert all(path == run / name for name, path in uploaded.items())
    assert card == (run / "README.md").read_bytes()  # and is written to the folder once the upload succeeded
    card = card.decode()
    assert 'PeftModel.from_pretrained(base, "alice/reviews")' in card and "name: alice/reviews" in card


def test_push_merged_uploads_a_plain_model_made_on_demand(adapter_run, tmp_path):
    run = Path(shutil.copytree(adapter_run, tmp_path / "reviews", ignore=shutil.ignore_patterns("merged")))
    api = RecordingApi()
    push(run, "reviews-merged", merged=True, api=api)  # no namespace: the token's account
    commit = api.calls[1][2]
    uploaded = {op.path_in_repo for op in commit["operations"]}
    assert {"model.safetensors", "config.json", "README.md", "metrics.json", "tokenizer.json"} <= uploaded
    assert not uploaded & {"adapter_config.json", "adapter_model.safetensors"}
    assert commit["repo_id"] == "me/reviews-merged"
    assert 'model="me/reviews-merged"' in (run / "merged" / "README.md").read_text()


def test_push_merged_remakes_a_merged_folder_from_an_earlier_adapter(adapter_run, tmp_path):
    run = Path(shutil.copytree(adapter_run, tmp_path / "reviews"))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["train_runtime"] += 1.0  # as a later run over the folder, leaving the old merged/, would write
    (run / "metrics.json").write_text(json.dumps(metrics))
    push(run, "alice/reviews-merged", merged=True, api=RecordingApi())
    assert (run / "merged" / "metrics.json").read_bytes() == (run / "metrics.json").read_bytes()


class FailingApi(RecordingApi):
    def create_commit(self, **kwargs):
        raise OSError("connection reset by peer")


def test_a_failed_push_leaves_the_card_untouched(image_run, tmp_path):
    run = Path(shutil.copytree(image_run, tmp_path / "colours"))
    card = (run / "README.md").read_bytes()
    with pytest.raises(HfftError, match="connection reset"):
        push(run, "alice/never-created", api=FailingApi())
    assert (run / "README.md").read_bytes() == card and b"alice/never-created" not in card


def test_push_refuses_what_it_cannot_do(image_run, tmp_path, monkeypatch, capsys, tiny_bert, text_csv):
    with pytest.raises(HfftError, match="not a LoRA run"):
        push(image_run, "a/b", merged=True, api=RecordingApi())
    with pytest.raises(HfftError, match="not an hfft run folder"):
        push(tmp_path, "a/b", api=RecordingApi())
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # the Hub cannot be reached
    with pytest.raises(HfftError, match=f"(?s)OfflineModeIsEnabled.*push it again with `hfft push {image_run} a/b`") as err:
        push(image_run, "a/b")
    assert TOKEN not in str(err.value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))  # where `hf auth login` would have written
    monkeypatch.setattr("huggingface_hub.constants.HF_TOKEN_PATH", str(tmp_path / "no-token"))
    assert main(["push", str(image_run), "a/b"]) == 2
    assert "hf auth login" in capsys.readouterr().err
    with pytest.raises(HfftError, match="hf auth login"):  # before any training
        fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "never"), push_to_hub=True)
    assert not (tmp_path / "never").exists()
    with pytest.raises(HfftError, match="hub.repo_id must be"):
        fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "never"), push_to_hub="my model")


# ---- over HTTP, to a local endpoint that records what the Hub would receive ----


class FakeHub:
    """The few Hub endpoints an upload of small files uses; every request is recorded, files are decoded."""

    def __init__(self):
        self.requests, self.files = [], {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, body, status=200):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                hub.requests.append(("GET", self.path, dict(self.headers), b""))
                self.reply({"error": "not found"}, 404)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path, dict(self.headers), body))
                if self.path == "/api/validate-yaml":
                    self.reply({"errors": [], "warnings": []})
                elif self.path == "/api/repos/create":
                    request = json.loads(body)
                    hub.created = request
                    self.reply({"url": f"{hub.url}/{request.get('organization') or 'me'}/{request['name']}"})
                elif "/preupload/" in self.path:
                    files = json.loads(body)["files"]
                    self.reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in files]})
                elif "/commit/" in self.path:
                    for line in body.decode().splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            hub.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                    repo = self.path.split("/api/models/")[1].split("/commit/")[0]
                    self.reply({"commitUrl": f"{hub.url}/{repo}/commit/{'0' * 40}", "commitOid": "0" * 40})
                else:
                    self.reply({"error": "unknown endpoint"}, 404)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token_seen_only_in_auth_headers(self, token: str) -> bool:
        for _, path, headers, body in self.requests:
            if token in path or token.encode() in body:
                return False
            if any(token in value for key, value in headers.items() if key.lower() != "authorization"):
                return False
        return any({k.lower(): v for k, v in h.items()}.get("authorization") == f"Bearer {token}"
                   for _, _, h, _ in self.requests)


@pytest.fixture
def fake_hub():
    hub = FakeHub()
    yield hub
    hub.server.shutdown()


def test_hfft_push_command_uploads_over_http(adapter_run, tmp_path, fake_hub):
    run = Path(shutil.copytree(adapter_run, tmp_path / "reviews"))
    env = {**os.environ, "HF_ENDPOINT": fake_hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_TELEMETRY": "1"}
    done = subprocess.run([sys.executable, "-m", "hfft.cli", "push", str(run), "alice/reviews", "--private"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"{fake_hub.url}/alice/reviews"
    created = fake_hub.created
    assert (created["name"], created.get("organization")) == ("reviews", "alice")
    assert created.get("visibility") == "private" or created.get("private") is True
    assert set(fake_hub.files) == set(files_to_upload(run))
    for name, content in fake_hub.files.items():
        assert content == (run / name).read_bytes(), name
    meta, _ = split_card(fake_hub.files["README.md"].decode())
    assert meta["model-index"][0]["name"] == "alice/reviews"
    assert fake_hub.token_seen_only_in_auth_headers(TOKEN)
    assert TOKEN not in done.stdout + done.stderr


def test_the_token_from_hf_auth_login_reaches_the_hub(image_run, tmp_path, fake_hub):
    hf_home = tmp_path / "hf"
    hf_home.mkdir()
    (hf_home / "token").write_text(TOKEN)  # where `hf auth login` writes it
    run = Path(shutil.copytree(image_run, tmp_path / "colours"))
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_TOKEN_PATH", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_HOME=str(hf_home), HF_ENDPOINT=fake_hub.url, HF_HUB_OFFLINE="0", HF_HUB_DISABLE_TELEMETRY="1")
    done = subprocess.run([sys.executable, "-m", "hfft.cli", "push", str(run), "alice/colours"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert fake_hub.files and fake_hub.token_seen_only_in_auth_headers(TOKEN)


def test_hfft_push_merged_command(adapter_run, tmp_path, fake_hub, monkeypatch, capsys):
    from huggingface_hub import constants

    run = Path(shutil.copytree(adapter_run, tmp_path / "reviews", ignore=shutil.ignore_patterns("merged")))
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["push", str(run), "alice/reviews-merged", "--merged"]) == 0
    assert capsys.readouterr().out.strip() == f"{fake_hub.url}/alice/reviews-merged"
    assert {"model.safetensors", "config.json", "tokenizer.json", "metrics.json", "README.md"} <= set(fake_hub.files)
    assert not set(fake_hub.files) & {"adapter_config.json", "adapter_model.safetensors"}
    assert fake_hub.files["model.safetensors"] == (run / "merged" / "model.safetensors").read_bytes()
    meta, body = split_card(fake_hub.files["README.md"].decode())
    assert meta["library_name"] == "transformers" and 'model="alice/reviews-merged"' in body


def test_the_token_reaches_the_hub_and_nothing_else(tmp_path, tiny_bert, text_csv, fake_hub, monkeypatch, caplog,
                                                    capfd):
    import logging

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    caplog.set_level(logging.DEBUG)
    result = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "run"), freeze_epochs=1, epochs=1,
                       batch_size=16, eval_strategy="no", save_strategy="epoch", lora=True, push_to_hub="bob/run",
                       hub_token=TOKEN)
    run = Path(result.output_dir)
    assert fake_hub.files and fake_hub.token_seen_only_in_auth_headers(TOKEN)
    assert (run / "checkpoints").is_dir()
    for path in run.rglob("*"):  # model card, hfft.yaml, checkpoints' pickled TrainingArguments, everything
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in caplog.text and TOKEN not in "".join(capfd.readouterr())
    assert "hub_token" not in yaml.safe_load((run / "hfft.yaml").read_text())["train"]["args"]
    assert TOKEN not in json.dumps(result.config.to_dict())
    args = torch_load_args(next(run.rglob("training_args.bin")))
    assert args.hub_token is None and not args.push_to_hub
    assert yaml.safe_load((run / "hfft.yaml").read_text())["hub"] == {
        "push_to_hub": True, "repo_id": "bob/run", "private": False, "license": None, "push_merged": False}


def torch_load_args(path):
    import torch

    return torch.load(path, weights_only=False)


def test_recipe_flag_asks_for_a_push(monkeypatch, tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("finetune_recipe", ROOT / "recipes" / "finetune.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    seen = {}

    def fake_run(config):
        seen["hub"] = config.hub
        raise HfftError("stop here")

    monkeypatch.setattr(recipe, "run", fake_run)
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  epochs: 1\n")
    assert recipe.main(["--config", str(config), "--push-to-hub", "alice/pets"]) == 2
    assert (seen["hub"].push_to_hub, seen["hub"].repo_id) == (True, "alice/pets")


def test_trainer_pushes_are_refused_in_favour_of_hfft_push():
    from hfft.api import build_config

    with pytest.raises(HfftError, match="hub.push_to_hub"):
        build_config(config={"train": {"args": {"push_to_hub": True}}})
    assert build_config(push_to_hub=True).hub.push_to_hub
