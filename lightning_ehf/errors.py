"""User-facing errors. The CLI prints their message on one line and exits with code 2."""

from __future__ import annotations

EXIT_DIVERGED = 3  # training diverged: non-finite loss or gradient (the last good checkpoint is kept)
EXIT_PREEMPTED = 75  # sysexits.h EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1, retry later (``ehf train --resume``)


class UserError(Exception):
    """Bad input from the user: config, data file, CLI argument or checkpoint. Exit code 2."""


class ConfigError(UserError, ValueError):
    """A config key is unknown, of the wrong type, or has an invalid value. Names the key."""


class DataError(UserError, ValueError):
    """A data file is missing, unreadable or malformed. Names the file."""


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, corrupted, or incompatible with the request."""


class NumericalDivergence(RuntimeError):
    """Training produced a non-finite loss or gradient (exit code 3; the last good checkpoint is kept)."""


class Preempted(Exception):
    """Training was stopped by ``cause`` (SIGTERM or SIGUSR1) after a complete step; ``checkpoint`` holds
    that step (exit code 75, EX_TEMPFAIL: resume later with ``ehf train --resume``)."""

    def __init__(self, step: int, checkpoint: str, cause: str = "SIGTERM") -> None:
        super().__init__(f"stopped by {cause} at step {step}; saved {checkpoint}")
        self.step = step
        self.cause = cause
        self.checkpoint = checkpoint
