"""The one exception type a user sees: what is wrong and what is allowed, no traceback."""


class UserError(Exception):
    """Bad parameters, missing or corrupt artifacts, unusable inputs.

    Stages print the message and exit with status 2, writing nothing.
    """
