"""Errors a user can act on. The CLI and server print these as one line, never a traceback."""


class SpecdecError(Exception):
    """Base class: a message meant for the user."""


class VocabularyMismatchError(SpecdecError, ValueError):
    """Drafter and target do not share a vocabulary."""


class ModelLoadError(SpecdecError):
    """A model could not be found, fetched, verified or loaded."""
