"""Atomic writes: results appear whole or not at all, and with the permissions a plain write would give."""

import os
import stat

import matplotlib.pyplot as plt
import pytest
from transformers import GPT2Config, GPT2LMHeadModel

from rlcircuits.io import read_json, save_checkpoint, save_figure, write_json, write_text
from rlcircuits.models.tokenizer import build_word_tokenizer


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_and_folders_get_the_umask_permissions_not_the_temp_files(tmp_path, umask_022):
    assert mode(write_text(tmp_path / "report.md", "hi")) == 0o644
    assert mode(write_json(tmp_path / "results.json", {"a": 1})) == 0o644
    assert mode(save_figure(plt.figure(), tmp_path / "plot.png")) == 0o644
    model = GPT2LMHeadModel(GPT2Config(n_embd=4, n_layer=1, n_head=1, vocab_size=8, n_positions=8))
    assert mode(save_checkpoint(model, build_word_tokenizer(["a"]), tmp_path / "ckpt")) == 0o755
    save_checkpoint(model, build_word_tokenizer(["a"]), tmp_path / "ckpt")  # over the old one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "plot.png", "report.md", "results.json"]


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path):
    path = write_json(tmp_path / "results.json", {"tv": 0.01})
    with pytest.raises(UnicodeEncodeError):
        write_text(path, "half\ud800")  # a lone surrogate: fails inside the write, after the temp file exists
    assert read_json(path) == {"tv": 0.01}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
