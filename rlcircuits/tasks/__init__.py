"""Tasks, by name: ``TASKS[name]`` builds a :class:`~rlcircuits.tasks.base.Task` from its config."""

from rlcircuits.registry import Registry

TASKS = Registry("task")

from rlcircuits.tasks import toy_abc  # noqa: E402,F401  (registers)
from rlcircuits.tasks import cards  # noqa: E402,F401  (registers)
