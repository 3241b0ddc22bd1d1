"""Settings shared by every service; each service extends ServiceSettings with its own."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from services.common.channels import grpc_target

ENV_PREFIX = "GENMESH_"
# What GENMESH_LOG_LEVEL may name, most severe first.
_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
# The databases open_database opens (sqlite+aiosqlite: an older name of the same file).
_DATABASE_SCHEMES = frozenset({"sqlite", "sqlite+aiosqlite", "postgresql+asyncpg"})
# The most replicas JetStream keeps of a stream.
MAX_NATS_REPLICAS = 5


def _address(value: str) -> str:
    grpc_target(value)  # ValueError for no port, or a list gRPC cannot take
    return value


# Another service's gRPC address: host:port, a gRPC URI (dns:///router:50051 reaches every
# replica the name resolves to), or several IP:port, comma-separated. Always with a port.
ServiceAddress = Annotated[str, AfterValidator(_address)]


def _listen(value: str) -> str:
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError("must be host:port, the port 0 to 65535 (0 picks a free one)")
    return value


# Where a service listens: host:port (an IPv6 host in brackets). gRPC and uvicorn took a bad
# one apart only as they bound it, with a traceback, and a port past 65535 as another port.
ListenAddress = Annotated[str, AfterValidator(_listen)]
# The same, or empty for none.
OptionalListenAddress = Annotated[str, AfterValidator(lambda value: value and _listen(value))]


class ServiceSettings(BaseSettings):
    """Read from GENMESH_* environment variables, once, in a service's main()."""

    model_config = SettingsConfigDict(env_prefix="GENMESH_", extra="ignore", frozen=True)

    # Where embedded-mode files live (SQLite databases, blobs, the private NATS store).
    data_dir: Path = Path(".genmesh")
    log_level: str = "INFO"
    # Seconds a stopping gRPC server gives in-flight calls before cancelling them.
    shutdown_grace: float = 5.0
    # "uvloop" (faster per socket event and callback) or "asyncio".
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.upper() not in _LEVELS:
            raise ValueError(f"must be one of {', '.join(_LEVELS)}")
        return value

    @field_validator("data_dir")
    @classmethod
    def _a_directory(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError("is a file, not a directory")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only what from_env passes in: the environment is read once, explicitly, in main().
        return (init_settings,)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Self:
        """Build settings from an explicit environment (tests pass their own)."""
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in env:
                values[name] = env[key]
        return cls(**values)

    @classmethod
    def load(cls, env: Mapping[str, str]) -> Self:
        """from_env for a service's main(): a bad setting exits 1 with a line per variable,
        its name and what is wrong. Pydantic's copy of the value is left out: a URL or key
        may hold a secret."""
        try:
            return cls.from_env(env)
        except ValidationError as exc:
            for error in exc.errors(include_input=False, include_url=False):
                variable = ENV_PREFIX + str(error["loc"][0]).upper()
                message = error["msg"].removeprefix("Value error, ")
                print(f"cannot start: {variable}: {message}", file=sys.stderr)
            raise SystemExit(1) from None


class BusSettings(ServiceSettings):
    """Settings of a service that talks to NATS."""

    nats_url: str = "nats://127.0.0.1:4222"
    # Prefixes every stream, subject, consumer and bucket, so meshes can share a server.
    # Letters, digits, "-" and "_", in parts joined by dots: anything else (a space, a NATS
    # wildcard) cannot be part of a subject or, dots made "_", a stream's name.
    nats_prefix: str = Field(default="genmesh", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    # JetStream replicas for streams this service creates (3 on a cluster).
    nats_replicas: int = 1

    @field_validator("nats_replicas")
    @classmethod
    def _replicas_jetstream_takes(cls, value: int) -> int:
        # JetStream refuses more than 5 only when a stream is made, deep in start-up.
        if not 1 <= value <= MAX_NATS_REPLICAS:
            raise ValueError(f"must be 1 to {MAX_NATS_REPLICAS} (3 on a cluster)")
        return value


class DatabaseSettings(ServiceSettings):
    """Settings of a service that owns tables."""

    # Empty: SQLite under data_dir. Or e.g. postgresql+asyncpg://user@host/db.
    database_url: str = ""
    # PostgreSQL schema to use (created if missing); empty means the default search_path.
    database_schema: str = ""

    @field_validator("database_url")
    @classmethod
    def _a_database_url(cls, value: str) -> str:
        # What open_database can open (the driver is the URL's scheme). The URL is left out
        # of the message: it may hold a password.
        scheme, sep, _ = value.partition("://")
        if value and (not sep or scheme not in _DATABASE_SCHEMES):
            raise ValueError(
                "must be empty (SQLite under the data dir), sqlite:///PATH or "
                "postgresql+asyncpg://USER@HOST/DB"
            )
        return value
