"""Reference log-probs stored in a pairs dataset are used only when the trainer's reference
model wrote them (meta.model_hash); otherwise they are recomputed (issue 13)."""

import json

import numpy as np
import pytest

from musc_jax.config import base_config
from musc_jax.data.builders.run import model_fingerprint
from musc_jax.trainer import Trainer
from trainer_fixtures import model_dir, pairs_file


def _config(model, data, workdir, mode):
    c = base_config()
    c.model.path, c.data.train, c.workdir = str(model), str(data), str(workdir)
    c.data.max_length, c.data.max_prompt_length = 128, 64
    c.train.batch_size, c.train.max_steps, c.train.shuffle = 4, 2, False
    c.optim.lr, c.loss.a_tok, c.checkpoint.every = 1e-3, 0.0, 0
    c.reference.mode = mode
    return c


def _train(c) -> float:
    t = Trainer(c)
    m = t.train()
    t.close()
    return float(m["loss"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ref_hash")
    model, plain = model_dir(root / "model"), pairs_file(root / "pairs.jsonl", 8)
    # The true reference values, from a precompute run's cache (rows in file order).
    _train(_config(model, plain, root / "pre", "precompute"))
    cache = np.load(next((root / "pre" / "ref_cache").glob("*.npz")))
    rows = [json.loads(x) for x in plain.read_text().splitlines()]
    return root, model, rows, cache


def _with_stored(root, rows, cache, model_hash, scale, name):
    """The pairs with stored reference log-probs (true values x scale) and a model hash."""
    path = root / name
    with open(path, "w") as f:
        for i, r in enumerate(rows):
            r = dict(r, meta={"model_hash": model_hash})
            for j, side in enumerate(("chosen", "rejected")):
                a, b = cache["offsets"][j][i], cache["offsets"][j][i + 1]
                r[f"ref_{side}_token_logps"] = (cache[side][a:b] * scale).tolist()
            f.write(json.dumps(r) + "\n")
    return path


@pytest.mark.slow   # four tiny Trainer runs (about a minute of CPU)
def test_stored_reference_logps_need_the_same_model(setup):
    root, model, rows, cache = setup
    online = _train(_config(model, root / "pairs.jsonl", root / "online", "online"))
    mine = model_fingerprint(model)
    # Stored values scaled by 0.5 are wrong on purpose: a run that uses them trains differently.
    same = _with_stored(root, rows, cache, mine, 0.5, "same.jsonl")
    other = _with_stored(root, rows, cache, "0123456789abcdef", 0.5, "other.jsonl")
    used = _train(_config(model, same, root / "same", "precompute"))
    recomputed = _train(_config(model, other, root / "other", "precompute"))
    assert abs(used - online) > 1e-3            # same model hash: the stored values are used
    assert abs(recomputed - online) < 1e-5      # another model's values: recomputed
