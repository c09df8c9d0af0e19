"""The cards task's schema: what is in distribution, what each OOD split holds out, and hand sizes.

ID and held-out lists are disjoint by construction: an overlap set in YAML fails here, naming the key.

Why these default ID families: each selects cards by what one token says — a value's parity or size, or
a colour word — so a 4-layer, 128-wide GPT-2 trained from scratch by SFT reaches ≥ 0.9 ID accuracy in
~1–2k steps of batch 128. ``sum_colour`` and ``diff_colour`` also need each value bound to the colour word
before it; the same model stayed near 0.2 on them after ~2k steps, so they are opt-in (as ID families, or
as held-out compositions that ask for that binding).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlcircuits.registry import check
from rlcircuits.tasks.cards.formatting import TEMPLATES
from rlcircuits.tasks.cards.rules import FAMILIES
from rlcircuits.tasks.cards.splits import composition_partners


@dataclass
class CardsConfig:
    name: str = "cards"
    colours: list[str] = field(default_factory=lambda: ["RED", "BLUE", "GREEN"])  # ID colours
    ood_colours: list[str] = field(default_factory=lambda: ["YELLOW", "PURPLE"])  # only in ood_colour
    families: list[str] = field(  # ID rule families (aggregation_selector), see rules.FAMILIES
        default_factory=lambda: ["count_colour", "count_threshold", "sum_parity", "diff_parity"])
    ood_families: list[str] = field(  # new compositions of the ID parts, only in ood_composition
        default_factory=lambda: ["sum_threshold", "count_parity"])
    thresholds: list[int] = field(default_factory=lambda: [3, 5, 7])  # ID k in "cards above k"
    ood_thresholds: list[int] = field(default_factory=lambda: [4, 6])  # only in ood_threshold
    paraphrases: list[str] = field(default_factory=lambda: ["plain", "sum", "total"])  # ID templates
    ood_paraphrases: list[str] = field(default_factory=lambda: ["casual"])  # only in ood_paraphrase
    min_cards: int = 3  # cards per hand, uniform in min_cards..max_cards
    max_cards: int = 4
    max_value: int = 9  # card values are 1..max_value
    big_above: int = 10  # the BIG/SMALL probe label: answer > big_above
    format_reward: float = 0.0  # added to the reward when the completion is one number then <eos>

    def __post_init__(self):
        for key in ("colours", "ood_colours"):
            for c in getattr(self, key):
                check(c.isalpha() and c.isupper(), key, f"{c!r}: a colour is one upper-case word")
            check(len(set(getattr(self, key))) == len(getattr(self, key)), key, "has duplicates")
        check(len(self.colours) >= 2, "colours", "needs at least two ID colours")
        check(not set(self.colours) & set(self.ood_colours), "ood_colours",
              f"{sorted(set(self.colours) & set(self.ood_colours))} are also ID colours")

        for key in ("families", "ood_families"):
            for f in getattr(self, key):
                check(f in FAMILIES, key, f"unknown family {f!r}; valid: {', '.join(FAMILIES)}")
        check(len(self.families) >= 1, "families", "needs at least one ID family")
        check(not set(self.families) & set(self.ood_families), "ood_families",
              f"{sorted(set(self.families) & set(self.ood_families))} are also ID families")

        check(self.min_cards >= 1, "min_cards", f"{self.min_cards} must be ≥ 1")
        check(self.max_cards >= self.min_cards, "max_cards",
              f"{self.max_cards} is below min_cards={self.min_cards}")
        check(self.max_cards <= 8, "max_cards", f"{self.max_cards} > 8 makes prompts too long for CPU runs")
        check(self.max_value >= 2, "max_value", f"{self.max_value} must be ≥ 2")
        for key in ("thresholds", "ood_thresholds"):
            for k in getattr(self, key):
                check(1 <= k < self.max_value, key,
                      f"{k} must be in 1..{self.max_value - 1} so some cards are above it and some not")
        check(not set(self.thresholds) & set(self.ood_thresholds), "ood_thresholds",
              f"{sorted(set(self.thresholds) & set(self.ood_thresholds))} are also ID thresholds")

        for key in ("paraphrases", "ood_paraphrases"):
            for t in getattr(self, key):
                check(t in TEMPLATES, key, f"unknown template {t!r}; valid: {', '.join(TEMPLATES)}")
        check(len(self.paraphrases) >= 1, "paraphrases", "needs at least one ID template")
        check(not set(self.paraphrases) & set(self.ood_paraphrases), "ood_paraphrases",
              f"{sorted(set(self.paraphrases) & set(self.ood_paraphrases))} are also ID templates")
        check(self.format_reward >= 0, "format_reward", f"{self.format_reward} must be ≥ 0")

        # Every OOD split must be non-empty and derivable from an ID test instance.
        kinds = {f.split("_")[1] for f in self.families}
        check(bool(self.ood_colours) and "colour" in kinds, "ood_colours",
              "ood_colour needs held-out colours and an ID family with a colour selector")
        check(bool(self.ood_thresholds) and "threshold" in kinds, "ood_thresholds",
              "ood_threshold needs held-out thresholds and an ID family with a threshold selector")
        check(len(self.ood_paraphrases) >= 1, "ood_paraphrases", "needs at least one held-out template")
        check(len(self.ood_families) >= 1, "ood_families", "needs at least one held-out family")
        for f in self.ood_families:
            check(bool(composition_partners(f, self.families)), "ood_families",
                  f"{f!r} has no ID family one part away with equal-length text to pair it with; "
                  "add one to families (e.g. the same selector with sum or count)")
