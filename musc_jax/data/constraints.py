"""Typed constraint taxonomy: constraints, their types, verifiers, renderings, negations.

A `Constraint` is a plain value (id + IFEval-style kwargs, or free text). Its `ConstraintType`
in `REGISTRY` knows how to sample arguments, verify a response, render the constraint as a
sentence, negate it, what may substitute it, and which other constraints it cannot be combined
with. IFEval types are verified by calling `if_verifiable`; the two microworld-only types
(`microworld:exact_sentences`, `microworld:start_word`) have their own small verifiers.

Negation is defined only where a clean opposite exists (relations flip "at least" <-> "less
than", lowercase <-> uppercase, include <-> forbid keywords). Everywhere else `negate` returns
None and the corrupter (`recombine.corrupt`) falls back to substitution, then to dropping.
"""

from __future__ import annotations

import copy
import functools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import langdetect
from if_verifiable.common import get_loose_transformations
from if_verifiable.ifeval import instructions_util
from if_verifiable.ifeval.instructions_registry import INSTRUCTION_CONFLICTS, INSTRUCTION_DICT

# langdetect is random by default; two checks of the same text must agree (resumable pair
# building, reproducible evals), so seed it once for the process.
langdetect.DetectorFactory.seed = 0

FREE_TEXT = "free_text"
RELATIONS = ("less than", "at least")
LANGUAGE_CODES: Mapping[str, str] = dict(instructions_util.LANGUAGE_CODES)
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
            "ninth", "tenth")
CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


# --------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Constraint:
    """One constraint: a registered type id with IFEval-style kwargs, or free text.

    `kwargs` is copied on creation; treat it as read-only (the dataclass is frozen).
    """

    id: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    text: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kwargs", copy.deepcopy(dict(self.kwargs or {})))

    def __hash__(self) -> int:
        return hash(self.key())

    def key(self) -> str:
        """A stable string identity (JSON with sorted keys), also used to seed template choice."""
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "kwargs": copy.deepcopy(dict(self.kwargs))}
        if self.text is not None:
            d["text"] = self.text
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Constraint":
        if "id" not in d:
            raise ValueError(f"constraint dict needs an 'id' field, got keys {sorted(d)}")
        return cls(id=d["id"], kwargs=dict(d.get("kwargs") or {}), text=d.get("text"))

    @property
    def type(self) -> "ConstraintType":
        return get_type(self.id)

    def verify(self, response: str, loose: bool = False) -> bool | None:
        return verify(response, self, loose=loose)

    def render(self, variant: int = 0) -> str:
        return render(self, variant)


def free_text(text: str) -> Constraint:
    """A non-verifiable constraint known only by its wording."""
    return Constraint(FREE_TEXT, {}, text=text)


@dataclass(frozen=True)
class ArgPool:
    """Small pools that argument samplers draw from (defaults suit the microworld's scale)."""

    words: tuple[str, ...] = ("river", "garden", "music", "winter", "ocean", "forest", "light",
                              "stone", "market", "bridge", "cloud", "story")
    phrases: tuple[str, ...] = ("Is there anything else I can help with?",
                                "Any other questions?", "That is all for today.",
                                "Thanks for reading.")
    letters: str = "abcdeilmnorst"
    languages: tuple[str, ...] = ("de", "fr", "es", "it", "pt")
    word_counts: tuple[int, ...] = (20, 30, 40, 50, 80, 100)
    sentence_counts: tuple[int, ...] = (2, 3, 4, 5, 6)
    small_counts: tuple[int, ...] = (1, 2, 3, 4)
    frequencies: tuple[int, ...] = (2, 3, 4, 5)


DEFAULT_POOL = ArgPool()

Sampler = Callable[[random.Random, ArgPool], dict]
Verifier = Callable[[str, Mapping[str, Any], bool], bool]


