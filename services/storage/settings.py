"""Storage settings (GENMESH_* environment variables)."""

from __future__ import annotations

from services.common.settings import DatabaseSettings, ListenAddress
from services.storage.limits import MAX_UPLOAD_BYTES


class Settings(DatabaseSettings):
    # Where this AssetService listens.
    listen: ListenAddress = "127.0.0.1:50052"
    # Blob directory; empty means <data_dir>/blobs.
    storage_dir: str = ""
    # Largest upload accepted, in bytes.
    storage_max_upload_bytes: int = MAX_UPLOAD_BYTES
    # An S3-compatible bucket to keep blobs in instead of storage_dir (needed when storage
    # runs on more than one machine). Credentials come from the usual AWS variables.
    storage_s3_bucket: str = ""
    # The store's address, e.g. http://127.0.0.1:9000 for MinIO; empty means AWS S3.
    storage_s3_endpoint_url: str = ""
    # Empty: botocore's default (AWS_DEFAULT_REGION, the profile, else us-east-1).
    storage_s3_region: str = ""
    # Put before every object's name, e.g. "genmesh/" to share a bucket.
    storage_s3_prefix: str = ""
