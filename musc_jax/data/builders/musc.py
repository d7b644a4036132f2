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
5. **Negativity**: `negativity_filter` names where the filter's signal comes from:
   `"none"` keeps every pair (the paper); `"self"` asks the policy itself, with `negativity_votes`
   sampled verdicts per question as the self judge does (`roles.judge_messages` on the task
   with that one constraint), whether y+ keeps a corrupted constraint and y- breaks it;
   `"checker"` asks the programmatic verifiers (`constraints.verify`, the metric's own oracle).
   A pair is kept when some corrupted constraint is kept by y+ and broken by y- by that signal
   (`keep_unverifiable` decides about pairs where no question got an answer).
   `shared_filter=True` (with "self" or "checker") also drops pairs where y- follows an
   uncorrupted (shared) constraint that y+ breaks, by the same signal: x' keeps fewer
   constraints, so y- meets the shared ones more easily, and such a pair teaches the policy to
   break them. `stats["signal"]` is "checker" when the checker selected pairs, else "self".
   The checker's negativity rates are always logged as a diagnostic (`meta["negativity"]`,
   `stats["negativity"]`); with "self", `meta["self_check"]` holds the policy's verdicts and
   `stats["self_check"]` their agreement with the checker.

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
from musc_jax.data.judge import SelfJudge
from musc_jax.data.policy import Policy, Sampling
from musc_jax.data.recombine import (COMPOSE_PROMPTS, FREETEXT_EDITS, OPS, STYLES,
                                     CorruptionConfig, apply_constraint_edits, compose, corrupt,
                                     corrupted_from, self_compose)
from musc_jax.data.decompose import DECOMPOSE_PROMPTS
from musc_jax.data.roles import edit_constraint_messages, parse_constraint_edit, respond_messages
from musc_jax.data.seeds import Seed
from musc_jax.config import config_from

DECOMPOSERS = ("rule", "self", "given")
COMPOSERS = ("template", "self")
NEGATIVITY_FILTERS = ("none", "self", "checker")


# ------------------------------------------------------------------------ helpers shared by builders

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
    return _negativity_from([{"id": c.id, "chosen": verify(chosen, c), "rejected": verify(rejected, c)}
                             for c in constraints])


def _negativity_from(per: list[dict]) -> dict:
    """`negativity_record`'s summary from per-constraint answers (True / False / None each)."""
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


SELF_AGREEMENT = ("answered", "agree")


def _count_self_agreement(counter: collections.Counter, mine: Sequence[Mapping],
                          checker: Sequence[Mapping]) -> None:
    """Per answered (response, constraint) question: does the policy's verdict match the
    checker's? (a diagnostic of the self signal; never used to select pairs)"""
    for a, b in zip(mine, checker):
        for side in ("chosen", "rejected"):
            if a[side] is not None and b[side] is not None:
                counter["answered"] += 1
                counter["agree"] += a[side] == b[side]


def _self_checks(cands: Sequence[tuple], policy: Policy, cfg: "MuscConfig",
                 seed: int) -> tuple[list[dict[str, list[dict]]], Any]:
    """The policy's own verdicts for every (pair, constraint, response) question the filters ask.

    Each question is the judge prompt the policy was taught (`roles.judge_messages`) on the task
    with that one constraint, sampled `negativity_votes` times; the majority answers (a tie or
    no parsable vote: None). Returns per pair {"corrupted": [...], "shared": [...]}, each entry
    {"id", "chosen", "rejected"}.
    """
    judge = SelfJudge(policy, votes=cfg.negativity_votes, temperature=cfg.negativity_temperature,
                      max_new_tokens=cfg.negativity_max_new_tokens)
    items, where = [], []
    for j, (sm, y_pos, y_neg) in enumerate(cands):
        corrupted_at = {r.index for r in sm.records}
        groups = {"corrupted": [r.original for r in sm.records]}
        if cfg.shared_filter:
            groups["shared"] = [c for i, c in enumerate(sm.dec.constraints) if i not in corrupted_at]
        for group, cons in groups.items():
            for k, c in enumerate(cons):
                text = compose(sm.dec.task, [c], sm.compose_seed, cfg.compose_style, sm.dec.input)
                for side, y in (("chosen", y_pos), ("rejected", y_neg)):
                    items.append((text, y, None))
                    where.append((j, group, k, c.id, side))
    verdicts = judge.judge(items, seed=stage_seed(seed, "self_check")) if items else []
    out: list[dict[str, list[dict]]] = [{"corrupted": [], "shared": []} for _ in cands]
    for (j, group, k, cid, side), v in zip(where, verdicts):
        lst = out[j][group]
        if len(lst) <= k:
            lst.append({"id": cid, "chosen": None, "rejected": None})
        lst[k][side] = v.verdict
    return out, judge.stats


