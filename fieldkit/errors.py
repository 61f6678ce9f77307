"""One error type for everything a user can get wrong.

A :class:`FieldkitError` carries what is wrong (``message``) and how to fix it (``hint``).
The CLI prints it as one message and exits non-zero; tracebacks appear only with ``--debug``.
"""

from __future__ import annotations


class FieldkitError(Exception):
    """A user-facing error: what is wrong, and how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class GraphError(FieldkitError):
    """A field graph (YAML) that cannot be loaded, validated or built."""


class PluginError(FieldkitError):
    """A plugin that failed to load or registered something invalid."""


class CheckpointError(FieldkitError):
    """A checkpoint that is missing, truncated, corrupted or of the wrong kind."""
