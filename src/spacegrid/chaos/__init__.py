"""Jepsen-style chaos runs: worker processes record histories while seeded faults hit a LocalGrid (see run.py)."""
