"""Importing this package registers every technique module."""

from effbench.techniques import architecture, precision  # noqa: F401  (each registers itself)
from effbench.techniques.registry import UnsupportedTechnique, get_technique, registered_methods

__all__ = ["UnsupportedTechnique", "get_technique", "registered_methods"]
