"""The cards task: rule semantics on hand-checked hands, split disjointness, tokenizer, pairs, reward."""

from __future__ import annotations

import numpy as np
import pytest

from rlcircuits.registry import ConfigError, validate
from rlcircuits.tasks import TASKS
from rlcircuits.tasks.cards import Cards, CardsConfig
from rlcircuits.tasks.cards.formatting import TEMPLATES, rule_words
from rlcircuits.tasks.cards.generate import Instance, labels
from rlcircuits.tasks.cards.rules import Card, Rule, Selector
from rlcircuits.tasks.cards.splits import ID_SPLITS, OOD_SPLITS

N = 150


@pytest.fixture(scope="module")
def task() -> Cards:
    return TASKS.get("cards").fn(TASKS.config({"name": "cards"}, "task"))


@pytest.fixture(scope="module")
def data(task):
    return {s: task.examples(s, N, seed=0) for s in task.splits}


def hand(*cards: str) -> tuple[Card, ...]:
    """``hand("RED 3", "BLUE 5")``"""
    return tuple(Card(c.split()[0], int(c.split()[1])) for c in cards)


H = hand("RED 3", "BLUE 5", "GREEN 2", "RED 4")
COLOUR, ABOVE, PARITY = "colour", "threshold", "parity"


@pytest.mark.parametrize("rule, answer", [
    (Rule("sum", Selector(COLOUR, "RED")), 7),
    (Rule("diff", Selector(COLOUR, "RED"), Selector(COLOUR, "BLUE")), 2),
    (Rule("diff", Selector(COLOUR, "BLUE"), Selector(COLOUR, "RED")), -2),
    (Rule("diff", Selector(COLOUR, "GREEN"), Selector(COLOUR, "RED")), -5),
    (Rule("count", Selector(COLOUR, "RED")), 2),
    (Rule("count", Selector(COLOUR, "YELLOW")), 0),
    (Rule("count", Selector(ABOVE, 3)), 2),  # 5 and 4; 3 is not above 3
    (Rule("count", Selector(ABOVE, 4)), 1),
    (Rule("sum", Selector(ABOVE, 2)), 12),
    (Rule("sum", Selector(PARITY, "even")), 6),
    (Rule("sum", Selector(PARITY, "odd")), 8),
    (Rule("count", Selector(PARITY, "even")), 2),
    (Rule("diff", Selector(PARITY, "odd"), Selector(PARITY, "even")), 2),
])
def test_rule_answers(rule, answer):
    assert rule.evaluate(H) == answer


def test_labels_by_hand():
    rule = Rule("diff", Selector(COLOUR, "RED"), Selector(COLOUR, "BLUE"))
    lab = labels(rule, H, ["RED", "BLUE", "GREEN", "YELLOW"], big_above=1)
    assert lab["answer"] == 2 and lab["big"]
    assert lab["colour_sums"] == {"RED": 7, "BLUE": 5, "GREEN": 2, "YELLOW": 0}
    assert lab["signs"] == [1, -1, 0, 1]
    assert lab["selected"] == [True, True, False, True]
    assert lab["running"] == [3, -2, -2, 2]
    count = labels(Rule("count", Selector(ABOVE, 3)), H, ["RED"], big_above=10)
    assert count["running"] == [0, 1, 1, 2] and not count["big"]


def test_example_text_and_meta(task):
    rule = Rule("diff", Selector(COLOUR, "RED"), Selector(COLOUR, "BLUE"))
    assert " ".join(rule_words(rule, "plain")) == "add the RED cards and subtract the BLUE cards"
    ex = task.encode(Instance(rule, "plain", H), "test")
    words = task.tokenizer.convert_ids_to_tokens(ex.prompt)
    assert " ".join(words) == ("<bos> Rule: add the RED cards and subtract the BLUE cards "
                               "Cards: RED 3 BLUE 5 GREEN 2 RED 4 Answer:")
    assert [words[p] for p in ex.meta["card_positions"]] == ["3", "5", "2", "4"]
    assert task.tokenizer.convert_ids_to_tokens(ex.completion) == ["2", "<eos>"]
    assert len(ex.prompt) + len(ex.completion) <= task.max_length


def test_templates_have_equal_slot_lengths():
    for slot in ("sum", "count", "diff", "colour", "threshold", "parity"):
        assert len({len(getattr(t, slot).split()) for t in TEMPLATES.values()}) == 1, slot


def test_splits_are_disjoint_by_construction(task, data):
    cfg = task.cfg
    combos = {s: {(e.meta["rule"], e.meta["template"]) for e in data[s]} for s in task.splits}
    id_combos = set().union(*(combos[s] for s in ID_SPLITS))
    for s in ID_SPLITS:
        for e in data[s]:
            assert e.meta["family"] in cfg.families and e.meta["template"] in cfg.paraphrases
            assert {c for c, _ in e.meta["cards"]} <= set(cfg.colours)
            if e.meta["family"].endswith("threshold"):
                assert int(e.meta["rule"].split(":")[1]) in cfg.thresholds
    for s in OOD_SPLITS:
        assert not combos[s] & id_combos, s
    assert all(e.meta["template"] in cfg.ood_paraphrases for e in data["ood_paraphrase"])
    assert all(e.meta["family"] in cfg.ood_families for e in data["ood_composition"])
    assert all(set(e.meta["rule"].split(":")[1].split("-")) & set(cfg.ood_colours)
               and {c for c, _ in e.meta["cards"]} & set(cfg.ood_colours) for e in data["ood_colour"])
    assert all(int(e.meta["rule"].split(":")[1]) in cfg.ood_thresholds for e in data["ood_threshold"])
    # ID splits never share a (rule, hand): val and test are hands unseen in training for their rule.
    hands = {s: {(e.meta["rule"], tuple(e.meta["cards"])) for e in task.examples(s, 2000, 1)} for s in ID_SPLITS}
    assert not hands["train"] & hands["test"] and not hands["train"] & hands["val"]


