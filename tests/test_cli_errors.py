"""The CLI's error reporting: user errors one line, bugs a traceback, --debug both."""

import pytest

import specdec.cli.theory
from specdec.cli import main
from specdec.errors import UsageError


def _raising(error: BaseException):
    def command(argv):
        raise error
    return command


def _run(capsys, monkeypatch, error, *argv: str) -> tuple[int, str]:
    monkeypatch.setattr(specdec.cli.theory, "main", _raising(error))
    code = main(list(argv))
    captured = capsys.readouterr()
    assert captured.out == ""
    return code, captured.err


@pytest.fixture(autouse=True)
def _no_debug_env(monkeypatch):
    monkeypatch.delenv("SPECDEC_DEBUG", raising=False)


@pytest.mark.parametrize("error", [
    UsageError("--gamma must be 'auto' or an integer"),
    FileNotFoundError(2, "No such file or directory", "/missing/prompt.txt"),
])
def test_user_errors_are_one_line(capsys, monkeypatch, error):
    code, err = _run(capsys, monkeypatch, error, "theory")
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("specdec: error: ")
    assert str(error) in err and "Traceback" not in err


@pytest.mark.parametrize("error", [
    ValueError("cannot roll back 3 of 2 cached positions"),  # a bug, not bad input
    KeyError("logits"),
    OSError("disk hiccup"),  # no path the user gave
])
def test_internal_errors_print_a_traceback(capsys, monkeypatch, error):
    code, err = _run(capsys, monkeypatch, error, "theory")
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert f"{type(error).__name__}: " in err and "internal error" in err


@pytest.mark.parametrize("argv", [("--debug", "theory"), ("theory", "--debug")])
def test_debug_flag_shows_the_traceback_of_user_errors(capsys, monkeypatch, argv):
    seen = []
    monkeypatch.setattr(specdec.cli.theory, "main",
                        lambda rest: seen.append(rest) or _raising(UsageError("bad flag"))(rest))
    assert main(list(argv)) == 1
    err = capsys.readouterr().err
    assert seen == [[]]  # the command never sees --debug
    assert "Traceback (most recent call last)" in err
    assert err.rstrip("\n").split("\n")[-1] == "specdec: error: bad flag"


def test_debug_env_shows_the_traceback(capsys, monkeypatch):
    monkeypatch.setenv("SPECDEC_DEBUG", "1")
    code, err = _run(capsys, monkeypatch, UsageError("bad flag"), "theory")
    assert code == 1 and "Traceback" in err


def test_debug_after_double_dash_is_an_argument(capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(specdec.cli.theory, "main", lambda rest: seen.append(rest) or 0)
    assert main(["theory", "--", "--debug"]) == 0
    assert seen == [["--", "--debug"]]


def test_validation_sites_raise_usage_errors():
    """Bad values reach the user through UsageError (one line), not a bare ValueError."""
    from specdec.drafters.factory import build_gamma, validate_spec
    from specdec.models.loading import resolve_dtype
    from specdec.sampling import SamplingParams

    for bad in (lambda: SamplingParams(temperature=-1), lambda: build_gamma("many"),
                lambda: validate_spec("bigram:/missing.txt"), lambda: resolve_dtype("int3")):
        with pytest.raises(UsageError):
            bad()


def test_real_command_user_error_is_one_line(capsys):
    assert main(["generate", "hi", "--draft", "bigram:/missing.txt"]) == 1
    err = capsys.readouterr().err
    assert err.strip().split("\n")[-1].startswith("specdec: error: --draft 'bigram:/missing.txt'")
    assert "Traceback" not in err
