"""Build a pairs dataset as a config says: seeds -> builder -> token weights -> shards + stats.

    result = build_pairs(config)              # python -m musc_jax.pairs --config ... does this
    result.pairs_dir                          # give this to the trainer (config.data.train)

Layout under `config.pairs.out_dir`:

    pairs/shard-00000/   Arrow (`pairs_io.write_pairs`: save_to_disk + pairs.jsonl) and
                         shard_stats.json; `pairs_io.read_pairs(out_dir/pairs)` reads all shards
    stats.json           the run's statistics (below)
    config.json          the config the shards were built with

(The statistics are not inside `pairs/`: `read_pairs` would take a `.json` file there for data.)

Each shard holds the pairs built from `pairs.shard_size` consecutive seeds; it is written to a
temporary directory and renamed, so a shard directory exists only when complete. A rerun skips
finished shards (resume); rerunning with a different config in the same out_dir is an error
naming the keys that differ. A shard that yields no pairs is a directory with only its
shard_stats.json (read_pairs skips it). Everything random in a shard is fixed by (config.seed,
shard index), so a resumed run builds what an uninterrupted run would have.

Several processes (jax.distributed, e.g. `launch/local_multiprocess.sh`): process i builds the
shards s with s % processes == i (`musc_jax.multiprocess.owned`), each on its own devices
(`model.tensor` devices per replica, replicas over the rest, see `data.policy.policy_mesh`), and
skips its own finished shards on a rerun. Since a shard's samples are fixed by (config.seed,
shard index), N processes build exactly the shards one process builds. When every shard exists
(out_dir must be on a filesystem all processes share), process 0 gathers the side outputs and
writes stats.json, and every process returns after it (a barrier).

Methods (`config.pairs.method`): "musc" and "ecd" (this package), "spar", "self_reward" and
"random" (`musc_jax.data.builders.spar.build_spar`, `musc_jax.data.builders.baselines.build_self_reward`
/ `build_random`), all called as `fn(seeds, policy, cfg, seed) -> (rows, stats)` with `cfg` the
config section named after the method (None when the config has none), plus any extra keyword
arguments given to `build_pairs` (e.g. SPaR's `refiner=`).

Token weights (`config.weights`, `musc_jax.data.weights`): kind "kl" | "bikl" | "prob_diff" |
"diff" | "uniform", or "none" to store no weights; `ref_logps=True` also stores reference
per-token log-probs. The reference model is the policy's model (the policy at the start of the
round).

stats.json: seeds loaded / skipped (malformed rows), shards built / resumed, pairs, the
negativity rate, judge agreement and refinement success rate (when the builder reports them),
parse failures, the share of token-weight mass per corrupted constraint type, the weighting counts
and the merged builder statistics (counts summed over shards; rates averaged weighted by the
shards' seeds, or recomputed from summed counts where the counts are known).

Side outputs: a list in a builder's stats (e.g. SPaR's `refiner_sft` rows) is not statistics; it
is written as `<name>.jsonl` in the shard and concatenated into `out_dir/<name>.jsonl`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping

from ml_collections import ConfigDict

from musc_jax.data import pairs_io
from musc_jax.data.builders.ecd import EcdConfig
from musc_jax.config import config_from
from musc_jax.data.builders.musc import MuscConfig, finalize_rates, stage_seed
from musc_jax.data.policy import ModelPolicy, Policy, load_policy_model
from musc_jax.data.seeds import ON_ERROR, load_seeds, seed_sources
from musc_jax.data.weights import (KINDS as WEIGHT_KINDS, WeightConfig, compute_token_weights,
                                   mass_shares, weight_mass_counts)
from musc_jax.errors import UserError
from musc_jax.multiprocess import allgather_json, barrier, owned, wait_for_paths

log = logging.getLogger(__name__)

METHODS: dict[str, tuple[str, str]] = {
    "musc": ("musc_jax.data.builders.musc", "build_musc"),
    "ecd": ("musc_jax.data.builders.ecd", "build_ecd"),
    "spar": ("musc_jax.data.builders.spar", "build_spar"),
    "self_reward": ("musc_jax.data.builders.baselines", "build_self_reward"),
    "random": ("musc_jax.data.builders.baselines", "build_random"),
}
PAIRS_SUBDIR = "pairs"
SHARD_STATS = "shard_stats.json"
REPORTED_RATES = ("negativity_rate", "judge_agreement", "refinement_success_rate")
# Config keys that do not change what the shards contain (ignored by the resume check).
RUNTIME_KEYS = ("pairs.progress",)


def base_pairs_config(method: str = "musc") -> ConfigDict:
    """Every key `build_pairs` understands, with generic defaults (small sizes). A world's
    package gives its own defaults on top (its seed source, its base model)."""
    c = ConfigDict()
    c.seed = 0
    c.model = ConfigDict(dict(
        path="",                # HF directory of the policy (= the reference for token weights)
        tokenizer="",           # another directory for the tokenizer, if different
        param_dtype="auto",     # "auto": bfloat16 on GPU/TPU, float32 on CPU | "float32" | "bfloat16"
        batch_size=64,          # conversations per generation batch (per process)
        tensor=1,               # devices per model replica (tensor parallel); replicas use the rest
    ))
    c.data = ConfigDict(dict(
        source="jsonl",         # "jsonl" | "hf" (a local HF dataset) | a registered source
        path="",                # jsonl file / HF dataset path
        prompt_field="prompt",  # column holding the instruction
        split="",               # HF split ("" = the only one)
        on_error="error",       # malformed seed rows: "error" (names file/line/field) | "skip" (counted)
        num_seeds=64,           # generated source: seeds to make; else: keep the first n (0 = all)
        levels=(2, 3, 4, 5),    # generated source: constraint counts, cycled
        world_seed=0,           # generated source: its world (lexicon)
    ))
    c.pairs = ConfigDict(dict(
        method=method,          # "musc" | "ecd" | "spar" | "self_reward" | "random"
        out_dir=f"runs/pairs_{method}",
        shard_size=16,          # seeds per shard (resume granularity)
        round=0,                # recorded in every row's meta
        progress=True,          # tqdm progress bar over shards
    ))
    c.musc = ConfigDict(dataclasses.asdict(MuscConfig()))
    c.ecd = ConfigDict(dataclasses.asdict(EcdConfig()))
    c.teacher = ConfigDict(dict(path=""))  # ecd.evolver="teacher": HF directory of the teacher
    w = dataclasses.asdict(WeightConfig())
    w.update(max_length=512, max_prompt_length=320)
    c.weights = ConfigDict(w)   # kind: kl | bikl | prob_diff | diff | uniform | none
    return c


@dataclasses.dataclass
class PairsRun:
    out_dir: Path
    pairs_dir: Path
    stats: dict[str, Any]


# -------------------------------------------------------------------------------------- helpers

def builder_fn(method: str) -> Callable:
    """The builder function of `method`, imported by name."""
    if method not in METHODS:
        raise UserError(f"pairs.method={method!r}: choose one of {', '.join(METHODS)}")
    module, name = METHODS[method]
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise RuntimeError(f"pairs.method={method!r} needs {module}.{name}, but the module "
                           f"{module} is not available in this installation") from None
    fn = getattr(mod, name, None)
    if fn is None:
        raise RuntimeError(f"pairs.method={method!r} needs {module}.{name}, which {module} does "
                           "not define")
    return fn


def model_fingerprint(path: str | os.PathLike) -> str:
    """A short hash of an HF model directory: config.json plus each safetensors file's name,
    size, first and last 64 KiB (fast for any model size; recorded in every row's meta)."""
    path = Path(path)
    h = hashlib.sha256()
    cfg = path / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for f in sorted(path.glob("*.safetensors")):
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(1 << 16))
            if size > 1 << 16:
                fh.seek(max(size - (1 << 16), 1 << 16))
                h.update(fh.read())
    return h.hexdigest()[:16]


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple) else v
    return out


