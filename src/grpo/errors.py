"""The one exception type for mistakes a user can fix (bad config, bad data, bad reward function).

The CLI prints a `UserError` as a single line, `grpo: error: <message>`, and exits with status 2,
never with a traceback. Messages name the file, line, field or function at fault and, where it
helps, what would be accepted instead.
"""


class UserError(Exception):
    """A problem in the user's input, with a message that says what and where."""
