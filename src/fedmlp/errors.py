"""One exception type for every problem a user can fix; the CLI prints it as one line."""


class FedmlpError(Exception):
    """A user-facing error. The message names the file or config key and what was expected."""
