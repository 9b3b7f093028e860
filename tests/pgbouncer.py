"""PgBouncer (Debian's package) in front of a test PostgreSQL, configured per test."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil

import pytest

from devtools.devdb import free_port
from tests import processes

BINARY = shutil.which("pgbouncer") or (
    "/usr/sbin/pgbouncer" if os.path.exists("/usr/sbin/pgbouncer") else None
)


class PgBouncer:
    """127.0.0.1:<port> -> 127.0.0.1:<upstream_port>, one database `postgres`, plain-text
    auth for `user`. `settings` are extra [pgbouncer] lines (pool_mode, ...)."""

    def __init__(self, upstream_port: int, user: str, password: str, **settings: str) -> None:
        if BINARY is None:
            pytest.skip("pgbouncer is not installed (apt-get install pgbouncer; .ci/run does)")
        self.port = free_port()
        self.user, self.password = user, password
        self._files = contextlib.ExitStack()  # its directory, removed once it stopped
        conf = self._files.enter_context(processes.server_dir("pgbouncer"))
        (conf / "userlist.txt").write_text(f'"{user}" "{password}"\n')
        lines = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "plain",
            "auth_file": f"{conf}/userlist.txt",
            "max_client_conn": "500",
            "logfile": f"{conf}/pgbouncer.log",
            "pidfile": f"{conf}/pgbouncer.pid",
            **settings,
        }
        (conf / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"postgres = host=127.0.0.1 port={upstream_port} dbname=postgres "
            f"user={user} password={password}\n"
            "[pgbouncer]\n" + "".join(f"{key} = {value}\n" for key, value in lines.items())
        )
        for path in conf.iterdir():
            path.chmod(0o644)
        user_args = {}
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            nobody = pwd.getpwnam("nobody")
            os.chown(conf, nobody.pw_uid, nobody.pw_gid)
            user_args = {"user": nobody.pw_uid, "group": nobody.pw_gid}
        command = [BINARY, "--quiet", str(conf / "pgbouncer.ini")]
        self.launched = processes.start(command, {}, self.port, **user_args).wait_ready(10)

    def url(self, query: str = "sslmode=disable") -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/postgres?{query}"

    def stop(self) -> None:
        processes.stop([self.launched])
        self._files.close()

    def __enter__(self) -> PgBouncer:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
