"""Models, by name: ``MODELS[name]`` builds an HF causal LM for a task from its config.

The YAML options in ``conf/model/`` are presets: ``toy`` and ``gpt2_small_scratch`` are both ``name: gpt2``
at different sizes; ``hf`` loads a model folder or hub id.
"""

from rlcircuits.registry import Registry

MODELS = Registry("model")

from rlcircuits.models import gpt2, hf  # noqa: E402,F401  (registers)

MODELS.store_schemas()  # each conf/model/ preset extends schema/model/<its model>: every field overridable
