"""Kernels: spectral (see docs/kernels.md)."""
