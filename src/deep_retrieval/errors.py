"""The one exception type for mistakes a user can make (bad files, ids, configs, requests).

The CLI prints ``error: <message>`` on one line and exits with code 2 for it;
anything else is a bug and keeps its traceback.
"""


class DRError(Exception):
    """A user-facing error: the message is one line that names the problem."""
