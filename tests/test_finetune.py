"""End-to-end promises of fine_tune on tiny models: what the frozen phase leaves alone, what the unfrozen phase
changes, the learning rate of every group at every step, the head and its labels, and the saved run folder."""

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import checkpoint_tensors, minilm_folder, state_of
from transformers import TrainerCallback

from hfft import HfftError, fine_tune
from hfft.layers import norm_param_names
from hfft.runfolder import read_log

FAST = {"batch_size": 16, "eval_strategy": "no", "save_strategy": "no"}


class SnapshotAtSwitch(TrainerCallback):
    """Copies the parameters as the unfrozen phase begins (global step == the plan's frozen steps)."""

    at_switch = None

    def on_step_begin(self, args, state, control, model=None, lr_scheduler=None, **kwargs):
        if self.at_switch is None and state.global_step == lr_scheduler.plan.frozen_steps:
            self.at_switch = state_of(model)


def test_frozen_phase_keeps_body_then_unfrozen_phase_changes_it(tmp_path, tiny_bert, text_csv):
    snap = SnapshotAtSwitch()
    result = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "run"), freeze_epochs=1, epochs=1,
                       callbacks=[snap], **FAST)
    original = checkpoint_tensors(tiny_bert)  # a BertModel: keys without the "bert." prefix
    body = {n: v for n, v in snap.at_switch.items() if n.startswith("bert.")}
    assert body, "no body parameters found"
    norms = norm_param_names(result.model)
    for name, value in body.items():
        if name not in norms:
            assert torch.equal(value, original[name[len("bert."):]]), f"{name} changed while frozen"
    head = [n for n in snap.at_switch if n.startswith("classifier.")]
    initial = _fresh_head(tiny_bert, ["negative", "positive"])
    assert any(not torch.equal(snap.at_switch[n], initial[n]) for n in head), "head did not train while frozen"
    final = state_of(result.model)
    changed = [n for n in body if not torch.equal(final[n], snap.at_switch[n])]
    assert len(changed) > 0.9 * len(body), f"only {len(changed)}/{len(body)} body tensors changed when unfrozen"
    assert all(p.requires_grad for p in result.model.parameters()), "model left frozen after training"


def _fresh_head(folder, labels):
    """The head as hfft initialises it with the run's seed (fine_tune seeds before loading the model)."""
    from transformers import set_seed

    from hfft.models import load_classifier
    from hfft.tasks import get_task

    set_seed(42)
    model, _ = load_classifier(get_task("text-classification"), folder, labels)
    return state_of(model)


def test_freezing_by_zero_learning_rate(tmp_path, tiny_bert, text_csv):
    """freeze_by='lr' (what DeepSpeed/FSDP get): gradients flow everywhere, yet the body does not move while frozen."""
    snap = SnapshotAtSwitch()
    grads = {}

    class GradProbe(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            grads.setdefault(state.global_step, sum(p.grad is not None for p in model.parameters()))

    result = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "run"), freeze_epochs=1, epochs=1,
                       freeze_by="lr", callbacks=[snap, GradProbe()], **FAST)
    n_params = len(list(result.model.parameters()))
    assert grads[0] == n_params  # nothing was switched off
    original = checkpoint_tensors(tiny_bert)
    for name, value in snap.at_switch.items():
        if name.startswith("bert."):
            assert torch.equal(value, original[name[len("bert."):]]), f"{name} changed while frozen"
    final = state_of(result.model)
    assert sum(not torch.equal(final[n], snap.at_switch[n]) for n in final) > 0.9 * n_params


def test_frozen_phase_computes_no_body_gradients(tmp_path, tiny_bert, text_csv):
    seen = {}

    class GradProbe(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            seen.setdefault(state.global_step, {n for n, p in model.named_parameters() if p.grad is not None})

    fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "run"), freeze_epochs=1, epochs=0,
              callbacks=[GradProbe()], **FAST)
    assert seen, "no optimizer step observed"
    for step, names in seen.items():
        assert names and all(n.startswith("classifier.") or n.startswith("bert.pooler.") for n in names), (step, names)


