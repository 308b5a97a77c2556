"""Where the calling step runs, as its lineage row and its Dagster metadata show it."""

import socket


def current_worker() -> str:
    """The Celery worker (name@host) whose task runs this step, or "in-process" in the run's own process."""
    try:
        from celery import current_task
    except ImportError:  # installed without the celery extra: every step runs in its run's process
        return "in-process"
    # a proxy of the task this process runs: false outside a Celery task
    return current_task.request.hostname if current_task and current_task.request.hostname else "in-process"


def placement() -> dict[str, str]:
    """This host, the worker, and the device the step computes on (awq_core.compute decides it)."""
    from awq_core.compute import resolve

    return {"host": socket.gethostname(), "worker": current_worker(), "device": resolve().device_label}
