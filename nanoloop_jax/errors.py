"""The one base class of mistakes a user can fix: entry points print them as one `error:` line and exit 1.

Everything else (a shape bug, a failed assertion) is not caught and keeps its traceback.
"""


class UserError(Exception):
    """A bad flag, missing file or wrong combination: the message says what is wrong and how to fix it."""


class ConfigError(UserError, ValueError):
    """A config field or combination that cannot work (a ValueError too, for callers that validate)."""
