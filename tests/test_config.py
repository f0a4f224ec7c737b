"""Configuration: TOML plus PACSFLOW_* overrides, server and modality specs, clear errors, no secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pacsflow.config import load_settings, parse_duration, redact_url, scrub_params
from pacsflow.errors import ConfigError
from tests.conftest import cli


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
    assert settings.ledger == f"sqlite:///{workdir / 'xdg-data' / 'pacsflow' / 'ledger.db'}"


def test_the_ledger_lives_beside_the_config_file_whatever_the_working_folder(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = workdir / "project"
    project.mkdir()
    config = write(project / "pacsflow.toml", 'aet = "MYAET"\n')
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert load_settings(config).ledger == f"sqlite:///{project / '.pacsflow' / 'ledger.db'}"
    monkeypatch.chdir(project)
    assert load_settings().ledger == f"sqlite:///{project / '.pacsflow' / 'ledger.db'}"


def test_a_relative_ledger_path_is_read_against_where_it_was_written(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = workdir / "project"
    project.mkdir()
    config = write(project / "pacsflow.toml", 'ledger = "sqlite:///runs/ledger.db"\n')
    assert load_settings(config).ledger == f"sqlite:///{project / 'runs' / 'ledger.db'}"
    # on the command line or in the environment a relative path means the working folder
    assert load_settings(config, ledger="sqlite:///x.db").ledger == f"sqlite:///{workdir / 'x.db'}"
    monkeypatch.setenv("PACSFLOW_LEDGER", "sqlite:///y.db")
    assert load_settings(config).ledger == f"sqlite:///{workdir / 'y.db'}"


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
        ('[servers.a]\nurll = "http://h:1"\n', "servers.a.urll: unknown setting (did you mean 'url'?)"),
        (
            '[modalities.n]\naet = "N"\nhost = "h"\nprot = 104\n',
            "modalities.n.prot: unknown setting (did you mean 'port'?)",
        ),
        ('[servers.a]\nurl = "http://h:1"\nname = "b"\n', "servers.a.name: unknown setting"),
        ('config_path = "x.toml"\n', "config_path: unknown setting"),
        (
            '[servers.main]\nurl = "http://h:1"\n[rate_limits]\nmian = "10/min"\n',
            "rate_limits.mian: names no configured server or modality (known: main)",
        ),
        ('[servers.main]\nurl = "http://h:1"\n[rate_limits]\nmain = "lots"\n', "rate_limits.main: bad rate"),
        (
            '[servers.My-Pacs]\nurl = "http://h:1"\n[servers.my_pacs]\nurl = "http://h:2"\n',
            "servers: 'My-Pacs' and 'my_pacs' name the same server",
        ),
        ('window = "Mon-Fri 25:00-07:00"\n', "window: bad hours"),
        ('give_up_after = "soon"\n', "give_up_after: bad duration 'soon': write seconds (90) or a text like"),
        ("give_up_after = 0\n", "give_up_after: Input should be greater than 0"),
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
    result = cli("runs", cwd=workdir)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pacsflow: error: pacsflow.toml: workers")


def test_cli_bad_usage_exits_2(workdir: Path) -> None:
    result = cli("populate", "--patients", "2", cwd=workdir)
    assert result.returncode == 2
    assert "exactly one of --to SERVER or --out DIR" in result.stderr
    assert cli("no-such-command", cwd=workdir).returncode == 2


def test_names_match_whatever_their_case_and_dashes(workdir: Path) -> None:
    config = write(
        workdir / "p.toml",
        '[servers.PACS1]\nurl = "http://one:8042"\n[servers.my-pacs]\nurl = "http://two:8042"\n'
        '[modalities.Store-SCP]\naet = "STORE"\nhost = "h"\n[rate_limits]\nMY_PACS = "60/min"\n',
    )
    settings = load_settings(config)
    assert settings.server("PACS1").url == "http://one:8042"
    assert settings.server("pacs1").name == "PACS1"
    assert settings.server("MY_PACS").url == "http://two:8042"
    assert settings.modality("store_scp").aet == "STORE"
    assert settings.is_modality("STORE-SCP") and not settings.is_modality("my_pacs")
    assert settings.rate_limit("My-Pacs") == 1.0
    assert settings.rate_limit("pacs1") is None
    with pytest.raises(ConfigError, match=r"unknown server 'other' \(known: PACS1, my-pacs\)"):
        settings.server("other")


def test_env_twins_reach_the_configured_entry(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(
        workdir / "p.toml",
        '[servers.PACS1]\nurl = "http://one:8042"\nuser = "u"\n[servers.my-pacs]\nurl = "http://two:8042"\n'
        '[servers.plain]\nurl = "https://three"\n'
        '[modalities.Store-SCP]\naet = "STORE"\nhost = "h"\n[rate_limits]\nmy-pacs = "60/min"\n',
    )
    monkeypatch.setenv("PACSFLOW_SERVERS__PACS1__PASSWORD", "pw-one")
    monkeypatch.setenv("PACSFLOW_SERVERS__MY_PACS__PASSWORD", "pw-two")
    monkeypatch.setenv("PACSFLOW_SERVERS__PLAIN__VERIFY_TLS", "false")
    monkeypatch.setenv("PACSFLOW_MODALITIES__STORE_SCP__PORT", "11113")
    monkeypatch.setenv("PACSFLOW_RATE_LIMITS__MY_PACS", "10/s")
    monkeypatch.setenv("PACSFLOW_GIVE_UP_AFTER", "90s")
    monkeypatch.setenv("PACSFLOW_ORTHANC_BINARY", "/opt/Orthanc")  # not a setting: left alone
    settings = load_settings(config)
    assert sorted(settings.servers) == ["PACS1", "my-pacs", "plain"]
    first = settings.server("PACS1")
    assert first.user == "u"
    assert first.password is not None and first.password.get_secret_value() == "pw-one"
    second = settings.server("my-pacs").password
    assert second is not None and second.get_secret_value() == "pw-two"
    assert settings.server("plain").verify_tls is False
    assert settings.modality("store-scp").port == 11113
    assert settings.rate_limits == {"my-pacs": "10/s"}
    assert settings.give_up_after == 90.0


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("PACSFLOW_SERVERS__GHOST__PASSWORD", "pw-secret", "no server 'ghost' configured (known: main)"),
        (
            "PACSFLOW_SERVERS__GHOST__URL",
            "http://h:1",
            "the environment sets values of configured servers only",
        ),
        (
            "PACSFLOW_MODALITIES__GHOST__PORT",
            "104",
            "no modality 'ghost' configured (known: none configured)",
        ),
        ("PACSFLOW_SERVERS__MAIN__URLL", "http://h:1", "servers.main.urll: unknown setting"),
        ("PACSFLOW_SERVERS__MAIN", '{"url": "http://h:1"}', "write one value per variable"),
        ("PACSFLOW_RATE_LIMITS__MIAN", "10/min", "names no configured server or modality (known: main)"),
        ("PACSFLOW_WORKERS", "abc", "Input should be a valid integer"),
        ("PACSFLOW_SERVERS__MAIN__TIMEOUT", "-1", "Input should be greater than 0"),
        ("PACSFLOW_GIVE_UP_AFTER", "1 fortnight", "bad duration '1 fortnight'"),
    ],
)
def test_bad_env_twin_is_blamed_on_its_variable(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    config = write(workdir / "p.toml", '[servers.main]\nurl = "http://h:1"\n')
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    message = str(info.value)
    assert message.startswith(f"environment variable {variable}: "), message
    assert expected in message
    assert "pw-secret" not in message


def test_command_line_beats_environment_beats_file(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(workdir / "p.toml", 'ledger = "sqlite:///file.db"\nworkers = 2\nretries = 7\n')
    monkeypatch.setenv("PACSFLOW_LEDGER", "sqlite:///env.db")
    monkeypatch.setenv("PACSFLOW_WORKERS", "3")
    settings = load_settings(config, ledger="sqlite:///cli.db")
    expected = (f"sqlite:///{workdir / 'cli.db'}", 3, 7)
    assert (settings.ledger, settings.workers, settings.retries) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        (90, 90.0),
        (2.5, 2.5),
        ("90s", 90.0),
        ("30m", 1800.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5h", 5400.0),
        (" 2M 5s ", 125.0),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "30m1h", "-5", "1d", "h", True, float("inf")])
def test_parse_duration_rejects_with_the_expected_form(text: str | float) -> None:
    with pytest.raises(ConfigError, match=r"write seconds \(90\) or a text like 90s, 30m, 1h, 1h30m"):
        parse_duration(text)


def test_give_up_after_default_and_from_file(workdir: Path) -> None:
    assert load_settings().give_up_after == 3600.0
    assert load_settings(write(workdir / "p.toml", 'give_up_after = "1h30m"\n')).give_up_after == 5400.0
    assert load_settings(write(workdir / "q.toml", "give_up_after = 2.5\n")).give_up_after == 2.5


def test_public_spec_strips_credentials_and_server_gets_them_back(workdir: Path) -> None:
    settings = load_settings()
    params = {
        "to": "http://bob:s3cret@Host:8042/",
        "from": "main",
        "extra": ["http://amy:pw-two@h2/", ("x", "https://u:pw-three@h3")],
        "workers": 4,
        "study": None,
    }
    scrubbed = scrub_params(settings, params)
    assert scrubbed == {
        "to": "http://Host:8042/",
        "from": "main",
        "extra": ["http://h2/", ("x", "https://h3")],
        "workers": 4,
        "study": None,
    }
    stored = json.dumps(scrubbed)
    assert (
        "s3cret" not in stored and "pw-two" not in stored and "pw-three" not in stored and "bob" not in stored
    )
    assert params["to"] == "http://bob:s3cret@Host:8042/"  # a copy: the caller's params are untouched
    assert settings.public_spec("main") == "main"
    assert settings.public_spec("PACS@10.0.0.5:104") == "PACS@10.0.0.5:104"

    server = settings.server(scrubbed["to"])
    assert (server.url, server.name, server.user) == ("http://host:8042", "http://host:8042", "bob")
    assert server.password is not None and server.password.get_secret_value() == "s3cret"
    # remembered under the normalized URL: case, default port and trailing slash do not matter
    assert settings.server("HTTP://HOST:8042").user == "bob"
    two = settings.server("http://h2:80").password
    assert two is not None and two.get_secret_value() == "pw-two"
    three = settings.server("https://h3:443/").password
    assert three is not None and three.get_secret_value() == "pw-three"
    # memory only: another process (a resume) does not know them
    assert load_settings().server(scrubbed["to"]).password is None


def test_url_of_a_configured_server_gets_its_credentials(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(
        workdir / "p.toml",
        '[servers.main]\nurl = "http://pacs:8042"\nuser = "u"\ntimeout = 7\nverify_tls = false\n',
    )
    monkeypatch.setenv("PACSFLOW_SERVERS__MAIN__PASSWORD", "pw-env")
    settings = load_settings(config)
    server = settings.server("HTTP://PACS:8042/")
    assert (server.url, server.name, server.user, server.timeout) == (
        "http://pacs:8042",
        "main",  # known by its configured name: its rate limit and outage messages follow it
        "u",
        7,
    )
    assert server.password is not None and server.password.get_secret_value() == "pw-env"
    assert server.verify_tls is False
    assert settings.server("main").name == "main"  # the configured entry itself is unchanged
    other = settings.server("http://pacs:8043")
    assert (other.user, other.password) == (None, None)


def test_url_specs_ipv6_bad_port_and_no_password_in_errors(workdir: Path) -> None:
    settings = load_settings()
    assert settings.server("http://u:pw-secret@[::1]:8042/").url == "http://[::1]:8042"
    for spec in ("http://u:pw-secret@h:port", "ftp://u:pw-secret@h"):
        with pytest.raises(ConfigError) as info:
            settings.server(spec)
        assert "pw-secret" not in str(info.value) and "bad server URL" in str(info.value)
    assert redact_url("http://u:pw@h:port/x") == "http://u:***@h:port/x"


def test_secrets_stay_out_of_the_settings_repr(workdir: Path) -> None:
    config = write(
        workdir / "p.toml",
        'ledger = "postgresql://pf:db-secret@db/pacsflow"\nheartbeat_url = "https://hc.example/ping/tok-secret"\n',
    )
    text = repr(load_settings(config))
    assert "db-secret" not in text and "tok-secret" not in text


@pytest.mark.parametrize(
    ("variable", "shown"),
    [
        (
            "PACSFLOW_RETRYS",
            "environment variable PACSFLOW_RETRYS: unknown setting (did you mean 'retries'?)",
        ),
        ("PACSFLOW_GIVE_UP", "environment variable PACSFLOW_GIVE_UP: unknown setting (did you mean"),
    ],
)
def test_a_misspelled_environment_variable_is_an_error(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, variable: str, shown: str
) -> None:
    monkeypatch.setenv(variable, "9")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith(shown)
    monkeypatch.delenv(variable)
    monkeypatch.setenv("PACSFLOW_ORTHANC_BINARY", "/usr/sbin/Orthanc")  # not a setting, but ours: left alone
    assert load_settings().retries == 5