def test_every_word_round_trips_through_the_tokenizer(task):
    tok = task.tokenizer
    words = list(tok.get_vocab())
    for w in words:
        assert tok.convert_ids_to_tokens(tok(w, add_special_tokens=False)["input_ids"]) == [w]
    assert tok.unk_token_id not in [i for exs in (task.examples(s, 20, 3) for s in task.splits)
                                    for e in exs for i in e.prompt + e.completion]
    assert {"YELLOW", "PURPLE", "-36", "36", "ones"} <= set(words)  # OOD words are in the vocabulary


def test_examples_are_deterministic_in_seed(task):
    for s in task.splits:
        a, b, c = (task.examples(s, 20, seed) for seed in (5, 5, 6))
        assert [(e.prompt, e.completion) for e in a] == [(e.prompt, e.completion) for e in b]
        assert [e.prompt for e in a] != [e.prompt for e in c]


def test_pairs_have_equal_length_and_differ_minimally(task):
    for s in OOD_SPLITS:
        for iid, ood in task.pairs(s, 40, seed=2):
            assert len(iid.prompt) == len(ood.prompt)
            assert iid.meta["split"] == "test" and ood.meta["split"] == s
            diff = [i for i, (a, b) in enumerate(zip(iid.prompt, ood.prompt)) if a != b]
            rule_end = iid.prompt.index(task.vocab["Cards:"])
            if s == "ood_colour":
                assert iid.meta["answer"] == ood.meta["answer"] and diff
            elif s == "ood_paraphrase":
                assert iid.meta["rule"] == ood.meta["rule"] and all(i < rule_end for i in diff)
            else:  # one rule word (a threshold, or an aggregation phrase of at most two words)
                assert 1 <= len(diff) <= 2 and max(diff) < rule_end, (iid.meta["text"], ood.meta["text"])


def test_rewards_and_correct_on_hand_made_completions(task):
    cfg = validate(CardsConfig, {"format_reward": 0.5}, "task")
    shaped = Cards(cfg)
    ex = task.examples("test", 1, seed=0)[0]
    v, eos, pad = task.vocab, task.eos, task.tokenizer.pad_token_id
    right, wrong = v[str(ex.meta["answer"])], v[str(ex.meta["answer"] + 1)]
    completions = [[right, eos], [right, eos, pad], [right], [wrong, eos], [right, right], [eos], [v["RED"], eos]]
    assert task.correct([ex] * 7, completions) == [True, True, True, False, False, False, False]
    assert task.rewards([ex] * 7, completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]
    assert shaped.rewards([ex] * 7, completions) == [1.5, 1.5, 1.0, 0.5, 0.0, 0.0, 0.0]


def test_probe_labels(task, data):
    exs = data["test"]
    lab = task.probe_labels(exs)
    assert set(lab) >= {"rule", "answer", "big", *(f"colour_sum_{c}" for c in task.cfg.colours)}
    assert all(v.shape == (len(exs),) and v.dtype == np.int64 for v in lab.values())
    assert list(lab["answer"]) == [e.meta["answer"] for e in exs]
    assert list(lab["big"]) == [int(e.meta["answer"] > task.cfg.big_above) for e in exs]
    assert len(set(lab["rule"])) > 5 and len(set(lab["colour_sum_RED"])) > 5
    # Class ids are shared across splits: a rule has one id whichever split it comes from.
    both = exs + data["ood_paraphrase"]
    ids = np.concatenate([lab["rule"], task.probe_labels(data["ood_paraphrase"])["rule"]])
    assert len(set(zip((e.meta["rule"] for e in both), ids))) == len({e.meta["rule"] for e in both})


@pytest.mark.parametrize("override, key", [
    ({"ood_colours": ["RED"]}, "task.ood_colours"),
    ({"ood_families": ["count_colour"]}, "task.ood_families"),
    ({"families": ["sum_colour", "count_threshold"], "ood_families": ["diff_parity"]}, "task.ood_families"),
    ({"families": ["sum_colour", "nonsense"]}, "task.families"),
    ({"thresholds": [3, 9]}, "task.thresholds"),
    ({"ood_thresholds": [5]}, "task.ood_thresholds"),
    ({"ood_paraphrases": ["plain"]}, "task.ood_paraphrases"),
    ({"min_cards": 5, "max_cards": 3}, "task.max_cards"),
    ({"colours": ["red", "BLUE"]}, "task.colours"),
    ({"max_cards": "many"}, "task.max_cards"),
    ({"n_cards": 3}, "task.n_cards"),
])
def test_bad_config_names_the_key(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}:"):
        validate(CardsConfig, override, "task")


def test_max_length_covers_every_split(task, data):
    assert max(len(e.prompt) + len(e.completion) for exs in data.values() for e in exs) <= task.max_length