def _check_resume(out_dir: Path, config: ConfigDict, write: bool = True) -> None:
    mine = {k: v for k, v in _flat(config.to_dict()).items() if k not in RUNTIME_KEYS}
    path = out_dir / "config.json"
    if path.is_file():
        theirs = {k: v for k, v in json.loads(path.read_text()).items() if k not in RUNTIME_KEYS}
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff and any((out_dir / PAIRS_SUBDIR).glob("shard-*")):
            raise UserError(f"{out_dir} holds shards built with another config (differing keys: "
                            f"{', '.join(diff)}); use another pairs.out_dir or remove it")
    out_dir.mkdir(parents=True, exist_ok=True)
    if write:   # one writer (process 0); the others only check
        _write_atomic(path, json.dumps(mine, indent=1, sort_keys=True, default=str))


def _is_rate(key: str) -> bool:
    """Keys holding rates or means (averaged over shards), not counts (summed)."""
    return (key == "rates" or key.endswith(("_rate", "_mean")) or "agreement" in key
            or key.startswith(("avg_", "mean_")))


def merge_stats(parts: list[Mapping], weights: list[float]) -> dict[str, Any]:
    """Sum counts over shards; rates and means (keys ending in `_rate` / `_mean`, starting with
    `avg_` / `mean_`, containing `agreement`, or under `rates`) are averaged with the given
    weights; None values are ignored."""
    out: dict[str, Any] = {}
    keys = list(dict.fromkeys(k for p in parts for k in p))
    for k in keys:
        vals = [(p[k], w) for p, w in zip(parts, weights) if k in p and p[k] is not None]
        if not vals:
            out[k] = None
        elif all(isinstance(v, Mapping) for v, _ in vals):
            merge = _mean_rates if _is_rate(k) else merge_stats
            out[k] = merge([v for v, _ in vals], [w for _, w in vals])
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v, _ in vals):
            if _is_rate(k):
                total = sum(w for _, w in vals)
                out[k] = sum(v * w for v, w in vals) / total if total else None
            else:
                out[k] = sum(v for v, _ in vals)
        else:
            out[k] = vals[-1][0]
    return out


