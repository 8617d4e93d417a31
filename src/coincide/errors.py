"""Errors a user can cause. The CLI prints their message as one sentence, never a traceback."""


class UserError(Exception):
    """A problem with the user's input (a path, a flag, a file) that they can fix.

    The message is one sentence naming the thing and what to do about it.
    """


class MediaError(Exception):
    """A media file that cannot be ingested; the message says why (one short clause)."""
