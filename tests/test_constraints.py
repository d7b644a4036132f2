"""Constraint taxonomy: verifiers agree with if_verifiable on hand-made responses; values,
rendering, negation and compatibility behave."""

import json
import os
import subprocess
import sys
import tempfile
import random

import pytest
from if_verifiable import IFEvalSample, evaluate_output_for_sample

from musc_jax.data import constraints as C
from musc_jax.data.constraints import Constraint

# (instruction id, kwargs, a response that follows it, one that does not) -- written by hand.
IFEVAL_CASES = [
    ("keywords:existence", {"keywords": ["apple", "pie"]},
     "I baked an apple pie today.", "I baked a cherry tart today."),
    ("keywords:frequency", {"keyword": "sun", "frequency": 2, "relation": "at least"},
     "The sun rose. Later the sun set.", "The sun rose over the hills."),
    ("keywords:forbidden_words", {"forbidden_words": ["rain"]},
     "It was sunny all day long.", "The rain kept falling all day."),
    ("keywords:letter_frequency", {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
     "The jazz band played all night.", "The band played all night."),
    ("language:response_language", {"language": "fr"},
     "Bonjour, je m'appelle Marie et j'habite à Paris depuis dix ans. J'aime beaucoup la "
     "cuisine de ma grand-mère.",
     "Hello, my name is Mary and I have lived in London for ten years. I really like my "
     "grandmother's cooking."),
    ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"},
     "I like tea. I also like coffee.",
     "I like tea. I like coffee. I like juice. I like milk."),
    ("length_constraints:number_paragraphs", {"num_paragraphs": 2},
     "The first part is here.\n***\nThe second part is here.", "Only one part is here."),
    ("length_constraints:number_words", {"num_words": 5, "relation": "at least"},
     "one two three four five six", "one two"),
    ("length_constraints:nth_paragraph_first_word",
     {"num_paragraphs": 2, "nth_paragraph": 2, "first_word": "then"},
     "First we wake up.\n\nThen we eat breakfast.", "First we wake up.\n\nLater we eat."),
    ("detectable_content:number_placeholders", {"num_placeholders": 2},
     "Dear [name], see you at [place].", "Dear [name], see you soon."),
    ("detectable_content:postscript", {"postscript_marker": "P.S."},
     "Hello there, friend.\n\nP.S. See you soon.", "Hello there, friend."),
    ("detectable_format:number_bullet_lists", {"num_bullets": 2},
     "* one point\n* two points", "* one point\n* two points\n* three points"),
    ("detectable_format:constrained_response", {},
     "Thinking it over: My answer is yes.", "Yes, definitely."),
    ("detectable_format:number_highlighted_sections", {"num_highlights": 2},
     "This is *important* and *urgent*.", "This is *important* only."),
    ("detectable_format:multiple_sections", {"section_spliter": "SECTION", "num_sections": 2},
     "SECTION 1\nIntro here.\nSECTION 2\nBody here.", "SECTION 1\nIntro only."),
    ("detectable_format:json_format", {}, '```json\n{"a": 1}\n```', "a: 1"),
    ("detectable_format:title", {}, "<<My Day>>\nIt was fine.", "My Day\nIt was fine."),
    ("combination:two_responses", {},
     "Answer one.\n******\nAnswer two.", "Answer one.\n******\nAnswer one."),
    ("combination:repeat_prompt", {"prompt_to_repeat": "Write a riddle."},
     "Write a riddle. What has keys but no locks? A piano.",
     "Here is a riddle: what has keys but no locks?"),
    ("startend:end_checker", {"end_phrase": "Any other questions?"},
     "Tea is good for you. Any other questions?", "Any other questions? Tea is good."),
    ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"},
     "This is VERY IMPORTANT news.", "This is VERY important news."),
    ("change_case:english_capital", {},
     "THIS IS A SIMPLE ENGLISH SENTENCE ABOUT THE WEATHER TODAY.",
     "This is a simple English sentence about the weather today."),
    ("change_case:english_lowercase", {},
     "this is a simple english sentence about the weather today.",
     "This is a simple English sentence about the weather today."),
    ("punctuation:no_comma", {}, "There are no commas here.", "Well, here is one."),
    ("startend:quotation", {}, '"Wrapped text is here."', "Not wrapped at all."),
]


def _if_verifiable(tid, kwargs, response):
    sample = IFEvalSample(key=0, prompt="", instruction_id_list=[tid], kwargs=[kwargs])
    results, _ = evaluate_output_for_sample("ifeval", sample, response)
    return results[0].strict_pass


