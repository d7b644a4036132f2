"""The policy as the data recipes see it: chat conversations in, sampled texts out.

Builders never touch a model directly; they call a `Policy`. `ModelPolicy` wraps an nnx model
and its tokenizer (jitted KV-cache generation); `ScriptedPolicy` is a deterministic stand-in for
tests. A separate teacher (ECD's optional evolver) is just another Policy.

`load_policy_model` puts a model on this process's devices as training's rules say: a replica is
`tensor` devices (heads, kv heads, MLP and vocab split over them), and the process's other
devices hold more replicas, each generating for its own rows of a batch (the mesh's data axis).
Every process builds its own mesh over its own devices: generation needs nothing from other
processes, which work on their own prompts (`musc_jax.multiprocess`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
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


def resolve_dtype(name: str):
    """The dtype `name` names; "auto" is bfloat16 on GPU/TPU and float32 on CPU.

    (XLA:CPU has no fast bfloat16 matmul: there bfloat16 is slower and only loses precision.)
    """
    import jax
    import jax.numpy as jnp

    if name == "auto":
        return jnp.dtype(jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
    try:
        return jnp.dtype(name)
    except TypeError:
        raise ValueError(f"dtype {name!r}: use 'auto', 'bfloat16' or 'float32'") from None


def policy_mesh(tensor: int = 1, devices=None):
    """A (data, fsdp=1, tensor) mesh over this process's devices: `tensor` devices per replica,
    as many replicas as the rest allow (no FSDP: generation would gather every weight each step)."""
    import jax

    from musc_jax.sharding import make_mesh

    devices = list(jax.local_devices() if devices is None else devices)
    if tensor < 1 or len(devices) % tensor:
        raise ValueError(f"tensor parallelism {tensor} must divide the {len(devices)} devices of "
                         "this process (a replica never spans processes)")
    return make_mesh(data=len(devices) // tensor, fsdp=1, tensor=tensor, devices=devices)


def load_policy_model(path: str | Path, dtype: str = "auto", tensor: int = 1, tokenizer: str = ""):
    """(model, tokenizer, mesh): the HF model at `path` in `dtype` (see `resolve_dtype`), placed
    on `policy_mesh(tensor)`; its tokenizer from `tokenizer` (default `path`)."""
    from musc_jax.models import from_pretrained, load_tokenizer

    if not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(
            f"{path}: no HF model directory (config.json missing); set model.path")
    mesh = policy_mesh(int(tensor))
    model = from_pretrained(path, dtype=resolve_dtype(dtype), mesh=mesh)
    tok = load_tokenizer(tokenizer or path, model.config.vocab_size)
    return model, tok, mesh


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
