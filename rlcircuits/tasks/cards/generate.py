"""Hands, and the labels a circuit analysis wants: ground truth plus every intermediate quantity.

Instances here are structured (rule, template name, hand); ``formatting`` turns them into words.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from rlcircuits.tasks.cards.rules import Card, Rule


@dataclass(frozen=True)
class Instance:
    rule: Rule
    template: str  # a name in formatting.TEMPLATES
    hand: tuple[Card, ...]

    def rename(self, old: str, new: str) -> Instance:
        """The same instance with colour ``old`` replaced by ``new`` in the rule and in the hand."""
        hand = tuple(Card(new if c.colour == old else c.colour, c.value) for c in self.hand)
        return Instance(self.rule.rename(old, new), self.template, hand)


def sample_hand(rng: random.Random, colours: list[str], min_cards: int, max_cards: int,
                max_value: int) -> tuple[Card, ...]:
    """Uniform hand size, then each card's colour and value (1..max_value) uniform and independent."""
    n = rng.randint(min_cards, max_cards)
    return tuple(Card(rng.choice(colours), rng.randint(1, max_value)) for _ in range(n))


def labels(rule: Rule, hand: tuple[Card, ...], colours: list[str], big_above: int) -> dict[str, Any]:
    """Ground truth and intermediates of ``rule`` on ``hand``.

    answer: the rule's value. colour_sums: total value per colour (every colour in ``colours``, 0 when
    absent). signs / selected: per card, how the rule uses it. running: the answer accumulated card by
    card (its last entry is the answer). big: answer > big_above.
    """
    contributions = rule.contributions(hand)
    running, total = [], 0
    for x in contributions:
        total += x
        running.append(total)
    signs = rule.signs(hand)
    return {
        "answer": total,
        "colour_sums": {c: sum(card.value for card in hand if card.colour == c) for c in colours},
        "signs": signs,
        "selected": [s != 0 for s in signs],
        "running": running,
        "big": total > big_above,
    }
