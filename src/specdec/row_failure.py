"""A batch row's own failure: the row leaves alone, the others go on (one bad request, a
drafter that raises or a row whose output breaks, must not cost the others their text)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class RowFailure:
    """A row that left the batch alone because its own work raised `error`."""

    error: Exception


def guarded(failures: dict[int, Exception], row: int, work: Callable[..., Any],
            *args: Any) -> Any:
    """work(*args), or None with the error recorded as row's failure."""
    try:
        return work(*args)
    except Exception as error:
        failures[row] = error
        return None
