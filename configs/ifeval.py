"""IFEval on any HF chat model (a directory with config.json, safetensors and a chat template):

    python -m musc_jax.eval --config configs/ifeval.py --config.model.path=DIR \
        [--config.eval.out=FILE] [--config.eval.data=OTHER.jsonl]

Each prompt of `eval.data` (IFEval's JSONL; default ../shared/data/ifeval_dev.jsonl, 120 prompts)
is put through the model's chat template as one user turn (the template's default system prompt,
if it has one, is kept: that is how the model is meant to be used) and answered greedily; the
answer stops at the template's end-of-turn token or after `eval.max_new_tokens`. The run prints
and writes (eval.out, with every response and verdict) prompt-level and instruction-level
accuracy, strict and loose (IFEval's definitions; musc_jax/ifeval_scores.py), also per
instruction type. Model cards publish the mean of the two strict figures as "IFEval".

Token budget: 512 new tokens, chosen for CPU time. Greedy answers of SmolLM2-class models are
mostly under 300 tokens; 512 tokens (about 380 words) covers every dev prompt's length demand
except the few that ask for 800-1200 words or 30-40 sentences, which a cut answer fails (the
reference harness allows 1280). A batch decodes until its longest answer ends, so the budget
bounds the cost of the answers that ramble on; on a 2-core CPU 120 answers take minutes at 512
and about twice that at 1024. With more compute, --config.eval.max_new_tokens=1280 matches the
harness (scripts/smollm2_ifeval.py reports how many answers reached the budget).
"""

from pathlib import Path

from ml_collections import ConfigDict

from musc_jax.eval import eval_config

REPO = Path(__file__).resolve().parents[1]
IFEVAL_DEV = REPO.parent / "shared" / "data" / "ifeval_dev.jsonl"


def get_config() -> ConfigDict:
    c = ConfigDict()
    c.seed = 0
    c.model = ConfigDict(dict(
        path="",                 # HF directory of the model (required)
        tokenizer="",            # "" = the model's own directory
        param_dtype="float32",
    ))
    c.eval = eval_config()
    c.eval.data = str(IFEVAL_DEV)
    c.eval.out = "runs/ifeval/eval.json"
    c.eval.max_new_tokens = 512
    c.eval.batch_size = 40
    c.eval.temperature = 0.0     # greedy, as IFEval is reported
    return c
