"""Which instances each split holds: ID splits by hash, OOD splits as one-factor edits of ID test instances.

``train``, ``val`` and ``test`` share the ID rules and ID templates; a stable hash of (rule, hand) puts each
such pair in exactly one of them, so val and test ask about hands the model never trained on for that rule.
Each OOD split changes one factor of an ID test instance — a colour, the family, the template or the
threshold — into a value the config holds out, so every OOD instance comes with a minimally different ID
twin of the same token length (``Cards.pairs``).
"""

from __future__ import annotations

import random
import zlib

from rlcircuits.tasks.cards.formatting import rule_words
from rlcircuits.tasks.cards.rules import Card, Rule, rules_of

ID_SPLITS = ("train", "val", "test")
OOD_SPLITS = ("ood_colour", "ood_composition", "ood_paraphrase", "ood_threshold")


def bucket(rule: Rule, hand: tuple[Card, ...]) -> str:
    """The ID split of (rule, hand): 10% val, 10% test, 80% train, stable across runs and machines."""
    key = rule.id + "|" + " ".join(f"{c.colour}{c.value}" for c in hand)
    h = zlib.crc32(key.encode()) % 10
    return "val" if h == 0 else "test" if h == 1 else "train"


def rule_length(family: str) -> int:
    """Words in a rule of ``family`` (equal for every rule of it and every template, see formatting)."""
    return len(rule_words(rules_of(family, ["A", "B"], [1])[0], "plain"))


def composition_partners(family: str, id_families: list[str]) -> list[str]:
    """ID families one part away from ``family`` (the same aggregation or the same selector kind) whose
    rule text has the same length, so an ood_composition pair differs in that one part."""
    agg, kind = family.split("_")
    return [
        f for f in id_families
        if (f.split("_")[0] == agg) != (f.split("_")[1] == kind) and rule_length(f) == rule_length(family)
    ]


def recompose(rule: Rule, family: str, rng: random.Random, colours: list[str], thresholds: list[int]) -> Rule:
    """``rule`` moved into ``family``: keep the selection and swap the aggregation when the selector kind
    is shared, else draw a rule of ``family`` (same aggregation, another selection)."""
    agg, kind = family.split("_")
    if kind == rule.plus.kind:
        return Rule(agg, rule.plus, rule.minus)
    return rng.choice(rules_of(family, colours, thresholds))

