"""The shipped accelerate launch configs (configs/accelerate/) through accelerate's own code: ClusterConfig reads
each file (unknown keys and bad enum values are errors there), `accelerate launch`'s argument validation merges
it, its environment preparation turns it into the variables the launched processes see, and the FSDP /
DeepSpeed plugins the Accelerator builds from them take it (their __post_init__ checks the values)."""

import os
from pathlib import Path
from unittest import mock

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
FSDP_BLOCKS = ["DoubleStreamBlock", "SingleStreamBlock", "QwenImageTransformerBlock"]


def launch_args(name):
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "train.py"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    return args, defaults, mixed_precision_from_config


def test_every_config_parses_with_accelerates_cluster_config():
    from accelerate.commands.config.config_args import ClusterConfig

    files = sorted(CONFIGS.glob("*.yaml"))
    assert [f.name for f in files] == ["deepspeed_zero2.yaml", "fsdp_bf16.yaml", "fsdp_fp8_base.yaml"]
    for file in files:
        config = ClusterConfig.from_yaml_file(str(file))
        assert config.mixed_precision == "bf16" and not config.use_cpu


@pytest.mark.parametrize("name", ["fsdp_bf16.yaml", "fsdp_fp8_base.yaml"])
def test_fsdp_configs_give_fsdp2_with_block_wrapping(name):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args, _, _ = launch_args(name)
    assert args.use_fsdp and not args.use_deepspeed
    env = prepare_multi_gpu_env(args)
    with mock.patch.dict(os.environ, env):
        plugin = FullyShardedDataParallelPlugin()
    # FSDP's own activation checkpointing is off: the trainer's option skips blocks it would get wrong
    assert plugin.fsdp_version == 2 and not plugin.activation_checkpointing
    assert plugin.transformer_cls_names_to_wrap == FSDP_BLOCKS
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy"
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_deepspeed_config_gives_zero_stage_2():
    from accelerate.utils import DeepSpeedPlugin
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args, defaults, mixed_precision_from_config = launch_args("deepspeed_zero2.yaml")
    assert args.use_deepspeed
    # what `accelerate launch` sets before its DeepSpeed launcher (accelerate/commands/launch.py)
    fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    with mock.patch.dict(os.environ, env):
        plugin = DeepSpeedPlugin()
    assert plugin.zero_stage == 2
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == 2 and zero["offload_optimizer"]["device"] == "none"
