"""SPaR pairs: self-play with tree-search refinement, one iteration (DESIGN 5.5 steps 1-4).

1. The actor samples `samples` responses per prompt (temperature 0.9, top-p 0.9).
2. The judge labels each response by majority of `judge_votes` votes (ties dropped): a
   `SelfJudge` over the refiner (by default the same policy) or, with `judge="verifier"`, the
   programmatic `VerifierJudge` (oracle ablation). The first failed (non-empty) response of a
   prompt, in sample order, becomes the root of its refinement tree; prompts with none are
   counted (`no_failed`).
3. Tree search (`musc_jax.data.refine`, bfs by default, dfs with `search="dfs"`).
4. Actor pairs: x, chosen = the successful refinement, rejected = the root, as normalised pairs
   rows with method "spar" (a refinement identical to its root is skipped and counted).
   Refiner SFT rows `{"prompt": messages, "response": text, "role": "refine"|"judge"}`:
   * refinement traces: the refine prompt of the successful node's parent -> the successful
     refinement (`refine_sft="last"`, default), or the root's refine prompt -> the successful
     refinement (`"root"`), or both (`"both"`);
   * contested judgements: for every judgement made in this iteration (labels and tree nodes)
     whose valid votes were not unanimous but had a majority, the judge prompt -> the majority
     judgement text (never from the verifier, whose single vote is always unanimous).

`build_spar(seeds, policy, cfg, seed)` returns a `SparResult`. It unpacks as `rows, stats =
build_spar(...)` (the builders' common signature); the refiner SFT rows are in
`result.refiner_sft` and also in `stats["refiner_sft"]`; every other stats value is a number.
Stats (numbers): prompts, samples, empty_samples (not judged, never roots), labelled_pass,
labelled_fail, ties_dropped, no_valid_vote, judge_agreement (share of unanimous label
judgements), judge_agreement_all (labels and tree nodes), judge_votes, judge_unparsable,
judge_ties, no_failed (prompts without a failed response), roots, refinement_success,
refinement_success_rate (per root), avg_depth (of the successful refinements),
avg_depth_reached, expansions, refine_calls, tree_judge_calls, stop_<gate|max_depth|budget|
exhausted>, identical_skipped, pairs, contested_judgements, refiner_sft_refine, refiner_sft_judge.

`spar_iteration(...)` is the one-iteration helper for the SPaR driver: it builds both and
optionally writes them (pairs via `pairs_io.write_pairs`, refiner SFT as JSONL readable by
`pairs_io.read_sft`).

Config keys (`SparConfig`; an ml_collections section, a dict, a dataclass or None; an unknown
key is an error naming it):

    samples=5              actor responses per prompt
    actor_temperature=0.9  actor_top_p=0.9  actor_top_k=0
    max_new_tokens=128     actor and refiner responses
    judge="self"           "self" (signal "self") | "verifier" (signal "checker")
    judge_votes=5          judge_temperature=0.7  judge_max_new_tokens=96
    judge_critique=True    the judge prompt asks for a short critique before "Verdict: yes|no"
    branch=3  keep=2  max_depth=3  gate=0.5  search="bfs" ("bfs" | "dfs")
    budget=0               refinements per tree (0: unlimited)
    refine_temperature=0.7 refine_top_p=1.0
    refine_sft="last"      "last" | "root" | "both" (which refine prompt a trace teaches)
    contested_sft=True     add contested judgements to the refiner SFT data
    max_refine_sft=0  max_judge_sft=0   per-iteration caps on the refiner SFT rows (0: none);
                           judge rows are kept balanced between "yes" and "no" verdicts
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

from musc_jax.config import config_from
from musc_jax.data.judge import (JUDGES, SIGNAL, Judge, Judgement, JudgeStats, derive_seed,
                                 make_judge)
from musc_jax.data.policy import Policy, Sampling
from musc_jax.data.refine import STOPS, STRATEGIES, Root, SearchConfig, SearchResult, search
from musc_jax.data.roles import (critique_judge_messages, judge_messages, refine_messages,
                                 respond_messages)
from musc_jax.data.seeds import Seed

REFINE_SFT = ("last", "root", "both")


def builder_config(cls, cfg: Any, name: str):
    """`cls` (a dataclass) from None, an instance, a dict, an ml_collections ConfigDict or another
    dataclass; an unknown key raises ValueError naming it (`name` is kept for callers' clarity)."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, (cls, type)):
        cfg = dataclasses.asdict(cfg)
    return config_from(cls, cfg)


@dataclasses.dataclass(frozen=True)
class SparConfig:
    samples: int = 5
    actor_temperature: float = 0.9
    actor_top_p: float = 0.9
    actor_top_k: int = 0
    max_new_tokens: int = 128
    judge: str = "self"
    judge_votes: int = 5
    judge_temperature: float = 0.7
    judge_max_new_tokens: int = 96
    judge_critique: bool = True         # the judge writes a short critique before yes/no
    branch: int = 3
    keep: int = 2
    max_depth: int = 3
    gate: float = 0.5
    search: str = "bfs"
    budget: int = 0
    refine_temperature: float = 0.7
    refine_top_p: float = 1.0
    refine_sft: str = "last"
    contested_sft: bool = True
    max_refine_sft: int = 0             # per iteration, refinement traces kept (0: all)
    max_judge_sft: int = 0              # per iteration, judge rows kept, balanced yes/no (0: all)

    def __post_init__(self) -> None:
        if self.judge not in JUDGES:
            raise ValueError(f"spar judge must be one of {JUDGES}, got {self.judge!r}")
        if self.search not in STRATEGIES:
            raise ValueError(f"spar search must be one of {STRATEGIES}, got {self.search!r}")
        if self.refine_sft not in REFINE_SFT:
            raise ValueError(f"spar refine_sft must be one of {REFINE_SFT}, got {self.refine_sft!r}")
        if self.samples < 1 or self.judge_votes < 1:
            raise ValueError("spar samples and judge_votes must be >= 1")

    @classmethod
    def from_config(cls, cfg: Any) -> "SparConfig":
        return builder_config(cls, cfg, "spar")

    def search_config(self) -> SearchConfig:
        return SearchConfig(branch=self.branch, keep=self.keep, max_depth=self.max_depth,
                            gate=self.gate, strategy=self.search, budget=self.budget or None,
                            temperature=self.refine_temperature, top_p=self.refine_top_p,
                            max_new_tokens=self.max_new_tokens)


@dataclasses.dataclass
class SparResult:
    """Actor pairs rows, stats (numbers, plus "refiner_sft"), refiner SFT rows, search results.

    Iterating gives (rows, stats), so `rows, stats = build_spar(...)` works."""

    rows: list[dict]
    stats: dict[str, Any]
    refiner_sft: list[dict]
    searches: list[SearchResult] = dataclasses.field(default_factory=list)

    def __iter__(self) -> Iterator:
        return iter((self.rows, self.stats))


def _constraint_dicts(seed: Seed) -> list[dict]:
    return [c.to_dict() if hasattr(c, "to_dict") else dict(c) for c in (seed.constraints or [])]


def _meta(s: Seed, seed: int, index: int, **extra: Any) -> dict:
    return {**s.meta, "seed": seed, "index": index, **extra}


def _balanced(rows: list[dict], cap: int) -> list[dict]:
    """At most `cap` judge rows (0: all), half "yes" and half "no" verdicts where both are
    there (the rest filled from the larger side), in their original order."""
    if not cap or len(rows) <= cap:
        return rows
    yes = [i for i, r in enumerate(rows) if r["verdict"] is True]
    no = [i for i, r in enumerate(rows) if r["verdict"] is not True]
    take_yes = min(len(yes), max(cap // 2, cap - len(no)))
    keep = set(yes[:take_yes]) | set(no[:cap - take_yes])
    return [r for i, r in enumerate(rows) if i in keep]


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def build_spar(seeds: Sequence[Seed], policy: Policy, cfg: Any = None, seed: int = 0, *,
               refiner: Policy | None = None, judge: Judge | None = None,
               round: int | None = None) -> SparResult:
    """One SPaR iteration's data: actor pairs (method "spar") and refiner SFT rows.

    policy: the actor. refiner: the refiner (default: the actor, i.e. shared weights); it is also
    the self judge. judge: overrides the judge built from cfg. round: recorded in each row's meta.
    """
    c = SparConfig.from_config(cfg)
    refiner = policy if refiner is None else refiner
    if judge is None:
        judge = make_judge(c.judge, refiner, votes=c.judge_votes, temperature=c.judge_temperature,
                           max_new_tokens=c.judge_max_new_tokens, critique=c.judge_critique)
    seeds = list(seeds)
    extra_meta = {} if round is None else {"round": round}

    # 1. Actor samples.
    actor = Sampling(temperature=c.actor_temperature, top_p=c.actor_top_p, top_k=c.actor_top_k,
                     max_new_tokens=c.max_new_tokens, num_samples=c.samples)
    samples = policy.chat([respond_messages(s.prompt) for s in seeds], actor,
                          seed=derive_seed(seed, "actor")) if seeds else []
    samples = [[str(y).strip() for y in ys] for ys in samples]

    # 2. Labels by majority (ties dropped); the first failed response is the root.
    where = [(p, k) for p, ys in enumerate(samples) for k, y in enumerate(ys) if y]
    items = [(seeds[p].prompt, samples[p][k], seeds[p].constraints) for p, k in where]
    labels: dict[tuple[int, int], Judgement] = dict(zip(
        where, judge.judge(items, seed=derive_seed(seed, "label")) if items else []))
    roots, root_of = [], []
    for p, s in enumerate(seeds):
        failed = [k for k in range(len(samples[p])) if (p, k) in labels
                  and labels[p, k].verdict is False]
        if failed:
            k = failed[0]
            roots.append(Root(s.prompt, samples[p][k], labels[p, k], s.constraints))
            root_of.append(p)

    # 3. Tree search.
    results = search(roots, refiner, judge, c.search_config(), seed=derive_seed(seed, "search"))

    # 4. Actor pairs and refiner SFT data.
    rows, sft, identical = [], [], 0
    for p, res in zip(root_of, results):
        if not res.success:
            continue
        s, root, best = seeds[p], res.root, res.trace[res.node]
        if best.response == root.response:
            identical += 1
            continue
        rows.append({
            "prompt": respond_messages(s.prompt), "chosen": best.response,
            "rejected": root.response, "rejected_prompt": [],
            "constraints": _constraint_dicts(s), "corrupted": [], "method": "spar",
            "meta": _meta(s, seed, p, **extra_meta, spar={
                "judge": c.judge, "search": c.search, "depth": best.depth,
                "chosen_value": best.value, "rejected_value": root.value,
                "expansions": res.expansions, "refine_calls": res.refine_calls,
                "judge_calls": res.judge_calls})})
        parents = [best.parent] if c.refine_sft in ("last", "both") else []
        if c.refine_sft in ("root", "both") and 0 not in parents:
            parents.append(0)
        for par in (res.trace[i] for i in parents):
            sft.append({"prompt": refine_messages(s.prompt, par.response, par.judgement),
                        "response": best.response, "role": "refine"})
    # Contested judgements: labels, then tree nodes (the roots are labels already).
    judged: list[tuple[str, str, Judgement]] = [
        (seeds[p].prompt, samples[p][k], labels[p, k]) for p, k in where]
    for res in results:
        judged.extend((res.instruction, n.response, n.judged) for n in res.trace[1:]
                      if n.judged is not None)
    n_contested = 0
    judge_prompt = critique_judge_messages if c.judge_critique else judge_messages
    judge_rows = []
    for instruction, response, j in judged:
        if j.contested:
            n_contested += 1
            if c.contested_sft:
                judge_rows.append({"prompt": judge_prompt(instruction, response),
                                   "response": j.text, "role": "judge", "verdict": j.verdict})
    refine_rows = sft
    capped = {"refine": max(0, len(refine_rows) - c.max_refine_sft) if c.max_refine_sft else 0}
    if c.max_refine_sft:
        refine_rows = refine_rows[:c.max_refine_sft]
    kept_judge = _balanced(judge_rows, c.max_judge_sft)
    capped["judge"] = len(judge_rows) - len(kept_judge)
    sft = refine_rows + [{k: v for k, v in r.items() if k != "verdict"} for r in kept_judge]

    label_stats = JudgeStats.of(list(labels.values()))
    all_stats = JudgeStats.of([j for _, _, j in judged])
    ok = [r for r in results if r.success]
    stats: dict[str, Any] = {
        "prompts": len(seeds),
        "samples": sum(len(ys) for ys in samples),
        "empty_samples": sum(len(ys) for ys in samples) - len(where),
        "labelled_pass": label_stats.passed,
        "labelled_fail": label_stats.failed,
        "ties_dropped": label_stats.ties,
        "no_valid_vote": label_stats.no_valid,
        "judge_agreement": label_stats.agreement,
        "judge_agreement_all": all_stats.agreement,
        "judge_votes": all_stats.votes,
        "judge_unparsable": all_stats.unparsable,
        "judge_ties": all_stats.ties,
        "no_failed": len(seeds) - len(roots),
        "roots": len(roots),
        "refinement_success": len(ok),
        "refinement_success_rate": len(ok) / len(roots) if roots else 0.0,
        "avg_depth": _mean([r.trace[r.node].depth for r in ok]),
        "avg_depth_reached": _mean([r.depth for r in results]),
        "expansions": sum(r.expansions for r in results),
        "refine_calls": sum(r.refine_calls for r in results),
        "tree_judge_calls": sum(r.judge_calls for r in results),
        **{f"stop_{s}": sum(r.stop == s for r in results) for s in STOPS},
        "identical_skipped": identical,
        "pairs": len(rows),
        "contested_judgements": n_contested,
        "refiner_sft_refine": sum(r["role"] == "refine" for r in sft),
        "refiner_sft_judge": sum(r["role"] == "judge" for r in sft),
        "refiner_sft_capped_refine": capped["refine"],
        "refiner_sft_capped_judge": capped["judge"],
        "signal": SIGNAL[c.judge],
        "refiner_sft": sft,
    }
    return SparResult(rows, stats, sft, results)


def write_sft(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write SFT rows as JSONL (atomically); `pairs_io.read_sft(path)` reads them back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path


def spar_iteration(seeds: Sequence[Seed], actor: Policy, cfg: Any = None, seed: int = 0, *,
                   refiner: Policy | None = None, judge: Judge | None = None,
                   round: int | None = None, out_dir: str | os.PathLike | None = None,
                   overwrite: bool = False) -> SparResult:
    """One SPaR iteration's data for the driver: actor pairs + refiner SFT rows.

    With `out_dir`: writes `out_dir/pairs` (pairs_io.write_pairs: Arrow + pairs.jsonl, possibly
    with no rows),
    `out_dir/refiner_sft.jsonl` and `out_dir/stats.json` (the numeric stats).
    """
    res = build_spar(seeds, actor, cfg, seed, refiner=refiner, judge=judge, round=round)
    if out_dir is not None:
        from musc_jax.data.pairs_io import write_pairs
        out = Path(out_dir)
        write_pairs(res.rows, out / "pairs", overwrite=overwrite)   # an iteration may yield none
        sft_path = out / "refiner_sft.jsonl"
        if sft_path.exists() and not overwrite:
            raise FileExistsError(f"{sft_path} exists (pass overwrite=True to replace it)")
        write_sft(res.refiner_sft, sft_path)
        numbers = {k: v for k, v in res.stats.items() if k != "refiner_sft"}
        (out / "stats.json").write_text(json.dumps(numbers, indent=2, sort_keys=True) + "\n")
    return res


__all__ = ["SparConfig", "SparResult", "build_spar", "builder_config", "spar_iteration",
           "write_sft"]
