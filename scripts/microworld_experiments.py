"""The microworld comparison: every recipe and ablation, several seeds, one results table.

    python scripts/microworld_experiments.py [--seeds 0 1 2] [--variants musc_none random ...]
        [--best-self none|self] [--seeds-all] [--summaries docs/results/microworld]
        [--out runs/experiments] [--extra --config.eval.limit=100 ...]

Each variant is one `python -m musc_jax.train` run (a fresh process) of a microworld config
with overrides; the base model is evaluated once. Rows (issue 13): random; self_reward (self;
checker one seed); SPaR iterations 1-3 (self; checker one seed); ECD (self, checker); MuSC with
static weights x filter (none, self, checker); with the best self filter (`--best-self`), the
loss / weight ablations (coarse, dynamic, as released) and LoRA, which train on the pairs that
`musc_<best>` built for the same seed (`--config.pipeline.pairs`), so they compare objectives on
identical data; MuSC with one model in every role. Every row states its signal (self / checker /
none, from the build's stats.json) and the pairs it kept; one summary per run (eval metrics,
stats, config, wall time) is written under --summaries (docs/results/microworld). Runs go
seed by seed, so an interrupted sweep still has every variant at the first seeds; finished runs
are skipped when the script is started again, a run that another sweep on the same --out is
doing (its `sweep.pid`) is skipped too, and the table is rewritten after every run. Writes
`results.md` (mean and spread of held-out prompt-level and instruction-level strict accuracy per variant), `results.json` and
`results.png` into --out (and the table into --summaries). SPaR reports iterations 1..3 from
one run per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from musc_jax.paired import compact_items, paired_difference  # noqa: E402

# Paired comparisons in results.md: each reference against every row of the given signals.
PAIRED_REFERENCES = {"musc_none": ("self", "none", "-"), "musc_checker": ("checker", "-")}

def _filter(signal: str) -> list[str]:
    """Overrides of configs/microworld.py for the MuSC filters asked of `signal`."""
    return [f"--config.build.musc.negativity_filter={signal}", "--config.build.musc.shared_filter=True",
            "--config.build.data.num_seeds=960", "--config.train.epochs=3"]


def _baseline(method: str, seeds: int, judge: str | None = None) -> list[str]:
    out = [f"--config.build.pairs.method={method}", "--config.loss.a_tok=0",
           f"--config.build.data.num_seeds={seeds}", "--config.train.epochs=2",
           "--config.build.weights.kind=none"]
    if judge:
        out.append(f"--config.build.{method}.judge={judge}")
    return out


# name -> (config, overrides, default seeds). Every name is also the report's recipe. The
# "(1 seed)" rows of issue 13 run seed 0 only unless --seeds-all is given.
VARIANTS: dict[str, tuple[str, list[str], str]] = {
    # random gets 416 seeds (about the pairs of the unfiltered MuSC build); self_reward samples 4
    # responses per prompt and judges each 5 times: 240 prompts make 960 responses + 4800 votes.
    "random": ("configs/microworld.py", _baseline("random", 416), "all"),
    "self_reward": ("configs/microworld.py", _baseline("self_reward", 240), "all"),
    "self_reward_checker": ("configs/microworld.py", _baseline("self_reward", 240, "verifier"), "one"),
    "spar": ("configs/microworld_spar.py", [], "all"),
    "spar_checker": ("configs/microworld_spar.py", ["--config.build.spar.judge=verifier"], "one"),
    "ecd_self": ("configs/microworld_ecd.py", ["--config.build.ecd.checker=self"], "all"),
    "ecd_checker": ("configs/microworld_ecd.py", ["--config.build.ecd.checker=verifier"], "all"),
    "musc_none": ("configs/microworld.py", [], "all"),
    "musc_self": ("configs/microworld.py", _filter("self"), "all"),
    "musc_checker": ("configs/microworld.py", _filter("checker"), "all"),
    # Loss / weight ablations on the pairs of the best self filter (--best-self none|self).
    "musc_coarse": ("configs/microworld.py", ["--config.weights.source=uniform"], "all"),
    "musc_dynamic": ("configs/microworld.py", ["--config.weights.source=dynamic"], "all"),
    "musc_released": ("configs/microworld.py", ["--config.loss.a_seq=0"], "all"),
    # LoRA (rank 16, all linear maps, lr 1e-3) on the same pairs: trained parameters ablated.
    "musc_lora": ("configs/microworld_lora.py", [], "all"),
    "musc_one_model": ("configs/microworld_one_model.py", [], "all"),
}
ABLATIONS = ("musc_coarse", "musc_dynamic", "musc_released", "musc_lora")


def run(config: str, overrides: list[str], workdir: Path, log: Path) -> float:
    """One `python -m musc_jax.train` run in a fresh process; returns its wall time (s)."""
    cmd = [sys.executable, "-m", "musc_jax.train", "--config", config, f"--config.workdir={workdir}",
           *overrides]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    t = time.time()
    with open(log, "w") as f:
        subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)
    wall = time.time() - t
    (workdir / "wall_time.json").write_text(json.dumps({"seconds": wall, "command": cmd[1:]}) + "\n")
    return wall


def _eval(path: Path) -> tuple[dict[str, float], list[list[int]]]:
    """(prompt- and instruction-level strict in %, compact per-prompt rows) of an eval JSON."""
    d = json.loads(path.read_text())
    return ({"prompt": 100 * d["prompt_level_strict"], "instruction": 100 * d["instruction_level_strict"]},
            compact_items(d.get("items") or []))


def build_stats(wd: Path) -> dict:
    """The pairs build's stats.json of a run (the last iteration's for SPaR; the shared build's
    for an ablation that trained on another run's pairs)."""
    cands = [wd / "build" / "stats.json"] + sorted(wd.glob("iteration_*/build/stats.json"))[::-1]
    for c in cands:
        if c.is_file():
            return json.loads(c.read_text())
    cfg = wd / "config.json"
    if cfg.is_file():
        given = json.loads(cfg.read_text()).get("pipeline", {}).get("pairs")
        if given and (Path(given).parent / "stats.json").is_file():
            return json.loads((Path(given).parent / "stats.json").read_text())
    return {}


