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

    # The body's gradients reached AdamW while its learning rate was 0; its moments and step count are forgotten
    # when it unfreezes, so the run ends exactly where freezing by requires_grad (fastai's way) ends.
    by_grad = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "grad"), freeze_epochs=1,
                        epochs=1, freeze_by="grad", **FAST)
    expected = state_of(by_grad.model)
    for name, value in final.items():
        assert torch.equal(value, expected[name]), f"{name}: freeze_by='lr' and 'grad' end differently"


def test_frozen_phase_computes_no_body_gradients(tmp_path, tiny_bert, text_csv):
    seen = {}

    class GradProbe(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            seen.setdefault(state.global_step, {n for n, p in model.named_parameters() if p.grad is not None})

    fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "run"), freeze_epochs=1, epochs=0,
              callbacks=[GradProbe()], **FAST)
    assert seen, "no optimizer step observed"
    for step, names in seen.items():  # the pooler is in the checkpoint: pretrained body, frozen like the rest
        assert names and all(n.startswith("classifier.") for n in names), (step, names)


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


def _one_cycle(pos, pct, start, middle, end):
    def cos(a, b, p):
        return a + (1 + math.cos(math.pi * (1 - p))) * (b - a) / 2

    return cos(start, middle, pos / pct) if pos < pct else cos(middle, end, (pos - pct) / (1 - pct))


def _expected_lr(step, group, n_groups, spe, freeze_epochs, epochs, base_lr=2e-3, lr_mult=100, pct_start=0.3,
                 div=5):
    """fastai's fine_tune, written out independently of hfft.schedule."""
    frozen = freeze_epochs * spe
    if step < frozen:
        top = base_lr if group == n_groups - 1 else base_lr / 10
        return _one_cycle(step / frozen, 0.99, top / 25, top, top / 1e5)
    half = base_lr / 2
    top = (half / lr_mult) * (lr_mult ** (group / (n_groups - 1)))
    return _one_cycle((step - frozen) / (epochs * spe), pct_start, top / div, top, top / 1e5)


def _expected_beta1(step, spe, freeze_epochs, epochs, pct_start=0.3):
    """fastai's moms=(0.95, 0.85, 0.95): Adam's beta1 falls while the learning rate rises, in each phase."""
    frozen = freeze_epochs * spe
    if step < frozen:
        return _one_cycle(step / frozen, 0.99, 0.95, 0.85, 0.95)
    return _one_cycle((step - frozen) / (epochs * spe), pct_start, 0.95, 0.85, 0.95)


class OptimizerProbe(TrainerCallback):
    """Every optimizer param group's beta1 at every step, and the optimizer itself."""

    def __init__(self):
        self.betas, self.optimizer = {}, None

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        self.optimizer = optimizer
        self.betas[state.global_step] = [g["betas"][0] for g in optimizer.param_groups]


@pytest.mark.parametrize("freeze_epochs, epochs, schedule", [
    (1, 2, {}),  # the defaults
    (2, 1, {"base_lr": 1e-2, "lr_mult": 10, "pct_start": 0.5, "div": 10}),
    (0, 2, {"base_lr": 5e-3, "lr_mult": 20, "pct_start": 0.25, "div": 3}),
])
def test_learning_rate_and_beta1_of_every_group_at_every_step_follow_fastai(tmp_path, tiny_bert, text_csv,
                                                                            freeze_epochs, epochs, schedule):
    probe = OptimizerProbe()
    result = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "run"), freeze_epochs=freeze_epochs,
                       epochs=epochs, callbacks=[probe], **schedule, **FAST)
    records = [r for r in read_log(result.output_dir) if "phase" in r]
    names = [g.name for g in result.groups]
    n = len(names)
    assert n >= 4 and names[0] == "embeddings" and names[-1] == "head"
    spe = math.ceil(144 / 16)  # 160 rows, 10% held out
    total = (freeze_epochs + epochs) * spe
    assert [r["step"] for r in records] == list(range(total))
    pct = schedule.get("pct_start", 0.3)
    for r in records:
        for g, name in enumerate(names):
            expected = _expected_lr(r["step"], g, n, spe, freeze_epochs, epochs, **schedule)
            assert r[f"lr/{name}"] == pytest.approx(expected, rel=1e-9), (r["step"], name)
        assert r["phase"] == (1 if r["step"] < freeze_epochs * spe else 2)
    assert sorted(probe.betas) == list(range(total))
    for step, betas in probe.betas.items():
        assert betas == pytest.approx([_expected_beta1(step, spe, freeze_epochs, epochs, pct)] * len(betas),
                                      rel=1e-9), step
    starts = [0, freeze_epochs * spe] if freeze_epochs else [0]
    assert all(probe.betas[s][0] == pytest.approx(0.95) for s in starts)  # each phase starts at 0.95


def test_no_weight_decay_on_norm_and_bias_parameters(tmp_path, tiny_bert, text_csv):
    probe = OptimizerProbe()
    result = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "run"), freeze_epochs=1, epochs=0,
                       weight_decay=0.05, callbacks=[probe], **FAST)
    name_of = {id(p): n for n, p in result.model.named_parameters()}
    norms = norm_param_names(result.model)
    decayed, plain = set(), set()
    for group in probe.optimizer.param_groups:
        names = {name_of[id(p)] for p in group["params"]}
        assert group["weight_decay"] in (0.0, 0.05), group["weight_decay"]
        (decayed if group["weight_decay"] else plain).update(names)
    assert decayed | plain == set(name_of.values()) and not decayed & plain  # every parameter, once
    assert plain == {n for n in name_of.values() if n in norms or n.endswith(".bias")}
    assert any("LayerNorm" in n for n in plain) and "classifier.weight" in decayed
    assert all(result.model.get_parameter(n).ndim == 2 for n in decayed)


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
