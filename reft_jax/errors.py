"""Errors for bad user input.

Every error raised for something the user gave us (a config, a checkpoint, a data file) is a `ReftError`
with a one-line message that names the file, line or field. The CLI prints it and exits with code 2.
"""


class ReftError(ValueError):
    """Bad user input; the message is one line naming the file, line or field."""


class ConfigError(ReftError):
    """A model or run configuration we cannot honour."""


class CheckpointError(ReftError):
    """A checkpoint that is missing, incomplete, of the wrong shape or of an unsafe format."""


class Preempted(Exception):
    """SIGTERM stopped the command: in a training stage after a checkpoint of its last finished step, elsewhere at
    once; the same command goes on from there (not an error of the input)."""


class Interrupted(Exception):
    """Ctrl-C (SIGINT) stopped a training stage after a checkpoint of the step it was in; the same command goes on
    from there."""


class DataError(ReftError):
    """A dataset file or field that cannot be read as asked."""