CLAIM = "sweep.pid"


def _claim(wd: Path) -> bool:
    """Claim a run directory for this process, so that sweeps sharing --out never run the same
    run at once; a claim whose process has died is taken over (an interrupted sweep)."""
    path = wd / CLAIM
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(path.read_text().strip() or 0), 0)
                return False                      # alive: another sweep is on it
            except (ProcessLookupError, ValueError):
                path.unlink(missing_ok=True)      # stale: its sweep was stopped
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def _variant_overrides(name: str, seed: int, out: Path, best_self: str) -> list[str] | None:
    config, overrides, _ = VARIANTS[name]
    if name in ABLATIONS:
        owner = out / f"musc_{best_self}_seed{seed}" / "build" / "pairs"
        if not owner.exists():
            print(f"{name} seed {seed}: skipped, {owner} is missing (run musc_{best_self})")
            return None
        overrides = [*VARIANTS[f"musc_{best_self}"][1], *overrides, f"--config.pipeline.pairs={owner}"]
    return [*overrides, f"--config.pipeline.recipe={name}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds-all", action="store_true",
                    help="run the one-seed rows (checker baselines) at every seed too")
    ap.add_argument("--best-self", choices=["none", "self"], default="none",
                    help="the MuSC self filter whose pairs the loss / weight ablations reuse")
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "experiments")
    ap.add_argument("--summaries", type=Path, default=REPO / "docs" / "results" / "microworld",
                    help="per-run summaries (eval metrics, stats, config, wall time) go here")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="overrides passed to every run, e.g. --config.eval.limit=100")
    ap.add_argument("--table-only", action="store_true",
                    help="only collect the finished runs under --out into the table; run nothing")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        write_results(args.out, list(VARIANTS), args.seeds, args.summaries)
        return

    base_dir = args.out / "base"
    if not (base_dir / "eval_before.json").exists():
        base_dir.mkdir(exist_ok=True)
        run("configs/microworld.py", ["--config.build.data.num_seeds=0", "--config.pipeline.eval_after=False",
                                      "--config.pipeline.iterations=0", *args.extra], base_dir,
            base_dir / "log.txt")

    order = sorted(args.variants, key=lambda n: n in ABLATIONS)  # builders before sharers
    for seed in args.seeds:
        for name in order:
            if VARIANTS[name][2] == "one" and seed != args.seeds[0] and not args.seeds_all:
                continue
            overrides = _variant_overrides(name, seed, args.out, args.best_self)
            wd = args.out / f"{name}_seed{seed}"
            if overrides is None or (wd / "eval_after.json").exists():
                continue
            wd.mkdir(exist_ok=True)
            if not _claim(wd):
                print(f"{name} seed {seed}: running in another sweep, skipped", flush=True)
                continue
            try:
                wall = run(VARIANTS[name][0], [*overrides, f"--config.seed={seed}",
                                               "--config.pipeline.eval_before=False", *args.extra],
                           wd, wd / "log.txt")
            finally:
                (wd / CLAIM).unlink(missing_ok=True)
            print(f"{name} seed {seed}: {wall:.0f}s", flush=True)
            write_results(args.out, list(VARIANTS), args.seeds, args.summaries)


