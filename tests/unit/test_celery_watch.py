"""How a run's Celery executor reads a step it submitted (orchestrator.distributed.executor): each
verdict from the step's claim and Redis's server id, on a clock the test moves. The same faults with
a real Redis and real workers: tests/e2e/test_celery.py."""

from dataclasses import dataclass, field

import pytest
import redis
from billiard.exceptions import WorkerLostError

import orchestrator.distributed.executor as executor
from orchestrator.distributed import claims
from orchestrator.distributed.executor import MAX_DELIVERIES, StepLost, WatchedStep

HEARTBEAT_S = 1.0


@dataclass
class FakeRedis:
    """The two reads the watcher makes: a claim, and the server's run id."""

    values: dict = field(default_factory=dict)
    run_id: str = "first"
    down: bool = False

    def get(self, name: str) -> bytes | None:
        if self.down:
            raise redis.ConnectionError("Connection refused")
        return self.values.get(name)

    def info(self, section: str) -> dict:
        if self.down:
            raise redis.ConnectionError("Connection refused")
        return {"run_id": self.run_id}


@dataclass
class FakeResult:
    id: str
    outcome: object = None  # a step's events once it finished, or the exception it failed with
    finished: bool = False
    revoked: bool = False

    def ready(self) -> bool:
        return self.finished

    def failed(self) -> bool:
        return self.finished and isinstance(self.outcome, Exception)

    @property
    def result(self) -> object:
        return self.outcome

    def get(self) -> object:
        return self.outcome

    def revoke(self, terminate: bool = False) -> None:
        self.revoked = True


@pytest.fixture
def clock(monkeypatch) -> list[float]:
    now = [100.0]
    monkeypatch.setattr(executor.time, "monotonic", lambda: now[0])
    return now


def watched(connection: FakeRedis) -> tuple[WatchedStep, list[FakeResult], list[str]]:
    deliveries, logged = [], []

    def submit() -> FakeResult:
        deliveries.append(FakeResult(f"task-{len(deliveries) + 1}"))
        return deliveries[-1]

    step = WatchedStep(submit, "run", "awq_model", logged.append, connection, HEARTBEAT_S)
    return step, deliveries, logged


def claim(connection: FakeRedis, state: str, task_id: str, worker: str = "gpu-1@host") -> None:
    connection.values[claims.key("run", "awq_model")] = claims.Claim(state, task_id, worker).encode().encode()


def test_a_step_whose_worker_stops_heartbeating_is_delivered_again_once(clock):
    connection = FakeRedis()
    step, deliveries, logged = watched(connection)
    assert not step.ready()  # queued: no claim yet, same Redis
    claim(connection, "running", "task-1")
    assert not step.ready()
    connection.values.clear()  # the claim expired: its worker died
    clock[0] += HEARTBEAT_S * claims.MISSED_HEARTBEATS  # not yet past the claim's lifetime
    assert not step.ready() and len(deliveries) == 1
    clock[0] += 0.5
    assert not step.ready()
    assert len(deliveries) == 2 and deliveries[0].revoked and step.result is deliveries[1]
    assert logged == ["step awq_model: its worker stopped heartbeating; delivering it again (delivery 2)"]
    assert not step.ready() and len(deliveries) == 2  # the new delivery is queued: nothing more
    deliveries[1].outcome, deliveries[1].finished = ["events"], True
    assert step.ready() and step.get() == ["events"]


def test_a_step_queued_when_redis_restarted_is_delivered_again_but_a_running_one_is_not(clock):
    connection = FakeRedis()
    step, deliveries, _ = watched(connection)
    connection.run_id = "second"  # the queue went with the first server
    assert not step.ready() and len(deliveries) == 2

    running = FakeRedis()
    step, deliveries, _ = watched(running)
    claim(running, "running", "task-1")
    assert not step.ready()
    running.values.clear()
    running.run_id = "second"  # its claim was lost with the server, and its worker re-makes it
    clock[0] += HEARTBEAT_S
    assert not step.ready()
    claim(running, "running", "task-1")
    clock[0] += HEARTBEAT_S * claims.MISSED_HEARTBEATS
    assert not step.ready() and len(deliveries) == 1


def test_a_worker_process_lost_mid_step_is_delivered_again_and_a_step_lost_too_often_fails(clock):
    connection = FakeRedis()
    step, deliveries, _ = watched(connection)
    for _ in range(MAX_DELIVERIES - 1):
        deliveries[-1].outcome, deliveries[-1].finished = WorkerLostError("signal 9 (SIGKILL)"), True
        assert not step.ready()
    assert len(deliveries) == MAX_DELIVERIES
    deliveries[-1].outcome, deliveries[-1].finished = WorkerLostError("signal 9 (SIGKILL)"), True
    assert step.ready()
    with pytest.raises(StepLost, match=f"lost {MAX_DELIVERIES} times; last: its worker process died"):
        step.get()


def test_an_unreachable_broker_fails_the_step_after_its_patience_never_hangs_it(clock):
    connection = FakeRedis()
    step, _, _ = watched(connection)
    connection.down = True
    assert not step.ready()
    clock[0] += executor.BROKER_PATIENCE_S
    assert not step.ready()
    clock[0] += 1
    assert step.ready()
    with pytest.raises(StepLost, match="unreachable for 60 s while step awq_model was out"):
        step.get()


def test_a_finished_step_whose_result_redis_lost_fails_clearly(clock):
    connection = FakeRedis()
    step, _, _ = watched(connection)
    claim(connection, "done", "task-1", "gpu-2@host")
    assert not step.ready()
    clock[0] += executor.RESULT_GRACE_S + 1
    assert step.ready()
    with pytest.raises(StepLost, match="finished on gpu-2@host, but Redis lost its result"):
        step.get()


@pytest.mark.parametrize("command", [["worker", "--queues", "gpu"], ["run", "--no-demo"]])
def test_an_unreachable_broker_is_one_clear_error_before_anything_waits_on_it(command, tmp_path, monkeypatch, capsys):
    import orchestrator.cli.main_job  # noqa: F401  the job binds its executor when imported: in process here
    from deploy.server import free_port
    from orchestrator.cli.main import main

    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    monkeypatch.setenv("AWQ_RELEASE_EXECUTOR", "celery")
    monkeypatch.setenv("AWQ_RELEASE_BROKER_URL", url)
    monkeypatch.setenv("AWQ_RELEASE_HOME", str(tmp_path / "home"))
    assert main(command) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: The Celery broker at {url} is unreachable") and "Traceback" not in err
    assert not (tmp_path / "home").exists()  # nothing written before the check
