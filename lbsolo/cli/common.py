"""What every verb shares: the typer app they register on, rich output made on first use, errors as one line.

The CLI's modules are the only ones that import typer and rich. None opens the state itself.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, TypeVar, cast

import typer
import typer.main

from lbsolo.cli.client import Client
from lbsolo.config import Settings
from lbsolo.errors import LbsoloError

if TYPE_CHECKING:
    from rich.console import Console
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


def Table(*columns: Any, **options: Any) -> RichTable:
    """rich's Table (named like the class it stands in for)."""
    from rich.table import Table as RichTable

    return RichTable(*columns, **options)


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
            err.print(f"[bold red]error:[/] {e.message}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]


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
