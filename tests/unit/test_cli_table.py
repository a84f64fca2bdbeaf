"""The CLI's tables print exactly what rich's Table prints, for any cells and terminal width, with
or without colour: drawn directly for one-line cells, left to rich for the rest."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from lbsolo.cli.common import Table, _drawn
from lbsolo.cli.table import column_widths

WORDS = st.text(alphabet="abcxyz019-_./:", min_size=0, max_size=30)
CELLS = st.one_of(
    WORDS,
    st.builds(lambda a, b: f"{a} {b}", WORDS, WORDS),  # wraps when narrowed: rich draws it
    st.builds(lambda c, w: f"[{c}]{w}[/]", st.sampled_from(["green", "red", "bold yellow", "white"]), WORDS),
    st.sampled_from(["", "v12", "11.8 MB", "http://app000.lbsolo.localhost:8080", ":smile: face", "naïve", "a\tb"]),
)


# what the verbs' tables hold: one-line cells, some coloured; drawn directly unless the terminal is tiny
ONE_LINE = st.one_of(
    WORDS,
    st.builds(lambda c, w: f"[{c}]{w}[/]", st.sampled_from(["green", "red", "bold yellow", "white"]), WORDS),
    st.sampled_from(["11.8 MB", "12 B", "http://app000.lbsolo.localhost:8080"]),
)


class AsciiFile(io.StringIO):
    encoding = "ascii"


def consoles(width: int) -> list[Console]:
    return [
        Console(file=io.StringIO(), width=width),
        Console(file=io.StringIO(), width=width, force_terminal=True, color_system="standard"),
        Console(file=io.StringIO(), width=width, force_terminal=True, color_system="truecolor"),
        Console(file=io.StringIO(), width=width, force_terminal=True, color_system="truecolor", no_color=True),
        Console(file=AsciiFile(), width=width),
    ]


def printed(console: Console, table: object) -> str:
    console.print(table)
    out = console.file.getvalue()  # type: ignore[attr-defined]
    console.file.seek(0)
    console.file.truncate()
    return out


def tables(columns: list[str], rows: list[list[str]]) -> tuple[Table, object]:
    ours = Table(*columns)
    for row in rows:
        ours.add_row(*row)
    return ours, ours.rich_table()


def check_the_same(columns: list[str], rows: list[list[str]], width: int) -> None:
    for console in consoles(width):
        ours, theirs = tables(columns, rows)
        assert printed(console, ours) == printed(console, theirs)


@settings(max_examples=150, deadline=None)
@given(columns=st.lists(CELLS, min_size=1, max_size=7), data=st.data(), width=st.integers(8, 160))
def test_any_table_prints_as_riches_does(columns, data, width):
    rows = data.draw(st.lists(st.lists(CELLS, min_size=len(columns), max_size=len(columns)), max_size=6))
    check_the_same(columns, rows, width)


@settings(max_examples=150, deadline=None)
@given(columns=st.lists(ONE_LINE, min_size=1, max_size=7), data=st.data(), width=st.integers(8, 160))
def test_a_table_of_one_line_cells_prints_as_riches_does(columns, data, width):
    rows = data.draw(st.lists(st.lists(ONE_LINE, min_size=len(columns), max_size=len(columns)), max_size=6))
    check_the_same(columns, rows, width)


@pytest.mark.parametrize("width", [40, 80, 88, 100, 200])
def test_the_apps_listing_is_drawn_directly_and_the_same(width):
    columns = ["name", "status", "release", "replicas", "images", "url"]
    rows = [
        [f"app{i:03d}", "[green]running[/]" if i % 3 else "[red]down[/]", f"v{i}", str(i % 4), "11.8 MB",
         f"http://app{i:03d}.lbsolo.localhost:8080"]
        for i in range(30)
    ]  # fmt: skip
    for console in consoles(width):
        ours, theirs = tables(columns, rows)
        assert _drawn(console, console.options, ours.columns, ours.rows) is not None or width < 88
        assert printed(console, ours) == printed(console, theirs)


def test_tables_with_options_are_riches():
    ours = Table(show_header=False, box=None)
    ours.add_row("cpu", "1.0 %")
    console = Console(file=io.StringIO(), width=80)
    assert printed(console, ours) == printed(console, ours.rich_table())


def test_widths_fit_or_narrow_the_widest_first():
    assert column_widths([[4, 6], [3, 10]], 80) == [6, 12]
    assert column_widths([[4, 30], [3, 40]], 30) == [6, 24]  # the widest column gives way
    assert column_widths([[10, 10, 10]], 21) == [7, 7, 7]  # all as wide: evenly
    assert column_widths([[10, 10]], 5) is None  # no room for a character: rich's rules for slivers
