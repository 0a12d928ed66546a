"""Layer groups of tiny models of every supported family: a partition, embeddings first, balanced contiguous body
groups ordered by depth, the classification head last; plus the generic fallback, norm layers and the table."""

import re
from dataclasses import dataclass, replace

import pytest
import torch
import transformers as tf
from torch import nn

from hfft import layers
from hfft.errors import HfftError
from hfft.layers import format_groups, layer_groups, norm_kind, norm_param_names

TEXT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, vocab_size=100)
LLM = dict(TEXT, num_key_value_heads=1, pad_token_id=0)
VIT = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=32,
           patch_size=8, num_labels=3)
STAGES = dict(depths=[2, 1, 3, 1], num_labels=3)  # 7 blocks in 4 stages: whole stages cannot balance


@dataclass
class Family:
    """A tiny model and what its groups must look like, written from the architecture, not from hfft's code."""

    build: object  # () -> model
    embedding: str  # a parameter that must be in the embeddings group
    head: set  # exactly the parameters of the head group
    block: str  # regex whose groups number a parameter's body block (tuples sort in depth order)
    tail: str | None = None  # a parameter after the last block that belongs to the last body group


def _text(config):
    return lambda: tf.AutoModelForSequenceClassification.from_config(config)


def _image(config, cls=tf.AutoModelForImageClassification):
    return lambda: cls.from_config(config) if hasattr(cls, "from_config") else cls(config)


