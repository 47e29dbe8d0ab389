"""Start-up errors: a process that cannot start says why in one line, naming the flag at fault,
and exits with status 1 (as `tokenwire worker --model /nonexistent` does).

Flags parse through the helpers here, so that a bad value, from the command line or from its
TOKENWIRE_* variable, is one line too."""
from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class StartupError(Exception):
    """A setting this process cannot start with: `flag` names the option at fault (the problem
    is put on one line)."""

    def __init__(self, flag: str, problem: str) -> None:
        super().__init__(f"{flag}: {' '.join(problem.split())}")


@contextmanager
def one_line_errors(component: str) -> Iterator[None]:
    """Turns a StartupError into `tokenwire COMPONENT: --flag …: problem` and exit status 1."""
    try:
        yield
    except StartupError as error:
        raise SystemExit(f"tokenwire {component}: {error}") from None


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (`tokenwire worker: argument --x: …`), without
    the usage text; --help still shows it."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message}\n")


def env(name: str, default: str) -> str:
    """The TOKENWIRE_<name> environment variable: a flag's default, parsed as the flag is."""
    return os.environ.get(f"TOKENWIRE_{name}", default)


def add_repeatable(
    group: argparse._ArgumentGroup, flag: str, *, dest: str, variable: str, metavar: str, help: str, separator: str = ","
) -> None:
    """A repeatable flag whose values add to those of TOKENWIRE_<variable>, `separator`-separated."""
    group.add_argument(
        flag,
        action="append",
        dest=dest,
        default=[item for item in env(variable, "").split(separator) if item],
        metavar=metavar,
        help=f"{help} (repeatable; env TOKENWIRE_{variable}, {separator!r}-separated)",
    )


def whole_number(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [minimum, maximum]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            bounds = f"at least {minimum}" if maximum is None else f"from {minimum} to {maximum}"
            raise argparse.ArgumentTypeError(f"expected a whole number {bounds}, got {value}")
        return value

    return parse


port = whole_number(0, 65535)


def seconds(text: str) -> float:
    """An argparse type: a duration in seconds, zero or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:  # NaN too
        raise argparse.ArgumentTypeError(f"expected a number of seconds, zero or more, got {text}")
    return value


def check_can_listen(host: str, port_number: int, flag: str) -> None:
    """Raises StartupError unless a server can listen on host:port now (not in use, an address of
    this machine), before a server library tries and reports it its own way."""
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, port_number, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise StartupError(flag, f"cannot listen on {host}:{port_number}: {error.strerror}") from None
    for family, kind, protocol, _, address in infos:
        with socket.socket(family, kind, protocol) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as error:
                raise StartupError(flag, f"cannot listen on {host}:{port_number}: {error.strerror}") from None
