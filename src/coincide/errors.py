"""Errors a user can cause. The CLI prints their message as one sentence, never a traceback."""


class UserError(Exception):
    """A problem with the user's input (a path, a flag, a file) that they can fix.

    The message is one sentence naming the thing and what to do about it.
    """


class MediaError(Exception):
    """A media file that cannot be ingested; the message says why (one short clause)."""


def short_reason(err: BaseException, limit: int = 160) -> str:
    """The first line of an exception's message (or its type name), cut to `limit` characters:
    for quoting a library's error inside a one-sentence UserError."""
    lines = str(err).strip().splitlines()
    reason = lines[0].strip() if lines else type(err).__name__
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"
