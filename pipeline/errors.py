"""Errors of the shared core.

    FinsentError                  base of every error finsent raises on purpose
    ├── ConfigurationError        a setting, flag or file is wrong; the message names it
    ├── ServiceUnavailable        the broker or database cannot be reached or started
    │   ├── BrokerError
    │   └── DatabaseError
    ├── ModelError                a model directory is missing, incomplete or incompatible
    ├── InputError                user input (a file, a record, a request) is malformed
    └── NotImplementedYet         a command whose issue has not landed

The CLI turns a FinsentError into one readable line and exit code 2 (1 for the rest),
so every message says what was wrong and what to do next.
"""

from __future__ import annotations


class FinsentError(Exception):
    """Base class; the message is shown to the user as it is."""


class ConfigurationError(FinsentError):
    """A setting, flag or configuration file is invalid."""


class ServiceUnavailable(FinsentError):
    """A service finsent depends on cannot be reached or started."""


class BrokerError(ServiceUnavailable):
    """The Kafka broker (embedded or external) is unusable."""


class DatabaseError(ServiceUnavailable):
    """PostgreSQL is unusable."""


class ModelError(FinsentError):
    """A model directory is missing, incomplete or incompatible."""


class InputError(FinsentError):
    """Input data (a file, a record, a request body) is malformed."""


class NotImplementedYet(FinsentError):
    """The command exists in the CLI but its implementation has not landed."""
