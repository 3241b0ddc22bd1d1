"""The storage service's tables: one row of metadata per asset."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()

assets = Table(
    "assets",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("tenant_id", String(128), nullable=False),
    Column("media_type", String(255), nullable=False),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("width", Integer, nullable=False, default=0),
    Column("height", Integer, nullable=False, default=0),
    Column("duration_seconds", Float, nullable=False, default=0.0),
    Column("filename", String(1024), nullable=False, default=""),
    # A genmesh.v1.AssetRole value.
    Column("role", Integer, nullable=False, default=0),
    Column("job_id", String(128), nullable=False, default=""),
    # NULL when the upload had no key: NULLs never collide in a unique constraint,
    # on SQLite and PostgreSQL alike, so only real keys are de-duplicated.
    Column("idempotency_key", String(256), nullable=True),
    Column("blob_key", String(256), nullable=False),
    Column("create_time", DateTime(timezone=True), nullable=False),
    UniqueConstraint("tenant_id", "idempotency_key", name="uq_assets_tenant_idempotency_key"),
    Index("ix_assets_job_id", "job_id"),
    # Blob cleanup asks "does any row still point at this blob?".
    Index("ix_assets_blob_key", "blob_key"),
)
