"""Run by tests/test_distributed.py with 2 CPU processes (gloo): what FineTuneTrainer.create_optimizer is given
under FSDP v1 and what it builds from it. transformers delays optimizer creation for FSDP and passes the wrapped
model, whose parameter names carry `_fsdp_wrapped_module.` and whose parameters (use_orig_params) are flat 1-D
shards. Records, per rank, the optimizer's param groups by the unwrapped parameter names.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp_probe.py OUTPUT_DIR
"""

import json
import sys
from pathlib import Path

import torch
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments
from transformers.models.bert.modeling_bert import BertLayer

from hfft.layers import layer_groups, norm_param_names
from hfft.trainer import FineTuneTrainer

if __name__ == "__main__":
    out = Path(sys.argv[1])
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=32))
    groups = layer_groups(model, {"classifier"})
    # Builds the gloo process group (use_cpu under torchrun), as the Trainer does before it wraps the model.
    args = TrainingArguments(output_dir=str(out / "unused"), use_cpu=True, report_to="none", weight_decay=0.01)
    trainer = FineTuneTrainer(model=model, args=args, groups=groups, norm_names=norm_param_names(model),
                              plan_kwargs={}, total_epochs=1)
    name_of = {id(p): n for n, p in model.named_parameters()}
    shapes = {n: list(p.shape) for n, p in model.named_parameters()}
    wrapped = FullyShardedDataParallel(model, use_orig_params=True, auto_wrap_policy=ModuleWrapPolicy({BertLayer}),
                                       device_id=torch.device("cpu"))
    optimizer = trainer.create_optimizer(wrapped)
    for group in optimizer.param_groups:
        group["lr"] = 1e-3
    batch = torch.randint(0, 100, (4, 8), generator=torch.Generator().manual_seed(1))
    loss = wrapped(input_ids=batch, labels=torch.tensor([0, 1, 0, 1])).loss
    loss.backward()
    optimizer.step()
    rank = torch.distributed.get_rank()
    record = {
        "rank": rank, "world_size": torch.distributed.get_world_size(), "loss": loss.item(),
        "wrapped_names": [n for n, _ in wrapped.named_parameters()],
        "shard_ndims": sorted({p.ndim for p in wrapped.parameters()}),
        "shapes": shapes, "layer_groups": [g.param_names for g in groups],
        "param_groups": [{"layer_group": g["layer_group"], "weight_decay": g["weight_decay"],
                          "params": [name_of[id(p)] for p in g["params"]]} for g in optimizer.param_groups],
    }
    (out / f"fsdp_rank{rank}.json").write_text(json.dumps(record))
    # Both ranks done before either tears down: a gloo group left to interpreter exit can abort one process
    # ("terminate called without an active exception"), seen once on a loaded 2-core machine.
    del optimizer, wrapped
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
