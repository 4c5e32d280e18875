"""The base class of errors caused by user input (configs, data, checkpoints, paths).

Commands print them as one ``error: ...`` line and exit with status 2, without a traceback;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the file, key or value and what is expected."""
