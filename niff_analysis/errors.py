"""Exception types users can catch; the CLI turns each into a one-line error."""


class NiffError(Exception):
    """Base class of every error the toolkit raises on bad user input."""


class CheckpointError(NiffError, ValueError):
    """A checkpoint is missing, unreadable, corrupt, foreign or inconsistent."""


class DataError(NiffError, ValueError):
    """A dataset folder is missing, partial or malformed."""


class SelectionError(NiffError, ValueError):
    """A layer selection or option matches nothing / is out of range."""
