"""Uploading: the protocol-free engine, the retry policy, and one module per protocol."""

from syncd.upload.chunked import ChunkedBackend
from syncd.upload.engine import UploadEngine, UploadJob

__all__ = ["ChunkedBackend", "UploadEngine", "UploadJob"]
