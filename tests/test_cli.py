"""The command line: `normkit`, `normkit --help`, `normkit check`."""

import subprocess
import sys

from normkit import check, cli


def test_check_reports_all_groups_and_passes(capsys):
    assert cli.main(["check"]) == 0
    out = capsys.readouterr().out
    for group in (
        "seeds' worked examples",
        "float64 reference",
        "LRN vs torch",
        "onnxruntime",
        "tensorflow",
    ):
        assert group in out
    assert "0 disagree" in out


def test_check_fails_loudly_when_a_case_disagrees(monkeypatch, capsys):
    def broken():
        yield check._compare("fake", "deliberately wrong", [1.0], [2.0], 1e-6)

    monkeypatch.setattr(check, "PROVIDERS", [broken])
    assert check.main() == 1
    assert "FAIL" in capsys.readouterr().out


def test_crashing_provider_is_reported_not_hidden(monkeypatch):
    def crash():
        raise RuntimeError("boom")
        yield  # pragma: no cover

    monkeypatch.setattr(check, "PROVIDERS", [crash])
    cases = check.run_checks()
    assert cases[0].status == "FAIL" and "boom" in cases[0].detail


def test_help_and_no_command():
    out = subprocess.run(
        [sys.executable, "-m", "normkit", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "check" in out.stdout
    assert cli.main([]) == 2
