"""IFEval-style training instructions: our task stems x 1-4 verifiable constraints, and a
user's own prompt file with free-text constraints.

    seeds = generate_instructions(500, seed=0)          # list[Seed], typed constraints known
    python -m musc_jax.data.instructions --num 500 --out seeds.jsonl --check ../shared/data/ifeval_dev.jsonl

Generation (`generate_instructions`): stem i of `instruction_stems.STEMS` (cycled in a seeded
order, so every stem is used before any repeats) gets k constraints, k cycling through
`counts`. Constraint types are drawn uniformly from `TYPES` (IFEval's types that can be
sampled out of context, plus `combination:repeat_prompt`, whose prompt is the task sentence);
arguments come from `REAL_POOL`, sized for a real model's answers. A drawn constraint that is
incompatible (`constraints.compatible`) with one already chosen is redrawn, so incompatible
pairs are never combined. The text is `recombine.compose(task, constraints, compose_seed,
style)`: each constraint in one of its several renderings (chosen by hash of the seed and the
constraint) and the style (paragraph / lines / list) drawn per instruction. The seed's meta
records the genre, stem index, compose seed and style, so MuSC can recompose x exactly.

Contamination check (`near_duplicates`): word n-gram (default 3) Jaccard similarity of each
generated prompt against each reference prompt (e.g. IFEval dev); a pair at or above the
threshold is a near-duplicate. `stem_overlaps` measures the share of a stem's n-grams found
in a reference prompt (containment), which catches a copied task even when the constraints
around it differ.

Seed sources: importing this module registers "instructions" (`instruction_seeds`; the
pairs config's `data.levels` are the constraint counts, cycled). A user's own prompts come
through the "jsonl" source: each line an object with `prompt`, optionally `task` and
`constraints`, a list whose items are typed constraint objects (`{"id": ..., "kwargs": ...}`) or
the user's own sentences (`"Keep it under 50 words."`). A sentence that the rule decomposer
reads as exactly one typed constraint becomes that typed constraint, so it is verifiable
(`constraint_from_text`); any other stays free text (`constraints.free_text`).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from musc_jax.data.constraints import (ArgPool, Constraint, compatible_with_all, free_text,
                                       get_type, validate)
from musc_jax.data.instruction_stems import QUESTION_GENRES, STEMS
from musc_jax.data.recombine import STYLES, _task_sentence, compose
from musc_jax.data.seeds import Seed, register_seed_source

# Arguments sized for a real instruct model's answers (the microworld's pool is tiny).
REAL_POOL = ArgPool(
    words=("garden", "river", "window", "morning", "journey", "balance", "community", "simple",
           "light", "future", "quiet", "history", "energy", "friendly", "market", "season",
           "careful", "bright", "story", "local", "weather", "surprise", "promise", "kitchen"),
    phrases=("Is there anything else I can help with?", "Thank you for reading.",
             "Let me know if you have questions.", "That is all for now.",
             "Have a wonderful day.", "Any other questions?"),
    letters="abcdeilmnorst",
    languages=("de", "fr", "es", "it", "pt"),
    word_counts=(30, 50, 80, 100, 150),
    sentence_counts=(2, 3, 4, 5, 6, 8),
    small_counts=(1, 2, 3, 4),
    frequencies=(2, 3, 4),
)

# IFEval types with an out-of-context sampler; the constrained-response type only for stems
# that are yes/no questions; repeat_prompt is built from the task sentence.
CONSTRAINED = "detectable_format:constrained_response"
REPEAT = "combination:repeat_prompt"
TYPES: tuple[str, ...] = (
    "keywords:existence", "keywords:forbidden_words", "keywords:frequency",
    "keywords:letter_frequency", "language:response_language",
    "length_constraints:number_sentences", "length_constraints:number_words",
    "length_constraints:number_paragraphs", "length_constraints:nth_paragraph_first_word",
    "detectable_content:number_placeholders", "detectable_content:postscript",
    "detectable_format:number_bullet_lists", CONSTRAINED,
    "detectable_format:number_highlighted_sections", "detectable_format:multiple_sections",
    "detectable_format:json_format", "detectable_format:title", "combination:two_responses",
    REPEAT, "startend:end_checker", "startend:quotation", "change_case:capital_word_frequency",
    "change_case:english_capital", "change_case:english_lowercase", "punctuation:no_comma",
)
STYLE_WEIGHTS = (0.6, 0.2, 0.2)   # paragraph, lines, list: IFEval prompts are mostly paragraphs
MAX_DRAWS = 50                     # redraws per constraint slot before giving up on the slot


@dataclass(frozen=True)
class Stem:
    index: int
    genre: str
    text: str

    @property
    def is_question(self) -> bool:
        return self.genre in QUESTION_GENRES


def stems() -> list[Stem]:
    return [Stem(i, g, t) for i, (g, t) in enumerate(STEMS)]


def _draw(type_id: str, stem: Stem, rng: random.Random, pool: ArgPool) -> Constraint:
    if type_id == REPEAT:
        return Constraint(REPEAT, {"prompt_to_repeat": _task_sentence(stem.text)})
    return get_type(type_id).sample(rng, pool)


def sample_constraints(stem: Stem, k: int, rng: random.Random, pool: ArgPool = REAL_POOL,
                       types: Sequence[str] = TYPES) -> list[Constraint]:
    """Up to `k` pairwise-compatible constraints for `stem` (fewer only if redraws run out)."""
    allowed = [t for t in types if t != CONSTRAINED or stem.is_question]
    chosen: list[Constraint] = []
    for _ in range(k):
        for _ in range(MAX_DRAWS):
            c = validate(_draw(rng.choice(allowed), stem, rng, pool))
            if compatible_with_all(c, chosen):
                chosen.append(c)
                break
    return chosen


def generate_instructions(n: int, seed: int = 0, counts: Sequence[int] = (1, 2, 3, 4),
                          pool: ArgPool = REAL_POOL, types: Sequence[str] = TYPES,
                          styles: Sequence[str] = STYLES,
                          style_weights: Sequence[float] = STYLE_WEIGHTS) -> list[Seed]:
    """`n` instructions with typed constraints (see the module doc); fixed by `seed`."""
    if n < 0:
        raise ValueError(f"number of instructions must be >= 0, got {n}")
    counts = [int(c) for c in counts]
    if not counts or min(counts) < 1 or max(counts) > 4:
        raise ValueError(f"constraint counts must be in 1..4, got {counts}")
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        raise ValueError(f"unknown or unsupported constraint type(s) {unknown}; choose from {TYPES}")
    rng = random.Random(f"instructions:{seed}")
    all_stems = stems()
    out: list[Seed] = []
    order: list[Stem] = []
    for i in range(n):
        if not order:  # a fresh shuffled pass over all stems
            order = rng.sample(all_stems, len(all_stems))
        stem = order.pop()
        k = counts[i % len(counts)]
        cons = sample_constraints(stem, k, rng, pool, types)
        style = rng.choices(list(styles), weights=list(style_weights)[:len(styles)])[0]
        cseed = rng.getrandbits(31)
        out.append(Seed(prompt=compose(stem.text, cons, cseed, style), task=stem.text,
                        constraints=cons,
                        meta={"source": "instructions", "index": i, "stem": stem.index,
                              "genre": stem.genre, "level": len(cons), "compose_seed": cseed,
                              "compose_style": style}))
    return out


def instruction_seeds(n: int, seed: int = 0, levels: Sequence[int] = (1, 2, 3, 4),
                      world_seed: int | None = None) -> list[Seed]:
    """The "instructions" seed source: `generate_instructions(n, seed, counts=levels)`.
    `world_seed` (passed to every generated source) has no meaning here: the stems are fixed."""
    del world_seed
    return generate_instructions(n, seed, counts=levels)


register_seed_source("instructions", instruction_seeds)


def seed_record(s: Seed) -> dict[str, Any]:
    """A seed as a JSONL record `seeds.read_jsonl_seeds` reads back (typed constraints)."""
    return {"prompt": s.prompt, "task": s.task,
            "constraints": [c.to_dict() for c in (s.constraints or [])],
            "key": s.meta.get("index"), "level": s.meta.get("level"),
            "meta": {k: v for k, v in s.meta.items() if k not in ("index", "level")}}


def write_jsonl(seeds: Iterable[Seed], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for s in seeds:
            f.write(json.dumps(seed_record(s), ensure_ascii=False) + "\n")
    return path


# ------------------------------------------------------------------------------ near duplicates

_WORD = re.compile(r"[a-z0-9']+")


def shingles(text: str, n: int = 3) -> frozenset[tuple[str, ...]]:
    """Word n-grams of the lowercased text (a text shorter than n gives its one short n-gram)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def _index(sets: Sequence[frozenset]) -> dict[tuple, list[int]]:
    idx: dict[tuple, list[int]] = {}
    for j, s in enumerate(sets):
        for g in s:
            idx.setdefault(g, []).append(j)
    return idx


