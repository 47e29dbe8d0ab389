"""`python -m rest_bridge`: the same flags as `tokenwire bridge`."""
from __future__ import annotations

from rest_bridge.app import run_bridge
from rest_bridge.config import add_bridge_arguments
from tokenwire.startup import OneLineErrorParser


def main(argv: list[str] | None = None) -> None:
    parser = OneLineErrorParser(prog="python -m rest_bridge", description="tokenwire OpenAI REST bridge")
    add_bridge_arguments(parser)
    run_bridge(parser.parse_args(argv))


if __name__ == "__main__":
    main()
