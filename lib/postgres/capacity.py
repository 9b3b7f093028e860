"""Connection budget: how many instances the database can take, and the startup check.

Every gunicorn worker of every instance has its own pool, and Cloud Run can briefly run
more instances than --max-instances during a spike (up to about 2x). So the fleet can hold

    max_instances x overshoot x workers x (pool_size + max_overflow)

connections, which must fit in max_connections - reserved - other clients. The command line
that prints a plan is devtools/plan.py (`make plan`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lib.config import Settings
from lib.postgres import driver

log = logging.getLogger(__name__)

OVERSHOOT = 2.0  # Cloud Run may run up to ~2x --max-instances during a spike


@dataclass(frozen=True)
class Plan:
    max_connections: int
    reserved: int
    other: int
    workers: int
    pool_size: int
    max_overflow: int
    overshoot: float
    # Database instances the connections spread over: a primary and its read replicas, or
    # the nodes of an AlloyDB read pool (max_connections is each one's own).
    instances: int = 1

    @property
    def available(self) -> int:
        return self.max_connections - self.reserved - self.other

    @property
    def per_instance(self) -> int:
        return self.workers * (self.pool_size + self.max_overflow)

    @property
    def max_instances(self) -> int:
        """The most instances whose worst-case burst still fits (0: not even one does)."""
        return max(int(self.available // (self.per_instance * self.overshoot)), 0)

    @property
    def threads(self) -> int:
        """Per worker: as many request threads as connections, so none waits for the pool."""
        return self.pool_size + self.max_overflow

    def explain(self) -> str:
        lines = [
            f"available   = max_connections {self.max_connections} - reserved {self.reserved}"
            f" - other clients {self.other} = {self.available}",
            f"per instance = workers {self.workers} x (pool_size {self.pool_size}"
            f" + max_overflow {self.max_overflow}) = {self.per_instance}",
            f"max instances = floor({self.available} / ({self.per_instance} x overshoot "
            f"{self.overshoot:g})) = {self.max_instances}",
        ]
        if self.instances > 1 and self.max_instances > 0:
            fleet = int(self.max_instances * self.overshoot * self.per_instance)
            lines.append(
                f"spread over {self.instances} database instances: about "
                f"{-(-fleet // self.instances)} connections each at the peak, but each must "
                f"admit all {fleet} when the others are down or lagging (plan with the "
                "smallest max_connections): replicas add read capacity, not connections"
            )
            lines.append(
                f"every standby lagging past DB_MAX_REPLICA_LAG at once: the primary takes all "
                f"{fleet} (prefer-standby falls back to it) until one is within the bound again"
            )
        if self.max_instances == 0:
            lines.append(
                "does not fit: even one instance's burst exceeds the budget. Lower DB_POOL_SIZE "
                "or WORKERS, raise max_connections, or put a transaction pooler in front."
            )
        else:
            concurrency = self.workers * self.threads
            lines.append(
                f"gcloud functions deploy ... --max-instances={self.max_instances} "
                f"--concurrency={concurrency} "
                f"--set-env-vars=WORKERS={self.workers},THREADS={self.threads},"
                f"DB_POOL_SIZE={self.pool_size},DB_MAX_OVERFLOW={self.max_overflow}"
            )
        return "\n".join(lines)


def check_budget(dbapi_connection: Any, settings: Settings) -> None:
    """On a process's first connection: one structured warning if the fleet cannot fit.

    The fleet is FLEET_MAX_INSTANCES (cloudbuild.yaml sets it) when known; otherwise the
    connections already carrying our application_name plus this process's full pool.
    """
    max_connections, reserved, ours, everyone = read_budget(
        dbapi_connection, settings.application_name
    )
    plan = Plan(
        max_connections,
        reserved,
        everyone - ours,
        settings.workers,
        settings.pool_size,
        settings.max_overflow,
        OVERSHOOT,
    )
    instances = settings.fleet_max_instances
    if instances is not None:
        fits, fleet = instances <= plan.max_instances, f"{instances} instances"
    else:
        fits, fleet = ours - 1 + plan.per_instance <= plan.available, f"{ours} connections seen"
    if not fits:
        log.warning(
            "connection budget exceeded (%s): %s",
            fleet,
            plan.explain().replace("\n", "; "),
            extra={
                "json_fields": {
                    "budget": {
                        "available": plan.available,
                        "per_instance": plan.per_instance,
                        "max_instances": plan.max_instances,
                    }
                }
            },
        )


def read_budget(dbapi_connection: Any, application_name: str) -> tuple[int, int, int, int]:
    """max_connections, superuser_reserved_connections, client backends carrying
    `application_name`, and all client backends (this connection included)."""
    [row] = driver.fetch(
        dbapi_connection,
        "SELECT current_setting('max_connections')::int, "
        "current_setting('superuser_reserved_connections')::int, "
        "count(*) FILTER (WHERE application_name = %s), count(*) "
        "FROM pg_stat_activity WHERE backend_type = 'client backend'",
        (application_name,),
    )
    return tuple(row)  # type: ignore[return-value]
