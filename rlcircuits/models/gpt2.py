"""A GPT-2 built from a config, sized by the YAML preset, with the task's tokenizer.

transformers' ``GPT2LMHeadModel`` rather than a hand-written transformer, so checkpoints load with
``AutoModelForCausalLM`` alone and convert to TransformerLens.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import GPT2Config, GPT2LMHeadModel
from transformers.activations import ACT2CLS

from rlcircuits.models import MODELS
from rlcircuits.models.softmax import NAME as EXP_SOFTMAX
from rlcircuits.registry import check
from rlcircuits.tasks.base import Task

ATTENTION = ("sdpa", "eager", EXP_SOFTMAX)


@dataclass
class GPT2ModelConfig:
    name: str = "gpt2"
    d_model: int = 3  # residual width
    n_heads: int = 3  # attention heads per layer (d_model must divide evenly)
    n_layers: int = 2
    d_mlp: int = 2  # MLP hidden width
    n_positions: int = 0  # context length; 0 = the task's longest sequence
    activation: str = "gelu_new"  # any name in transformers' ACT2FN
    init_std: float = 0.02  # std of the initial weights (GPT2Config.initializer_range)
    dropout: float = 0.0
    attention: str = "sdpa"  # sdpa | eager | exp_softmax (faster on CPU when attention rows are < 16 keys)

    def __post_init__(self):
        for key in ("d_model", "n_heads", "n_layers", "d_mlp"):
            check(getattr(self, key) >= 1, key, "must be ≥ 1")
        check(self.d_model % self.n_heads == 0, "n_heads",
              f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        check(self.n_positions >= 0, "n_positions", "must be ≥ 0 (0 = sized to the task)")
        check(self.init_std > 0, "init_std", f"{self.init_std} must be > 0")
        check(0 <= self.dropout < 1, "dropout", f"{self.dropout} is not in [0, 1)")
        check(self.attention in ATTENTION, "attention", f"{self.attention!r} is not one of {', '.join(ATTENTION)}")
        check(self.activation in ACT2CLS, "activation", f"{self.activation!r} is not one of {', '.join(sorted(ACT2CLS))}")


@MODELS.register("gpt2", schema=GPT2ModelConfig)
def build_gpt2(cfg: GPT2ModelConfig, task: Task) -> GPT2LMHeadModel:
    tok = task.tokenizer
    n_positions = cfg.n_positions or task.max_length
    check(n_positions >= task.max_length, "model.n_positions",
          f"{n_positions} is shorter than the task's longest sequence ({task.max_length})")
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=n_positions,
        n_embd=cfg.d_model,
        n_layer=cfg.n_layers,
        n_head=cfg.n_heads,
        n_inner=cfg.d_mlp,
        activation_function=cfg.activation,
        initializer_range=cfg.init_std,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        attn_implementation=cfg.attention,
    )
    return GPT2LMHeadModel(config)
