"""Pair builders: musc, ecd, spar and the self_reward / random baselines (one module each)."""
