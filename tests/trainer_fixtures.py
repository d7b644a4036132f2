"""A tiny model directory with a chat tokenizer, and pairs / SFT files, for trainer tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

from hf_models import make_hf_model
from toy_tokenizer import make_toy_tokenizer

WORDS = ("alpha beta gamma delta river stone cloud light green quiet north bright apple "
         "tiger seven write list facts about note topic short long word").split()


def model_dir(path: Path, family: str = "llama", **overrides) -> Path:
    """Random tiny HF model (vocab 256) + the toy chat tokenizer, saved together."""
    tok = make_toy_tokenizer()
    make_hf_model(family, path, vocab_size=len(tok), **overrides)
    tok.save_pretrained(path)
    return path


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def pairs_file(path: Path, n: int = 16, seed: int = 0, alt: bool = False) -> Path:
    """JSONL pairs: chat prompt, chosen, rejected (and rejected_prompt with `alt`)."""
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            task = _sentence(rng, rng.randint(3, 8))
            row = {"prompt": [{"role": "user", "content": task + " in lowercase"}],
                   "chosen": _sentence(rng, rng.randint(2, 10)),
                   "rejected": _sentence(rng, rng.randint(2, 10)).upper()}
            if alt:
                row["rejected_prompt"] = [{"role": "user", "content": task}]
            f.write(json.dumps(row) + "\n")
    return path


def sft_file(path: Path, n: int = 16, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": [{"role": "user", "content": _sentence(rng, 5)}],
                                "response": _sentence(rng, rng.randint(2, 10))}) + "\n")
    return path
