"""Deterministic simulation of Strife's payment path: the real coordinator and
ledger under a seeded scheduler, virtual time, and injected faults.

See docs/simulation.md. `run_seed(seed)` runs one world; `python -m
strife.simulation --seed N` replays it.
"""

from strife.simulation.runner import Result, Summary, capturing_logs, run_range, run_seed

__all__ = ["Result", "Summary", "capturing_logs", "run_range", "run_seed"]
