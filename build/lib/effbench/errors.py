"""Errors that mean "the input is wrong": every command maps them to exit code 2
with the message, and nothing is created or stored."""


class ConfigError(ValueError):
    """A config, path or URL that cannot describe a run; the message names the
    key and what is valid there."""
