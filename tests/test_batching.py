"""Chat-template tokenisation, truncation policies, batch layout, buckets and the resumable loader."""

from __future__ import annotations

import json

import numpy as np
import pytest
from toy_tokenizer import ASSISTANT, BOS, END, make_toy_tokenizer
from transformers import AutoTokenizer

from musc_jax.data.batching import (BatchingConfig, BatchingError, ChatEncoder, PairLoader, logits_window,
                                    TemplateBoundaryError, TooLongError, bucket_length, bucket_lengths,
                                    collate_pairs,
                                    collate_sft, end_of_turn_token_id, tokenize_pair, tokenize_pairs,
                                    tokenize_sft)
from musc_jax.data.pairs_io import read_pairs


@pytest.fixture(scope="module")
def tok():
    return make_toy_tokenizer()


def _row(i=0, **kw):
    row = {"prompt": [{"role": "user", "content": f"Write a note about the river {i} in 2 sentences."}],
           "chosen": f"The river {i} is deep. It is old!",
           "rejected": "Rivers are" + " long" * (i % 5),
           "rejected_prompt": [{"role": "user", "content": f"Write a note about the river {i}."}]}
    return {**row, **kw}


def _count(ids, token_id):
    return int(np.sum(np.asarray(ids) == token_id))


# ----------------------------------------------------------------------------------------------
# Toy tokenizer


def test_toy_tokenizer_saved_and_reloaded(tmp_path, tok):
    assert len(tok) <= 256
    make_toy_tokenizer(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(str(tmp_path / "tok"))
    msgs = [{"role": "user", "content": "Hello there, list 3 facts."},
            {"role": "assistant", "content": "OK."}]
    assert (loaded.apply_chat_template(msgs, return_dict=False)
            == tok.apply_chat_template(msgs, return_dict=False))
    text = "Hello,  World!\n\n  {json} <<Title>> 42"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    # The trap that "exactly one BOS" guards against: plain encoding of a rendered chat doubles BOS.
    rendered = tok.apply_chat_template(msgs, tokenize=False)
    assert rendered.startswith(BOS) and tok(rendered)["input_ids"][:2] == [tok.bos_token_id] * 2


# ----------------------------------------------------------------------------------------------
# Token-space boundary, BOS, end of turn


def test_boundary_in_token_space(tok):
    enc = ChatEncoder(tok, BatchingConfig())
    row = _row(3)
    x = enc.prompt_ids(row["prompt"])
    y = enc.response_ids(row["prompt"], x, row["chosen"])
    assert tok.decode(y) == row["chosen"] + END
    assert tok.decode(x).endswith(ASSISTANT + "\n")
    full = tok.apply_chat_template(row["prompt"] + [{"role": "assistant", "content": row["chosen"]}],
                                   return_dict=False)
    # The template writes "\n" after <|end|>; the response stops at the end-of-turn token.
    assert list(x) + list(y) == full[:-1] and tok.decode(full[-1:]) == "\n"
    assert enc.end_id == end_of_turn_token_id(tok) == tok.convert_tokens_to_ids(END)


@pytest.mark.parametrize("template_bos", [True, False])
def test_exactly_one_bos(template_bos):
    tok = make_toy_tokenizer(template_bos=template_bos)
    ex = tokenize_pair(_row(), ChatEncoder(tok, BatchingConfig(alt_sequences=True)))
    for p, r in ex.sequences().values():
        ids = np.concatenate([p, r])
        assert ids[0] == tok.bos_token_id and _count(ids, tok.bos_token_id) == 1
    no_bos = ChatEncoder(make_toy_tokenizer(template_bos=False), BatchingConfig(add_bos=False))
    assert _count(no_bos.prompt_ids(_row()["prompt"]), tok.bos_token_id) == 0


def test_duplicate_bos_stripped(tok):
    # A template that writes BOS twice still gives one.
    tok2 = make_toy_tokenizer()
    tok2.chat_template = "{{ bos_token }}" + tok.chat_template
    ids = ChatEncoder(tok2).prompt_ids(_row()["prompt"])
    assert ids[0] == tok.bos_token_id and _count(ids, tok.bos_token_id) == 1


def test_control_token_text_in_response_is_not_an_end_token(tok):
    enc = ChatEncoder(tok)
    p = _row()["prompt"]
    y = enc.response_ids(p, enc.prompt_ids(p), f"Stop {END} here")
    assert _count(y, enc.end_id) == 1 and y[-1] == enc.end_id
    assert tok.decode(y) == f"Stop {END} here{END}"


def test_template_breaking_the_prefix_is_an_error():
    tok = make_toy_tokenizer()
    # Generation prompt ends with a newline, but assistant turns are written without it.
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}"
        "{{ '<|assistant|>' + m['content'] + '<|end|>\\n' }}{% else %}"
        "{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
    with pytest.raises(TemplateBoundaryError,
                       match=r"data.jsonl: line 5: field 'chosen': .*not a token prefix"):
        tokenize_pairs([_row()], tok, locations=["data.jsonl: line 5"])


