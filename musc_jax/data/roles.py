"""The chat prompts of the roles a policy plays besides responding: judge, refine, evolve, compose.

One place for each role's wording and its parser, used both by the pair builders (which prompt
the policy) and by the microworld's SFT corpus (which teaches the base model these roles), so the
two can never drift apart. Decomposition prompts live in `musc_jax.data.decompose`.
"""

from __future__ import annotations

import re
from typing import Sequence

Message = dict[str, str]

JUDGE_QUESTION = "Does the response follow every constraint? Answer yes or no."
REFINE_REQUEST = "Write a corrected response that follows every constraint."


CRITIQUE_REQUEST = ("First write a short critique, one line per constraint, then the verdict "
                    "on its own line: Verdict: yes or Verdict: no.")
EDIT_REQUESTS = {
    "negate": "Rewrite the constraint so that it asks for the opposite.",
    "substitute": "Write one different constraint of another kind for the same task.",
}


def critique_judge_messages(instruction: str, response: str) -> list[Message]:
    """SPaR's judge prompt: a short critique before the yes/no verdict (DESIGN 5.5)."""
    return [{"role": "user", "content": f"Judge the response.\nInstruction: {instruction}\n"
                                        f"Response: {response}\n{CRITIQUE_REQUEST}"}]


def critique_text(passed: bool, missed: Sequence[str] = (), kept: Sequence[str] = ()) -> str:
    """A critique-then-verdict judgement: one line per constraint, then "Verdict: yes|no"."""
    lines = [f"Missed: {m}" for m in missed] + [f"Kept: {k}" for k in kept]
    return "\n".join(lines + [f"Verdict: {'yes' if passed else 'no'}"])


def edit_constraint_messages(op: str, task: str, constraint: str) -> list[Message]:
    """Ask the policy to negate or substitute one constraint (MuSC corruption of free text)."""
    if op not in EDIT_REQUESTS:
        raise ValueError(f"unknown constraint edit {op!r}; expected one of {tuple(EDIT_REQUESTS)}")
    return [{"role": "user", "content": f"Edit the constraint.\nTask: {task}\n"
                                        f"Constraint: {constraint}\n{EDIT_REQUESTS[op]}"}]


def parse_constraint_edit(text: str, original: str) -> str | None:
    """The edited constraint: the first non-empty line, None when empty or unchanged."""
    line = next((ln.strip() for ln in (text or "").splitlines() if ln.strip()), "")
    line = re.sub(r"^(?:constraint|new constraint)\s*:\s*", "", line, flags=re.I).strip()
    if not line or _norm_sentence(line) == _norm_sentence(original):
        return None
    return line


def _norm_sentence(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip().rstrip(".!").lower()


def judge_messages(instruction: str, response: str) -> list[Message]:
    """Ask whether `response` follows every constraint of `instruction`."""
    return [{"role": "user", "content": f"Judge the response.\nInstruction: {instruction}\n"
                                        f"Response: {response}\n{JUDGE_QUESTION}"}]


def judgement_text(passed: bool, missed: Sequence[str] = ()) -> str:
    """A judge's answer: "yes", or "no" with the constraints it misses."""
    if passed:
        return "yes"
    return "no" + (" it misses: " + " ".join(missed) if missed else "")


_VERDICT = re.compile(r"^\W*(yes|no)\b", re.I)
_VERDICT_LINE = re.compile(r"verdict\s*:\s*\W*(yes|no)\b", re.I)


def parse_verdict(text: str) -> bool | None:
    """True for a "yes" judgement, False for "no", None when the output is neither. A critique
    judgement ends with "Verdict: yes|no" (its last such line counts); a plain one starts with
    yes or no."""
    found = _VERDICT_LINE.findall(text or "")
    if found:
        return found[-1].lower() == "yes"
    m = _VERDICT.match(text or "")
    return None if m is None else m.group(1).lower() == "yes"


def refine_messages(instruction: str, response: str, judgement: str) -> list[Message]:
    """The judge dialogue plus a request for a corrected response (SPaR's refiner input)."""
    return [{"role": "user", "content": f"Refine the response.\nInstruction: {instruction}\n"
                                        f"Response: {response}\nJudgement: {judgement}\n"
                                        f"{REFINE_REQUEST}"}]


def evolve_messages(instruction: str) -> list[Message]:
    """Ask for the instruction with one more (or one tighter) constraint (ECD's evolver)."""
    return [{"role": "user", "content": "Make the instruction harder by adding one constraint.\n"
                                        f"Instruction: {instruction}"}]


def compose_messages(task: str, constraints: Sequence[str]) -> list[Message]:
    """Ask for one instruction text from a task and constraint sentences."""
    lines = "\n".join([f"TASK: {task}"] + [f"CONSTRAINT: {c}" for c in constraints])
    return [{"role": "user", "content": f"Write the instruction.\n{lines}"}]


def respond_messages(instruction: str) -> list[Message]:
    return [{"role": "user", "content": instruction}]


def clean_output(text: str) -> str:
    """A generated instruction or response with stray whitespace removed."""
    return (text or "").strip()


def decompose_messages(instruction: str) -> list[Message]:
    """Zero-shot decomposition prompt (small models; the few-shot form is in data.decompose)."""
    return [{"role": "user", "content": f"Decompose the instruction.\nInstruction: {instruction}"}]
