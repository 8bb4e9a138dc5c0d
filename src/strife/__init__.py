"""Strife: a distributed payment gateway with exactly-once payments over gRPC."""

import os

__version__ = "0.1.0"

# Strife processes start children only by fork+exec, never fork alone, so
# gRPC's fork handlers have nothing to protect and only print warnings.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