@pytest.mark.parametrize("train_norm", [False, True])
def test_batchnorm_model_while_frozen(tmp_path, tiny_resnet, image_folder, train_norm):
    """Default: the whole body is frozen, norms included. train_norm=True (fastai's train_bn): norm weights train."""
    result = fine_tune(model=tiny_resnet, data=image_folder, output_dir=str(tmp_path / "run"), freeze_epochs=1,
                       epochs=0, train_norm=train_norm, **FAST)
    original = checkpoint_tensors(tiny_resnet)
    final = state_of(result.model)
    norms = norm_param_names(result.model)
    body = [n for n in final if n.startswith("resnet.")]
    assert all(torch.equal(final[n], original[n]) for n in body if n not in norms)
    norms_changed = any(not torch.equal(final[n], original[n]) for n in body if n in norms)
    assert norms_changed == train_norm
    assert final["classifier.1.weight"].shape[0] == 2  # 3 ImageNet-style labels replaced by red/blue
    # Running statistics follow the new data at PyTorch's momentum, whatever the checkpoint's config said.
    bn = [m for m in result.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bn and all(m.momentum == 0.1 for m in bn)
    stats = {n: b for n, b in result.model.named_buffers() if n.endswith("running_mean")}
    assert any(not torch.equal(b, original[n]) for n, b in stats.items()), "running statistics did not update"


def _expected_lr(step, group, n_groups, spe, freeze_epochs, epochs, base_lr=2e-3, lr_mult=100):
    """fastai's fine_tune, written out independently of hfft.schedule."""

    def cos(a, b, pos):
        return a + (1 + math.cos(math.pi * (1 - pos))) * (b - a) / 2

    def one_cycle(pos, top, pct, div):
        return cos(top / div, top, pos / pct) if pos < pct else cos(top, top / 1e5, (pos - pct) / (1 - pct))

    frozen = freeze_epochs * spe
    if step < frozen:
        top = base_lr if group == n_groups - 1 else base_lr / 10
        return one_cycle(step / frozen, top, 0.99, 25)
    half = base_lr / 2
    top = (half / lr_mult) * (lr_mult ** (group / (n_groups - 1)))
    return one_cycle((step - frozen) / (epochs * spe), top, 0.3, 5)


def test_learning_rate_of_every_group_at_every_step_follows_fastai(tmp_path, tiny_bert, text_csv):
    result = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "run"), freeze_epochs=1, epochs=2,
                       **FAST)
    records = [r for r in read_log(result.output_dir) if "phase" in r]
    names = [g.name for g in result.groups]
    n = len(names)
    assert n >= 4 and names[0] == "embeddings" and names[-1] == "head"
    spe = math.ceil(144 / 16)  # 160 rows, 10% held out
    assert [r["step"] for r in records] == list(range(3 * spe))
    for r in records:
        for g, name in enumerate(names):
            expected = _expected_lr(r["step"], g, n, spe, 1, 2)
            assert r[f"lr/{name}"] == pytest.approx(expected, rel=1e-9), (r["step"], name)
        assert r["phase"] == (1 if r["step"] < spe else 2)


def test_head_only_and_full_finetune_modes(tmp_path, tiny_bert, text_csv):
    head_only = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "a"), freeze_epochs=1, epochs=0,
                          **FAST)
    assert [p.name for p in head_only.plan.phases] == ["frozen"]
    full = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "b"), freeze_epochs=0, epochs=1,
                     **FAST)
    assert [p.name for p in full.plan.phases] == ["unfrozen"]
    assert full.plan.frozen_steps == 0


def test_run_folder_and_pipeline_round_trip(tmp_path, text_csv):
    """On the real MiniLM: a pretrained body is what makes three short epochs enough."""
    from transformers import AutoModelForSequenceClassification, pipeline

    result = fine_tune(model=minilm_folder(), data=text_csv, output_dir=str(tmp_path / "run"), freeze_epochs=1,
                       epochs=2, batch_size=16, max_length=32)
    run = Path(result.output_dir)
    for name in ("model.safetensors", "config.json", "tokenizer.json", "hfft.yaml", "metrics.json", "log.jsonl"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".saving*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["per_class"]) == {"negative", "positive"}
    assert metrics["accuracy"] >= 0.8, metrics  # one sentiment word decides the label
    reloaded = AutoModelForSequenceClassification.from_pretrained(run)
    assert reloaded.config.id2label == {0: "negative", 1: "positive"}
    classify = pipeline("text-classification", model=str(run))
    outputs = classify(["the film was great and superb", "the plot was awful and boring"])
    assert {o["label"] for o in outputs} <= {"negative", "positive"}
    assert [o["label"] for o in outputs] == ["positive", "negative"]
    with torch.no_grad():
        batch = classify.tokenizer(["a lovely story"], return_tensors="pt")
        assert torch.equal(result.model.eval()(**batch).logits, reloaded.eval()(**batch).logits)


def test_image_pipeline_returns_user_labels(tmp_path, tiny_vit, image_folder):
    from PIL import Image
    from transformers import pipeline

    result = fine_tune(model=tiny_vit, data=image_folder, output_dir=str(tmp_path / "run"), freeze_epochs=1,
                       epochs=2, batch_size=16, eval_strategy="no")
    classify = pipeline("image-classification", model=result.output_dir)
    out = classify(Image.open(Path(image_folder) / "red" / "1.png"))
    assert {o["label"] for o in out} == {"red", "blue"}


def test_existing_run_folder_is_not_clobbered(tmp_path, tiny_bert, text_csv):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("precious")
    with pytest.raises(HfftError, match="already holds a run"):
        fine_tune(model=tiny_bert, data=text_csv, output_dir=str(run), epochs=0, **FAST)
    assert (run / "notes.txt").read_text() == "precious"


def test_unknown_keyword_names_the_nearest_valid_one(tiny_bert, text_csv):
    with pytest.raises(HfftError, match="freeze_epochs"):
        fine_tune(model=tiny_bert, data=text_csv, output_dir="unused", freeze_epoch=1)
    with pytest.raises(HfftError, match="base_lr"):
        fine_tune(model=tiny_bert, data=text_csv, output_dir="unused", learning_rate=1e-3)
    with pytest.raises(HfftError, match="epochs"):
        fine_tune(model=tiny_bert, data=text_csv, output_dir="unused", epochs=-1)
