"""The package's error types: each is raised with a one-line message naming what is wrong."""


class ConfigError(ValueError):
    """A setting, config file or input that this project cannot run faithfully."""


class ConversionError(ValueError):
    """Bad conversion input; the message is one line naming the file and the problem."""
