"""The one progress style: plain throttled lines off a terminal, rich bars (nested) on one."""

import io

import pytest

from compress import progress as progress_module
from compress.progress import progress, style, track


def test_plain_lines_are_throttled_and_have_no_carriage_returns(monkeypatch, capsys):
    monkeypatch.delenv("NAS_PROGRESS", raising=False)
    assert style() == "plain"  # pytest's captured stdout is not a terminal
    clock = iter(range(0, 10_000, 3))  # every call to the clock is 3 s later
    monkeypatch.setattr(progress_module, "_now", lambda: float(next(clock)))
    items = list(track(range(40), "[bld] variants", interval_s=30))
    out = capsys.readouterr().out
    assert items == list(range(40)) and "\r" not in out
    lines = out.splitlines()
    # a first line, one about every 30 s (10 steps of 3 s), and the final one
    assert lines[0] == "[bld] variants: 0/40 (0%), 0:03 elapsed"
    assert 4 <= len(lines) <= 7
    assert "eta" in lines[1] and lines[-1].startswith("[bld] variants: 40/40 done in 2:")


def test_rich_bars_nest_in_one_display(monkeypatch):
    monkeypatch.setenv("NAS_PROGRESS", "rich")
    from rich.console import Console

    buffer = io.StringIO()
    monkeypatch.setattr("rich.progress.get_console", lambda: Console(file=buffer, width=100))
    with progress("[students] points", 2) as outer:
        for _ in range(2):
            for _ in track(range(3), "[gkd] steps"):  # a second live display would raise
                pass
            assert progress_module._LIVE.tasks == [outer._task]
            outer.advance()
    assert progress_module._LIVE.progress is None
    assert "[students] points" in buffer.getvalue()


def test_off_prints_nothing(monkeypatch, capsys):
    monkeypatch.setenv("NAS_PROGRESS", "off")
    with progress("[scoring] variants", 3) as bar:
        bar.update(3)
    assert capsys.readouterr().out == ""
    with pytest.raises(ZeroDivisionError):  # errors pass through; no final line is printed
        for _ in track([1], "[x]"):
            raise ZeroDivisionError
