"""The microworld comparison: every recipe and ablation, several seeds, one results table.

    python scripts/microworld_experiments.py [--seeds 0 1 2] [--variants musc_static random ...]
        [--out runs/experiments] [--extra --config.eval.limit=100 ...]

Each variant is one `python -m musc_jax.train` run (a fresh process) of a microworld config
with overrides; the base model is evaluated once. The MuSC ablations that differ only in the
loss or the token weights (coarse, dynamic, as released) train on the pairs that the
`musc_static` run of the same seed built (`--config.pipeline.pairs`), so they compare training
objectives on identical data. Runs go seed by seed, so an interrupted sweep still has every
variant at the first seeds; finished runs are skipped when the script is started again, and the
table is rewritten after every run. Writes `results.md` (mean and spread of held-out
prompt-level and instruction-level strict accuracy per variant), `results.json` and
`results.png` into --out. SPaR reports iterations 1..3 from one run per seed.
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

VARIANTS: dict[str, tuple[str, list[str]]] = {
    # The baselines train like the other recipes (2 epochs); random gets 416 pairs, more than
    # the ~230 the MuSC filters keep.
    "random": ("configs/microworld.py", ["--config.build.pairs.method=random", "--config.loss.a_tok=0",
                                         "--config.build.data.num_seeds=416", "--config.train.epochs=2",
                                         "--config.build.weights.kind=none", "--config.pipeline.recipe=random"]),
    # self_reward samples 4 responses per prompt and judges each 5 times: 240 prompts make 960
    # responses + 4800 judgements, against the 1920 responses of a 960-seed MuSC build.
    "self_reward": ("configs/microworld.py", ["--config.build.pairs.method=self_reward", "--config.loss.a_tok=0",
                                              "--config.build.data.num_seeds=240", "--config.train.epochs=2",
                                              "--config.build.weights.kind=none",
                                              "--config.pipeline.recipe=self_reward"]),
    "ecd": ("configs/microworld_ecd.py", []),
    "spar": ("configs/microworld_spar.py", []),
    "musc_static": ("configs/microworld.py", ["--config.pipeline.recipe=musc_static"]),
    "musc_coarse": ("configs/microworld.py", ["--config.weights.source=uniform", "--config.pipeline.recipe=musc_coarse"]),
    "musc_dynamic": ("configs/microworld.py", ["--config.weights.source=dynamic",
                                               "--config.pipeline.recipe=musc_dynamic"]),
    "musc_released": ("configs/microworld.py", ["--config.loss.a_seq=0", "--config.pipeline.recipe=musc_released"]),
}
# Variants that train on the pairs another variant of the same seed built.
SHARED_PAIRS = {"musc_coarse": "musc_static", "musc_dynamic": "musc_static", "musc_released": "musc_static"}


def run(config: str, overrides: list[str], workdir: Path, log: Path) -> None:
    cmd = [sys.executable, "-m", "musc_jax.train", "--config", config, f"--config.workdir={workdir}",
           *overrides]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    with open(log, "w") as f:
        subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=True)


def _metrics(path: Path) -> dict[str, float]:
    d = json.loads(path.read_text())
    return {"prompt": 100 * d["prompt_level_strict"], "instruction": 100 * d["instruction_level_strict"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "experiments")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                    help="overrides passed to every run, e.g. --config.eval.limit=100")
    ap.add_argument("--table-only", action="store_true",
                    help="only collect the finished runs under --out into the table; run nothing")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.table_only:
        write_results(args.out, list(VARIANTS), args.seeds)
        return

    base_dir = args.out / "base"
    if not (base_dir / "eval_before.json").exists():
        base_dir.mkdir(exist_ok=True)
        run("configs/microworld.py", ["--config.build.data.num_seeds=0", "--config.pipeline.eval_after=False",
                                      "--config.pipeline.iterations=0", *args.extra], base_dir,
            base_dir / "log.txt")

    order = sorted(args.variants, key=lambda n: n in SHARED_PAIRS)  # builders before sharers
    for seed in args.seeds:
        for name in order:
            config, overrides = VARIANTS[name]
            wd = args.out / f"{name}_seed{seed}"
            if name in SHARED_PAIRS:
                owner = args.out / f"{SHARED_PAIRS[name]}_seed{seed}" / "build" / "pairs"
                if not owner.exists():
                    print(f"{name} seed {seed}: skipped, {owner} is missing (run {SHARED_PAIRS[name]})")
                    continue
                overrides = [*overrides, f"--config.pipeline.pairs={owner}"]
            if not (wd / "eval_after.json").exists():
                wd.mkdir(exist_ok=True)
                t = time.time()
                run(config, [*overrides, f"--config.seed={seed}", "--config.pipeline.eval_before=False",
                             *args.extra], wd, wd / "log.txt")
                print(f"{name} seed {seed}: {time.time() - t:.0f}s", flush=True)
            write_results(args.out, list(VARIANTS), args.seeds)   # runs of other sweeps too


def write_results(out: Path, variants: list[str], seeds: list[int]) -> None:
    """Collect the finished runs of `variants` x `seeds` under `out` into results.md, results.json
    and results.png (several sweeps may share one `out`, e.g. one per variant group)."""
    results: dict[str, list[dict[str, float]]] = {"base": [_metrics(out / "base" / "eval_before.json")]}
    for name in variants:
        for seed in seeds:
            wd = out / f"{name}_seed{seed}"
            if not (wd / "eval_after.json").exists():
                continue
            if name == "spar":
                for it in (1, 2):
                    f = wd / f"eval_iteration_{it}.json"
                    if f.exists():
                        results.setdefault(f"spar_iter{it}", []).append(_metrics(f))
                results.setdefault("spar_iter3", []).append(_metrics(wd / "eval_after.json"))
            else:
                results.setdefault(name, []).append(_metrics(wd / "eval_after.json"))

    lines = ["| variant | seeds | prompt-level strict (%) | instruction-level strict (%) |",
             "|---|---|---|---|"]
    summary = {}
    for name, runs in results.items():
        p = [r["prompt"] for r in runs]
        i = [r["instruction"] for r in runs]
        sd = lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0
        summary[name] = {"n": len(runs), "prompt_mean": statistics.mean(p), "prompt_sd": sd(p),
                         "instruction_mean": statistics.mean(i), "instruction_sd": sd(i), "runs": runs}
        lines.append(f"| {name} | {len(runs)} | {statistics.mean(p):.1f} ± {sd(p):.1f} | "
                     f"{statistics.mean(i):.1f} ± {sd(i):.1f} |")
    table = "\n".join(lines)
    (out / "results.md").write_text(table + "\n\n± is the standard deviation over seeds.\n")
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(table)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(summary)
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 4))
    ax.bar(names, [summary[n]["prompt_mean"] for n in names],
           yerr=[summary[n]["prompt_sd"] for n in names], capsize=4)
    ax.set_ylabel("held-out prompt-level strict accuracy (%)")
    ax.set_title("microworld: recipes and ablations")
    plt.xticks(rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=100)


if __name__ == "__main__":
    main()
