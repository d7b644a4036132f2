"""MuSC coarse-granularity pairs: decompose, corrupt, compose, respond (DESIGN 5.1).

    rows, stats = build_musc(seeds, policy, MuscConfig(decomposer="rule"), seed=0)

Per seed instruction:

1. **Decompose** into (task, constraints C, input): `decomposer="rule"` (typed constraints found
   by `decompose.decompose_instruction`), `"self"` (the policy itself at low temperature via
   `decompose.self_decompose`; unparseable outputs are counted and dropped) or `"given"` (the
   seed's own typed constraints, e.g. the microworld's or IFEval's labels; its task is the seed's
   task, else the rule decomposer's task). Samples with fewer than `min_constraints`
   constraints (the task not counted) are dropped and counted.
2. **Corrupt** C into C' with `recombine.corrupt` (the task is never among the candidates).
3. **Compose** x = compose(task, C) and x' = compose(task, C') with the same composer, style and
   composer seed, so they differ only in the sentences of the corrupted constraints. x is always
   recomposed, never the seed's original wording (which the decomposition may not cover in
   full); a seed that records the composer seed of its text (`meta["compose_seed"]`, e.g. the
   microworld) gets exactly its original text back. The optional self composer
   (`composer="self"`, `recombine.self_compose`) lets the policy rewrite both texts; outputs
   that lose a typed constraint fall back to the template text (counted).
4. **Respond**: y+ = π(x), y- = π(x'), one sample each (temperature 0.5 by default). Empty
   responses and (by default) identical ones are dropped and counted.
5. **Negativity** (where the corrupted constraints are verifiable): per pair `meta["negativity"]`
   records whether y+ satisfies each corrupted constraint and y- violates it; with
   `negativity_filter=True` only pairs where some corrupted constraint is satisfied by y+ and
   violated by y- are kept (`keep_unverifiable` decides about pairs with nothing verifiable).
   `shared_filter=True` also drops pairs where y- follows an uncorrupted (shared) constraint
   that y+ breaks: x' keeps fewer constraints, so y- meets the shared ones more easily, and
   such a pair teaches the policy to break them. The rates are always reported.

Rows follow the normalised pairs format (`musc_jax.data.pairs_io`); `stats` holds counts (summable
over shards) and the rates derived from them (`negativity_rates`).
"""

from __future__ import annotations

import collections
import dataclasses
import random
import zlib
from typing import Any, Mapping, Sequence

from musc_jax.data.constraints import Constraint, verify
from musc_jax.data.decompose import Decomposition, decompose_instruction, self_decompose
from musc_jax.data.policy import Policy, Sampling
from musc_jax.data.recombine import OPS, STYLES, CorruptionConfig, compose, corrupt, self_compose
from musc_jax.data.roles import respond_messages
from musc_jax.data.seeds import Seed

DECOMPOSERS = ("rule", "self", "given")
COMPOSERS = ("template", "self")


# ------------------------------------------------------------------------ helpers shared by builders

def config_from(cls, cfg: Any):
    """`cfg` as dataclass `cls`: an instance passes through; a mapping (dict, ConfigDict) is
    converted, with an unknown key an error that names it."""
    if isinstance(cfg, cls):
        return cfg
    if cfg is None:
        return cls()
    items = dict(cfg.items())
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(items) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; known: {sorted(names)}")
    for f in dataclasses.fields(cls):  # ConfigDict gives lists for tuple fields
        if f.name in items and isinstance(items[f.name], list):
            items[f.name] = tuple(items[f.name])
    return cls(**items)


def stage_seed(seed: int, stage: str) -> int:
    """A 31-bit seed for one stage of a build (decompose, respond, ...), fixed by (seed, stage)."""
    return zlib.crc32(f"{seed}:{stage}".encode()) & 0x7FFFFFFF


def first_replies(policy: Policy, conversations: Sequence[list[dict]], sampling: Sampling,
                  seed: int) -> list[list[str]]:
    """`policy.chat` with every reply coerced to text ("" for a missing or non-text reply)."""
    if not conversations:
        return []
    outs = policy.chat(list(conversations), sampling, seed)
    if len(outs) != len(conversations):
        raise ValueError(f"the policy returned {len(outs)} reply lists for {len(conversations)} "
                         "conversations")
    return [[o if isinstance(o, str) else "" for o in (out or [])] or [""] for out in outs]


def seed_meta(s: Seed, index: int) -> dict[str, Any]:
    """Provenance of a seed for the rows' meta (the response of a seed is not copied)."""
    return {"index": index, "prompt": s.prompt,
            **{k: v for k, v in s.meta.items() if k != "response"}}