def test_template_without_end_token_appends_eos():
    tok = make_toy_tokenizer()
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}")
    enc = ChatEncoder(tok)
    assert enc.end_id == tok.eos_token_id and not enc.template_writes_end
    p = _row()["prompt"]
    assert tok.decode(enc.response_ids(p, enc.prompt_ids(p), "Hi.")) == "Hi.\n</s>"


def test_template_without_generation_prompt_is_an_error():
    tok = make_toy_tokenizer()
    tok.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}<|end|>{% endfor %}"
    with pytest.raises(BatchingError, match="ignores add_generation_prompt"):
        ChatEncoder(tok)


# ----------------------------------------------------------------------------------------------
# Batch layout


def test_pair_batch_layout(tok):
    rows = [_row(i, chosen_weights=None) for i in range(3)]
    rows[1]["rejected_prompt"] = []
    cfg = BatchingConfig(alt_sequences=True, bucket=16, max_length=256, max_prompt_length=128)
    data = tokenize_pairs(rows, tok, cfg)
    assert data.stats == {"no_rejected_prompt": 1}
    b = collate_pairs(data.examples, bucket=16, pad_id=data.pad_id)
    names = ("chosen", "rejected", "chosen_alt", "rejected_alt")
    keys = {f"{s}_{k}" for s in names for k in ("ids", "mask", "response_mask")}
    assert set(b) == keys | {"has_alt", "index"}
    T = b["chosen_ids"].shape[1]
    assert T % 16 == 0 and T - 16 < max(ex.length for ex in data.examples) <= T
    np.testing.assert_array_equal(b["has_alt"], [1, 0, 1])
    for s in names:
        assert b[f"{s}_ids"].dtype == np.int32 and b[f"{s}_mask"].dtype == np.int32
        assert b[f"{s}_response_mask"].dtype == np.float32 and b[f"{s}_ids"].shape == (3, T)
    for i, (ex, row) in enumerate(zip(data.examples, rows)):
        for s in names:
            ids, mask, resp = b[f"{s}_ids"][i], b[f"{s}_mask"][i], b[f"{s}_response_mask"][i]
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any()                 # right padding
            assert (ids[n:] == tok.pad_token_id).all()
            # response_mask is 1 exactly at the response tokens' positions (index t <-> ids[t]).
            text = tok.decode(ids[resp > 0])
            assert text == row["chosen" if s.startswith("chosen") else "rejected"] + END
            assert ids[n - 1] == tok.convert_tokens_to_ids(END)
            assert resp[n - 1] == 1 and resp[np.argmax(resp) - 1] == 0
        alt_prompt = (b["chosen_alt_mask"][i] == 1) & (b["chosen_alt_response_mask"][i] == 0)
        assert tok.decode(b["chosen_alt_ids"][i][alt_prompt]).endswith(
            (row["rejected_prompt"] or row["prompt"])[-1]["content"] + END + "\n" + ASSISTANT + "\n")
    np.testing.assert_array_equal(b["index"], [0, 1, 2])


