"""Errors the training CLI reports as one clear line instead of a traceback."""


class DataError(RuntimeError):
    """A dataset file that is missing, truncated, corrupt or fails its checksum."""
