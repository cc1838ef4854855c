"""Replay public agent trajectories through a running collector: python -m bench.replay."""
