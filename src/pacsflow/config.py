"""Settings: named Orthanc servers, DICOM modalities, ledger URL and limits, from TOML and PACSFLOW_* env."""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pacsflow.errors import ConfigError
from pacsflow.pacing import TimeWindow, name_key, parse_rate

DEFAULT_CONFIG_NAME = "pacsflow.toml"
LEDGER_FILE = Path(".pacsflow") / "ledger.db"
ENV_PREFIX = "PACSFLOW_"
#: PACSFLOW_* variables that are not settings: which config file, which Orthanc program (tests, demo)
NOT_SETTINGS = frozenset({"config", "orthanc_binary"})
#: fields pacsflow fills in itself: a config file or an environment variable setting them is a mistake
_INTERNAL_FIELDS = frozenset({"config_path", "name"})
_TABLES = {"servers": "server", "modalities": "modality"}
#: tables of settings that are one entry, not named entries: `[anonymize]`
_SECTIONS = ("anonymize",)
_DEFAULT_PORTS = {"http": 80, "https": 443}
_USERINFO = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*@")
_BOOL_TEXT = dict.fromkeys(("true", "yes", "on", "1"), True) | dict.fromkeys(
    ("false", "no", "off", "0"), False
)
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str | float) -> float:
    """Seconds from a number of seconds or a text like '90', '90s', '30m', '1h', '1h30m'."""
    seconds = math.nan
    if isinstance(text, int | float) and not isinstance(text, bool):  # True is an int, not a duration
        seconds = float(text)
    elif isinstance(text, str):
        spoken = text.strip().lower()
        match = _DURATION.fullmatch(spoken)
        if re.fullmatch(r"\d+(?:\.\d+)?", spoken):
            seconds = float(spoken)
        elif spoken and match:
            hours, minutes, secs = (float(part) if part else 0.0 for part in match.groups())
            seconds = hours * 3600 + minutes * 60 + secs
    if not math.isfinite(seconds):
        raise ConfigError(f"bad duration {text!r}: write seconds (90) or a text like 90s, 30m, 1h, 1h30m")
    return seconds


def _reported(parse: Callable[[Any], Any], value: Any) -> Any:
    """PARSE(VALUE), its ConfigError turned into the ValueError pydantic reports with the setting's place."""
    try:
        return parse(value)
    except ConfigError as exc:
        raise ValueError(exc.reason) from None


def _valid_rate(text: str) -> str:
    _reported(parse_rate, text)
    return text


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
        try:
            parts.port  # noqa: B018 - urllib checks the port only when asked for it
        except ValueError:
            raise ValueError(f"bad port in {redact_url(value)!r}") from None
        return value.rstrip("/")

    @model_validator(mode="after")
    def _credentials_out_of_the_url(self) -> ServerConfig:
        # http://user:pw@host in a config file: the login goes where the rest of pacsflow looks for it
        # (check, 401 advice, the payload channel), and the URL shown in messages has no password
        parts = urlsplit(self.url)
        if parts.username is None and parts.password is None:
            return self
        if not self.user and parts.username:
            self.user = unquote(parts.username)
        if self.password is None and parts.password is not None:
            self.password = SecretStr(unquote(parts.password))
        self.url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        return self

    @field_validator("verify_tls", mode="before")
    @classmethod
    def _tls_flag(cls, value: Any) -> Any:
        # An environment twin is always text: "false" must turn checks off, not name a CA bundle "false".
        if isinstance(value, str) and value.strip().lower() in _BOOL_TEXT:
            return _BOOL_TEXT[value.strip().lower()]
        if isinstance(value, str) and not Path(value).expanduser().exists():
            raise ValueError(f"no CA bundle at {value!r} (give a PEM file or folder, true or false)")
        return value

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
        address = f"{self.aet}@{self.host}:{self.port}"
        return address if self.name in ("", address) else f"{self.name} ({address})"


