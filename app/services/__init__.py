"""Domain logic without HTTP; used by the web app, the API, the CLI and the worker."""


class ServiceError(Exception):
    """A request the domain refuses, with a message meant for the person who made it."""

    status_code = 400

    def __init__(self, message: str, *, status_code: int | None = None):
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class NotFound(ServiceError):
    status_code = 404


class Forbidden(ServiceError):
    status_code = 403


class Conflict(ServiceError):
    status_code = 409