@dataclass(frozen=True)
class ConstraintType:
    """Everything the pipeline needs to know about one kind of constraint."""

    id: str
    arg_names: tuple[str, ...]
    templates: tuple[str, ...]  # str.format templates over the kwargs and `fields` extras
    verifier: Verifier | None  # (response, kwargs, loose) -> bool; None: not verifiable
    sampler: Sampler | None = None  # None: cannot be generated out of context
    negation: Callable[[Mapping[str, Any]], Constraint] | None = None
    substitutes: tuple[str, ...] = ()
    fields: Callable[[Mapping[str, Any]], dict] | None = None
    family: str = ""

    @property
    def negatable(self) -> bool:
        return self.negation is not None

    def sample(self, rng: random.Random, pool: ArgPool = DEFAULT_POOL) -> Constraint:
        if self.sampler is None:
            raise ValueError(f"constraint type {self.id!r} has no argument sampler "
                             "(its arguments depend on the instruction)")
        return Constraint(self.id, self.sampler(rng, pool))


REGISTRY: dict[str, ConstraintType] = {}


def register(ctype: ConstraintType) -> ConstraintType:
    if len(ctype.templates) < 3 and ctype.id != FREE_TEXT:
        raise ValueError(f"constraint type {ctype.id!r} needs at least 3 templates")
    REGISTRY[ctype.id] = ctype
    return ctype


def get_type(type_id: str) -> ConstraintType:
    try:
        return REGISTRY[type_id]
    except KeyError:
        raise ValueError(f"unknown constraint id {type_id!r}; expected one of "
                         f"{sorted(REGISTRY)}") from None


def validate(c: Constraint) -> Constraint:
    """Raise ValueError naming the id if the type is unknown or an argument is missing."""
    ctype = get_type(c.id)
    if c.id == FREE_TEXT:
        if not c.text:
            raise ValueError("constraint 'free_text' needs a non-empty `text`")
        return c
    missing = [a for a in ctype.arg_names if c.kwargs.get(a) is None]
    if missing:
        raise ValueError(f"constraint {c.id!r} is missing argument(s) {missing}; "
                         f"expected {list(ctype.arg_names)}")
    for a in ("relation", "let_relation", "capital_relation"):
        if a in ctype.arg_names and c.kwargs[a] not in RELATIONS:
            raise ValueError(f"constraint {c.id!r}: {a} must be one of {RELATIONS}, "
                             f"got {c.kwargs[a]!r}")
    if c.id == "length_constraints:nth_paragraph_first_word" and not (
            1 <= int(c.kwargs["nth_paragraph"]) <= int(c.kwargs["num_paragraphs"])):
        raise ValueError(f"constraint {c.id!r}: nth_paragraph must be in 1..num_paragraphs")
    if c.id == "language:response_language" and c.kwargs["language"] not in LANGUAGE_CODES:
        raise ValueError(f"constraint {c.id!r}: language must be one of "
                         f"{sorted(LANGUAGE_CODES)}, got {c.kwargs['language']!r}")
    return c


def make(type_id: str, text: str | None = None, **kwargs: Any) -> Constraint:
    """Build and validate a constraint: `make("keywords:existence", keywords=["sun"])`."""
    return validate(Constraint(type_id, kwargs, text))


def sample(type_id: str, rng: random.Random, pool: ArgPool = DEFAULT_POOL) -> Constraint:
    return get_type(type_id).sample(rng, pool)


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def _ifeval(instruction_id: str) -> Verifier:
    """A verifier that runs if_verifiable's checker (strict, or loose as IFEval defines it)."""
    checker_cls = INSTRUCTION_DICT[instruction_id]

    def check(response: str, kwargs: Mapping[str, Any], loose: bool) -> bool:
        checker = checker_cls(instruction_id)
        checker.build_description(**{k: v for k, v in kwargs.items() if v is not None})
        variants = get_loose_transformations(response) if loose else [response]
        # Like if_verifiable's evaluate_instructions: an empty response never passes.
        return any(bool(v.strip()) and bool(checker.check_following(v)) for v in variants)

    return check


def _letter_frequency(response: str, kwargs: Mapping[str, Any], loose: bool) -> bool:
    letter = str(kwargs["letter"])
    if len(letter) == 1 and letter.isascii() and letter.isalpha():
        return _ifeval("keywords:letter_frequency")(response, kwargs, loose)
    # IFEval's checker silently replaces a non-letter (e.g. "!") by a random letter; count the
    # character itself instead so such constraints (real IFEval prompts have them) stay checkable.
    variants = get_loose_transformations(response) if loose else [response]
    n = int(kwargs["let_frequency"])
    less = kwargs["let_relation"] == "less than"
    return any(v.strip() and ((v.count(letter) < n) if less else (v.count(letter) >= n))
               for v in variants)


