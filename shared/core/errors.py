"""Domain exceptions raised by shared/ and mapped to HTTP in one place (shared.http)."""

from __future__ import annotations


class DomainError(Exception):
    """Base for errors a client can cause or the service reports; carries a safe message."""

    code = "error"
    # Seconds a client should wait before trying again (the Retry-After header), when the error says.
    retry_after: int | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidImage(DomainError):
    """The upload is not an image we accept (format, size in pixels, damaged data)."""

    code = "invalid_image"


class InvalidDicom(InvalidImage):
    """The bytes are not a readable DICOM dataset, or lack the UIDs that identify the instance."""

    code = "invalid_dicom"


class NoImageData(InvalidImage):
    """A DICOM file without pixel data (an RT plan, a structured report, ...)."""

    code = "no_image"


class UnsupportedTransferSyntax(InvalidImage):
    """A DICOM file whose pixel data is encoded in a transfer syntax we cannot decode."""

    code = "unsupported_transfer_syntax"


class InvalidUpload(DomainError):
    """The request body is not the multipart upload we expect."""

    code = "invalid_upload"


class UploadTooLarge(DomainError):
    """The uploaded file is larger than MAX_UPLOAD_BYTES."""

    code = "upload_too_large"


class DirectUploadUnavailable(DomainError):
    """Presigned uploads need the images bucket, and this deployment has none (IMAGES_BUCKET unset).

    409, not 5xx: nothing failed and retrying will not help; it is this deployment's state, and the
    client's way on is POST /api/v1/scans/analyze (files up to MAX_UPLOAD_BYTES).
    """

    code = "direct_upload_unavailable"


class UploadNotFound(DomainError):
    """No presigned upload with this id for this owner, or it has expired (404, as for scans)."""

    code = "upload_not_found"


class UploadIncomplete(DomainError):
    """An upload was completed before its file was posted to the bucket (409: post it, then complete)."""

    code = "upload_incomplete"


class UnsupportedMediaType(DomainError):
    """The request body is not of a content type this route accepts."""

    code = "unsupported_media_type"


class NotAcceptable(DomainError):
    """Nothing this resource can be sent as is acceptable to the request's Accept header (406)."""

    code = "not_acceptable"


class InvalidRequest(DomainError):
    """A parameter or JSON body is malformed."""

    code = "invalid_request"


class InvalidParameter(DomainError):
    """A query parameter is well-formed HTTP but not a value we accept (422, like FastAPI's own checks)."""

    code = "invalid_request"


class NotAuthenticated(DomainError):
    """No bearer token, or one that is unknown or expired."""

    code = "not_authenticated"


class InvalidToken(NotAuthenticated):
    """A bearer token was sent but is unknown or expired (RFC 6750 error="invalid_token")."""


class InvalidSignature(DomainError):
    """A signed image URL whose signature, key id or path does not check out."""

    code = "invalid_signature"


class UrlExpired(DomainError):
    """A signed image URL that was genuine but is past its expiry."""

    code = "url_expired"


class SigningUnavailable(DomainError):
    """The URL signing keys could not be read (Secrets Manager unreachable or the secret malformed)."""

    code = "signing_unavailable"


class InvalidCredentials(DomainError):
    """Username or password is wrong."""

    code = "invalid_credentials"


class TooManyAttempts(DomainError):
    """Too many failed logins for this username or from this address within the window (429)."""

    code = "too_many_attempts"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UserNotFound(DomainError):
    """No user with this username (ops commands only: logins never say whether a user exists)."""

    code = "user_not_found"


class ScanNotFound(DomainError):
    """No scan (or image) with this id for this owner."""

    code = "scan_not_found"


class DuplicateSopInstance(DomainError):
    """The owner already holds a different file with this SOP Instance UID (DUPLICATE_SOP_POLICY=reject)."""

    code = "duplicate_sop_instance"


class UserExists(DomainError):
    """A user with this username already exists."""

    code = "user_exists"


class DatabaseUnavailable(DomainError):
    """The database could not be reached in time."""

    code = "database_unavailable"


class StorageUnavailable(DomainError):
    """The S3 images bucket could not be read or written in time (or refused)."""

    code = "storage_unavailable"


class ObjectMissing(StorageUnavailable):
    """The object asked for is not in the images bucket (a 503 unless the caller knows better)."""


class ConfigurationError(Exception):
    """A setting is missing or malformed; the message names it."""
