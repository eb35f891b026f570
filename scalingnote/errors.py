"""Errors a user can fix: the CLI prints them on one line and exits with status 2."""


class UserError(Exception):
    """Bad input (missing file, malformed data, unknown name, incompatible artifacts)."""


class DatasetError(UserError):
    """A BEIR dataset is missing, malformed or inconsistent."""


class ArtifactError(UserError):
    """A model bundle or index directory is missing, corrupt or of an unknown format."""


class SpaceMismatchError(UserError):
    """A query encoder does not embed into the space of the index it is asked to search."""
