"""Errors a user can fix. The entrypoint prints them as one line, without a traceback."""

import shlex
import sys


class EapoError(Exception):
    """Base class for problems with the user's input, data or config."""


class DataError(EapoError):
    """A data file is missing, malformed or inconsistent. The message names the file."""


class ConfigError(EapoError):
    """A config value is out of range or inconsistent with another value."""


class ModelError(EapoError):
    """A model, tokenizer or checkpoint cannot be found or loaded."""


def rerun_command() -> str:
    """This process's command line, runnable again: rerunning a job resumes it from the cache
    and its checkpoints."""
    program = sys.argv[0]
    if program.endswith("__main__.py"):  # `python -m eapo_exp`
        return shlex.join([sys.executable, "-m", "eapo_exp", *sys.argv[1:]])
    return shlex.join(sys.argv)
