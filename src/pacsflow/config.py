"""Settings: named Orthanc servers, DICOM modalities, ledger URL and limits, from TOML and PACSFLOW_* env."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pacsflow.errors import ConfigError

DEFAULT_CONFIG_NAME = "pacsflow.toml"
DEFAULT_LEDGER = "sqlite:///.pacsflow/ledger.db"


class ServerConfig(BaseModel):
    """One Orthanc server reached over HTTP(S)."""

    model_config = ConfigDict(extra="forbid")

    url: str
    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    verify_tls: bool | str = True
    timeout: float = Field(default=60.0, gt=0)
    name: str = ""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {redact_url(value)!r}")
        return value.rstrip("/")

    @property
    def display(self) -> str:
        """Name and URL without any secret, for messages."""
        url = redact_url(self.url)
        return url if not self.name or self.name == url else f"{self.name} ({url})"


class ModalityConfig(BaseModel):
    """One DICOM node reached over DIMSE."""

    model_config = ConfigDict(extra="forbid")

    aet: str = Field(min_length=1, max_length=16)
    host: str
    port: int = Field(default=104, gt=0, lt=65536)
    name: str = ""

    @property
    def display(self) -> str:
        return f"{self.name or self.aet} ({self.aet}@{self.host}:{self.port})"


class Settings(BaseSettings):
    """Everything pacsflow reads from `pacsflow.toml`; each value has a PACSFLOW_* environment twin."""

    model_config = SettingsConfigDict(
        env_prefix="PACSFLOW_", env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    aet: str = Field(default="PACSFLOW", min_length=1, max_length=16)
    port: int = Field(default=11112, gt=0, lt=65536)
    ledger: str = DEFAULT_LEDGER
    workers: int = Field(default=4, ge=1, le=256)
    retries: int = Field(default=5, ge=1, le=100)
    window: str | None = None
    rate_limits: dict[str, str] = Field(default_factory=dict)
    log_phi: bool = False
    heartbeat_url: str | None = None
    servers: dict[str, ServerConfig] = Field(default_factory=dict)
    modalities: dict[str, ModalityConfig] = Field(default_factory=dict)
    config_path: str | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The TOML file arrives as init values; the environment must win over it.
        return (env_settings, init_settings)

    def model_post_init(self, __context: Any) -> None:
        for name, server in self.servers.items():
            server.name = name
        for name, modality in self.modalities.items():
            modality.name = name

    def server(self, spec: str) -> ServerConfig:
        """A configured server by name, or an ad-hoc one from a URL (`http://user:pass@host:8042`)."""
        if "://" in spec:
            return server_from_url(spec)
        key = spec.lower()
        if key not in self.servers:
            known = ", ".join(sorted(self.servers)) or "none configured"
            raise ConfigError(
                f"unknown server {spec!r} (known: {known}); give a name from the config or a URL"
            )
        return self.servers[key]

    def modality(self, spec: str) -> ModalityConfig:
        """A configured DICOM node by name, or an ad-hoc one from `AET@host:port`."""
        match = re.fullmatch(r"([^@]{1,16})@([^:]+):(\d{1,5})", spec)
        if match:
            return ModalityConfig(aet=match[1], host=match[2], port=int(match[3]), name=spec)
        key = spec.lower()
        if key not in self.modalities:
            known = ", ".join(sorted(self.modalities)) or "none configured"
            raise ConfigError(f"unknown modality {spec!r} (known: {known}); give a name or AET@host:port")
        return self.modalities[key]

    def is_modality(self, spec: str) -> bool:
        """True when SPEC names a DICOM node rather than an Orthanc server."""
        if "://" in spec:
            return False
        return bool(re.fullmatch(r"[^@]{1,16}@[^:]+:\d{1,5}", spec)) or spec.lower() in self.modalities


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***` (safe to print)."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.password is not None else f"{parts.username}@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def server_from_url(spec: str) -> ServerConfig:
    """A ServerConfig from a URL, taking credentials out of it."""
    parts = urlsplit(spec)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    clean = urlunsplit((parts.scheme, host, parts.path, "", ""))
    try:
        return ServerConfig(
            url=clean,
            user=unquote(parts.username) if parts.username else None,
            password=SecretStr(unquote(parts.password)) if parts.password else None,
            name=clean,
        )
    except ValidationError as exc:
        raise ConfigError(f"bad server URL {redact_url(spec)!r}: {_first_error(exc)}") from None


def find_config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The config file to read: --config, then $PACSFLOW_CONFIG, then ./pacsflow.toml if present."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("PACSFLOW_CONFIG")
    if env:
        return Path(env)
    default = Path(DEFAULT_CONFIG_NAME)
    return default if default.exists() else None


def load_settings(path: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Read settings from TOML (if any) with environment overrides; raise ConfigError on any problem."""
    config_path = find_config_path(path)
    data: dict[str, Any] = {}
    if config_path is not None:
        try:
            with open(config_path, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {config_path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{config_path}: cannot read: {exc.strerror}") from None
        data["config_path"] = str(config_path)
    data.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return Settings(**data)
    except ValidationError as exc:
        where = str(config_path) if config_path else "settings"
        raise ConfigError(f"{where}: {_first_error(exc)}") from None


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(part) for part in first.get("loc", ()))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    message = first.get("msg", "invalid")
    if first.get("type") == "extra_forbidden":
        message = "unknown setting"
    return f"{loc}: {message}{more}" if loc else f"{message}{more}"
