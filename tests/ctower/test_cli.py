"""``ctower``'s main: an error ctower raises on purpose ends in one clean line,
anything else (a bug) keeps its traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest

from ctower import cli
from ctower.errors import CtowerError
from ctower.schemas.master_data import MasterDataError
from ctower.settings import Settings, SettingsError


def _run_main(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    @click.command()
    def failing() -> None:
        raise error

    monkeypatch.setattr(cli, "cli", failing)
    monkeypatch.setattr(sys, "argv", ["ctower"])
    cli.main()


@pytest.mark.parametrize(("error", "code"), [
    (MasterDataError("chain.json: not JSON"), cli.ERROR_EXIT_CODE),
    (SettingsError("CTOWER_RULES_FILE: nope"), cli.SETTINGS_EXIT_CODE),  # as before: 2
])
def test_a_ctower_error_is_one_line_and_its_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    error: CtowerError, code: int,
) -> None:
    with pytest.raises(SystemExit) as exit_:
        _run_main(monkeypatch, error)
    assert exit_.value.code == code
    assert capsys.readouterr().err == f"Error: {error}\n"


def test_the_exit_codes() -> None:
    assert (cli.ERROR_EXIT_CODE, cli.SETTINGS_EXIT_CODE) == (1, 2)


def test_an_error_without_a_message_is_named(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        _run_main(monkeypatch, CtowerError())
    assert capsys.readouterr().err == "Error: CtowerError\n"


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(KeyError):
        _run_main(monkeypatch, KeyError("a real bug"))


def _ctower(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ctower", *args], env={**settings.child_env(), **env},
        capture_output=True, text=True, timeout=120,
    )


def _clean_error(result: subprocess.CompletedProcess[str], code: int, *needles: str) -> str:
    """The one ``Error:`` line of a failed run, after checking there is no traceback."""
    assert result.returncode == code, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1, result.stderr[-3000:]
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.kafka
def test_bad_master_data_given_to_a_real_command_is_one_clean_line(
    settings: Settings, tmp_path: Path
) -> None:
    """The coupon worker reads the master data itself: its MasterDataError used to
    reach the operator as a traceback."""
    chain = tmp_path / "chain.json"
    chain.write_text('{"stores": [', encoding="utf-8")
    result = _ctower(settings, "coupons", "serve", CTOWER_MASTER_DATA_FILE=str(chain))
    _clean_error(result, cli.ERROR_EXIT_CODE, str(chain), "not JSON")


@pytest.mark.kafka
def test_a_bad_rules_file_given_to_a_real_worker_is_one_clean_line(
    settings: Settings, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text("[stock\n", encoding="utf-8")
    result = _ctower(settings, "worker", CTOWER_RULES_FILE=str(rules))
    _clean_error(result, cli.SETTINGS_EXIT_CODE, "CTOWER_RULES_FILE", str(rules), "not TOML")
