"""The shipped `configs/accelerate/*.yaml` files load with accelerate's own config classes and launcher.

The CPU 2-process file is also launched for real on a tiny model in tests/test_multiprocess.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
# file -> (distributed_type, mixed_precision, use_cpu, launcher flag that accelerate launch turns on)
EXPECTED = {
    "ddp": (DistributedType.MULTI_GPU, "bf16", False, "multi_gpu"),
    "fsdp": (DistributedType.FSDP, "bf16", False, "use_fsdp"),
    "deepspeed_zero2": (DistributedType.DEEPSPEED, "bf16", False, "use_deepspeed"),
    # MULTI_GPU on purpose: only the multi-GPU launcher starts N processes (MULTI_CPU would start one)
    "cpu_2proc": (DistributedType.MULTI_GPU, "no", True, "multi_gpu"),
}


def launch_args(name: str):
    """What `accelerate launch --config_file <name>.yaml script.py` resolves its arguments to."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / f"{name}.yaml"), "script.py"])
    return _validate_launch_command(args)[0]


def test_every_shipped_file_is_checked():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerate(name):
    kind, precision, use_cpu, flag = EXPECTED[name]
    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type == kind
    assert cfg.num_processes == 2 and cfg.num_machines == 1
    assert cfg.mixed_precision == precision and cfg.use_cpu is use_cpu
    args = launch_args(name)
    assert getattr(args, flag) is True and args.num_processes == 2
    others = {"multi_gpu", "use_fsdp", "use_deepspeed"} - {flag}
    assert not any(getattr(args, f) for f in others)
    assert not args.cpu  # `--cpu` would make accelerate launch one process only


def test_fsdp_wraps_bert_layers(tiny_models):
    """The wrap class exists in BERT-style encoders, and accelerate's FSDP plugin parses the file."""
    import os
    from unittest import mock

    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env
    from transformers import AutoModel

    cfg = load_config_from_file(str(CONFIGS / "fsdp.yaml")).fsdp_config
    assert cfg["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    layer = cfg["fsdp_transformer_layer_cls_to_wrap"]
    classes = {type(m).__name__ for m in AutoModel.from_pretrained(tiny_models["bert"]).modules()}
    assert layer == "BertLayer" and layer in classes

    env = prepare_multi_gpu_env(launch_args("fsdp"))
    with mock.patch.dict(os.environ, {k: v for k, v in env.items() if k.startswith("FSDP_")}):
        plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.transformer_cls_names_to_wrap == ["BertLayer"]
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"


def test_deepspeed_zero2_fields():
    cfg = load_config_from_file(str(CONFIGS / "deepspeed_zero2.yaml")).deepspeed_config
    assert cfg["zero_stage"] == 2
    assert cfg["offload_optimizer_device"] == cfg["offload_param_device"] == "none"
    assert cfg["gradient_clipping"] == 1.0 and cfg["gradient_accumulation_steps"] == 1
    assert launch_args("deepspeed_zero2").zero_stage == 2


def test_files_document_their_command():
    for path in CONFIGS.glob("*.yaml"):
        head = path.read_text().splitlines()[:6]
        assert any("accelerate launch --config_file configs/accelerate/" in line for line in head), path
