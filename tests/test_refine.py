"""Tree search over refinements: branching, pruning, gate, depth, budget, bfs vs dfs, trace."""

import re

import pytest

from musc_jax.data.constraints import make
from musc_jax.data.judge import Judgement, SelfJudge, VerifierJudge
from musc_jax.data.policy import ScriptedPolicy
from musc_jax.data.refine import Root, SearchConfig, refine_tree, search
from musc_jax.data.roles import refine_messages


def field(conv, name):
    return re.search(rf"^{name}: (.*)$", conv[-1]["content"], re.M).group(1)


class Counting(ScriptedPolicy):
    """ScriptedPolicy that also counts chat() calls (batching checks)."""

    def __init__(self, reply):
        super().__init__(reply)
        self.chats = 0

    def chat(self, conversations, sampling, seed=0):
        self.chats += 1
        return super().chat(conversations, sampling, seed)


def refiner():
    """Refining R with sample k gives "R.k"."""
    return Counting(lambda conv, k, seed: f"{field(conv, 'Response')}.{k}")


def last_digit_value(resp):
    """Yes-votes out of 5 by the last suffix: .0 -> 1 (V .2), .1 -> 2 (V .4), .2 -> 0."""
    return {"0": 1, "1": 2, "2": 0}[resp[-1]]


def judge_policy(yes_votes):
    """A self-judge policy: `yes_votes(response)` of the 5 samples say yes, naming the response."""
    def reply(conv, k, seed):
        r = field(conv, "Response")
        return "yes" if k < yes_votes(r) else f"no it misses: fix {r}"
    return Counting(reply)


def root(resp="r", instruction="Write it."):
    return Root(instruction, resp, Judgement.from_votes(["no it misses: all"] * 5))


def test_gate_stops_at_first_passing_child():
    yes = lambda r: 5 if r in ("r.1", "r.2") else 0   # noqa: E731
    res = refine_tree(root(), refiner(), SelfJudge(judge_policy(yes)), SearchConfig())
    assert res.success and res.stop == "gate" and res.response == "r.1" and res.value == 1.0
    assert [n.response for n in res.trace] == ["r", "r.0", "r.1", "r.2"]   # branch = 3
    assert (res.expansions, res.refine_calls, res.judge_calls, res.depth) == (1, 3, 3, 1)
    assert [n.response for n in res.path()] == ["r", "r.1"]


def test_gate_is_strict():
    # votes = 4: 2 yes of 4 is V = 0.5, not > 0.5; 3 of 4 passes.
    yes = lambda r: {"r.0": 2, "r.1": 2, "r.2": 2}.get(r, 3 if r.endswith("1") else 0)  # noqa: E731
    res = refine_tree(root(), refiner(), SelfJudge(judge_policy(yes), votes=4), SearchConfig())
    assert res.success and res.response == "r.0.1" and res.value == 0.75
    assert [n.response for n in res.path()] == ["r", "r.0", "r.0.1"]


def test_bfs_prunes_to_keep_per_level_and_stops_at_max_depth():
    ref, jp = refiner(), judge_policy(last_digit_value)
    res = refine_tree(root(), ref, SelfJudge(jp), SearchConfig(branch=3, keep=2, max_depth=3))
    assert not res.success and res.stop == "max_depth" and res.response is None
    assert (res.expansions, res.refine_calls, res.judge_calls, res.depth) == (5, 15, 15, 3)
    assert len(res.trace) == 16
    # Expanded: the root, the best 2 of level 1, the best 2 of level 2 (V ties: generation order).
    expanded = sorted((n for n in res.trace if n.order is not None), key=lambda n: n.order)
    assert [n.response for n in expanded] == ["r", "r.1", "r.0", "r.1.1", "r.0.1"]
    assert [len([n for n in res.trace if n.depth == d]) for d in range(4)] == [1, 3, 6, 6]
    # Every child is judged with 5 votes; values are shares of "yes".
    assert {n.response: n.value for n in res.trace if n.depth == 1} == {
        "r.0": 0.2, "r.1": 0.4, "r.2": 0.0}
    # Refine prompts: the judge dialogue of the parent (its response and majority judgement).
    refine_prompts = [c for c, _ in ref.calls]
    assert refine_prompts[0] == refine_messages("Write it.", "r", "no it misses: all")
    assert refine_prompts[1] == refine_messages("Write it.", "r.1", "no it misses: fix r.1")
    assert all(s.num_samples == 3 and s.temperature == 0.7 for _, s in ref.calls)


def test_depth_limit():
    res = refine_tree(root(), refiner(), SelfJudge(judge_policy(last_digit_value)),
                      SearchConfig(max_depth=2))
    assert res.depth == 2 and res.refine_calls == 9 and res.stop == "max_depth"
    assert max(n.depth for n in res.trace) == 2


