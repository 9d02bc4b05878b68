"""Adapters decide which encoder weights train: all, none, or peft's LoRA/IA3 low-rank/scaling weights.

An adapter is built from config (``adapter: {_component_: hftl.adapters.Lora, r: 8}``) and applied to
an encoder before the optimizer is built; ``kind`` tells the saver which weights to write.
"""

from hftl.adapters.peft_adapters import IA3, Lora, default_target_modules
from hftl.adapters.simple import Adapter, Frozen, FullFinetune

__all__ = ["IA3", "Adapter", "Frozen", "FullFinetune", "Lora", "default_target_modules"]
