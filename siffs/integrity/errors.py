"""Errors of the integrity layer: one hierarchy, one class per kind of failure.

The classes mirror the reference verifier's error kinds (``expected.json`` → ``error_kinds``)
so tests can assert the broad class of a failure, and the CLI maps the whole tree to one exit
code (NOT_TRUSTED), except ``KeyMaterialError`` (an unusable key file: KEY_ERROR). Messages are
one line and say what to do where there is something to do.
"""

import errno as _errno
from typing import ClassVar


class IntegrityError(Exception):
    """Base class: the image could not be verified, or a signature could not be made."""


class VerificationError(IntegrityError):
    """Verification failed: the image is not (or no longer) what its signer signed."""


class NoObjectsError(VerificationError):
    """The image holds no objects at all."""


class NoGroupsError(VerificationError):
    """No object belongs to a group, so there is nothing a signature could cover."""


class GroupNotFoundError(VerificationError):
    """A selected group has no objects."""


class ObjectNotFoundError(VerificationError):
    """A selected object ID does not exist."""


class InvalidGroupIDError(VerificationError):
    """A selected object has no group (e.g. a signature object), so no signature covers it."""


class NonGroupedObjectError(VerificationError):
    """A data object belongs to no group: nothing could ever vouch for it."""


class SignatureNotFoundError(VerificationError):
    """No (suitable) signature is linked to the group or object to verify."""


class SignatureFormatError(VerificationError):
    """A signature object is neither a DSSE envelope nor a clear-signed OpenPGP message."""


class NoKeyMaterialError(VerificationError):
    """A signature needs a kind of key (OpenPGP or DSSE) that was not provided."""


class SignatureNotValidError(VerificationError):
    """The cryptographic check failed: unknown signer, bad signature, bad envelope or metadata."""


class KeyExpiredError(SignatureNotValidError):
    """The signing key has expired (judged at the current time, as the reference does)."""


class KeyRevokedError(SignatureNotValidError):
    """The signing key has been revoked by its owner."""


class FingerprintMismatchError(VerificationError):
    """The descriptor names a different signer than the key that made the signature."""


class HashUnsupportedError(VerificationError):
    """The signature descriptor names a hash algorithm that cannot be used."""


class ObjectNotSignedError(VerificationError):
    """An object to verify is missing from the signed metadata."""


class SignedObjectNotFoundError(VerificationError):
    """The signed metadata lists an object the group no longer has."""


class HeaderIntegrityError(VerificationError):
    """The signed header fields (launch script, magic, version, ID) changed."""


class DescriptorIntegrityError(VerificationError):
    """A signed descriptor changed (type, name, size, link, partition or signature fields...)."""


class ObjectIntegrityError(VerificationError):
    """The bytes of a signed object changed."""


class NotTrustedError(VerificationError):
    """Signatures verified, but none by a trusted key covers the objects to expose."""


class TamperedBlockError(IntegrityError):
    """A block read after verification differs from the bytes that were verified.

    ``errno`` is what a filesystem answers for it: the reader's damage, not a bug.
    """

    errno: ClassVar[int] = _errno.EIO


class ReadOutsideObjectError(TamperedBlockError):
    """A read reaches outside the verified object: the image's own pointers are damaged."""


class KeyMaterialError(IntegrityError):
    """A key file cannot be used: unreadable, malformed, or the wrong kind of key."""


class SigningError(IntegrityError):
    """A signature could not be made (GnuPG failed, no signing-capable key, bad selection)."""