class AnonymizeConfig(BaseModel):
    """`[anonymize]`: the project secret and how pseudonyms and UIDs look (see pacsflow.anonymize)."""

    model_config = ConfigDict(extra="forbid")

    # keys every pseudonym, UID and date shift: never printed, logged or stored in the ledger
    secret: SecretStr | None = None
    uid_root: str = "2.25"
    pseudonym: str = "ANON-{hash}"
    options: list[str] = Field(default_factory=lambda: ["retain-long-modified-dates"])
    max_date_shift: int = Field(default=3650, ge=1, le=36500)

    @field_validator("options", mode="before")
    @classmethod
    def _option_list(cls, value: Any) -> Any:
        # an environment twin is text: "clean-descriptors, retain-uids"
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("options")
    @classmethod
    def _known_options(cls, value: list[str]) -> list[str]:
        from pacsflow.anonymize.profile import check_options

        _checked(check_options, value)
        return value

    @field_validator("uid_root")
    @classmethod
    def _root(cls, value: str) -> str:
        from pacsflow.anonymize.keys import check_uid_root

        return _checked(check_uid_root, value)

    @field_validator("pseudonym")
    @classmethod
    def _format(cls, value: str) -> str:
        from pacsflow.anonymize.keys import check_format

        return _checked(check_format, value)


def _checked(check: Callable[[Any], Any], value: Any) -> Any:
    """CHECK(VALUE), its ConfigError as the ValueError a validator raises (pydantic then names the key)."""
    try:
        return check(value)
    except ConfigError as exc:
        raise ValueError(exc.reason) from None


