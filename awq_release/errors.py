"""The platform's error hierarchy. Each message says what was found, why it matters and what to do.

The command line turns any ReleaseError into `error: ...` and exit status 2; anything else is a bug.
"""


class ReleaseError(Exception):
    """Base of every error the platform raises on purpose."""


class CheckpointError(ReleaseError):
    """A model folder is missing files, unsafe to load, truncated or holds non-finite weights."""


class UnsupportedArchitecture(ReleaseError):
    """The model's architecture has no entry in the mapping registry."""


class QuantizationError(ReleaseError):
    """Settings that cannot apply to this model (group size, bits, output folder)."""


class TextError(ReleaseError):
    """A text file the user named is missing, empty, of an unknown kind or malformed."""


class CalibrationError(ReleaseError):
    """The calibration texts are too short for the windows asked for, or the token ids are malformed."""


class ComputeError(ReleaseError):
    """A compute setting (device, dtype) that this host cannot honour."""


class ValidationError(ReleaseError):
    """Validation input that cannot be used: settings, task files, texts, lengths."""


class ServerError(ReleaseError):
    """A serving process could not start, answer or stop cleanly."""


class PromotionError(ReleaseError):
    """A release folder cannot be named, written or found in the registry."""


class DatabaseError(ReleaseError):
    """The lineage database cannot be reached or is not migrated."""
