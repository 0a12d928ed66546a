"""LoRA (peft) runs: target layers per architecture, the head and BatchNorm layers saved whole, the two phases (head
only, then adapters + head with discriminative learning rates and optional LoRA+), base weights never trained,
the adapter reloading to identical logits, the merged model within 1e-5 and loadable by pipeline(), resuming from
an adapter checkpoint, the decoder-LLM classifier, and the ways to ask for LoRA."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from conftest import BAD, FILLER, GOOD, checkpoint_tensors, state_of
from test_layers import FAMILIES
from transformers import TrainerCallback

from hfft import HfftError, fine_tune
from hfft.adapters import batch_norm_modules, head_modules, lora_config, resolve_targets
from hfft.api import build_config
from hfft.config import LoraConfig, load_config
from hfft.inference import load_model
from hfft.runfolder import complete_checkpoints, read_log
from hfft.tasks import get_task

FAST = {"batch_size": 16, "eval_strategy": "no", "save_strategy": "no"}
TEXT = get_task("text-classification")
IMAGE = get_task("image-classification")


# ---- target layers and saved modules, per architecture (tiny models, no training) ----

EXPECTED_TARGETS = {  # what 'auto' adapts, by the last part of the layer's name
    "bert": {"query", "value"}, "roberta": {"query", "value"}, "xlm-roberta": {"query", "value"},
    "electra": {"query", "value"}, "distilbert": {"q_lin", "v_lin"}, "vit": {"q_proj", "v_proj"},
    "deit": {"q_proj", "v_proj"}, "dinov2": {"q_proj", "v_proj"}, "swin": {"q_proj", "v_proj"},
    "convnext": {"pwconv1", "pwconv2"}, "convnextv2": {"pwconv1", "pwconv2"},
    "efficientnet": {"expand_conv", "project_conv", "top_conv"}, "resnet": {"convolution"},
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj"}, "qwen3": {"q_proj", "k_proj", "v_proj", "o_proj"},
}


@pytest.mark.parametrize("family", sorted(set(FAMILIES) & set(EXPECTED_TARGETS)))
def test_auto_targets_and_saved_modules_per_architecture(family):
    peft = pytest.importorskip("peft")
    spec = FAMILIES[family]
    model = spec.build()
    head = {n for n in spec.head}
    config = lora_config(model, LoraConfig(enabled=True), new_param_names=sorted(head))
    saved = set(config.modules_to_save)
    # Every head parameter lies in a saved module, and so does every BatchNorm layer (running statistics).
    assert all(any(p.startswith(f"{m}.") for m in saved) for p in head), (saved, head)
    assert set(batch_norm_modules(model)) <= saved
    wrapped = peft.get_peft_model(model, config)
    adapted = {name.rpartition(".")[2] for name, m in wrapped.named_modules() if hasattr(m, "lora_A") and m.lora_A}
    assert adapted == EXPECTED_TARGETS[family]
    trainable = {n for n, p in wrapped.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or ".modules_to_save." in n for n in trainable)
    assert not any(".lora_" in n and any(f".{m}." in n for m in saved) for n in trainable), "adapter inside the head"


def test_composite_heads_are_saved_whole():
    bert_like = FAMILIES["roberta"].build()  # classifier = dense + out_proj, both new
    assert head_modules(bert_like, ["classifier.dense.weight", "classifier.dense.bias", "classifier.out_proj.weight",
                                    "classifier.out_proj.bias"]) == ["classifier"]
    distil = FAMILIES["distilbert"].build()  # a base DistilBERT: pre_classifier is new too
    new = ["pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"]
    assert head_modules(distil, new) == ["classifier", "pre_classifier"]
    resnet = FAMILIES["resnet"].build()  # classifier = Sequential(Flatten, Linear)
    assert head_modules(resnet, ["classifier.1.weight", "classifier.1.bias"]) == ["classifier"]


def test_all_linear_explicit_lists_and_their_errors():
    roberta = FAMILIES["roberta"].build()
    every = resolve_targets(roberta, "all-linear", exclude=["classifier"])
    assert every and not any(n.startswith("classifier") for n in every)
    assert {n.rpartition(".")[2] for n in every} == {"query", "key", "value", "dense"}
    config = lora_config(roberta, LoraConfig(target_modules="all-linear"), ["classifier.dense.weight"])
    assert "classifier" in config.modules_to_save and "dense" in config.target_modules  # dense != classifier.dense
    assert resolve_targets(roberta, ["attention.self.key"]) == [f"roberta.encoder.layer.{i}.attention.self.key"
                                                                for i in range(4)]
    with pytest.raises(HfftError, match="'querry'.*Did you mean 'query'"):
        resolve_targets(roberta, ["querry"])
    with pytest.raises(HfftError, match="no linear layers outside its head"):
        resolve_targets(FAMILIES["resnet"].build(), "all-linear", exclude=["classifier"])


# ---- ways to ask for LoRA ----


def test_lora_argument_forms_and_validation(tmp_path):
    peft = pytest.importorskip("peft")
    assert build_config(lora=True).lora.enabled
    cfg = build_config(lora={"r": 4, "target_modules": ["query"], "loraplus_lr_ratio": 16})
    assert (cfg.lora.enabled, cfg.lora.r, cfg.lora.target_modules) == (True, 4, ["query"])
    assert cfg.lora.loraplus_lr_ratio == 16
    cfg = build_config(lora=peft.LoraConfig(r=2, lora_alpha=4, target_modules={"value", "query"}, use_rslora=True))
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.target_modules) == (2, 4.0, ["query", "value"])
    assert cfg.lora.peft_args == {"use_rslora": True}
    cfg.save(tmp_path / "hfft.yaml")  # the saved config repeats the run
    assert load_config(tmp_path / "hfft.yaml").lora == cfg.lora
    assert load_config(None, ["lora.enabled=true", "lora.target_modules=[q_proj,v_proj]"]).lora.target_modules == \
        ["q_proj", "v_proj"]
    for kwargs, message in [({"r": 8}, "lora="), ({"lora": {"r": 0}}, "lora.r must be > 0"),
                            ({"lora": {"target_modules": "all_linear"}}, "Did you mean 'all-linear'"),
                            ({"lora": {"peft_args": {"use_rslor": True}}}, "Did you mean 'use_rslora'"),
                            ({"lora": {"peft_args": {"lora_alpha": 3}}}, "use lora.alpha"),
                            ({"lora": {"enabled": False, "merge": True}}, "lora.merge needs lora.enabled")]:
        with pytest.raises(HfftError, match=message):
            build_config(**kwargs)


# ---- a LoRA run end to end (tiny BERT): phases, LoRA+, outputs, reload, merge ----


class Probe(TrainerCallback):
    """Parameters at the switch to phase 2, which parameters ever required grad, and the optimizer's lrs."""

    def __init__(self):
        self.at_switch, self.ever_trainable, self.lrs = None, set(), []

    def on_step_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        self.ever_trainable |= {n for n, p in model.named_parameters() if p.requires_grad}
        if self.at_switch is None and state.global_step == lr_scheduler.plan.frozen_steps:
            self.at_switch = state_of(model)
        self.lrs.append([(g["layer_group"], g.get("lr_scale", 1.0), g["lr"]) for g in optimizer.param_groups])


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_bert, text_csv):
    probe = Probe()
    out = tmp_path_factory.mktemp("lora") / "run"
    result = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(out), freeze_epochs=1, epochs=1,
                       lora={"r": 4, "merge": True, "loraplus_lr_ratio": 16}, callbacks=[probe], **FAST)
    return result, probe


