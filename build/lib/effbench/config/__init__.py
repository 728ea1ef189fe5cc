"""Structured-config schemas (Hydra ConfigStore) and config-time validation."""
