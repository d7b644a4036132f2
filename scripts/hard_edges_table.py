"""Try bad inputs against the real CLIs and write the message each gives (issue 11).

    python scripts/hard_edges_table.py [--out docs/results/hard_edges.md] [--only SUBSTRING ...]
        [--merge]

Every case runs `python -m musc_jax.<tool> ...` in a fresh subprocess on CPU, against a tiny
random model and small files made in a temporary directory, and records the exit status, the
error message (stderr's `<tool>: error:` line, else its last line) and whether a traceback was
printed. A few cases check what is on disk afterwards (nothing saved, metrics not repeated). The
table is rewritten from scratch on every run; with `--merge`, only the `--only` cases run and
their rows replace (or join, in case order) the rows of the existing table, which says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


@dataclass
class Case:
    area: str
    what: str
    tool: str
    args: list[str]
    setup: Callable[[], None] | None = None
    after: Callable[[], str] | None = None   # extra evidence from disk, appended to the message
    env: dict = field(default_factory=dict)


def run_case(case: Case) -> dict:
    if case.setup:
        case.setup()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **case.env}
    env.pop("MUSC_DEBUG", None)
    t = time.time()
    p = subprocess.run([sys.executable, "-m", f"musc_jax.{case.tool}", *case.args], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=900)
    err = p.stderr
    lines = [x for x in err.splitlines() if x.strip()]
    mine = [x for x in lines if re.match(r"(musc_jax\.\w+: )?error: |FATAL|usage:", x)]
    tail = [x for x in lines if not x.startswith(("I1", "W1", "train:", "Writing"))]
    message = mine[-1] if mine else (tail[-1] if tail else "(no output)")
    if case.after:
        message += f" [{case.after()}]"
    return {"area": case.area, "what": case.what, "rc": p.returncode,
            "traceback": "Traceback" in err, "message": message, "seconds": time.time() - t}


def cases(root: Path) -> list[Case]:
    from trainer_fixtures import model_dir, pairs_file, sft_file

    model = model_dir(root / "model")
    pairs = pairs_file(root / "pairs.jsonl", 16)
    sft_file(root / "sft.jsonl", 16)
    good_rows = pairs.read_text().splitlines()

    def pairs_with(i: int, change: dict | str, name: str) -> str:
        rows = list(good_rows)
        if isinstance(change, str):
            rows[i] = change
        else:
            row = json.loads(rows[i])
            row.update(change)
            rows[i] = json.dumps(row)
        path = root / name
        path.write_text("\n".join(rows) + "\n")
        return str(path)

    def copy_model(name: str, edit: Callable[[Path], None]) -> str:
        d = root / name
        if not d.exists():
            shutil.copytree(model, d)
            edit(d)
        return str(d)

    def truncate(d: Path) -> None:
        f = d / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])

    def pickled(d: Path) -> None:
        (d / "model.safetensors").rename(d / "pytorch_model.bin")

    def bad_json(d: Path) -> None:
        (d / "config.json").write_text("{not json")

    (root / "a_file").write_text("not a directory")
    eval_ok = {"prompt": "Write about the river.", "constraints": [{"id": "punctuation:no_comma"}]}

    def eval_file(name: str, line) -> str:
        path = root / name
        text = line if isinstance(line, str) else json.dumps(line)
        path.write_text(json.dumps(eval_ok) + "\n" + text + "\n")
        return str(path)

    train = ["--config", "configs/dpo.py", f"--config.model.path={model}",
             f"--config.data.train={pairs}", "--config.loss.a_tok=0", "--config.train.batch_size=4",
             "--config.train.max_steps=2", "--config.data.max_length=128",
             "--config.data.max_prompt_length=64", "--config.optim.warmup_steps=0",
             "--config.export.enabled=false"]

    def wd(name: str) -> str:
        return f"--config.workdir={root / name}"

    count = iter(range(1000))

    def train_case(area, what, *extra, name="", **kw) -> Case:
        # Each case its own workdir unless named: cases sharing one run in order.
        return Case(area, what, "train", [*train, wd(name or f"w{next(count)}"), *extra], **kw)

    def steps(name: str) -> Callable[[], str]:
        def read() -> str:
            path = root / name / "metrics.jsonl"
            got = [json.loads(x)["step"] for x in path.read_text().splitlines()] if path.exists() else []
            ckpts = sorted(int(p.name) for p in (root / name / "checkpoints").glob("[0-9]*"))
            return f"metrics.jsonl steps {got}; checkpoints {ckpts}"
        return read

    def finished_run(name: str, *extra) -> Callable[[], None]:
        def setup() -> None:
            if not (root / name / "checkpoints").exists():
                subprocess.run([sys.executable, "-m", "musc_jax.train", *train, wd(name), *extra],
                               cwd=REPO, check=True, capture_output=True,
                               env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)})
        return setup

    def interrupted(name: str) -> Callable[[], None]:
        """A 4-step run with checkpoints at 2 and 4, then step 4's checkpoint removed: as if it
        was killed after logging steps 3-4 but before their checkpoint landed."""
        def setup() -> None:
            finished_run(name, "--config.train.max_steps=4", "--config.checkpoint.every=2")()
            shutil.rmtree(root / name / "checkpoints" / "4", ignore_errors=True)
        return setup

    mw = ["--config", "configs/microworld.py", f"--config.model.path={model}",
          f"--config.eval.out={root / 'eval_out.json'}"]
    export = ["--config", "configs/dpo.py", f"--config.model.path={model}"]
    seeds_bad = root / "seeds.jsonl"
    seeds_bad.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": ""}) + "\n")

    return [
        # ---- flags and config keys
        train_case("config", "unknown top-level key", "--config.bogus_key=1"),
        train_case("config", "misspelt key", "--config.optim.lrr=1e-5"),
        train_case("config", "misspelt section", "--config.otpim.lr=1e-5"),
        train_case("config", "key under a value", "--config.optim.lr.x=1"),
        Case("config", "config file does not exist", "train", ["--config", "configs/nope.py"]),
        Case("config", "config file argument it does not take", "train", ["--config", "configs/dpo.py:foo"]),
        Case("config", "no --config", "train", []),
        train_case("config", "value of the wrong type", "--config.optim.lr=fast"),
        train_case("config", "boolean given a word", "--config.train.shuffle=maybe"),
        train_case("config", "unknown flag", "--bogus_flag=1"),
        train_case("config", "stray positional argument", "extra_arg"),
        # ---- config values
        train_case("values", "negative learning rate", "--config.optim.lr=-1"),
        train_case("values", "NaN learning rate", "--config.optim.lr=nan"),
        train_case("values", "batch size 0", "--config.train.batch_size=0"),
        train_case("values", "batch not divisible by grad_accum", "--config.optim.grad_accum=3"),
        train_case("values", "unknown loss type", "--config.loss.loss_type=hinge2"),
        train_case("values", "unknown dtype", "--config.model.param_dtype=fp32"),
        train_case("values", "prompt budget >= max_length", "--config.data.max_prompt_length=128"),
        train_case("values", "label smoothing with IPO", "--config.loss.loss_type=ipo",
                   "--config.loss.label_smoothing=0.1"),
        train_case("values", "dynamic weights that a_tok=0 never uses", "--config.weights.source=dynamic"),
        train_case("values", "beta = 0", "--config.loss.beta=0"),
        train_case("values", "0 epochs and no max_steps", "--config.train.epochs=0",
                   "--config.train.max_steps=-1"),
        train_case("values", "keep 0 checkpoints", "--config.checkpoint.keep=0"),
        train_case("values", "mesh axis 0", "--config.mesh.fsdp=0"),
        # ---- paths
        train_case("paths", "model directory does not exist", f"--config.model.path={root / 'nope'}"),
        train_case("paths", "model directory without config.json", f"--config.model.path={root}"),
        train_case("paths", "data.train does not exist", f"--config.data.train={root / 'nope.jsonl'}"),
        train_case("paths", "data.eval does not exist", f"--config.data.eval={root / 'nope_eval.jsonl'}"),
        train_case("paths", "workdir not writable (under a file)", name="a_file/run"),
        train_case("paths", "truncated safetensors file",
                   f"--config.model.path={copy_model('m_trunc', truncate)}"),
        train_case("paths", "only pickled weights", f"--config.model.path={copy_model('m_pickle', pickled)}"),
        train_case("paths", "malformed config.json", f"--config.model.path={copy_model('m_json', bad_json)}"),
        # ---- data rows
        train_case("data", "empty chosen", f"--config.data.train={pairs_with(2, {'chosen': ''}, 'p_empty.jsonl')}"),
        train_case("data", "invalid JSON line", f"--config.data.train={pairs_with(4, '{oops', 'p_json.jsonl')}"),
        train_case("data", "row without prompt", f"--config.data.train={pairs_with(1, {'prompt': None}, 'p_noprompt.jsonl')}"),
        train_case("data", "chosen == rejected", f"--config.data.train={pairs_with(3, {'chosen': 'same', 'rejected': 'same'}, 'p_same.jsonl')}"),
        train_case("data", "chosen == rejected, data.on_error=skip (runs, counts the skip)",
                   f"--config.data.train={root / 'p_same.jsonl'}", "--config.data.on_error=skip",
                   name="w_skip"),
        train_case("data", "NaN token weight", f"--config.data.train={pairs_with(0, {'chosen_weights': [1.0, float('nan')]}, 'p_nan.jsonl')}"),
        train_case("data", "fewer rows than one batch", "--config.train.batch_size=32"),
        train_case("data", "token-weighted loss, rows without weights", "--config.loss.a_tok=1"),
        Case("data", "SFT row without response", "sft",
             [*train, wd("w_sft"), f"--config.data.train={pairs}"]),
        # ---- training, checkpoints, resume
        train_case("train", "learning rate that blows up; the last update is the bad one",
                   "--config.optim.lr=1e9", "--config.train.max_steps=1", name="w_nan",
                   after=steps("w_nan")),
        train_case("train", "rerun in a finished workdir with another loss.beta and lr",
                   "--config.loss.beta=0.5", "--config.optim.lr=1e-4", name="w_done",
                   setup=finished_run("w_done")),
        train_case("train", "checkpoint.resume=False in a workdir with checkpoints",
                   "--config.checkpoint.resume=false", name="w_done"),
        train_case("train", "the remedy: checkpoint.fresh=True (runs)", "--config.loss.beta=0.5",
                   "--config.checkpoint.fresh=true", name="w_done", after=steps("w_done")),
        train_case("train", "resume after an interruption between checkpoints (runs)",
                   "--config.train.max_steps=4", "--config.checkpoint.every=2", name="w_int",
                   setup=interrupted("w_int"), after=steps("w_int")),
        # ---- eval
        Case("eval", "constraint kwarg of the wrong type (num_words='many')", "eval",
             [*mw, "--config.eval.data=" + eval_file("e_type.jsonl", {"prompt": "p", "constraints": [
                 {"id": "length_constraints:number_words", "kwargs": {"num_words": "many", "relation": "at least"}}]})]),
        Case("eval", "unknown constraint argument", "eval",
             [*mw, "--config.eval.data=" + eval_file("e_arg.jsonl", {"prompt": "p", "constraints": [
                 {"id": "punctuation:no_comma", "kwargs": {"n": 1}}]})]),
        Case("eval", "unknown constraint id", "eval",
             [*mw, "--config.eval.data=" + eval_file("e_id.jsonl", {"prompt": "p", "constraints": [{"id": "no:such"}]})]),
        Case("eval", "IFEval kwargs list of the wrong length", "eval",
             [*mw, "--config.eval.data=" + eval_file("e_len.jsonl", {"prompt": "p", "instruction_id_list": [
                 "punctuation:no_comma", "change_case:english_lowercase"], "kwargs": [{}]})]),
        Case("eval", "level that is not an integer", "eval",
             [*mw, "--config.eval.data=" + eval_file("e_level.jsonl", {**eval_ok, "level": "two"})]),
        Case("eval", "eval items file does not exist", "eval", [*mw, f"--config.eval.data={root / 'nope.jsonl'}"]),
        # ---- export
        Case("export", "no checkpoint in the workdir", "export", [*export, wd("w_empty")]),
        Case("export", "a checkpoint step that does not exist", "export",
             [*export, wd("w_done"), "--step=7"]),
        Case("export", "the old documented --config.export.out", "export",
             [*export, wd("w_done"), f"--config.export.out={root / 'x'}"]),
        # ---- the pipeline (musc_jax.train with a pipeline section): refused before the evaluation
        Case("pipeline", "a training value that cannot work (grad_accum does not divide the batch)",
             "train", ["--config", "configs/microworld.py", f"--config.workdir={root / 'p_accum'}",
                       "--config.optim.grad_accum=5", "--config.eval.limit=4"]),
        Case("pipeline", "a misspelt builder choice (build.musc.decomposer)", "train",
             ["--config", "configs/microworld.py", f"--config.workdir={root / 'p_dec'}",
              "--config.build.musc.decomposer=oracle", "--config.eval.limit=4"]),
        # ---- pairs, plan
        Case("pairs", "unknown method", "pairs", ["--config", "configs/pairs_musc.py", "--config.pairs.method=magic",
                                                  f"--config.pairs.out_dir={root / 'pairs_out'}"]),
        Case("pairs", "unknown seed source", "pairs", ["--config", "configs/pairs_musc.py", "--config.data.source=web",
                                                       f"--config.pairs.out_dir={root / 'pairs_out'}"]),
        Case("pairs", "seeds row with an empty prompt", "pairs",
             ["--config", "configs/pairs_musc.py", "--config.data.source=jsonl",
              f"--config.data.path={seeds_bad}", f"--config.model.path={model}",
              f"--config.pairs.out_dir={root / 'pairs_out2'}"]),
        Case("plan", "misspelt key", "plan", ["--config", "configs/dpo.py", "--config.model.remmat=true"]),
    ]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def read_table(path: Path) -> tuple[dict[str, dict], list[str]]:
    """The rows of an existing table by "area/bad input", and its lines of notes (the text
    between the counts line and the table)."""
    rows, notes, lines = {}, [], path.read_text().splitlines()
    for line in lines:
        if re.match(r"\| \d+ \|", line):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            _, area, what, tool, rc, tb, message = cells
            rows[f"{area}/{what}"] = {"area": area, "what": what, "tool": tool, "rc": int(rc),
                          "traceback": tb == "yes", "message": message}
    counts = next(i for i, x in enumerate(lines) if re.match(r"\d+ inputs, ", x))
    table = next(i for i, x in enumerate(lines) if x.startswith("| # |"))
    notes = [x for x in lines[counts + 1:table] if x.strip()]
    return rows, notes


def write_table(results: list[dict], out: Path, total_s: float, notes: list[str] = ()) -> None:
    lines = [
        "# Hard edges: bad inputs and the message each gives",
        "",
        "Generated by `python scripts/hard_edges_table.py` (issue 11): each row runs the real CLI",
        "(`python -m musc_jax.<tool>`) in a fresh process on CPU against a tiny random model and small",
        "files in a temporary directory (paths below are shortened to `<tmp>`). *exit* is the exit",
        "status (1: a user error in the run, 2: bad flags or config keys, 0: it ran); *tb* says",
        "whether a traceback was printed (`--debug` or `MUSC_DEBUG=1` prints one on purpose). Text in",
        "[brackets] is what the script found on disk afterwards.",
        "",
        f"{len(results)} inputs, {sum(r['rc'] != 0 for r in results)} refused, "
        f"{sum(r['rc'] == 0 for r in results)} ran (exit 0), "
        f"{sum(r['traceback'] for r in results)} with a traceback; "
        f"{total_s / 60:.1f} min in all (on a shared, loaded machine).",
        *[x for note in notes for x in ("", note)],
        "",
        "| # | area | bad input | tool | exit | tb | message |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(results, 1):
        lines.append(f"| {i} | {r['area']} | {_cell(r['what'])} | {r['tool']} | {r['rc']} | "
                     f"{'yes' if r['traceback'] else 'no'} | {_cell(r['message'])} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "results" / "hard_edges.md"))
    ap.add_argument("--only", nargs="*", default=[],
                    help="run only cases whose description contains one of these")
    ap.add_argument("--merge", action="store_true",
                    help="replace / add the --only rows in the existing table instead of rewriting it")
    ap.add_argument("--jobs", type=int, default=3, help="cases run at the same time")
    args = ap.parse_args()
    if args.merge and not args.only:
        ap.error("--merge needs --only: the cases to rerun")
    root = Path(tempfile.mkdtemp(prefix="hard_edges_"))
    t0 = time.time()
    try:
        every = cases(root)
        todo = [c for c in every if not args.only or any(o in c.what for o in args.only)]
        # Cases sharing a workdir depend on each other's order: one chain per workdir.
        chains: dict[str, list[int]] = {}
        for i, c in enumerate(todo):
            key = next((a for a in c.args if a.startswith("--config.workdir=")), f"#{i}")
            chains.setdefault(key, []).append(i)
        results: list[dict | None] = [None] * len(todo)

        def run_chain(indices: list[int]) -> None:
            for i in indices:
                r = run_case(todo[i])
                r["tool"] = todo[i].tool
                r["message"] = r["message"].replace(str(root), "<tmp>").replace(str(REPO) + "/", "")
                print(f"[{i + 1}] {todo[i].what}: rc={r['rc']} tb={r['traceback']} "
                      f"({r['seconds']:.0f}s) {r['message'][:200]}", flush=True)
                results[i] = r

        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(args.jobs) as pool:
            list(pool.map(run_chain, sorted(chains.values(), key=len, reverse=True)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if not args.merge:
        write_table(results, Path(args.out), time.time() - t0)
        print(f"wrote {args.out}")
        return
    old, notes = read_table(Path(args.out))
    total = float(re.search(r"; ([\d.]+) min in all", Path(args.out).read_text()).group(1)) * 60
    new = {f"{r['area']}/{r['what']}": r for r in results}
    merged = [new.get(f"{c.area}/{c.what}") or old.get(f"{c.area}/{c.what}") for c in every]
    missing = [c.what for c, r in zip(every, merged) if r is None]
    if missing:
        raise SystemExit(f"--merge: no row for {missing} in {args.out}; run them with --only too")
    numbers = [i for i, c in enumerate(every, 1) if f"{c.area}/{c.what}" in new]
    notes.append(f"Rows {', '.join(map(str, numbers))} were (re)run alone with `--merge --only` "
                 f"({time.time() - t0:.0f} s), the rest come from the run above.")
    write_table(merged, Path(args.out), total, notes)
    print(f"merged {len(numbers)} rows into {args.out}")


if __name__ == "__main__":
    main()
