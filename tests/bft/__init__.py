"""Tests of strife.bft."""
