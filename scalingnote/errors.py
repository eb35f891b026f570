"""Errors a user can fix: the CLI prints them on one line and exits with status 2."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class UserError(Exception):
    """Bad input (missing file, malformed data, unknown name, incompatible artifacts)."""


class DatasetError(UserError):
    """A BEIR dataset is missing, malformed or inconsistent."""


class ArtifactError(UserError):
    """A model bundle or index directory is missing, corrupt or of an unknown format."""


class SpaceMismatchError(UserError):
    """A query encoder does not embed into the space of the index it is asked to search."""


class BackendError(UserError):
    """A search backend (Milvus) is not installed, unreachable, or lacks the alias or collection asked for."""


def validation_message(exc: ValidationError, limit: int = 3) -> str:
    """A pydantic ``ValidationError`` on one line: ``field.path: message; …`` (at most ``limit`` errors)."""
    errors = exc.errors()
    parts = [f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in errors[:limit]]
    more = f" (+{len(errors) - limit} more)" if len(errors) > limit else ""
    return "; ".join(parts) + more
