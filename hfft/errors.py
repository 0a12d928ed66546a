"""hfft's own error type: every problem a user can fix is raised as HfftError with the fix in the message."""

import difflib


class HfftError(ValueError):
    """A problem with the user's input, named together with how to fix it."""


def suggest(word: str, choices) -> str:
    """' Did you mean X?' for the closest valid choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""
