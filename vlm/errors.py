"""One exception type for bad user input: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (a file, field, name or sample); the message names the culprit."""

    def __init__(self, message: object = "", *args: object):
        # torch re-raises an error of a DataLoader worker as the same class, with "Caught UserError in
        # DataLoader worker process 0." and the worker's traceback as its message: keep the worker's own line
        if isinstance(message, str) and message.startswith("Caught ") and "\nOriginal Traceback" in message:
            last = message.rstrip().rsplit("\n", 1)[-1]
            head, sep, tail = last.partition(": ")
            message = tail if sep and head.replace(".", "").replace("_", "").isalnum() else last
        super().__init__(message, *args)


def require(cond: bool, message: str) -> None:
    if not cond:
        raise UserError(message)
