"""Errors a user can cause, each carrying the exit code the CLI ends with."""

from __future__ import annotations

# Exit codes (sysexits.h where one fits); the README documents them.
EXIT_OK = 0
EXIT_REJECTED = 1  # some recipients permanently rejected
EXIT_USAGE = 2  # click usage error
EXIT_DATAERR = 65  # invalid input: list, template, event data; nothing sent
EXIT_TEMPFAIL = 75  # temporary failure: run again later
EXIT_CONFIG = 78  # configuration error: settings, TLS, authentication


class MailerError(Exception):
    """Base class: one clear line for the user and an exit code."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InputError(MailerError):
    """The recipient list, a template or the event data is invalid."""

    exit_code = EXIT_DATAERR


class TemplateError(InputError):
    """A template cannot be loaded or rendered."""


class ConfigError(MailerError):
    """Settings are missing or invalid, TLS is unavailable, authentication failed."""

    exit_code = EXIT_CONFIG


class TemporaryError(MailerError):
    """Nothing is wrong with the input, but try again later (server down, lock held)."""

    exit_code = EXIT_TEMPFAIL


class SignInLost(TemporaryError):
    """An OAuth token was accepted earlier in the run and a fresh one is refused now: the
    run stops (75), a later run (or mailer login) goes on."""


class UsageProblem(MailerError):
    """An option's value cannot be used (a bad --where expression): a usage error."""

    exit_code = EXIT_USAGE
