"""Analyses, by name: ``ANALYSES[name](cfg, task, checkpoints, out_dir)`` → dict of headline results.

Analyses read checkpoints (``save_pretrained`` folders), never training state; each writes its plots into
``out_dir/plots`` (and any bulky arrays into ``out_dir/analysis/<name>.json``) and returns JSON-ready headline
results that the pipeline merges into ``results.json``. A schema may define ``check_task(task_class)``: the
pipeline calls it before any work, so an analysis that cannot run on the chosen task fails at once.

Every run imports every analysis module (that is how they register), so the modules import TransformerLens,
SAELens, scikit-learn and pandas inside the functions that use them: together they cost ~5 s of start-up
that a toy_kl run never needs.
"""

from rlcircuits.registry import Registry

ANALYSES = Registry("analysis")

from rlcircuits.analysis import ablation, accuracy, kl_optimum, logit_lens, patching, probe, sae  # noqa: E402,F401

ANALYSES.store_schemas()  # each conf/analysis/<name>.yaml extends schema/analysis/<name>: every field overridable
