"""`[anonymize]` settings: the secret from the file or its environment twin (never shown), and bad values
or misspelt keys refused with the place they came from."""

from __future__ import annotations

from pathlib import Path

import pytest

from pacsflow.config import load_settings
from pacsflow.errors import ConfigError
from tests.conftest import run_cli


def test_the_secret_comes_from_its_environment_twin_and_is_never_shown(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (workdir / "pacsflow.toml").write_text('[anonymize]\npseudonym = "STUDY-{n:04d}"\n')
    monkeypatch.setenv("PACSFLOW_ANONYMIZE__SECRET", "from-the-environment-0123456789")
    settings = load_settings()
    assert settings.anonymize.secret is not None
    assert settings.anonymize.secret.get_secret_value() == "from-the-environment-0123456789"
    assert settings.anonymize.pseudonym == "STUDY-{n:04d}"
    assert "from-the-environment" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[anonymize]\nsecrett = "x"\n', "anonymize.secrett: unknown setting (did you mean 'secret'?)"),
        ('[anonymize]\noptions = ["retain-uid"]\n', "did you mean retain-uids?"),
        (
            '[anonymize]\noptions = ["retain-long-full-dates", "retain-long-modified-dates"]\n',
            "exclude each other",
        ),
        ('[anonymize]\nuid_root = "1.02.3"\n', "no leading zeros"),
        ('[anonymize]\npseudonym = "ANON-{id}"\n', "use {n}"),
    ],
)
def test_bad_anonymize_settings_are_refused_by_name(workdir: Path, text: str, message: str) -> None:
    (workdir / "pacsflow.toml").write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert message in str(raised.value)


def test_a_misspelt_environment_twin_is_refused(workdir: Path) -> None:
    result = run_cli("check", cwd=workdir, env={"PACSFLOW_ANONYMIZE__SECRT": "x" * 32})
    assert result.returncode == 2
    assert "PACSFLOW_ANONYMIZE__SECRT" in result.stderr and "did you mean 'secret'" in result.stderr
    assert "x" * 32 not in result.stderr
