"""The microworld (DESIGN 8). Importing it registers its seed source and rule evolver."""

from musc_jax.microworld import plugin as _plugin  # noqa: F401  (registration)
