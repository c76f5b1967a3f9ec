"""Errors a user can act on. The CLI and server print these as one line, never a traceback."""


class SpecdecError(Exception):
    """Base class: a message meant for the user."""


class UsageError(SpecdecError, ValueError):
    """Bad input the user can fix: a flag's value, a drafter spec, a prompt, a file to read.

    A ValueError too, so library callers that catch ValueError keep working; ValueErrors that
    are not UsageErrors are bugs, and the CLI shows their traceback.
    """


class InvalidParameter(UsageError):
    """A request field out of its documented range; `param` names the field."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


class VocabularyMismatchError(SpecdecError, ValueError):
    """Drafter and target do not share a vocabulary."""


class ModelLoadError(SpecdecError):
    """A model could not be found, fetched, verified or loaded."""
