"""Load generator: simulated customers paying each other, figures, and a money audit.

`strife-loadgen` is the command (`strife.loadgen.cli`); `run_load` is the
same run for tests and benchmarks. See docs/performance.md.
"""

from strife.loadgen._model import Customer, Outcome, Payment
from strife.loadgen.audit import AuditReport
from strife.loadgen.config import ConfigError, LoadConfig
from strife.loadgen.runner import LoadResult, run_load
from strife.loadgen.target import Target, own_cluster, running_cluster, sized_topology

__all__ = [
    "AuditReport",
    "ConfigError",
    "Customer",
    "LoadConfig",
    "LoadResult",
    "Outcome",
    "Payment",
    "Target",
    "own_cluster",
    "run_load",
    "running_cluster",
    "sized_topology",
]
