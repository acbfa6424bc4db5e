"""Errors that are the user's to fix (bad input, missing files, bad config).

``train.py`` and the CLIs catch :class:`UserError` and print its message as one paragraph, without a
traceback, then exit with status 2. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Base class: the message names the culprit (file, key, value) and says what was expected."""


class ConfigError(UserError):
    """A config key is unknown, has the wrong type or an invalid value."""


class DataError(UserError):
    """A dataset folder, split file, image or cache is missing or malformed."""


class WeightsError(UserError):
    """CLIP weights cannot be found, loaded or recognised."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the message names the step, the loss terms and likely causes."""
