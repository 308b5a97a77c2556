"""The platform's error hierarchy. Each message says what was found, why it matters and what to do."""


class ReleaseError(Exception):
    """Base of every error the platform raises on purpose."""


class CheckpointError(ReleaseError):
    """A model folder is missing files, unsafe to load, truncated or holds non-finite weights."""


class UnsupportedArchitecture(ReleaseError):
    """The model's architecture has no entry in the mapping registry."""


class QuantizationError(ReleaseError):
    """Settings that cannot apply to this model (group size, bits, output folder)."""


class CalibrationError(ReleaseError):
    """The calibration texts are missing, malformed or too short."""


class ServerError(ReleaseError):
    """A serving process could not start, answer or stop cleanly."""


class ValidationError(ReleaseError):
    """Validation input that cannot be used: settings, task files, texts, lengths."""


class ComputeError(ReleaseError):
    """A compute setting (device, dtype) that this host cannot honour."""
