"""effbench: measured, labelled efficiency benchmarks for LLM techniques."""

__version__ = "0.1.0"
