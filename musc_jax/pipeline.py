"""The whole recipe in one run: evaluate, build pairs with the model, train, evaluate, report.

`python -m musc_jax.train --config configs/microworld.py` lands here (any config with a
`pipeline` section does). For SPaR, `pipeline.iterations` rounds each rebuild pairs with the
current actor (and refiner), train the actor with DPO + SFT against itself at the start of the
round, and train the refiner by SFT on the round's refinement traces.

`pipeline.pairs=DIR` skips the build and trains on pairs built before (a `build/pairs` directory
of an earlier run, or any pairs dataset); ablations that differ only in the loss or the token
weights share one build this way.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from musc_jax.errors import MissingFileError, UserError
from musc_jax.microworld.assets import EVAL_SET, base_model_dir

log = logging.getLogger(__name__)


def _load(path: str):
    """(model, tokenizer) on this process's devices (replicas over them, `policy_mesh()`)."""
    from musc_jax.data.policy import load_policy_model
    return load_policy_model(path)[:2]


def _evaluate(config: ConfigDict, model_path: str, out: Path, items) -> dict[str, Any]:
    from musc_jax.data.policy import policy_mesh
    from musc_jax.eval import evaluate, print_table
    model, tok = _load(model_path)
    e = config.eval
    # on N processes each generates its share of the items (musc_jax.eval.generate_responses)
    result = evaluate(model, tok, items, max_new_tokens=e.max_new_tokens, temperature=e.temperature,
                      batch_size=e.batch_size, seed=e.seed, mesh=policy_mesh())
    d = result.to_dict(per_item=e.per_item)
    if jax.process_index() == 0:
        out.write_text(json.dumps(d, indent=2))
        print_table(result)
    return d


def _train(config: ConfigDict, model_path: str, data: str, workdir: Path, objective: str) -> str:
    """One training run from `model_path` on `data`; returns the exported model directory."""
    from musc_jax.trainer import run
    run(_train_config(config, model_path, data, workdir, objective))
    return str(workdir / "export")


def _train_config(config: ConfigDict, model_path: str, data: str, workdir: Path,
                  objective: str) -> ConfigDict:
    """The plain training config of one of the pipeline's training runs."""
    c = copy.deepcopy(config)
    with c.unlocked():
        c.model.path = model_path
        c.data.train = data
        c.workdir = str(workdir)
        c.objective = objective
        c.export.enabled = True
        if objective == "sft":
            c.reference.mode = "none"
            c.train.epochs = config.pipeline.refiner_epochs
            c.optim.lr = config.pipeline.refiner_lr
        for key in ("pipeline", "build", "eval"):
            if key in c:
                del c[key]
    return c


def check_pipeline_config(config: ConfigDict) -> None:
    """A UserError for a bad value anywhere in a pipeline config, before the first (slow)
    evaluation: the training settings as each training run will see them, and the pairs build's."""
    from musc_jax.config import validate
    from musc_jax.data.builders.run import check_build_config
    model = config.model.path or str(base_model_dir())
    placeholder = "<the pairs this pipeline builds>"
    validate(_train_config(config, model, placeholder, Path(config.workdir), "preference"))
    if config.build.pairs.method == "spar" and config.pipeline.train_refiner:
        try:
            validate(_train_config(config, model, placeholder, Path(config.workdir), "sft"))
        except UserError as e:
            raise UserError(f"the SPaR refiner's training (pipeline.refiner_lr and refiner_epochs "
                            f"become its optim.lr and train.epochs): {e}") from None
    check_build_config(config.build, prefix="build.")


def _given_pairs(path: str) -> tuple[str, dict[str, Any]]:
    """The pairs set behind `pipeline.pairs` and its build stats (from a `stats.json` beside it)."""
    pairs = Path(path)
    if not pairs.exists():
        raise MissingFileError(f"config pipeline.pairs={path!r} does not exist: point it at the "
                               f"build/pairs directory of an earlier run, or set it to ''")
    for candidate in (pairs / "stats.json", pairs.parent / "stats.json"):
        if candidate.is_file():
            stats = json.loads(candidate.read_text())
            break
    else:
        stats = {}
    stats = dict(stats, pairs_dir=str(pairs), reused=True)
    log.info("pipeline: training on the given pairs %s (no build)", pairs)
    return str(pairs), stats