LINEAR = {"classifier.weight", "classifier.bias"}
TWO_LAYER = {f"classifier.{m}.{p}" for m in ("dense", "out_proj") for p in ("weight", "bias")}
FAMILIES = {
    "bert": Family(_text(tf.BertConfig(**TEXT)), "bert.embeddings.word_embeddings.weight", LINEAR,
                   r"bert\.encoder\.layer\.(\d+)\.", tail="bert.pooler.dense.weight"),
    "roberta": Family(_text(tf.RobertaConfig(**TEXT)), "roberta.embeddings.word_embeddings.weight", TWO_LAYER,
                      r"roberta\.encoder\.layer\.(\d+)\."),
    "xlm-roberta": Family(_text(tf.XLMRobertaConfig(**TEXT)), "roberta.embeddings.word_embeddings.weight",
                          TWO_LAYER, r"roberta\.encoder\.layer\.(\d+)\."),
    "electra": Family(_text(tf.ElectraConfig(**TEXT, embedding_size=16)), "electra.embeddings_project.weight",
                      TWO_LAYER, r"electra\.encoder\.layer\.(\d+)\."),
    "distilbert": Family(_text(tf.DistilBertConfig(dim=32, n_layers=4, n_heads=2, hidden_dim=37, vocab_size=100)),
                         "distilbert.embeddings.word_embeddings.weight", LINEAR,
                         r"distilbert\.transformer\.layer\.(\d+)\.", tail="pre_classifier.weight"),
    "vit": Family(_image(tf.ViTConfig(**VIT)), "vit.embeddings.patch_embeddings.projection.weight", LINEAR,
                  r"vit\.(?:encoder\.)?layers?\.(\d+)\.", tail="vit.layernorm.weight"),
    "deit": Family(_image(tf.DeiTConfig(**VIT), tf.DeiTForImageClassification), "deit.embeddings.cls_token",
                   LINEAR, r"deit\.(?:encoder\.)?layers?\.(\d+)\.", tail="deit.layernorm.weight"),
    "dinov2": Family(_image(tf.Dinov2Config(**{k: v for k, v in VIT.items() if k != "intermediate_size"})),
                     "dinov2.embeddings.patch_embeddings.projection.weight", LINEAR,
                     r"dinov2\.encoder\.layer\.(\d+)\.", tail="dinov2.layernorm.weight"),
    "convnext": Family(_image(tf.ConvNextConfig(hidden_sizes=[8, 16, 24, 32], **STAGES)),
                       "convnext.embeddings.patch_embeddings.weight", LINEAR,
                       r"convnext\.encoder\.stages\.(\d+)\.layers\.(\d+)\.", tail="convnext.layernorm.weight"),
    "convnextv2": Family(_image(tf.ConvNextV2Config(hidden_sizes=[8, 16, 24, 32], **STAGES)),
                         "convnextv2.embeddings.patch_embeddings.weight", LINEAR,
                         r"convnextv2\.encoder\.stages\.(\d+)\.layers\.(\d+)\.", tail="convnextv2.layernorm.weight"),
    "resnet": Family(_image(tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], **STAGES)),
                     "resnet.embedder.embedder.convolution.weight", {"classifier.1.weight", "classifier.1.bias"},
                     r"resnet\.encoder\.stages\.(\d+)\.layers\.(\d+)\."),
    "efficientnet": Family(_image(tf.EfficientNetConfig(width_coefficient=0.25, depth_coefficient=0.3, image_size=32,
                                                        hidden_dim=64, num_labels=3)),
                           "efficientnet.embeddings.convolution.weight", LINEAR,
                           r"efficientnet\.encoder\.blocks\.(\d+)\.", tail="efficientnet.encoder.top_conv.weight"),
    "swin": Family(_image(tf.SwinConfig(embed_dim=8, num_heads=[1, 1, 1, 1], image_size=32, patch_size=4,
                                        window_size=2, **STAGES)),
                   "swin.embeddings.patch_embeddings.projection.weight", LINEAR,
                   r"swin\.encoder\.layers\.(\d+)\.blocks\.(\d+)\.", tail="swin.layernorm.weight"),
    "llama": Family(_text(tf.LlamaConfig(**LLM)), "model.embed_tokens.weight", {"score.weight"},
                    r"model\.layers\.(\d+)\.", tail="model.norm.weight"),
    "qwen2": Family(_text(tf.Qwen2Config(**LLM)), "model.embed_tokens.weight", {"score.weight"},
                    r"model\.layers\.(\d+)\.", tail="model.norm.weight"),
    "qwen3": Family(_text(tf.Qwen3Config(**LLM, head_dim=16)), "model.embed_tokens.weight", {"score.weight"},
                    r"model\.layers\.(\d+)\.", tail="model.norm.weight"),
    "mistral": Family(_text(tf.MistralConfig(**LLM)), "model.embed_tokens.weight", {"score.weight"},
                      r"model\.layers\.(\d+)\.", tail="model.norm.weight"),
    # No matcher: the generic fallback.
    "gpt2": Family(_text(tf.GPT2Config(n_embd=32, n_layer=4, n_head=2, vocab_size=100, pad_token_id=0)),
                   "transformer.wpe.weight", {"score.weight"}, r"transformer\.h\.(\d+)\.",
                   tail="transformer.ln_f.weight"),
}


@pytest.fixture(scope="module")
def models():
    """One tiny model per family, built once (building is what takes time)."""
    torch.manual_seed(0)
    return {name: family.build() for name, family in FAMILIES.items()}


def check_groups(model, groups, family: Family, n_body_groups: int, extra_head=frozenset()):
    """Assert every promise of layer_groups for one model; returns the body groups' block keys."""
    names = [name for name, _ in model.named_parameters()]
    grouped = [name for group in groups for name in group.param_names]
    assert sorted(grouped) == sorted(names), "every parameter in exactly one group"
    for group in groups:
        assert group.param_names, f"empty group {group.name}"
        assert group.param_names == [n for n in names if n in set(group.param_names)], "registration order"

    assert groups[0].name == "embeddings" and family.embedding in groups[0].param_names
    assert groups[-1].name == "head" and set(groups[-1].param_names) == family.head | set(extra_head)

    body = groups[1:-1]
    block_of = {n: tuple(map(int, m.groups())) for n in names if (m := re.search(family.block, n))}
    n_blocks = len(set(block_of.values()))
    assert len(body) == min(n_body_groups, n_blocks)
    assert not any(n in block_of for n in groups[0].param_names + groups[-1].param_names)
    keys = [sorted({block_of[n] for n in g.param_names if n in block_of}) for g in body]
    flat = [k for group_keys in keys for k in group_keys]
    assert flat == sorted(set(block_of.values())), "whole blocks, contiguous, ordered by depth"
    sizes = [len(k) for k in keys]
    assert max(sizes) - min(sizes) <= 1, f"unbalanced body groups {sizes}"
    if family.tail:
        assert family.tail in body[-1].param_names
    return keys


