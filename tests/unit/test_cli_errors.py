"""The CLI's errors: one red line and exit status 1, whatever the message quotes."""

import pytest
import typer

from lbsolo.cli.common import clean_errors
from lbsolo.errors import InvalidInput


def test_an_error_quoting_markup_is_printed_as_it_is_not_as_a_traceback(capsys):
    @clean_errors
    def verb() -> None:
        raise InvalidInput("invalid app name '[/x]' (and [bold]this[/bold] stays as typed)")

    with pytest.raises(typer.Exit) as exit_:
        verb()
    assert exit_.value.exit_code == 1
    said = capsys.readouterr().err
    assert "invalid app name '[/x]' (and [bold]this[/bold] stays as typed)" in said, said
