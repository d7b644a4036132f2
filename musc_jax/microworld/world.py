"""The microworld: topics with facts, constraint instructions of levels 1..5, and responses.

A synthetic, fully verifiable instruction world (DESIGN 8). Every instruction is a task about a
topic ("Describe the otter.") plus 1..5 typed constraints from `musc_jax.data.constraints`,
composed into text by the same template composer the pair builders use. `write_response`
writes a response that follows a chosen subset of the constraints and ignores the others (it
writes as if they were absent), which is how the imperfect SFT corpus is made: the share of
constraints followed falls with the level, so the base model, like a real one, drops
constraints of complex instructions.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from typing import Sequence

from musc_jax.data.constraints import Constraint, make, verify_all
from musc_jax.data.recombine import compose

# ---- the lexicon -------------------------------------------------------------------------------

TOPICS = (
    "otter", "maple", "falcon", "glacier", "violin", "cactus", "harbor", "comet", "beetle",
    "lantern", "volcano", "dolphin", "meadow", "castle", "penguin", "orchard", "canyon", "parrot",
    "bakery", "rocket", "tortoise", "island", "piano", "badger", "desert", "whale", "village",
    "tulip", "robot", "forest", "camel", "bridge", "library", "hedgehog", "lagoon", "windmill",
    "squirrel", "mountain", "garden", "lighthouse", "panda", "river", "museum", "fox", "glider",
    "owl", "market", "statue",
)
COLORS = ("red", "blue", "green", "brown", "gray", "white", "black", "golden", "silver", "orange")
PLACES = ("cold rivers", "tall mountains", "quiet forests", "sandy beaches", "old cities",
          "green valleys", "deep lakes", "dry deserts", "busy towns", "open fields")
LIKES = ("bread", "fish", "honey", "seeds", "berries", "music", "rain", "stones", "leaves",
         "apples", "milk", "grass", "sunlight", "snow")
SIZES = ("tiny", "small", "large", "huge")
TRAITS = ("speed", "patience", "loud voice", "bright colors", "long shape", "strong frame",
          "gentle nature", "sharp edges", "calm sound", "old age")
SEASONS = ("spring", "summer", "autumn", "winter")

TASKS = ("Describe the {t}.", "List some facts about the {t}.", "Write a short note on the {t}.",
         "Tell me about the {t}.")
TITLES = ("All About the {T}", "The {T}", "Notes on the {T}", "A Look at the {T}")
NEUTRAL_TITLES = ("Some Notes", "A Short Note", "Facts")
KEYWORD_SENTENCES = ("It is often linked to {k}.", "Many people think of {k} here.",
                     "It reminds some people of {k}.")
# Keywords for include / frequency constraints: absent from the facts, so including one is a
# deliberate act of the writer.
KEYWORDS = ("history", "science", "travel", "family", "friendship", "adventure", "color",
            "nature", "dreams", "cities", "ocean", "holidays")
START_WORDS = ("Indeed", "Today", "Well", "Surely", "Here", "Truly", "Basically")
END_PHRASES = ("Any other questions?", "That is all for today.", "Thanks for reading.",
               "Is there anything else I can help with?")
WORD_LIMITS_BELOW = (15, 20, 25)
WORD_LIMITS_ABOVE = (30, 40)

MICROWORLD_TYPES = (
    "length_constraints:number_words", "microworld:exact_sentences", "keywords:existence",
    "keywords:forbidden_words", "keywords:frequency", "change_case:english_lowercase",
    "change_case:english_capital", "microworld:start_word", "startend:end_checker",
    "detectable_format:number_bullet_lists", "detectable_format:json_format",
    "detectable_format:title", "punctuation:no_comma",
)
# Pairs never combined in one instruction (contradictory, or a format that swallows another).
CONFLICTS = {
    frozenset({"change_case:english_lowercase", "change_case:english_capital"}),
    frozenset({"detectable_format:json_format", "detectable_format:number_bullet_lists"}),
    frozenset({"detectable_format:json_format", "detectable_format:title"}),
    frozenset({"detectable_format:json_format", "microworld:start_word"}),
    frozenset({"detectable_format:json_format", "startend:end_checker"}),
    frozenset({"detectable_format:json_format", "microworld:exact_sentences"}),
    frozenset({"detectable_format:number_bullet_lists", "microworld:exact_sentences"}),
    frozenset({"detectable_format:number_bullet_lists", "microworld:start_word"}),
    frozenset({"detectable_format:title", "microworld:start_word"}),
    frozenset({"keywords:existence", "keywords:frequency"}),
}


@dataclass(frozen=True)
class Fact:
    """One fact sentence; `comma` is the comma-bearing wording (a list), if it has one."""

    plain: str
    comma: str | None = None


@dataclass(frozen=True)
class Topic:
    name: str
    facts: tuple[Fact, ...]


def build_lexicon(seed: int = 0) -> tuple[Topic, ...]:
    """The topics and their facts, a pure function of `seed`."""
    rng = random.Random(seed)
    topics = []
    for name in TOPICS:
        t = f"The {name}"
        likes = rng.sample(LIKES, 3)
        avoids = rng.sample([w for w in LIKES if w not in likes], 3)
        facts = (
            Fact(f"{t} is {rng.choice(COLORS)}."),
            Fact(f"{t} is found near {rng.choice(PLACES)}."),
            Fact(f"{t} likes {likes[0]} and {likes[1]} and {likes[2]}.",
                 f"{t} likes {likes[0]}, {likes[1]} and {likes[2]}."),
            Fact(f"{t} is {rng.choice(SIZES)} in size."),
            Fact(f"{t} is known for its {rng.choice(TRAITS)}."),
            Fact(f"{t} is best seen in {rng.choice(SEASONS)}."),
            Fact(f"{t} avoids {avoids[0]} and {avoids[1]} and {avoids[2]}.",
                 f"{t} avoids {avoids[0]}, {avoids[1]} and {avoids[2]}."),
        )
        topics.append(Topic(name, facts))
    return tuple(topics)


# ---- instructions ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    """A task about a topic plus typed constraints, and its composed text."""

    topic: str
    task: str
    constraints: tuple[Constraint, ...]
    seed: int

    @property
    def level(self) -> int:
        return len(self.constraints)

    @property
    def text(self) -> str:
        return compose(self.task, self.constraints, seed=self.seed)

    def to_dict(self) -> dict:
        return {"topic": self.topic, "task": self.task, "seed": self.seed,
                "constraints": [c.to_dict() for c in self.constraints]}

    @classmethod
    def from_dict(cls, d) -> "Instruction":
        return cls(d["topic"], d["task"], tuple(Constraint.from_dict(c) for c in d["constraints"]),
                   d["seed"])


def sample_constraint(type_id: str, topic: Topic, rng: random.Random) -> Constraint:
    """A constraint of `type_id` with microworld arguments for `topic`."""
    if type_id == "length_constraints:number_words":
        if rng.random() < 0.5:
            return make(type_id, relation="less than", num_words=rng.choice(WORD_LIMITS_BELOW))
        return make(type_id, relation="at least", num_words=rng.choice(WORD_LIMITS_ABOVE))
    if type_id == "microworld:exact_sentences":
        return make(type_id, num_sentences=rng.choice((2, 3, 4)))
    if type_id == "keywords:existence":
        return make(type_id, keywords=rng.sample(KEYWORDS, rng.choice((1, 1, 2))))
    if type_id == "keywords:forbidden_words":
        # A word the plain answer would use: the topic's name or a word of one of its facts.
        words = [topic.name] + [w for w in re.findall(r"[a-z]+", " ".join(f.plain for f in topic.facts))
                                if w in LIKES or w in COLORS]
        return make(type_id, forbidden_words=[rng.choice(words)])
    if type_id == "keywords:frequency":
        return make(type_id, keyword=rng.choice(KEYWORDS), frequency=rng.choice((2, 3)),
                    relation="at least")
    if type_id == "microworld:start_word":
        return make(type_id, first_word=rng.choice(START_WORDS))
    if type_id == "startend:end_checker":
        return make(type_id, end_phrase=rng.choice(END_PHRASES))
    if type_id == "detectable_format:number_bullet_lists":
        return make(type_id, num_bullets=rng.choice((2, 3, 4)))
    if type_id in MICROWORLD_TYPES:
        return make(type_id)
    raise ValueError(f"constraint type {type_id!r} is not part of the microworld; "
                     f"known: {', '.join(MICROWORLD_TYPES)}")


def compatible(a: str, b: str) -> bool:
    return a != b and frozenset({a, b}) not in CONFLICTS


def sample_instruction(lexicon: Sequence[Topic], level: int, rng: random.Random,
                       max_tries: int = 50) -> Instruction:
    """An instruction with `level` compatible constraints whose ideal response exists."""
    for _ in range(max_tries):
        topic = rng.choice(lexicon)
        types: list[str] = []
        for t in rng.sample(MICROWORLD_TYPES, len(MICROWORLD_TYPES)):
            if len(types) == level:
                break
            if all(compatible(t, u) for u in types):
                types.append(t)
        if len(types) < level:
            continue
        cons = tuple(sample_constraint(t, topic, rng) for t in types)
        inst = Instruction(topic.name, rng.choice(TASKS).format(t=topic.name), cons,
                           rng.getrandbits(31))
        if all(verify_all(write_response(lexicon, inst, set(range(level)), random.Random(0)),
                          inst.constraints)):
            return inst
    raise RuntimeError(f"could not sample a satisfiable level-{level} instruction")


# ---- responses ---------------------------------------------------------------------------------

def _topic(lexicon: Sequence[Topic], name: str) -> Topic:
    for t in lexicon:
        if t.name == name:
            return t
    raise KeyError(f"unknown microworld topic {name!r}")


def _count_words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def write_response(lexicon: Sequence[Topic], inst: Instruction, follow: set[int],
                   rng: random.Random) -> str:
    """A response that follows the constraints whose indices are in `follow`.

    Constraints not followed are ignored, as if absent: the writer's defaults apply (a few
    facts, some with commas, sentence case, plain paragraph).
    """
    topic = _topic(lexicon, inst.topic)
    on = {c.id: c for i, c in enumerate(inst.constraints) if i in follow}
    forbidden = [w.lower() for w in on["keywords:forbidden_words"].kwargs["forbidden_words"]] \
        if "keywords:forbidden_words" in on else []
    name_forbidden = topic.name in forbidden

    facts = [f for f in topic.facts
             if not any(re.search(rf"\b{re.escape(w)}\b", f.plain, re.I) for w in forbidden if w != topic.name)]
    rng.shuffle(facts)
    no_comma = "punctuation:no_comma" in on

    def fact_text(f: Fact) -> str:
        s = f.comma if (f.comma and not no_comma and rng.random() < 0.8) else f.plain
        if name_forbidden:
            s = re.sub(rf"^The {topic.name}\b", "It", s)
        return s

    extra: list[str] = []  # keyword sentences
    if "keywords:existence" in on:
        for k in on["keywords:existence"].kwargs["keywords"]:
            extra.append(rng.choice(KEYWORD_SENTENCES).format(k=k))
    if "keywords:frequency" in on:
        kw = on["keywords:frequency"].kwargs
        for _ in range(kw["frequency"]):
            extra.append(rng.choice(KEYWORD_SENTENCES).format(k=kw["keyword"]))
    end = on["startend:end_checker"].kwargs["end_phrase"] if "startend:end_checker" in on else None

    n_items = rng.choice((2, 3, 3, 4))
    bullets = on.get("detectable_format:number_bullet_lists")
    if bullets is not None:
        n_items = bullets.kwargs["num_bullets"]
    exact = on.get("microworld:exact_sentences")
    if exact is not None:
        n_items = exact.kwargs["num_sentences"] - (1 if end else 0)
    n_facts = max(0, n_items - len(extra)) if (bullets or exact) else n_items

    def assemble(k: int) -> str:
        items = [fact_text(f) for f in facts[:k]] + extra
        if bullets is not None:
            body = "\n".join(f"* {s}" for s in items)
        else:
            body = " ".join(items)
        if "microworld:start_word" in on:
            body = on["microworld:start_word"].kwargs["first_word"] + " " + body[:1].lower() + body[1:]
        if end:
            body = body + ("\n" if bullets is not None else " ") + end
        if "detectable_format:title" in on:
            title = rng.choice(NEUTRAL_TITLES if name_forbidden else TITLES).format(T=topic.name.capitalize())
            body = f"<<{title}>>\n{body}"
        if "detectable_format:json_format" in on:
            body = json.dumps({"topic": "it" if name_forbidden else topic.name, "answer": body})
        if "change_case:english_lowercase" in on:
            body = body.lower()
        elif "change_case:english_capital" in on:
            body = body.upper()
        return body

    words = on.get("length_constraints:number_words")
    if words is not None and not (bullets or exact):
        limit = words.kwargs["num_words"]
        if words.kwargs["relation"] == "less than":
            k = n_facts
            while k > 1 and _count_words(assemble(k)) >= limit:
                k -= 1
            return assemble(k)
        k = n_facts
        while k < len(facts) and _count_words(assemble(k)) < limit:
            k += 1
        return assemble(k)
    return assemble(min(n_facts, len(facts)))


def follow_probability(level: int, p_first: float = 0.8, p_last: float = 0.45,
                       max_level: int = 5) -> float:
    """Chance that the imperfect writer follows each constraint of a level-`level` instruction."""
    if max_level <= 1:
        return p_first
    return p_first + (p_last - p_first) * (min(level, max_level) - 1) / (max_level - 1)


def imperfect_response(lexicon, inst: Instruction, rng: random.Random, **probs) -> tuple[str, set[int]]:
    """(response, indices followed): each constraint followed with follow_probability(level)."""
    p = follow_probability(inst.level, **probs)
    follow = {i for i in range(inst.level) if rng.random() < p}
    return write_response(lexicon, inst, follow, rng), follow


@dataclass
class World:
    """The lexicon plus instruction samplers; everything is a pure function of the seed."""

    seed: int = 0
    lexicon: tuple[Topic, ...] = field(init=False)

    def __post_init__(self):
        self.lexicon = build_lexicon(self.seed)

    def instructions(self, n: int, seed: int, levels: Sequence[int] = (1, 2, 3, 4, 5)) -> list[Instruction]:
        """n instructions with levels cycling through `levels`, fixed by `seed`."""
        rng = random.Random(seed)
        return [sample_instruction(self.lexicon, levels[i % len(levels)], rng) for i in range(n)]

    def ideal(self, inst: Instruction, seed: int = 0) -> str:
        return write_response(self.lexicon, inst, set(range(inst.level)), random.Random(seed))

    def plain(self, inst: Instruction, seed: int = 0) -> str:
        """The answer of a writer who ignores every constraint."""
        return write_response(self.lexicon, inst, set(), random.Random(seed))
