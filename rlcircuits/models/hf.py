"""Any causal LM from a folder or the hub, optionally with a LoRA adapter (peft) and 4-/8-bit weights.

``model=hf model.path=<folder or hub id>`` loads with ``AutoModelForCausalLM``; the tokenizer comes from the
same place and must be the task's (a checkpoint saved by this project carries it).
``model.quantization=4bit|8bit`` loads the weights frozen through bitsandbytes (CPU works; layer widths
should be multiples of 64), so it needs an adapter: ``model.lora.r > 0``. The adapter is added when
post-training starts, ``policy = add_lora(base, cfg.lora)``, in place — no copy of the weights: only the
adapter trains, and the reference policy is the same model with the adapter disabled, which trainers are
told by ``reference=None``. ``policy.merge_and_unload()`` then gives a plain model to save.

    python run.py experiment=toy_kl model=hf model.path=outputs/<run>/checkpoints/base model.lora.r=8
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
from transformers.pytorch_utils import Conv1D

from rlcircuits.models import MODELS
from rlcircuits.registry import ConfigError, check
from rlcircuits.tasks.base import Task


@dataclass
class LoraSettings:
    r: int = 0  # adapter rank; 0 = no adapter (every weight trains)
    alpha: float = 16.0  # scaling numerator: the weight update is (alpha / r)·B·A
    dropout: float = 0.0  # dropout on the adapter's input
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])  # module names, or all-linear

    def __post_init__(self):
        check(self.r >= 0, "lora.r", f"{self.r} must be ≥ 0 (0 = no adapter)")
        check(self.alpha > 0, "lora.alpha", f"{self.alpha} must be > 0")
        check(0 <= self.dropout < 1, "lora.dropout", f"{self.dropout} is not in [0, 1)")
        check(len(self.target_modules) >= 1, "lora.target_modules", "name at least one module, or all-linear")


@dataclass
class HFModelConfig:
    name: str = "hf"
    path: str = ""  # a save_pretrained folder, or a hub id (only from the local cache when offline)
    lora: LoraSettings = field(default_factory=LoraSettings)
    quantization: str = "none"  # none | 4bit | 8bit: frozen weights through bitsandbytes

    def __post_init__(self):
        check(self.path != "", "path", "give a model folder or hub id: model.path=<folder or id>")
        check(self.quantization in ("none", "4bit", "8bit"), "quantization",
              f"{self.quantization!r} is not one of none, 4bit, 8bit")
        check(self.quantization == "none" or self.lora.r > 0, "quantization",
              "quantised weights cannot be trained: add an adapter, e.g. model.lora.r=8")


QUANTIZATION = {
    "4bit": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32),
    "8bit": BitsAndBytesConfig(load_in_8bit=True),
}


@MODELS.register("hf", schema=HFModelConfig)
def build_hf(cfg: HFModelConfig, task: Task):
    """Load ``cfg.path``, quantised if asked (the adapter, if any, is added later by ``add_lora``)."""
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, cfg.path)
    if tokenizer.get_vocab() != task.tokenizer.get_vocab():
        raise ConfigError(f"model.path: the tokenizer in {cfg.path!r} is not the task's "
                          f"({len(tokenizer)} vs {len(task.tokenizer)} tokens); tasks own their vocabulary")
    kwargs = {}
    if cfg.quantization != "none":
        kwargs = {"quantization_config": QUANTIZATION[cfg.quantization],
                  "device_map": {"": 0} if torch.cuda.is_available() else "cpu"}
    model = load_pretrained(AutoModelForCausalLM.from_pretrained, cfg.path, **kwargs)
    for module in model.modules():
        # bitsandbytes repacks 4-bit weights for CPU inference at the first no-grad eval forward (sampling),
        # after which training forwards fail ("a view of a leaf Variable … in-place"): keep one layout.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return model


def load_pretrained(load, path: str, **kwargs):
    """``load(path)``, turning "no such folder, and the hub is unreachable" into a ConfigError naming it."""
    local = Path(path).expanduser()
    if path.startswith((".", "/", "~")) and not local.is_dir():
        raise ConfigError(f"model.path: {path!r} is not a folder")
    try:
        return load(str(local) if local.is_dir() else path, **kwargs)
    except OSError as e:
        raise ConfigError(f"model.path: {path!r} is neither a local folder nor loadable from the Hugging Face hub "
                          f"(offline, or not cached? download it first or pass a folder): {str(e).splitlines()[0]}"
                          ) from None


def add_lora(model, lora: LoraSettings):
    """``model`` wrapped, in place, in a fresh LoRA adapter (peft); only the adapter's parameters require grad.

    The adapter starts at zero, so the wrapped model computes what ``model`` did, and with the adapter
    disabled it always will: that is the reference policy.
    """
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if list(lora.target_modules) == ["all-linear"] else list(lora.target_modules)
    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets, task_type="CAUSAL_LM",
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in model.modules()),  # GPT-2 stores weights transposed
    )
    return get_peft_model(model, config)


def is_adapter(model) -> bool:
    """Whether ``model`` is a PEFT model, whose reference policy is itself with the adapter disabled."""
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")
