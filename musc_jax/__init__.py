"""musc_jax: self-contrastive preference training (MuSC, ECD, SPaR) for open LLMs in JAX/Flax."""

__version__ = "0.1.0"
