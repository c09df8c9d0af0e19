"""The cards game as a Task: token-id examples per split, ID/OOD twins for patching, reward, probe labels.

    Rule: add the odd cards and subtract the even cards Cards: RED 3 BLUE 5 GREEN 2 RED 4 Answer: 2
    Rule: count the RED cards Cards: RED 3 BLUE 5 GREEN 2 RED 4 Answer: 2

The model answers with one number word then ``<eos>``. The study compares SFT and RL on the ID test split
against four OOD splits, each holding out one factor (see ``splits``).
"""

from __future__ import annotations

import random

import numpy as np

from rlcircuits.models.tokenizer import build_word_tokenizer
from rlcircuits.tasks import TASKS
from rlcircuits.tasks.base import Example, Task
from rlcircuits.tasks.cards.config import CardsConfig
from rlcircuits.tasks.cards.formatting import prompt_words, vocabulary
from rlcircuits.tasks.cards.generate import Instance, labels, sample_hand
from rlcircuits.tasks.cards.rules import Rule, Selector, rules_of
from rlcircuits.tasks.cards.splits import ID_SPLITS, OOD_SPLITS, bucket, composition_partners, recompose, rule_length


@TASKS.register("cards", schema=CardsConfig)
class Cards(Task):
    splits = (*ID_SPLITS, *OOD_SPLITS)
    max_new_tokens = 2  # answer, <eos>
    has_answer = True
    paired_splits = OOD_SPLITS

    def __init__(self, cfg: CardsConfig):
        self.cfg = cfg
        self.colours = [*cfg.colours, *cfg.ood_colours]
        self.families = [*cfg.families, *cfg.ood_families]
        self.tokenizer = build_word_tokenizer(vocabulary(self.colours, cfg.max_value * cfg.max_cards))
        self.vocab = self.tokenizer.get_vocab()
        self.eos = self.tokenizer.eos_token_id
        self.numbers = {i for w, i in self.vocab.items() if w.lstrip("-").isdigit()}
        # <bos> Rule: <rule> Cards: <colour value>* Answer: <answer> <eos>
        self.max_length = 4 + max(map(rule_length, self.families)) + 2 * cfg.max_cards + self.max_new_tokens
        self.id_rules = {f: rules_of(f, cfg.colours, cfg.thresholds) for f in cfg.families}
        every_rule = [r for f in self.families for r in rules_of(f, self.colours, [*cfg.thresholds,
                                                                                    *cfg.ood_thresholds])]
        self.rule_ids = [r.id for r in every_rule]  # probe class id = index here, the same in every split
        self.partners = {f: composition_partners(f, cfg.families) for f in cfg.ood_families}

    # ---- data -------------------------------------------------------------------------------------
    def examples(self, split: str, n: int, seed: int) -> list[Example]:
        if split in OOD_SPLITS:
            return [ood for _, ood in self.pairs(split, n, seed)]
        if split not in ID_SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(self.splits)}")
        rng = random.Random(f"{split}/{seed}")
        return [self.encode(self._sample_id(rng, split, self.cfg.families), split) for _ in range(n)]

    def pairs(self, split: str, n: int, seed: int) -> list[tuple[Example, Example]]:
        """``n`` (ID test example, ``split`` example) twins with prompts of equal token length.

        Both share the hand; what differs is one factor:
          ood_colour: one colour of the rule is renamed to a held-out colour, in the rule and in the hand
            (the answer is unchanged);
          ood_composition: the family — the aggregation word(s) swapped with the selection kept (e.g.
            ``add`` → ``count``), or, when only the selector kind is shared, the selection swapped;
          ood_paraphrase: the template (same rule, held-out wording);
          ood_threshold: the threshold word ``k`` of a "cards above k" rule, to a held-out value.
        """
        if split not in OOD_SPLITS:
            raise ValueError(f"pairs are for OOD splits {OOD_SPLITS}, not {split!r}")
        rng = random.Random(f"{split}/{seed}")
        out = []
        for _ in range(n):
            iid, ood = self._twin(split, rng)
            pair = self.encode(iid, "test"), self.encode(ood, split)
            assert len(pair[0].prompt) == len(pair[1].prompt), (iid, ood)
            out.append(pair)
        return out

    def _twin(self, split: str, rng: random.Random) -> tuple[Instance, Instance]:
        cfg = self.cfg
        if split == "ood_colour":  # the renamed colour is in the hand, else the new word is never read
            while True:
                iid = self._sample_id(rng, "test", [f for f in cfg.families if f.endswith("_colour")])
                old = rng.choice(iid.rule.colours)
                if any(c.colour == old for c in iid.hand):
                    return iid, iid.rename(old, rng.choice(cfg.ood_colours))
        if split == "ood_composition":
            family = rng.choice(cfg.ood_families)
            iid = self._sample_id(rng, "test", [rng.choice(self.partners[family])])
            rule = recompose(iid.rule, family, rng, cfg.colours, cfg.thresholds)
            return iid, Instance(rule, iid.template, iid.hand)
        if split == "ood_paraphrase":
            iid = self._sample_id(rng, "test", cfg.families)
            return iid, Instance(iid.rule, rng.choice(cfg.ood_paraphrases), iid.hand)
        iid = self._sample_id(rng, "test", [f for f in cfg.families if f.endswith("_threshold")])
        rule = Rule(iid.rule.agg, Selector("threshold", rng.choice(cfg.ood_thresholds)))
        return iid, Instance(rule, iid.template, iid.hand)

    def _sample_id(self, rng: random.Random, split: str, families: list[str]) -> Instance:
        """An ID instance (family uniform, then rule, template, hand) whose hash bucket is ``split``."""
        cfg = self.cfg
        while True:
            rule = rng.choice(self.id_rules[rng.choice(families)])
            template = rng.choice(cfg.paraphrases)
            hand = sample_hand(rng, cfg.colours, cfg.min_cards, cfg.max_cards, cfg.max_value)
            if bucket(rule, hand) == split:
                return Instance(rule, template, hand)

    def encode(self, inst: Instance, split: str) -> Example:
        """Token ids plus every label; ``*_positions`` index the prompt ids."""
        words, colour_positions, value_positions = prompt_words(inst)
        lab = labels(inst.rule, inst.hand, self.colours, self.cfg.big_above)
        return Example(
            prompt=[self.vocab[w] for w in words],
            completion=[self.vocab[str(lab["answer"])], self.eos],
            meta={
                "rule": inst.rule.id,
                "family": inst.rule.family,
                "template": inst.template,
                "split": split,
                "cards": [(c.colour, c.value) for c in inst.hand],
                "card_positions": value_positions,
                "colour_positions": colour_positions,
                "text": " ".join(words[1:]),
                **lab,
            },
        )

    # ---- reading samples --------------------------------------------------------------------------
    def _answer(self, completion: list[int]) -> tuple[list[int], bool]:
        """(tokens before the first ``<eos>``, whether there was one)."""
        if self.eos in completion:
            return completion[: completion.index(self.eos)], True
        return completion, False

    def correct(self, examples: list[Example], completions: list[list[int]]) -> list[bool]:
        return [self._answer(c)[0] == [self.vocab[str(e.meta["answer"])]] for e, c in zip(examples, completions)]

    def rewards(self, examples: list[Example], completions: list[list[int]]) -> list[float]:
        """1 for the right answer, plus ``format_reward`` for any answer shaped as one number then <eos>.

        >>> task = Cards(CardsConfig())
        >>> ex = task.examples("test", 1, seed=0)[0]
        >>> task.rewards([ex, ex], [ex.completion, [task.eos]])
        [1.0, 0.0]
        """
        out = []
        for ok, c in zip(self.correct(examples, completions), completions):
            answer, ended = self._answer(c)
            well_formed = ended and len(answer) == 1 and answer[0] in self.numbers
            out.append(float(ok) + (self.cfg.format_reward if well_formed else 0.0))
        return out

    # ---- probes -----------------------------------------------------------------------------------
    def probe_labels(self, examples: list[Example]) -> dict[str, np.ndarray]:
        """Per-example labels ``[N]``: ``rule`` and ``family`` (class ids, the same across splits),
        ``colour_sum_<c>`` per ID colour, ``answer``, ``big`` (0/1), ``n_selected``."""
        rule_class = {r: i for i, r in enumerate(self.rule_ids)}
        out = {
            "rule": [rule_class[e.meta["rule"]] for e in examples],
            "family": [self.families.index(e.meta["family"]) for e in examples],
            **{f"colour_sum_{c}": [e.meta["colour_sums"][c] for e in examples] for c in self.cfg.colours},
            "answer": [e.meta["answer"] for e in examples],
            "big": [int(e.meta["big"]) for e in examples],
            "n_selected": [sum(e.meta["selected"]) for e in examples],
        }
        return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
