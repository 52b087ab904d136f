"""Benchmarks; results are recorded under bench/results/ with the machine named (see bench/common.py)."""
