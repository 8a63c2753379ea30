"""Runs on one machine tell each other when they give slots back, so a waiting step asks at once.

The Prefect server holds every pool's slots and pushes nothing: a step refused its slots
asks again every PLANFLOW_SLOT_POLL_SECONDS (0.25 s, 0.15 s while it claims), and between
runs that wait was a large part of handing a core from one run's component to the next
(the fleet benchmark's components last 0.2-1.5 s).

So each run (RunSlots) binds a Unix datagram socket in a folder of its user's, one per
Prefect server (its API URL); whoever gives back slots of a limit sends, once the server
confirmed it, the limit's name to every socket there (`announce`), and a run with a step
waiting for that limit wakes its dispatcher, which asks the server at once.

A lease left for this machine's other runs (spare_leases.py) is announced with a
leading "~": it wakes the runs waiting for its limit like a give-back, and leaves their
reads of the limit standing (the server's count did not change).

Slots taken are announced too (`announce_taken`, the name with a leading "+"): they wake
nobody. Each datagram also says how many slots changed (`name 2`, `+name 2`), so a run
that hears it brings its last read of the limit up to date instead of reading it again
(runs on one machine share their reads of a limit: shared_reads.py; an announcement
without a count, from an older planflow, makes the read stale as before). Runs in the
same process hear each other at once, not through their sockets.

Nothing here grants anything: a datagram only makes a run ask the server sooner, or later.
A lost, late or forged one costs at most one request or a wait until the read is read
again (RunSlots: a second at most), and runs on other machines still poll. The
folder is private to the user (0700, checked); a socket whose process died is removed by
the next sender. PLANFLOW_SLOT_WAKE=false turns it off (polling alone).

    wake = SlotWake(on_freed=lambda limit: ...)   # listens on its own thread; .close() at the end
    announce("planflow-local-cpu-millicores")      # after the server took the slots back
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import secrets
import socket
import stat
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from prefect.settings import PREFECT_API_URL

from planflow.settings import settings

logger = logging.getLogger("planflow.admission")
MAX_DATAGRAM = 512  # a limit's name; anything longer is not ours and is dropped unread
SOCKET_SUFFIX = ".s"  # names kept short: a socket's path holds at most 107 bytes

_sender: socket.socket | None = None
_sender_lock = threading.Lock()
_folders: dict[str, Path | None] = {}  # API URL -> its folder, as checked once per process
_subfolders: dict[Path, Path | None] = {}  # a subfolder of one -> itself when private, else None (checked once)
TAKEN = "+"  # a datagram naming a limit whose slots were taken starts with this
SPARE = "~"  # ... whose lease a run left for this machine's others (spare_leases.py)
_here: set[SlotWake] = set()  # this process's listeners: told directly, not through their sockets
_here_lock = threading.Lock()


def wake_folder() -> Path | None:
    """The folder of this user's runs on this Prefect server (its URL, seen from this
    network namespace), made private; None when it
    cannot be (turned off, no Unix sockets, a folder someone else owns or others can read)."""
    if not hasattr(socket, "AF_UNIX") or not settings().slot_wake:
        return None
    url = str(PREFECT_API_URL.value() or "")
    if url not in _folders:
        _folders[url] = _private_folder(url)
    return _folders[url]


def _private_folder(url: str) -> Path | None:
    # The URL and the network namespace: two servers on one URL (http://127.0.0.1:4200, the
    # default) in two namespaces or containers that share /tmp are two servers, whose runs
    # must not take over each other's leases nor read each other's limits
    server = hashlib.sha256(f"{url}|{network_namespace()}".encode()).hexdigest()[:10]
    base = Path(tempfile.gettempdir()) / f"planflow-{os.getuid()}"
    folder = base / f"w{server}"
    try:
        for path in (base, folder):
            if not _made_private(path):
                logger.warning("%s is not a folder private to this user: runs poll for freed slots", path)
                return None
    except OSError as exc:
        logger.warning("no folder for slot wake-ups (%s): runs poll for freed slots", exc)
        return None
    return folder


def network_namespace() -> str:
    """This process's network namespace (Linux: its device and inode), "" where unknown."""
    try:
        found = os.stat("/proc/self/ns/net")
    except OSError:
        return ""
    return f"{found.st_dev}:{found.st_ino}"


def private_subfolder(name: str) -> Path | None:
    """`<wake folder>/<name>`, made and checked private to the user (once per process);
    None where there is no wake folder or it is not private (shared_reads.py, spare_leases.py)."""
    wake = wake_folder()
    if wake is None:
        return None
    folder = wake / name
    if folder not in _subfolders:
        try:
            private = _made_private(folder)
        except OSError:
            private = False
        _subfolders[folder] = folder if private else None
    return _subfolders[folder]


