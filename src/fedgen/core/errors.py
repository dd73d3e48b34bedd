"""User-facing errors: the CLI prints these as one clear line, without a traceback."""


class FedgenError(Exception):
    """Base class for every error caused by user input (config, data, files)."""


class ConfigError(FedgenError):
    """A configuration file or override is malformed."""


class DataError(FedgenError):
    """A dataset is missing, corrupt or of the wrong format."""


class UpdateError(FedgenError):
    """A client update is malformed: wrong keys, shapes, dtypes, or non-finite values."""


class CheckpointError(FedgenError):
    """A run directory or checkpoint cannot be used (missing, corrupt, or from another config)."""
