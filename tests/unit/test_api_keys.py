"""tokenwire.api_keys: the Bearer parsing and key checks both servers share."""
from __future__ import annotations

import argparse

import pytest

from tokenwire.api_keys import add_api_key_argument, bearer_token, key_allowed


@pytest.mark.parametrize(
    ("value", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
        ("BEARER sk-1.2_3", "sk-1.2_3"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("abc", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(value: str | None, token: str | None) -> None:
    assert bearer_token(value) == token


def test_key_allowed_checks_every_key() -> None:
    keys = ("first", "second")
    assert key_allowed("first", keys) and key_allowed("second", keys)
    assert not key_allowed("secon", keys) and not key_allowed("second2", keys)
    assert not key_allowed(None, keys) and not key_allowed("", keys)
    assert not key_allowed("anything", ())
    assert key_allowed("clé-ünïcode", ("clé-ünïcode",))


def test_flags_add_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENWIRE_API_KEYS", " a , b,,")
    parser = argparse.ArgumentParser()
    add_api_key_argument(parser.add_argument_group("auth"))
    assert parser.parse_args([]).api_keys == ["a", "b"]
    assert parser.parse_args(["--api-key", "c", "--api-key", "d"]).api_keys == ["a", "b", "c", "d"]
    monkeypatch.delenv("TOKENWIRE_API_KEYS")
    parser = argparse.ArgumentParser()
    add_api_key_argument(parser.add_argument_group("auth"))
    assert parser.parse_args([]).api_keys == []
