"""Errors of the process's start that the command line reports without a traceback."""


class StartupError(Exception):
    """A service could not start for a reason the operator can fix (a port in use...)."""
