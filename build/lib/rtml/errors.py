"""The project's exception base class; messages say what to do next."""


class RtmlError(Exception):
    """Base of every error rtml raises on purpose."""


class ServiceError(RtmlError):
    """A service of the stack could not be started, reached or stopped."""


class ConfigError(RtmlError):
    """Settings or files that rtml cannot work with."""
