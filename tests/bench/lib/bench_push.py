"""What the push scenarios (I5, I6) watch: when each message appears in a
client's Maildir, and what a long-running client process costs while it
waits (Linux /proc, stdlib only)."""

import os
import re
import threading
import time
from pathlib import Path

from bench_measure import _stat_fields, _TCK

_BENCH_ID_RE = re.compile(rb"^X-Bench-Id:[ \t]*(\S+)", re.M | re.I)


class MaildirWatcher(threading.Thread):
    """Notes when each message (by X-Bench-Id) first appears in new/ or cur/
    of any Maildir below root (root/<user>/{new,cur}): a scan every 5 ms (a
    file shows up there complete, by rename or link from tmp/).
    seen: {bench id: time.monotonic()}."""

    def __init__(self, root, users, interval=0.005):
        super().__init__(daemon=True)
        self.dirs = [Path(root) / u / sub for u in users
                     for sub in ("new", "cur")]
        self.interval = interval
        self.seen, self.known = {}, set()
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def scan(self):
        with self.lock:
            now = time.monotonic()
            for d in self.dirs:
                try:
                    names = os.listdir(d)
                except OSError:
                    continue
                for n in names:
                    key = (d.parent, n.split(":", 1)[0])  # same new/ -> cur/
                    if key in self.known:
                        continue
                    try:
                        with open(d / n, "rb") as f:
                            head = f.read(65536)
                    except OSError:
                        continue  # moved meanwhile: next scan
                    self.known.add(key)
                    end = head.find(b"\n\n")
                    m = _BENCH_ID_RE.search(head if end < 0 else head[:end + 1])
                    if m:
                        self.seen.setdefault(
                            m.group(1).decode("ascii", "replace"), now)

    def run(self):
        while not self.halt.is_set():
            self.scan()
            self.halt.wait(self.interval)

    def stop(self):
        self.halt.set()
        self.join(5)


def child_pids(pid):
    """PIDs whose parent is pid."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if int(_stat_fields(d)[1][1]) == pid:
                kids.append(int(d))
        except (OSError, IndexError, ValueError):
            continue
    return kids


def proc_sample(pid):
    """One look at a process: own CPU seconds, resident and peak resident
    set (KiB), context switches, open sockets; None if it is gone."""
    try:
        _, fl = _stat_fields(pid)
        status = Path(f"/proc/{pid}/status").read_text()
    except (OSError, IndexError):
        return None
    s = {"cpu": (int(fl[11]) + int(fl[12])) / _TCK, "t": time.monotonic()}
    for line in status.splitlines():
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM"):
            s[k] = int(v.split()[0])
        elif k in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            s[k] = int(v)
    try:
        s["sockets"] = sum(1 for fd in os.listdir(f"/proc/{pid}/fd")
                           if os.readlink(f"/proc/{pid}/fd/{fd}")
                           .startswith("socket:"))
    except OSError:
        s["sockets"] = None
    return s


def idle_sessions(pids):
    """How many of Dovecot's imap processes (among pids) are in IDLE right
    now: with verbose_proctitle their title ends in "IDLE]"."""
    n = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                title = f.read().replace(b"\0", b" ").strip()
        except OSError:
            continue
        if b"/imap [" in title and title.endswith(b"IDLE]"):
            n += 1
    return n


def login_count(log_path, offset, user_set):
    """Distinct users of user_set with an IMAP login in Dovecot's log after
    offset."""
    seen = set()
    try:
        with open(log_path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except OSError:
        return 0
    for m in re.finditer(rb"imap-login: Info: Login: user=<([^>]*)>", data):
        u = m.group(1).decode("ascii", "replace")
        if u in user_set:
            seen.add(u)
    return len(seen)
