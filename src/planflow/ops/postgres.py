"""The scale-out database: Debian's PostgreSQL, run by planflow for the Prefect server.

`planflow server up --db postgres` starts a PostgreSQL cluster of this project and the
Prefect server on it (PREFECT_API_DATABASE_CONNECTION_URL); `planflow server down` stops
both. Many concurrent runs strain SQLite (one writer at a time); PostgreSQL takes them.

The cluster lives in the state folder: `postgres/` (the data folder and its log),
`postgres.password` (0600, the password of the role `planflow`, made at `initdb`) and
`postgres.json` (its port). It listens on 127.0.0.1 only, with password
(scram-sha-256) authentication and no unix socket. PostgreSQL refuses to run as root:
as root, its folder belongs to the `postgres` user that Debian's package creates, the
server runs as that user, and the state folder is opened for traversal (0711, no
listing) so that it can reach its data; every file of planflow stays 0600.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from planflow.ops.processes import free_port, port_in_use
from planflow.settings import DEFAULT_HOST, StatePaths, make_private_dir, make_private_tree, write_private

INSTALL_HINT = "apt-get install -y postgresql (in planflow's repository: bash scripts/install-services.sh)"
OS_USER = "postgres"  # the account Debian's package creates; used when planflow runs as root
ROLE = "planflow"
DATABASE = "prefect"


def make_state_private(paths: StatePaths) -> list[Path]:
    """The state folder made its user's only again (what an older planflow or another umask
    left readable), the path to a PostgreSQL cluster in it kept (see Cluster.opens_state_folder)."""
    return make_private_tree(paths.home, open_root=Cluster(paths).opens_state_folder)


class PostgresError(RuntimeError):
    """PostgreSQL is missing, or its cluster could not be made, started or stopped."""


def bin_dir() -> Path:
    """The folder of `initdb` and `pg_ctl`: Debian's newest `/usr/lib/postgresql/N/bin`,
    else wherever `pg_ctl` is on PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(Path(found).resolve().parent)
    for folder in candidates:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    raise PostgresError(f"PostgreSQL is not installed (no initdb and pg_ctl found). Fix: {INSTALL_HINT}")


