"""IFEval figures from an eval result: the four accuracies, the model-card figure, loose variants.

IFEval (Zhou et al., 2023) checks each verifiable instruction of a prompt on the model's response:

* strict: the instruction's checker passes on the response (an empty response never passes);
* loose: the checker passes on at least one of 8 variants of the response, every combination of
  {as is, first line removed, last line removed, both removed} x {as is, every '*' removed}
  (lines split on "\\n", a removal re-joins with "\\n" and strips); an empty variant never passes.

Prompt level = share of prompts whose instructions all pass; instruction level = share of
instructions that pass. `musc_jax.eval.score_responses` computes all four (its checkers are
if_verifiable's IFEval checkers). This module adds what a report on an IFEval run needs:

* `loose_variants`: IFEval's 8 variants, written from the paper's definition; the tests check the
  eval's loose verdicts against it;
* `ifeval_figures`: the four metrics in percent, their average, and the figure model cards
  publish as "IFEval" (the mean of prompt- and instruction-level strict accuracy);
* `loose_rescues`: for constraints that fail strict but pass loose, which variant first passes
  (explains a strict/loose gap: preambles, sign-offs, markdown bold).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from musc_jax.data.constraints import verify
from musc_jax.eval import METRIC_KEYS, EvalResult

# Names of the variants, in the order `loose_variants` returns them.
LOOSE_VARIANT_NAMES = (
    "as_is", "no_asterisks", "no_first_line", "no_last_line", "no_first_last",
    "no_first_line_no_asterisks", "no_last_line_no_asterisks", "no_first_last_no_asterisks",
)

# Published IFEval figures (percent; mean of prompt- and instruction-level strict accuracy).
PUBLISHED = {
    "SmolLM2-135M-Instruct": 29.9,   # HuggingFaceTB/SmolLM2-135M-Instruct model card, full IFEval (541 prompts)
}


def loose_variants(response: str) -> list[str]:
    """IFEval's loose variants of `response` (8 strings, order of LOOSE_VARIANT_NAMES)."""
    lines = response.split("\n")
    no_first = "\n".join(lines[1:]).strip()
    no_last = "\n".join(lines[:-1]).strip()
    no_both = "\n".join(lines[1:-1]).strip()
    plain = [response, no_first, no_last, no_both]
    starless = [v.replace("*", "") for v in plain]
    return [plain[0], starless[0], plain[1], plain[2], plain[3], starless[1], starless[2],
            starless[3]]


def ifeval_figures(result: EvalResult | dict[str, Any]) -> dict[str, float | None]:
    """The four IFEval metrics in percent, their average, and the model-card figure.

    `model_card` = mean of prompt- and instruction-level strict, the number model cards (and
    the Open LLM Leaderboard's IFEval column) report; None where a metric is undefined.
    """
    o = result.overall if isinstance(result, EvalResult) else result
    pct = {k: None if o[k] is None else 100.0 * o[k] for k in METRIC_KEYS}
    strict = (pct["prompt_level_strict"], pct["instruction_level_strict"])
    out: dict[str, float | None] = dict(pct)
    out["average"] = None if None in pct.values() else sum(pct.values()) / len(pct)
    out["model_card"] = None if None in strict else sum(strict) / 2
    return out


def loose_rescues(result: EvalResult) -> Counter:
    """Count, over constraints failing strict but passing loose, the first variant that passes.

    Keys are LOOSE_VARIANT_NAMES; needs the per-item records (`evaluate`/`score_responses`).
    """
    counts: Counter = Counter()
    for rec in result.records:
        for c, s, lo in zip(rec.constraints, rec.strict, rec.loose):
            if s is False and lo:
                for name, v in zip(LOOSE_VARIANT_NAMES, loose_variants(rec.response)):
                    if v.strip() and verify(v, c):
                        counts[name] += 1
                        break
    return counts