def _mean_rates(parts: list[Mapping], weights: list[float]) -> dict[str, Any]:
    out = {}
    for k in dict.fromkeys(k for p in parts for k in p):
        vals = [(p[k], w) for p, w in zip(parts, weights)
                if isinstance(p.get(k), (int, float)) and not isinstance(p.get(k), bool)]
        total = sum(w for _, w in vals)
        out[k] = sum(v * w for v, w in vals) / total if vals and total else None
    return out


def _find(stats: Mapping, key: str):
    """A reported value by name: at the top level or under `rates` (first found)."""
    if stats.get(key) is not None:
        return stats[key]
    rates = stats.get("rates")
    if isinstance(rates, Mapping) and rates.get(key) is not None:
        return rates[key]
    return None


# ---------------------------------------------------------------------------------------- build

def load_model_policy(model_cfg: ConfigDict, path: str | None = None) -> ModelPolicy:
    """A ModelPolicy over the HF model at `path` (default `model.path`), on this process's
    devices (`model.tensor` per replica) in `model.param_dtype`."""
    own = path is None or path == model_cfg.path
    path = model_cfg.path if path is None else path
    model, tokenizer, mesh = load_policy_model(
        path, model_cfg.param_dtype, int(model_cfg.get("tensor", 1)),
        (model_cfg.tokenizer or path) if own else path)
    return ModelPolicy(model, tokenizer, batch_size=int(model_cfg.batch_size), mesh=mesh)