def negativity_record(constraints: Sequence[Constraint], chosen: str, rejected: str) -> dict:
    """Whether y+ satisfies and y- violates each (verifiable) constraint of `constraints`.

    negative: some verifiable constraint is satisfied by y+ and violated by y- (None when none
    is verifiable); chosen_satisfies: y+ satisfies all verifiable ones; rejected_violates: y-
    violates at least one.
    """
    per = []
    for c in constraints:
        vc, vr = verify(chosen, c), verify(rejected, c)
        per.append({"id": c.id, "chosen": vc, "rejected": vr})
    checked = [p for p in per if p["chosen"] is not None and p["rejected"] is not None]
    if not checked:
        return {"checked": False, "negative": None, "chosen_satisfies": None,
                "rejected_violates": None, "per_constraint": per}
    return {"checked": True,
            "negative": any(p["chosen"] and not p["rejected"] for p in checked),
            "chosen_satisfies": all(p["chosen"] for p in checked),
            "rejected_violates": any(not p["rejected"] for p in checked),
            "per_constraint": per}


def shared_regressions(shared: Sequence[Constraint], chosen: str, rejected: str) -> list[str]:
    """Ids of the shared (uncorrupted) constraints that y- follows and y+ breaks."""
    return [c.id for c in shared if verify(chosen, c) is False and verify(rejected, c) is True]


NEGATIVITY_COUNTS = ("pairs", "checked", "negative", "chosen_satisfies", "rejected_violates")


def count_negativity(counter: collections.Counter, record: Mapping) -> None:
    counter["pairs"] += 1
    if record["checked"]:
        counter["checked"] += 1
        for k in ("negative", "chosen_satisfies", "rejected_violates"):
            counter[k] += bool(record[k])


def negativity_rates(counts: Mapping[str, int]) -> dict[str, float | None]:
    """Rates over the pairs with something verifiable (None when there are none)."""
    checked = counts.get("checked", 0)
    out: dict[str, float | None] = {
        "checked_rate": counts.get("checked", 0) / counts["pairs"] if counts.get("pairs") else None}
    for k in ("negative", "chosen_satisfies", "rejected_violates"):
        out[f"{k}_rate"] = counts.get(k, 0) / checked if checked else None
    return out


# ------------------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class MuscConfig:
    """Settings of the MuSC pair builder (see the module doc for each step)."""

    decomposer: str = "rule"            # "rule" | "self" | "given"
    min_constraints: int = 2            # drop samples with fewer constraints (task not counted)
    decompose_temperature: float = 0.2  # self decomposer
    decompose_max_new_tokens: int = 256
    corrupt_rate: float = 0.3           # k = max(1, round(rate * n)) constraints corrupted
    p_drop: float = 0.5
    p_negate: float = 0.25
    p_substitute: float = 0.25
    composer: str = "template"          # "template" | "self"
    compose_style: str = "paragraph"    # "paragraph" | "lines" | "list"
    compose_temperature: float = 0.2    # self composer
    compose_max_new_tokens: int = 256
    temperature: float = 0.5            # responses y+ and y-
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    negativity_filter: bool = False     # keep only pairs whose y- misses a corrupted constraint y+ meets
    keep_unverifiable: bool = True      # with the filter: keep pairs with nothing verifiable
    shared_filter: bool = False         # drop pairs where y- meets an uncorrupted constraint y+ breaks
    drop_identical: bool = True         # drop pairs with y+ == y-

    def __post_init__(self):
        if self.decomposer not in DECOMPOSERS:
            raise ValueError(f"musc.decomposer={self.decomposer!r}: choose one of {DECOMPOSERS}")
        if self.composer not in COMPOSERS:
            raise ValueError(f"musc.composer={self.composer!r}: choose one of {COMPOSERS}")
        if self.compose_style not in STYLES:
            raise ValueError(f"musc.compose_style={self.compose_style!r}: choose one of {STYLES}")
        if self.min_constraints < 1:
            raise ValueError(f"musc.min_constraints must be >= 1 (corruption needs a constraint), "
                             f"got {self.min_constraints}")
        _ = self.corruption  # validates the rate and probabilities

    @property
    def corruption(self) -> CorruptionConfig:
        return CorruptionConfig(self.corrupt_rate, self.p_drop, self.p_negate, self.p_substitute)

    def response_sampling(self) -> Sampling:
        return Sampling(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                        max_new_tokens=self.max_new_tokens)


# ------------------------------------------------------------------------------------- builder

@dataclasses.dataclass
class _Sample:
    index: int
    seed: Seed
    dec: Decomposition
    rng: random.Random
    corrupted: list[Constraint] = dataclasses.field(default_factory=list)
    records: list = dataclasses.field(default_factory=list)
    compose_seed: int = 0
    x: str = ""
    x_alt: str = ""


def _given(s: Seed) -> Decomposition | None:
    if s.constraints is None:
        return None
    if s.task:
        return Decomposition(s.task, list(s.constraints), None)
    rule = decompose_instruction(s.prompt)
    return Decomposition(rule.task, list(s.constraints), rule.input)


def _decompose(seeds: Sequence[Seed], policy: Policy, cfg: MuscConfig, seed: int,
               dropped: collections.Counter) -> list[Decomposition | None]:
    if cfg.decomposer == "rule":
        return [decompose_instruction(s.prompt) for s in seeds]
    if cfg.decomposer == "given":
        out = [_given(s) for s in seeds]
        dropped["no_given_decomposition"] += sum(d is None for d in out)
        return out

    def generate(convs, temperature=cfg.decompose_temperature):
        sampling = Sampling(temperature=temperature, max_new_tokens=cfg.decompose_max_new_tokens)
        return [o[0] for o in first_replies(policy, convs, sampling, stage_seed(seed, "decompose"))]

    # self_decompose drops too-few-constraint samples itself; min_constraints=0 keeps them here so
    # that all three decomposers count that drop in the same place.
    decs, st = self_decompose([s.prompt for s in seeds], generate,
                              temperature=cfg.decompose_temperature, min_constraints=0)
    dropped["parse_failure"] += st.parse_failures
    return decs


def _compose_all(samples: list[_Sample], policy: Policy, cfg: MuscConfig, seed: int,
                 stats: collections.Counter) -> None:
    for sm in samples:
        given = sm.seed.meta.get("compose_seed")
        sm.compose_seed = int(given) if isinstance(given, int) else sm.rng.getrandbits(31)
    if cfg.composer == "template":
        for sm in samples:
            sm.x = compose(sm.dec.task, sm.dec.constraints, sm.compose_seed, cfg.compose_style,
                           sm.dec.input)
            sm.x_alt = compose(sm.dec.task, sm.corrupted, sm.compose_seed, cfg.compose_style,
                               sm.dec.input)
        return
    # Self composer: one composer seed for the whole call (self_compose takes one), x and x'
    # composed in the same batch with the same settings.
    cseed = stage_seed(seed, "compose")
    items = [(sm.dec.task, cons) for sm in samples for cons in (sm.dec.constraints, sm.corrupted)]
    sampling = Sampling(temperature=cfg.compose_temperature, max_new_tokens=cfg.compose_max_new_tokens)

    def generate(convs):
        return [o[0] for o in first_replies(policy, convs, sampling, cseed)]

    texts, cst = self_compose(items, generate, seed=cseed, style=cfg.compose_style)
    stats["compose_fallbacks"] += cst.fallbacks
    stats["compose_accepted"] += cst.accepted
    for j, sm in enumerate(samples):
        inp = f"\n\n{sm.dec.input.strip()}" if sm.dec.input and sm.dec.input.strip() else ""
        sm.x, sm.x_alt = texts[2 * j] + inp, texts[2 * j + 1] + inp
        sm.compose_seed = cseed


