"""User-facing errors.

Every problem caused by bad input (a wrong path, an invalid rate, an unknown loss, a corrupt file)
is raised as :class:`NoisyFRError`, a ``ValueError`` whose message is one line that names the
input and the problem. The CLI prints it and exits with status 2.
"""


class NoisyFRError(ValueError):
    """Bad input: the message is a single line naming the input and the problem."""
