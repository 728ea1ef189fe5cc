"""Scenario runners: each turns a resolved config into measured metrics."""
