"""The cards game: apply a stated rule to a hand of coloured number cards and answer with an integer.

``rules`` (the rule space), ``generate`` (hands and labels), ``formatting`` (words), ``splits`` (ID and
OOD splits), ``config`` (the schema), ``task`` (the registered Task).
"""

from rlcircuits.tasks.cards.config import CardsConfig
from rlcircuits.tasks.cards.task import Cards

__all__ = ["Cards", "CardsConfig"]
