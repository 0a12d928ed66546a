"""Recipe: fine-tune an image or text classifier the fastai way, on one CPU, one GPU or many.

    python recipes/finetune.py --config recipes/configs/minilm_rotten_tomatoes.yaml train.epochs=2
    accelerate launch --config_file accelerate_config.yaml recipes/finetune.py --config recipes/configs/vit.yaml

1. config: the YAML file, then the command line's dotted overrides (train.epochs=2), validated before any work;
2. hfft.run: run folder checked, data loaded (main process first), model loaded with a new head, split into
   layer groups, head trained with the body frozen, then everything with discriminative one-cycle learning rates;
3. evaluation and the run folder (model, processor, hfft.yaml, metrics.json, log.jsonl, plots, model card);
4. with --push-to-hub REPO_ID (or hub.push_to_hub=true), the run folder uploaded to the Hugging Face Hub.
"""

import argparse
import json
import sys

from hfft import HfftError
from hfft.api import run
from hfft.cli import setup_logging
from hfft.config import load_config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML config under recipes/configs/")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the finished run to the Hugging Face Hub")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    setup_logging()

    try:
        overrides = args.overrides + (["train.resume=true"] if args.resume else [])
        overrides += ["hub.push_to_hub=true", f"hub.repo_id={args.push_to_hub}"] if args.push_to_hub else []
        config = load_config(args.config, overrides)
        result = run(config)
    except HfftError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    summary = {k: result.metrics[k] for k in ("accuracy", "f1_macro", "loss", "train_runtime")}
    print(json.dumps(summary), "->", result.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