def _exact_sentences(response: str, kwargs: Mapping[str, Any], loose: bool) -> bool:
    # Same sentence counter as IFEval's number_sentences, so the two types agree on a response.
    return bool(response.strip()) and (
        instructions_util.count_sentences(response) == int(kwargs["num_sentences"]))


_LEADING_NOISE = "\"'“‘*#_`([ \t\n-"


def _start_word(response: str, kwargs: Mapping[str, Any], loose: bool) -> bool:
    """First word (case-insensitive, ignoring leading quotes/markdown) equals `first_word`."""
    words = response.lstrip(_LEADING_NOISE).split()
    if not words:
        return False
    first = re.match(r"[\w'-]*", words[0]).group(0).lower()
    return first == str(kwargs["first_word"]).strip().lower()


# Where this project keeps the NLTK data the IFEval verifiers need (punkt_tab, stopwords) when
# NLTK_DATA is not set: the `shared/` directory beside the checkout.
SHARED_NLTK_DATA = (Path(__file__).resolve().parents[3] / "shared" / "nltk_data",
                    Path.cwd().parent / "shared" / "nltk_data")


@functools.cache
def _find_nltk_data() -> None:
    """Add the project's shared NLTK data to nltk's search path when nltk cannot find punkt_tab."""
    import nltk
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    for candidate in SHARED_NLTK_DATA:
        if (candidate / "tokenizers" / "punkt_tab").is_dir() and str(candidate) not in nltk.data.path:
            nltk.data.path.append(str(candidate))
            return


def verify(response: str, c: Constraint, loose: bool = False) -> bool | None:
    """True/False for a verifiable constraint, None ("unknown") for free text."""
    validate(c)
    ctype = REGISTRY[c.id]
    if ctype.verifier is None:
        return None
    _find_nltk_data()
    try:
        return bool(ctype.verifier(response, c.kwargs, loose))
    except LookupError as e:   # nltk's "Resource ... not found"
        raise LookupError(
            f"verifying {c.id!r} needs NLTK data (punkt_tab, stopwords) that nltk cannot find and "
            f"cannot download here: set NLTK_DATA to a directory holding tokenizers/punkt_tab and "
            f"corpora/stopwords (this project keeps them in ../shared/nltk_data)") from e


def verify_all(response: str, constraints: Sequence[Constraint],
               loose: bool = False) -> list[bool | None]:
    return [verify(response, c, loose=loose) for c in constraints]


# --------------------------------------------------------------------------------------------
# Rendering helpers and argument samplers
# --------------------------------------------------------------------------------------------


def quote_list(words: Sequence[str], conj: str = "and") -> str:
    q = [f'"{w}"' for w in words]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + f" {conj} " + q[-1]


def _kw_fields(key: str, conj: str) -> Callable[[Mapping[str, Any]], dict]:
    def f(kw: Mapping[str, Any]) -> dict:
        words = list(kw[key])
        noun = "keyword" if len(words) == 1 else "keywords"
        wnoun = "word" if len(words) == 1 else "words"
        return {"kw": f"the {noun} {quote_list(words, conj)}",
                "words": f"the {wnoun} {quote_list(words, conj)}"}
    return f


def _flip(rel: str) -> str:
    return RELATIONS[1 - RELATIONS.index(rel)]


def _flip_relation(type_id: str, rel_key: str) -> Callable[[Mapping[str, Any]], Constraint]:
    def neg(kw: Mapping[str, Any]) -> Constraint:
        d = dict(kw)
        d[rel_key] = _flip(d[rel_key])
        return Constraint(type_id, d)
    return neg


def _keywords(rng: random.Random, pool: ArgPool) -> list[str]:
    if not pool.words:
        raise ValueError("ArgPool.words is empty; keyword constraints need at least one word")
    return rng.sample(list(pool.words), rng.randint(1, min(2, len(pool.words))))


def _rel(rng: random.Random) -> str:
    return rng.choice(RELATIONS)


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------