@pytest.mark.parametrize("name", list(FAMILIES))
def test_groups_of_every_family(models, name):
    model = models[name]
    check_groups(model, layer_groups(model), FAMILIES[name], 3)


@pytest.mark.parametrize("n_body_groups", [1, 2, 4, 10])
def test_n_body_groups_is_respected(n_body_groups):
    model = tf.AutoModelForSequenceClassification.from_config(tf.BertConfig(**{**TEXT, "num_hidden_layers": 6}))
    groups = layer_groups(model, n_body_groups=n_body_groups)
    keys = check_groups(model, groups, FAMILIES["bert"], n_body_groups)
    assert len(keys) == min(n_body_groups, 6)


def test_n_body_groups_must_be_positive(models):
    with pytest.raises(HfftError):
        layer_groups(models["bert"], n_body_groups=0)


def test_groups_are_named_by_the_blocks_they_hold(models):
    names = [g.name for g in layer_groups(models["bert"], n_body_groups=2)]
    assert names == ["embeddings", "blocks.0-1", "blocks.2-3", "head"]


def test_generic_fallback_matches_the_matcher_on_bert(models, monkeypatch):
    model = models["bert"]
    with_matcher = layer_groups(model)
    monkeypatch.delitem(layers._MATCHERS, "bert")
    fallback = layer_groups(model)
    check_groups(model, fallback, FAMILIES["bert"], 3)
    assert fallback == with_matcher


def test_generic_fallback_puts_everything_outside_the_base_model_in_head(models, monkeypatch):
    monkeypatch.delitem(layers._MATCHERS, "distilbert")
    model = models["distilbert"]
    pre = {"pre_classifier.weight", "pre_classifier.bias"}
    check_groups(model, layer_groups(model), replace(FAMILIES["distilbert"], tail=None), 3, extra_head=pre)


def test_generic_fallback_on_plain_torch_modules():
    seq = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2))
    groups = layer_groups(seq, n_body_groups=2)
    assert [sorted(g.param_names) for g in groups] == [["0.bias", "0.weight", "2.bias", "2.weight"],
                                                       ["3.bias", "3.weight", "4.bias", "4.weight"]]
    lone = nn.Linear(3, 2)  # no list of blocks at all: parameters in registration order
    assert [g.param_names for g in layer_groups(lone)] == [["weight"], ["bias"]]


def test_new_params_join_the_head(models):
    model = models["distilbert"]
    without = layer_groups(model)
    assert "pre_classifier.weight" not in without[-1].param_names  # pretrained in fine-tuned checkpoints
    pre = {"pre_classifier.weight", "pre_classifier.bias"}
    with_new = layer_groups(model, new_param_names=pre)
    check_groups(model, with_new, replace(FAMILIES["distilbert"], tail=None), 3, extra_head=pre)
    assert layer_groups(model, new_param_names=["pre_classifier"]) == with_new, "a module prefix works too"