def check_build_config(config: ConfigDict, prefix: str = "") -> None:
    """A UserError for a bad value in a pairs config, before any model loads or work starts
    (`build_pairs` calls it; the pipeline calls it, with prefix "build.", before its first
    evaluation). `prefix`: where the section sits in the user's config, for the message."""
    method = config.pairs.method
    if method not in METHODS:
        raise UserError(f"config {prefix}pairs.method={method!r}: choose one of {', '.join(METHODS)}")
    builder_fn(method)
    if config.data.source not in seed_sources():
        raise UserError(f"config {prefix}data.source={config.data.source!r}: choose one of "
                        f"{', '.join(seed_sources())} (a generated source is registered by "
                        "importing its package)")
    if config.data.on_error not in ON_ERROR:
        raise UserError(f"config {prefix}data.on_error={config.data.on_error!r}: choose one of "
                        f"{ON_ERROR}")
    kind = config.weights.kind
    if kind != "none" and kind not in WEIGHT_KINDS:
        raise UserError(f"config {prefix}weights.kind={kind!r}: choose one of "
                        f"{', '.join(WEIGHT_KINDS)}, none")
    if kind != "none":
        config_from(WeightConfig, config.weights, f"{prefix}weights")
    if int(config.pairs.shard_size) < 1:
        raise UserError(f"config {prefix}pairs.shard_size must be >= 1, got {config.pairs.shard_size}")
    from musc_jax.data.builders.baselines import RandomConfig, SelfRewardConfig
    from musc_jax.data.builders.spar import SparConfig
    section = {"musc": MuscConfig, "ecd": EcdConfig, "spar": SparConfig,
               "self_reward": SelfRewardConfig, "random": RandomConfig}.get(method)
    if section is not None:
        config_from(section, config[method] if method in config else None, f"{prefix}{method}")