_KW, _LEN, _FMT, _CASE = "keywords", "length", "format", "case"

# Families sharing substitutes: a substitute is "a constraint of another type" that plays a
# similar role, so a corrupted instruction stays natural.
_SUBS = {
    _KW: ("keywords:existence", "keywords:forbidden_words", "keywords:frequency",
          "keywords:letter_frequency", "microworld:start_word", "startend:end_checker"),
    _LEN: ("length_constraints:number_words", "length_constraints:number_sentences",
           "microworld:exact_sentences", "length_constraints:number_paragraphs",
           "detectable_format:number_bullet_lists"),
    _FMT: ("detectable_format:json_format", "detectable_format:title", "startend:quotation",
           "detectable_format:number_highlighted_sections", "punctuation:no_comma",
           "detectable_content:postscript", "detectable_content:number_placeholders",
           "detectable_format:number_bullet_lists"),
    _CASE: ("change_case:english_lowercase", "change_case:english_capital",
            "change_case:capital_word_frequency", "punctuation:no_comma"),
}


def _subs(family: str, own: str) -> tuple[str, ...]:
    return tuple(t for t in _SUBS[family] if t != own)


def _add(id: str, args: tuple[str, ...], templates: tuple[str, ...], family: str,
         sampler: Sampler | None, negation=None, fields=None, verifier: Verifier | None = None,
         substitutes: tuple[str, ...] | None = None) -> None:
    register(ConstraintType(
        id=id, arg_names=args, templates=templates,
        verifier=verifier if verifier is not None else _ifeval(id),
        sampler=sampler, negation=negation, fields=fields, family=family,
        substitutes=substitutes if substitutes is not None else _subs(family, id)))


_add("keywords:existence", ("keywords",), (
    "Include {kw} in the response.",
    "Make sure to include {kw} in your answer.",
    "Your response must include {kw}.",
), _KW, lambda r, p: {"keywords": _keywords(r, p)},
    negation=lambda kw: Constraint("keywords:forbidden_words",
                                   {"forbidden_words": list(kw["keywords"])}),
    fields=_kw_fields("keywords", "and"))

_add("keywords:forbidden_words", ("forbidden_words",), (
    "Do not include {kw} in the response.",
    "Avoid using {words} in your answer.",
    "Your response must not contain {words}.",
), _KW, lambda r, p: {"forbidden_words": _keywords(r, p)},
    negation=lambda kw: Constraint("keywords:existence",
                                   {"keywords": list(kw["forbidden_words"])}),
    fields=_kw_fields("forbidden_words", "or"))

_add("keywords:frequency", ("keyword", "frequency", "relation"), (
    'In your response, the word "{keyword}" should appear {relation} {frequency} times.',
    'Use the word "{keyword}" {relation} {frequency} times.',
    'Make sure the word "{keyword}" appears {relation} {frequency} times in your answer.',
), _KW, lambda r, p: {"keyword": r.choice(p.words), "frequency": r.choice(p.frequencies),
                      "relation": _rel(r)},
    negation=_flip_relation("keywords:frequency", "relation"))

_add("keywords:letter_frequency", ("letter", "let_frequency", "let_relation"), (
    "In your response, the letter {letter} should appear {let_relation} {let_frequency} times.",
    "Make sure the letter {letter} appears {let_relation} {let_frequency} times.",
    "Use the letter {letter} {let_relation} {let_frequency} times in your answer.",
), _KW, lambda r, p: {"letter": r.choice(p.letters), "let_frequency": r.choice((5, 10, 20)),
                      "let_relation": _rel(r)},
    negation=_flip_relation("keywords:letter_frequency", "let_relation"),
    verifier=_letter_frequency)

_add("language:response_language", ("language",), (
    "Your ENTIRE response should be in {language_name} language, no other language is "
    "allowed.",
    "Respond only in {language_name}, no other language is allowed.",
    "Write your entire answer in the {language_name} language.",
), _CASE, lambda r, p: {"language": r.choice(p.languages)},
    fields=lambda kw: {"language_name": LANGUAGE_CODES[kw["language"]]},
    substitutes=("change_case:english_lowercase", "change_case:english_capital",
                 "punctuation:no_comma"))

