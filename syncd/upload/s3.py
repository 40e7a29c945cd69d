"""The ``s3`` protocol: multipart uploads to any S3-compatible store (AWS S3, MinIO, Ceph
RGW, R2, B2, ``rclone serve s3``), with boto3's low-level client.

- ``create`` is CreateMultipartUpload; its UploadId is the session's handle (the engine
  journals it at once). ``committed`` is ListParts, paged; ``send_part`` is UploadPart with
  Content-MD5, and the returned ETag is compared with the part's MD5; ``complete`` is
  CompleteMultipartUpload followed by a HEAD that checks the size and the whole-file MD5;
  ``abort`` is AbortMultipartUpload. Small files go whole as one PutObject with Content-MD5.
- The whole-file MD5 and the source mtime are stored as object metadata (``md5``, hex, and
  ``mtime``, seconds since the epoch as rclone writes it). PutObject sends both up front. A
  multipart upload can only send the mtime (the MD5 is known once the last part is read),
  so after a verified completion the object is copied onto itself with the MD5 added
  (``MetadataDirective=REPLACE``): a server-side copy, no bytes sent again. It is skipped
  where HEAD already tells the MD5 as a plain ETag (rclone, s3rver) and for objects over
  5 GiB (CopyObject's limit); there the ``-N`` ETag, checked against the parts' MD5s, is
  the proof.
- ``checksum`` other than ``md5`` adds a flexible checksum (botocore computes it) to every
  part and PutObject, besides Content-MD5; the parts' values, from UploadPart's answers or
  ListParts, are named again in CompleteMultipartUpload, as AWS requires.
- Parts are hashed by the engine (``part_checksum``) and streamed from memory into the
  request, so progress and a stop are seen as the bytes go. Every body goes with a signed
  Content-MD5, so the SigV4 signature does not SHA-256 the body as well
  (``payload_signing_enabled: False``): that would be a third hash of every byte.
- botocore's own retries are off: the engine's retry policy owns timing. Every botocore
  exception is translated here into base.py's errors (``_translate``).

boto3 is imported only when a backend is built, so a daemon without S3 targets never
loads it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import re
import secrets
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

from pydantic import Field, field_validator, model_validator

from syncd.config import Size, TargetSettings, read_secret
from syncd.units import format_size
from syncd.upload.base import (
    NO_BATCH,
    AuthRejected,
    BatchLimit,
    Capabilities,
    ChecksumMismatch,
    GiB,
    Interrupted,
    MiB,
    NotStarted,
    Part,
    PartPlan,
    PartReceipt,
    PermanentError,
    RemoteFile,
    SessionGone,
    StorageFull,
    TransientError,
    UploadError,
    UploadItem,
)
from syncd.upload.registry import ProtocolEntry
from syncd.upload.retry import parse_retry_after

log = logging.getLogger("syncd.upload.s3")

MIN_PART = 5 * MiB
MAX_PART = 5 * GiB
MAX_PARTS = 10_000
COPY_MAX = 5 * GiB
"""the largest object CopyObject copies in one request (where the MD5 metadata is added)"""
SINGLE_REQUEST_MAX = 8 * MiB
"""files up to this (or ``part_size`` if smaller) go as one PutObject: one request instead
of three, and their MD5 is sent up front"""
LIST_PAGE = 1000
META_MD5 = "md5"
META_MTIME = "mtime"

_MD5_HEX = re.compile(r"^[0-9a-f]{32}$")
_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
               "ExpiredToken", "TokenRefreshRequired", "AuthorizationHeaderMalformed", "InvalidSecurity"}
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                   "RequestThrottled", "ServiceUnavailable"}
_TIMEOUT_CODES = {"RequestTimeout", "RequestTimeTooSkewed"}
_FULL_CODES = {"XMinioStorageFull", "StorageFull", "InsufficientStorage"}
_CHECKSUM_CODES = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "XAmzContentChecksumMismatch"}


def etag_md5(etag: str | None) -> str | None:
    """The MD5 an ETag tells, when it is a plain 32-hex MD5 (not a multipart ``-N`` one)."""
    value = (etag or "").strip().strip('"').lower()
    return value if _MD5_HEX.match(value) else None


def multipart_etag(part_md5s: Sequence[str]) -> str:
    """AWS's ETag of a completed multipart upload: the MD5 of the parts' binary MD5s, ``-N``."""
    digest = hashlib.md5(b"".join(bytes.fromhex(m) for m in part_md5s)).hexdigest()
    return f"{digest}-{len(part_md5s)}"


def format_mtime(mtime_ns: int) -> str:
    """The source mtime as rclone's ``mtime`` metadata writes it: seconds with nanoseconds."""
    return f"{mtime_ns // 10**9}.{mtime_ns % 10**9:09d}"


