"""The one exception type for mistakes a user can make and fix."""


class UserError(Exception):
    """A problem the user caused and can fix: bad file, bad setting, missing model.

    The message is shown as is, on one line, by the command line (exit code 2)
    and by the panel, so it names the file, line or field and what to do.
    """

    def __init__(self, message: str, *, field: str | None = None, hint: str | None = None):
        super().__init__(message)
        self.field = field
        self.hint = hint  # what to do next, when the message alone does not say it

    def __str__(self) -> str:  # keep it to one line for the CLI and the UI
        return " ".join(str(self.args[0]).split("\n"))
