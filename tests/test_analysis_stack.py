"""Every analysis on a tiny random GPT-2: documented shapes, finite non-constant values, exact identities."""

import numpy as np
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from rlcircuits.analysis import ablation, head_attribution, logit_lens, patching, probe, sae
from rlcircuits.models.hooked import to_hooked
from rlcircuits.models.tokenizer import build_word_tokenizer

torch.set_num_threads(1)  # two shared cores: threads only contend
N_LAYERS, N_HEADS, SEQ = 2, 4, 8


def _model(zero_head: tuple[int, int] | None = None):
    tok = build_word_tokenizer([f"w{i}" for i in range(20)])
    config = GPT2Config(vocab_size=len(tok), n_positions=16, n_embd=32, n_layer=N_LAYERS, n_head=N_HEADS,
                        initializer_range=0.2, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                        pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF initialises biases to 0 and LayerNorm weights to 1: make every term matter
        for name, param in hf.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                param.add_(0.2 * torch.randn_like(param))
    if zero_head is not None:  # zero the rows of c_proj (W_O) that read this head's output
        layer, head = zero_head
        d_head = config.n_embd // N_HEADS
        with torch.no_grad():
            hf.transformer.h[layer].attn.c_proj.weight[head * d_head:(head + 1) * d_head] = 0.0
    return to_hooked(hf, tok)


def _tokens(n: int, low: int, high: int, seed: int) -> torch.Tensor:
    tokens = torch.randint(low, high, (n, SEQ), generator=torch.Generator().manual_seed(seed))  # [n, SEQ]
    tokens[:, 0] = 0  # <bos>
    return tokens


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def splits():
    return {"id": _tokens(160, 4, 24, seed=1), "ood": _tokens(80, 14, 24, seed=2)}


def _finite_nonconstant(x):
    x = np.asarray(x, dtype=float)
    assert np.isfinite(x).all() and x.std() > 0


def _png(path):
    assert path.exists() and path.stat().st_size > 0


# ---------------------------------------------------------------- probes
def test_probe_decodes_linear_label_of_embedding(model, splits, tmp_path):
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))
    value = {s: (model.W_E[t[:, 2]] @ direction).detach().numpy() for s, t in splits.items()}  # [batch]
    labels = {"value": {s: v.astype(np.float64) for s, v in value.items()},
              "sign": {s: (v > np.median(value["id"])).astype(int) for s, v in value.items()}}
    result = probe.train_probes(model, splits, labels, positions=[1, 2, -1])

    assert result["kinds"] == {"value": "regression", "sign": "classification"}
    for name in labels:
        for split in ("id", "ood"):
            for table in ("scores", "controls"):
                assert result[table][name][split].shape == (N_LAYERS + 1, 3)
                assert np.isfinite(result[table][name][split]).all()
            _finite_nonconstant(result["scores"][name][split])
    # token 2's embedding is in the residual stream at layer 0, position 2 (index 1 of positions)
    assert result["scores"]["value"]["id"][0, 1] > 0.95 > 0.5 > result["controls"]["value"]["id"][0, 1] + 0.5
    assert result["scores"]["sign"]["id"][0, 1] > 0.9 > 0.7 > result["controls"]["sign"]["id"][0, 1]
    assert result["scores"]["value"]["ood"][0, 1] > 0.8
    # position 1 never sees token 2 (causal): nothing to decode there
    assert result["scores"]["value"]["id"][:, 0].max() < 0.3
    probe.plot_probes(result, tmp_path / "probes.png")
    _png(tmp_path / "probes.png")