def test_token_fields_placed_at_response_positions(tok):
    enc = ChatEncoder(tok, BatchingConfig(bucket=8))
    rows = []
    for i in range(3):
        r = _row(i)
        p = enc.prompt_ids(r["prompt"])
        nc = len(enc.response_ids(r["prompt"], p, r["chosen"]))
        nr = len(enc.response_ids(r["prompt"], p, r["rejected"]))
        rows.append({**r, "chosen_weights": np.arange(1, nc + 1) / nc, "rejected_weights": np.full(nr, 2.0),
                     "ref_chosen_token_logps": -np.arange(1, nc + 1) / 10,
                     "ref_rejected_token_logps": -np.ones(nr)})
    data = tokenize_pairs(rows, enc)
    b = collate_pairs(data.examples, bucket=8)
    for f, s in (("chosen_weights", "chosen"), ("rejected_weights", "rejected"),
                 ("ref_chosen_token_logps", "chosen"), ("ref_rejected_token_logps", "rejected")):
        assert b[f].shape == b[f"{s}_ids"].shape and b[f].dtype == np.float32
        for i, row in enumerate(rows):
            on = b[f"{s}_response_mask"][i] > 0
            np.testing.assert_array_equal(b[f][i][on], np.asarray(row[f], np.float32))
            assert not b[f][i][~on].any()


def test_weight_length_mismatch_names_row_and_field(tmp_path, tok):
    path = tmp_path / "pairs.jsonl"
    with open(path, "w") as f:
        f.write(json.dumps(_row(0)) + "\n")
        f.write(json.dumps(_row(1, rejected_weights=[1.0, 1.0, 1.0])) + "\n")
    data = read_pairs(path)
    with pytest.raises(BatchingError, match=rf"{path}: line 2: field 'rejected_weights' has 3 values but the "
                                            r"rejected response has \d+ tokens .*another tokenizer"):
        tokenize_pairs(data, tok)


def test_token_fields_on_some_rows_only(tok):
    enc = ChatEncoder(tok)
    r = _row(1)
    n = len(enc.response_ids(r["prompt"], enc.prompt_ids(r["prompt"]), r["chosen"]))
    data = tokenize_pairs([_row(0), _row(1, chosen_weights=[1.0] * n)], enc)
    with pytest.raises(BatchingError, match=r"row 1: field\(s\) \['chosen_weights'\] present on some rows"):
        collate_pairs(data.examples)


# ----------------------------------------------------------------------------------------------
# Truncation policies


def _long_rows():
    return [_row(0), _row(1, prompt="Write " + "a very long prompt " * 12, chosen="Yes " * 40),
            _row(2, chosen="A long answer " * 20), _row(3)]


def test_truncation_error_names_row_and_lengths(tok):
    cfg = BatchingConfig(max_length=64, max_prompt_length=40, truncation="error")
    with pytest.raises(TooLongError, match=r"f.jsonl: line 1: too long \(prompt has \d+ tokens > "
                                           r"max_prompt_length 40; prompt \+ chosen = "
                                           r"\d+ \+ \d+ = \d+ tokens > max_length 64"):
        tokenize_pairs(_long_rows(), tok, cfg, locations=[f"f.jsonl: line {i}" for i in range(4)])


def test_truncation_skip_counts(tok, caplog):
    cfg = BatchingConfig(max_length=64, max_prompt_length=40, truncation="skip")
    data = tokenize_pairs(_long_rows(), tok, cfg)
    assert data.skipped == {"too_long": 2} and len(data) == 2
    assert [ex.where for ex in data.examples] == ["row 0", "row 3"]
    assert "skipped" in caplog.text


