"""TPU ahead-of-time compilation (musc_jax.aot) of a tiny Llama step for v5p:2x2x1, on this CPU.

Skipped only when libtpu is absent (`pip install -e .[tpu-aot]`). The compiler's memory must hold
at least what the step's arguments are known to be (parameters, AdamW moments, the batch, cut
by the trainer's sharding rules over 4 chips), and its FLOP count must match a hand count of the
tiny model's matmuls.
"""

from __future__ import annotations

import math

import pytest

from musc_jax import aot

pytestmark = pytest.mark.skipif(not aot.libtpu_available(), reason="libtpu absent: pip install -e .[tpu-aot]")

TOPOLOGY = "v5p:2x2x1"


def _config(reference="precompute", remat=True):
    from musc_jax.config import base_config
    c = base_config()
    c.model.path = c.data.train = "unused"
    c.model.compute_dtype = "bfloat16"
    c.model.remat = remat
    c.data.max_length, c.data.max_prompt_length = 128, 64
    c.train.batch_size = 8
    c.reference.mode = reference
    c.plan.topology = TOPOLOGY
    return c


def _tiny():
    from musc_jax.models.config import ModelConfig
    return ModelConfig.preset("tiny")


def test_train_step_compiles_for_tpu_and_reports_memory():
    c, mc = _config(), _tiny()
    devices = aot.topology_devices(TOPOLOGY)
    assert len(devices) == 4 and "TPU" in devices[0].device_kind
    prog = aot.train_program(c, mc, devices)
    stats = aot.compile_stats(prog.fn.lower(*prog.args))
    n = prog.num_params
    # fp32 params + two fp32 AdamW moments, sharded over 4 chips where the rules cut them;
    # the tiny model's vectors (norms) stay replicated, so per chip >= 12 N / 4 bytes.
    assert stats.argument >= 12 * n / 4
    assert stats.argument <= 12 * n + 8 * 2 * 128 * 4 * 8  # never more than a full copy + batch
    assert stats.alias > 0                     # params and optimizer state are donated
    assert stats.temp > 0 and stats.code > 0
    assert prog.tokens_per_chip == 8 * 2 * 128 // 4
    assert stats.total == stats.argument + stats.output - stats.alias + stats.temp + stats.code


@pytest.mark.slow  # two TPU compiles: about a minute on 2 cores
def test_loop_free_flops_match_a_hand_count():
    """Forward + backward of the policy (remat off, reference precomputed) is about 3x the
    forward's matmul FLOPs; the compiler's count over the loop-free program must agree within
    25% (elementwise work, softmax and the optimizer are not in the hand count)."""
    c, mc = _config(remat=False), _tiny()
    devices = aot.topology_devices(TOPOLOGY)
    real, costs, prog = aot.compile_train(c, mc, devices)
    t = 128
    e, m, h, kv, d, v, layers = (mc.hidden_size, mc.intermediate_size, mc.num_heads,
                                 mc.num_kv_heads, mc.head_dim, mc.vocab_size, mc.num_layers)
    per_token = layers * (2 * e * (h + 2 * kv) * d + 2 * h * d * e + 3 * 2 * e * m
                          + 2 * 2 * h * d * t)   # q/k/v/o, MLP, scores + probs @ v (full T x T)
    per_token += 2 * e * v                        # vocabulary projection
    hand = 3 * per_token * prog.tokens_per_chip
    assert 0.75 <= costs.flops / hand <= 1.25, (costs.flops, hand)
    assert costs.est_seconds > 0
    report = aot.AotReport(topology=TOPOLOGY, chips=4, tokens_per_chip=prog.tokens_per_chip,
                           num_params=prog.num_params, real=real, costs=costs, generate=None,
                           peak=aot.peak_flops(TOPOLOGY))
    line = report.summary_line()
    assert line.startswith(f"aot: topology={TOPOLOGY} tokens_per_chip=512 total_gib=")
    for key in ("compile_s=", "flops_per_token=", "est_us_per_token=", "est_mfu="):
        assert key in line
    assert math.isfinite(report.est_mfu) and report.est_mfu > 0


def test_config_without_topology_is_refused():
    c = _config()
    c.plan.topology = ""
    with pytest.raises(ValueError, match="plan.topology"):
        aot.aot_report(c, _tiny())


@pytest.mark.slow  # three TPU compiles
def test_costs_extended_from_two_and_four_layers_equal_a_direct_compile():
    """The rule compile_train uses above 4 layers: costs are affine in the layer count."""
    import dataclasses
    c, mc = _config(), dataclasses.replace(_tiny(), num_layers=6)
    devices = aot.topology_devices(TOPOLOGY)
    direct = aot.loop_free_costs(c, mc, devices)
    _, extended, _ = aot.compile_train(c, mc, devices, extrapolate_above=4)
    assert extended.flops == pytest.approx(direct.flops, rel=0.01)
    assert extended.est_seconds == pytest.approx(direct.est_seconds, rel=0.05)
