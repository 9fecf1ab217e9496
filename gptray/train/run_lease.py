"""A run directory's lease: one live launch at a time may train, resume, write or prune a run.

`lease.json` in the run directory names its holder (user, host, pid, a token of the launch) and a
heartbeat its holder's thread renews every HEARTBEAT_SECONDS. A second launch of the same run
directory is refused, naming both launches, while the lease is live; a lease whose heartbeat is older
than STALE_SECONDS, or whose holder's process is gone from this host, was left by a launch that died,
and is taken over with a warning. Object stores have no atomic create here, so the lease is written,
then read back: of two launches racing within one write, the one whose token is not read back stops.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from gptray.core.errors import RunInUse
from gptray.core.storage import Storage

log = logging.getLogger(__name__)

LEASE_FILE = "lease.json"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 300.0


@dataclass
class Holder:
    user: str
    host: str
    pid: int
    token: str  # this launch's: two launches by one process are one holder only if re-entrant (same token)
    since: float
    heartbeat: float

    @classmethod
    def me(cls, token: str) -> Holder:
        now = time.time()
        return cls(_user(), socket.gethostname(), os.getpid(), token, now, now)

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since))
        return (f"{self.user}@{self.host} pid {self.pid} (since {since}, "
                f"heartbeat {max(time.time() - self.heartbeat, 0):.0f} s ago)")

    def is_alive(self) -> bool:
        """Whether the holder still renews the lease: a recent heartbeat, and on this host a live process."""
        if time.time() - self.heartbeat > STALE_SECONDS:
            return False
        if self.host == socket.gethostname():
            return _process_runs(self.pid)
        return True


class RunLease:
    """The lease on one run directory, held from `acquire` to `release` (a context manager)."""

    def __init__(self, run: Storage, name: str):
        self.run, self.name = run, name
        self.holder = Holder.me(uuid.uuid4().hex)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made_dir = False

    def acquire(self) -> RunLease:
        current = self._read()
        if current is not None and current.pid == os.getpid() and current.host == self.holder.host:
            self.holder.token = current.token  # this process holds it already (a relaunch in one process)
        elif current is not None and current.is_alive():
            raise RunInUse(f"run {self.name} ({self.run.uri()}) is in use by {current.describe()}; this launch is "
                           f"{self.holder.describe()}. Wait for it to finish, stop it, or give this run another "
                           "name (name=… or out_dir=…)")
        elif current is not None:
            log.warning("run %s: taking over the lease of %s, which no longer runs (no heartbeat for %.0f s or no "
                        "such process)", self.name, current.describe(), time.time() - current.heartbeat)
        self._made_dir = self.run.is_local and not os.path.isdir(self.run.path())
        self.run.make_dirs("")
        self._write()
        written = self._read()
        if written is None or written.token != self.holder.token:
            raise RunInUse(f"run {self.name} ({self.run.uri()}) was taken at the same moment by "
                           f"{written.describe() if written else 'another launch'}; this launch is "
                           f"{self.holder.describe()}")
        self._thread = threading.Thread(target=self._beat, name=f"lease-{self.name}", daemon=True)
        self._thread.start()
        return self

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = self._read()
        if current is not None and current.token == self.holder.token and current.pid == os.getpid():
            self.run.delete(LEASE_FILE)
        if self._made_dir:  # a launch refused before it wrote anything leaves no directory behind
            with contextlib.suppress(OSError):
                os.rmdir(self.run.path())  # only if empty

    def __enter__(self) -> RunLease:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.holder.heartbeat = time.time()
                self._write()
            except Exception as exc:  # a storage hiccup: the next beat tries again, well before the lease is stale
                log.warning("run %s: cannot renew its lease: %s", self.name, exc)

    def _write(self) -> None:
        self.run.write_bytes(LEASE_FILE, json.dumps(asdict(self.holder)).encode())

    def _read(self) -> Holder | None:
        if not self.run.exists(LEASE_FILE):
            return None
        try:
            return Holder(**json.loads(self.run.read_bytes(LEASE_FILE)))
        except (ValueError, TypeError) as exc:  # not a lease gptray wrote: nobody can be said to hold it
            log.warning("run %s: ignoring an unreadable %s (%s)", self.name, LEASE_FILE, exc)
            return None


def holds_run_lease(function):
    """Decorate a driver taking the run's config first: it runs holding the lease on config.run_dir."""

    @functools.wraps(function)
    def held(config, *args, **kwargs):
        with RunLease(Storage(config.run_dir), config.name):
            return function(config, *args, **kwargs)

    return held


def _process_runs(pid: int) -> bool:
    """Whether a process of this host runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return True  # no /proc (macOS): existing is all we can tell
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


def _user() -> str:
    with contextlib.suppress(Exception):
        return getpass.getuser()
    return str(os.getuid())
