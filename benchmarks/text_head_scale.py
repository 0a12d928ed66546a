"""Why hfft's frozen phase learns little on all-MiniLM-L6-v2 (benchmarks/RESULTS.md, text): feature scale.

Caches the frozen model's [CLS] and pooler outputs for 1,000 train / 1,000 test Rotten Tomatoes snippets, prints
how much each varies across examples, then trains heads on them with the frozen phase's schedule (AdamW, one-cycle
peaking at 2e-3, pct_start 0.99, batch 32): a linear head on the pooler (what BertForSequenceClassification trains
while the body is frozen) and the pooler's dense layer + the linear head on [CLS].

    python benchmarks/text_head_scale.py        # about a minute on 2 cores
"""

import copy
import csv
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from hfft.schedule import combined_cos  # noqa: E402
from hfft.zoo import SAMPLES_DIR, resolve_model  # noqa: E402

MAX_LENGTH, N, BATCH, LR = 64, 1000, 32, 2e-3


def read(split):
    with open(SAMPLES_DIR / "rotten_tomatoes" / f"{split}.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))[:N]
    names = sorted({r["label"] for r in rows})
    return [r["text"] for r in rows], torch.tensor([names.index(r["label"]) for r in rows])


@torch.no_grad()
def features(model, tokenizer, texts):
    cls, pooled = [], []
    for i in range(0, len(texts), 64):
        batch = tokenizer(texts[i:i + 64], truncation=True, max_length=MAX_LENGTH, padding=True, return_tensors="pt")
        out = model.bert(**batch)
        cls.append(out.last_hidden_state[:, 0])
        pooled.append(out.pooler_output)
    return torch.cat(cls), torch.cat(pooled)


def train(head, x, y, x_test, y_test, epochs):
    optimizer = torch.optim.AdamW(head.parameters(), lr=LR, betas=(0.95, 0.99), eps=1e-5, weight_decay=0.01)
    total, step = epochs * math.ceil(len(x) / BATCH), 0
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), BATCH):
            for group in optimizer.param_groups:
                group["lr"] = combined_cos(step / total, 0.99, LR / 25, LR, LR / 1e5)
            idx = order[i:i + BATCH]
            loss = torch.nn.functional.cross_entropy(head(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    with torch.no_grad():
        return (head(x_test).argmax(-1) == y_test).float().mean().item()


def main():
    torch.manual_seed(0)
    path = resolve_model("hfft:minilm-l6")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).eval()
    (train_texts, y), (test_texts, y_test) = read("train"), read("test")
    (cls, pooled), (cls_test, pooled_test) = features(model, tokenizer, train_texts), features(model, tokenizer,
                                                                                             test_texts)
    for name, f in (("pooler", pooled), ("[CLS]", cls)):
        print(f"{name:7s} std across examples (mean over dims) {f.std(0).mean():.3f}")
    for epochs in (1, 3):
        torch.manual_seed(0)
        linear = train(copy.deepcopy(model.classifier), pooled, y, pooled_test, y_test, epochs)
        torch.manual_seed(0)
        head = torch.nn.Sequential(copy.deepcopy(model.bert.pooler.dense), torch.nn.Tanh(),
                                   copy.deepcopy(model.classifier))
        mlp = train(head, cls, y, cls_test, y_test, epochs)
        print(f"{epochs} epoch(s): linear head on the pooler {linear:.3f}; pooler dense + head on [CLS] {mlp:.3f}")


if __name__ == "__main__":
    main()