def _summary(wd: Path, eval_file: Path) -> dict:
    """A run's committed summary: eval metrics, per prompt only [key, pass, constraints passed,
    constraints] (for the paired comparisons), build stats, config, wall time."""
    ev = json.loads(eval_file.read_text())
    per_prompt = compact_items(ev.get("items") or [])
    ev = {k: v for k, v in ev.items() if k not in ("items", "per_item")}
    ev["per_prompt"] = per_prompt
    cfg = wd / "config.json"
    wall = wd / "wall_time.json"
    return {"eval": ev, "stats": build_stats(wd),
            "config": json.loads(cfg.read_text()) if cfg.is_file() else None,
            "wall_time_s": json.loads(wall.read_text())["seconds"] if wall.is_file() else None}


def _paired_section(items: dict[str, list[list]], summary: dict[str, dict]) -> str:
    """Markdown: each reference of PAIRED_REFERENCES minus every row of its signals, in points,
    with a 95% bootstrap interval over the prompts (seeds averaged per prompt)."""
    lines = ["", "Paired differences on the same held-out prompts: reference minus row, in points "
             "(positive: the reference is better); each recipe's seeds are averaged per prompt "
             "first; [95% bootstrap interval over prompts, 10,000 resamples] (prompt sampling "
             "only: read it beside the seed spread above).", "",
             "| reference | row | seeds (ref, row) | prompt-level | instruction-level |",
             "|---|---|---|---|---|"]
    for ref, signals in PAIRED_REFERENCES.items():
        if ref not in items:
            continue
        for row, runs in items.items():
            if row == ref or summary[row]["signal"] not in signals:
                continue
            d = paired_difference(items[ref], runs)
            summary[row].setdefault("paired", {})[ref] = d
            lines.append(f"| {ref} | {row} | {d['seeds'][0]}, {d['seeds'][1]} | "
                         f"{d['prompt_diff']:+.1f} [{d['prompt_ci'][0]:+.1f}, {d['prompt_ci'][1]:+.1f}] | "
                         f"{d['instruction_diff']:+.1f} [{d['instruction_ci'][0]:+.1f}, "
                         f"{d['instruction_ci'][1]:+.1f}] |")
    return "\n".join(lines) + "\n"


