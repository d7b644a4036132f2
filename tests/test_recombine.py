"""Corruption rates over 10,000 draws, the task is never touched, x and x' differ only by the
corrupted constraints, records describe what happened."""

import json
import random
from collections import Counter

import pytest

from musc_jax.data import constraints as C
from musc_jax.data.decompose import Decomposition
from musc_jax.data.recombine import (CorruptionConfig, CorruptionRecord, compose, compose_pair,
                                     corrupt, corrupt_decomposition, corruption_stats,
                                     n_to_corrupt, render_parts, self_compose,
                                     corruption_count)

TASK = "Write a short note about the harbour"
N_DRAWS = 10_000

# Every constraint here has a clean negation and compatible substitutes, so no fallback occurs
# and the applied operations must follow the configured probabilities too.
CLEAN = [C.make("length_constraints:number_words", num_words=50, relation="at least"),
         C.make("keywords:existence", keywords=["sun"]),
         C.make("change_case:english_lowercase"),
         C.make("length_constraints:number_sentences", num_sentences=6, relation="less than"),
         C.make("keywords:frequency", keyword="river", frequency=2, relation="at least")]
MIXED = [C.make("punctuation:no_comma"), C.make("detectable_format:title"),
         C.free_text("Use a cheerful tone."), C.make("microworld:start_word", first_word="sea")]


def test_config_validation():
    with pytest.raises(ValueError, match="must be 1"):
        CorruptionConfig(p_drop=0.5, p_negate=0.5, p_substitute=0.5)
    with pytest.raises(ValueError, match="rate"):
        CorruptionConfig(rate=1.5)
    with pytest.raises(ValueError, match="at least one constraint"):
        corrupt([], random.Random(0))


def test_k_formula():
    assert [n_to_corrupt(n, 0.3) for n in range(0, 11)] == [0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3]
    assert n_to_corrupt(15, 0.3) == 5  # 4.5 rounds up
    assert n_to_corrupt(4, 1.0) == 4 and n_to_corrupt(4, 0.0) == 1


def test_k_counts_the_task():
    """DESIGN 5.1: n counts every constraint of C, the task included (hand-checked: 4
    constraints + task -> round(0.3 * 5) = round(1.5) = 2, where 0.3 * 4 would give 1)."""
    assert [corruption_count(m, 0.3) for m in range(0, 8)] == [0, 1, 1, 1, 2, 2, 2, 2]
    assert corruption_count(1, 1.0) == 1          # never more than the non-task constraints
    cons = CLEAN[:4]
    assert all(len(corrupt(cons, random.Random(s))[1]) == 2 for s in range(20))


def _draws(cons, cfg, seed=0, n=N_DRAWS):
    rng = random.Random(seed)
    return [corrupt(cons, rng, config=cfg) for _ in range(n)]


@pytest.mark.parametrize("cfg", [CorruptionConfig(),
                                 CorruptionConfig(rate=0.5, p_drop=0.2, p_negate=0.3,
                                                  p_substitute=0.5)])
def test_rates_match_config_over_10000_draws(cfg):
    draws = _draws(CLEAN, cfg)
    records = [r for _, recs in draws for r in recs]
    k = corruption_count(len(CLEAN), cfg.rate)
    assert all(len(recs) == k for _, recs in draws)
    stats = corruption_stats(records)
    want = {"drop": cfg.p_drop, "negate": cfg.p_negate, "substitute": cfg.p_substitute}
    for op, p in want.items():
        assert abs(stats[f"op/{op}"] - p) < 0.02, (op, stats)
        assert abs(stats[f"applied/{op}"] - p) < 0.02, (op, stats)
    assert stats["fallback"] == 0.0
    picked = Counter(r.index for r in records)  # each eligible constraint equally likely
    for i in range(len(CLEAN)):
        assert abs(picked[i] / N_DRAWS - k / len(CLEAN)) < 0.02
    # Drops shorten the list by one; negations and substitutions keep its length.
    for out, recs in draws[:500]:
        assert len(out) == len(CLEAN) - sum(r.applied == "drop" for r in recs)


def test_fallbacks_are_recorded():
    draws = _draws(MIXED, CorruptionConfig(), n=2000)
    records = [r for _, recs in draws for r in recs]
    stats = corruption_stats(records)
    assert abs(stats["op/negate"] - 0.25) < 0.03  # drawn as configured ...
    assert stats["applied/negate"] == 0.0  # ... but none of these has a clean negation
    assert all(r.applied in ("substitute", "drop") for r in records if r.op == "negate")
    assert all(r.replacement is None for r in records if r.applied == "drop")


