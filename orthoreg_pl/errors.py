"""One exception type for bad input, so entry points can print it without a traceback wall."""


class OrthoRegError(Exception):
    """Bad user input: the message names the offending value and what is accepted."""
