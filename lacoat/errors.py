"""Errors a user can cause and fix. The CLI prints them as one message, without a traceback."""


class LacoatError(Exception):
    """A problem with the user's input (file, value, layout) whose message says what to do."""


class DataError(LacoatError):
    """A data set, caption table or annotation file is missing or malformed."""


class AudioReadError(DataError):
    """An audio file cannot be read or holds no samples."""


class ModelError(LacoatError):
    """A model, checkpoint or encoder setting is missing, unreadable or inconsistent."""


class NumericalError(LacoatError):
    """Training produced a non-finite loss (NaN or infinity); the message names the batch's files."""
