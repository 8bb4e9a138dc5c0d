"""Strife: a distributed payment gateway with exactly-once payments over gRPC."""

__version__ = "0.1.0"
