"""Trace counters of the engines' jitted functions (a trace precedes every compilation).

Tests and benchmarks read them to check that refilling slots, or a second call in the same
buckets, compiles nothing new. Keys: "generate" (static engine), "engine_prefill",
"engine_decode", "engine_resize".
"""

import collections

TRACE_COUNTS: collections.Counter = collections.Counter()
