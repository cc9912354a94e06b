"""One exception type for bad user input: the CLI prints its message on one line and exits 2; reading a
user's text file and a file name as text with it."""

import os


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


def read_text(path: str | os.PathLike, what: str, encoding: str = "utf-8-sig", newline: str | None = None) -> str:
    """A user's text file (`what`: "templates file", "model card" ...) read whole; a missing file, a folder,
    bytes that are not UTF-8 (the byte named) or an unreadable file are a UserError naming the file. A BOM
    (Windows editors) is dropped unless `encoding` says otherwise."""
    try:
        with open(path, encoding=encoding, newline=newline) as f:
            return f.read()
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise UserError(f"{path}: a folder, not a {what}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save the {what} as UTF-8") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the {what} ({e.strerror or e})") from None


def read_jsonl(path: str | os.PathLike, what: str) -> list[tuple[int, object]]:
    """A user's JSON Lines file (`read_text`): (line number, value) of each non-blank line; a line that does not
    parse, or nests too deep to, is a UserError naming the file and the line."""
    import json
    out = []
    for n, line in enumerate(read_text(path, what).splitlines(), 1):
        if line.strip():
            try:
                out.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise UserError(f"{path}: line {n} is not JSON ({e.msg}, column {e.colno})") from None
            except RecursionError:
                raise UserError(f"{path}: line {n} is JSON nested too deep to read") from None
    return out


def text_of(name: str) -> str:
    """A file or folder name as text: bytes that are not UTF-8 (kept by Python as surrogates, which no JSON,
    parquet or tar header takes) become U+FFFD."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:              # a lone surrogate of another range (a JSON "\ud800" escape)
        return name.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def is_utf8(text: str) -> bool:
    """Whether a str can be written as UTF-8: no surrogates (argv or file-name bytes that were not UTF-8, a lone
    JSON `\ud800` escape), which parquet, JSON files and tokenizers refuse."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
