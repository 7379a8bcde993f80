"""Every error the jobs raise on purpose, and the exit code each means on the command line.

Exit codes: 0 ok; 1 the job failed (it diverged, too many inputs failed, the gate refused, its
records are not all stored); 2 bad input or configuration, or a run stopped by something that
is not one input's fault (the store unusable, the workers stalled). Stdlib only: config.py
(read by the DAG files) takes ConfigError from here.
"""

from __future__ import annotations

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class ConfigError(ValueError):
    """A configuration value that cannot work, with a message saying which and why."""


class DataError(ValueError):
    """Training data that cannot be used; the message says which source and why, in one line."""


class ImageDecodeError(ValueError):
    """An input that cannot become an RGB picture; `reason` is a short phrase for reports."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StorageError(RuntimeError):
    """An object-store operation failed; the message names the URI and the reason in one line."""


class NotFoundError(StorageError):
    """The object or local folder does not exist (a missing bucket is a SystemicError)."""


class InvalidURIError(StorageError, ValueError):
    """A malformed URI, refused before any I/O (a ValueError too, as split_s3 always raised)."""


class SystemicError(StorageError):
    """Not one input's failure: what the whole run depends on is unusable (an unreachable
    endpoint, a missing bucket, refused credentials, feed workers that died or stalled).
    Retrying other inputs would fail the same way: a run stops and keeps what it did."""


class StalledError(SystemicError):
    """Nothing progressed for the stall deadline."""


class RegistryError(RuntimeError):
    """A registry operation was refused or its target does not exist."""


class TrainingError(RuntimeError):
    """The job cannot go on (diverged, incompatible resume, ...); no version is written."""


class TranslateError(RuntimeError):
    """A systemic problem: found before any work (no model, bad config, unreadable input...)
    or one that stopped the run (the object store went away, the disk is full)."""


# Bad input or configuration, found before the job does its work (ConfigError, DataError and
# InvalidURIError are ValueErrors), and translate runs stopped by a systemic error.
USAGE_ERRORS = (ValueError, RegistryError, StorageError, TranslateError)


def exit_code(err: BaseException) -> int | None:
    """The exit code an exception means, or None for one no job raises on purpose (a bug)."""
    if isinstance(err, USAGE_ERRORS):
        return EXIT_USAGE
    if isinstance(err, RuntimeError):  # TrainingError and other job failures
        return EXIT_FAILED
    return None


def result_exit(command: str, result: dict) -> tuple[int, str | None]:
    """The exit code a finished command's result means, and why (None when it succeeded).
    A refused gate fails (exit 1) unless the caller asked for the decision only."""
    if command == "gate" and not result["passed"]:
        return EXIT_FAILED, f"refused: {'; '.join(result['reasons'])}"
    if command in ("translate", "merge") and result.get("status") == "failed":
        share, limit = result["failed_share"], result["max_failure_rate"]
        return EXIT_FAILED, f"failed: {share:.1%} of inputs failed (max {limit:.1%})"
    if command == "translate" and result.get("status") == "incomplete":
        # The work is done but not all of its records are: not a success to build on.
        missing, kept = result["records_error"], result["manifest_local"]
        return EXIT_FAILED, (
            f"incomplete: the run's records were {missing} (the manifest is kept at {kept})"
        )
    return EXIT_OK, None
