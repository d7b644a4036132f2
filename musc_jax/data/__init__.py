"""Data: constraints, pair building, pairs I/O and batching."""