def test_probe_score_is_sklearns_accuracy_and_r2():
    from sklearn.metrics import accuracy_score, r2_score

    rng = np.random.default_rng(0)
    y, pred = rng.normal(size=50), rng.normal(size=50)
    assert probe.score("regression", y, pred) == pytest.approx(r2_score(y, pred))
    const = np.full(5, 2.0)  # sklearn's convention for a constant target: 1 if predicted exactly, else 0
    assert probe.score("regression", const, const) == r2_score(const, const) == 1.0
    assert probe.score("regression", const, const + 0.1) == r2_score(const, const + 0.1) == 0.0
    classes, guess = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
    assert probe.score("classification", classes, guess) == pytest.approx(accuracy_score(classes, guess))
    words = np.array(["a", "b", "a"])
    assert probe.score("classification", words, np.array(["a", "a", "a"])) == pytest.approx(2 / 3)


# ---------------------------------------------------------------- patching
@pytest.fixture(scope="module")
def patch_pair(model):
    clean = _tokens(24, 4, 24, seed=4)
    corrupt = clean.clone()
    corrupt[:, 3] = 4 + (clean[:, 3] - 4 + 7) % 20  # the pair differs at position 3 only
    with torch.no_grad():
        clean_logits, corrupt_logits = model(clean)[:, -1], model(corrupt)[:, -1]  # [batch, d_vocab]
    clean_answers = clean_logits.argmax(-1)
    corrupt_logits[torch.arange(24), clean_answers] = -torch.inf
    return clean, corrupt, clean_answers, corrupt_logits.argmax(-1)


def test_patching_identities(model, patch_pair, tmp_path):
    clean, corrupt, clean_answers, corrupt_answers = patch_pair
    resid = patching.patch_resid(model, clean, corrupt, clean_answers, corrupt_answers)
    values = resid["patched"]
    assert values.shape == (N_LAYERS + 1, SEQ)
    _finite_nonconstant(values)
    assert resid["clean_logit_diff"] > resid["corrupt_logit_diff"]
    assert values[-1, -1] == pytest.approx(1.0, abs=1e-5)  # the final residual stream is the whole answer
    assert values[0, 3] == pytest.approx(1.0, abs=1e-5)  # the only differing token's embedding
    assert np.abs(values[:, :3]).max() <= 1e-5  # identical (causal) prefix: patch changes nothing
    assert np.abs(np.delete(values[0], 3)).max() <= 1e-5  # identical embeddings elsewhere
    with torch.no_grad():
        unpatched = patching.normalised_logit_diff(model(corrupt), clean_answers, corrupt_answers,
                                                   resid["clean_logit_diff"], resid["corrupt_logit_diff"])
    assert unpatched.item() == pytest.approx(0.0, abs=1e-6)

    heads_all = patching.patch_heads_all_pos(model, clean, corrupt, clean_answers, corrupt_answers)
    heads_final = patching.patch_heads_final_pos(model, clean, corrupt, clean_answers, corrupt_answers)
    for result in (heads_all, heads_final):
        assert result["patched"].shape == (N_LAYERS, N_HEADS)
        _finite_nonconstant(result["patched"])
    patching.plot_patching({"resid": resid, "heads (all pos)": heads_all, "heads (final pos)": heads_final},
                           tmp_path / "patching.png")
    _png(tmp_path / "patching.png")


def test_patching_rejects_unnormalisable_pair(model, patch_pair):
    clean, _, clean_answers, corrupt_answers = patch_pair
    with pytest.raises(ValueError, match="cannot be normalised"):
        patching.patch_resid(model, clean, clean, clean_answers, corrupt_answers)


def test_patching_a_silent_head_does_nothing(patch_pair):
    clean, corrupt, clean_answers, corrupt_answers = patch_pair
    silent = _model(zero_head=(1, 2))
    result = patching.patch_heads_all_pos(silent, clean, corrupt, clean_answers, corrupt_answers)
    assert result["patched"][1, 2] == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- ablation
