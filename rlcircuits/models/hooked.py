"""Convert our GPT-2 checkpoints to TransformerLens ``HookedTransformer``s, so analyses get stable hook names.

Built by hand because ``HookedTransformer.from_pretrained`` only accepts official model names: our models
are small ``GPT2Config``s with a word-level tokenizer built in code. The config is mapped field by field,
weights go through TransformerLens' own ``convert_gpt2_weights``, and LayerNorm is left unfolded
(``fold_ln=False``, no centring) so that logits, activations and weights are exactly HF's (≤ 1e-4).
Consequence for analyses: ``ln_final.w``/``.b`` are separate parameters, not folded into ``W_U``/``b_U``.
"""

from __future__ import annotations

import copy
from pathlib import Path

from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase


def hooked_config(config: GPT2Config, device: str = "cpu") -> HookedTransformerConfig:
    """The ``HookedTransformerConfig`` computing the same function as a HF ``GPT2Config``."""
    if config.scale_attn_by_inverse_layer_idx or config.reorder_and_upcast_attn:
        raise ValueError("GPT2Config.scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn have no "
                         "TransformerLens equivalent; build the model with both False")
    return HookedTransformerConfig(
        d_model=config.n_embd,
        d_head=config.n_embd // config.n_head,
        n_heads=config.n_head,
        d_mlp=config.n_inner or 4 * config.n_embd,
        n_layers=config.n_layer,
        n_ctx=config.n_positions,
        eps=config.layer_norm_epsilon,
        d_vocab=config.vocab_size,
        act_fn=config.activation_function,
        use_attn_scale=config.scale_attn_weights,
        normalization_type="LN",
        original_architecture="GPT2LMHeadModel",
        device=device,
    )


def to_hooked(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase) -> HookedTransformer:
    """A ``HookedTransformer`` with ``model``'s weights (unfolded LayerNorm) and a copy of ``tokenizer``.

    TransformerLens swaps any tokenizer that does not add BOS itself for one reloaded by ``name_or_path``
    with ``add_bos_token=True`` — a hub lookup for a tokenizer built in code. Ours never add BOS (prompts
    carry ``<bos>`` explicitly), so the copy is marked as handling BOS; ``to_tokens`` then prepends it.
    """
    tok = copy.deepcopy(tokenizer)
    tok.init_kwargs["add_bos_token"] = True
    tok.init_kwargs.setdefault("name_or_path", tokenizer.name_or_path)
    cfg = hooked_config(model.config, device=str(model.device))
    hooked = HookedTransformer(cfg, tokenizer=tok)
    hooked.load_and_process_state_dict(
        convert_gpt2_weights(model, cfg), fold_ln=False, center_writing_weights=False, center_unembed=False
    )
    return hooked.eval()


def load_hooked(path: str | Path, device: str = "cpu") -> HookedTransformer:
    """``to_hooked`` of a ``save_pretrained`` checkpoint folder (model + tokenizer)."""
    model = GPT2LMHeadModel.from_pretrained(path).to(device)
    return to_hooked(model, AutoTokenizer.from_pretrained(path))
