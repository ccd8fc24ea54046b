"""Which executor places a run's steps: in the run's own process (the local default), or on
Celery workers (dagster-celery) for a cluster. The Celery settings live here once: the executor
the runs use and the config file every worker starts with (`dagster-celery worker start -y`)."""

from __future__ import annotations

from typing import Any, Literal

from dagster import ExecutorDefinition, in_process_executor
from dagster_celery import celery_executor
from pydantic import BaseModel, ConfigDict, Field

ExecutorName = Literal["in_process", "celery"]


class CelerySettings(BaseModel):
    """Dagster's Celery executor: the Redis that carries a run's steps to the workers."""

    model_config = ConfigDict(extra="forbid")

    broker: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="The Celery broker: steps wait here for a worker ($MPEGFLOW_CELERY_BROKER).",
    )
    backend: str = Field(
        default="redis://127.0.0.1:6379/1",
        description="Where workers leave each step's events for its run ($MPEGFLOW_CELERY_BACKEND).",
    )
    lost_step_after_s: int = Field(
        default=3600,
        ge=1,
        description="A step whose whole worker vanished (machine lost) is handed to another worker "
        "after this long (Redis' visibility timeout). Keep it above your longest step: a step "
        "still running after it is handed out again too ($MPEGFLOW_CELERY_LOST_STEP_AFTER_S).",
    )


def celery_executor_config(celery: CelerySettings) -> dict[str, Any]:
    """The celery executor's config (also the `execution: config:` of a worker's config file),
    set so that a step whose worker dies is run again instead of lost:

    - `task_acks_late`: a step's task is acknowledged when it ends, not when a worker takes it;
    - `task_reject_on_worker_lost`: when the process running a step dies (SIGKILL, the OOM
      killer), its worker puts the task back in the queue at once, for any worker to take;
    - `visibility_timeout`: when the whole worker dies (the machine is lost), nobody puts it back,
      and Redis hands the unacknowledged task out again after this long;
    - `worker_prefetch_multiplier: 1`: a busy worker holds no task another worker could run;
    - `result_backend_always_retry`: a run waiting on its steps' results rides out a Redis restart;
    - `worker_cancel_long_running_tasks_on_connection_loss`: a step running when the worker loses
      Redis (a restart) cannot be acknowledged any more; cancelled at once, it fails as a
      transient failure and Dagster's RetryPolicy runs it again in the same run. Left running
      instead, it would finish but be handed out again one visibility timeout later, a ghost run
      of the step after its run ended (measured: docs/cluster.md).
    Dagster's step retries (RetryPolicy) cover failures inside a step; a lost worker never reports
    a failure, so only these redeliveries bring its step back (docs/cluster.md, "Faults")."""
    return {
        "broker": celery.broker,
        "backend": celery.backend,
        "config_source": {
            "task_acks_late": True,
            "task_reject_on_worker_lost": True,
            "worker_prefetch_multiplier": 1,
            "result_backend_always_retry": True,
            "result_backend_max_retries": 60,
            "worker_cancel_long_running_tasks_on_connection_loss": True,
            "broker_connection_retry_on_startup": True,
            "broker_transport_options": {
                "visibility_timeout": celery.lost_step_after_s,
                # sweep for abandoned tasks every few seconds (kombu's default: every 100 s)
                "unacked_restore_interval": max(1, min(10, celery.lost_step_after_s // 4)),
                "unacked_restore_throttle": 1,
            },
        },
    }


def run_executor(executor: ExecutorName, celery: CelerySettings) -> ExecutorDefinition:
    """In process unless the settings choose celery: a video's parallel work is inside its encode
    step (lanes of FFmpeg processes), so a process per step would only add start-up time locally
    (~3 s a step with Dagster's multiprocess executor here, ~0.02 s in process;
    docs/performance.md). On a cluster each step goes to a Celery worker."""
    if executor == "celery":
        return celery_executor.configured(celery_executor_config(celery), name="mpegflow_celery")
    return in_process_executor