def render_prefix(template: str) -> str:
    """``prefix`` with ``{host}`` filled in; no leading or trailing slash."""
    text = template.format(host=socket.gethostname())
    return "/".join(part for part in text.split("/") if part not in ("", "."))


def object_key(prefix: str, remote_name: str) -> str:
    return f"{prefix}/{remote_name}" if prefix else remote_name


class Settings(TargetSettings):
    """A ``protocol: s3`` target: a bucket (and a prefix in it) on an S3-compatible store."""

    protocol: Literal["s3"] = "s3"
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    profile: str | None = None
    access_key_id: str | None = None
    secret_access_key_file: Path | None = None
    secret_access_key_env: str | None = None
    storage_class: str | None = None
    server_side_encryption: Literal["AES256", "aws:kms", "aws:kms:dsse"] | None = None
    kms_key_id: str | None = None
    part_size: Size = 16 * MiB
    min_part_size: Size = MIN_PART
    part_concurrency: int = Field(4, ge=1, le=64)
    checksum: Literal["md5", "crc32", "crc32c", "sha1", "sha256"] = "md5"
    on_conflict: Literal["overwrite", "skip_identical", "fail"] = "overwrite"

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,254}$", value):
            raise ValueError(f"{value!r} is not a bucket name (3 or more letters, digits, '.', '-', '_')")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        try:
            value.format(host="h")
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"{value!r} is not a valid template ({exc}); use {{host}}") from None
        return value

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+/?$", value):
            raise ValueError(f"{value!r} is not an http:// or https:// URL without a path")
        return value.rstrip("/") if value else value

    @field_validator("min_part_size")
    @classmethod
    def _min_part(cls, value: int) -> int:
        if not 64 * 1024 <= value <= MAX_PART:
            raise ValueError(f"{value} is not between 64KiB and 5GiB")
        return value

    @model_validator(mode="after")
    def _keys(self) -> Settings:
        given = [k for k in ("token", "token_file", "token_env") if getattr(self, k) is not None]
        if given:
            raise ValueError(f"{given[0]}: S3 targets take access_key_id with secret_access_key_file or "
                             "secret_access_key_env (or the AWS credential chain), not a token")
        secrets_given = [k for k in ("secret_access_key_file", "secret_access_key_env") if getattr(self, k)]
        if len(secrets_given) > 1:
            raise ValueError("give only one of secret_access_key_file, secret_access_key_env")
        if self.access_key_id and not secrets_given:
            raise ValueError("access_key_id needs secret_access_key_file or secret_access_key_env")
        if secrets_given and not self.access_key_id:
            raise ValueError(f"{secrets_given[0]} needs access_key_id")
        if self.access_key_id and self.profile:
            raise ValueError("give access_key_id or profile, not both")
        if self.kms_key_id and self.server_side_encryption not in ("aws:kms", "aws:kms:dsse"):
            raise ValueError("kms_key_id needs server_side_encryption: aws:kms")
        return self

    def resolve_secret(self) -> str | None:
        """The secret access key itself (None: the AWS chain finds credentials); raises
        ValueError naming the key on a bad source."""
        if self.secret_access_key_file is not None:
            return read_secret(file=self.secret_access_key_file, key="secret_access_key_file")
        if self.secret_access_key_env is not None:
            return read_secret(env=self.secret_access_key_env, key="secret_access_key_env")
        return None

    def resolve_token(self) -> str | None:
        """The secret to keep out of logs (``syncd run`` registers it)."""
        return self.resolve_secret()

    def environment_problems(self, *, skip_secrets: bool = False) -> list[str]:
        import importlib.util

        problems = super().environment_problems(skip_secrets=skip_secrets)
        if self.checksum == "crc32c" and importlib.util.find_spec("awscrt") is None:
            problems.append("checksum: crc32c needs botocore's CRT extra (pip install 'botocore[crt]')")
        return problems

    def describe(self) -> str:
        where = self.endpoint_url or f"AWS {self.region or '(default region)'}"
        prefix = render_prefix(self.prefix)
        return (f"s3://{self.bucket}/{prefix + '/' if prefix else ''} at {where} "
                f"(parts {format_size(self.part_size)}, {self.part_concurrency} in flight)")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    return parse_retry_after(headers.get("retry-after"))


