"""Report how well `rule_decompose` recovers IFEval labels.

    NLTK_DATA=../shared/nltk_data python scripts/decompose_report.py \
        [--data ../shared/data/ifeval_dev.jsonl] [--snippet 160] [--rows dev|holdout|all]

Prints per-type precision / recall / kwargs accuracy, the missed and spurious ids with a
prompt snippet, the predicted-vs-label arguments where they differ, and the totals.

`--rows holdout` scores the last HOLDOUT rows of the file and prints the totals and per-type
counts only, never a prompt: those rows are kept unread as a check of generalisation (the
decomposer is improved from the constraint definitions and our own phrasings, issue 13);
`--rows dev` (default) is the rest, with the full listing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from musc_jax.data.decompose import score_rule_decompose

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "ifeval_dev.jsonl"
HOLDOUT = 20   # the last rows of the file: our own unread holdout


def load_rows(path: Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{lineno}: invalid JSON ({e})") from None
            for field in ("prompt", "instruction_id_list", "kwargs"):
                if field not in rows[-1]:
                    raise SystemExit(f"{path}:{lineno}: missing field {field!r}")
    return rows


def _snip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n - 3] + "..."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--snippet", type=int, default=160, help="prompt snippet length")
    ap.add_argument("--rows", choices=("dev", "holdout", "all"), default="dev",
                    help=f"dev: all but the last {HOLDOUT} rows; holdout: those (totals only)")
    args = ap.parse_args()
    rows = load_rows(args.data)
    if args.rows == "dev":
        rows = rows[:-HOLDOUT]
    elif args.rows == "holdout":
        rows = rows[-HOLDOUT:]
    score = score_rule_decompose(rows)

    print(f"{'instruction id':46s} {'n':>4s} {'prec':>6s} {'recall':>6s} {'kwargs':>6s}")
    for tid in sorted(score.per_type):
        s = score.per_type[tid]
        print(f"{tid:46s} {s.tp + s.fn:4d} {s.precision:6.2f} {s.recall:6.2f} "
              f"{s.kwargs_accuracy:6.2f}")

    if args.rows == "holdout":   # never print a held-out prompt
        print(f"\nmissed={len(score.missed)} spurious={len(score.spurious)} "
              f"wrong kwargs={len(score.wrong_kwargs)}")
        _totals(score, rows)
        return
    print(f"\nMISSED ({len(score.missed)})")
    for key, tid, prompt in score.missed:
        print(f"  [{key}] {tid}: {_snip(prompt, args.snippet)}")
    print(f"\nSPURIOUS ({len(score.spurious)})")
    for key, tid, prompt in score.spurious:
        print(f"  [{key}] {tid}: {_snip(prompt, args.snippet)}")
    print(f"\nWRONG KWARGS ({len(score.wrong_kwargs)})")
    for key, tid, pred, label in score.wrong_kwargs:
        label = {k: v for k, v in label.items() if v is not None}
        print(f"  [{key}] {tid}: predicted {_snip(json.dumps(pred), args.snippet)}"
              f"\n  {'':>{len(str(key)) + 2}} label     {_snip(json.dumps(label), args.snippet)}")

    _totals(score, rows)


def _totals(score, rows) -> None:
    n_label = sum(s.tp + s.fn for s in score.per_type.values())
    n_pred = sum(s.tp + s.fp for s in score.per_type.values())
    print(f"\nTOTAL prompts={len(rows)} labelled ids={n_label} predicted ids={n_pred}")
    print(f"precision={score.precision:.3f} recall={score.recall:.3f} "
          f"kwargs accuracy={score.kwargs_accuracy:.3f} (on correctly found ids)")


if __name__ == "__main__":
    main()
