"""The CLI builds only the verb it runs (a start-up cost paid by every call)."""

import pytest
import typer.main

from lbsolo.cli.verbs import app, app_for


def test_a_known_verb_gets_an_app_of_that_verb_alone():
    group = typer.main.get_command(app_for(["apps:create", "shop"]))
    assert isinstance(group, typer.main.TyperGroup) and list(group.commands) == ["apps:create"]
    assert list(typer.main.get_command(app_for(["deploy", "."])).commands) == ["deploy"]


@pytest.mark.parametrize("args", [[], ["--help"], ["depoy"], [""]])
def test_help_and_unknown_verbs_get_every_verb(args):
    assert app_for(args) is app


def test_every_verb_can_be_built_alone():
    names = list(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert len(names) > 10
    for name in names:
        assert list(typer.main.get_command(app_for([name])).commands) == [name]