def error_code(exc: BaseException) -> tuple[str, int]:
    """(S3 error code, HTTP status) of a botocore ClientError; ('', 0) for anything else."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return "", 0
    code = str(response.get("Error", {}).get("Code") or "")
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    return code, status


def _translate(exc: BaseException, what: str, *, bucket: str) -> BaseException:
    """The one map from a botocore exception to base.py's errors."""
    import botocore.exceptions as bce

    if isinstance(exc, bce.ClientError):
        code, status = error_code(exc)
        message = " ".join(str(exc.response.get("Error", {}).get("Message") or "").split())[:200]
        label = f"{what}: S3 {code or status}" + (f" (HTTP {status})" if code and status else "")
        label += f": {message}" if message and message != code else ""
        if code in ("NoSuchUpload",):
            return SessionGone(label)
        if code in _AUTH_CODES or status in (401, 403):
            return AuthRejected(f"authentication rejected ({label})")
        if code == "NoSuchBucket" or (what == "head bucket" and status == 404):
            return PermanentError(f"bucket {bucket!r} does not exist ({label})")
        if code == "EntityTooLarge" or status == 413:
            return PermanentError(f"too large for the server (HTTP 413: {label})")
        if code in _FULL_CODES or status == 507:
            return StorageFull(f"server storage is full ({label})")
        if code in _CHECKSUM_CODES:
            return TransientError(label, reason="checksum")
        if code in ("InvalidPart", "InvalidPartOrder"):
            return TransientError(label, reason="protocol")
        retry_after = _retry_after(exc.response.get("ResponseMetadata", {}).get("HTTPHeaders") or {})
        if code in _THROTTLE_CODES or status == 429:
            return TransientError(label, reason="throttled", retry_after=retry_after)
        if code in _TIMEOUT_CODES or status == 408:
            return TransientError(label, reason="timeout", retry_after=retry_after)
        if status >= 500 or code == "InternalError":
            return TransientError(label, reason="server", retry_after=retry_after)
        return PermanentError(label)
    if isinstance(exc, (bce.ConnectTimeoutError, bce.ReadTimeoutError)):
        return TransientError(f"{what}: timed out: {exc}", reason="timeout")
    if isinstance(exc, (bce.EndpointConnectionError, bce.ConnectionClosedError, bce.HTTPClientError,
                        bce.ResponseStreamingError, bce.IncompleteReadError)):
        return TransientError(f"{what}: connection failed: {exc}", reason="connection")
    if isinstance(exc, (bce.NoCredentialsError, bce.PartialCredentialsError)):
        return AuthRejected(f"authentication rejected ({what}: {exc})")
    if isinstance(exc, bce.BotoCoreError):
        return PermanentError(f"{what}: {exc}")
    return exc


def _stopped(exc: BaseException) -> Interrupted | None:
    """The Interrupted a part's body raised while botocore sent it (botocore wraps it in an
    HTTPClientError), if that is what ``exc`` is."""
    seen: set[int] = set()
    node: BaseException | None = exc
    while node is not None and id(node) not in seen:
        if isinstance(node, Interrupted):
            return node
        seen.add(id(node))
        inner = getattr(node, "kwargs", {}).get("error") if isinstance(getattr(node, "kwargs", None), dict) else None
        node = inner if isinstance(inner, BaseException) else (node.__cause__ or node.__context__)
    return None


