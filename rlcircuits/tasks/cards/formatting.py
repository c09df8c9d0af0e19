"""Word-level text of an instance: ``<bos> Rule: … Cards: RED 3 BLUE 5 … Answer:``.

Every token is a whitespace-separated word (numbers, including negative ones like ``-3``, are single
words), so the tokenizer is a plain word list. Each template phrases every aggregation and selector;
templates are paraphrases of one another with the same number of words in each slot, so swapping the
template (or a rule part of equal length) keeps a prompt's token length — what activation patching
between paired prompts needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlcircuits.models.tokenizer import SPECIAL
from rlcircuits.tasks.cards.generate import Instance
from rlcircuits.tasks.cards.rules import AGGREGATIONS, KINDS, PARITIES, Rule, Selector

RULE, CARDS, ANSWER = "Rule:", "Cards:", "Answer:"


@dataclass(frozen=True)
class Template:
    """Phrases with ``{}`` holes: aggregations take selector phrases, selectors take their arg."""

    name: str
    sum: str
    count: str
    diff: str
    colour: str
    threshold: str
    parity: str


TEMPLATES = {
    t.name: t
    for t in (
        Template("plain", "add the {}", "count the {}", "add the {} and subtract the {}",
                 "{} cards", "cards above {}", "{} cards"),
        Template("sum", "sum the {}", "tally the {}", "sum the {} and deduct the {}",
                 "{} cards", "cards over {}", "{} cards"),
        Template("total", "total the {}", "number of {}", "total the {} then remove the {}",
                 "{} cards", "cards exceeding {}", "{} cards"),
        Template("casual", "add up {}", "how many {}", "add up {} then take away {}",
                 "{} ones", "ones beyond {}", "{} ones"),
    )
}


def rule_words(rule: Rule, template: str) -> list[str]:
    t = TEMPLATES[template]

    def phrase(s: Selector) -> str:
        return getattr(t, s.kind).format(s.arg)

    selections = [rule.plus] if rule.minus is None else [rule.plus, rule.minus]
    return getattr(t, rule.agg).format(*map(phrase, selections)).split()


def prompt_words(inst: Instance) -> tuple[list[str], list[int], list[int]]:
    """(words from ``<bos>`` to ``Answer:``, position of each card's colour word, of its value word)."""
    words = [SPECIAL["bos_token"], RULE, *rule_words(inst.rule, inst.template), CARDS]
    colour_positions, value_positions = [], []
    for card in inst.hand:
        colour_positions.append(len(words))
        value_positions.append(len(words) + 1)
        words += [card.colour, str(card.value)]
    return words + [ANSWER], colour_positions, value_positions


def vocabulary(colours: list[str], max_abs: int) -> list[str]:
    """Every word the task can emit: block headers, template words, colours, parities, and the
    integers -max_abs..max_abs (card values, thresholds and answers all live there)."""
    template_words = []
    for t in TEMPLATES.values():
        for slot in (*AGGREGATIONS, *KINDS):
            template_words += [w for w in getattr(t, slot).split() if w != "{}"]
    numbers = [str(i) for i in range(-max_abs, max_abs + 1)]
    return list(dict.fromkeys([RULE, CARDS, ANSWER, *template_words, *colours, *PARITIES, *numbers]))
