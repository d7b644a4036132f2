"""Rebuild the microworld base model (shipped in musc_jax/microworld/assets/base_model).

    python -m musc_jax.sft --config configs/microworld_sft.py

Writes the imperfect SFT corpus (all roles), trains a byte-level BPE tokenizer, initialises a
~2M-parameter Llama and trains it with the SFT objective (about 30 minutes on 2 CPU cores), then
installs it with the held-out evaluation set. `--config.sft_pipeline.install_dir=''` keeps the
result in the work dir only.
"""

from pathlib import Path

from ml_collections import ConfigDict

from musc_jax.config import base_config

ASSETS = Path(__file__).resolve().parents[1] / "musc_jax" / "microworld" / "assets"


def get_config():
    c = base_config()
    c.workdir = "runs/microworld_sft"
    c.objective = "sft"
    c.model.path = "<set by the pipeline>"
    c.data.train = "<set by the pipeline>"
    c.data.max_length = 384
    c.data.max_prompt_length = 320
    c.data.truncation = "skip"
    c.data.sort_window = 16
    c.train.batch_size = 32
    c.train.epochs = 1
    c.train.max_steps = 700   # about 22k of the rows, ~25 min on 2 free cores
    c.optim.lr = 2e-3
    c.optim.warmup_steps = 50
    c.optim.schedule = "cosine"
    c.optim.final_lr_ratio = 0.05
    c.optim.weight_decay = 0.01
    c.optim.b2 = 0.98
    c.checkpoint.every = 200
    c.reference.mode = "none"
    c.sft_pipeline = ConfigDict(dict(
        seed=0,
        num_rows=36000,
        p_first=0.8,          # follow probability at level 1 ...
        p_last=0.45,          # ... falling to this at level 5
        vocab_size=1024,
        tokenizer_rows=6000,
        hidden_size=192,
        intermediate_size=512,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        install_dir=str(ASSETS / "base_model"),
        reuse_corpus=False,   # keep an existing <workdir>/sft.jsonl (same settings) instead of rewriting it
    ))
    return c
