"""The Celery app of the platform's workers: `awq-release worker --queues gpu --concurrency 1`.

Every worker and every run's executor build the same app from the environment (the broker at
AWQ_RELEASE_BROKER_URL), so a step submitted by a run on one machine is taken by a worker on another.
A worker takes a step only when one of its processes is free (no prefetch: a busy GPU worker holds no
second step that another could run) and acknowledges it as it starts, so Redis never hands a started
step out again by itself; each delivery holds the step's claim (orchestrator.distributed.claims)
while it runs, and the run's executor gives a step whose worker died to another worker.
"""

import socket
from typing import Any

import celery
import redis
from dagster._grpc.types import ExecuteStepArgs
from dagster._serdes import unpack_value
from dagster_celery.config import DEFAULT_CONFIG
from dagster_celery.make_app import make_app_with_task_routes
from dagster_celery.tasks import create_task
from kombu import Exchange, Queue

from awq_release.errors import ReleaseError
from orchestrator import environment
from orchestrator.distributed import claims

QUEUES = ("gpu", "cpu")  # the policy's placement: accelerator steps and the rest


def celery_settings() -> dict[str, Any]:
    """Settings shared by the executor and the workers: Redis for messages and results, one step per
    free process, acknowledged as it starts."""
    return DEFAULT_CONFIG | {
        "worker_disable_prefetch": True,
        "task_acks_late": False,
        "broker_connection_retry_on_startup": True,
        "result_expires": 7 * 24 * 3600,
        "worker_hijack_root_logger": False,
        "task_default_queue": "cpu",  # steps without a queue tag (orchestrator.pipeline.placement)
    }


def app_args() -> dict[str, Any]:
    url = environment.broker_url()
    return {"broker": url, "backend": url, "include": [], "config_source": celery_settings()}


class ClaimedStep(celery.Task):
    """dagster-celery's step task, run only by the delivery that holds the step's claim."""

    def __call__(self, *args, execute_step_args_packed: dict, executable_dict: dict) -> list:
        step_args = unpack_value(execute_step_args_packed, as_type=ExecuteStepArgs)
        (step_key,) = step_args.step_keys_to_execute
        connection = claims.client(environment.broker_url())
        mine = claims.Claim("running", self.request.id, self.request.hostname)
        with claims.claimed(connection, step_args.run_id, step_key, mine, environment.heartbeat_s()) as held:
            if held is not mine:  # finished by an earlier delivery: its events, not a second run
                return self.AsyncResult(held.task_id).get(disable_sync_subtasks=False)
            return super().__call__(
                *args, execute_step_args_packed=execute_step_args_packed, executable_dict=executable_dict
            )


def worker_app() -> celery.Celery:
    routes = {"execute_plan": {"queue": "cpu", "routing_key": "cpu.execute_plan"}}
    app = make_app_with_task_routes(routes, app_args())
    # dagster-celery submits a step to queue Q with routing key "Q.execute_plan"
    app.conf.task_queues = [Queue(name, Exchange(name), routing_key=f"{name}.execute_plan") for name in QUEUES]
    create_task(app, base=ClaimedStep)
    return app


def require_broker() -> None:
    """One clear error where Redis cannot be reached, before a worker or a run waits on it."""
    url = environment.broker_url()
    try:
        claims.client(url).ping()
    except redis.RedisError as e:
        raise ReleaseError(
            f"The Celery broker at {url} is unreachable ({e}): start Redis there (docs/scale-out.md) "
            "or point AWQ_RELEASE_BROKER_URL at it."
        ) from e


def start_worker(queues: list[str], concurrency: int, name: str | None) -> None:
    """Serve the queues until stopped (SIGTERM: finish the current step; a second SIGTERM or SIGKILL:
    stop now, and the step goes to another worker)."""
    require_broker()
    node = f"{name or 'awq-' + '-'.join(queues)}@{socket.gethostname()}"
    argv = ["worker", "-Q", ",".join(queues), "-c", str(concurrency), "-n", node, "--loglevel", "INFO"]
    worker_app().worker_main([*argv, "--prefetch-multiplier", "1", "--without-gossip", "--without-mingle"])
