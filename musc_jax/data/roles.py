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


def parse_verdict(text: str) -> bool | None:
    """True for a "yes" judgement, False for "no", None when the output is neither."""
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