class S3Backend:
    def __init__(self, name: str, settings: Settings, *, client: Any | None = None):
        self.name = name
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = render_prefix(settings.prefix)
        self.client = client if client is not None else self._make_client(settings)
        self._extra = {}
        if settings.storage_class:
            self._extra["StorageClass"] = settings.storage_class
        if settings.server_side_encryption:
            self._extra["ServerSideEncryption"] = settings.server_side_encryption
        if settings.kms_key_id:
            self._extra["SSEKMSKeyId"] = settings.kms_key_id
        self.checksum_args: dict[str, str] = {}
        """a flexible checksum botocore computes for each part and whole object, besides Content-MD5"""
        self.checksum_field = ""
        """where an answer or a listing tells a part's flexible checksum (``ChecksumCRC32``...)"""
        if settings.checksum != "md5":
            self.checksum_args = {"ChecksumAlgorithm": settings.checksum.upper()}
            self.checksum_field = f"Checksum{settings.checksum.upper()}"
        # Under SSE-KMS the ETag is not the content's MD5: it cannot check parts or objects.
        self.etag_is_md5 = settings.server_side_encryption not in ("aws:kms", "aws:kms:dsse")
        self._lock = threading.Lock()
        self._lost_creates: set[str] = set()
        """keys whose CreateMultipartUpload failed in a way that may have made an upload"""

    @staticmethod
    def _make_client(settings: Settings) -> Any:
        import boto3
        from botocore.config import Config as BotoConfig

        session = boto3.session.Session(
            aws_access_key_id=settings.access_key_id,
            aws_secret_access_key=settings.resolve_secret() if settings.access_key_id else None,
            profile_name=settings.profile,
            region_name=settings.region,
        )
        config = BotoConfig(
            region_name=settings.region or session.region_name or "us-east-1",
            signature_version="s3v4",
            connect_timeout=settings.timeout.connect,
            read_timeout=settings.timeout.read,
            retries={"total_max_attempts": 1, "mode": "standard"},  # syncd's retry policy owns timing
            max_pool_connections=max(10, 4 * settings.part_concurrency),
            # Every part and object carries a signed Content-MD5: SHA-256 of each body for the
            # signature would be a third hash of every byte, and buys nothing on top.
            s3={"addressing_style": settings.addressing_style, "payload_signing_enabled": False},
            # Content-MD5 is what every server here checks (or stores); botocore's default
            # CRC32 trailers are not understood by every S3-compatible server.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            user_agent_extra="syncd",
        )
        return session.client("s3", endpoint_url=settings.endpoint_url, config=config, verify=settings.tls_verify())

    @classmethod
    def from_settings(cls, name: str, settings: Settings) -> S3Backend:
        return cls(name, settings)

    def key(self, remote_name: str) -> str:
        return object_key(self.prefix, remote_name)

    def call(self, what: str, method: str, **kw: Any) -> dict[str, Any]:
        """One client call; every failure leaves as one of base.py's errors."""
        try:
            return getattr(self.client, method)(Bucket=self.bucket, **kw)
        except UploadError:
            raise
        except Exception as exc:
            if stopped := _stopped(exc):  # the part's stream said stop, inside botocore
                raise stopped from None
            translated = _translate(exc, what, bucket=self.bucket)
            if translated is exc:
                raise
            raise translated from exc

    # --- the Backend interface -------------------------------------------------------------

    def plan(self, item: UploadItem) -> Capabilities:
        return Capabilities(part_size=self.settings.part_size, min_part=self.settings.min_part_size,
                            max_part=MAX_PART, max_parts=MAX_PARTS, concurrency=self.settings.part_concurrency,
                            verifies="part-checksum",
                            single_request_max=min(self.settings.part_size, SINGLE_REQUEST_MAX),
                            part_checksum=True)

    def batch_limit(self) -> BatchLimit:
        return NO_BATCH

    def create(self, item: UploadItem) -> S3Session:
        key = self.key(item.remote_name)
        if self.settings.on_conflict == "fail":
            head = self.head(key)
            if head is not None and int(head.get("ContentLength", -1)) != item.size:
                raise self.conflict_error(key)
        with self._lock:
            lost = key in self._lost_creates
        if lost:  # an earlier try may have made an upload whose answer never came
            self.abort_orphans(key)
        try:
            answer = self.call("create upload", "create_multipart_upload", Key=key,
                               Metadata={META_MTIME: format_mtime(item.mtime_ns)}, **self.checksum_args,
                               **self._extra)
        except TransientError:
            with self._lock:
                self._lost_creates.add(key)
            raise
        with self._lock:
            self._lost_creates.discard(key)
        return S3Session(self, item, str(answer["UploadId"]), new=True)

    def resume(self, item: UploadItem, handle: str | None) -> S3Session | NotStarted:
        if handle is None:
            # CreateMultipartUpload's answer was lost (a crash): the upload may exist, under
            # an UploadId nobody knows. Uploads of this exact key are this file's (one
            # syncd per prefix), so they are aborted before a new one is made.
            self.abort_orphans(self.key(item.remote_name))
            return NotStarted()
        return S3Session(self, item, handle)

    def abort_orphans(self, key: str) -> None:
        try:
            answer = self.call("list uploads", "list_multipart_uploads", Prefix=key)
            for upload in answer.get("Uploads") or []:
                if upload.get("Key") == key:
                    self.call("abort", "abort_multipart_upload", Key=key, UploadId=upload["UploadId"])
                    log.info("%s: aborted upload %s, made by a run that crashed before it heard back",
                             key, upload["UploadId"])
        except UploadError as exc:  # best effort (rclone: 404 when there are none; s3rver: 501)
            log.debug("%s: no orphan uploads aborted: %s", key, exc)

    def upload_whole(self, item: UploadItem, body: BinaryIO, md5_hex: str) -> RemoteFile:
        key = self.key(item.remote_name)
        if self.settings.on_conflict != "overwrite":
            there, same = self.existing(key, size=item.size, md5_hex=md5_hex)
            if same is not None:
                return same
            if there and self.settings.on_conflict == "fail":
                raise self.conflict_error(key)
        data = body.read()
        conditional = {"IfNoneMatch": "*"} if self.settings.on_conflict == "fail" else {}
        try:
            answer = self.call("put", "put_object", Key=key, Body=data, ContentMD5=_b64(md5_hex),
                               Metadata={META_MD5: md5_hex, META_MTIME: format_mtime(item.mtime_ns)},
                               **conditional, **self.checksum_args, **self._extra)
        except PermanentError as exc:
            if "PreconditionFailed" in str(exc) or "HTTP 412" in str(exc):
                # another writer got there first, or our own put whose answer was lost
                _, same = self.existing(key, size=item.size, md5_hex=md5_hex)
                if same is not None:
                    return same
                raise self.conflict_error(key) from exc
            raise
        etag = etag_md5(answer.get("ETag"))
        if self.etag_is_md5 and etag is not None and etag != md5_hex:
            raise ChecksumMismatch(f"{key}: server stored ETag {etag}, expected MD5 {md5_hex}")
        return RemoteFile(name=key, size=item.size, md5=md5_hex, location=f"s3://{self.bucket}/{key}",
                          verified="md5" if etag == md5_hex else "part-checksum")

    def incomplete_uploads(self) -> Iterator[IncompleteUpload]:
        """Every incomplete multipart upload under the target's prefix, paged
        (ListMultipartUploads; rclone answers NoSuchUpload when there are none)."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        markers: dict[str, str] = {}
        while True:
            try:
                page = self.call("list uploads", "list_multipart_uploads", Prefix=prefix, **markers)
            except SessionGone:
                return
            for upload in page.get("Uploads") or []:
                initiated = upload.get("Initiated")
                yield IncompleteUpload(key=str(upload["Key"]), upload_id=str(upload["UploadId"]),
                                       initiated=initiated.timestamp() if initiated is not None else None)
            if not page.get("IsTruncated"):
                return
            next_markers = {"KeyMarker": page.get("NextKeyMarker") or "",
                            "UploadIdMarker": page.get("NextUploadIdMarker") or ""}
            if next_markers == markers:
                return
            markers = next_markers

    def abort_upload(self, key: str, upload_id: str) -> None:
        self.call("abort", "abort_multipart_upload", Key=key, UploadId=upload_id)

    def probe(self) -> str:
        """Reach the store once: HEAD the bucket, then put and delete a tiny object under
        the prefix. One line saying what works; raises an UploadError for what does not."""
        where = f"s3://{self.bucket}/{self.prefix + '/' if self.prefix else ''}"
        self.call("head bucket", "head_bucket")
        key = object_key(self.prefix, f".syncd-probe-{secrets.token_hex(6)}")
        try:
            self.call("put", "put_object", Key=key, Body=b"syncd probe", **self._extra)
        except PermanentError as exc:
            return f"{where}: bucket reachable, but a put under the prefix fails: {exc}"
        try:
            self.call("delete", "delete_object", Key=key)
        except PermanentError as exc:
            return f"{where}: bucket reachable, put works, delete of {key} fails (remove it by hand): {exc}"
        return f"{where}: bucket reachable; put and delete under the prefix work"

    def close(self) -> None:
        close = getattr(self.client, "close", None)
        if close is not None:
            close()

    # --- helpers -----------------------------------------------------------------------------

    def head(self, key: str) -> dict[str, Any] | None:
        """The object's HEAD, or None when there is none."""
        try:
            return self.call("head", "head_object", Key=key)
        except PermanentError as exc:
            if isinstance(exc.__cause__, Exception) and error_code(exc.__cause__)[1] == 404:
                return None
            raise

    def stored_md5(self, head: Mapping[str, Any], parts: Sequence[PartReceipt] | None = None) -> str | None:
        """The whole-file MD5 the object's HEAD tells: its ``md5`` metadata (any case), else
        a plain-MD5 ETag. None when it tells none (a ``-N`` ETag; see ``matches_parts``)."""
        for name, value in (head.get("Metadata") or {}).items():
            if name.lower() == META_MD5 and _MD5_HEX.match(str(value).lower()):
                return str(value).lower()
        return etag_md5(head.get("ETag")) if self.etag_is_md5 else None

    def existing(self, key: str, *, size: int, md5_hex: str,
                 parts: Sequence[PartReceipt] = ()) -> tuple[bool, RemoteFile | None]:
        """Whether an object is under ``key``, and it if it holds exactly these bytes (size
        and MD5, or the ``-N`` ETag of exactly these parts)."""
        head = self.head(key)
        if head is None:
            return False, None
        if int(head.get("ContentLength", -1)) != size:
            return True, None
        md5 = self.stored_md5(head)
        if md5 == md5_hex:
            return True, RemoteFile(name=key, size=size, md5=md5, location=f"s3://{self.bucket}/{key}",
                                    verified="md5")
        if md5 is None and parts and self.matches_parts(head, parts):
            return True, RemoteFile(name=key, size=size, md5=md5_hex, location=f"s3://{self.bucket}/{key}",
                                    verified="part-checksum")
        return True, None

    def matches_parts(self, head: Mapping[str, Any], parts: Sequence[PartReceipt]) -> bool:
        md5s = [p.md5 or etag_md5(p.etag) for p in parts]
        if any(m is None for m in md5s):
            return False
        return str(head.get("ETag") or "").strip('"').lower() == multipart_etag(md5s)  # type: ignore[arg-type]

    def conflict_error(self, key: str) -> PermanentError:
        return PermanentError(f"s3://{self.bucket}/{key} already exists with other content (on_conflict: fail)")

    def add_md5_metadata(self, key: str, item: UploadItem, md5_hex: str) -> None:
        """Copy the object onto itself with its MD5 in the metadata (see the module docstring)."""
        self.call("store the MD5 as metadata", "copy_object", Key=key,
                  CopySource={"Bucket": self.bucket, "Key": key}, MetadataDirective="REPLACE",
                  Metadata={META_MD5: md5_hex, META_MTIME: format_mtime(item.mtime_ns)}, **self._extra)


