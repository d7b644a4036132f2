"""A tiny local chat tokenizer for tests (no hub access, vocab <= 256).

`make_toy_tokenizer()` trains a character-seeded BPE with the `tokenizers` library on a small
generated English-like corpus and wraps it as a `transformers.PreTrainedTokenizerFast` with
bos/eos/unk/pad, chat role tokens and a Jinja chat template:

    <s><|user|>\\nHello there<|end|>\\n<|assistant|>\\nHi!<|end|>\\n

* the template starts with the BOS token (unless `template_bos=False`) and ends every turn with
  `<|end|>` followed by a newline (so code that finds the end of a response must trim that newline);
* `add_generation_prompt=True` appends `<|assistant|>\\n`;
* the post-processor adds BOS on plain encoding, so `tokenizer(rendered_chat)` (the classic mistake)
  yields two BOS tokens, which the "exactly one BOS" rule must catch;
* `eos_token` is `</s>` (distinct from the end-of-turn token `<|end|>`, as in many base models).

Every printable ASCII character and the newline are in the base alphabet, so any ASCII text
round-trips through encode/decode; other characters map to `<unk>`.
"""

from __future__ import annotations

import functools
import random
import string
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
SYSTEM, USER, ASSISTANT, END = "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, SYSTEM, USER, ASSISTANT, END]
CHAT_TOKENS = [SYSTEM, USER, ASSISTANT, END]
_ALPHABET = sorted(set(string.printable) - set(" \t\r\x0b\x0c") | {"▁"})
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + len(_ALPHABET)     # no merges at all

_TURNS = (
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
CHAT_TEMPLATE = "{{ bos_token }}" + _TURNS
CHAT_TEMPLATE_NO_BOS = _TURNS

_WORDS = (
    "the a an of to and in is it that for on with as was by at from this be are or not have "
    "write describe list facts about note topic answer response sentence word words keyword "
    "title bullet points json comma lowercase uppercase start end phrase exactly least most "
    "river mountain city garden ocean forest castle library music planet robot dragon island "
    "tall small green blue old new quiet bright famous ancient large warm cold deep "
    "please make sure your include exclude use do should must each every one two three four five"
).split()


def _corpus(num_lines: int = 1500, seed: int = 0) -> list[str]:
    """Deterministic English-like lines (with digits, punctuation and chat-ish structure)."""
    rng = random.Random(seed)
    lines = []
    for _ in range(num_lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 12))]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), str(rng.randint(0, 99)))
        line = " ".join(words) + rng.choice([".", ".", "!", "?", ",", ":"])
        if rng.random() < 0.1:
            line = "- " + line
        lines.append(line)
    return lines


@functools.lru_cache(maxsize=None)
def _trained_json(vocab_size: int) -> str:
    """The trained tokenizer as JSON (trained once per vocab size and process)."""
    tok = Tokenizer(models.BPE(unk_token=UNK))
    # Newlines are isolated pieces, words carry a leading "▁" for the space before them: so a
    # token never spans a newline or a space boundary and the decoder restores the exact text.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=_ALPHABET, limit_alphabet=len(_ALPHABET),
                                  show_progress=False)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B:1", special_tokens=[(BOS, bos_id)])
    return tok.to_str()


def make_toy_tokenizer(out_dir: str | Path | None = None, vocab_size: int = 256,
                       template_bos: bool = True) -> PreTrainedTokenizerFast:
    """Build the toy chat tokenizer; save it with `save_pretrained(out_dir)` when `out_dir` is given.

    `vocab_size` is an upper bound (at most 256, so tiny test models with vocab 256 fit);
    `template_bos=False` gives a chat template that does not write the BOS token itself.
    """
    if not MIN_VOCAB_SIZE <= vocab_size <= 256:
        raise ValueError(f"vocab_size must be in [{MIN_VOCAB_SIZE}, 256], got {vocab_size}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_json(vocab_size)),
        bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        extra_special_tokens=CHAT_TOKENS, clean_up_tokenization_spaces=False,
        model_max_length=4096)
    tokenizer.chat_template = CHAT_TEMPLATE if template_bos else CHAT_TEMPLATE_NO_BOS
    assert len(tokenizer) <= vocab_size, len(tokenizer)
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer
