"""Errors of the registry stage: one class per exit code the CLI maps them to."""

from __future__ import annotations


class RegistryError(Exception):
    """A registry operation failed; the message names the host and says what to do."""

    #: Messages name the registry or file themselves; the CLI adds no file name in front.
    names_its_subject = True


class BadReference(RegistryError):
    """The reference is not valid (checked before any network access)."""


class AuthError(RegistryError):
    """The registry wants credentials that were not given, or refused those given."""


class NotFoundError(RegistryError):
    """The repository, tag or blob does not exist on the registry."""


class NetworkError(RegistryError):
    """The registry could not be reached, or kept failing after retries."""


class DigestError(RegistryError):
    """Downloaded bytes do not match their digest or size; nothing was written."""


class UnsupportedError(RegistryError):
    """The artifact is not something siffs can pull (wrong shape or media type, schema 1)."""


class LocalIOError(RegistryError):
    """A local file could not be read or written (destination, cache, credentials file)."""
