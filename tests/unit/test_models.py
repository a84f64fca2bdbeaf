import pytest

from lbsolo.errors import InvalidInput
from lbsolo.models import validate_app_name


@pytest.mark.parametrize("name", ["hello", "a", "my-app-2", "x" * 30])
def test_valid_names(name):
    assert validate_app_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "Hello", "1app", "-app", "app-", "my_app", "a.b", "x" * 31, "a--b", "api", "lbsolo", "app name", "ü"],
)
def test_invalid_names(name):
    with pytest.raises(InvalidInput, match="invalid app name"):
        validate_app_name(name)