def _as_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class Cluster:
    """The PostgreSQL cluster of one state folder."""

    paths: StatePaths

    @property
    def root(self) -> Path:
        return self.paths.home / "postgres"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_file(self) -> Path:
        return self.root / "postgres.log"

    @property
    def password_file(self) -> Path:
        return self.paths.home / "postgres.password"

    @property
    def record_file(self) -> Path:
        return self.paths.home / "postgres.json"

    @property
    def initialized(self) -> bool:
        return (self.data / "PG_VERSION").exists()

    def port(self) -> int | None:
        try:
            return int(json.loads(self.record_file.read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def password(self) -> str:
        try:
            return self.password_file.read_text().strip()
        except OSError as exc:
            raise PostgresError(
                f"the PostgreSQL password file {self.password_file} cannot be read ({exc}). Fix: "
                f"`planflow server down`, remove {self.root} to make the cluster again, then "
                "`planflow server up --db postgres`"
            ) from exc

    def url(self, host: str = DEFAULT_HOST) -> str:
        """The SQLAlchemy URL Prefect's server takes (the password URL-quoted)."""
        return f"postgresql+asyncpg://{ROLE}:{quote(self.password(), safe='')}@{host}:{self.port()}/{DATABASE}"

    # -- running programs ---------------------------------------------------------------
    def _owner_command(self, *args: str) -> list[str]:
        """A server-side program (initdb, pg_ctl), as the `postgres` account when root."""
        command = [str(bin_dir() / args[0]), *args[1:]]
        return ["runuser", "-u", OS_USER, "--", *command] if _as_root() else command

    def _run(self, command: list[str], what: str, timeout: float, env: dict[str, str] | None = None) -> str:
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=timeout, env=env, cwd=self.paths.home
            )
        except subprocess.TimeoutExpired as exc:
            raise PostgresError(f"{what} did not finish within {timeout:g} s. Log: {self.log_file}") from exc
        if done.returncode != 0:
            raise PostgresError(
                f"{what} failed (exit {done.returncode}): {(done.stderr or done.stdout).strip()[-800:]}. "
                f"Log: {self.log_file}"
            )
        return done.stdout

    def _client_env(self) -> dict[str, str]:
        return {**os.environ, "PGPASSWORD": self.password(), "PGCONNECT_TIMEOUT": "5"}

    def _client(self, program: str, *args: str) -> list[str]:
        return [str(bin_dir() / program), "-h", DEFAULT_HOST, "-p", str(self.port()), "-U", ROLE, *args]

    # -- permissions when root ----------------------------------------------------------
    @property
    def opens_state_folder(self) -> bool:
        """As root with a cluster here: the state folder must stay 0711, the `postgres`
        account's path to its data (`stack up` made it 0700 and the running database
        failed at its next checkpoint, every API call answering 500)."""
        return _as_root() and self.root.is_dir()

    def _open_for_owner(self) -> None:
        """As root: the cluster's folder to the `postgres` account, and a path to it."""
        if not _as_root():
            return
        try:
            account = pwd.getpwnam(OS_USER)
        except KeyError as exc:
            raise PostgresError(f"there is no '{OS_USER}' account to run PostgreSQL as. Fix: {INSTALL_HINT}") from exc
        self.paths.home.chmod(0o711)  # traversal only: nothing in it can be listed
        for folder in self.paths.home.parents:
            if not folder.stat().st_mode & 0o001:
                raise PostgresError(
                    f"PostgreSQL runs as '{OS_USER}' and cannot reach {self.root}: {folder} is closed to "
                    f"other users. Fix: keep the state folder elsewhere (PLANFLOW_HOME=/some/open/path) "
                    f"or `chmod o+x {folder}`"
                )
        for path in (self.root, *self.root.rglob("*")):
            os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)

    # -- lifecycle ------------------------------------------------------------------------
    def init(self, port: int) -> None:
        """A new cluster: a random password (0600), `initdb`, 127.0.0.1:`port` only."""
        make_private_dir(self.root)
        write_private(self.password_file, secrets.token_urlsafe(24))
        pwfile = self.root / "initdb.pw"  # readable by the server's account, removed at once
        write_private(pwfile, self.password() + "\n")
        try:
            self._open_for_owner()
            self._run(
                self._owner_command(
                    "initdb", "-D", str(self.data), "-U", ROLE, f"--pwfile={pwfile}",
                    "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "-E", "UTF8", "--no-locale",
                ),
                "initdb",
                timeout=120,
            )  # fmt: skip
        finally:
            pwfile.unlink(missing_ok=True)
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# planflow: its own settings, rewritten at every start\ninclude_if_exists = 'planflow.conf'\n"
            )
        self._configure(port)

    def _configure(self, port: int) -> None:
        conf = self.data / "planflow.conf"
        conf.write_text(
            f"listen_addresses = '{DEFAULT_HOST}'\nport = {port}\nunix_socket_directories = ''\nmax_connections = 200\n"
        )
        write_private(self.record_file, json.dumps({"port": port, "database": DATABASE, "role": ROLE}))
        self._open_for_owner()

    def running(self) -> bool:
        if not self.initialized or self.port() is None:
            return False
        done = subprocess.run(
            [str(bin_dir() / "pg_isready"), "-h", DEFAULT_HOST, "-p", str(self.port()), "-t", "2"],
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0

    def up(self, port: int | None = None, timeout: float = 60.0) -> str:
        """Start the cluster (made on first use) and its `prefect` database; the URL.
        Port: the one it had, while free; else `port`, else any free one."""
        bin_dir()
        if not self.running():
            recorded = self.port()
            chosen = recorded if recorded and not port_in_use(DEFAULT_HOST, recorded) else (port or free_port())
            if self.initialized:
                self._configure(chosen)
            else:
                self.init(chosen)
            self._open_for_owner()
            self._run(
                self._owner_command(
                    "pg_ctl", "-D", str(self.data), "-l", str(self.log_file), "-w", "-t", str(int(timeout)), "start"
                ),
                f"starting PostgreSQL on {DEFAULT_HOST}:{self.port()}",
                timeout=timeout + 10,
            )
        self._ensure_database()
        return self.url()

    def _ensure_database(self) -> None:
        found = self._run(
            self._client("psql", "-d", "postgres", "-tAc", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"),
            "looking for the prefect database",
            timeout=30,
            env=self._client_env(),
        )
        if found.strip() != "1":
            self._run(self._client("createdb", DATABASE), "createdb", timeout=30, env=self._client_env())

    def down(self, timeout: float = 30.0) -> None:
        """Stop the cluster (fast shutdown: open sessions are ended); no-op when stopped."""
        if not self.initialized or not (self.data / "postmaster.pid").exists():
            return
        self._open_for_owner()
        self._run(
            self._owner_command("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"),
            "stopping PostgreSQL",
            timeout=timeout + 10,
        )
