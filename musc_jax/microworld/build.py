"""Rebuild the microworld's shipped assets: SFT corpus, tokenizer, base model, held-out set.

`python -m musc_jax.sft --config configs/microworld_sft.py` runs `build_base_model`: it writes the
imperfect SFT corpus, trains the tokenizer, initialises a small Llama, trains it with the
project's own SFT trainer, and installs the result (HF format) plus the held-out evaluation set
into `musc_jax/microworld/assets/`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import jax

from musc_jax.microworld.assets import EVAL_PER_LEVEL, EVAL_SEED, WORLD_SEED
from musc_jax.microworld.corpus import CorpusConfig, corpus_rows, plain_task_rows
from musc_jax.microworld.tokenizer import save_tokenizer, train_tokenizer
from musc_jax.microworld.world import Instruction, World

log = logging.getLogger(__name__)


def eval_items(world: World, per_level: int = EVAL_PER_LEVEL, seed: int = EVAL_SEED,
               levels=(1, 2, 3, 4, 5)) -> list[Instruction]:
    """The fixed held-out instructions (`per_level` of each level)."""
    return world.instructions(per_level * len(levels), seed=seed, levels=levels)


def write_eval_set(items: list[Instruction], path: Path) -> Path:
    """JSONL rows for musc_jax.eval: prompt, constraints, level (+ the instruction itself)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for inst in items:
            f.write(json.dumps({"prompt": inst.text, "constraints": [c.to_dict() for c in inst.constraints],
                                "level": inst.level, "instruction": inst.to_dict()}) + "\n")
    return path


def write_corpus(world: World, n: int, seed: int, path: Path, exclude: set[str],
                 cfg: CorpusConfig = CorpusConfig(), plain_share: float = 0.03) -> int:
    """The SFT corpus as JSONL; rows whose prompt is a held-out instruction are left out."""
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = 0
    with open(path, "w") as f:
        rows = list(corpus_rows(world, n, seed, cfg)) + list(
            plain_task_rows(world, int(n * plain_share), seed + 1))
        for row in rows:
            if row["prompt"][-1]["content"] in exclude:
                continue
            f.write(json.dumps(row) + "\n")
            kept += 1
    return kept


def build_base_model(config) -> Path:
    """Corpus -> tokenizer -> random init -> SFT -> install. Returns the installed directory."""
    from musc_jax.models import ModelConfig, init_model, save_pretrained
    from musc_jax.trainer import run_sft

    s = config.sft_pipeline
    work = Path(config.workdir)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    world = World(WORLD_SEED)
    held_out = eval_items(world)
    corpus = work / "sft.jsonl"
    if s.reuse_corpus and corpus.exists():
        log.info("reusing the corpus at %s", corpus)
    else:
        n = write_corpus(world, s.num_rows, s.seed, corpus, {i.text for i in held_out},
                         CorpusConfig(p_first=s.p_first, p_last=s.p_last))
        log.info("corpus: %d rows in %.0fs", n, time.time() - t0)

    rows = [json.loads(x) for x in open(corpus)][: s.tokenizer_rows]
    texts = [m["content"] for r in rows for m in r["prompt"]] + [r["response"] for r in rows]
    tokenizer = train_tokenizer(texts, s.vocab_size)
    init_dir = work / "init"
    cfg = ModelConfig(vocab_size=len(tokenizer), hidden_size=s.hidden_size,
                      intermediate_size=s.intermediate_size, num_layers=s.num_layers,
                      num_heads=s.num_heads, num_kv_heads=s.num_kv_heads,
                      head_dim=s.hidden_size // s.num_heads, max_position_embeddings=1024,
                      tie_word_embeddings=True,
                      extra=(("bos_token_id", json.dumps(tokenizer.bos_token_id)),
                             ("eos_token_id", json.dumps(tokenizer.convert_tokens_to_ids("<|end|>"))),
                             ("pad_token_id", json.dumps(tokenizer.pad_token_id))))
    save_pretrained(init_model(cfg, seed=s.seed), init_dir, tokenizer=tokenizer)
    log.info("init model: %.2fM parameters", cfg.num_params() / 1e6)

    with config.unlocked():
        config.model.path = str(init_dir)
        config.data.train = str(corpus)
    run_sft(config)
    exported = work / "export"
    if jax.process_index() == 0 and s.install_dir:
        install = Path(s.install_dir)
        if install.exists():
            shutil.rmtree(install)
        shutil.copytree(exported, install)
        write_eval_set(held_out, install.parent / "eval.jsonl")
        log.info("installed base model in %s (%.0f min in all)", install, (time.time() - t0) / 60)
        return install
    return exported