_add("length_constraints:number_sentences", ("num_sentences", "relation"), (
    "Your response should contain {relation} {num_sentences} sentences.",
    "Answer with {relation} {num_sentences} sentences.",
    "Use {relation} {num_sentences} sentences in your answer.",
), _LEN, lambda r, p: {"num_sentences": r.choice(p.sentence_counts), "relation": _rel(r)},
    negation=_flip_relation("length_constraints:number_sentences", "relation"))

_add("length_constraints:number_words", ("num_words", "relation"), (
    "Answer with {relation} {num_words} words.",
    "Your response should contain {relation} {num_words} words.",
    "Make sure your answer has {relation} {num_words} words.",
), _LEN, lambda r, p: {"num_words": r.choice(p.word_counts), "relation": _rel(r)},
    negation=_flip_relation("length_constraints:number_words", "relation"))

_add("length_constraints:number_paragraphs", ("num_paragraphs",), (
    "There should be {num_paragraphs} paragraphs. Paragraphs are separated with the markdown "
    "divider: ***",
    "Write exactly {num_paragraphs} paragraphs, separated from each other by the markdown "
    "divider ***.",
    "Your answer must have exactly {num_paragraphs} paragraphs separated by ***.",
), _LEN, lambda r, p: {"num_paragraphs": r.choice(p.small_counts[1:] or (2,))})

_add("length_constraints:nth_paragraph_first_word",
     ("num_paragraphs", "nth_paragraph", "first_word"), (
    "There should be {num_paragraphs} paragraphs. Paragraphs and only paragraphs are separated "
    "with each other by two new lines. Paragraph {nth_paragraph} must start with the word "
    "{first_word}.",
    'Write exactly {num_paragraphs} paragraphs separated by two new lines, and the {nth_ordinal} '
    'paragraph must start with the word "{first_word}".',
    "Your answer should have exactly {num_paragraphs} paragraphs separated by two new lines; "
    'paragraph {nth_paragraph} has to begin with the word "{first_word}".',
), _LEN, lambda r, p: (lambda n: {"num_paragraphs": n, "nth_paragraph": r.randint(1, n),
                                  "first_word": r.choice(p.words)})(r.choice((2, 3, 4))),
    fields=lambda kw: {"nth_ordinal": ORDINALS[int(kw["nth_paragraph"]) - 1]
                       if 1 <= int(kw["nth_paragraph"]) <= len(ORDINALS)
                       else f"{kw['nth_paragraph']}th"},
    substitutes=("length_constraints:number_paragraphs", "length_constraints:number_words",
                 "microworld:start_word"))

_add("detectable_content:number_placeholders", ("num_placeholders",), (
    "The response must contain at least {num_placeholders} placeholders represented by square "
    "brackets, such as [address].",
    "Include at least {num_placeholders} placeholders in square brackets, like [name].",
    "Use at least {num_placeholders} placeholders wrapped in square brackets, for example "
    "[date].",
), _FMT, lambda r, p: {"num_placeholders": r.choice(p.small_counts)})

_add("detectable_content:postscript", ("postscript_marker",), (
    "At the end of your response, please explicitly add a postscript starting with "
    "{postscript_marker}",
    "End your answer with a postscript starting with {postscript_marker}",
    "Please add a postscript starting with {postscript_marker} at the end of your response.",
), _FMT, lambda r, p: {"postscript_marker": r.choice(("P.S.", "P.P.S"))})

_add("detectable_format:number_bullet_lists", ("num_bullets",), (
    "Your answer must contain exactly {num_bullets} bullet points in markdown format, such as "
    '"* This is a point".',
    'Use exactly {num_bullets} markdown bullet points (lines starting with "* ").',
    "Format your answer as exactly {num_bullets} bullet points, using * for each bullet.",
), _FMT, lambda r, p: {"num_bullets": r.choice(p.small_counts[1:] or (2,))},
    substitutes=("length_constraints:number_sentences", "microworld:exact_sentences",
                 "detectable_format:title", "detectable_format:number_highlighted_sections"))

