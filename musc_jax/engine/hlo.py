"""Reading compiled HLO text: which ops of a while loop's body copy cache-sized arrays."""

from __future__ import annotations

import math
import re

_COMPUTATION = re.compile(r"^(?:ENTRY )?%?([\w.\-]+) .*\{\s*$")
_CALLS = re.compile(r"(?:calls|body|condition|to_apply|branch_computations)=\{?%?([\w.\-, %]+)\}?")
_COPY = re.compile(r"= (\w+)\[([\d,]*)\]\{[\d,]*\} (copy|transpose)\(")
_WHILE = re.compile(r" while\(.*body=%?([\w.\-]+)")


def _computations(hlo: str) -> dict[str, list[str]]:
    comps: dict[str, list[str]] = {}
    name = None
    for line in hlo.splitlines():
        m = _COMPUTATION.match(line)
        if m:
            name = m.group(1)
            comps[name] = []
        elif name is not None:
            comps[name].append(line)
    return comps


def loop_copies(hlo: str, min_elements: int) -> list[str]:
    """Copy/transpose ops of at least `min_elements` elements that run on every iteration of
    the program's while loops (their bodies and every computation they call)."""
    comps = _computations(hlo)
    todo = [b for lines in comps.values() for line in lines for b in _WHILE.findall(line)]
    seen: set[str] = set()
    found = []
    while todo:
        name = todo.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        for line in comps[name]:
            for group in _CALLS.findall(line):
                todo.extend(c.strip().lstrip("%") for c in group.split(","))
            m = _COPY.search(line)
            if m and math.prod(int(d) for d in m.group(2).split(",") if d) >= min_elements:
                found.append(line.strip())
    return found