class Settings(BaseSettings):
    """Everything pacsflow reads from `pacsflow.toml`; each value has a PACSFLOW_* environment twin.

    The environment is merged in by `load_settings`, which knows where each value came from; a Settings
    built directly takes only the values it is given.
    """

    model_config = SettingsConfigDict(extra="forbid")

    aet: str = Field(default="PACSFLOW", min_length=1, max_length=16)
    port: int = Field(default=11112, gt=0, lt=65536)
    # a PostgreSQL URL may hold a password, hence no repr
    ledger: str = Field(default_factory=lambda: default_ledger(None), repr=False)
    workers: int = Field(default=4, ge=1, le=256)
    retries: int = Field(default=5, ge=1, le=100)
    window: str | None = None
    rate_limits: dict[str, Annotated[str, AfterValidator(_valid_rate)]] = Field(default_factory=dict)
    log_phi: bool = False
    heartbeat_url: str | None = Field(default=None, repr=False)  # heartbeat URLs embed a secret token
    give_up_after: float = Field(default=3600.0, gt=0)
    servers: dict[str, ServerConfig] = Field(default_factory=dict)
    modalities: dict[str, ModalityConfig] = Field(default_factory=dict)
    anonymize: AnonymizeConfig = Field(default_factory=AnonymizeConfig)
    config_path: str | None = None
    #: credentials taken out of URL specs by public_spec: normalized URL -> (user, password), memory only
    _remembered: dict[str, tuple[str | None, SecretStr | None]] = PrivateAttr(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # pydantic-settings would add PACSFLOW_SERVERS__PACS1__... as a new lowercase server "pacs1";
        # load_settings merges the environment into the configured entries instead.
        return (init_settings,)

    @field_validator("window")
    @classmethod
    def _valid_window(cls, value: str | None) -> str | None:
        if value is not None:
            _reported(TimeWindow, value)
        return value

    @field_validator("heartbeat_url")
    @classmethod
    def _heartbeat(cls, value: str | None) -> str | None:
        # never quoted back: a heartbeat URL carries its check's secret token
        if value is not None and (
            urlsplit(value).scheme not in ("http", "https") or not urlsplit(value).netloc
        ):
            raise ValueError("not an http(s) URL (like https://hc-ping.com/<uuid>)")
        return value

    @field_validator("give_up_after", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return _reported(parse_duration, value)

    def model_post_init(self, __context: Any) -> None:
        for name, server in self.servers.items():
            server.name = name
        for name, modality in self.modalities.items():
            modality.name = name

    def server(self, spec: str) -> ServerConfig:
        """A configured server by name, or an ad-hoc one from a URL (`http://user:pass@host:8042`).

        A URL without credentials gets those public_spec took out of it, else those of the configured
        server with that URL, else none.
        """
        if "://" in spec:
            return self._url_server(spec)
        key = find_name(spec, self.servers)
        if key is None:
            hint = did_you_mean(spec, self.servers) or did_you_mean(spec, self.modalities).replace(
                "did you mean ", "did you mean the modality "
            )
            raise ConfigError(
                f"unknown server {spec!r}{hint} "
                f"(known: {_known(self.servers)}); give a name from the config or a URL"
            )
        return self.servers[key]

    def _url_server(self, spec: str) -> ServerConfig:
        server = server_from_url(spec)
        if _USERINFO.match(spec):
            return server
        key = url_key(spec)
        if key in self._remembered:
            user, password = self._remembered[key]
            return server.model_copy(update={"user": user, "password": password})
        for configured in self.servers.values():
            if url_key(configured.url) == key:
                # its name too: rate limits and outage messages know the server by it
                return configured.model_copy(update={"url": server.url})
        return server

    def modality(self, spec: str) -> ModalityConfig:
        """A configured DICOM node by name, or an ad-hoc one from `AET@host:port`."""
        match = re.fullmatch(r"([^@]{1,16})@([^:]+):(\d{1,5})", spec)
        if match:
            return ModalityConfig(aet=match[1], host=match[2], port=int(match[3]), name=spec)
        key = find_name(spec, self.modalities)
        if key is None:
            raise ConfigError(
                f"unknown modality {spec!r}{did_you_mean(spec, self.modalities)} "
                f"(known: {_known(self.modalities)}); give a name or AET@host:port"
            )
        return self.modalities[key]

    def is_modality(self, spec: str) -> bool:
        """True when SPEC names a DICOM node rather than an Orthanc server."""
        if "://" in spec:
            return False
        return (
            bool(re.fullmatch(r"[^@]{1,16}@[^:]+:\d{1,5}", spec))
            or find_name(spec, self.modalities) is not None
        )

    def rate_limit(self, spec: str) -> float | None:
        """Requests per second allowed to the remote named SPEC (`[rate_limits]`), or None."""
        key = find_name(spec, self.rate_limits)
        return parse_rate(self.rate_limits[key]) if key is not None else None

    def public_spec(self, spec: str) -> str:
        """SPEC without user and password, safe to store; they are remembered here for server(SPEC)."""
        if not _USERINFO.match(spec):
            return spec
        self._remembered[url_key(spec)] = _credentials(spec)
        return _without_userinfo(spec)


def scrub_params(settings: Settings, params: Any) -> Any:
    """A deep copy of PARAMS with every URL holding credentials replaced by settings.public_spec of it."""
    if isinstance(params, str):
        return settings.public_spec(params)
    if isinstance(params, Mapping):
        return {scrub_params(settings, key): scrub_params(settings, value) for key, value in params.items()}
    if isinstance(params, list | tuple):
        scrubbed = [scrub_params(settings, value) for value in params]
        return tuple(scrubbed) if isinstance(params, tuple) else scrubbed
    return copy.deepcopy(params)


def find_name(name: str, names: Iterable[str]) -> str | None:
    """The one of NAMES that NAME means (see name_key), or None."""
    wanted = name_key(name)
    return next((key for key in names if name_key(key) == wanted), None)


def did_you_mean(name: str, names: Iterable[str]) -> str:
    """' (did you mean X?)' for the one of NAMES closest to NAME, or ''."""
    keys = {name_key(key): key for key in names}
    close = difflib.get_close_matches(name_key(name), list(keys), n=1, cutoff=0.6)
    return f" (did you mean {keys[close[0]]!r}?)" if close else ""


def _known(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none configured"


def url_key(url: str) -> str:
    """URL as credentials are remembered under: no userinfo, lowercase scheme and host, explicit port,
    no query and no trailing slash."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    host = parts.netloc.rpartition("@")[2].lower()
    try:
        default = parts.port is None and scheme in _DEFAULT_PORTS
    except ValueError:  # a malformed port stays as written: the key only has to be the same each time
        default = False
    if default:
        host = f"{host}:{_DEFAULT_PORTS[scheme]}"
    return urlunsplit((scheme, host, parts.path.rstrip("/"), "", ""))


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _credentials(url: str) -> tuple[str | None, SecretStr | None]:
    parts = urlsplit(url)
    user = unquote(parts.username) if parts.username else None
    password = SecretStr(unquote(parts.password)) if parts.password else None
    return user, password


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***` (safe to print), even when it is malformed."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"(://[^:/@\s]*):[^@/\s]*@", r"\1:***@", url)
    userinfo, at, host = parts.netloc.rpartition("@")
    if not at:
        return url
    user, colon, _ = userinfo.partition(":")
    redacted = f"{user}:***@" if colon else f"{user}@"
    return urlunsplit(parts._replace(netloc=redacted + host))


def server_from_url(spec: str) -> ServerConfig:
    """A ServerConfig from a URL, taking credentials out of it. Raises ConfigError for a malformed one."""
    try:
        parts = urlsplit(spec)
    except ValueError as exc:  # `http://[::1` and the like
        raise ConfigError(f"bad server URL {redact_url(spec)!r}: {exc}") from None
    # the host is case-insensitive; lower case as before, and IPv6 brackets and the port stay as written
    clean = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2].lower(), parts.path, "", ""))
    user, password = _credentials(spec)
    try:
        return ServerConfig(url=clean, user=user, password=password, name=clean.rstrip("/"))
    except ValidationError as exc:
        raise ConfigError(f"bad server URL {redact_url(spec)!r}: {_describe(exc.errors()[0])}") from None


def default_ledger(config_path: Path | None) -> str:
    """Where runs are recorded unless `ledger` says otherwise: beside the config file in its folder's
    `.pacsflow/ledger.db`, else in the user's data directory ($XDG_DATA_HOME, ~/.local/share), so that
    one setup finds its runs from any working folder."""
    if config_path is not None:
        return f"sqlite:///{config_path.resolve().parent / LEDGER_FILE}"
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return f"sqlite:///{Path(data_home).resolve() / 'pacsflow' / 'ledger.db'}"


def absolute_sqlite_url(url: str, base: Path) -> str:
    """A relative SQLite path made absolute against BASE (a ledger must not move with the working
    folder); any other URL as it is."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url == f"{prefix}:memory:":
        return url
    path = Path(url[len(prefix) :])
    return url if path.is_absolute() else f"{prefix}{(base / path).resolve()}"


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
    """Settings from TOML (if any), then PACSFLOW_* environment twins, then OVERRIDES (the command line).

    Raises ConfigError naming the file or the environment variable a bad or unknown value came from.
    """
    config_path = find_config_path(path)
    where = str(config_path) if config_path else "settings"
    data = _read_toml(config_path) if config_path is not None else {}
    problems = _file_problems(data)
    if problems:
        raise ConfigError(f"{where}: {problems[0]}{_more(len(problems))}")
    if config_path is not None:
        _paths_from_the_file_folder(data, config_path.resolve().parent)
    origins = _merge_environment(data, os.environ)
    for key, value in overrides.items():
        if value is not None:
            data[key] = value
            origins[(key,)] = f"--{key.replace('_', '-')}"
    if config_path is not None:
        data["config_path"] = str(config_path.resolve())
    from_file = origins.get(("ledger",)) is None
    if "ledger" not in data:
        data["ledger"] = default_ledger(config_path)
    elif isinstance(data["ledger"], str):
        base = config_path.resolve().parent if from_file and config_path is not None else Path.cwd()
        data["ledger"] = absolute_sqlite_url(data["ledger"], base)
    try:
        return Settings(**data)
    except ValidationError as exc:
        errors = sorted(exc.errors(), key=lambda error: error.get("type") != "extra_forbidden")
        first = errors[0]
        loc = tuple(str(part) for part in first.get("loc", ()))
        origin = next((origins[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origins), None)
        if origin is None:
            text = f"{where}: {_describe(first)}"
        else:
            text = f"{origin}: {_describe(first, with_loc=False)}"
        raise ConfigError(text + _more(len(errors))) from None


def _paths_from_the_file_folder(data: dict[str, Any], folder: Path) -> None:
    """A relative CA bundle path in the file means the file's folder, as a relative ledger path does."""
    for entry in _table(data, "servers").values():
        verify = entry.get("verify_tls") if isinstance(entry, dict) else None
        if isinstance(verify, str) and verify.strip().lower() not in _BOOL_TEXT:
            path = Path(verify).expanduser()
            entry["verify_tls"] = str(path if path.is_absolute() else folder / path)


def _read_toml(config_path: Path) -> dict[str, Any]:
    try:
        with open(config_path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {config_path.resolve()}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:  # a binary file is not TOML either
        raise ConfigError(f"{config_path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{config_path}: cannot read: {exc.strerror}") from None


def _settable(model: type[BaseModel]) -> list[str]:
    return [name for name in model.model_fields if name not in _INTERNAL_FIELDS]


def _table(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name)
    return value if isinstance(value, dict) else {}  # not a table: validation says so, with its place


def _unknown(loc: str, key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{loc}: unknown setting{hint}"


def _file_problems(data: Mapping[str, Any]) -> list[str]:
    """Keys of a config file that no setting reads, and names that mean the same remote twice."""
    allowed = _settable(Settings)
    problems = [_unknown(key, key, allowed) for key in data if key not in allowed]
    for table, kind in _TABLES.items():
        fields = _settable(_model(table))
        seen: dict[str, str] = {}
        for name, entry in _table(data, table).items():
            if name_key(name) in seen:
                problems.append(
                    f"{table}: {seen[name_key(name)]!r} and {name!r} name the same {kind} "
                    "(case and -/_ do not count)"
                )
            seen[name_key(name)] = name
            if isinstance(entry, dict):
                problems += [
                    _unknown(f"{table}.{name}.{key}", key, fields) for key in entry if key not in fields
                ]
    for section in _SECTIONS:
        fields = _settable(_SECTION_MODELS[section])
        problems += [
            _unknown(f"{section}.{key}", key, fields) for key in _table(data, section) if key not in fields
        ]
    for key in _table(data, "rate_limits"):
        if _remote(data, key) is None:
            problems.append(f"rate_limits.{key}: {_no_remote(data)}")
    return problems


_SECTION_MODELS: dict[str, type[BaseModel]] = {"anonymize": AnonymizeConfig}


def _model(table: str) -> type[BaseModel]:
    return ServerConfig if table == "servers" else ModalityConfig


def _remote(data: Mapping[str, Any], name: str) -> str | None:
    """The configured server or modality NAME means, or None."""
    return find_name(name, [*_table(data, "servers"), *_table(data, "modalities")])


def _no_remote(data: Mapping[str, Any]) -> str:
    known = ", ".join(sorted([*_table(data, "servers"), *_table(data, "modalities")])) or "none configured"
    return f"names no configured server or modality (known: {known})"


def _merge_environment(data: dict[str, Any], environ: Mapping[str, str]) -> dict[tuple[str, ...], str]:
    """Put each PACSFLOW_* twin's value into DATA at the entry it names; return where each value came from.

    PACSFLOW_CONFIG and PACSFLOW_ORTHANC_BINARY are not settings and are left alone; any other
    PACSFLOW_* variable that names no setting is a typo and an error (a silently ignored PACSFLOW_RETRYS
    would leave the user believing it took effect). A twin may change a configured server or modality,
    never create one.
    """
    origins: dict[tuple[str, ...], str] = {}
    settable = _settable(Settings)
    for variable in sorted(environ):
        if not variable.upper().startswith(ENV_PREFIX):
            continue
        parts = [part.lower() for part in variable[len(ENV_PREFIX) :].split("__")]
        origin = f"environment variable {variable}"
        if parts[0] in NOT_SETTINGS:
            continue
        if parts[0] not in settable:
            raise ConfigError(_unknown(origin, parts[0], sorted(settable)))
        if parts[0] in _TABLES:
            loc = _entry_loc(data, parts, origin)
        elif parts[0] == "rate_limits":
            loc = _rate_limit_loc(data, parts, origin)
        elif parts[0] in _SECTIONS:
            loc = _section_loc(parts, origin)
        elif len(parts) == 1:
            loc = (parts[0],)
        else:
            raise ConfigError(f"{origin}: {parts[0]} has no parts to set")
        *path, key = loc
        target: Any = data
        for part in path:
            target = target.setdefault(part, {})
        if isinstance(target, dict):  # else the file's own value is wrong: validation says so, with its name
            target[key] = environ[variable]
            origins[loc] = origin
    return origins


def _entry_loc(data: dict[str, Any], parts: list[str], origin: str) -> tuple[str, str, str]:
    """Where PACSFLOW_SERVERS__<NAME>__<KEY> goes: the configured entry NAME means."""
    table = parts[0]
    if len(parts) != 3:
        raise ConfigError(f"{origin}: write one value per variable, like {ENV_PREFIX}SERVERS__MAIN__PASSWORD")
    name = find_name(parts[1], _table(data, table))
    if name is None:
        known = ", ".join(sorted(_table(data, table))) or "none configured"
        raise ConfigError(
            f"{origin}: no {_TABLES[table]} {parts[1]!r} configured (known: {known}); "
            f"the environment sets values of configured {table} only"
        )
    fields = _settable(_model(table))
    if parts[2] not in fields:
        raise ConfigError(f"{origin}: {_unknown(f'{table}.{name}.{parts[2]}', parts[2], fields)}")
    return table, name, parts[2]


def _section_loc(parts: list[str], origin: str) -> tuple[str, str]:
    """Where PACSFLOW_ANONYMIZE__<KEY> goes."""
    fields = _settable(_SECTION_MODELS[parts[0]])
    if len(parts) != 2:
        raise ConfigError(f"{origin}: write one value per variable, like {ENV_PREFIX}ANONYMIZE__SECRET")
    if parts[1] not in fields:
        raise ConfigError(f"{origin}: {_unknown(f'{parts[0]}.{parts[1]}', parts[1], fields)}")
    return parts[0], parts[1]


def _rate_limit_loc(data: dict[str, Any], parts: list[str], origin: str) -> tuple[str, str]:
    """Where PACSFLOW_RATE_LIMITS__<NAME> goes: the file's key for that remote, else its configured name."""
    if len(parts) != 2:
        raise ConfigError(f"{origin}: write one limit per variable, like {ENV_PREFIX}RATE_LIMITS__MAIN")
    remote = _remote(data, parts[1])
    if remote is None:
        raise ConfigError(f"{origin}: {_no_remote(data)}")
    return "rate_limits", find_name(remote, _table(data, "rate_limits")) or remote


def _more(count: int) -> str:
    return f" (and {count - 1} more)" if count > 1 else ""


def _describe(error: Mapping[str, Any], *, with_loc: bool = True) -> str:
    """One pydantic error as `place: message` (never its input, which may be a password)."""
    loc = ".".join(str(part) for part in error.get("loc", ()))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        message = "unknown setting"
    return f"{loc}: {message}" if loc and with_loc else message