def near_duplicates(generated: Sequence[str], reference: Sequence[str], n: int = 3,
                    threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """(generated index, reference index, Jaccard) for every pair at or above `threshold`."""
    ref = [shingles(t, n) for t in reference]
    idx = _index(ref)
    out = []
    for i, text in enumerate(generated):
        g = shingles(text, n)
        for j in sorted({j for gram in g for j in idx.get(gram, ())}):
            score = jaccard(g, ref[j])
            if score >= threshold:
                out.append((i, j, score))
    return out


def max_similarity(generated: Sequence[str], reference: Sequence[str], n: int = 3) -> float:
    """The largest Jaccard similarity between any generated and any reference text."""
    hits = near_duplicates(generated, reference, n, threshold=0.0)
    return max((s for _, _, s in hits), default=0.0)


def stem_overlaps(stem_texts: Sequence[str], reference: Sequence[str],
                  n: int = 3) -> list[float]:
    """Per stem: the largest share of its n-grams found in one reference text (containment)."""
    ref = [shingles(t, n) for t in reference]
    idx = _index(ref)
    out = []
    for text in stem_texts:
        g = shingles(text, n)
        best = 0.0
        for j in {j for gram in g for j in idx.get(gram, ())}:
            best = max(best, len(g & ref[j]) / len(g))
        out.append(best)
    return out


# --------------------------------------------------------------------------- a user's prompts

def constraint_from_text(text: str) -> Constraint:
    """A user's constraint sentence: the typed constraint the rule decomposer reads in it when
    it reads exactly one, else a free-text constraint."""
    from musc_jax.data.decompose import rule_decompose

    found = rule_decompose(text)
    return found[0] if len(found) == 1 else free_text(text.strip())


# ------------------------------------------------------------------------------------------ CLI

def _main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write generated IFEval-style instructions as JSONL.")
    p.add_argument("--num", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--counts", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--out", required=True)
    p.add_argument("--check", default="", help="reference JSONL (prompt field) to check against")
    p.add_argument("--threshold", type=float, default=0.5)
    a = p.parse_args(argv)
    seeds = generate_instructions(a.num, a.seed, a.counts)
    write_jsonl(seeds, a.out)
    print(f"wrote {len(seeds)} instructions to {a.out}")
    if a.check:
        ref = [json.loads(l)["prompt"] for l in open(a.check, encoding="utf-8") if l.strip()]
        dups = near_duplicates([s.prompt for s in seeds], ref, threshold=a.threshold)
        print(f"max 3-gram Jaccard vs {a.check}: {max_similarity([s.prompt for s in seeds], ref):.3f}; "
              f"near-duplicates (>= {a.threshold}): {len(dups)}")
        return 1 if dups else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