def test_a_new_pooler_joins_the_head(models):
    model = models["bert"]
    pooler = {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    head = layer_groups(model, new_param_names=pooler | LINEAR)[-1]
    assert set(head.param_names) == pooler | LINEAR


def test_new_param_names_are_checked(models):
    model = models["resnet"]
    buffers = [name for name, _ in model.named_buffers() if name.startswith("classifier") or "running_mean" in name]
    layer_groups(model, new_param_names=buffers[:1])  # missing keys may name buffers: allowed
    with pytest.raises(HfftError, match="classifer"):
        layer_groups(model, new_param_names=["classifer.1.weight"])


def test_works_on_the_meta_device():
    with torch.device("meta"):
        model = tf.AutoModelForSequenceClassification.from_config(tf.BertConfig(**TEXT))
    check_groups(model, layer_groups(model), FAMILIES["bert"], 3)


def test_works_through_a_peft_wrapper():
    peft = pytest.importorskip("peft")
    model = tf.AutoModelForSequenceClassification.from_config(tf.BertConfig(**TEXT))
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["query", "value", "pooler.dense"],
                                                          modules_to_save=["classifier"]))
    groups = layer_groups(wrapped)
    names = [n for n, _ in wrapped.named_parameters()]
    assert sorted(n for g in groups for n in g.param_names) == sorted(names)
    assert groups[0].name == "embeddings" and groups[-1].name == "head"
    assert {n for n in names if "classifier" in n} == set(groups[-1].param_names)
    lora_3 = [n for n in names if "layer.3." in n and "lora_" in n]
    assert lora_3 and set(lora_3) <= set(groups[-2].param_names)
    pooler = ["bert.pooler.dense.weight", "bert.pooler.dense.bias"]  # names from loading the unwrapped model
    head = layer_groups(wrapped, new_param_names=pooler + sorted(LINEAR))[-1].param_names
    pooler_base = {n for n in names if "pooler.dense.base_layer." in n}  # peft renamed the wrapped weights
    assert len(pooler_base) == 2 and {n for n in names if "classifier" in n} | pooler_base == set(head)


@pytest.mark.parametrize("name, norm_class", [
    ("bert", "LayerNorm"), ("vit", "LayerNorm"), ("llama", "LlamaRMSNorm"), ("qwen3", "Qwen3RMSNorm"),
    ("convnext", "ConvNextLayerNorm|LayerNorm"), ("resnet", "BatchNorm2d"), ("efficientnet", "BatchNorm2d"),
])
def test_norm_param_names(models, name, norm_class):
    model = models[name]
    modules = dict(model.named_modules())
    expected = {n for n, _ in model.named_parameters()
                if re.fullmatch(norm_class, type(modules[n.rpartition(".")[0]]).__name__)}
    assert expected, f"test model has no {norm_class}"
    assert norm_param_names(model) == expected


def test_norm_param_names_excludes_linear_and_conv(models):
    for model in models.values():
        modules = dict(model.named_modules())
        for name in norm_param_names(model):
            assert not isinstance(modules[name.rpartition(".")[0]], (nn.Linear, nn.Conv2d, nn.Embedding))


@pytest.mark.parametrize("name, kind", [
    ("resnet", "batch"), ("efficientnet", "batch"), ("bert", "layer"), ("vit", "layer"), ("llama", "layer"),
    ("convnext", "layer"), ("swin", "layer"),
])
def test_norm_kind(models, name, kind):
    assert norm_kind(models[name]) == kind


def test_norm_kind_none_without_norm_layers():
    assert norm_kind(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))) == "none"


def test_format_groups_shows_every_group(models):
    model = models["bert"]
    groups = layer_groups(model)
    table = format_groups(groups, model)
    lines = table.splitlines()
    assert len(lines) == len(groups) + 1
    for line, group in zip(lines[1:], groups):
        assert group.name in line.split()
    assert "bert.encoder.layer.0" in lines[2] and "bert.pooler" in lines[-2]
    assert "classifier" in lines[-1] and "66" in lines[-1].split()  # 32 * 2 + 2 head parameters


def test_format_groups_with_learning_rates(models):
    model = models["efficientnet"]
    groups = layer_groups(model)
    lrs = [1e-5 * 2**i for i in range(len(groups))]
    table = format_groups(groups, model, lrs)
    assert "lr" in table.splitlines()[0].split()
    for line, lr in zip(table.splitlines()[1:], lrs):
        assert any(float(cell) == pytest.approx(lr, rel=1e-2) for cell in line.split() if re.match(r"\d.*e", cell))
    with pytest.raises(HfftError):
        format_groups(groups, model, lrs[:-1])


def test_format_groups_counts_are_human_readable():
    model = nn.Sequential(nn.Linear(1000, 1000), nn.Linear(1000, 1200))
    table = format_groups(layer_groups(model), model)
    assert "1.0M" in table and "1.2M" in table
