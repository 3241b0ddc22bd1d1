"""Storage settings (GENMESH_* environment variables)."""

from __future__ import annotations

from services.common.settings import DatabaseSettings
from services.storage.limits import MAX_UPLOAD_BYTES


class Settings(DatabaseSettings):
    # Where this AssetService listens.
    listen: str = "127.0.0.1:50052"
    # Blob directory; empty means <data_dir>/blobs.
    storage_dir: str = ""
    # Largest upload accepted, in bytes.
    storage_max_upload_bytes: int = MAX_UPLOAD_BYTES
