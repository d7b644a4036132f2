"""The policy as the data recipes see it: chat conversations in, sampled texts out.

Builders never touch a model directly; they call a `Policy`. `ModelPolicy` wraps an nnx model
and its tokenizer (jitted KV-cache generation); `ScriptedPolicy` is a deterministic stand-in for
tests. A separate teacher (ECD's optional evolver) is just another Policy.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, Sequence

Message = dict[str, str]
Conversation = list[Message]


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to sample: temperature 0 is greedy; num_samples outputs per conversation."""

    temperature: float = 0.5
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    num_samples: int = 1


class Policy(Protocol):
    def chat(self, conversations: Sequence[Conversation], sampling: Sampling,
             seed: int = 0) -> list[list[str]]:
        """For each conversation, `sampling.num_samples` assistant replies (decoded text)."""
        ...


class ModelPolicy:
    """A Policy backed by a DecoderLM and its HF tokenizer (chat template applied inside)."""

    def __init__(self, model, tokenizer, batch_size: int = 64, mesh=None):
        self.model, self.tokenizer, self.batch_size, self.mesh = model, tokenizer, batch_size, mesh

    def chat(self, conversations: Sequence[Conversation], sampling: Sampling,
             seed: int = 0) -> list[list[str]]:
        from musc_jax.generate import generate_text

        n = sampling.num_samples
        out: list[list[str]] = []
        step = max(1, self.batch_size // n)
        for start in range(0, len(conversations), step):
            chunk = list(conversations[start:start + step])
            texts = generate_text(self.model, self.tokenizer, chunk, sampling.max_new_tokens,
                                  temperature=sampling.temperature, top_p=sampling.top_p,
                                  top_k=sampling.top_k, seed=seed + start, num_samples=n,
                                  mesh=self.mesh)
            out.extend(texts[i * n:(i + 1) * n] for i in range(len(chunk)))
        return out


class ScriptedPolicy:
    """A deterministic stand-in: `reply(conversation, sample_index, seed) -> str`.

    Records every call in `calls` (conversation, sampling) so tests can check what was asked.
    """

    def __init__(self, reply: Callable[[Conversation, int, int], str]):
        self.reply = reply
        self.calls: list[tuple[Conversation, Sampling]] = []

    def chat(self, conversations: Sequence[Conversation], sampling: Sampling,
             seed: int = 0) -> list[list[str]]:
        out = []
        for j, conv in enumerate(conversations):
            self.calls.append((conv, sampling))
            out.append([self.reply(conv, k, seed + j) for k in range(sampling.num_samples)])
        return out
