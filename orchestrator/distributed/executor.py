"""Dagster's Celery executor with the faults of a distributed system handled: a dead worker, a
restarted or unreachable broker. dagster-celery waits for each step's result forever; here the run
watches every step it submitted, through the step's claim (orchestrator.distributed.claims):

- a step whose worker stopped heartbeating (killed, its machine gone) is delivered again, to any
  worker of its queue, at most MAX_DELIVERIES times; a quantization resumes at its finished blocks;
- a step still queued when Redis restarted (which loses the queue) is delivered again;
- a Redis unreachable for BROKER_PATIENCE_S fails the run with that reason, never hangs it;
- a finished step whose result Redis lost fails the run clearly; its retry reuses the finished work.

Steps go to the `gpu` or `cpu` queue their op tags name (orchestrator.pipeline.placement).
"""

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg
import redis
from billiard.exceptions import WorkerLostError
from celery.exceptions import DuplicateTaskNameWarning
from celery.result import AsyncResult
from dagster._core.execution.retries import RetryMode
from dagster_celery.core_execution_loop import core_celery_execution_loop
from dagster_celery.executor import CeleryExecutor, _submit_task
from kombu.exceptions import OperationalError

from orchestrator import environment
from orchestrator.distributed import claims
from orchestrator.distributed.worker import app_args

MAX_DELIVERIES = 3  # a step whose worker dies this often fails the run
BROKER_PATIENCE_S = 60.0
RESULT_GRACE_S = 30.0  # between a claim marked done and its result showing in Redis
BROKER_ERRORS = (redis.RedisError, OperationalError, ConnectionError, TimeoutError)


class StepLost(Exception):
    """The step's result cannot come: why, for the run's failure."""


@dataclass
class WatchedStep:
    """A submitted step as the execution loop polls it (`ready`, `get`, `revoke`), delivering it again
    where its worker or its queued message was lost."""

    submit: Callable[[], AsyncResult]
    run_id: str
    step_key: str
    log: Callable[[str], None]
    connection: redis.Redis
    heartbeat_s: float
    result: AsyncResult = field(init=False)
    deliveries: int = field(init=False, default=1)
    broker: str = field(init=False)  # the Redis server id when the step was last submitted
    seen_running: float | None = field(init=False, default=None)
    seen_done: float | None = field(init=False, default=None)
    unreachable_since: float | None = field(init=False, default=None)
    lost: StepLost | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.broker = claims.server_id(self.connection)
        self.result = self.submit()

    def ready(self) -> bool:
        if self.lost is not None:
            return True
        try:
            return self._poll(time.monotonic())
        except BROKER_ERRORS as e:
            now = time.monotonic()
            self.unreachable_since = self.unreachable_since or now
            if now - self.unreachable_since > BROKER_PATIENCE_S:
                self.lost = StepLost(
                    f"the broker at {environment.broker_url()} was unreachable for {BROKER_PATIENCE_S:.0f} s "
                    f"while step {self.step_key} was out ({e}): start Redis again, then retry the run"
                )
                return True
            return False

    def _poll(self, now: float) -> bool:
        if self.result.ready():
            if self.result.failed() and isinstance(self.result.result, WorkerLostError):
                return self._deliver_again(f"its worker process died ({self.result.result})")
            return True
        held = claims.read(self.connection, self.run_id, self.step_key)
        self.unreachable_since = None  # Redis answered
        if held is not None and held.state == "running":
            self.seen_running = now
            return False
        if held is not None:  # done: its result is on the way, under the delivery that finished it
            if held.task_id != self.result.id:
                self.result = AsyncResult(held.task_id, app=self.result.app)
            self.seen_done = self.seen_done or now
            if now - self.seen_done > RESULT_GRACE_S:
                self.lost = StepLost(f"step {self.step_key} finished on {held.worker}, but Redis lost its result")
                return True
            return False
        if self.seen_running is not None:
            if now - self.seen_running > self.heartbeat_s * claims.MISSED_HEARTBEATS:
                return self._deliver_again("its worker stopped heartbeating")
            return False
        if claims.server_id(self.connection) != self.broker:
            return self._deliver_again("Redis restarted while it was queued, and lost the queue")
        return False

    def _deliver_again(self, why: str) -> bool:
        if self.deliveries >= MAX_DELIVERIES:
            self.lost = StepLost(f"step {self.step_key} was lost {self.deliveries} times; last: {why}")
            return True
        self.log(f"step {self.step_key}: {why}; delivering it again (delivery {self.deliveries + 1})")
        self.result.revoke(terminate=True)  # in case that worker comes back still running it
        self.deliveries += 1
        self.broker, self.seen_running, self.seen_done = claims.server_id(self.connection), None, None
        self.result = self.submit()
        return False

    def get(self) -> list:
        if self.lost is not None:
            raise self.lost
        return self.result.get()

    def revoke(self) -> None:
        self.result.revoke()


class WatchedCeleryExecutor(CeleryExecutor):
    def execute(self, plan_context, execution_plan):
        # dagster-celery registers its step task anew on each submission, to the same app: harmless.
        warnings.filterwarnings("ignore", category=DuplicateTaskNameWarning)
        connection = claims.client(self.broker)

        def watched(app, context, step, queue, priority, known_state) -> WatchedStep:
            return WatchedStep(
                lambda: _submit_task(app, context, step, queue, priority, known_state),
                context.dagster_run.run_id,
                step.key,
                context.log.warning,
                connection,
                environment.heartbeat_s(),
            )

        return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=watched)


@dg.executor(name="celery", requirements=dg.multiple_process_executor_requirements())
def celery_executor(init_context: dg.InitExecutorContext) -> WatchedCeleryExecutor:
    """Steps as Celery tasks on the platform's Redis (orchestrator.distributed.worker); no Dagster
    retries of a step: a lost step is delivered again here, a failed one fails the attempt, which
    the policy's attempts retry."""
    return WatchedCeleryExecutor(retries=RetryMode(RetryMode.DISABLED), **app_args())
