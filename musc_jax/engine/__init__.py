"""Generation engines behind `musc_jax.generate`: continuous batching over decode slots (the
default) and the static batch engine; shared sampling, shape buckets and trace counters."""
