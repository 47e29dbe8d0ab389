"""`python -m service` = `tokenwire worker`."""
from service.config import add_worker_arguments
from service.server import run_worker
from tokenwire.startup import OneLineErrorParser

parser = OneLineErrorParser(prog="python -m service")
add_worker_arguments(parser)
run_worker(parser.parse_args())