def test_phase_one_trains_the_head_phase_two_the_adapters_base_never(lora_run, tiny_bert):
    result, probe = lora_run
    original = checkpoint_tensors(tiny_bert)
    names = dict(result.model.named_parameters())
    base = {n: p for n, p in names.items() if ".lora_" not in n and "classifier" not in n}
    for name, value in base.items():  # bit-identical to the checkpoint at the end of the run
        plain = name.replace("base_model.model.bert.", "").replace(".base_layer", "")
        assert torch.equal(value, original[plain]), name
    assert not any(p.requires_grad for p in base.values())
    assert probe.ever_trainable == {n for g in result.groups for n in g.param_names}
    lora = [n for n in names if ".lora_" in n]
    head = [n for n in names if ".modules_to_save." in n]
    assert lora and head and set(result.groups[-1].param_names) == set(head)
    # Phase 1 left the adapters at their initialisation (B = 0) and trained the head; phase 2 trained the adapters.
    assert all(not probe.at_switch[n].any() for n in lora if ".lora_B." in n)
    final = state_of(result.model)
    assert all(final[n].any() for n in lora if ".lora_B." in n)
    assert any(not torch.equal(final[n], probe.at_switch[n]) for n in head)


def test_loraplus_and_discriminative_rates(lora_run):
    result, probe = lora_run
    names = [g.name for g in result.groups]
    assert names[-1] == "head" and "embeddings" not in names  # no adapter in the embeddings: no group
    phase2 = probe.lrs[result.plan.frozen_steps + 2]
    plain = {group: lr for group, scale, lr in phase2 if scale == 1.0}
    scaled = [(group, lr) for group, scale, lr in phase2 if scale != 1.0]
    assert scaled and all(lr == pytest.approx(16 * plain[group]) for group, lr in scaled)
    assert [plain[i] for i in range(len(names))] == sorted(plain.values())  # discriminative, increasing
    record = next(r for r in read_log(result.output_dir) if "phase" in r and r["step"] == result.plan.frozen_steps + 2)
    assert record[f"lr/{names[0]}"] == pytest.approx(plain[0])  # the log shows the groups' own rates


