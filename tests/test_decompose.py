"""Rule and self decomposition: IFEval dev thresholds, hand-written prompts in IFEval style
(not from the dev file), template round trips, task/input split, robust self-decompose parsing."""

import json
import random
from pathlib import Path

import pytest

from musc_jax.data import constraints as C
from musc_jax.data.decompose import (SELF_DECOMPOSE_EXAMPLES, Decomposition, build_decompose_messages,
                                     decompose_instruction, kwargs_match, parse_decomposition,
                                     parse_num, rule_decompose, score_rule_decompose,
                                     self_decompose)
from musc_jax.data.recombine import compose

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "ifeval_dev.jsonl"


@pytest.fixture(scope="module")
def dev_rows():
    if not DEV.exists():
        pytest.skip(f"{DEV} not present")
    return [json.loads(line) for line in DEV.read_text().splitlines() if line.strip()]


def test_rule_decompose_on_ifeval_dev(dev_rows):
    score = score_rule_decompose(dev_rows)
    assert len(dev_rows) == 120
    assert score.precision >= 0.9, score.spurious
    assert score.recall >= 0.9, score.missed
    assert score.kwargs_accuracy >= 0.8, score.wrong_kwargs


PHRASINGS = Path(__file__).resolve().parent / "data" / "decompose_phrasings.jsonl"


def test_rule_decompose_on_our_own_phrasings():
    """Phrasings written from the constraint definitions (not from IFEval prompts), one or two
    per type (issue 13 item 6). Known miss: a repeat-the-request instruction whose request
    comes after it (IFEval puts the request first)."""
    rows = [json.loads(line) for line in PHRASINGS.read_text().splitlines() if line.strip()]
    score = score_rule_decompose(rows)
    assert len(rows) == 48
    assert score.precision == 1.0, score.spurious
    assert score.recall >= 47 / 48, score.missed
    assert score.kwargs_accuracy == 1.0, score.wrong_kwargs


def test_score_handles_duplicate_ids():
    row = {"prompt": "Answer in 100 to 120 words.",
           "instruction_id_list": ["length_constraints:number_words"] * 2,
           "kwargs": [{"relation": "less than", "num_words": 121},
                      {"relation": "at least", "num_words": 100}]}
    s = score_rule_decompose([row])
    assert (s.precision, s.recall, s.kwargs_accuracy) == (1.0, 1.0, 1.0)
    s = score_rule_decompose([dict(row, prompt="Answer in at least 100 words.")])
    assert (s.precision, s.recall, s.kwargs_accuracy) == (1.0, 0.5, 1.0)


