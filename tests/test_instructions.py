"""Generated training instructions: stems, constraints, compatibility, contamination, user prompts."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import pytest

from musc_jax.data import instructions as ins
from musc_jax.data.constraints import FREE_TEXT, compatible, render, verify
from musc_jax.data.instruction_stems import GENRES, STEMS
from musc_jax.data.recombine import compose
from musc_jax.data.seeds import load_seeds, read_jsonl_seeds

IFEVAL_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "ifeval_dev.jsonl"


@pytest.fixture(scope="module")
def generated():
    return ins.generate_instructions(1200, seed=0)


def test_stems_are_many_distinct_and_varied():
    texts = [t for _, t in STEMS]
    assert len(texts) >= 300
    assert len(set(t.lower() for t in texts)) == len(texts)
    per_genre = collections.Counter(g for g, _ in STEMS)
    assert len(GENRES) >= 20 and min(per_genre.values()) >= 10
    # a stem is a bare task: no length / format / case requirement of its own
    from musc_jax.data.decompose import rule_decompose
    typed = [t for t in texts if rule_decompose(t)]
    assert not typed, typed[:5]


def test_generation_is_deterministic_and_uses_every_stem(generated):
    again = ins.generate_instructions(50, seed=0)
    assert [s.prompt for s in again] == [s.prompt for s in generated[:50]]
    assert [s.prompt for s in ins.generate_instructions(50, seed=1)] != [s.prompt for s in again]
    # each pass over the stems uses all of them before any repeats
    first = [s.meta["stem"] for s in generated[:len(STEMS)]]
    assert sorted(first) == list(range(len(STEMS)))


def test_constraint_counts_types_and_renderings(generated):
    counts = collections.Counter(len(s.constraints) for s in generated)
    assert set(counts) == {1, 2, 3, 4}
    # 1-4 cycle; a slot is given up only when 50 draws found nothing compatible (rare)
    assert counts[4] >= 0.9 * len(generated) / 4
    types = collections.Counter(c.id for s in generated for c in s.constraints)
    assert set(types) == set(ins.TYPES)
    # several renderings of each type and every composition style occur
    sentences = collections.defaultdict(set)
    for s in generated:
        for c in s.constraints:
            sentences[c.id].add(next(v for v in range(3) if render(c, v) in s.prompt))
    assert all(len(v) >= 2 for v in sentences.values()), {k: v for k, v in sentences.items()
                                                           if len(v) < 2}
    assert {s.meta["compose_style"] for s in generated} == {"paragraph", "lines", "list"}


def test_prompt_is_the_composition_of_its_task_and_constraints(generated):
    for s in generated[:200]:
        assert s.prompt == compose(s.task, s.constraints, s.meta["compose_seed"],
                                   s.meta["compose_style"])
        assert s.prompt.startswith(s.task)


def test_incompatible_constraints_are_never_combined(generated):
    for s in generated:
        cs = s.constraints
        for i in range(len(cs)):
            for j in range(i + 1, len(cs)):
                assert compatible(cs[i], cs[j]), (s.prompt, cs[i], cs[j])


def test_yes_no_constraint_only_on_questions_and_repeat_prompt_repeats_the_task(generated):
    for s in generated:
        for c in s.constraints:
            if c.id == ins.CONSTRAINED:
                assert s.meta["genre"] == "yes_no"
            if c.id == ins.REPEAT:
                repeat = c.kwargs["prompt_to_repeat"]
                assert s.prompt.startswith(repeat)
                # the verifier accepts an answer that starts with the repeated request
                assert verify(repeat + " Here is my answer.", c) is True
                assert verify("Sure. " + repeat, c) is False


def test_no_ifeval_dev_prompt_is_a_near_duplicate_of_a_generated_one(generated):
    dev = [json.loads(line)["prompt"] for line in IFEVAL_DEV.read_text().splitlines() if line.strip()]
    assert len(dev) >= 100
    prompts = [s.prompt for s in generated]
    # whole prompts: word 3-gram Jaccard < 0.5 (the constraint sentences come from the shared
    # taxonomy, so some overlap is expected; 0.5 would mean a copied task as well)
    assert ins.near_duplicates(prompts, dev, n=3, threshold=0.5) == []
    # the stems alone: under 60% of a stem's 3-grams appear in any one dev prompt (genre frames
    # such as "write a product description for a" are shared words, not a copied task)
    overlaps = ins.stem_overlaps([t for _, t in STEMS], dev, n=3)
    worst = max(range(len(overlaps)), key=overlaps.__getitem__)
    assert overlaps[worst] < 0.6, STEMS[worst]


def test_near_duplicate_check_finds_a_copied_prompt():
    dev = ["Write a poem about a lonely lighthouse in winter. Do not use any commas.",
           "Describe a market at night in exactly 3 sentences."]
    gen = ["Write a poem about a lonely lighthouse in winter! Do not use any commas.",
           "Explain how tides work."]
    hits = ins.near_duplicates(gen, dev, threshold=0.5)
    assert [(i, j) for i, j, _ in hits] == [(0, 0)]
    assert hits[0][2] == pytest.approx(1.0)
    # Jaccard by hand: {a b c, b c d} vs {b c d, c d e} -> 1 / 3
    assert ins.jaccard(ins.shingles("a b c d"), ins.shingles("b c d e")) == pytest.approx(1 / 3)
    assert ins.stem_overlaps(["a lonely lighthouse in winter"], dev) == [pytest.approx(1.0)]


def test_seed_source_and_jsonl_round_trip(tmp_path, generated):
    seeds = load_seeds("instructions", num_seeds=20, seed=0, levels=(2, 3), world_seed=7).seeds
    assert [len(s.constraints) for s in seeds[:4]] == [2, 3, 2, 3]
    path = ins.write_jsonl(generated[:30], tmp_path / "seeds.jsonl")
    back = read_jsonl_seeds(path).seeds
    assert [s.prompt for s in back] == [s.prompt for s in generated[:30]]
    assert [s.constraints for s in back] == [s.constraints for s in generated[:30]]
    assert [s.task for s in back] == [s.task for s in generated[:30]]


def test_user_prompt_file_with_free_text_constraints(tmp_path):
    rows = [
        {"prompt": "Plan a picnic for my book club. Use a cheerful tone. Do not use any commas.",
         "task": "Plan a picnic for my book club",
         "constraints": ["Use a cheerful tone.", "Do not use any commas."]},
        {"prompt": "Tell me about owls.", "constraints": [
            {"id": "length_constraints:number_words", "kwargs": {"num_words": 40,
                                                                 "relation": "less than"}},
            "Mention at least one owl that lives in a desert."]},
        {"prompt": "Summarise the plot of a heist film you make up."},
    ]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    seeds = load_seeds("jsonl", str(path)).seeds
    assert [c.id for c in seeds[0].constraints] == [FREE_TEXT, "punctuation:no_comma"]
    assert seeds[0].constraints[0].text == "Use a cheerful tone."
    assert seeds[0].task == "Plan a picnic for my book club"
    assert [c.id for c in seeds[1].constraints] == ["length_constraints:number_words", FREE_TEXT]
    assert seeds[2].constraints is None          # a decomposer fills these in
    assert verify("no commas here", seeds[0].constraints[1]) is True
    assert verify("anything", seeds[0].constraints[0]) is None   # free text: unknown


def test_user_prompt_errors_name_the_line_and_field(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "Hi", "constraints": ["ok", "  "]}) + "\n"
                    + json.dumps({"prompt": "Hi", "constraints": [3]}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: field 'constraints\[1\]': empty"):
        load_seeds("jsonl", str(path))
    got = load_seeds("jsonl", str(path), on_error="skip")
    assert len(got) == 0 and sum(got.skipped.values()) == 2


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="counts must be in 1..4"):
        ins.generate_instructions(3, counts=(0, 2))
    with pytest.raises(ValueError, match="unknown or unsupported constraint type"):
        ins.generate_instructions(3, types=("keywords:existence", "microworld:start_word"))


def test_cli_writes_and_checks(tmp_path, capsys):
    out = tmp_path / "gen.jsonl"
    assert ins._main(["--num", "40", "--out", str(out), "--check", str(IFEVAL_DEV)]) == 0
    assert len(out.read_text().splitlines()) == 40
    assert "near-duplicates (>= 0.5): 0" in capsys.readouterr().out
