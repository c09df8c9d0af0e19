"""Analyses, by name: ``ANALYSES[name](cfg, task, checkpoints, out_dir)`` → dict of headline results.

Analyses read checkpoints (``save_pretrained`` folders), never training state; each writes its plots into
``out_dir/plots`` and returns JSON-ready results that the pipeline merges into ``results.json``.
"""

from rlcircuits.registry import Registry

ANALYSES = Registry("analysis")

from rlcircuits.analysis import accuracy, kl_optimum  # noqa: E402,F401  (registers)