# Written for this test in the style of IFEval prompts; none is taken from the dev file.
HAND_WRITTEN = [
    ('Write a limerick about a cat who loves jazz. Your entire answer should be in '
     'lowercase letters and must not contain any commas.',
     [('change_case:english_lowercase', {}),
      ('punctuation:no_comma', {})]),
    ('Describe your ideal weekend in fewer than 80 words. Make sure to include the '
     'keywords "hiking" and "pancakes".',
     [('length_constraints:number_words', {'relation': 'less than', 'num_words': 80}),
      ('keywords:existence', {'keywords': ['hiking', 'pancakes']})]),
    ('Explain photosynthesis to a child. Your response must have 3 sections. Mark the '
     'beginning of each section with Part X.',
     [('detectable_format:multiple_sections', {'section_spliter': 'Part', 'num_sections': 3})]),
    ('Draft an email to my landlord about a leaking tap. At the end of your response, '
     'please explicitly add a postscript starting with P.S.',
     [('detectable_content:postscript', {'postscript_marker': 'P.S.'})]),
    ('List the planets of the solar system. Your answer must contain exactly 8 bullet '
     'points. Use the markdown bullet points such as:\n* This is point 1.',
     [('detectable_format:number_bullet_lists', {'num_bullets': 8})]),
    ('Write a product review of a fictional blender in Spanish, no other language is '
     'allowed.',
     [('language:response_language', {'language': 'es'})]),
    ('Tell me about the history of tea. Answer with at least 400 words, and wrap your '
     'entire response with double quotation marks.',
     [('length_constraints:number_words', {'relation': 'at least', 'num_words': 400}),
      ('startend:quotation', {})]),
    ('Compose a tweet about recycling. In your response, the letter z should appear at '
     'least 3 times.',
     [('keywords:letter_frequency', {'letter': 'z', 'let_relation': 'at least', 'let_frequency': 3})]),
    ('Write a haiku about autumn. Do not include the words leaves or red in your haiku.',
     [('keywords:forbidden_words', {'forbidden_words': ['leaves', 'red']})]),
    ('Give me a motivational speech. In your response, the word "success" should appear '
     'at least 4 times.',
     [('keywords:frequency', {'keyword': 'success', 'relation': 'at least', 'frequency': 4})]),
    ('Write a cover letter for a barista job. Include a title wrapped in double angular '
     'brackets, such as <<my application>>. Your response should contain less than 12 '
     'sentences.',
     [('detectable_format:title', {}),
      ('length_constraints:number_sentences', {'relation': 'less than', 'num_sentences': 12})]),
    ('Is it better to rent or buy a house? Give two different responses. Responses and '
     'only responses should be separated by 6 asterisk symbols: ******.',
     [('combination:two_responses', {})]),
    ('Write a short essay on remote work. There should be 4 paragraphs. Paragraphs are '
     'separated with the markdown divider: ***',
     [('length_constraints:number_paragraphs', {'num_paragraphs': 4})]),
    ('Write a story about a dragon. There should be 5 paragraphs. Paragraphs and only '
     "paragraphs are separated with each other by two new lines as if it was '\\n\\n' in "
     'python. Paragraph 3 must start with word fire.',
     [('length_constraints:nth_paragraph_first_word', {'num_paragraphs': 5, 'nth_paragraph': 3, 'first_word': 'fire'})]),
    ('Create a grocery list template. The response must contain at least 5 placeholders '
     'represented by square brackets, such as [item].',
     [('detectable_content:number_placeholders', {'num_placeholders': 5})]),
    ('Summarize the plot of Hamlet. Highlight at least 4 sections in your answer with '
     'markdown, i.e. *highlighted section*.',
     [('detectable_format:number_highlighted_sections', {'num_highlights': 4})]),
    ('Is the Great Wall of China visible from space? Answer with one of the following '
     'options: ("My answer is yes.", "My answer is no.", "My answer is maybe.")',
     [('detectable_format:constrained_response', {})]),
    ('Write a song about the sea. Your entire response should be in English, and in all '
     'capital letters. In your response, the word ocean should appear less than 3 times.',
     [('change_case:english_capital', {}),
      ('keywords:frequency', {'keyword': 'ocean', 'relation': 'less than', 'frequency': 3})]),
    ('Describe a sunset. Finish your response with this exact phrase Is there anything '
     'else I can help with?. No other words should follow this phrase.',
     [('startend:end_checker', {'end_phrase': 'Is there anything else I can help with?'})]),
    ('Write a riddle. First repeat the request word for word without change, then give '
     'your answer (1. do not say any words or characters before repeating the request; '
     '2. the request you need to repeat does not include this sentence)',
     [('combination:repeat_prompt', {'prompt_to_repeat': 'Write a riddle.'})]),
    ('What is the capital of France? Your ENTIRE response should be in French language, '
     'no other language is allowed.',
     [('language:response_language', {'language': 'fr'})]),
    ('Write a blog post about coffee. In your response, words with all capital letters '
     'should appear at least 5 times.',
     [('change_case:capital_word_frequency', {'capital_relation': 'at least', 'capital_frequency': 5})]),
    ('Write an ad for a bakery. Entire output should be wrapped in JSON format. You can '
     'use markdown ticks such as ```.',
     [('detectable_format:json_format', {})]),
    ('Write a poem about mountains. In your entire response, refrain from the use of any '
     'commas.',
     [('punctuation:no_comma', {})]),
    ('Rewrite this sentence in a formal tone: "gonna be late, sorry". Your answer must '
     'be between 20 and 40 words.',
     [('length_constraints:number_words', {'relation': 'at least', 'num_words': 20}),
      ('length_constraints:number_words', {'relation': 'less than', 'num_words': 41})]),
    ("Write a dialogue between a teacher and a student. Include keywords ['exam', "
     "'homework'] in the response.",
     [('keywords:existence', {'keywords': ['exam', 'homework']})]),
    ('Write a joke about penguins. Make sure the letter p appears fewer than 5 times.',
     [('keywords:letter_frequency', {'letter': 'p', 'let_relation': 'less than', 'let_frequency': 5})]),
    ('Write an itinerary for Paris. Use at most 150 words.',
     [('length_constraints:number_words', {'relation': 'less than', 'num_words': 151})]),
    ('Write a speech about climate. Please make sure to italicize at least 3 key phrases '
     'using markdown, for example *key phrase*.',
     [('detectable_format:number_highlighted_sections', {'num_highlights': 3})]),
    ('Write a short biography of Marie Curie. Your answer should start with the word '
     'Marie.',
     [('microworld:start_word', {'first_word': 'Marie'})]),
    ('Write a story about a robot that learns to paint. Answer in exactly 6 sentences.',
     [('microworld:exact_sentences', {'num_sentences': 6})]),
    ('Answer the following question in Japanese only: what is your favourite season?',
     [('language:response_language', {'language': 'ja'})]),
    ('Write a motivational quote. The response should be in English and all in '
     'lowercase, no capital letters.',
     [('change_case:english_lowercase', {})]),
    ('Please write two paragraphs about bees, with the two paragraphs separated by the '
     'markdown divider ***.',
     [('length_constraints:number_paragraphs', {'num_paragraphs': 2})]),
    ('Write an essay about chess with more than 12 sentences. Do not mention the words '
     '"king" or "queen".',
     [('length_constraints:number_sentences', {'relation': 'at least', 'num_sentences': 13}),
      ('keywords:forbidden_words', {'forbidden_words': ['king', 'queen']})]),
    ('Tell me a fun fact about octopuses.',
     []),
    ('Explain why the sky is blue, using simple words a child would understand.',
     []),
    ('Write a list of 10 tips for better sleep.',
     []),
    ('What is the difference between a comma and a semicolon?',
     []),
    ('Write a short poem about the moon without using the letter e more than twice.',
     [('keywords:letter_frequency', {'letter': 'e', 'let_relation': 'less than', 'let_frequency': 3})]),
    ('Write a travel guide to Lisbon. Your response should contain 3 paragraphs. You '
     'separate paragraphs using the markdown divider: * * *',
     [('length_constraints:number_paragraphs', {'num_paragraphs': 3})]),
    ('Write a review of a pizza place. The response must contain at least 2 placeholders '
     '(e.g., [restaurant]).',
     [('detectable_content:number_placeholders', {'num_placeholders': 2})]),
    ('Explain quantum computing. Put your entire response inside double quotation marks.',
     [('startend:quotation', {})]),
    ("Write a chant for a football team. In your response, the letter 'a' should appear "
     'at least 10 times.',
     [('keywords:letter_frequency', {'letter': 'a', 'let_relation': 'at least', 'let_frequency': 10})]),
    ('Describe the monsoon season. Please respond using only the Punjabi language, no '
     'other language is allowed.',
     [('language:response_language', {'language': 'pa'})]),
    ("Write a poem about trains. Do not include the keywords: 'steam', 'track'.",
     [('keywords:forbidden_words', {'forbidden_words': ['steam', 'track']})]),
    ('Explain how vaccines work. Respond with at least 3 highlighted sections using '
     'markdown, like *this*.',
     [('detectable_format:number_highlighted_sections', {'num_highlights': 3})]),
    ('Write a slogan for a gym. Answer in all caps.',
     [('change_case:english_capital', {})]),
    ('Write a short note to a colleague. Use words in all caps at least 3 times.',
     [('change_case:capital_word_frequency', {'capital_relation': 'at least', 'capital_frequency': 3})]),
    ('Summarize the benefits of walking. Highlight the key points with bold markdown.',
     [('detectable_format:number_highlighted_sections', {'num_highlights': 1})]),
    ('Tell me about the river Ganges. Your answer should be written entirely in Bengali.',
     [('language:response_language', {'language': 'bn'})]),
    ('Make your reply short -- the whole reply should contain less than 30 words.',
     [('length_constraints:number_words', {'relation': 'less than', 'num_words': 30})]),
    ('Write a recipe for pancakes. Do not use the word flour more than twice.',
     [('keywords:frequency', {'keyword': 'flour', 'relation': 'less than', 'frequency': 3})]),
    ('Plan a birthday party. Your response should have 2 sections. Mark the beginning of '
     'each section with SECTION X, such as: SECTION 1',
     [('detectable_format:multiple_sections', {'section_spliter': 'SECTION', 'num_sections': 2})]),
    ('Write a fable about a fox. End your story with the exact sentence: The fox never '
     'lied again.',
     [('startend:end_checker', {'end_phrase': 'The fox never lied again.'})]),
    ('Write a resume summary for a nurse. Make sure the word patient appears at least '
     'three times and the word doctor at least once.',
     [('keywords:frequency', {'keyword': 'patient', 'relation': 'at least', 'frequency': 3}),
      ('keywords:frequency', {'keyword': 'doctor', 'relation': 'at least', 'frequency': 1})]),
]


