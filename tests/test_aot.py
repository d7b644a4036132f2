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

needs_libtpu = pytest.mark.skipif(not aot.libtpu_available(),
                                  reason="libtpu absent: pip install -e .[tpu-aot]")

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


@needs_libtpu
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


@needs_libtpu
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


@needs_libtpu
def test_memory_only_report_skips_the_cost_compiles():
    """--aot_costs=false: the real program's memory, no loop-free compile, costs said skipped."""
    c = _config()
    report = aot.aot_report(c, _tiny(), generation=False, costs=False)
    assert report.costs is None and report.real.total > 0
    line = report.summary_line()
    assert line.startswith(f"aot: topology={TOPOLOGY} tokens_per_chip=512 total_gib=")
    assert line.endswith("flops_per_token=skipped est_us_per_token=skipped est_mfu=skipped")
    text = aot.format_report(report)
    assert "skipped (--aot_costs=false" in text and "FLOPs" not in text


@needs_libtpu
def test_config_without_topology_is_refused():
    c = _config()
    c.plan.topology = ""
    with pytest.raises(ValueError, match="plan.topology"):
        aot.aot_report(c, _tiny())


@needs_libtpu
@pytest.mark.slow  # three TPU compiles
def test_costs_extended_from_one_and_two_layers_equal_a_direct_compile():
    """The rule compile_train uses above 2 layers: costs are affine in the layer count."""
    import dataclasses
    c, mc = _config(), dataclasses.replace(_tiny(), num_layers=4)
    c.model.attention = "splash"
    devices = aot.topology_devices(TOPOLOGY)
    direct = aot.loop_free_costs(c, mc, devices)
    _, extended, _ = aot.compile_train(c, mc, devices, base_layers=(1, 2))
    assert extended.flops == pytest.approx(direct.flops, rel=0.01)
    assert extended.kernel_flops == pytest.approx(direct.kernel_flops, rel=1e-9)
    assert extended.est_seconds == pytest.approx(direct.est_seconds, rel=0.05)


@needs_libtpu
@pytest.mark.slow  # three TPU compiles
def test_costs_extended_from_two_logits_chunks_equal_a_one_chunk_compile():
    """The rule compile_train uses for long sequences: the costs are affine in the chunk length
    of the vocabulary projection, so 128- and 256-position chunks stand for one of 512."""
    c, mc = _config(), _tiny()
    c.data.max_length, c.data.max_prompt_length = 512, 256
    c.train.batch_size = 4
    devices = aot.topology_devices(TOPOLOGY)
    direct = aot.loop_free_costs(c, mc, devices)
    _, extended, _ = aot.compile_train(c, mc, devices, cost_chunks=(128, 256))
    chunked = aot.loop_free_costs(c, mc, devices, chunk=128)
    assert chunked.flops < 0.95 * direct.flops        # the chunk loop's body is counted once
    assert extended.flops == pytest.approx(direct.flops, rel=0.01)
    assert extended.est_seconds == pytest.approx(direct.est_seconds, rel=0.05)


def test_active_block_fraction_of_causal_and_window_masks():
    # T = 2048 in 512-tiles: a 4 x 4 grid, causal keeps the 10 tiles on or below the diagonal.
    assert aot.active_block_fraction(2048, None) == 10 / 16
    assert aot.active_block_fraction(512, None) == 1.0
    # A 512-token window: each query tile reaches its own tile and the one before it.
    assert aot.active_block_fraction(2048, 512) == 7 / 16


def test_kernel_flops_counts_splash_calls_by_phase():
    """Hand count: one layer's forward, its rematerialised forward, dq and dkv kernels."""
    call = "  %{} = (bf16[4,32,2048,128]{{3,2,1,0}}) custom-call(%a, %b), custom_call_target=\"tpu_custom_call\""
    hlo = "\n".join([call.format("splash_mha_fwd_segmented_residuals.4"),
                     call.format("splash_mha_fwd_segmented_residuals.5"),
                     call.format("splash_mha_dq_segmented_no_residuals.1"),
                     "  ROOT " + call.format("splash_mha_dkv_segmented_no_residuals").strip(),
                     "  %fusion.3 = bf16[4,32,2048,128] fusion(%splash_mha_fwd_segmented_residuals.4)"])
    assert aot.splash_calls(hlo) == {"fwd": 2, "dq": 1, "dkv": 1}
    dims = aot.AttentionDims(rows=4, heads=32, seq=2048, head_dim=128)
    unit = 2 * 4 * 32 * 2048 * 2048 * 128 * 10 / 16
    assert aot.kernel_flops(hlo, dims) == pytest.approx((2 + 2 + 3 + 4) * unit)


@needs_libtpu
@pytest.mark.slow  # two TPU compiles
def test_splash_kernel_flops_match_einsum_attention():
    """The compiler counts the Pallas kernels as nothing; with their FLOPs added, the splash
    step's count is the einsum step's, less the masked half of the T x T work (T = 1024 in
    512-tiles: 3 of 4 tiles computed) and plus the kernels' recomputed QK^T in dq and dkv."""
    c, mc = _config(), _tiny()
    c.data.max_length = 1024
    devices = aot.topology_devices(TOPOLOGY)
    c.model.attention = "einsum"
    ein = aot.loop_free_costs(c, mc, devices)
    c.model.attention = "splash"
    spl = aot.loop_free_costs(c, mc, devices)
    assert ein.kernel_flops == 0 and spl.kernel_flops > 0
    dims = aot.attention_dims(c, mc, len(devices))
    unit = 2 * dims.rows * dims.heads * dims.seq ** 2 * dims.head_dim   # one full T x T x D matmul
    # einsum: forward 2, its rematerialised forward 2, backward 4 units per layer, all tiles
    ein_attention = mc.num_layers * 8 * unit
    spl_attention = mc.num_layers * 11 * unit * 3 / 4
    assert spl.kernel_flops == pytest.approx(spl_attention)
    # The rest (projections, MLP, head, optimizer) is shared; the einsum step also counts its
    # elementwise T x T work (mask, softmax and its gradient: ~1.3 G of 4.3 G here), which the
    # kernels do inside.
    rest_ein, rest_spl = ein.flops - ein_attention, spl.flops
    assert 0.6 * rest_ein < rest_spl < rest_ein, (rest_spl, rest_ein)


def test_planner_accelerator_profile_against_the_committed_tpu_compile():
    """The planner's accelerator profile, calibrated on the TPU compiler: for Llama-3-8B MuSC on
    v5p-64 (configs/llama3_8b_musc.py:v5p64) its per-chip total must stay an upper bound within
    15% of the compiler's buffer assignment (arguments + temporaries of the real train step),
    committed in docs/results/aot/ (no libtpu needed: the figure is read)."""
    import pathlib
    import re

    from musc_jax import memory_plan
    from musc_jax.config import load_config_file
    root = pathlib.Path(__file__).resolve().parents[1]
    report = (root / "docs/results/aot/llama3_8b_musc_v5p64_main_memory_report.txt").read_text()
    compiler = int(re.search(r"^Total bytes: (\d+)", report, re.M).group(1))
    assert 9.0 < compiler / memory_plan.GiB < 9.3   # the committed figure: 9.13 GiB
    plan = memory_plan.plan_config(load_config_file(str(root / "configs/llama3_8b_musc.py:v5p64")))
    assert 0.85 * plan.total() <= compiler <= plan.total(), (compiler, plan.total())
