"""Configuration: TOML plus PACSFLOW_* overrides, server and modality specs, clear errors, no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsflow.config import load_settings, redact_url
from pacsflow.errors import ConfigError
from tests.conftest import run_cli


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_toml_values_and_env_overrides(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        workdir / "p.toml",
        'workers = 3\n[servers.main]\nurl = "http://pacs:8042"\nuser = "u"\npassword = "from-file"\n'
        '[modalities.pacs]\naet = "PACS"\nhost = "10.1.1.1"\nport = 104\n',
    )
    monkeypatch.setenv("PACSFLOW_WORKERS", "9")
    monkeypatch.setenv("PACSFLOW_SERVERS__MAIN__PASSWORD", "from-env")
    settings = load_settings(config)
    assert settings.workers == 9
    server = settings.server("main")
    assert server.user == "u"
    assert server.password is not None and server.password.get_secret_value() == "from-env"
    assert "from-env" not in repr(settings) and "from-env" not in server.display
    assert settings.modality("pacs").port == 104
    assert settings.is_modality("pacs") and not settings.is_modality("main")


def test_config_path_from_environment(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(workdir / "elsewhere.toml", 'aet = "MYAET"\n')
    monkeypatch.setenv("PACSFLOW_CONFIG", str(config))
    assert load_settings().aet == "MYAET"


def test_defaults_without_a_file(workdir: Path) -> None:
    settings = load_settings()
    assert settings.aet == "PACSFLOW"
    assert settings.ledger.startswith("sqlite:///.pacsflow/")


def test_server_url_with_credentials_is_split_and_redacted(workdir: Path) -> None:
    server = load_settings().server("http://bob:pa%40ss@host:8042/")
    assert server.url == "http://host:8042"
    assert server.user == "bob"
    assert server.password is not None and server.password.get_secret_value() == "pa@ss"
    assert "pa@ss" not in server.display
    assert redact_url("http://bob:pw@h:1/x") == "http://bob:***@h:1/x"


def test_modality_spec_aet_at_host_port(workdir: Path) -> None:
    modality = load_settings().modality("STORESCP@127.0.0.1:11113")
    assert (modality.aet, modality.host, modality.port) == ("STORESCP", "127.0.0.1", 11113)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("workers = [", "not valid TOML"),
        ("wokers = 3\n", "wokers: unknown setting"),
        ("workers = 0\n", "workers: Input should be greater than or equal to 1"),
        ('[servers.x]\nurl = "ftp://x"\n', "servers.x.url"),
        ('[servers.x]\nuser = "u"\n', "servers.x.url: Field required"),
    ],
)
def test_bad_config_gives_one_clear_error(workdir: Path, text: str, expected: str) -> None:
    config = write(workdir / "bad.toml", text)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    message = str(info.value)
    assert expected in message
    assert str(config) in message
    assert "\n" not in message


def test_unknown_server_name_lists_known_ones(workdir: Path) -> None:
    config = write(workdir / "p.toml", '[servers.main]\nurl = "http://h:1"\n')
    with pytest.raises(ConfigError, match=r"unknown server 'other' \(known: main\)"):
        load_settings(config).server("other")


def test_missing_config_file(workdir: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(workdir / "nope.toml")


def test_cli_bad_config_exits_2_with_one_line(workdir: Path) -> None:
    write(workdir / "pacsflow.toml", "workers = 'many'\n")
    result = run_cli("runs", cwd=workdir)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pacsflow: error: pacsflow.toml: workers")


def test_cli_bad_usage_exits_2(workdir: Path) -> None:
    result = run_cli("populate", "--patients", "2", cwd=workdir)
    assert result.returncode == 2
    assert "exactly one of --to SERVER or --out DIR" in result.stderr
    assert run_cli("no-such-command", cwd=workdir).returncode == 2
