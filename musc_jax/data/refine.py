"""SPaR's tree search over refinements (DESIGN 5.5 step 3).

A tree starts from a failed response (the root) and its judgement. A node is (response,
judgement, value, depth, parent). Expanding a node samples `branch` refinements from the refiner
(prompt: `roles.refine_messages(instruction, node.response, node.judgement)`); each child is
judged (a judge's `votes` samples; value V = share of "yes").

* Breadth-first ("bfs", the default): level by level, every frontier node is expanded; the
  search stops at the first child of the level (in generation order: frontier order, then sample
  order) with V > `gate`; otherwise the best `keep` children of the level (by V, ties in
  generation order) form the next frontier; at most `max_depth` levels.
* Depth-first ("dfs"): a stack; the best child is expanded first and the search backtracks to the
  next-best when a subtree is exhausted. Each expansion keeps its best `keep` children (the same
  pruning as bfs, per node); nodes at `max_depth` are not expanded; the first child with
  V > `gate` stops the search.

`budget` (None / 0 = unlimited) is a hard cap on refinements sampled per tree: an expansion with
fewer left gets only that many children, and the search stops when it is spent. Empty
refinements are kept in the trace (not judged, value 0) but never expanded or chosen.

`search(roots, refiner, judge, cfg, seed)` runs many trees together: per step, one refiner call
(per distinct number of children) for the expansions of all trees and one judge call for all
their children. Each `SearchResult` holds the outcome (success, response, value, node), the
trace (every node, with `parent` = index of the parent in the trace) and the counts
(expansions, refine calls, judge calls, depth reached) and why it stopped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from musc_jax.data.judge import Judge, Judgement, derive_seed
from musc_jax.data.policy import Policy, Sampling
from musc_jax.data.roles import parse_verdict, refine_messages

STRATEGIES = ("bfs", "dfs")
STOPS = ("gate", "max_depth", "budget", "exhausted")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Tree-search settings (defaults: SPaR's)."""

    branch: int = 3                  # refinements sampled per expanded node
    keep: int = 2                    # best children kept per level (bfs) / per expansion (dfs)
    max_depth: int = 3               # deepest level of refinements
    gate: float = 0.5                # success: a child with value V > gate
    strategy: str = "bfs"            # "bfs" | "dfs"
    budget: int | None = None        # max refinements sampled per tree (None or 0: unlimited)
    temperature: float = 0.7         # refiner sampling
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"unknown search strategy {self.strategy!r}; expected one of "
                             f"{STRATEGIES}")
        for name in ("branch", "keep", "max_depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"search {name} must be >= 1, got {getattr(self, name)}")
        if self.budget is not None and self.budget < 0:
            raise ValueError(f"search budget must be >= 0 (0: unlimited), got {self.budget}")


@dataclasses.dataclass
class Root:
    """A tree's start: the instruction, a failed response, its judgement, and (for a verifier
    judge) the typed constraints. A judgement given as text gets value 0."""

    instruction: str
    response: str
    judgement: Judgement | str
    constraints: Sequence[Any] | None = None

    def judged(self) -> Judgement:
        if isinstance(self.judgement, Judgement):
            return self.judgement
        v = parse_verdict(self.judgement)
        return Judgement(v, None if v is None else float(v), (v,), self.judgement.strip())


@dataclasses.dataclass
class Node:
    """One response in a tree. `parent` is the parent's index in the trace (None for the root);
    `order` is when the node was expanded (0 = first; None = never)."""

    id: int
    parent: int | None
    depth: int
    response: str
    judged: Judgement | None          # None: an empty refinement, not judged
    order: int | None = None

    @property
    def value(self) -> float:
        return 0.0 if self.judged is None else self.judged.score

    @property
    def judgement(self) -> str:
        return "" if self.judged is None else self.judged.text

    @property
    def verdict(self) -> bool | None:
        return None if self.judged is None else self.judged.verdict

    @property
    def empty(self) -> bool:
        return not self.response.strip()

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "parent": self.parent, "depth": self.depth,
                "response": self.response, "judgement": self.judgement, "value": self.value,
                "verdict": self.verdict, "order": self.order,
                "votes": None if self.judged is None else list(self.judged.votes)}


@dataclasses.dataclass
class SearchResult:
    """The outcome of one tree: success (and the node), trace, counts and the stop reason."""

    success: bool
    node: int | None                 # index of the successful node in the trace
    trace: list[Node]
    expansions: int                  # nodes expanded
    refine_calls: int                # refinements sampled (children created)
    judge_calls: int                 # children judged (each with the judge's `votes` samples)
    depth: int                       # deepest level reached
    stop: str                        # "gate" | "max_depth" | "budget" | "exhausted"
    instruction: str = ""

    @property
    def root(self) -> Node:
        return self.trace[0]

    @property
    def response(self) -> str | None:
        return None if self.node is None else self.trace[self.node].response

    @property
    def value(self) -> float | None:
        return None if self.node is None else self.trace[self.node].value

    def path(self, node: int | None = None) -> list[Node]:
        """Root ... `node` (default: the successful node; [] on failure) along parent links."""
        i = self.node if node is None else node
        out = []
        while i is not None:
            out.append(self.trace[i])
            i = self.trace[i].parent
        return out[::-1]

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "node": self.node, "response": self.response,
                "value": self.value, "expansions": self.expansions,
                "refine_calls": self.refine_calls, "judge_calls": self.judge_calls,
                "depth": self.depth, "stop": self.stop,
                "trace": [n.to_dict() for n in self.trace]}