def test_run_folder_holds_the_adapter_and_reports_counts(lora_run, tiny_bert):
    result, _ = lora_run
    run = Path(result.output_dir)
    for name in ("adapter_config.json", "adapter_model.safetensors", "config.json", "tokenizer.json", "hfft.yaml",
                 "metrics.json", "README.md", "merged/model.safetensors", "merged/config.json"):
        assert (run / name).is_file(), name
    assert not (run / "model.safetensors").exists()
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(Path(tiny_bert).resolve())
    assert adapter["modules_to_save"] == ["classifier"] and sorted(adapter["target_modules"]) == ["query", "value"]
    metrics = json.loads((run / "metrics.json").read_text())
    params = dict(result.model.named_parameters())
    trained = sum(params[n].numel() for n in params if ".lora_" in n or ".modules_to_save." in n)
    assert metrics["trainable_params"] == trained
    assert metrics["total_params"] == sum(p.numel() for p in checkpoint_tensors(run / "merged").values()) + \
        sum(params[n].numel() for n in params if ".lora_" in n)
    assert (run / "adapter_model.safetensors").stat().st_size < 0.05 * (run / "merged/model.safetensors").stat().st_size
    assert yaml.safe_load((run / "hfft.yaml").read_text())["lora"]["r"] == 4


def test_adapter_reload_is_identical_and_merged_model_matches(lora_run):
    from transformers import AutoTokenizer, pipeline

    result, _ = lora_run
    run = Path(result.output_dir)
    batch = AutoTokenizer.from_pretrained(run)(["the film was great", "an awful boring plot"], return_tensors="pt",
                                              padding=True)
    with torch.no_grad():
        trained = result.model.eval()(**batch).logits
        reloaded = load_model(run, TEXT)(**batch).logits
        merged = load_model(run / "merged", TEXT)(**batch).logits
    assert torch.equal(trained, reloaded)
    assert torch.allclose(trained, merged, atol=1e-5, rtol=0)
    out = pipeline("text-classification", model=str(run / "merged"))(["a lovely story"], top_k=None)[0]
    assert {o["label"] for o in out} == {"negative", "positive"}


def test_making_merged_again_swaps_the_folder_whole(lora_run, tmp_path, monkeypatch):
    """save_merged over an existing merged/: at every rename or removal it makes, merged/ is a complete model."""
    import os

    from hfft import runfolder
    from hfft.adapters import save_merged

    run = Path(shutil.copytree(lora_run[0].output_dir, tmp_path / "run"))
    (run / "merged" / "old.txt").write_text("the previous merge")
    complete = []

    def watch(module, name):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            result = original(*args, **kwargs)
            complete.append(all((run / "merged" / f).is_file() for f in ("config.json", "model.safetensors")))
            return result

        monkeypatch.setattr(module, name, wrapper)

    for module, name in ((os, "replace"), (shutil, "rmtree"), (runfolder, "_exchange")):
        watch(module, name)
    save_merged(run, TEXT)
    monkeypatch.undo()
    assert not (run / "merged" / "old.txt").exists() and runfolder.merged_is_current(run)
    assert complete and all(complete), complete
    assert not [p.name for p in run.iterdir() if p.name.startswith(".merged")]


