"""Importing this package registers every technique: each module of the package
that calls `register` (they are light: a technique imports its libraries only
when it is applied). Adding a technique is one module here and one YAML in
configs/technique/."""

import importlib
import pkgutil

from effbench.techniques.registry import (TECHNIQUES, UnsupportedTechnique, get_technique, registered_methods,
                                          torch_dtype)

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["TECHNIQUES", "UnsupportedTechnique", "get_technique", "registered_methods", "torch_dtype"]
