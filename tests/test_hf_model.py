"""``model=hf``: load a folder this test saves, with LoRA and 4-/8-bit weights; clear errors for a hub id
offline, a missing folder, a foreign tokenizer, and quantisation without an adapter."""

import huggingface_hub.constants
import pytest
import torch
from omegaconf import OmegaConf
from transformers import GPT2Config, GPT2LMHeadModel

from rlcircuits.io import save_checkpoint
from rlcircuits.models import MODELS
from rlcircuits.models.hf import LoraSettings, add_lora, is_adapter
from rlcircuits.models.tokenizer import build_word_tokenizer
from rlcircuits.registry import ConfigError
from rlcircuits.tasks.base import Example, Task
from rlcircuits.trainers import TRAINERS


class BitsTask(Task):
    """``<bos>`` then four bits; the reward is the number of ``1`` tokens."""

    def __init__(self, words=("0", "1")):
        self.tokenizer = build_word_tokenizer(list(words))
        self.max_new_tokens, self.max_length = 4, 5

    def examples(self, split, n, seed):
        return [Example([self.tokenizer.bos_token_id], []) for _ in range(n)]

    def rewards(self, examples, completions):
        one = self.tokenizer.convert_tokens_to_ids("1")
        return [float(sum(t == one for t in c)) for c in completions]


@pytest.fixture(scope="module")
def task():
    return BitsTask()


@pytest.fixture(scope="module")
def folder(task, tmp_path_factory):
    """A saved GPT-2 whose layer widths are multiples of 64, as 4-bit CPU kernels need."""
    tok = task.tokenizer
    config = GPT2Config(vocab_size=len(tok), n_positions=8, n_embd=64, n_layer=1, n_head=2, n_inner=128,
                        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    return save_checkpoint(GPT2LMHeadModel(config), tok, tmp_path_factory.mktemp("hf") / "model")


def build(task, **node):
    cfg = MODELS.config(OmegaConf.merge({"name": "hf"}, OmegaConf.from_dotlist([f"{k}={v}" for k, v in node.items()])),
                        "model")
    return MODELS.get("hf").fn(cfg, task)


def test_loads_a_saved_folder(task, folder):
    model = build(task, path=str(folder))
    ids = torch.tensor([[task.tokenizer.bos_token_id, 4, 5, 4]])
    reference = GPT2LMHeadModel.from_pretrained(folder)
    assert torch.equal(model(ids).logits, reference(ids).logits)
    assert not is_adapter(model)


def test_lora_wraps_the_model_and_only_the_adapter_trains(task, folder):
    model = add_lora(build(task, path=str(folder)), LoraSettings(r=4))
    assert is_adapter(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert any(".c_fc." in n for n in trainable)  # all-linear reaches GPT-2's Conv1D layers


def test_4bit_lora_policy_trains_on_cpu(task, folder):
    policy = add_lora(build(task, path=str(folder), quantization="4bit", **{"lora.r": 4}), LoraSettings(r=4))
    assert any(type(m).__name__ == "Linear4bit" for m in policy.modules())
    before = {n: p.detach().clone() for n, p in policy.named_parameters() if p.requires_grad}
    cfg = TRAINERS.config(OmegaConf.create({"name": "reinforce", "steps": 3, "batch_size": 1, "num_generations": 8,
                                            "alpha": 0.1, "lr": 1e-2}), "trainer")
    rows = []
    logger = type("Logger", (), {"log": lambda self, m, step, stage: rows.append(m)})()
    TRAINERS.get("reinforce").fn(cfg, policy, None, task, logger, "policy", seed=0)
    assert all(torch.isfinite(torch.tensor(r["train/loss"])) for r in rows)
    assert all(not torch.equal(p, before[n]) for n, p in policy.named_parameters() if p.requires_grad)


def test_8bit_loads_on_cpu(task, folder):
    model = add_lora(build(task, path=str(folder), quantization="8bit", **{"lora.r": 4}), LoraSettings(r=4))
    assert any(type(m).__name__ == "Linear8bitLt" for m in model.modules())
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[task.tokenizer.bos_token_id, 5]])).logits).all()


def test_hub_id_offline_fails_naming_it(task, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=r"^model.path: 'no-such-org/no-such-model' is neither a local folder"):
        build(task, path="no-such-org/no-such-model")


@pytest.mark.parametrize("node,message", [
    ({"path": "./does/not/exist"}, r"^model.path: './does/not/exist' is not a folder"),
    ({"quantization": "4bit"}, r"^model.quantization: quantised weights cannot be trained"),
    ({"quantization": "2bit"}, r"^model.quantization: '2bit' is not one of"),
    ({"lora.r": -1}, r"^model.lora.r: "),
])
def test_bad_model_config_fails_naming_the_key(task, folder, node, message):
    with pytest.raises(ConfigError, match=message):
        build(task, **{"path": str(folder), **node})


def test_foreign_tokenizer_is_refused(folder):
    with pytest.raises(ConfigError, match=r"^model.path: the tokenizer in .* is not the task's"):
        build(BitsTask(words=("0", "1", "2")), path=str(folder))
