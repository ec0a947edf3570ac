"""The ways a job ends other than success, so entry points can say so in one line and pick the exit status."""


class OrthoRegError(Exception):
    """Bad user input: the message names the offending value and what is accepted (exit status 2)."""


class RunFailed(Exception):
    """A run that started and cannot go on (e.g. a non-finite loss); its status is ``failed`` (exit 1)."""


class RunInterrupted(Exception):
    """A run stopped by a signal after saving its checkpoint; its status is ``interrupted``.

    The exit status is 128 + the signal's number, as a shell reports a process ended by that signal."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum
