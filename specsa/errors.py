"""Errors meant for the user: the CLI prints their message and exits non-zero, no traceback."""


class ModelLoadError(ValueError):
    """A model that cannot be found, fetched or loaded; the message says what to do."""
