"""What every verb shares: the typer app they register on, rich output made on first use, errors as one line.

The CLI's modules are the only ones that import typer and rich. None opens the state itself.
"""

from __future__ import annotations

import functools
import itertools
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
import typer.main

from lbsolo.cli.client import Client
from lbsolo.cli.table import column_widths
from lbsolo.config import Settings
from lbsolo.errors import LbsoloError

if TYPE_CHECKING:
    from rich.console import Console, ConsoleOptions
    from rich.table import Table as RichTable


app = typer.Typer(
    help="lbsolo: a one-server PaaS. `lbsolo up`, then `lbsolo deploy`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


# rich loads on first use, not at start (some 45 ms): a deploy's upload goes out, and the daemon
# starts building, before render_job's live display needs it.
class _LazyConsole:
    """A rich Console, made on first use."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Console | None = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._options)
        return getattr(self._console, name)


def escape(markup: str) -> str:
    """rich's markup escape."""
    from rich.markup import escape as rich_escape

    return rich_escape(markup)


class Table:
    """A table of the verbs' output, printed as rich's Table prints it (same widths, ellipses, styles).

    rich measures and wraps every cell through its general renderer: some 1.5 ms a row, more than
    the whole rest of `lbsolo apps` at 200 apps. Tables of one-line printable cells (what the
    verbs list) are drawn here from the same arithmetic (lbsolo.cli.table) in a few segments per
    cell; a table with options, or with a cell rich would wrap, is left to rich's Table itself.
    """

    def __init__(self, *columns: str, **options: Any) -> None:
        self.columns = columns
        self.options = options
        self.rows: list[tuple[str, ...]] = []

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)

    def rich_table(self) -> RichTable:
        from rich.table import Table as RichTable

        table = RichTable(*self.columns, **self.options)
        for row in self.rows:
            table.add_row(*row)
        return table

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Any]:
        drawn = None if self.options else _drawn(console, options, self.columns, self.rows)
        if drawn is None:
            yield self.rich_table()
        else:
            yield from drawn


_ONE_LINE = re.compile(r"[ -~]*")  # printable ASCII: one cell per character, nothing to expand


def _drawn(
    console: Console, options: ConsoleOptions, columns: tuple[str, ...], rows: list[tuple[str, ...]]
) -> list[Any] | None:
    """The segments rich's default Table (heavy head box, header, padding 1) would print; None if unsure."""
    from rich.box import HEAVY_HEAD
    from rich.markup import render
    from rich.segment import Segment
    from rich.text import Text

    if any(len(row) != len(columns) for row in rows):
        return None
    # Without "[" there is no markup, without ":" no emoji code: the text is the cell as it is.
    grid = [[render(c) if "[" in c or ":" in c else Text(c) for c in line] for line in (columns, *rows)]
    if not all(_ONE_LINE.fullmatch(text.plain) for line in grid for text in line):
        return None
    widths = column_widths([[len(text.plain) for text in line] for line in grid], options.max_width - len(columns) - 1)
    if widths is None:
        return None
    for line in grid:
        for text, width in zip(line, widths, strict=True):
            if len(text.plain) > width - 2 and any(c.isspace() for c in text.plain):
                return None  # rich would wrap it over several lines
    box = HEAVY_HEAD.substitute(options, safe=console.safe_box)
    border = console.get_style("none") + console.get_style("")
    pad = console.get_style("none")
    header = console.get_style("table.header")
    line_end = Segment.line()
    out = [Segment(box.get_top(widths), border), line_end]
    for index, line in enumerate(grid):
        last = index == len(grid) - 1
        left, divider, right = (
            (box.head_left, box.head_vertical, box.head_right)
            if index == 0
            else (box.foot_left, box.foot_vertical, box.foot_right)
            if last
            else (box.mid_left, box.mid_vertical, box.mid_right)
        )
        row = [Segment(left, border)]
        for column, (text, width) in enumerate(zip(line, widths, strict=True)):
            if column:
                row.append(Segment(divider, border))
            text.truncate(width - 2, overflow="ellipsis", pad=True)
            cell = [Segment(" ", pad), *text.render(console), Segment(" ", pad)]
            # rich styles a header cell as a whole (its padding too): bold, each segment on its own
            if index == 0:
                cell = [Segment(s.text, header + s.style) for s in cell]
            row.extend(cell)
        row.append(Segment(right, border))
        out += [*_joined(row), line_end]
        if index == 0:
            out += [Segment(box.get_row(widths, "head", edge=True), border), line_end]
    out += [Segment(box.get_bottom(widths), border), line_end]
    return out


def _joined(segments: list[Any]) -> Iterator[Any]:
    """The same segments with each run of unstyled ones as one (printed alike: as their text)."""
    from rich.segment import Segment

    plain: list[str] = []
    for segment in segments:
        if segment.style:
            if plain:
                yield Segment("".join(plain))
                plain = []
            yield segment
        else:
            plain.append(segment.text)
    if plain:
        yield Segment("".join(plain))


def load_output() -> None:
    """Make the console now rather than at its first print (rich's import: some 40 ms)."""
    console.is_terminal  # noqa: B018 (its first use makes it)


console = cast("Console", _LazyConsole())


err = cast("Console", _LazyConsole(stderr=True))


F = TypeVar("F", bound=Callable[..., Any])


def clean_errors(fn: F) -> F:
    """Turn lbsolo's errors into one red line and exit status 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LbsoloError as e:
            # The message may quote what the user or a server sent ("[/x]" included): never markup.
            err.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


def validate_app_name(name: str, what: str = "app name") -> str:
    """lbsolo.models.validate_app_name, imported when a verb first checks a name (not at every start)."""
    from lbsolo.models import validate_app_name as validate

    return validate(name, what)


def _client() -> Client:
    return Client(Settings.load())


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


AppArg = Annotated[str, typer.Argument(help="App name.")]


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def render_job(events: Iterator[dict[str, Any]], what: str) -> dict[str, Any]:
    """Print a release-making job's output as it streams, with a live step and elapsed-time line; raise if it failed."""
    result: dict[str, Any] = {}
    started = time.monotonic()
    stage = "waiting for the daemon"
    events = iter(events)
    first = list(itertools.islice(events, 1))  # the request (a deploy's upload) goes out before rich loads
    with console.status(stage) as status:
        for event in itertools.chain(first, events):
            if "line" in event:
                line = event["line"]
                console.print(line, highlight=False, markup=False, soft_wrap=True)
                if line.startswith(("Step ", "-----> ")):
                    stage = line.removeprefix("-----> ")[:70]
            elif "result" in event:
                result = event["result"]
            status.update(f"{escape(stage)}  [dim]{time.monotonic() - started:.1f}s[/]")
    if not result.get("ok"):
        error = result.get("error") or {"message": "it ended without a result"}
        raise LbsoloError(f"{what} failed: {error['message'].splitlines()[0]}")
    if result.get("release"):
        elapsed = time.monotonic() - started
        console.print(f"[bold green]Deployed {result['app']} {result['release']}[/] → {result['url']} ({elapsed:.1f}s)")
    return result
