"""`python -m service` = `tokenwire worker`."""
import argparse

from service.config import add_worker_arguments
from service.server import run_worker

parser = argparse.ArgumentParser(prog="python -m service")
add_worker_arguments(parser)
run_worker(parser.parse_args())
