"""The rule space of the cards game: a selector picks cards, an aggregation turns them into an integer.

A rule is built from two parts — an aggregation (``sum``, ``count``, ``diff``) and a selector kind
(``colour``, ``threshold``, ``parity``) — and its *family* is the pair, e.g. ``sum_colour``. Because rules
are compositions, "a new composition of known parts" (the ``ood_composition`` split) is well defined: a
family whose aggregation and selector kind were each seen in training, but never together.
"""

from __future__ import annotations

from dataclasses import dataclass

AGGREGATIONS = ("sum", "count", "diff")
KINDS = ("colour", "threshold", "parity")
PARITIES = ("even", "odd")
# diff subtracts a second selection of the same kind; "cards above k" has no natural second selection.
FAMILIES = tuple(f"{a}_{k}" for a in AGGREGATIONS for k in KINDS if (a, k) != ("diff", "threshold"))


@dataclass(frozen=True)
class Card:
    colour: str
    value: int


@dataclass(frozen=True)
class Selector:
    """Which cards a rule reads: ``colour`` (arg = colour word), ``threshold`` (arg = k, selects
    value > k) or ``parity`` (arg = "even" / "odd")."""

    kind: str
    arg: str | int

    def __call__(self, card: Card) -> bool:
        if self.kind == "colour":
            return card.colour == self.arg
        if self.kind == "threshold":
            return card.value > self.arg
        return (card.value % 2 == 0) == (self.arg == "even")


@dataclass(frozen=True)
class Rule:
    """``sum``: total of the selected values; ``count``: how many are selected; ``diff``: total of the
    ``plus`` selection minus total of the ``minus`` selection."""

    agg: str
    plus: Selector
    minus: Selector | None = None  # diff only

    @property
    def family(self) -> str:
        return f"{self.agg}_{self.plus.kind}"

    @property
    def id(self) -> str:
        """Stable name, e.g. ``sum_colour:RED``, ``diff_colour:RED-BLUE``, ``count_threshold:5``."""
        args = [self.plus.arg] if self.minus is None else [self.plus.arg, self.minus.arg]
        return f"{self.family}:" + "-".join(map(str, args))

    @property
    def colours(self) -> list[str]:
        return [str(s.arg) for s in (self.plus, self.minus) if s is not None and s.kind == "colour"]

    def signs(self, hand: tuple[Card, ...]) -> list[int]:
        """+1 for a card the rule adds (or counts), -1 for one it subtracts, 0 for one it ignores."""
        return [1 if self.plus(c) else -1 if self.minus is not None and self.minus(c) else 0 for c in hand]

    def contributions(self, hand: tuple[Card, ...]) -> list[int]:
        """What each card adds to the answer; the answer is their sum."""
        return [s if self.agg == "count" else s * c.value for s, c in zip(self.signs(hand), hand)]

    def evaluate(self, hand: tuple[Card, ...]) -> int:
        return sum(self.contributions(hand))

    def rename(self, old: str, new: str) -> Rule:
        """The same rule with colour ``old`` read as ``new``."""

        def swap(s: Selector | None) -> Selector | None:
            return Selector(s.kind, new) if s is not None and s.kind == "colour" and s.arg == old else s

        return Rule(self.agg, swap(self.plus), swap(self.minus))


def rules_of(family: str, colours: list[str], thresholds: list[int]) -> list[Rule]:
    """Every rule of ``family`` over the given colours and thresholds (diff: ordered pairs of distinct
    args)."""
    agg, kind = family.split("_")
    args: list[str | int] = {"colour": list(colours), "threshold": list(thresholds), "parity": list(PARITIES)}[kind]
    if agg == "diff":
        return [Rule(agg, Selector(kind, a), Selector(kind, b)) for a in args for b in args if a != b]
    return [Rule(agg, Selector(kind, a)) for a in args]
