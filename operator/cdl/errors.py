"""The one small error hierarchy of cdl.

Every failure a user can see falls into one of four kinds, and the controller maps each kind to
kopf's retry semantics, a condition and an Event in one place (`cdl.controller.outcomes`):

- `InvalidSpec`: the user's manifest is wrong. Nothing is retried until the spec changes.
- `DependencyNotReady`: an upstream resource is not ready yet. The resource waits (phase Pending).
- `TransientEngineError`: an engine or store is unreachable or busy. Retried with backoff.
- `PermanentEngineError`: the engine refused or the work failed. The resource goes Failed.
"""

from __future__ import annotations


class CdlError(Exception):
    """Base of every error cdl raises on purpose."""

    reason: str = "Error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason:
            self.reason = reason

    def __str__(self) -> str:
        return self.message


class InvalidSpec(CdlError):
    """A manifest breaks the schema or a cross-field rule.

    `problems` holds one `(field path, message)` pair per problem so callers can print
    `Experiment ml/bbc-asha: spec.searcher.maxLength: required when searcher.name is asha`.
    """

    reason = "InvalidSpec"

    def __init__(self, resource: str, problems: list[tuple[str, str]]) -> None:
        self.resource = resource
        self.problems = problems
        text = "; ".join(f"{path}: {msg}" if path else msg for path, msg in problems)
        super().__init__(f"{resource}: {text}")


class DependencyNotReady(CdlError):
    """An upstream resource (or its output) is not there yet; wait and look again."""

    reason = "WaitingForDependency"


class TransientError(CdlError):
    """Something that should work shortly: a connection refused, a timeout, a busy server."""

    reason = "TransientError"


class TransientEngineError(TransientError):
    """An engine is unreachable or answered with a retryable error."""

    reason = "EngineUnavailable"


class PermanentEngineError(CdlError):
    """The engine refused the request, or the work it ran failed for good."""

    reason = "EngineFailed"
