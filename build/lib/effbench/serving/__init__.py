"""Serving load: who sends requests when (load.py), and the timing loop that
drives a system under test with them (harness.py), split as in MLPerf LoadGen."""