@pytest.mark.parametrize("text,expected", HAND_WRITTEN, ids=[f"p{i}" for i in range(len(HAND_WRITTEN))])
def test_rule_decompose_hand_written(text, expected):
    got = rule_decompose(text)
    assert len(got) == len(expected), got
    for tid, kw in expected:
        assert any(c.id == tid and kwargs_match(c.kwargs, kw) and kwargs_match(kw, c.kwargs)
                   for c in got), (tid, kw, got)


def _same(a, b):
    return a.id == b.id and kwargs_match(a.kwargs, b.kwargs) and kwargs_match(b.kwargs, a.kwargs)


def test_every_template_parses_back():
    rng = random.Random(0)
    for _ in range(5):
        for tid, ct in C.REGISTRY.items():
            if ct.sampler is None:
                continue
            c = ct.sample(rng)
            for v in range(len(ct.templates)):
                text = "Write a note about rivers. " + C.render(c, v)
                got = rule_decompose(text)
                assert len(got) == 1 and _same(got[0], c), (text, got)


def test_composed_instructions_parse_back():
    rng = random.Random(1)
    ids = [t for t, ct in C.REGISTRY.items() if ct.sampler is not None]
    for _ in range(300):
        cons = []
        for _ in range(rng.randint(2, 5)):
            for _ in range(20):
                c = C.sample(rng.choice(ids), rng)
                if C.compatible_with_all(c, cons):
                    cons.append(c)
                    break
        text = compose("Write a short note about the harbour", cons, seed=rng.randint(0, 99),
                       style=rng.choice(["paragraph", "lines", "list"]))
        got = rule_decompose(text)
        assert len(got) == len(cons) and all(any(_same(g, c) for g in got) for c in cons), text


