"""User-facing errors.

Every problem caused by bad input (a wrong path, an invalid rate, an unknown loss, a corrupt file)
is raised as :class:`NoisyFRError`, a ``ValueError`` whose message is one line that names the
input and the problem. The CLI prints it and exits with status 2.
"""


class NoisyFRError(ValueError):
    """Bad input: the message is a single line naming the input and the problem."""


class Stopped(BaseException):
    """A command stopped by a signal (SIGTERM, SIGINT) after saving what it needs to continue.

    Like :class:`KeyboardInterrupt` it is not an ``Exception``; the CLI prints the one-line
    message and exits with ``code`` (128 + the signal number: 143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum, self.code = int(signum), 128 + int(signum)