def build_musc(seeds: Sequence[Seed], policy: Policy, cfg: MuscConfig | Mapping | None = None,
               seed: int = 0) -> tuple[list[dict], dict[str, Any]]:
    """MuSC pairs from `seeds` with `policy` (see the module doc). Returns (rows, stats).

    Every random choice is fixed by (`seed`, the seed's position), so a rerun gives the same rows
    (with a deterministic policy).
    """
    cfg = config_from(MuscConfig, cfg)
    dropped: collections.Counter = collections.Counter()
    stats: collections.Counter = collections.Counter()
    decs = _decompose(seeds, policy, cfg, seed, dropped)

    samples: list[_Sample] = []
    for i, (s, dec) in enumerate(zip(seeds, decs)):
        if dec is None:
            continue
        stats["decomposed"] += 1
        if len(dec.constraints) < cfg.min_constraints:
            dropped["too_few_constraints"] += 1
            continue
        sm = _Sample(i, s, dec, random.Random(f"musc:{seed}:{i}"))
        sm.corrupted, sm.records = corrupt(dec.constraints, sm.rng, config=cfg.corruption)
        samples.append(sm)
    corruption: collections.Counter = collections.Counter()
    for sm in samples:
        for r in sm.records:
            corruption[f"op/{r.op}"] += 1
            corruption[f"applied/{r.applied}"] += 1
            corruption["fallback"] += r.op != r.applied
            corruption["records"] += 1

    _compose_all(samples, policy, cfg, seed, stats)
    unchanged = [sm for sm in samples if sm.x == sm.x_alt]
    dropped["unchanged_prompt"] += len(unchanged)
    samples = [sm for sm in samples if sm.x != sm.x_alt]

    convs = [respond_messages(sm.x) for sm in samples] + [respond_messages(sm.x_alt) for sm in samples]
    replies = [r[0] for r in first_replies(policy, convs, cfg.response_sampling(),
                                           stage_seed(seed, "respond"))]
    n = len(samples)
    neg_counts: collections.Counter = collections.Counter()
    rows = []
    for j, sm in enumerate(samples):
        y_pos, y_neg = replies[j], replies[n + j]
        if not y_pos.strip() or not y_neg.strip():
            dropped["empty_response"] += 1
            continue
        if cfg.drop_identical and y_pos == y_neg:
            dropped["identical_responses"] += 1
            continue
        neg = negativity_record([r.original for r in sm.records], y_pos, y_neg)
        neg["chosen_follows_all"] = all(verify(y_pos, c) is not False for c in sm.dec.constraints)
        corrupted_at = {r.index for r in sm.records}
        neg["shared_regressions"] = shared_regressions(
            [c for i, c in enumerate(sm.dec.constraints) if i not in corrupted_at], y_pos, y_neg)
        count_negativity(neg_counts, neg)
        neg_counts["chosen_follows_all"] += neg["chosen_follows_all"]
        neg_counts["shared_clean"] += not neg["shared_regressions"]
        if cfg.negativity_filter and not (neg["negative"] or (not neg["checked"]
                                                              and cfg.keep_unverifiable)):
            dropped["not_negative"] += 1
            continue
        if cfg.shared_filter and neg["shared_regressions"]:
            dropped["shared_regression"] += 1
            continue
        rows.append({
            "prompt": [{"role": "user", "content": sm.x}],
            "chosen": y_pos,
            "rejected": y_neg,
            "rejected_prompt": [{"role": "user", "content": sm.x_alt}],
            "constraints": [c.to_dict() for c in sm.dec.constraints],
            "corrupted": [r.to_dict() for r in sm.records],
            "method": "musc",
            "meta": {"seed": seed_meta(sm.seed, sm.index), "rng_seed": seed, "task": sm.dec.task,
                     "input": sm.dec.input, "decomposer": cfg.decomposer,
                     "composer": cfg.composer, "compose_style": cfg.compose_style,
                     "compose_seed": sm.compose_seed,
                     "rejected_constraints": [c.to_dict() for c in sm.corrupted],
                     "negativity": neg},
        })
    out: dict[str, Any] = {
        "seeds": len(seeds),
        "decomposed": stats["decomposed"],
        "corrupted": n + len(unchanged),
        "pairs": len(rows),
        "dropped": {k: v for k, v in dropped.items() if v},
        "parse_failures": dropped["parse_failure"],
        "corruption": dict(corruption),
        "negativity": {k: neg_counts[k] for k in NEGATIVITY_COUNTS + ("chosen_follows_all", "shared_clean")},
    }
    if cfg.composer == "self":
        out["compose"] = {"accepted": stats["compose_accepted"], "fallbacks": stats["compose_fallbacks"]}
    out["rates"] = finalize_rates(out)
    return rows, out


def finalize_rates(stats: Mapping[str, Any]) -> dict[str, float | None]:
    """Rates derived from a (possibly summed) stats dict of `build_musc` or `build_ecd`."""
    neg = stats.get("negativity", {})
    rates = negativity_rates(neg)
    pairs = neg.get("pairs", 0)
    for k in ("chosen_follows_all", "shared_clean"):
        if k in neg:
            rates[f"{k}_rate"] = neg[k] / pairs if pairs else None
    corr = stats.get("corruption", {})
    if corr.get("records"):
        for o in OPS:
            rates[f"corruption/applied_{o}"] = corr.get(f"applied/{o}", 0) / corr["records"]
        rates["corruption/fallback"] = corr.get("fallback", 0) / corr["records"]
    return rates


__all__ = ["COMPOSERS", "DECOMPOSERS", "MuscConfig", "build_musc", "config_from", "count_negativity",
           "finalize_rates", "first_replies", "negativity_rates", "negativity_record", "seed_meta",
           "stage_seed"]
