"""What every command shares: global options anywhere, one error style, help in words, no tracebacks,
a ledger found from any folder and never created by a command that only reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pacsflow.cli.conventions import hoist_global_options
from pacsflow.config import ModalityConfig, ServerConfig, Settings
from pacsflow.errors import ConfigError
from pacsflow.sandbox import LocalOrthanc
from tests.conftest import cli, run_cli

COMMANDS = [
    ["populate"], ["upload"], ["download"], ["runs"], ["run"], ["run", "show"], ["resume"], ["retry"],
    ["check"], ["transfer"], ["clone"], ["forward"], ["compare"], ["worker"], ["demo"],
]  # fmt: skip


def test_global_options_move_before_the_command() -> None:
    args = ["upload", "data", "--to", "main", "-q", "--config=x.toml", "--ledger", "sqlite:///l.db"]
    assert hoist_global_options(args) == [
        "-q", "--config=x.toml", "--ledger", "sqlite:///l.db", "upload", "data", "--to", "main",
    ]  # fmt: skip
    assert hoist_global_options(["upload", "--", "-q"]) == ["upload", "--", "-q"]  # a file named -q
    assert hoist_global_options(["runs", "-qv", "-c/etc/p.toml"]) == ["-qv", "-c/etc/p.toml", "runs"]


def test_global_options_work_after_the_command(workdir: Path) -> None:
    result = run_cli(
        "populate", "--out", "files", "--patients", "1", "-q", "--ledger", "sqlite:///l.db", cwd=workdir
    )
    assert result.returncode == 0, result.stderr
    assert " INFO " not in result.stderr  # -q took effect
    assert (workdir / "l.db").exists() and any((workdir / "files").rglob("*.dcm"))  # --ledger too


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_help_speaks_in_words_and_shows_an_example(workdir: Path, command: list[str]) -> None:
    result = cli(*command, "--help", cwd=workdir)
    assert result.returncode == 0
    assert not re.search(r"<(str|int|float|bool|path|list)", result.stdout), result.stdout
    assert "\n  Example: pacsflow " in result.stdout
    assert "Example: pacsflow" not in result.stdout.split("Example: pacsflow", 1)[1].split("\n", 1)[0]


def test_roster_help_says_what_it_needs(workdir: Path) -> None:
    text = " ".join(cli("upload", "--help", cwd=workdir).stdout.split())
    assert "roster rows per batch (needed with --roster)" in text
    assert "patient folders (needed with --roster)" in text


def test_version(workdir: Path) -> None:
    result = cli("--version", cwd=workdir)
    assert result.returncode == 0 and re.fullmatch(r"pacsflow \d+\.\d+\S*\n", result.stdout)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["uplaod", "x"], "No such command 'uplaod'. Did you mean 'upload'? (see `pacsflow --help`)"),
        (
            ["upload", "x", "--too", "a"],
            "No such option: --too (Possible options: --option, --root, --to) (see `pacsflow upload --help`)",
        ),
        (["runs", "--limit", "many"], "(see `pacsflow runs --help`)"),
        (["transfer", "--from", "a"], "Missing option '--to'"),
    ],
)
def test_usage_errors_are_one_line_like_every_other_error(
    workdir: Path, args: list[str], expected: str
) -> None:
    result = cli(*args, cwd=workdir)
    assert result.returncode == 2
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("pacsflow: error: ") and expected in line, line


def test_names_get_a_did_you_mean() -> None:
    settings = Settings(servers={"my-pacs": ServerConfig(url="http://h:1")})
    with pytest.raises(ConfigError, match=r"unknown server 'my-pcas' \(did you mean 'my-pacs'\?\)"):
        settings.server("my-pcas")
    with pytest.raises(ConfigError, match=r"unknown server 'elsewhere' \(known: my-pacs\)"):
        settings.server("elsewhere")
    settings = Settings(modalities={"orthanc-b": ModalityConfig(aet="B", host="h")})
    with pytest.raises(ConfigError, match=r"'orthanc-bx' \(did you mean the modality 'orthanc-b'\?\)"):
        settings.server("orthanc-bx")  # where a server or a node may go (transfer --to)


def bad_inputs(workdir: Path) -> list[list[str]]:
    """Every command with inputs a user may get wrong; each needs a clear line, never a traceback."""
    (workdir / "notdicom.txt").write_text("hello")
    (workdir / "notdicom.bin").write_bytes(bytes(range(256)))
    return [
        ["populate", "--to", "nosuch"],
        ["populate", "--out", "/proc/nope/data"],
        ["populate", "--patients", "0", "--out", "x"],
        ["upload", "/no/such/folder", "--to", "b"],
        ["upload", "--roster", "/no/such.csv", "--root", ".", "--to", "b", "--batch-size", "2"],
        ["upload", "--roster", "notdicom.txt", "--to", "b"],
        ["upload", "--to", "b"],
        ["-c", "notdicom.bin", "runs"],
        ["populate", "--to", "http://[::1"],
        ["download", "--from", "b", "--out", "/proc/nope"],
        ["download", "--from", "nosuch", "--out", "d"],
        ["transfer", "--from", "a", "--to", "a"],
        ["transfer", "--from", "a", "--to", "b", "--via", "pigeon"],
        ["clone", "--from", "a", "--to", "b", "--window", "Mon-Fry"],
        ["forward", "--from", "a", "--to", "b", "--trigger", "sometimes"],
        ["compare", "a", "nosuch"],
        ["compare", "a", "b", "--level", "patient"],
        ["compare", "a", "b", "--out", "/proc/nope/diff.csv"],
        ["runs", "--ledger", "mysql://h/db"],
        ["run", "show", "nosuch"],
        ["resume", "nosuch"],
        ["retry", "nosuch"],
        ["worker", "--once", "--ledger", "sqlite:////proc/nope/ledger.db"],
        ["check", "nosuch"],
        ["-c", "/no/such.toml", "runs"],
        ["--give-up-after", "soon", "runs"],
        ["populate", "--out", "x", "--give-up-after", "soon"],
    ]


def test_no_command_shows_a_traceback_on_bad_input(workdir: Path, config_file: Path) -> None:
    problems = []
    for args in bad_inputs(workdir):
        result = cli(*args, cwd=workdir)
        output = result.stdout + result.stderr
        last = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else ""
        if (
            result.returncode != 2
            or "Traceback" in output
            or "unexpected" in output
            or not last.startswith("pacsflow: error: ")
        ):
            problems.append(f"{' '.join(args)} -> {result.returncode}: {output.strip()[-300:]}")
    assert not problems, "\n".join(problems)


def test_a_bad_ca_bundle_is_one_line(workdir: Path, orthanc_b: LocalOrthanc) -> None:
    https = orthanc_b.url.replace("http://", "https://")
    (workdir / "pacsflow.toml").write_text(f'[servers.s]\nurl = "{https}"\nverify_tls = "/no/such/ca.pem"\n')
    result = cli("check", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr == (
        "pacsflow: error: pacsflow.toml: servers.s.verify_tls: no CA bundle at '/no/such/ca.pem' "
        "(give a PEM file or folder, true or false)\n"
    )
    (workdir / "ca.pem").write_text("not a certificate")
    (workdir / "pacsflow.toml").write_text(f'[servers.s]\nurl = "{https}"\nverify_tls = "ca.pem"\n')
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()  # a relative CA path means the config file's folder, not the working one
    result = cli("-c", str(workdir / "pacsflow.toml"), "check", cwd=elsewhere)
    assert result.returncode == 1 and "Traceback" not in result.stdout + result.stderr
    assert "FAILED: s (https://127.0.0.1:" in result.stdout
    assert f"cannot use verify_tls = '{workdir / 'ca.pem'}'" in result.stdout


def test_an_unforeseen_error_is_one_line_without_patient_data(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pacsflow.api

    def broken(*_args: object, **_kwargs: object) -> None:
        raise KeyError("PF-SECRET-PATIENT")

    monkeypatch.setattr(pacsflow.api.Pacsflow, "runs", broken)
    result = cli("runs", cwd=workdir)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("pacsflow: error: unexpected KeyError at test_cli_conventions.py:")
    assert "PF-SECRET" not in line and "report it" in line
    verbose = cli("runs", "-v", "--log-phi", cwd=workdir)
    assert "Traceback" in verbose.stderr and "PF-SECRET-PATIENT" in verbose.stderr.splitlines()[-1]


def test_read_only_commands_create_no_ledger(workdir: Path) -> None:
    data_ledger = workdir / "xdg-data" / "pacsflow" / "ledger.db"
    result = cli("runs", cwd=workdir)
    assert result.returncode == 0
    assert result.stdout == f"no runs yet in the ledger sqlite:///{data_ledger}\n"
    for args in (["run", "show", "last"], ["resume", "last"], ["retry", "last"]):
        result = cli(*args, cwd=workdir)
        assert result.returncode == 2
        assert f"there is no ledger at {data_ledger} yet" in result.stderr
    assert cli("check", cwd=workdir).returncode == 1  # nothing configured
    assert list(workdir.iterdir()) == [], "a read-only command created files"


def test_runs_are_found_from_any_folder(workdir: Path, config_file: Path) -> None:
    made = run_cli("populate", "--out", "files", "--patients", "1", cwd=workdir)
    assert made.returncode == 0, made.stderr
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    shown = cli("-c", str(config_file), "run", "show", "last", cwd=elsewhere)
    assert shown.returncode == 0 and "populate" in shown.stdout
    missing = cli("-c", str(config_file), "run", "show", "nosuch", cwd=elsewhere)
    ledger = workdir / ".pacsflow" / "ledger.db"
    assert missing.stderr.strip().endswith(f"no run 'nosuch' in ledger sqlite:///{ledger}")
    assert list(elsewhere.iterdir()) == []


def test_a_query_without_equals_is_not_echoed(workdir: Path, config_file: Path) -> None:
    result = cli("transfer", "--from", "a", "--to", "b", "--query", "PatientID:PF-SECRET", cwd=workdir)
    assert result.returncode == 2
    assert result.stderr.startswith("pacsflow: error: --query #1: write TAG=VALUE")
    assert "PF-SECRET" not in result.stderr


@pytest.mark.parametrize(
    ("setting", "expected", "status"),
    [
        ('window = "Mon-Fry 19:00-07:00"', "window: bad day 'fry'", 2),
        ('[rate_limits]\nb = "10/mn"', "rate_limits.b: bad rate '10/mn'", 2),
        ('[rate_limits]\nmian = "10/min"', "rate_limits.mian: ", 2),
        ('give_up_after = "soon"', "give_up_after: ", 2),
        # a ledger is one line among the others: check goes on to the servers, then exits 1
        ('ledger = "mysql://h/db"', "unsupported ledger database 'mysql'", 1),
        ('ledger = "sqlite:////proc/nope/l.db"', "cannot create", 1),
        ('heartbeat_url = "notaurl"', "heartbeat_url: not an http(s) URL", 2),
    ],
)
def test_check_refuses_what_a_run_would_refuse(
    workdir: Path, setting: str, expected: str, status: int
) -> None:
    (workdir / "pacsflow.toml").write_text(f'{setting}\n[servers.b]\nurl = "http://127.0.0.1:1"\n')
    result = cli("check", cwd=workdir)
    assert result.returncode == status and expected in result.stdout + result.stderr
    run = cli("populate", "--to", "b", cwd=workdir)
    assert run.returncode == 2 and expected in run.stderr  # the same refusal from a run
