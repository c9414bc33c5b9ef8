"""Benchmarks of rtml, run from a checkout with `make bench`; not part of the installed package."""