def test_cases_cover_all_ifeval_types():
    assert sorted(t for t, *_ in IFEVAL_CASES) == sorted(C.IFEVAL_IDS)
    assert len(C.IFEVAL_IDS) == 25
    assert set(C.IFEVAL_IDS) <= set(C.REGISTRY)


@pytest.mark.parametrize("tid,kwargs,good,bad", IFEVAL_CASES, ids=[c[0] for c in IFEVAL_CASES])
def test_ifeval_verifier_agrees_with_if_verifiable(tid, kwargs, good, bad):
    c = C.make(tid, **kwargs)
    assert c.verify(good) is True
    assert c.verify(bad) is False
    assert _if_verifiable(tid, kwargs, good) is True
    assert _if_verifiable(tid, kwargs, bad) is False


def test_microworld_verifiers_hand_checked():
    two = C.make("microworld:exact_sentences", num_sentences=2)
    assert two.verify("The sky is blue. The grass is green.") is True
    assert two.verify("The sky is blue.") is False
    assert two.verify("The sky is blue. The grass is green. Water is wet.") is False
    start = C.make("microworld:start_word", first_word="Today")
    assert start.verify('"Today, we rest by the river."') is True  # quotes/case ignored
    assert start.verify("**Today** we rest.") is True  # markdown ignored
    assert start.verify("We rest today.") is False
    assert start.verify("Todays are long.") is False
    assert start.verify("") is False


def test_free_text_is_unknown_and_verify_all():
    cons = [C.make("punctuation:no_comma"), C.free_text("Use a formal tone."),
            C.make("microworld:start_word", first_word="hello")]
    assert C.verify_all("Hello world, friend.", cons) == [False, None, True]


def test_loose_mode_uses_ifeval_transformations():
    c = C.make("startend:end_checker", end_phrase="Any other questions?")
    response = "Tea is good. Any other questions?\nHope this helps"
    assert c.verify(response) is False
    assert c.verify(response, loose=True) is True


def test_letter_frequency_accepts_symbols():
    # Real IFEval prompts ask for e.g. "6 or more exclamation marks"; if_verifiable would
    # replace "!" by a random letter, so we count the character itself.
    c = C.make("keywords:letter_frequency", letter="!", let_frequency=3, let_relation="at least")
    assert c.verify("Wow! Great! Yes!") is True
    assert c.verify("Wow! Great.") is False


def test_errors_name_the_id_and_what_is_expected():
    with pytest.raises(ValueError, match="unknown constraint id 'no:such'"):
        C.verify("x", Constraint("no:such"))
    with pytest.raises(ValueError, match=r"'keywords:existence'.*missing.*keywords"):
        C.make("keywords:existence")
    with pytest.raises(ValueError, match="relation"):
        C.make("length_constraints:number_words", num_words=3, relation="about")
    with pytest.raises(ValueError, match="nth_paragraph"):
        C.make("length_constraints:nth_paragraph_first_word", num_paragraphs=2,
               nth_paragraph=3, first_word="a")
    with pytest.raises(ValueError, match="free_text"):
        C.render(Constraint("free_text"))
    with pytest.raises(ValueError, match="id"):
        Constraint.from_dict({"kwargs": {}})


def _samples(seed=0, rounds=3):
    rng = random.Random(seed)
    return [ct.sample(rng) for _ in range(rounds) for ct in C.REGISTRY.values()
            if ct.sampler is not None]


def test_registry_entries_sample_render_and_round_trip_json():
    for tid, ct in C.REGISTRY.items():
        assert len(ct.templates) >= (1 if tid == C.FREE_TEXT else 3), tid
    assert set(C.MICROWORLD_IDS) <= set(C.REGISTRY)
    cons = _samples() + [C.free_text("Be concise."),
                         C.make("combination:repeat_prompt", prompt_to_repeat="Say hi.")]
    for c in cons:
        C.validate(c)
        texts = {C.render(c, v) for v in range(len(c.type.templates))}
        assert len(texts) == len(c.type.templates) and all(t.strip() for t in texts)
        back = Constraint.from_dict(json.loads(json.dumps(c.to_dict())))
        assert back == c and hash(back) == hash(c)


def test_kwargs_are_copied():
    words = ["sun"]
    c = C.make("keywords:existence", keywords=words)
    words.append("moon")
    assert c.kwargs["keywords"] == ["sun"]


