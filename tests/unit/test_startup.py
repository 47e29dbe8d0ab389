"""Start-up errors through the real command line, in process: each is one line naming the flag,
with a non-zero status, before anything is loaded."""
from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from tests.servers import free_port
from tokenwire.cli import main


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def _exit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """(exit status, the one line of stderr) of the command, which must fail."""
    with pytest.raises(SystemExit) as exited:
        main(argv)
    code, message = exited.value.code, capsys.readouterr().err
    if isinstance(code, str):  # SystemExit("…"): Python prints the message and exits with 1
        code, message = 1, code + "\n"
    assert message.count("\n") == 1 and message.endswith("\n"), message
    return code, message.rstrip("\n")


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["worker", "--price", "foo/bar=1,2"], "tokenwire worker: --price foo/bar=1,2: foo/bar is not served here"),
        (["serve", "--price", "foo"],
         "tokenwire worker: --price foo: expected MODEL_ID=INPUT,OUTPUT with two non-negative numbers "
         "(USD per million tokens), e.g. my-org/llama=0.03,0.05"),
        (["worker", "--model", "/nowhere/model.gguf"],
         "tokenwire worker: --model /nowhere/model.gguf: /nowhere/model.gguf does not exist"),
        (["serve", "--embedding-model", "e=/nowhere/e"],
         "tokenwire worker: --embedding-model e=/nowhere/e: /nowhere/e does not exist"),
        (["worker", "--max-running", "0"],
         "tokenwire worker: argument --max-running: expected a whole number at least 1, got 0"),
        (["bridge", "--http-port", "70000"],
         "tokenwire bridge: argument --http-port: expected a whole number from 0 to 65535, got 70000"),
        (["bridge", "--request-timeout", "-1"],
         "tokenwire bridge: argument --request-timeout: expected a number of seconds, zero or more, got -1"),
        (["worker", "--dtype", "float8"],
         "tokenwire worker: argument --dtype: invalid choice: 'float8' (choose from 'auto', 'bfloat16', 'float16', 'float32')"),
        (["worker", "--device", "tpu"], "tokenwire worker: --device tpu: expected auto, cpu, cuda or cuda:N"),
    ],
)
def test_bad_settings(argv, line, capsys):
    port = "--http-port" if argv[0] == "bridge" else "--grpc-port"
    code, message = _exit([argv[0], port, str(free_port()), *argv[1:]], capsys)
    assert code != 0 and message == line


def test_a_model_without_weights(tmp_path, capsys):
    spec = f"acme/empty={tmp_path}"
    code, line = _exit(["worker", "--grpc-port", str(free_port()), "--model", spec], capsys)
    assert (code, line) == (
        1, f"tokenwire worker: --model {spec}: has no weight files (--load-format dummy serves its config with random weights)"
    )


def test_a_bad_environment_variable_reads_as_its_flag(capsys, monkeypatch):
    monkeypatch.setenv("TOKENWIRE_MAX_WAITING", "lots")
    assert _exit(["serve"], capsys) == (2, "tokenwire serve: argument --max-waiting: expected a whole number, got 'lots'")


def test_a_missing_device(capsys):
    # Whether or not this machine has CUDA devices, it has no hundredth.
    code, line = _exit(["worker", "--grpc-port", str(free_port()), "--device", "cuda:99"], capsys)
    assert code == 1 and line.startswith("tokenwire worker: --device cuda:99: ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_on_a_machine_without_it(capsys):
    code, line = _exit(["worker", "--grpc-port", str(free_port()), "--device", "cuda"], capsys)
    assert (code, line) == (1, "tokenwire worker: --device cuda: no CUDA device is available")


def test_ports_in_use(taken_port, capsys):
    in_use = f"cannot listen on 127.0.0.1:{taken_port}: Address already in use"
    for argv, line in (
        (["worker", "--grpc-port", str(taken_port)], f"tokenwire worker: --grpc-port {taken_port}: {in_use}"),
        (["worker", "--grpc-port", str(free_port()), "--metrics-port", str(taken_port)],
         f"tokenwire worker: --metrics-port {taken_port}: {in_use}"),
        (["bridge", "--http-port", str(taken_port)], f"tokenwire bridge: --http-port {taken_port}: {in_use}"),
    ):
        assert _exit(argv, capsys) == (1, line)


def test_the_launcher_leaves_torch_to_its_worker_process():
    code = (
        "import sys\n"
        "from tokenwire.cli import main\n"
        "try:\n"
        "    main(['serve', '--price', 'foo/bar=1,2'])\n"
        "except SystemExit as exited:\n"
        "    print(exited.code)\n"
        "print(sorted(name for name in ('torch', 'transformers') if name in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.splitlines() == ["tokenwire worker: --price foo/bar=1,2: foo/bar is not served here", "[]"]
