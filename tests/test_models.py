"""Head replacement: the checkpoint's body loads bit-identical, everything it lacks is head, labels are written."""

import pytest
import torch
from conftest import checkpoint_tensors

from hfft import HfftError
from hfft.layers import layer_groups
from hfft.models import load_classifier
from hfft.tasks import get_task

TEXT = get_task("text-classification")
IMAGE = get_task("image-classification")


def test_body_is_bit_identical_and_labels_are_written(tiny_bert):
    model, new = load_classifier(TEXT, tiny_bert, ["cat", "dog", "eel"])
    original = checkpoint_tensors(tiny_bert)
    for name, param in model.bert.named_parameters():
        assert torch.equal(param, original[name]), name
    assert new == {"classifier.weight", "classifier.bias"}
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "eel"}
    assert model.config.label2id == {"cat": 0, "dog": 1, "eel": 2}
    assert model.classifier.out_features == 3


def test_every_module_the_checkpoint_lacks_is_head(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    DistilBertModel(DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=37, vocab_size=100)).save_pretrained(
        tmp_path)
    from conftest import minilm_folder
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(tmp_path)
    model, new = load_classifier(TEXT, str(tmp_path), ["a", "b"])
    assert {"pre_classifier.weight", "pre_classifier.bias"} <= new
    head = layer_groups(model, new)[-1]
    assert head.name == "head" and set(head.param_names) == new


def test_a_checkpoint_head_of_other_labels_is_replaced(tiny_resnet):
    original = checkpoint_tensors(tiny_resnet)
    # Same number of labels as the checkpoint's head (3) but different labels: it must not survive silently.
    model, new = load_classifier(IMAGE, tiny_resnet, ["x", "y", "z"])
    assert {"classifier.1.weight", "classifier.1.bias"} <= new
    assert not torch.equal(model.classifier[1].weight, original["classifier.1.weight"])
    body = {n: p for n, p in model.named_parameters() if n.startswith("resnet.")}
    assert body and all(torch.equal(p, original[n]) for n, p in body.items())


def test_a_checkpoint_head_for_the_same_labels_is_kept(tiny_resnet, tmp_path):
    model, _ = load_classifier(IMAGE, tiny_resnet, ["x", "y"])
    model.save_pretrained(tmp_path)
    again, new = load_classifier(IMAGE, str(tmp_path), ["x", "y"])
    assert new == set()
    assert torch.equal(again.classifier[1].weight, model.classifier[1].weight)


def test_missing_model_names_the_way_out():
    with pytest.raises(HfftError, match="HF_HUB_OFFLINE|local folder"):
        load_classifier(TEXT, "no-such-org/no-such-model", ["a", "b"])


def test_model_without_a_head_for_the_task(tmp_path):
    from transformers import ViTConfig, ViTModel

    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=37)).save_pretrained(tmp_path)
    with pytest.raises(HfftError, match="'vit'.*text-classification"):
        load_classifier(TEXT, str(tmp_path), ["a", "b"])
