"""SmolLM2-135M-Instruct imported from its GGUF (musc_jax.convert) vs transformers, real weights.

The model directory is made by scripts/get_smollm2.sh (run by scripts/setup.sh, so CI has it).
The GGUF error paths use small files written here and need no weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from musc_jax import convert
from musc_jax.convert import GGUFError, inspect_gguf
from test_models import _hf_logits   # transformers' logits with explicit positions

REPO = Path(__file__).resolve().parents[1]
SMOL_DIR = REPO / ".models" / "smollm2-135m-instruct"
SMOL_GGUF = REPO / ".models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MISSING = "SmolLM2 not converted: run `bash scripts/get_smollm2.sh` (scripts/setup.sh does)"

# float32 on both sides, 30 layers, logits up to |38|: summation order alone moves them by
# ~1e-4. Measured max |diff| 1.1e-4 with right and with left padding (3 chat prompts).
LOGITS_ATOL = 2e-4
# per-token log-probs (a logsumexp over 49152 such logits); below 1e-4 (test passes at 1e-4)
LOGP_ATOL = 1e-4
GEN_TOKENS = 64

CHATS = [
    [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
    [{"role": "user", "content": "Write a haiku about autumn leaves."}],
    [{"role": "system", "content": "You answer in lowercase letters only."},
     {"role": "user", "content": "List three uses of a paperclip, as bullet points."}],
]

needs_model = pytest.mark.skipif(not (SMOL_DIR / "model.safetensors").is_file(), reason=MISSING)


# ----------------------------------------------------------------------------- real weights

@pytest.fixture(scope="module")
def smol():
    """(transformers model, musc_jax model, tokenizer) of the converted directory."""
    from transformers import AutoModelForCausalLM

    from musc_jax.models import from_pretrained, load_tokenizer
    hf = AutoModelForCausalLM.from_pretrained(SMOL_DIR, dtype=torch.float32).eval()
    model = from_pretrained(SMOL_DIR)
    return hf, model, load_tokenizer(SMOL_DIR, model.config.vocab_size)


def _prompt_ids(tok, chat):
    from musc_jax.generate import chat_prompt_ids
    return chat_prompt_ids(tok, chat)


def _pad(seqs, side):
    t = max(len(s) for s in seqs)
    ids = np.full((len(seqs), t), 2, np.int64)
    mask = np.zeros((len(seqs), t), np.int64)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(t - len(s), t)
        ids[i, sl], mask[i, sl] = s, 1
    return ids, mask


@needs_model
def test_converted_directory(smol):
    hf, model, tok = smol
    cfg = json.loads((SMOL_DIR / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["model_type"] == "llama"
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["vocab_size"], cfg["tie_word_embeddings"]) == (
        30, 576, 9, 3, 49152, True)
    assert not list(SMOL_DIR.glob("*.bin")) and (SMOL_DIR / "model.safetensors").is_file()
    assert model.config.num_layers == 30 and model.config.tie_word_embeddings
    # ChatML from the GGUF, with SmolLM2's default system prompt when none is given
    text = tok.apply_chat_template(CHATS[0], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert text.endswith("<|im_end|>\n<|im_start|>assistant\n")
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_end|>") == 2
    ids = _prompt_ids(tok, CHATS[0])
    assert ids[0] == 1 and ids.count(1) == 3            # <|im_start|> opens each of the 3 turns
    assert tok.decode(ids) == text


@needs_model
@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_match_transformers(smol, side):
    import jax.numpy as jnp
    hf, model, tok = smol
    ids, mask = _pad([_prompt_ids(tok, c) for c in CHATS], side)
    ref = _hf_logits(hf, ids, mask)
    ours = np.asarray(model(jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)))
    real = mask.astype(bool)
    assert np.abs(ref[real]).max() > 10        # real logits, not a degenerate model
    np.testing.assert_allclose(ours[real], ref[real], atol=LOGITS_ATOL, rtol=0)
    assert (ours[real].argmax(-1) == ref[real].argmax(-1)).all()


@needs_model
def test_greedy_generation_matches_transformers(smol):
    """64 greedy tokens of a batched, left-padded musc_jax.generate == transformers, per prompt."""
    from musc_jax.generate import generate
    hf, model, tok = smol
    prompts = [_prompt_ids(tok, c) for c in CHATS]
    out = generate(model, prompts, GEN_TOKENS, temperature=0.0, eos_token_id=tok.eos_token_id,
                   pad_token_id=tok.pad_token_id)
    for i, p in enumerate(prompts):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              max_new_tokens=GEN_TOKENS, do_sample=False,
                              eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        ref = ref[0, len(p):].tolist()
        ours = out.tokens[i, :out.lengths[i]].tolist()
        assert ours == ref, f"prompt {i}: {tok.decode(ours)!r} != {tok.decode(ref)!r}"
        assert len(ours) > 5 and tok.decode(ours).strip()
    assert "Paris" in tok.decode(out.tokens[0, :out.lengths[0]].tolist())


@needs_model
def test_response_logps_match_transformers(smol):
    """Teacher-forced log-probs of chat responses (musc_jax.scoring.score) vs float64 reference."""
    from musc_jax.scoring import score
    hf, model, tok = smol
    answers = ["The capital of France is Paris.", "Crimson leaves drift down\nquiet paths",
               "- hold papers\n- reset a phone\n- a tiny hook"]
    seqs, resp_masks = [], []
    for chat, ans in zip(CHATS, answers):
        p = _prompt_ids(tok, chat)
        full = tok.apply_chat_template(chat + [{"role": "assistant", "content": ans}],
                                       tokenize=False)
        ids = tok(full, add_special_tokens=False)["input_ids"]
        assert ids[:len(p)] == p
        seqs.append(ids)
        resp_masks.append([0] * len(p) + [1] * (len(ids) - len(p)))
    ids, mask = _pad(seqs, "right")
    resp = np.zeros_like(mask)
    for i, r in enumerate(resp_masks):
        resp[i, :len(r)] = r
    logits = _hf_logits(hf, ids, mask).astype(np.float64)
    lp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
    ref = np.zeros(ids.shape)
    ref[:, 1:] = np.take_along_axis(lp[:, :-1], ids[:, 1:, None], -1)[..., 0]
    ref *= resp
    ours = np.asarray(score(model, ids, mask, resp))
    np.testing.assert_allclose(ours, ref, atol=LOGP_ATOL, rtol=0)
    assert (ours[resp == 1] < 0).all() and (ours[resp == 0] == 0).all()


@pytest.mark.skipif(not SMOL_GGUF.is_file(), reason=MISSING)
def test_inspect_real_gguf():
    info = inspect_gguf(SMOL_GGUF)
    assert info["architecture"] == "llama" and info["model_type"] == "llama"
    assert dict(info["tensor_types"]) == {"Q4_1": 210, "Q8_0": 1, "F32": 61}


# ----------------------------------------------------------------------------- GGUF errors

def _write_gguf(path: Path, arch: str, tensor: np.ndarray) -> Path:
    import gguf
    w = gguf.GGUFWriter(str(path), arch)
    w.add_tensor("token_embd.weight", tensor)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_missing_file_is_named(tmp_path):
    with pytest.raises(GGUFError, match="no such file"):
        inspect_gguf(tmp_path / "nope.gguf")


def test_non_gguf_file_is_refused(tmp_path):
    p = tmp_path / "model.gguf"
    p.write_bytes(b"PK\x03\x04 a zip, not a gguf")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        inspect_gguf(p)


def test_unsupported_architecture_is_named(tmp_path):
    p = _write_gguf(tmp_path / "m.gguf", "gpt2", np.zeros((4, 8), np.float32))
    with pytest.raises(GGUFError, match=r"architecture 'gpt2' is not supported; supported: llama"):
        inspect_gguf(p)


def test_unsupported_tensor_type_is_named(tmp_path):
    p = _write_gguf(tmp_path / "m.gguf", "llama", np.zeros((4, 8), np.int32))
    with pytest.raises(GGUFError, match=r"tensor 'token_embd.weight' has quantization type I32"):
        inspect_gguf(p)


def test_supported_header_passes_and_cli_refuses_nonempty_out(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MUSC_DEBUG", raising=False)
    p = _write_gguf(tmp_path / "m.gguf", "llama", np.zeros((4, 8), np.float16))
    assert dict(inspect_gguf(p)["tensor_types"]) == {"F16": 1}
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(SystemExit) as e:
        convert.main(["--gguf", str(p), "--out", str(out)])
    assert e.value.code == 1 and "already exists and is not empty" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "x"
    with pytest.raises(SystemExit) as e:
        convert.main(["--gguf", str(tmp_path / "none.gguf"), "--out", str(out)])
    assert e.value.code == 1 and "no such file" in capsys.readouterr().err