def write_results(out: Path, variants: list[str], seeds: list[int], summaries: Path | None = None) -> None:
    """Collect the finished runs of `variants` x `seeds` under `out` into results.md, results.json
    and results.png, and one summary JSON per run into `summaries` (several sweeps may share one
    `out`). Columns: signal, pairs kept, prompt- and instruction-level strict (mean ± sd)."""
    base_metrics, base_items = _eval(out / "base" / "eval_before.json")
    results: dict[str, list[dict]] = {"base": [{**base_metrics, "signal": "-", "pairs": 0}]}
    items: dict[str, list[list]] = {"base": [base_items]}
    if summaries is not None:
        summaries.mkdir(parents=True, exist_ok=True)
        (summaries / "base.json").write_text(json.dumps(
            _summary(out / "base", out / "base" / "eval_before.json"), indent=1, default=str) + "\n")
    for name in variants:
        for seed in seeds:
            wd = out / f"{name}_seed{seed}"
            if not (wd / "eval_after.json").exists():
                continue
            st = build_stats(wd)
            info = {"signal": st.get("signal") or st.get("builder", {}).get("signal") or "?",
                    "pairs": int(st.get("pairs", 0) or 0)}
            iters = sorted(wd.glob("iteration_*/build/stats.json"))
            if iters:   # SPaR: the pairs of every iteration
                info["pairs"] = sum(int(json.loads(f.read_text()).get("pairs", 0) or 0) for f in iters)
            wall = wd / "wall_time.json"
            info["wall_s"] = json.loads(wall.read_text())["seconds"] if wall.is_file() else None
            evals = [(name, wd / "eval_after.json")]
            if name.startswith("spar"):
                evals = [(f"{name}_iter{it}", wd / f"eval_iteration_{it}.json") for it in (1, 2)]
                evals.append((f"{name}_iter3", wd / "eval_after.json"))
            for row, f in evals:
                if f.exists():
                    metrics, rows = _eval(f)
                    results.setdefault(row, []).append({**metrics, **info})
                    items.setdefault(row, []).append(rows)
            if summaries is not None:
                (summaries / f"{name}_seed{seed}.json").write_text(
                    json.dumps(_summary(wd, wd / "eval_after.json"), indent=1, default=str) + "\n")

    lines = ["| variant | signal | seeds | pairs kept | prompt-level strict (%) | "
             "instruction-level strict (%) | wall time per run (min) |",
             "|---|---|---|---|---|---|---|"]
    summary = {}
    sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
    for name, runs in results.items():
        p = [r["prompt"] for r in runs]
        i = [r["instruction"] for r in runs]
        walls = [r["wall_s"] for r in runs if r.get("wall_s")]
        signal = "/".join(sorted({str(r["signal"]) for r in runs}))
        pairs = statistics.mean(r["pairs"] for r in runs)
        summary[name] = {"n": len(runs), "signal": signal, "pairs_mean": pairs,
                         "prompt_mean": statistics.mean(p), "prompt_sd": sd(p),
                         "instruction_mean": statistics.mean(i), "instruction_sd": sd(i),
                         "runs": runs}
        wall = f"{statistics.mean(walls) / 60:.1f}" if walls else "-"
        lines.append(f"| {name} | {signal} | {len(runs)} | {pairs:.0f} | "
                     f"{statistics.mean(p):.1f} ± {sd(p):.1f} | {statistics.mean(i):.1f} ± {sd(i):.1f} | "
                     f"{wall} |")
    table = "\n".join(lines)
    note = ("\n\n± is the standard deviation over seeds. signal: where the preference signal comes "
            "from (self: the policy alone; checker: the verifiers that also score the evaluation; "
            "none: coin-flip labels). Compare a self row with self rows, a checker row with "
            "checker rows.\n" + _paired_section(items, summary))
    (out / "results.md").write_text(table + note)
    (out / "results.json").write_text(json.dumps(summary, indent=2, default=list))
    if summaries is not None:
        (summaries / "results.md").write_text(table + note)
    print(table)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(summary)
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 4))
    colors = ["tab:blue" if summary[n]["signal"] == "self" else "tab:orange"
              if summary[n]["signal"] == "checker" else "tab:gray" for n in names]
    ax.bar(names, [summary[n]["prompt_mean"] for n in names],
           yerr=[summary[n]["prompt_sd"] for n in names], capsize=4, color=colors)
    ax.set_ylabel("held-out prompt-level strict accuracy (%)")
    ax.set_title("microworld: recipes (blue: self signal, orange: checker, gray: none)")
    plt.xticks(rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=100)


if __name__ == "__main__":
    main()