def test_truncation_truncate(tok):
    cfg = BatchingConfig(max_length=64, max_prompt_length=40, truncation="truncate", alt_sequences=True)
    enc = ChatEncoder(tok, cfg)
    rows = _long_rows()
    big = BatchingConfig(max_length=4096, max_prompt_length=2048, alt_sequences=True)
    full = tokenize_pairs(rows, tok, big)
    # Weights on the long row, to check they are cut with the response.
    n1 = len(full.examples[1].chosen_ids)
    rows[1]["chosen_weights"] = list(np.linspace(0.1, 2.0, n1))
    data = tokenize_pairs(rows, enc)
    assert data.stats == {"truncated_prompt": 1, "truncated_response": 2}
    for ex, un in zip(data.examples, full.examples):
        for p, r in ex.sequences().values():
            assert len(p) <= 40 and len(p) + len(r) <= 64
            assert p[0] == tok.bos_token_id and _count(p, tok.bos_token_id) == 1   # BOS never cut
        # Prompt keeps its last tokens (the assistant header); response keeps its first tokens.
        assert list(ex.prompt_ids[1:]) == list(un.prompt_ids[len(un.prompt_ids) - len(ex.prompt_ids) + 1:])
        assert list(ex.chosen_ids) == list(un.chosen_ids[:len(ex.chosen_ids)])
    ex1 = data.examples[1]
    assert len(ex1.prompt_ids) == 40 and len(ex1.token_fields["chosen_weights"]) == len(ex1.chosen_ids) < n1
    np.testing.assert_allclose(ex1.token_fields["chosen_weights"],
                               rows[1]["chosen_weights"][:len(ex1.chosen_ids)], rtol=1e-6)
    assert ex1.length == 64
    # The cap is max_length rounded up to a multiple of the bucket (attention kernels need one).
    b = collate_pairs([ex1], bucket=48, max_length=64)
    assert b["chosen_ids"].shape == (1, 96) and b["chosen_mask"].sum() == 64
    np.testing.assert_array_equal(b["chosen_weights"][0][40:64], ex1.token_fields["chosen_weights"])


def test_config_checks():
    with pytest.raises(ValueError, match="truncation"):
        BatchingConfig(truncation="cut")
    with pytest.raises(ValueError, match="max_prompt_length"):
        BatchingConfig(max_length=64, max_prompt_length=64)
    with pytest.raises(ValueError, match=r"unknown batching config key\(s\) \['max_len'\]"):
        BatchingConfig.from_dict({"max_len": 3})
    assert BatchingConfig.from_dict({"bucket": 32}).bucket == 32


# ----------------------------------------------------------------------------------------------
# Buckets and SFT


def test_bucket_length():
    assert [bucket_length(n, 64) for n in (1, 63, 64, 65, 200)] == [64, 64, 64, 128, 256]
    assert bucket_length(150, 64, max_length=160) == 192               # cap: 160 rounded up
    assert bucket_length(100, 64, max_length=1024) == 128
    assert bucket_length(5000, 64, max_length=4096, max_buckets=8) == 4096