# ------------------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class MuscConfig:
    """Settings of the MuSC pair builder (see the module doc for each step)."""

    decomposer: str = "rule"            # "rule" | "self" | "given"
    min_constraints: int = 2            # drop samples with fewer constraints (task not counted)
    decompose_temperature: float = 0.2  # self decomposer
    decompose_prompt: str = "few_shot"  # self decomposer: "few_shot" | "zero_shot" (roles prompt)
    decompose_max_new_tokens: int = 256
    corrupt_rate: float = 0.3           # k = max(1, round(rate * n)) constraints corrupted
    p_drop: float = 0.5
    p_negate: float = 0.25
    p_substitute: float = 0.25
    composer: str = "template"          # "template" | "self"
    compose_style: str = "paragraph"    # "paragraph" | "lines" | "list"
    compose_temperature: float = 0.2    # self composer
    compose_prompt: str = "rewrite"     # self composer: "rewrite" (the template text) | "parts"
    compose_max_new_tokens: int = 256
    temperature: float = 0.5            # responses y+ and y-
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256
    negativity_filter: str = "none"     # "none" (the paper) | "self" (the policy's votes) | "checker"
    negativity_votes: int = 5           # "self": sampled verdicts per question (majority)
    negativity_temperature: float = 0.7
    negativity_max_new_tokens: int = 24
    keep_unverifiable: bool = True      # with a filter: keep pairs where no question was answered
    shared_filter: bool = False         # drop pairs where y- meets an uncorrupted constraint y+ breaks
    drop_identical: bool = True         # drop pairs with y+ == y-
    freetext_edit: str = "policy"       # negate/substitute a free-text constraint: "policy" | "typed"

    def __post_init__(self):
        if self.decomposer not in DECOMPOSERS:
            raise ValueError(f"musc.decomposer={self.decomposer!r}: choose one of {DECOMPOSERS}")
        if self.composer not in COMPOSERS:
            raise ValueError(f"musc.composer={self.composer!r}: choose one of {COMPOSERS}")
        if self.decompose_prompt not in DECOMPOSE_PROMPTS:
            raise ValueError(f"musc.decompose_prompt={self.decompose_prompt!r}: choose one of "
                             f"{DECOMPOSE_PROMPTS}")
        if self.compose_prompt not in COMPOSE_PROMPTS:
            raise ValueError(f"musc.compose_prompt={self.compose_prompt!r}: choose one of "
                             f"{COMPOSE_PROMPTS}")
        if self.compose_style not in STYLES:
            raise ValueError(f"musc.compose_style={self.compose_style!r}: choose one of {STYLES}")
        if self.min_constraints < 1:
            raise ValueError(f"musc.min_constraints must be >= 1 (corruption needs a constraint), "
                             f"got {self.min_constraints}")
        _ = self.corruption  # validates the rate and probabilities
        nf = self.negativity_filter
        if isinstance(nf, bool) or str(nf).lower() in ("true", "false"):
            raise ValueError(
                f"musc.negativity_filter={nf!r} is the old boolean form: write 'checker' for what "
                "True did (the verifiers pick pairs: a checker signal), 'self' (the policy judges "
                "with votes) or 'none' (the paper, what False did)")
        if nf not in NEGATIVITY_FILTERS:
            raise ValueError(f"musc.negativity_filter={nf!r}: choose one of {NEGATIVITY_FILTERS}")
        if self.shared_filter and nf == "none":
            raise ValueError("musc.shared_filter=True needs a signal: set musc.negativity_filter "
                             "to 'self' or 'checker' (the shared filter asks the same one)")
        if self.negativity_votes < 1:
            raise ValueError(f"musc.negativity_votes must be >= 1, got {self.negativity_votes}")
        if self.freetext_edit not in FREETEXT_EDITS:
            raise ValueError(f"musc.freetext_edit={self.freetext_edit!r}: choose one of "
                             f"{FREETEXT_EDITS}")

    @property
    def signal(self) -> str:
        """Where the preference signal comes from: "checker" when the verifiers pick pairs."""
        return "checker" if self.negativity_filter == "checker" else "self"

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
               dropped: collections.Counter, roles: dict) -> list[Decomposition | None]:
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
                              temperature=cfg.decompose_temperature, min_constraints=0,
                              prompt=cfg.decompose_prompt)
    dropped["parse_failure"] += st.parse_failures
    roles["decompose"].update(calls=len(seeds), parsed=len(seeds) - st.parse_failures)
    return decs