class _Tree:
    """Search state of one tree (bfs frontier or dfs stack)."""

    def __init__(self, root: Root, cfg: SearchConfig):
        self.root, self.cfg = root, cfg
        self.trace = [Node(0, None, 0, root.response, root.judged())]
        self.open = [0]                 # bfs: frontier (in order); dfs: stack (top = last)
        self.budget = cfg.budget or None
        self.expansions = self.refine_calls = self.judge_calls = 0
        self.success: int | None = None
        self.stop: str | None = None

    @property
    def done(self) -> bool:
        return self.stop is not None

    def _left(self) -> int | None:
        return None if self.budget is None else self.budget - self.refine_calls

    def plan(self) -> list[tuple[int, int]]:
        """The expansions of this step: (node index, number of children)."""
        left = self._left()
        if left == 0:
            self.stop = "budget"
            return []
        nodes = self.open if self.cfg.strategy == "bfs" else self.open[-1:]
        out = []
        for i in nodes:
            n = self.cfg.branch if left is None else min(self.cfg.branch, left)
            if n == 0:
                break
            out.append((i, n))
            if left is not None:
                left -= n
        if self.cfg.strategy == "dfs":
            self.open.pop()
        return out

    def add_children(self, parent: int, responses: Sequence[str]) -> list[int]:
        p = self.trace[parent]
        p.order = self.expansions
        self.expansions += 1
        ids = []
        for r in responses:
            node = Node(len(self.trace), parent, p.depth + 1, r, None)
            self.trace.append(node)
            ids.append(node.id)
        self.refine_calls += len(responses)
        return ids

    def finish_step(self, children: list[int]) -> None:
        """After the children of this step are judged: gate, then pruning, then stop checks."""
        cfg = self.cfg
        for i in children:
            n = self.trace[i]
            if n.judged is not None and not n.empty and n.value > cfg.gate:
                self.success, self.stop = i, "gate"
                return
        usable = [i for i in children if not self.trace[i].empty]
        ranked = sorted(usable, key=lambda i: -self.trace[i].value)[:cfg.keep]  # stable
        depth = max((self.trace[i].depth for i in children), default=0)
        if cfg.strategy == "bfs":
            self.open = ranked if depth < cfg.max_depth else []
            if depth >= cfg.max_depth:
                self.stop = "max_depth"
                return
        elif depth < cfg.max_depth:
            self.open.extend(reversed(ranked))   # best child on top of the stack
        if self._left() == 0:
            self.stop = "budget"
        elif not self.open:
            self.stop = "exhausted"

    def result(self) -> SearchResult:
        return SearchResult(success=self.success is not None, node=self.success,
                            trace=self.trace, expansions=self.expansions,
                            refine_calls=self.refine_calls, judge_calls=self.judge_calls,
                            depth=max(n.depth for n in self.trace), stop=self.stop or "exhausted",
                            instruction=self.root.instruction)


def search(roots: Sequence[Root], refiner: Policy, judge: Judge,
           cfg: SearchConfig = SearchConfig(), seed: int = 0) -> list[SearchResult]:
    """Refine every root with tree search; trees advance together, one batched call per step."""
    trees = [_Tree(r, cfg) for r in roots]
    step = 0
    while True:
        plans = []
        for t, tree in enumerate(trees):
            if not tree.done:
                plans.extend((t, i, n) for i, n in tree.plan())
        if not plans:
            break
        # Refine: one policy call per distinct number of children.
        replies: dict[int, list[str]] = {}
        for n in sorted({n for _, _, n in plans}):
            group = [k for k, p in enumerate(plans) if p[2] == n]
            convs = []
            for k in group:
                t, i, _ = plans[k]
                node, root = trees[t].trace[i], trees[t].root
                convs.append(refine_messages(root.instruction, node.response, node.judgement))
            sampling = Sampling(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                                max_new_tokens=cfg.max_new_tokens, num_samples=n)
            out = refiner.chat(convs, sampling, seed=derive_seed(seed, "refine", step, n))
            for k, texts in zip(group, out):
                replies[k] = [str(x).strip() for x in texts][:n]
        children: dict[int, list[int]] = {}
        for k, (t, i, _) in enumerate(plans):
            children.setdefault(t, []).extend(trees[t].add_children(i, replies[k]))
        # Judge all non-empty children of all trees at once.
        to_judge = [(t, i) for t, ids in children.items() for i in ids
                    if not trees[t].trace[i].empty]
        items = [(trees[t].root.instruction, trees[t].trace[i].response, trees[t].root.constraints)
                 for t, i in to_judge]
        for (t, i), j in zip(to_judge, judge.judge(items, seed=derive_seed(seed, "judge", step))):
            trees[t].trace[i].judged = j
            trees[t].judge_calls += 1
        for t, ids in children.items():
            trees[t].finish_step(ids)
        step += 1
    return [tree.result() for tree in trees]


def refine_tree(root: Root, refiner: Policy, judge: Judge, cfg: SearchConfig = SearchConfig(),
                seed: int = 0) -> SearchResult:
    """Tree search for one root."""
    return search([root], refiner, judge, cfg, seed)[0]


__all__ = ["STOPS", "STRATEGIES", "Node", "Root", "SearchConfig", "SearchResult", "refine_tree",
           "search"]
