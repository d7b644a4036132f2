"""python -m musc_jax.plan --config configs/<x>.py [--config.a.b=value ...] [--device_memory_gib=80]

Prints the per-device memory a training config needs on its mesh (parameters, AdamW state,
online-reference copy, gradients, activations with and without remat) and whether it fits a
device of `--device_memory_gib` (default: the config's `plan.device_memory_gib`, if it has one).
Nothing is allocated and no accelerator is needed: the model is built abstractly. The model shape
comes from `--model_preset` if given, else `<model.path>/config.json` when it exists, else the
config's `model.preset` (a ModelConfig preset name such as llama3_8b; the real-model configs set
it). See musc_jax/memory_plan.py for the model behind the numbers.

With `--config.plan.aot=tpu` (libtpu installed: `pip install -e .[tpu-aot]`, CPU machines too) it
then compiles the config's real train step and generation loop for the config's TPU topology
(`plan.topology`) and prints the TPU compiler's per-chip memory, its FLOPs and estimated step
time, the MFU they imply, and the planner's figures beside them; the last line is
`aot: topology=.. tokens_per_chip=.. total_gib=.. compile_s=.. flops_per_token=..
est_us_per_token=.. est_mfu=..`. See musc_jax/aot.py.

Examples:
    python -m musc_jax.plan --config configs/llama3_8b_musc.py            # TPU v5p-64 preset
    python -m musc_jax.plan --config configs/llama3_8b_musc.py:v5p64 --config.plan.aot=tpu
    python -m musc_jax.plan --config configs/qwen2_7b_spar.py:h100x8 --config.model.remat=false
    python -m musc_jax.plan --config configs/dpo.py --model_preset=llama3_8b \\
        --config.model.compute_dtype=bfloat16 --config.model.remat=true \\
        --config.train.batch_size=64 --num_devices=16 --device_memory_gib=80
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from musc_jax.cli import define_config_flag, run_app

_CONFIG = define_config_flag()
_MEMORY = flags.DEFINE_float("device_memory_gib", None,
                             "Memory of one device in GiB (default: the config's plan.device_memory_gib).")
_HEADROOM = flags.DEFINE_float("headroom", 0.1, "Fraction of device memory kept free for the runtime, "
                               "compiled code and fragmentation.")
_DEVICES = flags.DEFINE_integer("num_devices", None, "Device count, to resolve a -1 mesh size.")
_PROFILE = flags.DEFINE_enum("profile", "accelerator", ["accelerator", "xla_cpu"],
                             "Activation multiplicities: a fusing TPU/GPU compiler, or XLA:CPU.")
_PRESET = flags.DEFINE_string("model_preset", None, "A ModelConfig preset (e.g. llama3_8b) for the model's "
                              "shape, instead of <model.path>/config.json or the config's model.preset.")
_JSON = flags.DEFINE_bool("json", False, "Also print the plan as one JSON line.")
_GENERATE = flags.DEFINE_bool("aot_generate", True, "With plan.aot=tpu, also compile the "
                              "generation loop (prefill + decode) and print its memory.")
_COSTS = flags.DEFINE_bool("aot_costs", True, "With plan.aot=tpu, also run the loop-free cost "
                           "compiles (FLOPs, estimated time, MFU; the slow, memory-hungry part); "
                           "false: the real program's memory only.")


def _main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError("--config is required, e.g. --config configs/llama3_8b_musc.py")
    from musc_jax import memory_plan
    memory = _MEMORY.value
    if memory is None and "plan" in config and config.plan.get("device_memory_gib"):
        memory = float(config.plan.device_memory_gib)
    aot = str(config.plan.get("aot", "") or "") if "plan" in config else ""
    if aot not in ("", "tpu"):
        print(f"musc_jax.plan: plan.aot={aot!r}: choose 'tpu' (or leave it empty)", file=sys.stderr)
        sys.exit(2)
    try:
        p = memory_plan.plan_config(config, num_devices=_DEVICES.value,
                                    profile=memory_plan.PROFILES[_PROFILE.value],
                                    model_preset=_PRESET.value)
    except ValueError as e:  # an incomplete or inconsistent config: say what to set
        print(f"musc_jax.plan: {e}", file=sys.stderr)
        sys.exit(2)
    print(memory_plan.format_plan(p, memory, _HEADROOM.value))
    if _JSON.value:
        print(json.dumps(memory_plan.plan_summary(p, memory, _HEADROOM.value)))
    if aot == "tpu":
        from musc_jax import aot as aot_lib
        print(flush=True)
        try:
            # The train step's report first (the generation loop compiles for a while longer).
            report = aot_lib.aot_report(config, p.model_cfg, generation=_GENERATE.value,
                                        costs=_COSTS.value,
                                        on_train=lambda r: print(aot_lib.format_report(r, p),
                                                                 flush=True))
        except ValueError as e:
            print(f"musc_jax.plan: {e}", file=sys.stderr)
            sys.exit(2)
        if report.generate is not None:  # and the summary line again: the output's last line
            print(aot_lib.format_generation(report))
            print(report.summary_line())


if __name__ == "__main__":
    run_app(_main)
