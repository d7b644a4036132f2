"""The microworld comparison: every recipe and ablation, several seeds, one results table.

    python scripts/microworld_experiments.py [--seeds 0 1 2] [--variants musc_static random ...]
        [--out runs/experiments] [--extra --config.eval.limit=100 ...]

Each variant is one `python -m musc_jax.train` run (a fresh process) of a microworld config
with overrides; the base model is evaluated once. Writes `results.md` (mean and spread of
held-out prompt-level and instruction-level strict accuracy per variant), `results.json` and
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
    "random": ("configs/microworld.py", ["--config.build.pairs.method=random", "--config.loss.a_tok=0",
                                         "--config.build.weights.kind=none", "--config.pipeline.recipe=random"]),
    "self_reward": ("configs/microworld.py", ["--config.build.pairs.method=self_reward", "--config.loss.a_tok=0",
                                              "--config.build.weights.kind=none",
                                              "--config.pipeline.recipe=self_reward"]),
    "ecd": ("configs/microworld_ecd.py", []),
    "spar": ("configs/microworld_spar.py", []),
    "musc_coarse": ("configs/microworld.py", ["--config.weights.source=uniform", "--config.build.weights.kind=none",
                                              "--config.pipeline.recipe=musc_coarse"]),
    "musc_static": ("configs/microworld.py", ["--config.pipeline.recipe=musc_static"]),
    "musc_dynamic": ("configs/microworld.py", ["--config.weights.source=dynamic", "--config.build.weights.kind=none",
                                               "--config.pipeline.recipe=musc_dynamic"]),
    "musc_released": ("configs/microworld.py", ["--config.loss.a_seq=0", "--config.pipeline.recipe=musc_released"]),
}


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
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, float]]] = {}

    base_dir = args.out / "base"
    if not (base_dir / "eval_before.json").exists():
        base_dir.mkdir(exist_ok=True)
        run("configs/microworld.py", ["--config.build.data.num_seeds=0", "--config.pipeline.eval_after=False",
                                      "--config.pipeline.iterations=0", *args.extra], base_dir,
            base_dir / "log.txt")
    results["base"] = [_metrics(base_dir / "eval_before.json")]

    for name in args.variants:
        config, overrides = VARIANTS[name]
        for seed in args.seeds:
            wd = args.out / f"{name}_seed{seed}"
            if not (wd / "eval_after.json").exists():
                wd.mkdir(exist_ok=True)
                t = time.time()
                run(config, [*overrides, f"--config.seed={seed}", "--config.pipeline.eval_before=False",
                             *args.extra], wd, wd / "log.txt")
                print(f"{name} seed {seed}: {time.time() - t:.0f}s", flush=True)
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
    (args.out / "results.md").write_text(table + "\n\n± is the standard deviation over seeds.\n")
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))
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
    fig.savefig(args.out / "results.png", dpi=100)


if __name__ == "__main__":
    main()