@dataclass(frozen=True)
class IncompleteUpload:
    key: str
    upload_id: str
    initiated: float | None
    """when it was made (seconds since the epoch), as the store says"""


class _WholePart:
    """A part's stream that, once all its bytes were read, says so without reading it again.

    The part's own stream raises Interrupted at its next read once the daemon stops; the
    read that would only have said "no more" must not cut a request whose every byte has
    left: the server stores such a part, and it would be held without being journaled."""

    def __init__(self, body: BinaryIO, size: int):
        self._body = body
        self._size = size
        self._left = size

    def read(self, size: int | None = -1) -> bytes:
        if self._left <= 0:
            return b""
        data = self._body.read(self._left if size is None or size < 0 else min(size, self._left))
        self._left -= len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self._body.seek(offset, whence)
        self._left = self._size - position
        return position

    def tell(self) -> int:
        return self._body.tell()


def _b64(md5_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(md5_hex)).decode("ascii")


class S3Session:
    """One multipart upload; ``handle`` is its UploadId."""

    checksum = None  # the whole file is MD5's: the object's parts are what S3 verifies

    def __init__(self, backend: S3Backend, item: UploadItem, upload_id: str, *, new: bool = False):
        self._backend = backend
        self._empty = new
        """made by this process and no part sent yet: the server holds nothing of it"""
        self._item = item
        self._key = backend.key(item.remote_name)
        self.handle = upload_id
        self._checksums: dict[int, str] = {}
        """each part's flexible checksum as the server answered or listed it (CompleteMultipartUpload
        names them when the upload was made with a checksum algorithm)"""
        self._gone = False
        """ListParts found no upload, but an object of this file's size and mtime: a
        completion whose answer a crash cut off, to be confirmed by ``complete``'s HEAD"""

    def committed(self) -> dict[int, PartReceipt]:
        """ListParts, every page. The marker is treated as possibly inclusive (rclone's is):
        a part seen twice counts once, and a page that adds nothing ends the listing."""
        if self._empty:
            return {}
        held: dict[int, PartReceipt] = {}
        marker = 0
        while True:
            try:
                page = self._backend.call("list parts", "list_parts", Key=self._key, UploadId=self.handle,
                                          MaxParts=LIST_PAGE, PartNumberMarker=marker)
            except SessionGone:
                if not self._completed_before():
                    raise
                # Every part counts as held (by size): ``complete`` checks the object's MD5
                # and says SessionGone if it is not this file after all.
                self._gone = True
                plan = PartPlan(self._item.size, self._item.part_size)
                return {n: PartReceipt(number=n, size=plan.bounds(n)[1]) for n in range(1, plan.count + 1)}
            new = 0
            for part in page.get("Parts") or []:
                number = int(part["PartNumber"])
                if number not in held:
                    new += 1
                etag = str(part.get("ETag") or "")
                if self._backend.checksum_field and part.get(self._backend.checksum_field):
                    self._checksums[number] = str(part[self._backend.checksum_field])
                held[number] = PartReceipt(number=number, size=int(part["Size"]), etag=etag,
                                           md5=etag_md5(etag) if self._backend.etag_is_md5 else None)
            if not page.get("IsTruncated") or not new:
                return held
            marker = int(page.get("NextPartNumberMarker") or max(held))

    def _completed_before(self) -> bool:
        """An object under the key with this file's size and source mtime: likely this
        upload, completed by a run that was killed before it could journal that."""
        head = self._backend.head(self._key)
        if head is None or int(head.get("ContentLength", -1)) != self._item.size:
            return False
        meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        return meta.get(META_MTIME) == format_mtime(self._item.mtime_ns)

    def send_part(self, part: Part) -> PartReceipt:
        if self._gone:
            raise SessionGone(f"{self._key}: upload {self.handle} is gone")
        self._empty = False
        body: BinaryIO | bytes = part.body
        md5 = part.md5
        if md5 is None:  # the engine hashes parts for us (part_checksum); this is a fallback
            if isinstance(body, io.BytesIO):  # a part in memory: hashed where it lies
                md5 = hashlib.md5(body.getvalue()).hexdigest()
            else:  # a part streamed from disk: read it once, into memory
                body = body.read()
                md5 = hashlib.md5(body).hexdigest()
        if self._backend.checksum_args and not isinstance(body, bytes):
            # botocore reads the body for a flexible checksum before sending it: give it
            # bytes, so the part's stream (which counts what is sent) is read once
            body = body.read()
        if not isinstance(body, bytes):
            body = _WholePart(body, part.size)
        answer = self._backend.call(f"part {part.number}", "upload_part", Key=self._key, UploadId=self.handle,
                                    PartNumber=part.number, Body=body, ContentLength=part.size,
                                    ContentMD5=_b64(md5), **self._backend.checksum_args)
        etag = str(answer.get("ETag") or "")
        if self._backend.checksum_field and answer.get(self._backend.checksum_field):
            self._checksums[part.number] = str(answer[self._backend.checksum_field])
        if self._backend.etag_is_md5 and etag_md5(etag) != md5:
            raise TransientError(f"part {part.number}: server's ETag {etag} is not the part's MD5 {md5}",
                                 reason="checksum")
        return PartReceipt(number=part.number, size=part.size, etag=etag, md5=md5)

    def complete(self, parts: Sequence[PartReceipt], md5_hex: str) -> RemoteFile:
        """One HEAD first: an object that already holds exactly these bytes is not written
        again. That is how a completion whose answer was lost (to a crash or the network)
        is recognised when it is tried again: sent again, it would find no upload
        (NoSuchUpload on AWS and rclone, 500 on s3rver; moto completes it twice)."""
        backend, key, size = self._backend, self._key, self._item.size
        there, same = backend.existing(key, size=size, md5_hex=md5_hex, parts=parts)
        if same is not None:
            if not self._gone:
                self.abort()
            log.info("%s: the object already holds these bytes; not written again", key)
            return self._with_metadata(same, md5_hex)
        if self._gone:
            raise SessionGone(f"{key}: upload {self.handle} is gone and the object is not this file")
        if there and backend.settings.on_conflict == "fail":
            raise backend.conflict_error(key)
        conditional = {"IfNoneMatch": "*"} if backend.settings.on_conflict == "fail" else {}
        listing = [{"PartNumber": p.number, "ETag": p.etag} for p in parts]
        if self._backend.checksum_field:
            for entry in listing:
                if entry["PartNumber"] in self._checksums:
                    entry[self._backend.checksum_field] = self._checksums[entry["PartNumber"]]
        try:
            backend.call("complete", "complete_multipart_upload", Key=key, UploadId=self.handle,
                         MultipartUpload={"Parts": listing}, **conditional)
        except PermanentError as exc:
            if "PreconditionFailed" in str(exc) or "HTTP 412" in str(exc):
                raise backend.conflict_error(key) from exc
            raise
        return self._verify(parts, md5_hex)

    def _verify(self, parts: Sequence[PartReceipt], md5_hex: str) -> RemoteFile:
        """HEAD after the completion: the size, and the whole-file MD5 where it tells one."""
        backend, key = self._backend, self._key
        head = backend.head(key)
        if head is None:
            raise TransientError(f"{key}: completed, but HEAD finds no object", reason="protocol")
        stored = int(head.get("ContentLength", -1))
        if stored != self._item.size:
            raise ChecksumMismatch(f"{key}: server holds {stored} bytes, expected {self._item.size}")
        md5 = backend.stored_md5(head)
        if md5 is not None and md5 != md5_hex:
            raise ChecksumMismatch(f"{key}: server holds MD5 {md5}, expected {md5_hex}")
        if md5 is None and backend.etag_is_md5 and not backend.matches_parts(head, parts):
            raise ChecksumMismatch(f"{key}: server's ETag {head.get('ETag')} is not that of the parts sent")
        remote = RemoteFile(name=key, size=stored, md5=md5_hex, location=f"s3://{backend.bucket}/{key}",
                            verified="md5" if md5 == md5_hex else "part-checksum")
        return self._with_metadata(remote, md5_hex, told=md5 is not None)

    def _with_metadata(self, remote: RemoteFile, md5_hex: str, *, told: bool = False) -> RemoteFile:
        if told or remote.verified == "md5" or self._item.size > COPY_MAX:
            return remote
        self._backend.add_md5_metadata(self._key, self._item, md5_hex)
        return remote

    def abort(self) -> None:
        try:
            self._backend.call("abort", "abort_multipart_upload", Key=self._key, UploadId=self.handle)
        except (UploadError, OSError) as exc:  # best effort: a lifecycle rule ends the rest
            log.debug("%s: abort of upload %s failed: %s", self._key, self.handle, exc)


PROTOCOL = ProtocolEntry("s3", Settings, S3Backend.from_settings)
