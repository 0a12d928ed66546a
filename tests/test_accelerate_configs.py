"""The shipped Accelerate configs: each parses as Accelerate reads it and says what hfft's freezing relies on."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [ROOT / "accelerate_config.yaml", *sorted((ROOT / "recipes" / "accelerate").glob("*.yaml"))]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_loads_in_accelerate(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.num_processes >= 2


def test_root_config_is_multi_gpu_ddp_in_bf16():
    config = yaml.safe_load((ROOT / "accelerate_config.yaml").read_text())
    assert config["distributed_type"] == "MULTI_GPU" and config["mixed_precision"] == "bf16"


def test_fsdp_keeps_original_parameters():
    """Mixed frozen/trainable parameters in one FSDP unit need use_orig_params."""
    config = yaml.safe_load((ROOT / "recipes" / "accelerate" / "fsdp.yaml").read_text())
    assert config["fsdp_config"]["fsdp_use_orig_params"] is True


def test_cpu_config_starts_two_real_processes():
    """MULTI_CPU with use_cpu: true silently starts one process; this combination starts two (see ASSETS)."""
    config = yaml.safe_load((ROOT / "recipes" / "accelerate" / "cpu_2proc.yaml").read_text())
    assert (config["distributed_type"], config["num_processes"], config["use_cpu"]) == ("MULTI_GPU", 2, False)


@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_configs(stage):
    config = yaml.safe_load((ROOT / "recipes" / "accelerate" / f"deepspeed_zero{stage}.yaml").read_text())
    assert config["distributed_type"] == "DEEPSPEED" and config["deepspeed_config"]["zero_stage"] == stage
