"""Kernels: shape (see docs/kernels.md)."""
