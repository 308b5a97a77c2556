"""Where the calling step runs, as its lineage row and its Dagster metadata show it."""

import os
import re
import socket
from pathlib import Path

from orchestrator.environment import STEP_CONTAINER_HOST


def current_worker() -> str:
    """The Celery worker (name@host) whose task runs this step, the step's container, or "in-process"
    in the run's own process."""
    if STEP_CONTAINER_HOST in os.environ:  # a docker executor's step container
        return f"container {own_container_id()}"
    try:
        from celery import current_task
    except ImportError:  # installed without the celery extra: every step runs in its run's process
        return "in-process"
    # a proxy of the task this process runs: false outside a Celery task
    return current_task.request.hostname if current_task and current_task.request.hostname else "in-process"


def own_container_id() -> str:
    """This container's id as `docker ps` shortens it: Docker mounts the container's own resolv.conf
    and hostname files from its folder, named by the id (its host name is the machine's: host network)."""
    found = re.search(r"/containers/([0-9a-f]{64})/", Path("/proc/self/mountinfo").read_text())
    return found.group(1)[:12] if found else "unknown"


def placement() -> dict[str, str]:
    """This host, the worker, and the device the step computes on (awq_core.compute decides it)."""
    from awq_core.compute import resolve

    host = os.environ.get(STEP_CONTAINER_HOST, socket.gethostname())
    return {"host": host, "worker": current_worker(), "device": resolve().device_label}
