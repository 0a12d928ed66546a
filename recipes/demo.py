"""`make demo`: hfft's defaults on the embedded real models and real data, offline, in a few minutes on 2 cores.

1. check the EfficientNet-Lite0 conversion against the original weights (logits must match to ~1e-5);
2. fine-tune MiniLM on Rotten Tomatoes and EfficientNet-Lite0 on Fashion-MNIST with the shipped configs;
3. print a results table; each run folder holds the model, metrics.json, training.png and confusion_matrix.png.
"""

import sys
import time
from pathlib import Path

from hfft.api import run
from hfft.cli import setup_logging
from hfft.config import load_config
from hfft.zoo import resolve_model, verify_efficientnet_lite0

CONFIGS = Path(__file__).parent / "configs"
JOBS = [("text: MiniLM-L6 / Rotten Tomatoes", CONFIGS / "minilm_rotten_tomatoes.yaml", "runs/demo/minilm_rotten_tomatoes"),
        ("image: EfficientNet-Lite0 / Fashion-MNIST", CONFIGS / "efficientnet_fashion_mnist.yaml",
         "runs/demo/efficientnet_fashion_mnist")]


def main() -> int:
    setup_logging()
    folder = resolve_model("hfft:efficientnet-lite0")
    print(f"EfficientNet-Lite0 converted to transformers: max |logit difference| vs original = "
          f"{verify_efficientnet_lite0(folder):.2e}")

    rows = []
    for title, config_path, output_dir in JOBS:
        print(f"\n=== {title} ===")
        # The demo owns its run folders, so a second `make demo` replaces them.
        config = load_config(config_path, [f"train.output_dir={output_dir}", "train.overwrite=true"])
        start = time.perf_counter()
        result = run(config)
        rows.append((title, result.metrics, time.perf_counter() - start, result.output_dir))

    print("\n| task | train examples | accuracy | macro F1 | time |\n|---|---|---|---|---|")
    for title, metrics, seconds, _ in rows:
        n = metrics.get("train_examples", "")
        print(f"| {title} | {n} | {metrics['accuracy']:.3f} | {metrics['f1_macro']:.3f} | {seconds:.0f} s |")
    for title, _, _, output_dir in rows:
        print(f"{title}: {output_dir}/ (training.png, confusion_matrix.png, metrics.json)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
