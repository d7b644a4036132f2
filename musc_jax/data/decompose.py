"""Decompose an instruction into (task, constraints, input): a rule decomposer and a self one.

* `decompose_instruction(text)` separates the core task and an optional input (a text to work
  on) from the sentences that carry constraints; the constraints are typed by the rule
  decomposer (`rule_decompose`, see `musc_jax.data.decompose_rules`).
* `self_decompose(texts, generate_fn)` asks the policy itself, with our few-shot examples, and
  parses its line format robustly; failures and samples with too few constraints are dropped
  and counted, never raised.

The rule-based detectors live in `musc_jax.data.decompose_rules` and the scoring against
IFEval labels (`score_rule_decompose`, used by the tests and by scripts/decompose_report.py)
in `musc_jax.data.decompose_score`; their public names are re-exported here, so callers can
keep importing everything from this module.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from musc_jax.data.constraints import Constraint, free_text
from musc_jax.data.decompose_rules import (BOUND, NEG_BEFORE, NUM, QUOTED, TIMES, Found, _norm,
                                           find_constraints, parse_num, rule_decompose,
                                           sentence_spans)
from musc_jax.data.roles import decompose_messages
from musc_jax.data.decompose_score import (DecomposeScore, TypeScore, id_counts, kwargs_match,
                                           score_rule_decompose)

Message = dict[str, str]
DECOMPOSE_PROMPTS = ("few_shot", "zero_shot")
GenerateFn = Callable[..., list[str]]

# --------------------------------------------------------------------------------------------
# Task / constraints / input
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decomposition:
    """An instruction split into its core task, its constraints (task excluded) and an input."""

    task: str
    constraints: list[Constraint] = field(default_factory=list)
    input: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "constraints": [c.to_dict() for c in self.constraints],
                "input": self.input}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Decomposition":
        return cls(d["task"], [Constraint.from_dict(c) for c in d.get("constraints", [])],
                   d.get("input"))


_EXAMPLE_LINE = re.compile(r"^\s*(?:[*\-•]\s|\d+[.)]\s|\*{3}$|\.\.\.$|\"$|i\.e\.|e\.g\.|"
                           r"(?:for\s+)?example|such as|like:|this\s+(?:phrase|sentence|word|"
                           r"marker)|that\s+phrase|no\s+other\s+words|nothing\s+else)", re.I)
_REFERS_TO_INPUT = re.compile(r"\b(?:following|below|this\s+(?:text|article|passage|paragraph|"
                              r"poem|email|story|essay))\b|:\s*$", re.I)
# Sentences that open like this are requirements on the response, never the task.
_CONSTRAINT_LEAD = re.compile(
    r"^\s*(?:your|the\s+(?:response|answer|reply|output|letter|word|entire|whole|first|last|"
    r"very)|make\s+sure|please\s+(?:make|do|use|include|wrap|highlight|add|respond|reply|"
    r"answer|write\s+in)|use|do\s+not|don't|never|include|highlight|wrap|put|answer\s+(?:with|"
    r"in)|respond|reply|it\s+(?:should|must)|there\s+should|in\s+your|at\s+the\s+end|end|"
    r"finish|separate|all\s+|no\s+|refrain|avoid|keep|limit|also|italici|mark|be\s+sure|"
    r"first\s+repeat|before\s+you)", re.I)
_CONNECTOR = re.compile(r"(?:,\s*|\s+(?:but|and|that|which|with|in|using|without|while|so|"
                        r"where|containing|including)\s+)", re.I)


def _task_prefix(sentence: str, first: int, last: int) -> str | None:
    """The task clause in front of a trailing constraint ("Write a haiku about a lion | that
    includes the keywords ..."); the whole sentence when the constraint sits inside it; None
    when the sentence is a requirement throughout. first/last: the constraint's extent."""
    if _CONSTRAINT_LEAD.match(sentence):
        return None
    rest = sentence[last:]
    trailing = not re.sub(r"[\W_]+", "", rest) or bool(
        re.match(r"\s*[,;]\s*", rest) and _CONSTRAINT_LEAD.match(re.sub(r"^\s*[,;]\s*", "", rest)))
    cuts = [m.start() for m in _CONNECTOR.finditer(sentence[:first + 1]) if m.end() <= first + 1]
    # Step back over clauses that are themselves requirements ("and end it | with a ...").
    while len(cuts) > 1 and _CONSTRAINT_LEAD.match(
            re.sub(r"^[\s,;]*(?:(?:and|but|then)\s+)?", "", sentence[cuts[-2]:cuts[-1]])):
        cuts.pop()
    prefix = sentence[:cuts[-1]].strip() if cuts else ""
    if not trailing or len(prefix.split()) < 3:
        return sentence.strip()
    end = "?" if sentence.rstrip().endswith("?") else "."
    return prefix if prefix[-1:] in ".?!:" else prefix + end


def decompose_instruction(text: str, microworld: bool = True) -> Decomposition:
    """Split `text` into task, typed constraints and an optional input.

    Sentences that carry a recognised constraint (with the example lines that illustrate it)
    are constraint sentences; where a constraint sits at the end of a task sentence ("Write a
    rap in exactly 4 paragraphs."), the clause before it stays in the task. A later block with
    no constraint becomes the input when the task points at it ("the text below", a colon).
    Unrecognised (e.g. style) requirements stay in the task: this decomposer only types what
    it can verify.
    """
    found = find_constraints(text, microworld=microworld)
    t = _norm(text)
    spans = sentence_spans(t)
    all_spans = [sp for f in found for sp in f.spans()]
    first_in = [min((max(a, s) for s, e in all_spans if s < b and a < e), default=None)
                for a, b in spans]
    last_in = [max((min(b, e) for s, e in all_spans if s < b and a < e), default=None)
               for a, b in spans]
    is_con = [x is not None for x in first_in]
    for i in range(1, len(spans)):  # example lines illustrating the constraint before them
        line = t[spans[i][0]:spans[i][1]]
        prev = t[spans[i - 1][0]:spans[i - 1][1]].rstrip()
        if not is_con[i] and is_con[i - 1] and (
                _EXAMPLE_LINE.match(line) or (prev.endswith(":") or _EXAMPLE_LINE.match(prev))
                and len(line.split()) < 10 and line.rstrip()[-1:] not in ".?!"):
            is_con[i] = True
    task_parts: list[str] = []
    input_parts: list[tuple[int, int]] = []
    for (a, b), con, first, last in zip(spans, is_con, first_in, last_in):
        sentence = t[a:b].strip()
        if con:
            prefix = _task_prefix(t[a:b], first - a, last - a) if first is not None \
                and not task_parts and not input_parts else None
            if prefix:
                task_parts.append(prefix)
            continue
        later_block = bool(task_parts) and "\n\n" in t[spans[0][0]:a] and bool(
            _REFERS_TO_INPUT.search(" ".join(task_parts)))
        if later_block or input_parts:
            input_parts.append((a, b))  # kept as a slice of the original text
        else:
            task_parts.append(sentence)
    task = " ".join(task_parts).strip()
    if not task and spans:  # everything is a requirement: keep the first sentence as the task
        task = t[spans[0][0]:spans[0][1]].strip()
    inp = t[input_parts[0][0]:input_parts[-1][1]].strip() if input_parts else ""
    return Decomposition(task, [f.constraint for f in found], inp or None)


# --------------------------------------------------------------------------------------------
# Self decomposition: the policy decomposes, prompted with our few-shot examples
# --------------------------------------------------------------------------------------------

SELF_DECOMPOSE_SYSTEM = (
    "You split an instruction into its core task and its constraints. Write one line "
    "'TASK: ...' with the core task, one line 'CONSTRAINT: ...' per requirement on the "
    "response (length, format, words to use or avoid, style, language, ...), and 'INPUT: ...' "
    "only if the instruction contains a text to work on. Write nothing else.")

# Our own examples: (instruction, task, constraints, input).
SELF_DECOMPOSE_EXAMPLES: tuple[tuple[str, str, tuple[str, ...], str | None], ...] = (
    ("Write a short story about a lighthouse keeper who befriends a seagull. Keep it under 200 "
     "words, do not use any commas, and give it a title wrapped in double angular brackets.",
     "Write a short story about a lighthouse keeper who befriends a seagull.",
     ("Use less than 200 words.", "Do not use any commas.",
      "Include a title wrapped in double angular brackets, like <<title>>."), None),
    ("Summarize the paragraph below for a ten-year-old. Your answer must be in all lowercase "
     "letters and mention the word \"planet\" at least twice.\n\nMars is the fourth planet "
     "from the Sun and has two small moons.",
     "Summarize the paragraph for a ten-year-old.",
     ("Write the whole answer in lowercase letters.",
      "Use the word \"planet\" at least 2 times."),
     "Mars is the fourth planet from the Sun and has two small moons."),
    ("Give me three tips for learning to cook. Use exactly 3 markdown bullet points, keep a "
     "friendly tone, and end your response with \"Happy cooking!\"",
     "Give three tips for learning to cook.",
     ("Use exactly 3 markdown bullet points.", "Keep a friendly tone.",
      "End the response with the exact phrase \"Happy cooking!\""), None),
    ("What are the health benefits of green tea? Answer in German only and wrap the entire "
     "response in double quotation marks.",
     "Explain the health benefits of green tea.",
     ("Respond only in German.", "Wrap the entire response in double quotation marks."), None),
)


def format_decomposition(task: str, constraints: Sequence[str], input: str | None = None) -> str:
    lines = [f"TASK: {task}"] + [f"CONSTRAINT: {c}" for c in constraints]
    if input:
        lines.append(f"INPUT: {input}")
    return "\n".join(lines)


def build_decompose_messages(text: str) -> list[Message]:
    """The chat conversation that asks the policy to decompose `text` (few-shot turns)."""
    msgs: list[Message] = [{"role": "system", "content": SELF_DECOMPOSE_SYSTEM}]
    for instr, task, cons, inp in SELF_DECOMPOSE_EXAMPLES:
        msgs.append({"role": "user", "content": f"Instruction:\n{instr}"})
        msgs.append({"role": "assistant", "content": format_decomposition(task, cons, inp)})
    msgs.append({"role": "user", "content": f"Instruction:\n{text}"})
    return msgs


class DecomposeParseError(ValueError):
    """The policy's decomposition could not be parsed."""


_LINE_KEY = re.compile(
    r"^(?P<key>task|constraints?|input)\s*(?:#?\s*\d+)?\s*[:：\-–]\s*(?P<val>.*)$", re.I)
_LEAD = re.compile(r"^\s*(?:[-*•>]+|\(?\d+[.)]|\(\w\))\s*")
_EMPTY = {"", "none", "n/a", "na", "-", "no input", "null", "(none)"}


def parse_decomposition(output: str, type_constraints: bool = True) -> Decomposition:
    """Parse 'TASK: / CONSTRAINT: / INPUT:' lines; tolerant of numbering, bullets, bold
    markers, blank lines, 'CONSTRAINTS:' headers followed by a list, and a missing final
    newline. Constraints that `rule_decompose` types unambiguously become typed constraints
    (keeping their wording in `text`); the rest are free text."""
    if not isinstance(output, str):
        raise DecomposeParseError(f"expected text, got {type(output).__name__}")
    task: str | None = None
    cons: list[str] = []
    inp: list[str] = []
    current = None
    for raw in output.replace("\r", "").split("\n"):
        line = _LEAD.sub("", raw.strip().replace("**", "").replace("__", "")).strip()
        if not line:
            continue
        m = _LINE_KEY.match(line)
        if m:
            key, val = m.group("key").lower(), m.group("val").strip()
            if key == "task":
                if task is not None:
                    break  # the model started another example: stop here
                task, current = val, "task"
            elif key.startswith("constraint"):
                current = "constraint"
                if val.lower() not in _EMPTY:
                    cons.append(val)
            else:
                current = "input"
                if val.lower() not in _EMPTY:
                    inp.append(val)
        elif current == "constraint" and _LEAD.match(raw.strip()):
            cons.append(line)  # a bulleted item under "CONSTRAINTS:"
        elif current == "input":
            inp.append(line)
        elif current == "task" and task is not None:
            task = f"{task} {line}".strip()
        elif current == "constraint" and cons:
            cons[-1] = f"{cons[-1]} {line}"
    if not task:
        raise DecomposeParseError("no 'TASK:' line in the output")
    out: list[Constraint] = []
    for c in cons:
        typed = rule_decompose(c) if type_constraints else []
        out.append(Constraint(typed[0].id, typed[0].kwargs, text=c) if len(typed) == 1
                   else free_text(c))
    return Decomposition(task, out, "\n".join(inp).strip() or None)


@dataclass
class DecomposeStats:
    total: int = 0
    kept: int = 0
    parse_failures: int = 0
    too_few_constraints: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def _call_generate(generate_fn: GenerateFn, convs: list[list[Message]],
                   temperature: float | None) -> list[str]:
    try:
        params = inspect.signature(generate_fn).parameters
        accepts = "temperature" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        accepts = False
    if temperature is not None and accepts:
        return list(generate_fn(convs, temperature=temperature))
    return list(generate_fn(convs))


def self_decompose(texts: Sequence[str], generate_fn: GenerateFn, *,
                   temperature: float | None = 0.2, min_constraints: int = 2,
                   type_constraints: bool = True, batch_size: int | None = None,
                   prompt: str = "few_shot") -> tuple[list[Decomposition | None], DecomposeStats]:
    """Decompose `texts` with the policy. Returns one Decomposition or None per text, and
    counts. A sample is dropped (None) when its output cannot be parsed or when it has fewer
    than `min_constraints` constraints (the task is not counted). `generate_fn` maps a list of
    chat conversations to a list of strings; `temperature` is passed when it accepts one.
    prompt: "few_shot" (`build_decompose_messages`, for real models) or "zero_shot"
    (`roles.decompose_messages`, the prompt the microworld's corpus teaches)."""
    if prompt not in DECOMPOSE_PROMPTS:
        raise ValueError(f"decompose prompt {prompt!r}: choose one of {DECOMPOSE_PROMPTS}")
    messages = build_decompose_messages if prompt == "few_shot" else decompose_messages
    stats = DecomposeStats(total=len(texts))
    results: list[Decomposition | None] = []
    step = batch_size or max(1, len(texts))
    for i in range(0, len(texts), step):
        chunk = texts[i:i + step]
        outs = _call_generate(generate_fn, [messages(t) for t in chunk],
                              temperature)
        if len(outs) != len(chunk):
            raise ValueError(f"generate_fn returned {len(outs)} outputs for {len(chunk)} "
                             "conversations")
        for o in outs:
            try:
                dec = parse_decomposition(o, type_constraints=type_constraints)
            except DecomposeParseError:
                stats.parse_failures += 1
                results.append(None)
                continue
            if len(dec.constraints) < min_constraints:
                stats.too_few_constraints += 1
                results.append(None)
                continue
            stats.kept += 1
            results.append(dec)
    return results, stats


__all__ = [
    # task / constraints / input
    "Decomposition", "decompose_instruction",
    # self decomposition
    "DecomposeParseError", "DecomposeStats", "GenerateFn", "Message", "SELF_DECOMPOSE_EXAMPLES",
    "SELF_DECOMPOSE_SYSTEM", "build_decompose_messages", "format_decomposition",
    "parse_decomposition", "self_decompose",
    # re-exported from decompose_rules
    "BOUND", "NEG_BEFORE", "NUM", "QUOTED", "TIMES", "Found", "find_constraints", "parse_num",
    "rule_decompose", "sentence_spans",
    # re-exported from decompose_score
    "DecomposeScore", "TypeScore", "id_counts", "kwargs_match", "score_rule_decompose",
]