def run_pipeline(config: ConfigDict) -> dict[str, Any]:
    """Run the config's recipe end to end; returns {"before", "after", "stats"}."""
    from musc_jax.data.builders.run import build_pairs
    from musc_jax.data.policy import ModelPolicy, policy_mesh
    from musc_jax.eval import load_eval_items
    from musc_jax.report import write_report

    p = config.pipeline
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model_path = config.model.path or str(base_model_dir())
    items = load_eval_items(config.eval.data or EVAL_SET)
    if config.eval.limit:
        items = items[: config.eval.limit]
    timings: dict[str, float] = {}
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=1) + "\n")
    given = p.get("pairs", "")
    if given and p.iterations != 1:
        raise UserError(f"config pipeline.pairs={given!r} trains once on fixed pairs, but "
                        f"pipeline.iterations={p.iterations}: set iterations=1 or pairs=''")
    given_pairs = _given_pairs(given) if given else None   # checked before the slow evaluation
    check_pipeline_config(config)

    t = time.time()
    before = _evaluate(config, model_path, workdir / "eval_before.json", items) if p.eval_before else None
    timings["eval before"] = time.time() - t

    actor, refiner = model_path, model_path
    stats: dict[str, Any] = {}
    if given_pairs:
        pairs_dir, stats = given_pairs
        t = time.time()
        actor = _train(config, actor, pairs_dir, workdir, "preference")
        timings["train 1"] = time.time() - t
    rounds = 0 if given_pairs else p.iterations   # given pairs: trained above, nothing to build
    # SPaR by the build method, not the recipe name (a report may call it "spar_checker").
    spar = config.build.pairs.method == "spar"
    for it in range(1, rounds + 1):
        round_dir = workdir if p.iterations == 1 else workdir / f"iteration_{it}"
        t = time.time()
        actor_model, tok = _load(actor)
        policy = ModelPolicy(actor_model, tok, batch_size=p.generate_batch, mesh=policy_mesh())
        refiner_policy = None
        if spar and refiner != actor:
            ref_model, ref_tok = _load(refiner)
            refiner_policy = ModelPolicy(ref_model, ref_tok, batch_size=p.generate_batch,
                                         mesh=policy_mesh())
        b = copy.deepcopy(config.build)
        with b.unlocked():
            b.model.path = actor
            b.pairs.out_dir = str(round_dir / "build")
            b.pairs.round = it
            b.seed = config.seed * 1000 + it
        extra = {"refiner": refiner_policy} if spar else {}
        built = build_pairs(b, policy, model=actor_model, tokenizer=tok, **extra)
        pairs_dir, stats = built.pairs_dir, built.stats
        timings[f"pairs {it}"] = time.time() - t
        t = time.time()
        n_pairs = int(stats.get("pairs", 0) or 0)
        if n_pairs < config.train.batch_size:
            log.warning("iteration %d: %d pairs, fewer than one batch of %d; the actor is not "
                        "trained this round", it, n_pairs, config.train.batch_size)
        else:
            actor = _train(config, actor, str(pairs_dir), round_dir, "preference")
        timings[f"train {it}"] = time.time() - t
        refiner_data = Path(built.out_dir) / "refiner_sft.jsonl"
        if spar and p.train_refiner and refiner_data.exists() and refiner_data.stat().st_size:
            t = time.time()
            refiner = _train(config, refiner, str(refiner_data), round_dir / "refiner", "sft")
            timings[f"refiner {it}"] = time.time() - t
        elif spar and not p.train_refiner:
            refiner = actor  # shared weights: the trained actor also judges and refines
        if p.eval_each_iteration and p.iterations > 1 and it < p.iterations:
            t = time.time()
            _evaluate(config, actor, workdir / f"eval_iteration_{it}.json", items)
            timings[f"eval {it}"] = time.time() - t

    t = time.time()
    after = _evaluate(config, actor, workdir / "eval_after.json", items) if p.eval_after else None
    timings["eval after"] = time.time() - t
    if jax.process_index() == 0:
        title = p.get("title", "") or f"microworld: {p.recipe}"   # a real model's config names it
        report = write_report(workdir, title, before, after, stats, timings)
        (workdir / "timings.json").write_text(json.dumps(timings, indent=1) + "\n")   # seconds
        log.info("report: %s", report)
    return {"before": before, "after": after, "stats": stats}