def test_head_ablation(splits, tmp_path):
    silent = _model(zero_head=(1, 2))
    with torch.no_grad():
        answers = {s: silent(t)[:, -1].argmax(-1) for s, t in splits.items()}  # the model's own predictions
    accuracy = {s: ablation.argmax_accuracy(a) for s, a in answers.items()}
    for method in ("zero", "mean"):
        result = ablation.head_ablation(silent, splits, accuracy, method=method, reference=splits["id"],
                                        per_position=method == "zero")
        for split in splits:
            assert result["baseline"][split] == 1.0
            assert result["importance"][split].shape == (N_LAYERS, N_HEADS)
            _finite_nonconstant(result["importance"][split])
            _finite_nonconstant(result["logit_change"][split])
            assert result["importance"][split][1, 2] == 0.0 and result["logit_change"][split][1, 2] == 0.0
            assert np.delete(result["logit_change"][split].ravel(), 1 * N_HEADS + 2).min() > 0
        ablation.plot_head_ablation(result, tmp_path / f"ablation_{method}.png")
        _png(tmp_path / f"ablation_{method}.png")


@pytest.mark.parametrize("method", ["zero", "mean"])
def test_head_ablation_equals_one_full_pass_per_head(model, splits, method):
    """Each head ablated from its layer's cached input gives what a full forward pass with that head
    replaced gives: the brute force."""
    with torch.no_grad():
        answers = {s: model(t)[:, -1].argmax(-1) for s, t in splits.items()}
        accuracy = {s: ablation.argmax_accuracy(a) for s, a in answers.items()}
        means = ablation.mean_head_outputs(model, splits["id"])  # per layer [seq, n_heads, d_head]
        expected = {s: np.zeros((N_LAYERS, N_HEADS)) for s in splits}
        for split, toks in splits.items():
            for layer in range(N_LAYERS):
                for head in range(N_HEADS):
                    def knock_out(z, hook, layer=layer, head=head):
                        z = z.clone()
                        z[:, :, head] = 0.0 if method == "zero" else means[layer][: z.shape[1], head]
                        return z
                    logits = model.run_with_hooks(toks, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", knock_out)])
                    expected[split][layer, head] = accuracy[split](logits[:, -1])
            _finite_nonconstant(expected[split])
    result = ablation.head_ablation(model, splits, accuracy, method=method, reference=splits["id"])
    for split in splits:
        np.testing.assert_allclose(result["ablated"][split], expected[split])
        assert result["baseline"][split] == 1.0


def test_mean_ablation_needs_long_enough_reference(model, splits):
    accuracy = {"id": ablation.argmax_accuracy(torch.zeros(160, dtype=torch.long))}
    with pytest.raises(ValueError, match="per_position=False"):
        ablation.head_ablation(model, {"id": splits["id"]}, accuracy, method="mean", reference=splits["id"][:, :4])


def test_top_k_and_jaccard():
    importance = np.array([[0.1, 0.5], [0.3, -0.2]])
    assert ablation.top_k_heads(importance, 2) == {(0, 1), (1, 0)}
    assert ablation.jaccard({(0, 1), (1, 0)}, {(0, 1), (1, 1)}) == pytest.approx(1 / 3)
    assert ablation.jaccard(set(), set()) == 1.0


# ---------------------------------------------------------------- SAE
def test_sae_features(model, splits, tmp_path):
    result = sae.sae_features(model, splits, "blocks.1.hook_resid_post", d_sae=64, steps=150, batch_size=128,
                              lr=3e-3, l1_coefficient=0.3)
    n_rows = {s: t.numel() for s, t in splits.items()}
    for split in splits:
        freq = result["firing_frequency"][split]
        assert freq.shape == result["mean_activation"][split].shape == (64,)
        assert ((freq >= 0) & (freq <= 1)).all()
        _finite_nonconstant(freq)
        _finite_nonconstant(result["mean_activation"][split])
        assert 0 < result["l0"][split] < 64
    assert result["explained_variance"]["id"] > 0.5
    specific, stable = result["id_specific"]["ood"], result["ood_stable"]["ood"]
    assert specific.shape == stable.shape == (64,) and not (specific & stable).any()
    assert result["n_id_specific"]["ood"] == specific.sum()
    assert result["sae"].encode(sae.hook_activations(model, splits["ood"], "blocks.1.hook_resid_post")).shape == (
        n_rows["ood"], 64)
    sae.plot_sae_features(result, tmp_path / "sae.png")
    _png(tmp_path / "sae.png")


def test_classify_features_thresholds():
    freq_id = np.array([0.5, 0.5, 0.5, 0.001, 0.2])
    freq_ood = np.array([0.01, 0.4, 0.9, 0.0, 0.05])
    classes = sae.classify_features(freq_id, freq_ood, active=0.01, specific_ratio=0.1, stable_ratio=0.5)
    assert classes["id_specific"].tolist() == [True, False, False, False, False]
    assert classes["ood_stable"].tolist() == [False, True, True, False, False]


# ---------------------------------------------------------------- logit lens
def test_logit_lens_last_layer_is_the_model(model, splits, tmp_path):
    tokens = splits["id"][:40]
    read_pos = torch.arange(40) % (SEQ - 2) + 2  # a different read position per row
    with torch.no_grad():
        logits = model(tokens)[torch.arange(40), read_pos]  # [batch, d_vocab]
    decoded = logit_lens.layer_logits(model, tokens, read_pos, batch_size=16)
    assert decoded.shape == (N_LAYERS + 1, 40, model.cfg.d_vocab)
    assert (decoded[-1] - logits).abs().max() <= 1e-4

    result = logit_lens.logit_lens(model, tokens, logits.argmax(-1), read_pos, batch_size=16)
    assert result["accuracy"].shape == result["log_prob"].shape == (N_LAYERS + 1,)
    assert result["per_example_log_prob"].shape == (N_LAYERS + 1, 40)
    _finite_nonconstant(result["log_prob"])
    _finite_nonconstant(result["accuracy"])
    assert result["accuracy"][-1] == 1.0
    assert logit_lens.first_decodable_layer(result["accuracy"], 1.0) <= N_LAYERS
    assert logit_lens.first_decodable_layer(np.array([0.1, 0.6, 0.9]), 0.5) == 1
    assert logit_lens.first_decodable_layer(np.array([0.1, 0.2]), 0.5) is None
    logit_lens.plot_logit_lens({"id": result}, tmp_path / "lens.png")
    _png(tmp_path / "lens.png")


# ---------------------------------------------------------------- head attribution
@pytest.mark.parametrize("with_baseline", [True, False])
def test_head_attribution_sums_to_logit_diff(model, splits, tmp_path, with_baseline):
    tokens = splits["id"][:40]
    read_pos = torch.arange(40) % (SEQ - 3) + 3
    targets = torch.arange(40) % 20 + 4
    baselines = (targets + 5 - 4) % 20 + 4 if with_baseline else None
    result = head_attribution.head_attribution(model, tokens, targets, baselines, read_pos, batch_size=16)
    assert result["heads"].shape == (40, N_LAYERS, N_HEADS)
    assert result["mlp"].shape == result["attn_bias"].shape == (40, N_LAYERS)
    for key in ("embed", "pos_embed", "final_bias", "logit_diff"):
        assert result[key].shape == (40,)
    for value in result.values():
        _finite_nonconstant(value)
    total = (result["heads"].sum((1, 2)) + result["mlp"].sum(1) + result["attn_bias"].sum(1) + result["embed"]
             + result["pos_embed"] + result["final_bias"])
    with torch.no_grad():
        final = model(tokens)[torch.arange(40), read_pos]  # [batch, d_vocab]
    expected = final[torch.arange(40), targets] - (0 if baselines is None else final[torch.arange(40), baselines])
    assert np.abs(result["logit_diff"] - expected.numpy()).max() <= 1e-4
    assert np.abs(total - result["logit_diff"]).max() <= 1e-3
    head_attribution.plot_head_attribution({"base": result, "tuned": result}, tmp_path / "dla.png")
    _png(tmp_path / "dla.png")
