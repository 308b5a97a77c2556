"""A step's claim in Redis: which delivery of it runs, alive or done, so that no step runs twice.

A delivery claims `awq-release:step:RUN:STEP` before it runs the step and refreshes the claim every
heartbeat; the claim expires three heartbeats after its worker died. The run's executor reads the
claims to tell a step still queued, running, finished, or lost with its worker (orchestrator.
distributed.executor); a delivery that finds the step running elsewhere does not run it.
"""

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import redis

from awq_release.errors import ReleaseError

PREFIX = "awq-release:step"
MISSED_HEARTBEATS = 3  # a claim outlives a worker by this many heartbeats
DONE_TTL_S = 7 * 24 * 3600  # how long a finished step's claim still answers a late redelivery

# Refresh the claim only while it is ours; re-make it where a restarted Redis lost it. 0: another
# delivery holds it now.
REFRESH = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] or not held then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
    return 1
end
return 0
"""


@dataclass(frozen=True)
class Claim:
    state: str  # running | done
    task_id: str  # the Celery task of the delivery that holds it
    worker: str  # that delivery's worker (name@host)

    def encode(self) -> str:
        return f"{self.state} {self.task_id} {self.worker}"

    @staticmethod
    def decode(value: bytes | None) -> "Claim | None":
        if value is None:
            return None
        state, task_id, worker = value.decode().split(" ", 2)
        return Claim(state, task_id, worker)


def key(run_id: str, step_key: str) -> str:
    return f"{PREFIX}:{run_id}:{step_key}"


def client(url: str) -> redis.Redis:
    """A connection that gives up within seconds, so a lost broker is noticed, never waited on."""
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def read(connection: redis.Redis, run_id: str, step_key: str) -> Claim | None:
    return Claim.decode(connection.get(key(run_id, step_key)))


def server_id(connection: redis.Redis) -> str:
    """The Redis server's run id: a new one after every restart, which loses what was queued."""
    return connection.info("server")["run_id"]


class StepClaimed(ReleaseError):
    """Another delivery of the step holds its claim."""


@contextmanager
def claimed(connection: redis.Redis, run_id: str, step_key: str, mine: Claim, heartbeat_s: float) -> Iterator[Claim]:
    """Hold the step's claim while the body runs, refreshed every heartbeat, and mark it done after.
    Yields the claim of a delivery that finished the step already (the body must not run it again,
    and gets that delivery's claim instead of `mine`), or `mine`. Raises StepClaimed where another
    delivery runs it now. A holder whose claim was taken over (its heartbeats were lost for so long
    that the executor gave the step to another worker) kills its own process: one of the two must
    stop, and the other is the one the run waits for."""
    name, ttl = key(run_id, step_key), int(heartbeat_s * MISSED_HEARTBEATS) + 1
    if not connection.set(name, mine.encode(), nx=True, ex=ttl):
        held = read(connection, run_id, step_key)
        if held is not None and held.state == "done":
            yield held
            return
        if held is not None:
            raise StepClaimed(f"step {step_key} of run {run_id} is already running on {held.worker} ({held.task_id})")
        connection.set(name, mine.encode(), ex=ttl)  # it expired in between
    refresh, stop = connection.register_script(REFRESH), threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_s):
            try:
                if not refresh(keys=[name], args=[mine.encode(), ttl]):
                    os.kill(os.getpid(), signal.SIGKILL)
            except redis.RedisError:
                pass  # the broker is away: the next beat re-makes the claim once it is back

    beating = threading.Thread(target=beat, name=f"heartbeat {step_key}", daemon=True)
    beating.start()
    try:
        yield mine
    finally:
        stop.set()
        beating.join()
        done = Claim("done", mine.task_id, mine.worker).encode()
        if refresh(keys=[name], args=[mine.encode(), ttl]):
            connection.set(name, done, ex=DONE_TTL_S)