def _policy_edits(samples: list[_Sample], policy: Policy, cfg: MuscConfig, seed: int,
                  roles: dict) -> None:
    """The policy writes the negations / substitutions of free-text constraints
    (`roles.edit_constraint_messages`); an unparsable or unchanged edit falls back to dropping
    the constraint (counted as a parse failure of the "edit" role and in the corruption
    fallbacks)."""
    asks = [(sm, r) for sm in samples for r in sm.records if r.pending]
    if not asks:
        return
    convs = [edit_constraint_messages(r.op, sm.dec.task, r.original.render()) for sm, r in asks]
    sampling = Sampling(temperature=cfg.compose_temperature, max_new_tokens=cfg.compose_max_new_tokens)
    outs = [o[0] for o in first_replies(policy, convs, sampling, stage_seed(seed, "edit"))]
    texts = [parse_constraint_edit(o, r.original.render()) for o, (_, r) in zip(outs, asks)]
    roles["edit"].update(calls=len(asks), parsed=sum(t is not None for t in texts))
    k = 0
    for sm in samples:
        n = sum(r.pending for r in sm.records)
        if n:
            sm.records, _ = apply_constraint_edits(sm.records, texts[k:k + n])
            sm.corrupted = corrupted_from(sm.dec.constraints, sm.records)
            k += n