def test_repeat_prompt_and_numbers():
    text = ("Write a haiku about tea. Use at most 30 words.\nFirst repeat the request above word for "
            "word without change, then give your answer.")
    got = {c.id: c.kwargs for c in rule_decompose(text)}
    assert got["combination:repeat_prompt"] == {
        "prompt_to_repeat": "Write a haiku about tea. Use at most 30 words."}
    assert got["length_constraints:number_words"] == {"num_words": 31, "relation": "less than"}
    assert [parse_num(s) for s in ("twenty-five", "1,200", "a hundred", "twelve", "7")] == [
        25, 1200, 100, 12, 7]
    assert rule_decompose("Tell me about tea.", microworld=False) == []
    assert rule_decompose("Start your answer with the word Hello.", microworld=False) == []


def test_decompose_instruction_splits_task_constraints_input():
    d = decompose_instruction("Write a haiku about a lion that includes the keywords \"forest\" "
                              "and \"moon\". Do not use any commas.")
    assert d.task == "Write a haiku about a lion."
    assert [c.id for c in d.constraints] == ["keywords:existence", "punctuation:no_comma"]
    assert d.input is None
    d = decompose_instruction("Summarize the text below. Answer with less than 50 words.\n\n"
                              "The harbour was busy. Ships came and went all day.")
    assert d.task == "Summarize the text below."
    assert d.input == "The harbour was busy. Ships came and went all day."
    assert [c.id for c in d.constraints] == ["length_constraints:number_words"]
    d = decompose_instruction("Write a rap about the sea in exactly 4 paragraphs. Separate "
                              "paragraphs with the markdown divider: ***.")
    assert d.task == "Write a rap about the sea."
    assert d.constraints == [C.make("length_constraints:number_paragraphs", num_paragraphs=4)]
    d = decompose_instruction("List three fruits. Your answer must contain exactly 3 bullet "
                              "points, like:\n* apple\n* pear")
    assert d.task == "List three fruits."
    back = Decomposition.from_dict(json.loads(json.dumps(d.to_dict())))
    assert back == d