_OPTIONS = ", ".join(f'"{o}"' for o in CONSTRAINED_OPTIONS)
_add("detectable_format:constrained_response", (), (
    f"Answer with one of the following options: {_OPTIONS}",
    f"Your answer must contain exactly one of the following phrases: {_OPTIONS}",
    f"Choose one of the following options to give your verdict: {_OPTIONS}",
), _FMT, lambda r, p: {}, substitutes=())

_add("detectable_format:number_highlighted_sections", ("num_highlights",), (
    "Highlight at least {num_highlights} sections in your answer with markdown, i.e. "
    "*highlighted section*.",
    "Use markdown to italicize at least {num_highlights} parts of your answer, like "
    "*this part*.",
    "Using markdown, highlight at least {num_highlights} text sections, for example "
    "*key point*.",
), _FMT, lambda r, p: {"num_highlights": r.choice(p.small_counts)})

_add("detectable_format:multiple_sections", ("section_spliter", "num_sections"), (
    "Your response must have {num_sections} sections. Mark the beginning of each section with "
    "{section_spliter} X.",
    'Divide your answer into {num_sections} sections, each starting with "{section_spliter} X" '
    "where X is the section number.",
    "Organize the response in {num_sections} sections, marking each one with {section_spliter} "
    "X, such as {section_spliter} 1.",
), _FMT, lambda r, p: {"section_spliter": r.choice(("Section", "SECTION")),
                       "num_sections": r.choice((2, 3, 4))},
    substitutes=("length_constraints:number_paragraphs", "detectable_format:number_bullet_lists",
                 "detectable_format:title"))

_add("detectable_format:json_format", (), (
    "Entire output should be wrapped in JSON format. You can use markdown ticks such as ```.",
    "Format your whole answer as valid JSON.",
    "Wrap your entire response in JSON format.",
), _FMT, lambda r, p: {})

_add("detectable_format:title", (), (
    "Your answer must contain a title, wrapped in double angular brackets, such as "
    "<<poem of joy>>.",
    "Include a title wrapped in double angular brackets, i.e. <<title>>.",
    "Give your answer a title in double angular brackets, like <<my title>>.",
), _FMT, lambda r, p: {})

_add("combination:two_responses", (), (
    "Give two different responses. Responses and only responses should be separated by 6 "
    "asterisk symbols: ******.",
    "Provide two different answers separated by six asterisks (******).",
    "Write two different responses, separated by ******.",
), _FMT, lambda r, p: {}, substitutes=("detectable_format:title", "startend:quotation"))

_add("combination:repeat_prompt", ("prompt_to_repeat",), (
    "First repeat the request word for word without change, then give your answer (1. do not "
    "say any words or characters before repeating the request; 2. the request you need to "
    "repeat does not include this sentence)",
    "First repeat the request above word for word without change, then give your answer. Do "
    "not say anything before repeating the request.",
    "Before you answer, repeat the request above exactly as it is, without changing a single "
    "word.",
), _FMT, None, substitutes=("detectable_format:title", "startend:quotation"))

_add("startend:end_checker", ("end_phrase",), (
    'Finish your response with this exact phrase "{end_phrase}". No other words should follow '
    "this phrase.",
    'End your answer with the exact phrase "{end_phrase}".',
    'The very end of your response should read exactly: "{end_phrase}"',
), _KW, lambda r, p: {"end_phrase": r.choice(p.phrases)})

_add("startend:quotation", (), (
    "Wrap your entire response with double quotation marks.",
    "Put double quotation marks around your whole answer.",
    "Enclose the entire response in double quotes.",
), _FMT, lambda r, p: {})

_add("change_case:capital_word_frequency", ("capital_frequency", "capital_relation"), (
    "In your response, words with all capital letters should appear {capital_relation} "
    "{capital_frequency} times.",
    "Use words in all capital letters {capital_relation} {capital_frequency} times.",
    "Make sure that words with all capital letters appear {capital_relation} "
    "{capital_frequency} times in your answer.",
), _CASE, lambda r, p: {"capital_frequency": r.choice(p.frequencies),
                        "capital_relation": _rel(r)},
    negation=_flip_relation("change_case:capital_word_frequency", "capital_relation"))