def build_pairs(config: ConfigDict, policy: Policy | None = None, *, teacher: Policy | None = None,
                checker: Callable | None = None, model=None, tokenizer=None,
                **builder_kwargs) -> PairsRun:
    """Build (or resume) the pairs dataset `config` describes; see the module doc.

    policy: the Policy that writes the data (default: a ModelPolicy over `config.model.path`,
    loaded only if a shard is left to build). model / tokenizer: the reference for token weights
    (default: the policy's own when it is a ModelPolicy, else loaded from `config.model.path`).
    teacher / checker: passed to the ECD builder (teacher evolver; a judge as checker).
    builder_kwargs: passed to the method's builder as they are (e.g. `refiner=` for SPaR).
    """
    import jax

    method = config.pairs.method
    fn = builder_fn(method)
    check_build_config(config)
    kind = config.weights.kind
    wcfg = None if kind == "none" else config_from(WeightConfig, config.weights, "weights")
    section = config[method] if method in config else None

    out_dir = Path(config.pairs.out_dir)
    pairs_dir = out_dir / PAIRS_SUBDIR
    _check_resume(out_dir, config, write=jax.process_index() == 0)
    pairs_dir.mkdir(parents=True, exist_ok=True)

    d = config.data
    seedset = load_seeds(d.source, d.path, prompt_field=d.prompt_field, split=d.split,
                         on_error=d.on_error, num_seeds=int(d.num_seeds), seed=int(config.seed),
                         levels=tuple(d.levels), world_seed=int(d.world_seed))
    seeds = seedset.seeds
    size = int(config.pairs.shard_size)
    n_shards = -(-len(seeds) // size) if seeds else 0
    mine = owned(n_shards)
    todo = [s for s in mine if not (pairs_dir / f"shard-{s:05d}").is_dir()]
    procs = jax.process_count()
    where = f" (process {jax.process_index()} of {procs}: {len(mine)} shards)" if procs > 1 else ""
    log.info("pairs[%s]: %d seeds (%d malformed skipped), %d shards%s, %d to build, out %s", method,
             len(seeds), sum(seedset.skipped.values()), n_shards, where, len(todo), pairs_dir)

    state: dict[str, Any] = {}

    def ensure_models():
        if "policy" in state:
            return
        pol = policy
        if pol is None:
            pol = load_model_policy(config.model)
        ref_model, ref_tok = model, tokenizer
        if isinstance(pol, ModelPolicy):
            ref_model = ref_model if ref_model is not None else pol.model
            ref_tok = ref_tok if ref_tok is not None else pol.tokenizer
        if wcfg is not None and (ref_tok is None or (wcfg.needs_model and ref_model is None)):
            loaded = load_model_policy(config.model)
            ref_model = ref_model if ref_model is not None else loaded.model
            ref_tok = ref_tok if ref_tok is not None else loaded.tokenizer
        state.update(policy=pol, model=ref_model, tokenizer=ref_tok)
        extra: dict[str, Any] = {}
        if method == "ecd":
            teach = teacher
            if teach is None and "teacher" in (config.ecd.evolver, config.ecd.checker):
                if not config.teacher.path:
                    raise UserError("ecd.evolver/checker='teacher' needs teacher.path (an HF "
                                    "model dir)")
                teach = load_model_policy(config.model, config.teacher.path)
            extra = {"teacher": teach, "checker": checker}
        state["extra"] = {**extra, **builder_kwargs}

    fingerprint = model_fingerprint(config.model.path) if Path(config.model.path).is_dir() else ""
    from tqdm.auto import tqdm

    bar = tqdm(total=len(mine), initial=len(mine) - len(todo), desc=f"pairs[{method}]", unit="shard",
               disable=not config.pairs.progress)
    try:
        for s in todo:
            ensure_models()
            shard_seeds = seeds[s * size:(s + 1) * size]
            shard_seed = stage_seed(int(config.seed), f"shard{s}")
            rows, bstats = fn(shard_seeds, state["policy"], section, shard_seed, **state["extra"])
            # Lists in the stats are side outputs (e.g. SPaR's refiner SFT rows), kept as JSONL.
            side = {k: v for k, v in bstats.items() if isinstance(v, list)}
            bstats = {k: v for k, v in bstats.items() if k not in side}
            # Rows the trainer would refuse (chosen == rejected under one prompt) are dropped
            # here and counted in the builder stats ("dropped_untrainable").
            rows = pairs_io.trainable_rows(rows, f"{pairs_dir} shard {s}", bstats)
            for r in rows:
                meta = r.setdefault("meta", {})
                meta.update(model=str(config.model.path), model_hash=fingerprint,
                            round=int(config.pairs.round), shard=s)
            wstats = None
            if wcfg is not None and rows:
                rows, ws = compute_token_weights(rows, state["tokenizer"], wcfg, state["model"])
                wstats = ws.to_dict()
            shard_stats = {"shard": s, "seeds": len(shard_seeds), "pairs": len(rows),
                           "builder": bstats, "weights": wstats,
                           "weight_mass": weight_mass_counts(rows) if wcfg is not None else {}}
            _write_shard(rows, shard_stats, side, pairs_dir, s)
            bar.update(1)
            bar.set_postfix(pairs=len(rows))
    finally:
        bar.close()

    built = len(todo)
    if procs > 1:
        # Shards finish minutes apart on different processes: wait on the shared filesystem,
        # then count what every process built (the resume statistics cover the whole run).
        wait_for_paths([pairs_dir / f"shard-{s:05d}" for s in range(n_shards)], "shards")
        built = sum(allgather_json(len(todo)))
    if jax.process_index() == 0:
        _gather_side_outputs(out_dir, pairs_dir, n_shards)
        stats = _summarise(method, pairs_dir, n_shards, built, seedset, config, fingerprint)
        _write_atomic(out_dir / "stats.json", json.dumps(stats, indent=1, default=str))
        log.info("pairs[%s]: %d pairs in %s; negativity rate %s; parse failures %s", method,
                 stats["pairs"], pairs_dir, stats["negativity_rate"], stats["parse_failures"])
    barrier(f"pairs:{out_dir}:stats")   # the others return once stats.json is written
    if jax.process_index() != 0:
        stats = json.loads((out_dir / "stats.json").read_text())
    return PairsRun(out_dir, pairs_dir, stats)


def _write_atomic(path: Path, text: str) -> None:
    """Write through a temporary file, so a reader on another process never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _write_jsonl(rows: list, path: Path) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, default=str) + "\n")


def _write_shard(rows: list[dict], shard_stats: dict, side: dict[str, list], pairs_dir: Path,
                 s: int) -> None:
    final = pairs_dir / f"shard-{s:05d}"
    tmp = pairs_dir / f".shard-{s:05d}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    if rows:
        pairs_io.write_pairs(rows, tmp, overwrite=True)
    else:
        tmp.mkdir(parents=True)   # no data: read_pairs skips a directory without Arrow files
    shard_stats["side_outputs"] = {k: len(v) for k, v in side.items()}
    for k, v in side.items():
        _write_jsonl(v, tmp / f"{k}.jsonl")
    (tmp / SHARD_STATS).write_text(json.dumps(shard_stats, indent=1, default=str))
    os.replace(tmp, final)


def _gather_side_outputs(out_dir: Path, pairs_dir: Path, n_shards: int) -> None:
    """Concatenate each shard's side outputs (`<name>.jsonl`) into `out_dir/<name>.jsonl`."""
    names: dict[str, None] = {}
    for s in range(n_shards):
        st = json.loads((pairs_dir / f"shard-{s:05d}" / SHARD_STATS).read_text())
        names.update(dict.fromkeys(st.get("side_outputs") or {}))
    for name in names:
        tmp = out_dir / f".{name}.jsonl.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as out:
            for s in range(n_shards):
                part = pairs_dir / f"shard-{s:05d}" / f"{name}.jsonl"
                if part.is_file():
                    out.write(part.read_text(encoding="utf-8"))
        os.replace(tmp, out_dir / f"{name}.jsonl")


def _summarise(method: str, pairs_dir: Path, n_shards: int, built: int, seedset, config,
               fingerprint: str) -> dict[str, Any]:
    shards = [json.loads((pairs_dir / f"shard-{s:05d}" / SHARD_STATS).read_text())
              for s in range(n_shards)]
    pairs = [float(sh["pairs"]) for sh in shards]
    # Rates a builder reports per shard are averaged weighted by the shard's seeds; the ones
    # whose counts are known are recomputed exactly from the summed counts.
    builder = merge_stats([sh["builder"] for sh in shards],
                          [float(sh["seeds"]) for sh in shards]) if shards else {}
    if method in ("musc", "ecd") and builder:
        builder["rates"] = {**(builder.get("rates") or {}), **finalize_rates(builder)}
    if builder.get("roots") and builder.get("refinement_success") is not None:
        builder["refinement_success_rate"] = builder["refinement_success"] / builder["roots"]
    wparts = [sh["weights"] for sh in shards if sh.get("weights")]
    weights = merge_stats(wparts, [1.0] * len(wparts)) if wparts else None
    if weights and weights.get("tokens"):
        weights["weight_mean"] = weights["weight_sum"] / weights["tokens"]
    if weights is not None:
        weights["weight_max"] = max((w.get("weight_max") or 0.0) for w in wparts)
    mass: dict[str, float] = {}
    for sh in shards:
        for k, v in (sh.get("weight_mass") or {}).items():
            mass[k] = mass.get(k, 0.0) + v
    negativity = _find(builder, "negativity_rate")
    if negativity is None:
        negativity = _find(builder, "negative_rate")
    return {
        "method": method,
        "signal": builder.get("signal"),   # "self" | "checker" (| "none" for random pairs)
        "pairs_dir": str(pairs_dir),
        "pairs": int(sum(pairs)),
        "seeds": {"loaded": len(seedset.seeds), "read": seedset.num_read,
                  "skipped": dict(seedset.skipped)},
        "shards": {"total": n_shards, "built": built, "resumed": n_shards - built},
        "negativity_rate": negativity,
        "judge_agreement": _find(builder, "judge_agreement"),
        "refinement_success_rate": _find(builder, "refinement_success_rate"),
        "parse_failures": builder.get("parse_failures"),
        "weight_kind": config.weights.kind,
        "weight_mass_by_constraint": mass_shares(mass),
        "weights": weights,
        "model": str(config.model.path),
        "model_hash": fingerprint,
        "round": int(config.pairs.round),
        "builder": builder,
    }


__all__ = ["METHODS", "PairsRun", "base_pairs_config", "build_pairs", "builder_fn",
           "load_model_policy", "merge_stats", "model_fingerprint"]