def test_custom_pool():
    pool = C.ArgPool(words=("zebra",), word_counts=(7,))
    rng = random.Random(0)
    assert C.sample("keywords:existence", rng, pool).kwargs["keywords"] == ["zebra"]
    assert C.sample("length_constraints:number_words", rng, pool).kwargs["num_words"] == 7
    with pytest.raises(ValueError, match="repeat_prompt"):
        C.sample("combination:repeat_prompt", rng)


def test_negations():
    low, cap = C.make("change_case:english_lowercase"), C.make("change_case:english_capital")
    assert C.negate(low) == cap and C.negate(cap) == low
    inc = C.make("keywords:existence", keywords=["sun", "moon"])
    assert C.negate(inc) == C.make("keywords:forbidden_words", forbidden_words=["sun", "moon"])
    words = C.make("length_constraints:number_words", num_words=300, relation="at least")
    assert C.negate(words).kwargs == {"num_words": 300, "relation": "less than"}
    for tid in ("punctuation:no_comma", "detectable_format:json_format",
                "microworld:start_word", "startend:end_checker"):
        assert not C.get_type(tid).negatable
    for c in _samples(1):
        n = C.negate(c)
        if n is not None:
            assert n != c and C.negate(n) == c  # negation is an involution


def test_relation_negation_verifies_as_the_complement():
    rng = random.Random(3)
    responses = ["The river runs. The river sings! A STONE, A CLOUD and the river again.",
                 "short", "Light light LIGHT. Market stone bridge cloud story music."]
    tids = ("length_constraints:number_words", "length_constraints:number_sentences",
            "keywords:frequency", "keywords:letter_frequency",
            "change_case:capital_word_frequency")
    for _ in range(10):
        for tid in tids:
            c = C.sample(tid, rng)
            for r in responses:
                assert C.verify(r, c) != C.verify(r, C.negate(c)), (c, r)


def test_compatibility_rules():
    mk = C.make
    assert not C.compatible(mk("change_case:english_lowercase"), mk("change_case:english_capital"))
    assert not C.compatible(mk("detectable_format:json_format"),
                            mk("detectable_format:number_bullet_lists", num_bullets=3))
    lo = mk("length_constraints:number_words", num_words=300, relation="at least")
    hi = mk("length_constraints:number_words", num_words=200, relation="less than")
    ok_hi = mk("length_constraints:number_words", num_words=400, relation="less than")
    assert not C.compatible(lo, hi) and C.compatible(lo, ok_hi)
    assert not C.compatible(lo, lo)
    assert not C.compatible(mk("keywords:existence", keywords=["Sun"]),
                            mk("keywords:forbidden_words", forbidden_words=["sun"]))
    assert C.compatible(mk("keywords:existence", keywords=["sun"]),
                        mk("keywords:forbidden_words", forbidden_words=["moon"]))
    assert not C.compatible(mk("punctuation:no_comma"),
                            mk("startend:end_checker", end_phrase="Bye, friend."))
    assert not C.compatible(mk("microworld:exact_sentences", num_sentences=5),
                            mk("length_constraints:number_sentences", num_sentences=4,
                               relation="less than"))
    assert C.compatible(mk("punctuation:no_comma"), C.free_text("Be brief."))
    cons = _samples(2, rounds=2)
    for a in cons:  # symmetric
        for b in cons:
            assert C.compatible(a, b) == C.compatible(b, a)


def _run_without_nltk_env(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NLTK_DATA"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=tempfile.gettempdir(), timeout=120)


def test_nltk_data_is_found_without_NLTK_DATA():
    """The README's main command sets no NLTK_DATA: the verifiers find ../shared/nltk_data."""
    proc = _run_without_nltk_env(
        "from musc_jax.data.constraints import make, verify\n"
        "print(verify('One here. Two here.', make('microworld:exact_sentences', num_sentences=2)))")
    assert proc.returncode == 0 and proc.stdout.strip() == "True", proc.stderr[-2000:]


def test_missing_nltk_data_names_what_to_set():
    proc = _run_without_nltk_env(
        "import nltk\n"
        "try:\n    nltk.data.find('tokenizers/punkt_tab/english/'); print('INSTALLED')\n"
        "except LookupError:\n    pass\n"
        "from musc_jax.data import constraints as C\n"
        "C.SHARED_NLTK_DATA = ()\n"
        "C.verify('One. Two.', C.make('microworld:exact_sentences', num_sentences=2))")
    if "INSTALLED" in proc.stdout:
        pytest.skip("this machine has NLTK's punkt_tab installed system-wide")
    assert proc.returncode != 0
    assert "set NLTK_DATA to a directory holding tokenizers/punkt_tab" in proc.stderr
