"""Errors a user can fix. The entrypoint prints them as one line, without a traceback."""


class EapoError(Exception):
    """Base class for problems with the user's input, data or config."""


class DataError(EapoError):
    """A data file is missing, malformed or inconsistent. The message names the file."""


class ConfigError(EapoError):
    """A config value is out of range or inconsistent with another value."""


class ModelError(EapoError):
    """A model, tokenizer or checkpoint cannot be found or loaded."""
