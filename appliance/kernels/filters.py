"""Kernels: filters (see docs/kernels.md)."""
