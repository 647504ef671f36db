"""The one exception type users see.

Every error caused by a user's input (a file, a field, a layer, a shape) is a
``NetspecError`` whose message is one line naming where the problem is and,
when there is an obvious fix, what to do.  The CLI prints it and exits with 2
instead of showing a traceback.
"""


class NetspecError(Exception):
    """A user-facing error: one line, naming the file, line or layer at fault."""


def where(path=None, line=None, column=None):
    """Format a ``file:line:col`` prefix, leaving out the parts that are unknown."""
    parts = [str(p) for p in (path, line, column) if p is not None]
    return ":".join(parts)