# ---- resuming from an adapter checkpoint ----


def test_resume_from_an_adapter_checkpoint_matches_an_uninterrupted_run(tmp_path, tiny_bert, text_csv):
    settings = dict(freeze_epochs=1, epochs=1, batch_size=16, eval_strategy="no", save_strategy="epoch",
                    lora={"r": 4})
    whole = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(tmp_path / "whole"), **settings)
    first = complete_checkpoints(tmp_path / "whole")[0]
    assert (first / "adapter_model.safetensors").is_file() and not (first / "model.safetensors").exists()
    run = tmp_path / "died"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copytree(first, run / "checkpoints" / first.name)
    resumed = fine_tune(model=tiny_bert, data=text_csv, output_dir=str(run), resume=True, **settings)
    assert [r["step"] for r in read_log(run) if "phase" in r][0] == int(first.name.split("-")[1])
    expected = state_of(whole.model)
    for name, value in state_of(resumed.model).items():
        assert torch.equal(value, expected[name]), f"{name} differs from the uninterrupted run"


# ---- BatchNorm CNN: running statistics travel with the adapter ----


def test_batchnorm_model_adapter_reloads_identically(tmp_path, tiny_resnet, image_folder):
    from PIL import Image
    from transformers import AutoImageProcessor

    result = fine_tune(model=tiny_resnet, data=image_folder, output_dir=str(tmp_path / "run"), freeze_epochs=1,
                       epochs=1, lora=True, **FAST)
    adapter = json.loads((Path(result.output_dir) / "adapter_config.json").read_text())
    assert "classifier" in adapter["modules_to_save"] and any("normalization" in m for m in adapter["modules_to_save"])
    moved = [m for name, m in result.model.named_modules() if name.endswith("modules_to_save.default")
             and isinstance(m, torch.nn.BatchNorm2d)]
    assert moved and any(not torch.equal(m.running_mean, torch.zeros_like(m.running_mean)) for m in moved)
    images = [Image.open(p).convert("RGB") for p in sorted(Path(image_folder).rglob("*.png"))[:4]]
    pixels = AutoImageProcessor.from_pretrained(result.output_dir)(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert torch.equal(result.model.eval()(pixel_values=pixels).logits,
                           load_model(result.output_dir, IMAGE)(pixel_values=pixels).logits)


# ---- decoder LLM as a sequence classifier ----


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> str:
    """A 2-layer Qwen2 causal LM (no pad token in its config) with a small byte-level BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("tiny_qwen")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([" ".join(GOOD + BAD + FILLER)] * 20, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|endoftext|>").save_pretrained(folder)
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, intermediate_size=64, max_position_embeddings=64)
    assert config.pad_token_id is None
    Qwen2ForCausalLM(config).save_pretrained(folder)
    return str(folder)


def test_decoder_llm_classifier_with_lora(tmp_path, tiny_qwen, text_csv):
    from transformers import AutoTokenizer

    result = fine_tune(model=tiny_qwen, data=text_csv, output_dir=str(tmp_path / "run"), freeze_epochs=1, epochs=1,
                       lora={"merge": True}, **FAST)
    run = Path(result.output_dir)
    adapter = json.loads((run / "adapter_config.json").read_text())
    assert adapter["modules_to_save"] == ["score"]
    assert sorted(adapter["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    config = json.loads((run / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(run)
    assert tokenizer.pad_token_id is not None and config["pad_token_id"] == tokenizer.pad_token_id
    batch = tokenizer(["great", "the film was awful and boring"], return_tensors="pt", padding=True)  # padded
    with torch.no_grad():
        trained = result.model.eval()(**batch).logits
        assert torch.equal(trained, load_model(run, TEXT)(**batch).logits)
        assert torch.allclose(trained, load_model(run / "merged", TEXT)(**batch).logits, atol=1e-5, rtol=0)
