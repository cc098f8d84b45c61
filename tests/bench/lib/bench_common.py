"""Small helpers shared by the benchmark scripts (stdlib only)."""

import ipaddress
import json
import os
import pwd
import grp
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

BENCH_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PASSWORD = "bench-Pa55word"
LOOPBACK = "127.0.0.1"


def _prog():
    return "tests/bench/" + Path(sys.argv[0]).name


def die(msg, code=2):
    print(f"{_prog()}: error: {msg}", file=sys.stderr)
    sys.exit(code)


def log(msg):
    stamp = time.strftime("%H:%M:%S")
    print(f"[{_prog()} {stamp}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Network safety: everything in this harness talks to loopback only.

def require_loopback(host):
    """Return host if it is a loopback address (or 'localhost'), else exit."""
    if host == "localhost":
        return host
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        die(f"host {host!r} is not a literal loopback address; "
            "this harness only talks to 127.0.0.0/8, ::1 or 'localhost'")
    if not ip.is_loopback:
        die(f"refusing non-loopback address {host}")
    return host


def free_port(host=LOOPBACK):
    """Ask the kernel for a currently unused TCP port on host."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host, port, timeout=10.0):
    """Wait (bounded) until something accepts TCP connections on host:port."""
    require_loopback(host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


# --------------------------------------------------------------------------
# Accounts file: one "user password" pair per line, '#' starts a comment.

def read_accounts(path):
    accounts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 1)
            if len(parts) != 2:
                die(f"{path}:{lineno}: expected 'user password'")
            accounts.append((parts[0], parts[1]))
    if not accounts:
        die(f"{path}: no accounts")
    return accounts


def write_accounts(path, accounts):
    with open(path, "w", encoding="utf-8") as f:
        f.write("# user password (one account per line)\n")
        for user, pw in accounts:
            f.write(f"{user} {pw}\n")
    os.chmod(path, 0o644)


def user_names(n):
    width = max(3, len(str(n)))
    return [f"user{i:0{width}d}" for i in range(1, n + 1)]


# --------------------------------------------------------------------------
# Maildir helpers

def make_maildir(path, mode=0o700):
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(exist_ok=True, mode=mode)
    return path


# --------------------------------------------------------------------------
# Users / privileges

def lookup_user(name_or_uid):
    try:
        if str(name_or_uid).isdigit():
            pw = pwd.getpwuid(int(name_or_uid))
        else:
            pw = pwd.getpwnam(str(name_or_uid))
    except KeyError:
        die(f"unknown user {name_or_uid!r}")
    return pw


def chown_tree(path, uid, gid):
    path = str(path)
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), uid, gid)


def privdrop_prefix(pw):
    """argv prefix that runs a command as passwd entry pw (we are root)."""
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
            "--clear-groups", "--"]


def default_run_as():
    """Clients run unprivileged: as 'nobody' when we are root, else as us."""
    return "nobody" if os.geteuid() == 0 else None


def check_traversable(path):
    """Return the first ancestor of path that 'other' users cannot enter."""
    p = Path(path).resolve()
    for anc in [p] + list(p.parents):
        st = anc.stat()
        if not st.st_mode & 0o001:
            return anc
    return None


# --------------------------------------------------------------------------
# Processes

def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours still "exists"; treat as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] == "Z":
                return False
    except OSError:
        return False
    return True


def proc_cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def stop_pid(pid, expect_in_cmdline=None, timeout=10.0):
    """Terminate one process we started (by PID), bounded in time."""
    if not pid_alive(pid):
        return True
    if expect_in_cmdline and expect_in_cmdline not in proc_cmdline(pid):
        log(f"pid {pid} does not look like ours ({expect_in_cmdline!r} not in "
            "its command line); not touching it")
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    return not pid_alive(pid)


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, **kw)


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_json(path, obj):
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
