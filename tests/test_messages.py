"""Messages a new user meets first: logins (what was sent, what to set), library noise, -v."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pacsflow.sandbox import LocalOrthanc, free_port
from tests.conftest import PASSWORD, USER, cli, run_cli


def config(workdir: Path, orthanc_a: LocalOrthanc, entry: str) -> None:
    (workdir / "pacsflow.toml").write_text(f'[servers.my-pacs]\nurl = "{orthanc_a.url}"\n{entry}')


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            "",
            "the server needs a login and none was sent (HTTP 401): set user and password in "
            "[servers.my-pacs] of pacsflow.toml, or PACSFLOW_SERVERS__MY_PACS__PASSWORD",
        ),
        (
            f'user = "{USER}"\n',
            f"sent user '{USER}' with no password (HTTP 401): set its password in [servers.my-pacs] of "
            "pacsflow.toml, or PACSFLOW_SERVERS__MY_PACS__PASSWORD",
        ),
        (
            f'user = "{USER}"\npassword = "not-it"\n',
            f"the server refused user '{USER}' with the password given (HTTP 401): check them in "
            "[servers.my-pacs] of pacsflow.toml, or PACSFLOW_SERVERS__MY_PACS__PASSWORD",
        ),
        (
            'token = "tok-123"\n',
            "the server refused our bearer token (HTTP 401): set a valid token in [servers.my-pacs] of "
            "pacsflow.toml, or PACSFLOW_SERVERS__MY_PACS__TOKEN",
        ),
    ],
    ids=["nothing", "no password", "wrong password", "token"],
)
def test_a_refused_login_says_what_was_sent_and_what_to_set(
    workdir: Path, orthanc_a: LocalOrthanc, entry: str, expected: str
) -> None:
    config(workdir, orthanc_a, entry)
    result = cli("check", "my-pacs", cwd=workdir)
    assert result.returncode == 1
    assert (
        result.stdout.strip()
        == f"server   my-pacs ({orthanc_a.url}): FAILED: my-pacs ({orthanc_a.url}): {expected}"
    )
    assert "not-it" not in result.stdout and "tok-123" not in result.stdout


def test_the_env_twin_named_in_the_advice_works(
    workdir: Path, orthanc_a: LocalOrthanc, monkeypatch: pytest.MonkeyPatch
) -> None:
    config(workdir, orthanc_a, f'user = "{USER}"\n')
    result = run_cli("check", "my-pacs", cwd=workdir, env={"PACSFLOW_SERVERS__MY_PACS__PASSWORD": PASSWORD})
    assert result.returncode == 0, result.stdout
    assert f"login OK as '{USER}'" in result.stdout


def test_credentials_in_a_configured_url_are_a_login(workdir: Path, orthanc_a: LocalOrthanc) -> None:
    (workdir / "pacsflow.toml").write_text(f'[servers.a]\nurl = "{orthanc_a.url_with_credentials}"\n')
    result = cli("check", "a", cwd=workdir)
    assert result.returncode == 0, result.stdout
    assert f"login OK as '{USER}'" in result.stdout and PASSWORD not in result.stdout
    assert f"a ({orthanc_a.url})" in result.stdout  # shown without the credentials


def test_a_server_without_login_says_none_was_needed(workdir: Path, orthanc_b: LocalOrthanc) -> None:
    result = cli("check", orthanc_b.url, cwd=workdir)
    assert result.returncode == 0 and "no login needed" in result.stdout


def test_library_lines_only_with_verbose(workdir: Path) -> None:
    dead = f"NOBODY@127.0.0.1:{free_port()}"
    plain = run_cli("check", dead, cwd=workdir)
    assert plain.returncode == 1 and "cannot reach NOBODY@127.0.0.1" in plain.stdout
    assert plain.stderr == ""  # before: pynetdicom's "ERROR Association request failed" and more
    verbose = run_cli("check", dead, "-v", cwd=workdir)
    assert "DEBUG Association request failed" in verbose.stderr
    assert "DEBUG Requesting Association" in verbose.stderr  # pynetdicom's INFO lines too, as DEBUG
    assert " ERROR " not in verbose.stderr


def test_verbose_shows_requests_and_retries_without_ids(workdir: Path, orthanc_b: LocalOrthanc) -> None:
    made = run_cli(
        "populate", "--to", orthanc_b.url, "--patients", "1", "--instances", "2", "-v", cwd=workdir
    )
    assert made.returncode == 0, made.stderr
    assert f"DEBUG {orthanc_b.url}: POST /instances -> HTTP 200 in " in made.stderr
    assert re.search(r"DEBUG run \S+: \d+ outcomes? recorded, \d+ items? claimed", made.stderr)  # claims
    assert re.search(r"DEBUG instance #\d+: done in \d+ ms \(attempt 1\)", made.stderr)  # each item
    downloaded = run_cli("download", "--from", orthanc_b.url, "--out", "d", "-v", cwd=workdir)
    assert "GET /instances/{id}/file -> HTTP 200 in " in downloaded.stderr
    assert "GET /instances/{id}/attachments/dicom/info -> HTTP 200 in " in downloaded.stderr
    assert "PF000" not in made.stderr + downloaded.stderr  # no patient IDs without --log-phi
