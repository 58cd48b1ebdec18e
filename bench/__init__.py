"""Benchmarks of the appliance, each against a reference measured in the same run.

Run with `make bench` or `python -m bench [NAME ...]`; see bench/README.md.
"""