def test_records_describe_the_corruption():
    rng = random.Random(7)
    pool_rng = random.Random(8)
    ids = [t for t, ct in C.REGISTRY.items() if ct.sampler is not None]
    for _ in range(2000):
        cons = []
        for _ in range(pool_rng.randint(1, 6)):
            c = C.sample(pool_rng.choice(ids), pool_rng)
            if C.compatible_with_all(c, cons):
                cons.append(c)
        out, recs = corrupt(cons, rng)
        rebuilt = list(cons)
        for r in recs:
            assert r.original == cons[r.index]
            if r.applied == "negate":
                assert r.replacement == C.negate(r.original)
            if r.applied == "substitute":
                assert r.replacement.id != r.original.id
            rebuilt[r.index] = r.replacement
        assert [c for c in rebuilt if c is not None] == out
        for c in out:  # the corrupted instruction is still a valid combination
            assert C.compatible_with_all(c, [o for o in out if o is not c])
        for r in recs:
            back = CorruptionRecord.from_dict(json.loads(json.dumps(r.to_dict())))
            assert back == r


def test_task_is_never_touched():
    dec = Decomposition(TASK, list(CLEAN), input="Harbour log: two ships arrived.")
    rng = random.Random(3)
    head = render_parts(TASK, [])[0]
    for i in range(N_DRAWS):
        new, recs = corrupt_decomposition(dec, rng)
        assert new.task == TASK and new.input == dec.input
        assert all(0 <= r.index < len(CLEAN) for r in recs)
        if i < 200:
            assert compose(new.task, new.constraints, seed=i).startswith(head)


def test_same_seed_same_result():
    a = corrupt(CLEAN, random.Random(11))
    b = corrupt(CLEAN, random.Random(11))
    assert a == b


@pytest.mark.parametrize("style", ["paragraph", "lines", "list"])
def test_x_and_x_prime_differ_only_in_corrupted_constraints(style):
    rng = random.Random(5)
    ids = [t for t, ct in C.REGISTRY.items() if ct.sampler is not None]
    for trial in range(500):
        cons = []
        for _ in range(rng.randint(2, 6)):
            c = C.sample(rng.choice(ids), rng)
            if C.compatible_with_all(c, cons):
                cons.append(c)
        out, recs = corrupt(cons, rng)
        seed = rng.randint(0, 10**6)
        parts, parts2 = render_parts(TASK, cons, seed), render_parts(TASK, out, seed)
        touched = {r.index for r in recs}
        kept = [parts[1 + i] for i in range(len(cons)) if i not in touched]
        kept2 = [parts2[1 + j] for j, c in enumerate(out)
                 if not any(r.replacement is c for r in recs)]
        assert parts[0] == parts2[0]  # the task sentence
        assert kept == kept2  # unchanged constraints: identical sentences, same order
        x, x2 = compose_pair(TASK, cons, out, seed, style)
        assert x == compose(TASK, cons, seed, style) and x2 == compose(TASK, out, seed, style)
        pos = [x2.index(s) for s in [parts2[0]] + kept2]
        assert pos == sorted(pos)  # ... and the text keeps them in that order
        changed = [parts2[1 + j] for j, c in enumerate(out)
                   if any(r.replacement is c for r in recs)]
        assert all(s not in x for s in changed if s not in kept2)


def test_compose_styles_and_input():
    cons = CLEAN[:2]
    assert compose(TASK, cons, 0).startswith(TASK + ". ")
    assert compose(TASK, cons, 0, "lines").count("\n") == 2
    assert "\n- " in compose(TASK, cons, 0, "list")
    assert compose(TASK, cons, 0, input="Some text.").endswith("\n\nSome text.")
    with pytest.raises(ValueError, match="style"):
        compose(TASK, cons, 0, "poem")
    with pytest.raises(ValueError, match="int seed"):
        compose(TASK, cons, random.Random(0))
    with pytest.raises(ValueError, match="task"):
        compose("  ", cons)
    x, x2 = compose_pair(TASK, cons, cons[:1], random.Random(0))
    assert x.startswith(x2[:-1].rstrip("."))


def test_self_compose_accepts_faithful_rewrites_and_falls_back():
    items = [(TASK, CLEAN[:2]), (TASK, CLEAN[2:4])]

    def generate(convs):
        first = convs[0][-1]["content"]
        return ["Rewritten instruction: " + first.replace("Write a short note", "Please write a "
                                                          "brief note"),
                "Write a note about the harbour."]  # drops both constraints

    texts, stats = self_compose(items, generate, seed=1)
    assert (stats.total, stats.accepted, stats.fallbacks) == (2, 1, 1)
    assert texts[0].startswith("Please write a brief note")
    assert texts[1] == compose(TASK, CLEAN[2:4], 1)


def test_self_compose_check_covers_free_text():
    """A composition that loses a free-text constraint is rejected (template text, counted)."""
    cons = [C.make("punctuation:no_comma"), C.free_text("Use a cheerful tone.")]
    keep = "Write a short note about the harbour. Do not use any commas. Use a cheerful tone!"
    lose = "Write a short note about the harbour. Do not use any commas."
    texts, st = self_compose([(TASK, cons), (TASK, cons)], lambda convs: [keep, lose])
    assert texts[0] == keep and texts[1] == compose(TASK, cons)
    assert (st.accepted, st.fallbacks) == (1, 1)
    # "parts" sends the corpus's compose prompt: the task and constraint sentences
    seen = []
    self_compose([(TASK, cons)], lambda convs: seen.extend(convs) or [keep], prompt="parts")
    assert seen[0][0]["content"].startswith("Write the instruction.\nTASK: ")
