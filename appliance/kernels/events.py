"""Kernels: events (see docs/kernels.md)."""
