"""The short report of a pipeline run: a markdown summary and a PNG of curves and accuracies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

METRICS = ("prompt_level_strict", "instruction_level_strict", "prompt_level_loose",
           "instruction_level_loose")


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _levels(result: Mapping[str, Any]) -> tuple[dict[int, float], str]:
    """Prompt-level strict accuracy by group, and the group's name: the items' levels (the
    microworld), else their number of constraints, from the per-item records (IFEval data has
    no level)."""
    out: dict[int, float] = {}
    for level, v in (result.get("by_level") or {}).items():
        out[int(level)] = v["prompt_level_strict"] if isinstance(v, Mapping) else float(v)
    if out:
        return dict(sorted(out.items())), "level"
    passed: dict[int, list[bool]] = {}
    for item in result.get("items") or []:
        ok = item["strict"]   # None: no verifiable constraint, not scored (as in the totals)
        if ok is not None:
            passed.setdefault(len(item["constraints"]), []).append(bool(ok))
    return {n: sum(v) / len(v) for n, v in sorted(passed.items())}, "constraints"


def plot(workdir: Path, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None,
         metrics: list[dict[str, Any]], out: Path) -> Path:
    """Training loss / margin / accuracy curves and prompt-level accuracy by level."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [m for m in metrics if m.get("split") == "train"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    steps = [m["step"] for m in train]
    for key in ("loss", "loss/seq", "loss/tok"):
        if train and key in train[0]:
            axes[0].plot(steps, [m[key] for m in train], label=key)
    axes[0].set_title("training loss")
    axes[0].set_xlabel("step")
    axes[0].legend()
    for key in ("rewards/margins", "rewards/accuracies"):
        if train and key in train[0]:
            axes[1].plot(steps, [m[key] for m in train], label=key)
    axes[1].set_title("reward margin and accuracy")
    axes[1].set_xlabel("step")
    axes[1].legend()
    width = 0.38
    group = "level"
    for offset, (name, res) in zip((-width / 2, width / 2), (("before", before), ("after", after))):
        if res:
            lv, group = _levels(res)
            axes[2].bar([k + offset for k in lv], [100 * v for v in lv.values()], width, label=name)
    axes[2].set_title(f"prompt-level strict accuracy by {'level' if group == 'level' else 'constraint count'} (%)")
    axes[2].set_xlabel("level (number of constraints)" if group == "level" else "constraints in the prompt")
    axes[2].legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def comparison_table(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str:
    """Markdown table: overall metrics and prompt-level accuracy by level, before vs after."""
    rows = ["| metric | before | after | change |", "|---|---|---|---|"]
    for key in METRICS:
        b = before.get(key) if before else None
        a = after.get(key) if after else None
        delta = "-" if a is None or b is None else f"{100 * (a - b):+.1f}"
        rows.append(f"| {key} | {_pct(b)} | {_pct(a)} | {delta} |")
    (lb, group_b), (la, group_a) = _levels(before or {}), _levels(after or {})
    group = group_b if lb else group_a   # a run with no evaluation before still has levels after
    for level in sorted(set(lb) | set(la)):
        b, a = lb.get(level), la.get(level)
        delta = "-" if a is None or b is None else f"{100 * (a - b):+.1f}"
        name = f"level {level}" if group == "level" else f"{level} constraint{'s' * (level != 1)}"
        rows.append(f"| prompt-level strict, {name} | {_pct(b)} | {_pct(a)} | {delta} |")
    return "\n".join(rows)


def write_report(workdir: Path, title: str, before: Mapping[str, Any] | None,
                 after: Mapping[str, Any] | None, stats: Mapping[str, Any],
                 timings: Mapping[str, float]) -> Path:
    """`workdir/report.md` and `workdir/report.png`; returns the markdown path."""
    workdir = Path(workdir)
    metrics = read_metrics(workdir / "metrics.jsonl")
    png = plot(workdir, before, after, metrics, workdir / "report.png")
    lines = [f"# {title}", "", comparison_table(before, after), "",
             f"![training curves and accuracy by level]({png.name})", "", "## Pair building", ""]
    for k, v in stats.items():
        if isinstance(v, (int, float, str, bool)):
            lines.append(f"- {k}: {v:.4g}" if isinstance(v, float) else f"- {k}: {v}")
    lines += ["", "## Time", ""] + [f"- {k}: {v:.0f} s" for k, v in timings.items()]
    out = workdir / "report.md"
    out.write_text("\n".join(lines) + "\n")
    return out


def rewrite_report(workdir: str | Path) -> Path:
    """report.md / report.png of a finished pipeline run again, from what it saved (config.json,
    eval_before/after.json, build/stats.json, timings.json, metrics.jsonl): e.g. after an
    upgrade of this module. The values are the run's own; nothing is recomputed."""
    from musc_jax.errors import MissingFileError
    workdir = Path(workdir)
    if not (workdir / "config.json").is_file():
        raise MissingFileError(f"{workdir}: no config.json; is it the workdir of a pipeline run?")

    def load(name: str) -> Any:
        path = workdir / name
        return json.loads(path.read_text()) if path.is_file() else None

    config = load("config.json")
    title = (config.get("pipeline") or {}).get("title") or \
        f"microworld: {(config.get('pipeline') or {}).get('recipe', '?')}"
    return write_report(workdir, title, load("eval_before.json"), load("eval_after.json"),
                        load("build/stats.json") or {}, load("timings.json") or {})


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m musc_jax.report WORKDIR   (rewrites WORKDIR/report.md and report.png)")
    print(rewrite_report(sys.argv[1]))