_add("change_case:english_capital", (), (
    "Your entire response should be in English, and in all capital letters.",
    "Write your whole answer in English using only capital letters.",
    "Respond in English, in all uppercase letters.",
), _CASE, lambda r, p: {},
    negation=lambda kw: Constraint("change_case:english_lowercase", {}))

_add("change_case:english_lowercase", (), (
    "Your entire response should be in English, and in all lowercase letters. No capital "
    "letters are allowed.",
    "Write your whole answer in English using only lowercase letters.",
    "Respond in English, in all lowercase letters.",
), _CASE, lambda r, p: {},
    negation=lambda kw: Constraint("change_case:english_capital", {}))

_add("punctuation:no_comma", (), (
    "In your entire response, refrain from the use of any commas.",
    "Do not use any commas in your response.",
    "Your answer must not contain any commas.",
), _FMT, lambda r, p: {})

# Microworld-only types (DESIGN 8): no IFEval equivalent, so they carry their own verifiers.
_add("microworld:exact_sentences", ("num_sentences",), (
    "Your response should contain exactly {num_sentences} sentences.",
    "Answer in exactly {num_sentences} sentences.",
    "Write exactly {num_sentences} sentences.",
), _LEN, lambda r, p: {"num_sentences": r.choice(p.sentence_counts)},
    verifier=_exact_sentences)

_add("microworld:start_word", ("first_word",), (
    'Start your response with the word "{first_word}".',
    'Begin your answer with the word "{first_word}".',
    'The first word of your response should be "{first_word}".',
), _KW, lambda r, p: {"first_word": r.choice(p.words)}, verifier=_start_word)

register(ConstraintType(id=FREE_TEXT, arg_names=(), templates=("{text}",), verifier=None,
                        family="free",
                        substitutes=("punctuation:no_comma", "detectable_format:title",
                                     "keywords:existence", "keywords:forbidden_words",
                                     "length_constraints:number_words",
                                     "microworld:exact_sentences")))

IFEVAL_IDS: tuple[str, ...] = tuple(sorted(INSTRUCTION_DICT))
MICROWORLD_ONLY_IDS = ("microworld:exact_sentences", "microworld:start_word")
# DESIGN 8's microworld constraints, each mapped to the type that implements it.
MICROWORLD_IDS: tuple[str, ...] = (
    "length_constraints:number_words",  # word count at most / at least N
    "microworld:exact_sentences", "keywords:existence", "keywords:forbidden_words",
    "keywords:frequency", "change_case:english_lowercase", "change_case:english_capital",
    "microworld:start_word", "startend:end_checker", "detectable_format:number_bullet_lists",
    "detectable_format:json_format", "detectable_format:title", "punctuation:no_comma",
)


# --------------------------------------------------------------------------------------------
# Rendering, negation
# --------------------------------------------------------------------------------------------


def _finish(s: str) -> str:
    s = s.strip()
    return s if s[-1:] in ".!?\")" else s + "."


def render(c: Constraint, variant: int = 0) -> str:
    """The constraint as an instruction sentence, using template `variant` (mod #templates)."""
    validate(c)
    if c.id == FREE_TEXT:
        return c.text.strip()
    ctype = REGISTRY[c.id]
    values = {k: v for k, v in c.kwargs.items()}
    if ctype.fields is not None:
        values.update(ctype.fields(c.kwargs))
    return _finish(ctype.templates[variant % len(ctype.templates)].format(**values))


def negate(c: Constraint) -> Constraint | None:
    """The opposite constraint, or None where the type has no clean opposite."""
    validate(c)
    neg = REGISTRY[c.id].negation
    return None if neg is None else validate(neg(c.kwargs))


# --------------------------------------------------------------------------------------------
# Compatibility
# --------------------------------------------------------------------------------------------


