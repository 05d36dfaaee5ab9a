"""Benchmarks of skewscope: throughput, live latency, memory (see BENCHMARKS.md)."""
