"""The connector paths' creator (Cloud SQL, AlloyDB) behind the process's one connect gate
(lib/postgres/gate.py), so a failing database costs at most one Admin API refresh per
back-off interval.

Both connectors refresh their certificate after a failed connect (two Admin API calls), and
concurrent failing connects each refresh. So until a connect succeeds, one attempt runs at a
time; after a failure, one per back-off interval (1 s doubling to 30 s, each up to a quarter
longer at random), a waking database included, and meanwhile a down one is answered from the
last failure at once. The failure is the `__cause__` of the ConnectError raised to the pool.
"""

from __future__ import annotations

from lib.connectors.instances import Instances
from lib.postgres import driver
from lib.postgres.gate import Gate


class GatedConnect:
    """The pool's creator around `_open_one(instance, deadline)`, which a subclass provides:
    the instances chosen by `Instances`, the whole bounded by `timeout`."""

    label = "the database"  # for messages: "Cloud SQL", "AlloyDB"

    def __init__(self, instances: Instances, timeout: float) -> None:
        self._instances = instances
        self._timeout = timeout
        self.gate = Gate(self.label, quick_wake=False)

    def __call__(self) -> driver.Connection:
        """A new connection, or ConnectError within DB_CONNECT_TIMEOUT (`__cause__` says why)."""
        return self.gate.connect(
            lambda deadline, _: self._instances.connect(self._open_one, deadline), self._timeout
        )

    def _open_one(self, instance: str, deadline: float) -> driver.Connection:
        raise NotImplementedError