def _symmetric(table: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for a, bs in table.items():
        for b in bs:
            out.setdefault(a, set()).add(b)
            out.setdefault(b, set()).add(a)
    return out


# Type-level conflicts: IFEval's own table (made symmetric), plus pairs for the microworld
# types and a few IFEval pairs it misses: a postscript and a fixed end phrase both claim the end
# of the response; a start word cannot follow a title, a quote or a repeated prompt; bullet
# lines and JSON make sentence counts ill-defined.
_EXTRA_CONFLICTS = {
    "change_case:english_lowercase": {"change_case:english_capital"},
    "detectable_format:json_format": {"detectable_format:number_bullet_lists",
                                      "microworld:start_word", "microworld:exact_sentences"},
    "startend:end_checker": {"detectable_content:postscript"},
    "microworld:start_word": {"startend:quotation", "combination:repeat_prompt",
                              "detectable_format:title", "detectable_format:constrained_response",
                              "length_constraints:nth_paragraph_first_word",
                              "language:response_language", "combination:two_responses"},
    "microworld:exact_sentences": {"combination:two_responses", "combination:repeat_prompt",
                                   "detectable_format:constrained_response",
                                   "detectable_format:number_bullet_lists"},
}
_CONFLICTS = _symmetric(INSTRUCTION_CONFLICTS)
for _a, _bs in _symmetric(_EXTRA_CONFLICTS).items():
    _CONFLICTS.setdefault(_a, set()).update(_bs)

# Same-type pairs are allowed only for bound types whose two bounds leave room (e.g. "at least
# 100 words" with "less than 121 words", as in IFEval's "100 to 120 words").
_BOUNDS = {
    "length_constraints:number_words": ("num_words", "relation", None),
    "length_constraints:number_sentences": ("num_sentences", "relation", None),
    "change_case:capital_word_frequency": ("capital_frequency", "capital_relation", None),
    "keywords:frequency": ("frequency", "relation", "keyword"),
    "keywords:letter_frequency": ("let_frequency", "let_relation", "letter"),
}


def _interval(c: Constraint) -> tuple[float, float]:
    """[lo, hi) of allowed counts for a bound constraint."""
    num, rel, _ = _BOUNDS[c.id]
    n = int(c.kwargs[num])
    return (n, float("inf")) if c.kwargs[rel] == "at least" else (0, n)


def _bounds_ok(a: Constraint, b: Constraint) -> bool:
    _, rel, subject = _BOUNDS[a.id]
    if subject and str(a.kwargs[subject]).lower() != str(b.kwargs[subject]).lower():
        return False  # two bounds on different words: treat as a redundant same-type pair
    if a.kwargs[rel] == b.kwargs[rel]:
        return False  # the same bound twice is redundant
    (lo1, hi1), (lo2, hi2) = _interval(a), _interval(b)
    return max(lo1, lo2) < min(hi1, hi2)


def _words_of(c: Constraint) -> set[str]:
    """Words a constraint requires to appear (lowercased)."""
    k = c.kwargs
    if c.id == "keywords:existence":
        return {w.lower() for w in k["keywords"]}
    if c.id == "keywords:frequency" and k["relation"] == "at least":
        return {k["keyword"].lower()}
    if c.id == "microworld:start_word":
        return {k["first_word"].lower()}
    if c.id == "startend:end_checker":
        return set(re.findall(r"\w+", k["end_phrase"].lower()))
    return set()


def _args_conflict(a: Constraint, b: Constraint) -> bool:
    """Argument-level contradictions between two constraints of different types."""
    for x, y in ((a, b), (b, a)):
        if x.id == "keywords:forbidden_words":
            if {w.lower() for w in x.kwargs["forbidden_words"]} & _words_of(y):
                return True
        if x.id == "punctuation:no_comma" and y.id == "startend:end_checker":
            if "," in y.kwargs["end_phrase"]:
                return True
        if x.id == "microworld:exact_sentences" and y.id == "length_constraints:number_sentences":
            lo, hi = _interval(y)
            if not lo <= int(x.kwargs["num_sentences"]) < hi:
                return True
    return False


def compatible(a: Constraint, b: Constraint) -> bool:
    """Whether two constraints may appear together in one instruction."""
    if a.id == FREE_TEXT or b.id == FREE_TEXT:
        return a != b  # wording unknown: only exact repeats are excluded
    if a.id == b.id:
        return a.id in _BOUNDS and _bounds_ok(a, b)
    if b.id in _CONFLICTS.get(a.id, ()):
        return False
    return not _args_conflict(a, b)


def compatible_with_all(c: Constraint, others: Iterable[Constraint]) -> bool:
    return all(compatible(c, o) for o in others)