def _made_private(path: Path) -> bool:
    """Make folder `path` (0700) unless it exists; whether it is a folder of this user's
    that nobody else can read or write. OSError when it cannot be made or looked at."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not stat.S_IMODE(info.st_mode) & 0o077


def announce(limit: str, slots: int | None = None) -> None:
    """Tell this machine's runs on the same server that slots of `limit` (how many, when
    known) were given back."""
    _send(limit + _count(slots))


def announce_taken(limit: str, slots: int | None = None) -> None:
    """Tell this machine's runs on the same server that slots of `limit` (how many, when
    known) were taken."""
    _send(TAKEN + limit + _count(slots))


def _count(slots: int | None) -> str:
    """The datagram's tail that says how many slots changed (none when unknown)."""
    return f" {int(slots)}" if slots is not None and slots > 0 else ""


def announce_spare(limit: str) -> None:
    """Tell this machine's runs on the same server that a lease of `limit` waits to be
    taken over here (spare_leases.py): the server's count did not change."""
    _send(SPARE + limit)


def _send(text: str) -> None:
    folder = wake_folder()
    if folder is None:
        return
    with _here_lock:  # this process's runs on the same server
        here = [listener for listener in _here if listener.path is not None and listener.path.parent == folder]
    for listener in here:  # this process's runs: at once, in order with what the caller does next
        listener.hear(text)
    skip = {listener.path.name for listener in here if listener.path is not None}
    message = text.encode()[:MAX_DATAGRAM]
    global _sender
    with _sender_lock:
        if _sender is None:
            _sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            _sender.setblocking(False)
        sender = _sender
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if not entry.name.endswith(SOCKET_SUFFIX) or entry.name in skip:
            continue
        try:
            sender.sendto(message, entry.path)
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):  # its run is gone
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            # EAGAIN: its queue is full, it wakes anyway; other errors: it polls as before


def _with_count(text: str) -> tuple[str] | tuple[str, int]:
    """A callback's arguments: the datagram's limit, and its count of slots when it said
    one (an older planflow's does not)."""
    name, _, count = text.partition(" ")
    return (name, int(count)) if count.isdigit() and len(count) <= 9 else (name,)


class SlotWake:
    """One run's listener: `on_freed(limit[, slots])` is called on its own thread for each
    limit whose slots another run (or this one) gave back, `on_taken(limit[, slots])` for
    each whose slots were taken (`slots`: how many, when the announcer said it),
    `on_spare(limit)` for each with a lease left to be taken over (on_freed without it).
    Does nothing where there is no folder."""

    def __init__(
        self,
        on_freed: Callable[[str], None],
        on_taken: Callable[[str], None] | None = None,
        on_spare: Callable[[str], None] | None = None,
    ) -> None:
        self.on_freed, self.on_taken, self.on_spare = on_freed, on_taken, on_spare
        self.path: Path | None = None
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = False
        folder = wake_folder()
        if folder is None:
            return
        path = folder / f"{os.getpid()}-{secrets.token_hex(3)}{SOCKET_SUFFIX}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            listener.bind(str(path))
        except OSError as exc:  # e.g. a path longer than a socket's address may be
            listener.close()
            logger.warning("cannot listen for freed slots at %s (%s): this run polls", path, exc)
            return
        self.path, self._socket = path, listener
        self._thread = threading.Thread(target=self._listen, name="planflow-slot-wake", daemon=True)
        self._thread.start()
        with _here_lock:
            _here.add(self)

    def hear(self, text: str) -> None:
        """One announcement: a limit's slots given back, taken ("+" and its name), or a
        lease of it left to be taken over ("~"). A count after the name (`name 2`) says how
        many slots were given back or taken: the callback gets it as a second argument."""
        try:
            if text.startswith(TAKEN):
                if self.on_taken is not None:
                    self.on_taken(*_with_count(text[len(TAKEN) :]))
            elif text.startswith(SPARE):
                (self.on_spare or self.on_freed)(text[len(SPARE) :])
            else:
                self.on_freed(*_with_count(text))
        except Exception as exc:  # a wake-up is a hint: its failure leaves the poll
            logger.warning("a slot wake-up failed (%s); the run polls", exc)

    def _listen(self) -> None:
        listener = self._socket
        while listener is not None:
            try:
                data = listener.recv(MAX_DATAGRAM)
            except OSError:  # closed
                return
            if not data:
                if self._closing:
                    return  # close() woke it
                continue
            try:
                text = data.decode()
            except UnicodeDecodeError:
                continue
            self.hear(text)

    def close(self) -> None:
        listener = self._socket
        if listener is None:
            return
        with _here_lock:
            _here.discard(self)
        self._closing = True
        path = self.path
        with contextlib.suppress(OSError):
            # an empty datagram to itself ends recv() (closing a socket another thread reads does not)
            listener.sendto(b"", str(path))
        if self._thread is not None:
            self._thread.join(2.0)
        self._socket = None
        listener.close()
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()