GOOD = "TASK: Write a poem about rain.\nCONSTRAINT: Use less than 50 words.\nCONSTRAINT: Be sad.\n"
MESSY = ("  **Task**:   Write a poem about rain.  \n\n"
         "1. constraint: do not use any commas\n"
         "- CONSTRAINT 2 - Be sad\n"
         "Constraints:\n  * include the keyword \"cloud\"\n  * end with a question\n"
         "INPUT: none")


def test_parse_decomposition_is_robust():
    d = parse_decomposition(GOOD)
    assert d.task == "Write a poem about rain."
    assert d.constraints[0].id == "length_constraints:number_words"  # typed when recognised
    assert d.constraints[0].text == "Use less than 50 words."
    assert d.constraints[1] == C.free_text("Be sad.")
    d = parse_decomposition(MESSY)
    assert d.task == "Write a poem about rain."
    assert [c.id for c in d.constraints] == ["punctuation:no_comma", "free_text",
                                            "keywords:existence", "free_text"]
    assert d.input is None
    d = parse_decomposition("TASK: Translate it\nCONSTRAINT: Be formal\nINPUT: Hola\namigo\n"
                            "TASK: another example the model made up")
    assert (d.task, d.input, len(d.constraints)) == ("Translate it", "Hola\namigo", 1)


def test_self_decompose_counts_drops_and_passes_temperature():
    seen = {}

    def generate(convs, temperature=1.0):
        seen["temperature"] = temperature
        seen["n"] = len(convs)
        assert convs[0][-1]["content"].endswith("first")
        return [GOOD, "I cannot help with that.", "TASK: Say hi.\nCONSTRAINT: Be brief.", None,
                MESSY]

    texts = ["first", "second", "third", "fourth", "fifth"]
    decs, stats = self_decompose(texts, generate)
    assert seen == {"temperature": 0.2, "n": 5}
    assert [d is not None for d in decs] == [True, False, False, False, True]
    assert stats.to_dict() == {"total": 5, "kept": 2, "parse_failures": 2,
                               "too_few_constraints": 1}
    decs, stats = self_decompose(texts[:1], lambda convs: [GOOD], batch_size=1)
    assert stats.kept == 1 and decs[0].task == "Write a poem about rain."
    with pytest.raises(ValueError, match="returned 0 outputs"):
        self_decompose(texts, lambda convs: [])


def test_few_shot_prompt_uses_our_examples():
    msgs = build_decompose_messages("Write a poem.")
    assert msgs[0]["role"] == "system" and msgs[-1]["content"].endswith("Write a poem.")
    assert len(msgs) == 2 + 2 * len(SELF_DECOMPOSE_EXAMPLES)
    for (instr, task, cons, inp), answer in zip(SELF_DECOMPOSE_EXAMPLES, msgs[2::2]):
        d = parse_decomposition(answer["content"])
        assert d.task == task and len(d.constraints) == len(cons) and d.input == inp