@pytest.mark.parametrize("strategy", ["bfs", "dfs"])
def test_budget_is_a_hard_cap_on_refinements(strategy):
    ref = refiner()
    res = refine_tree(root(), ref, SelfJudge(judge_policy(last_digit_value)),
                      SearchConfig(budget=5, strategy=strategy))
    assert res.refine_calls == 5 and len(res.trace) == 6 and res.stop == "budget"
    assert sum(s.num_samples for _, s in ref.calls) == 5      # never sampled more
    assert [len([n for n in res.trace if n.parent == 0])] == [3]
    # The second expansion got only the 2 refinements left: of the best child (r.1).
    assert [n.response for n in res.trace[4:]] == ["r.1.0", "r.1.1"]


def test_dfs_expands_best_child_first_and_backtracks():
    res = refine_tree(root(), refiner(), SelfJudge(judge_policy(last_digit_value)),
                      SearchConfig(strategy="dfs"))
    expanded = sorted((n for n in res.trace if n.order is not None), key=lambda n: n.order)
    assert [n.response for n in expanded] == ["r", "r.1", "r.1.1", "r.1.0", "r.0", "r.0.1",
                                              "r.0.0"]
    assert not res.success and res.stop == "exhausted"
    assert (res.expansions, res.refine_calls, res.depth) == (7, 21, 3)


def test_bfs_and_dfs_find_different_nodes_in_different_order():
    yes = lambda r: 5 if r == "r.0.1" or r == "r.1.1.2" else last_digit_value(r)  # noqa: E731
    bfs = refine_tree(root(), refiner(), SelfJudge(judge_policy(yes)), SearchConfig())
    dfs = refine_tree(root(), refiner(), SelfJudge(judge_policy(yes)),
                      SearchConfig(strategy="dfs"))
    assert bfs.response == "r.0.1" and (bfs.expansions, bfs.refine_calls) == (3, 9)
    assert dfs.response == "r.1.1.2" and (dfs.expansions, dfs.refine_calls) == (3, 9)
    assert [n.response for n in bfs.path()] == ["r", "r.0", "r.0.1"]
    assert [n.response for n in dfs.path()] == ["r", "r.1", "r.1.1", "r.1.1.2"]


def test_trace_parent_links():
    res = refine_tree(root(), refiner(), SelfJudge(judge_policy(last_digit_value)), SearchConfig())
    assert res.trace[0].parent is None and res.trace[0].depth == 0 and res.root.response == "r"
    for n in res.trace[1:]:
        p = res.trace[n.parent]
        assert n.parent < n.id and n.depth == p.depth + 1 and n.response.startswith(p.response + ".")
        assert p.order is not None          # only expanded nodes have children
    d = res.to_dict()
    assert len(d["trace"]) == 16 and d["trace"][1]["parent"] == 0 and d["trace"][1]["votes"]


def test_many_trees_share_one_call_per_step():
    ref = refiner()
    jp = judge_policy(lambda r: 5 if r == "b.2" else last_digit_value(r))
    res = search([root("a"), root("b"), root("c")], ref, SelfJudge(jp), SearchConfig())
    assert [r.success for r in res] == [False, True, False]
    assert res[1].response == "b.2" and res[1].refine_calls == 3
    assert ref.chats == 3 and jp.chats == 3      # one refine and one judge call per level
    assert [r.refine_calls for r in res] == [15, 3, 15]
    assert len(ref.calls) == 3 + 4 + 4           # level 1: 3 roots; levels 2-3: 2 trees x 2 nodes


def test_empty_refinements_are_not_judged_or_expanded():
    ref = Counting(lambda conv, k, seed: "" if k == 0 else f"{field(conv, 'Response')}.{k}")
    jp = judge_policy(lambda r: 0)
    res = refine_tree(root(), ref, SelfJudge(jp), SearchConfig(max_depth=2))
    empties = [n for n in res.trace if n.empty]
    assert len(empties) == 1 + 2 and all(n.judged is None and n.order is None for n in empties)
    assert res.refine_calls == 9 and res.judge_calls == 6


def test_verifier_judge_tree():
    lower = make("change_case:english_lowercase")
    ref = ScriptedPolicy(lambda conv, k, seed: field(conv, "Response").lower() if k == 1
                         else field(conv, "Response") + " AGAIN")
    r = Root("Write in lowercase.", "The River", VerifierJudge().judge(
        [("Write in lowercase.", "The River", [lower])])[0], [lower])
    assert r.judgement.verdict is False
    res = refine_tree(r, ref, VerifierJudge(), SearchConfig())
    assert res.success and res.response == "the river" and res.value == 1.0
    assert "lowercase" in ref.calls[0][0][0]["content"].split("Judgement: ")[1]


def test_config_validation_and_text_root():
    with pytest.raises(ValueError, match="strategy"):
        SearchConfig(strategy="astar")
    with pytest.raises(ValueError, match="branch"):
        SearchConfig(branch=0)
    r = Root("Do.", "x", "no it misses: y")
    assert r.judged().verdict is False and r.judged().text == "no it misses: y"
    res = refine_tree(r, refiner(), VerifierJudge(), SearchConfig(budget=0, max_depth=1))
    assert res.refine_calls == 3 and not res.success     # verifier: nothing verifiable
