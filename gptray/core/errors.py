"""Typed errors raised by the gptray library; the CLI maps each kind to an exit code."""


class GptrayError(Exception):
    """Base class of every error gptray raises on purpose."""

    exit_code = 1


class ConfigError(GptrayError):
    """A config key is unknown or holds an invalid value; raised before any work starts."""

    exit_code = 2

    def __init__(self, key: str, message: str):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


class DataError(GptrayError):
    """A corpus or token dataset is missing, unreadable or inconsistent."""

    exit_code = 3


class StorageError(DataError):
    """A directory or object store cannot be reached, listed, read or written (bad URI, missing
    bucket, unreachable endpoint, refused credentials). A DataError, so it shares its exit code."""


class CheckpointError(GptrayError):
    """A checkpoint is missing, incomplete, or does not match the run that wants it."""

    exit_code = 4


class TrainingError(GptrayError):
    """Training failed on the Ray cluster (the cause is chained)."""

    exit_code = 5


class Interrupted(GptrayError):
    """The user stopped the work (Ctrl-C); what was done is kept, and launching it again resumes."""

    exit_code = 130


class CheckpointRefused(CheckpointError):
    """A checkpoint file holds something other than data (an object whose loading would run code);
    nothing of it was loaded."""


class RunInUse(GptrayError):
    """Another live launch holds the run directory (its lease names who, where and since when)."""

    exit_code = 6
