"""One exception type for bad user input: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input from the user (a file, field, name or sample); the message names the culprit."""


def require(cond: bool, message: str) -> None:
    if not cond:
        raise UserError(message)
