"""The base class of errors caused by user input (configs, data, checkpoints, paths).

Commands print them as one ``error: ...`` line and exit with status 2, without a traceback;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the file, key or value and what is expected."""

    # True when every rank of a job raises the same error (the checks before any process group read
    # the same config and files): then rank 0 alone prints it, not once per rank
    agreed = False
