"""Tasks, by name: ``TASKS[name]`` builds a :class:`~rlcircuits.tasks.base.Task` from its config."""

from rlcircuits.registry import Registry

TASKS = Registry("task")

from rlcircuits.tasks import cards, toy_abc  # noqa: E402,F401  (registers)

TASKS.store_schemas()  # each conf/task/<name>.yaml extends schema/task/<name>: every field overridable