def test_bucket_lengths_are_few_geometric_multiples_of_the_block():
    assert bucket_lengths(64, 384) == (64, 128, 192, 256, 320, 384)        # 0: every multiple
    assert bucket_lengths(64, 384, 8) == bucket_lengths(64, 384)           # 6 fit in 8: unchanged
    assert bucket_lengths(64, 4096, 1) == (4096,)                         # one shape: full length
    assert len(bucket_lengths(64, 4096)) == 64
    # By hand, growth 1.4: 128 -> 180 -> 256 -> 359 -> 384 -> 538 -> 640 -> 896 -> 1255 -> 1280
    # -> 1792 -> 2509, capped at 2048: 8 lengths; growth 1.3 gives 9 (..., 1408, 1920, 2048).
    assert bucket_lengths(128, 2048, 8) == (128, 256, 384, 640, 896, 1280, 1792, 2048)
    for bucket, max_length, k in ((64, 4096, 8), (128, 2048, 4), (64, 1000, 5), (16, 8192, 6)):
        lengths = bucket_lengths(bucket, max_length, k)
        assert len(lengths) <= k and lengths[-1] == -(-max_length // bucket) * bucket
        assert all(t % bucket == 0 for t in lengths) and list(lengths) == sorted(set(lengths))
        for n in (1, bucket, bucket + 1, max_length // 3, max_length):
            t = bucket_length(n, bucket, max_length, k)
            assert t in lengths and t >= n and (t == lengths[0] or max(l for l in lengths if l < t) < n)
    with pytest.raises(ValueError, match="max_buckets"):
        PairLoader([1, 2], batch_size=1, max_buckets=-1)


def test_batches_use_a_few_bucketed_shapes(tok):
    rows = [_row(i, chosen="word " * (3 * i + 1)) for i in range(24)]
    data = tokenize_pairs(rows, tok, BatchingConfig(max_length=200, max_prompt_length=100))
    loader = PairLoader(data, batch_size=4, seed=0, bucket=32, max_length=200, num_epochs=3)
    shapes = {b["chosen_ids"].shape for b in loader}
    assert all(t % 32 == 0 or t == 200 for _, t in shapes) and 1 < len(shapes) <= 4


def test_sft_layout(tok):
    rows = [{"prompt": "Say hi.", "response": "Hi there!"},
            {"prompt": [{"role": "user", "content": "Name a river."}],
             "completion": [{"role": "assistant", "content": "The Nile."}]}]
    data = tokenize_sft(rows, tok, BatchingConfig(bucket=16))
    b = collate_sft(data.examples, bucket=16, pad_id=data.pad_id)
    assert set(b) == {"ids", "mask", "response_mask", "index"} and b["ids"].shape[1] % 16 == 0
    assert tok.decode(b["ids"][0][b["response_mask"][0] > 0]) == "Hi there!" + END
    assert tok.decode(b["ids"][1][b["response_mask"][1] > 0]) == "The Nile." + END
    ex1 = data.examples[1]
    assert b["ids"][1][0] == tok.bos_token_id
    assert b["mask"][1].sum() == len(ex1.prompt_ids) + len(ex1.response_ids)
    with pytest.raises(ValueError, match=r"row 0: field 'response': missing"):
        tokenize_sft([{"prompt": "x"}], tok)


# ----------------------------------------------------------------------------------------------
# Loader: determinism, resume, processes


@pytest.fixture(scope="module")
def examples(tok):
    rows = [_row(i, chosen="word " * (i % 7 + 1)) for i in range(30)]
    return tokenize_pairs(rows, tok, BatchingConfig(max_length=256, max_prompt_length=128))


def _take(loader, n):
    return [next(loader) for _ in range(n)]


def _same(a, b):
    return len(a) == len(b) and all(x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


@pytest.mark.parametrize("sort_window", [0, 3])
def test_deterministic_shuffle_and_epochs(examples, sort_window):
    make = lambda seed: PairLoader(examples, batch_size=4, seed=seed, bucket=16, sort_window=sort_window)
    a, b, c = _take(make(0), 21), _take(make(0), 21), _take(make(1), 21)
    assert _same(a, b) and not _same(a, c)
    assert len(make(0)) == 7                                      # 30 // 4, drop_last
    epochs = [np.concatenate([x["index"] for x in a[e * 7:(e + 1) * 7]]) for e in range(3)]
    for e in epochs:
        assert len(set(e.tolist())) == 28                          # no repeats inside an epoch
    assert not np.array_equal(epochs[0], epochs[1])                # reshuffled per epoch


def test_max_buckets_bounds_the_shapes_a_run_compiles(tok):
    # Lengths spread from ~30 to ~900 tokens: with every multiple of 32 as a shape the loader
    # pads to a dozen or more lengths; max_buckets=4 pads to at most 4, each a multiple of 32.
    rows = [_row(i, chosen="word " * (7 * i + 1)) for i in range(128)]
    data = tokenize_pairs(rows, tok, BatchingConfig(max_length=1024, max_prompt_length=128))

    def shapes(max_buckets):
        loader = PairLoader(data, batch_size=2, seed=0, bucket=32, max_length=1024, num_epochs=1,
                            max_buckets=max_buckets)
        return {b["chosen_ids"].shape[1] for b in loader}

    every, few = shapes(0), shapes(4)
    assert len(every) >= 12
    assert few <= set(bucket_lengths(32, 1024, 4)) and len(few) <= 4 and all(t % 32 == 0 for t in few)


def test_sort_window_reduces_padding(examples):
    def padding(sort_window):
        loader = PairLoader(examples, batch_size=4, seed=0, bucket=1, sort_window=sort_window, num_epochs=1)
        return sum(b["chosen_ids"].size - b["chosen_mask"].sum() for b in loader)
    assert padding(7) < padding(0)


def test_no_shuffle_keeps_order_and_last_batch(examples):
    loader = PairLoader(examples, batch_size=8, seed=0, shuffle=False, drop_last=False, num_epochs=1)
    idx = [b["index"].tolist() for b in loader]
    assert idx == [list(range(s, min(s + 8, 30))) for s in range(0, 30, 8)]


@pytest.mark.parametrize("stop", [3, 7, 10])
def test_state_restore_continues_identically(examples, stop):
    kw = dict(batch_size=4, seed=5, bucket=16, sort_window=2)
    uninterrupted = _take(PairLoader(examples, **kw), 18)
    first = PairLoader(examples, **kw)
    head = _take(first, stop)
    state = json.loads(json.dumps(first.state()))                 # small, JSON-able
    assert set(state) >= {"epoch", "position"}
    resumed = PairLoader(examples, **kw)
    resumed.restore(state)
    assert _same(head + _take(resumed, 18 - stop), uninterrupted)
    with pytest.raises(ValueError, match="seed"):
        PairLoader(examples, **{**kw, "seed": 6}).restore(state)


def test_process_shards_make_up_the_global_batch(examples):
    kw = dict(batch_size=6, seed=2, bucket=16, max_length=256)
    glob = _take(PairLoader(examples, **kw), 8)
    parts = [_take(PairLoader(examples, **kw, process_index=p, process_count=3), 8) for p in range(3)]
    for step, g in enumerate(glob):
        for k in g:
            local = [parts[p][step][k] for p in range(3)]
            if k == "logits_window":                                # global, like T
                assert all(int(x) == int(g[k]) for x in local)
                continue
            assert len({x.shape[1:] for x in local}) == 1          # all processes agree on T
            np.testing.assert_array_equal(np.concatenate(local), g[k])
    with pytest.raises(ValueError, match="multiple of process_count"):
        PairLoader(examples, batch_size=4, seed=0, process_count=3)


def test_logits_window_by_hand():
    # state t predicts token t+1: prompts of 64 in a length of 256 need the last 192 states
    assert logits_window([64] * 16, 256, 4) == 192
    assert logits_window([100, 64, 70], 256, 4) == 192          # the shortest prompt decides
    assert logits_window([65], 256, 4) == 192                   # 191 rounded up to 3/4
    assert logits_window([200], 256, 4) == 64
    assert logits_window([63], 256, 4) is None                  # 193 > 3/4: every state
    assert logits_window([2], 8, 4) == 6 and logits_window([1], 8, 4) is None
    assert logits_window([64], 256, 1) is None                  # parts=1: always all states
    for length in (32, 100, 256):
        for parts in (2, 3, 4, 8):
            windows = {logits_window([p], length, parts) for p in range(1, length)}
            assert len(windows) <= parts
            for p in range(1, length):
                w = logits_window([p], length, parts)
                assert w is None or length - p <= w < length - 1


def test_loader_logits_window_covers_every_response(tok):
    rows = [_row(i, prompt=[{"role": "user", "content": "word " * (20 + 5 * (i % 7))}],
                 chosen="word " * (1 + i % 4)) for i in range(24)]
    data = tokenize_pairs(rows, tok, BatchingConfig(max_length=200, max_prompt_length=100))
    loader = PairLoader(data, batch_size=4, seed=0, bucket=32, max_length=200, num_epochs=2,
                        logits_windows=4)
    seen = set()
    for b in loader:
        t, w = b["chosen_ids"].shape[1], int(b["logits_window"])
        for side in ("chosen", "rejected"):
            first = b[f"{side}_response_mask"].argmax(-1)
            assert (w == 0 or t - first.min() <= w), (t, w, first)
        seen.add(w)
    assert len(seen - {0}) >= 1       # some batch skips prompt positions
    off = PairLoader(data, batch_size=4, seed=0, bucket=32, max_length=200, num_epochs=1)
    assert all(int(b["logits_window"]) == 0 for b in off)