def _compose_all(samples: list[_Sample], policy: Policy, cfg: MuscConfig, seed: int,
                 stats: collections.Counter, roles: dict) -> None:
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

    texts, cst = self_compose(items, generate, seed=cseed, style=cfg.compose_style,
                              prompt=cfg.compose_prompt)
    stats["compose_fallbacks"] += cst.fallbacks
    stats["compose_accepted"] += cst.accepted
    roles["compose"].update(calls=cst.total, parsed=cst.accepted)
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
    # How often each role the policy played gave a usable output (calls, parsed).
    roles: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    decs = _decompose(seeds, policy, cfg, seed, dropped, roles)

    samples: list[_Sample] = []
    for i, (s, dec) in enumerate(zip(seeds, decs)):
        if dec is None:
            continue
        stats["decomposed"] += 1
        if len(dec.constraints) < cfg.min_constraints:
            dropped["too_few_constraints"] += 1
            continue
        sm = _Sample(i, s, dec, random.Random(f"musc:{seed}:{i}"))
        sm.corrupted, sm.records = corrupt(dec.constraints, sm.rng, config=cfg.corruption,
                                           freetext=cfg.freetext_edit)
        samples.append(sm)
    _policy_edits(samples, policy, cfg, seed, roles)
    corruption: collections.Counter = collections.Counter()
    for sm in samples:
        for r in sm.records:
            corruption[f"op/{r.op}"] += 1
            corruption[f"applied/{r.applied}"] += 1
            corruption["fallback"] += r.op != r.applied
            corruption["records"] += 1

    _compose_all(samples, policy, cfg, seed, stats, roles)
    unchanged = [sm for sm in samples if sm.x == sm.x_alt]
    dropped["unchanged_prompt"] += len(unchanged)
    samples = [sm for sm in samples if sm.x != sm.x_alt]

    convs = [respond_messages(sm.x) for sm in samples] + [respond_messages(sm.x_alt) for sm in samples]
    replies = [r[0] for r in first_replies(policy, convs, cfg.response_sampling(),
                                           stage_seed(seed, "respond"))]
    n = len(samples)
    cands = []
    for j, sm in enumerate(samples):
        y_pos, y_neg = replies[j], replies[n + j]
        if not y_pos.strip() or not y_neg.strip():
            dropped["empty_response"] += 1
        elif cfg.drop_identical and y_pos == y_neg:
            dropped["identical_responses"] += 1
        else:
            cands.append((sm, y_pos, y_neg))
    roles["respond"].update(calls=2 * n, parsed=sum(bool(r.strip()) for r in replies))
    checks = None
    if cfg.negativity_filter == "self":
        checks, jst = _self_checks(cands, policy, cfg, seed)
        roles["judge"].update(calls=jst.votes, parsed=jst.votes - jst.unparsable)
    neg_counts: collections.Counter = collections.Counter()
    self_counts: collections.Counter = collections.Counter()
    rows = []
    for j, (sm, y_pos, y_neg) in enumerate(cands):
        corrupted_at = {r.index for r in sm.records}
        shared = [c for i, c in enumerate(sm.dec.constraints) if i not in corrupted_at]
        neg = negativity_record([r.original for r in sm.records], y_pos, y_neg)
        neg["chosen_follows_all"] = all(verify(y_pos, c) is not False for c in sm.dec.constraints)
        neg["shared_regressions"] = shared_regressions(shared, y_pos, y_neg)
        count_negativity(neg_counts, neg)
        neg_counts["chosen_follows_all"] += neg["chosen_follows_all"]
        neg_counts["shared_clean"] += not neg["shared_regressions"]
        # The signal that selects pairs: the checker's record, or the policy's own verdicts.
        sel = neg
        if checks is not None:
            sel = _negativity_from(checks[j]["corrupted"])
            sel["shared_regressions"] = [p["id"] for p in checks[j]["shared"]
                                         if p["chosen"] is False and p["rejected"] is True]
            _count_self_agreement(self_counts, checks[j]["corrupted"], neg["per_constraint"])
            count_negativity(self_counts, sel)
        if cfg.negativity_filter != "none" and not (
                sel["negative"] or (not sel["checked"] and cfg.keep_unverifiable)):
            dropped["not_negative"] += 1
            continue
        if cfg.shared_filter and sel["shared_regressions"]:
            dropped["shared_regression"] += 1
            continue
        meta = {"seed": seed_meta(sm.seed, sm.index), "rng_seed": seed, "task": sm.dec.task,
                "input": sm.dec.input, "decomposer": cfg.decomposer,
                "composer": cfg.composer, "compose_style": cfg.compose_style,
                "compose_seed": sm.compose_seed, "signal": cfg.signal,
                "negativity_filter": cfg.negativity_filter,
                "rejected_constraints": [c.to_dict() for c in sm.corrupted],
                "negativity": neg}
        if checks is not None:
            meta["self_check"] = {**sel, "per_constraint": checks[j]["corrupted"],
                                  "shared": checks[j]["shared"]}
        rows.append({
            "prompt": [{"role": "user", "content": sm.x}],
            "chosen": y_pos,
            "rejected": y_neg,
            "rejected_prompt": [{"role": "user", "content": sm.x_alt}],
            "constraints": [c.to_dict() for c in sm.dec.constraints],
            "corrupted": [r.to_dict() for r in sm.records],
            "method": "musc",
            "meta": meta,
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
        "signal": cfg.signal,
        "negativity_filter": cfg.negativity_filter,
        "roles": {k: dict(v) for k, v in roles.items()},
    }
    if checks is not None:
        out["self_check"] = {k: self_counts[k] for k in NEGATIVITY_COUNTS + SELF_AGREEMENT}
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
    sc = stats.get("self_check") or {}
    if sc.get("answered"):
        rates["self_check/agreement_with_checker"] = sc.get("agree", 0) / sc["answered"]
    for role, c in (stats.get("roles") or {}).items():
        if isinstance(c, Mapping) and c.get("calls"):
            rates[f"parsed/{role}"] = c.get("parsed", 0) / c["calls"]
    return rates


__all__ = ["COMPOSERS", "DECOMPOSERS", "MuscConfig", "build_musc", "count_negativity",
           "finalize_rates", "first_replies", "negativity_rates", "negativity_record", "seed_meta",
           "stage_seed"]
