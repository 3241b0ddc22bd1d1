"""Settings shared by every service; each service extends ServiceSettings with its own."""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import AfterValidator, Field, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from services.common.channels import grpc_target

ENV_PREFIX = "GENMESH_"


def _address(value: str) -> str:
    grpc_target(value)  # raises ValueError for a list gRPC cannot take
    return value


def _listen(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError("expected host:port, e.g. 127.0.0.1:50051 or [::]:50051 (port 0: any)")
    return value


def _log_level(value: str) -> str:
    if value.upper() not in logging.getLevelNamesMapping():
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def _optional_listen(value: str) -> str:
    return value and _listen(value)


# Where a service's own server listens (optional: "" for none).
ListenAddress = Annotated[str, AfterValidator(_listen)]
OptionalListenAddress = Annotated[str, AfterValidator(_optional_listen)]

# Another service's gRPC address: host:port, a gRPC URI (dns:///router:50051 reaches every
# replica the name resolves to), or several IP:port, comma-separated.
ServiceAddress = Annotated[str, AfterValidator(_address)]


class ServiceSettings(BaseSettings):
    """Read from GENMESH_* environment variables, once, in a service's main()."""

    model_config = SettingsConfigDict(env_prefix="GENMESH_", extra="ignore", frozen=True)

    # Where embedded-mode files live (SQLite databases, blobs, the private NATS store).
    data_dir: Path = Path(".genmesh")
    log_level: Annotated[str, AfterValidator(_log_level)] = "INFO"
    # Seconds a stopping gRPC server gives in-flight calls before cancelling them.
    shutdown_grace: float = 5.0
    # "uvloop" (faster per socket event and callback) or "asyncio".
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"

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


class DatabaseSettings(ServiceSettings):
    """Settings of a service that owns tables."""

    # Empty: SQLite under data_dir. Or e.g. postgresql+asyncpg://user@host/db.
    database_url: str = ""
    # PostgreSQL schema to use (created if missing); empty means the default search_path.
    database_schema: str = ""
