"""HF GPT-2 → HookedTransformer conversion: same logits, in memory and from a checkpoint folder."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlcircuits.io import save_checkpoint
from rlcircuits.models.hooked import hooked_config, load_hooked, to_hooked
from rlcircuits.models.tokenizer import build_word_tokenizer

torch.set_num_threads(1)  # two shared cores: threads only contend


@pytest.fixture(scope="module")
def tiny():
    tok = build_word_tokenizer([f"w{i}" for i in range(20)])
    config = GPT2Config(vocab_size=len(tok), n_positions=16, n_embd=32, n_layer=2, n_head=4, initializer_range=0.2,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF initialises biases to 0 and LayerNorm weights to 1: make every term matter
        for name, param in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                param.add_(0.2 * torch.randn_like(param))
    tokens = torch.randint(4, len(tok), (6, 16), generator=torch.Generator().manual_seed(1))
    tokens[:, 0] = tok.bos_token_id
    return model, tok, tokens


def test_logits_match_hf(tiny):
    model, tok, tokens = tiny
    hooked = to_hooked(model, tok)
    with torch.no_grad():
        hf_logits = model(tokens).logits  # [batch, seq, d_vocab]
        assert (hooked(tokens) - hf_logits).abs().max() <= 1e-4
        # causal: a prefix alone gives the same logits as inside the full sequence, in both models
        assert (hooked(tokens[:, :7]) - hf_logits[:, :7]).abs().max() <= 1e-4
        assert (hooked(tokens[:, :7]) - model(tokens[:, :7]).logits).abs().max() <= 1e-4
        assert not torch.allclose(hf_logits[:, 3], hf_logits[:, 4])  # a real model, not a constant


def test_load_hooked_from_checkpoint(tiny, tmp_path):
    model, tok, tokens = tiny
    save_checkpoint(model, tok, tmp_path / "ckpt")
    hooked = load_hooked(tmp_path / "ckpt")
    with torch.no_grad():
        assert (hooked(tokens) - model(tokens).logits).abs().max() <= 1e-4


def test_hooks_tokenizer_and_no_side_effects(tiny):
    model, tok, tokens = tiny
    before = dict(tok.init_kwargs)
    hooked = to_hooked(model, tok)
    assert tok.init_kwargs == before
    _, cache = hooked.run_with_cache(tokens)
    assert cache["blocks.1.attn.hook_z"].shape == (6, 16, 4, 8)
    assert cache["blocks.0.hook_resid_pre"].shape == (6, 16, 32)
    assert hooked.to_tokens("w1 w2").tolist() == [[tok.bos_token_id, *tok.encode("w1 w2")]]


def test_unsupported_config_raises():
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        hooked_config(GPT2Config(n_layer=1, scale_attn_by_inverse_layer_idx=True))
