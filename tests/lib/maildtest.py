"""maildtest.py: helpers to drive maild from the integration tests.

    bin = maildtest.maild_bin()
    cfg = maildtest.write_config(path, accounts=[...], state_dir=...)
    r = maildtest.run_maild(["--once", "-f", cfg], timeout=60)
    r.rc, r.stderr, r.accounts["work"]["fetched"]
    got = maildtest.read_maildir(path)
    maildtest.assert_messages(got, expected_msgs)   # exactly once, byte-exact
    maildtest.assert_tmp_empty(path)

All of maild's output is attached to the running tap test, so a failing
test shows the last lines of maild's stderr.
"""

import collections
import os
import re
import shlex
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import tap

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# exit codes (sysexits)
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_PROTOCOL = 76
EX_NOPERM = 77
EX_CONFIG = 78

# <sec>.M<usec>P<pid>Q<seq>A<8 hex tag>.<host>,S=<size>
NAME_RE = re.compile(r"^(\d+)\.M(\d+)P(\d+)Q(\d+)A([0-9a-f]{8})\.([^/,:]+)"
                     r",S=(\d+)$")


class MaildTimeout(AssertionError):
    pass


def maild_bin():
    """$MAILD_BIN, or <builddir>/src/maild (MAILD_BUILDDIR or the repo)."""
    b = os.environ.get("MAILD_BIN")
    if b:
        return b
    build = os.environ.get("MAILD_BUILDDIR")
    return str(Path(build) / "src" / "maild" if build
               else REPO / "src" / "maild")


_SANITIZED = {}


def sanitized():
    """Is maild built with AddressSanitizer (then it runs slower, and its
    RSS means nothing: freed memory sits in ASan's quarantine)?"""
    b = maild_bin()
    if b not in _SANITIZED:
        try:
            with open(b, "rb") as f:
                _SANITIZED[b] = b"__asan_init" in f.read()
        except OSError:
            _SANITIZED[b] = False
    return _SANITIZED[b]


SANITIZER_SCALE = 3


def timeout_scale():
    """What every time limit of the tests, and every bound on how long
    maild may take, is multiplied by: $MAILD_TIMEOUT_SCALE (tests/run sets
    20 for valgrind), else SANITIZER_SCALE for a maild built with
    sanitizers, else 1.  Tests assert order and behaviour; the few bounds
    on wall-clock time that remain are generous, and scaled."""
    v = os.environ.get("MAILD_TIMEOUT_SCALE")
    if v:
        return float(v)
    return SANITIZER_SCALE if sanitized() else 1.0


def require_maild():
    b = maild_bin()
    if not os.access(b, os.X_OK):
        raise tap.Skip(f"{b} not built (run make, or set MAILD_BIN)")
    return b


def no_ipv6():
    """Why there is no IPv6 loopback here, or None if there is one (for
    @tap.test(skip=...))."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return None
    except OSError:
        return "no IPv6 loopback"


# ---------------------------------------------------------------------------
# configuration

def quote(s):
    """A libconfuse double-quoted string."""
    s = str(s)
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, Raw):
        return v.text
    return quote(v)


class Raw:
    """A config value written as is (e.g. Raw("5m") or Raw("yes"))."""

    def __init__(self, text):
        self.text = text


def config_text(accounts, state_dir=None, **globals_):
    """Config text.  accounts: list of dicts with a "name" key and the
    options (underscores become dashes; None values are left out).
    globals_: global options, same convention."""
    lines = []
    if state_dir is not None:
        lines.append(f"state-dir = {quote(state_dir)}")
    for k, v in globals_.items():
        if v is not None:
            lines.append(f"{k.replace('_', '-')} = {_value(v)}")
    for a in accounts:
        a = dict(a)
        name = a.pop("name")
        lines.append(f"account {quote(name)} {{")
        for k, v in a.items():
            if v is not None:
                lines.append(f"    {k.replace('_', '-')} = {_value(v)}")
        lines.append("}")
    return "\n".join(lines) + "\n"


def write_file(path, text, mode=0o600):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, mode)
    return path


def write_config(path, accounts, state_dir=None, mode=0o600, **globals_):
    """Write a config file (mode 0600 by default); returns its path."""
    text = config_text(accounts, state_dir=state_dir, **globals_)
    p = write_file(path, text, mode)
    t = tap.current()
    if t is not None:
        t.attach(f"config {Path(path).name}", text)
    return p


def account(name, host, port, user, password, maildir, keep=False,
            ca_file=None, **extra):
    """An account dict for write_config()."""
    a = {"name": name, "host": host, "port": port, "user": user,
         "password": password, "maildir": str(maildir), "keep": keep,
         "ca_file": str(ca_file) if ca_file else None}
    a.update(extra)
    return a


# ---------------------------------------------------------------------------
# running maild

class Result:
    maxrss_mb = None    # maild's own peak RSS, with run_maild(rss=True)
    signal = None       # the signal that killed maild, if one did

    def __init__(self, args, rc, stdout, stderr, seconds):
        self.args = args
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr
        self.seconds = seconds
        self.accounts = parse_log(stderr)

    def __repr__(self):
        return f"<maild rc={self.rc} {self.seconds:.1f}s>"

    def account(self, name):
        """The summary log line of account name, as a dict; fails if there
        is none or more than one."""
        recs = [r for r in summary_lines(self.stderr) if r["account"] == name]
        assert len(recs) == 1, (f"expected one summary line for account "
                                f"{name!r}, found {len(recs)}")
        return recs[0]


def _env(extra=None):
    env = dict(os.environ)
    env.setdefault("HOME", "/tmp")
    env["LC_ALL"] = "C"
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)        # None: unset it
        else:
            env[k] = str(v)
    return env


TIME_BIN = "/usr/bin/time"       # GNU time: maild's own peak RSS


def _hwm_kb(pid):
    """VmHWM of a running process (kB), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def run_maild(args, timeout=60, env=None, check_rc=None, label="maild",
              rss=False):
    """Run maild with args (a list), bounded by timeout seconds: on timeout
    maild is killed (by its PID) and MaildTimeout is raised with its output.
    Returns a Result.  check_rc: assert this exit status.

    rss=True also measures maild's own peak RSS (r.maxrss_mb).  wait4()'s
    ru_maxrss cannot be used directly: Linux carries the peak RSS of the
    forking Python process over the exec.  So maild runs under GNU time (a
    small process in between) when /usr/bin/time exists; otherwise VmHWM
    is polled from /proc (a lower bound).

    $MAILD_WRAPPER (e.g. "valgrind --error-exitcode=99 ...") is put in
    front of the command (then no RSS is measured), and timeout_scale()
    multiplies timeout, for the valgrind runs of tests/run and sanitizer
    builds."""
    wrapper = shlex.split(os.environ.get("MAILD_WRAPPER", ""))
    cmd = wrapper + [maild_bin()] + [str(a) for a in args]
    timeout *= timeout_scale()
    t = tap.current()
    rss = rss and not wrapper
    use_time = rss and os.access(TIME_BIN, os.X_OK)
    rssf = None
    full = cmd
    if use_time:
        # not in t.tmp, where tests look for what maild left behind
        fd, name = tempfile.mkstemp(prefix="maild-test-maxrss-")
        os.close(fd)
        rssf = Path(name)
        full = [TIME_BIN, "-f", "maxrss=%M", "-o", str(rssf)] + cmd
    started = time.monotonic()
    p = subprocess.Popen(full, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=_env(env), start_new_session=True)
    hwm = None
    poll = rss and not use_time
    timed_out = False
    try:
        while True:
            left = started + timeout - time.monotonic()
            try:
                out, err = p.communicate(timeout=min(0.01, max(left, 0))
                                         if poll else max(left, 0))
                break
            except subprocess.TimeoutExpired:
                if poll:
                    v = _hwm_kb(p.pid)
                    if v is not None:
                        hwm = max(hwm or 0, v)
                if time.monotonic() - started < timeout:
                    continue
                timed_out = True
                kill_tree(p)
                out, err = p.communicate()
                break
    except BaseException:
        kill_tree(p)
        p.communicate()
        if rssf is not None:
            rssf.unlink(missing_ok=True)
        raise
    if timed_out:
        if rssf is not None:
            rssf.unlink(missing_ok=True)
        err = err.decode("utf-8", "replace")
        if t is not None:
            t.attach(f"{label} stderr", err)
        raise MaildTimeout(f"{shlex.join(cmd)} did not finish within "
                           f"{timeout:.0f} s; killed it")
    seconds = time.monotonic() - started
    rc = p.returncode
    if use_time:
        info = rssf.read_text(errors="replace") if rssf.exists() else ""
        rssf.unlink(missing_ok=True)
        m = re.search(r"terminated by signal (\d+)", info)
        if m:
            rc = -int(m.group(1))
        m = re.search(r"maxrss=(\d+)", info)
        hwm = int(m.group(1)) if m else None
    err = err.decode("utf-8", "replace")
    out = out.decode("utf-8", "replace")
    r = Result(cmd, rc, out, err, seconds)
    r.signal = -rc if rc < 0 else None
    if hwm is not None:
        r.maxrss_mb = hwm / 1024.0
    if t is not None:
        more = ""
        if rss:
            more = ", peak RSS " + ("?" if r.maxrss_mb is None else
                                    f"{r.maxrss_mb:.1f} MB")
        t.attach(f"{label} stderr", f"$ {shlex.join(cmd)}\n{err}"
                 f"[exit status {rc}, {seconds:.1f} s{more}]")
    if check_rc is not None:
        assert r.rc == check_rc, (f"maild exited {r.rc}, expected "
                                  f"{check_rc}; stderr:\n{tail(err)}")
    return r


def run_journal(t, args, limit=30):
    """Run maild with stderr in a file that $JOURNAL_STREAM names, so
    that maild prefixes each line with its syslog priority ("<4>" for a
    warning, "<6>" for info), as it does for journald.  Returns (exit
    status, [(priority, text)])."""
    require_maild()
    path = t.tmp / "journal.stderr"
    with open(path, "wb") as f:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        p = subprocess.Popen([maild_bin()] + [str(a) for a in args],
                             stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                             env=_env(env), start_new_session=True)
        try:
            rc = p.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            kill_tree(p)
            raise MaildTimeout(f"maild did not finish within {limit} s")
    text = path.read_text(errors="replace")
    t.attach("maild stderr (journal mode)", text)
    lines = []
    for ln in text.splitlines():
        m = re.match(r"<(\d)>(.*)$", ln)
        assert m, f"a line without a priority prefix: {ln!r}"
        lines.append((int(m.group(1)), m.group(2)))
    return rc, lines


def start_maild(args, stderr_path, env=None):
    """Start maild in the background (own process group), stderr to a
    file.  Stop it with kill_tree()."""
    cmd = [maild_bin()] + [str(a) for a in args]
    with open(stderr_path, "wb") as errf:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=errf,
                                env=_env(env), start_new_session=True)


def kill_tree(p, sig=signal.SIGKILL):
    """Signal the process group of a Popen we started with
    start_new_session (maild and any password-command children)."""
    if p.poll() is not None:
        return
    try:
        os.killpg(p.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        p.send_signal(sig)
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout=10)


def tail(text, n=15):
    lines = text.splitlines()
    return "\n".join(lines[-n:])


# ---------------------------------------------------------------------------
# log parsing

_SUMMARY_RE = re.compile(
    r"maild: account=(\S+) fetched=(\d+) bytes=(\d+) deleted=(\d+) "
    r"seconds=([\d.]+)(.*)$")
_TAIL_KV_RE = re.compile(r'\s+([a-z-]+)=([^\s"]*)$')
_QUOTED_RE = re.compile(r'\s+([a-z-]+)="(.*)"$')


def summary_lines(stderr):
    """The per-account summary lines, in order, as dicts: account, fetched,
    bytes, deleted, seconds (numbers), error (None when there was none),
    line (the whole line), and whatever key=value follows (busy, retry...;
    as strings)."""
    out = []
    for line in stderr.splitlines():
        m = _SUMMARY_RE.search(line)
        if not m:
            continue
        rec = {"account": m.group(1), "fetched": int(m.group(2)),
               "bytes": int(m.group(3)), "deleted": int(m.group(4)),
               "seconds": float(m.group(5)), "error": None, "line": line}
        rest = m.group(6)
        while True:             # unquoted key=value at the end
            kv = _TAIL_KV_RE.search(rest)
            if not kv:
                break
            rec[kv.group(1)] = kv.group(2)
            rest = rest[:kv.start()]
        q = _QUOTED_RE.match(rest)   # error="..." / busy="..." (greedy)
        if q:
            rec[q.group(1)] = q.group(2)
        out.append(rec)
    return out


def parse_log(stderr):
    """account name -> its last summary line (dict)."""
    return {r["account"]: r for r in summary_lines(stderr)}


# ---------------------------------------------------------------------------
# Maildirs

def maildir_files(path, subdirs=("new", "cur")):
    """[(subdir, name, Path)] of the messages in a Maildir."""
    path = Path(path)
    out = []
    for sub in subdirs:
        d = path / sub
        if not d.is_dir():
            continue
        for name in sorted(os.listdir(d)):
            if name.startswith("."):
                continue
            out.append((sub, name, d / name))
    return out


def read_maildir(path):
    """The messages in new/ and cur/ (list of bytes)."""
    return [p.read_bytes() for _, _, p in maildir_files(path)]


def maildir_bytes(path):
    """Total size of the messages in new/ and cur/."""
    return sum(p.stat().st_size for _, _, p in maildir_files(path))


def count_new(path):
    try:
        return sum(1 for n in os.listdir(Path(path) / "new")
                   if not n.startswith("."))
    except FileNotFoundError:
        return 0


def assert_tmp_empty(path):
    d = Path(path) / "tmp"
    left = sorted(os.listdir(d)) if d.is_dir() else []
    more = "..." if len(left) > 5 else ""
    assert not left, f"{d} is not empty: {left[:5]}{more}"


def assert_names_ok(path, hostname=None):
    """Every file in new/ is named <sec>.M<usec>P<pid>Q<seq>A<tag>.<host>,
    S=<size> with the right size, and names are unique."""
    for sub, name, p in maildir_files(path, ("new",)):
        m = NAME_RE.match(name)
        assert m, f"{sub}/{name}: not a maild Maildir name"
        size = p.stat().st_size
        assert int(m.group(7)) == size, (f"{sub}/{name}: S={m.group(7)} but "
                                        f"the file has {size} bytes")


# Header fields maild may put on top of a message (add-headers): stripped
# before comparing, so the rest must still be byte-exact.
_TRACE_RE = re.compile(
    rb"\A(?:(?:Delivered-To|X-Original-To):[^\n]*\n"
    rb"|Received: from [^\n]*\n(?:[ \t][^\n]*\n)*?"
    rb"[ \t]+by [^\n]*\(maild [^\n]*\n(?:[ \t][^\n]*\n)*)+")


def trace_headers(data):
    """The header fields maild added at the top of a delivered message
    (bytes, possibly empty)."""
    m = _TRACE_RE.match(data)
    return m.group(0) if m else b""


def strip_trace(data):
    return data[len(trace_headers(data)):]


def compare_messages(delivered, expected, id_of=None, strip=True):
    """Compare delivered messages (list of bytes) with expected ones
    (list of corpus.Message, or of bytes) as multisets.  Returns a list of
    problems (empty: every expected message exactly once, byte-exact, and
    nothing else).  strip: ignore the trace header fields maild adds on
    top (see trace_headers)."""
    import corpus
    if id_of is None:
        id_of = corpus.test_id
    if strip:
        delivered = [strip_trace(d) for d in delivered]
    exp = {}
    for m in expected:
        if isinstance(m, (bytes, bytearray)):
            mid, data = id_of(m), bytes(m)
        else:
            mid, data = m.id, m.data
        assert mid is not None, "expected message without X-Test-Id"
        assert mid not in exp, f"two expected messages with id {mid}"
        exp[mid] = data
    got = collections.defaultdict(list)
    problems = []
    for data in delivered:
        mid = id_of(data)
        if mid is None or mid not in exp:
            problems.append(f"unexpected message ({len(data)} bytes, id "
                            f"{mid!r}): {data[:80]!r}")
            continue
        got[mid].append(data)
    lost = [mid for mid in exp if mid not in got]
    if lost:
        problems.append(f"{len(lost)} lost: {', '.join(lost[:10])}"
                        f"{' ...' if len(lost) > 10 else ''}")
    for mid, copies in got.items():
        want = exp[mid]
        if len(copies) > 1:
            same = all(c == copies[0] for c in copies)
            problems.append(f"{mid}: delivered {len(copies)} times"
                            f"{'' if same else ' (copies differ)'}")
        for c in copies:
            if c != want:
                problems.append(f"{mid}: corrupted: {describe_diff(c, want)}")
                break
    return problems


def describe_diff(got, want):
    n = min(len(got), len(want))
    i = next((k for k in range(n) if got[k] != want[k]), n)
    lo = max(0, i - 20)
    return (f"{len(got)} bytes instead of {len(want)}, first difference at "
            f"offset {i}: got {got[lo:i + 20]!r}, want {want[lo:i + 20]!r}")


def assert_messages(delivered, expected, what="delivered messages",
                    strip=True):
    problems = compare_messages(delivered, expected, strip=strip)
    assert not problems, (f"{what}: {len(problems)} problem(s):\n  "
                          + "\n  ".join(problems[:20]))


def assert_maildir(path, expected, what=None, strip=True):
    """The Maildir holds exactly the expected messages, tmp/ is empty and
    the names are maild's."""
    assert_messages(read_maildir(path), expected, what or f"Maildir {path}",
                    strip=strip)
    assert_tmp_empty(path)
    assert_names_ok(path)


# ---------------------------------------------------------------------------
# state files

def state_path(state_dir, name):
    return Path(state_dir) / f"{name}.state"


def remove_state(state_dir, name):
    """Remove an account's state (snapshot and journal), as a user would
    to start afresh."""
    for suffix in (".state", ".journal"):
        p = Path(state_dir) / f"{name}{suffix}"
        if p.exists():
            p.unlink()


def append_state_block(state_dir, name, lines):
    """Append lines (record lines of state format 2, e.g. "P <first> <n>
    <size> 0 0 <key> - <file>") to an account's journal as one block, as
    maild would: to plant what a crash leaves behind."""
    snap = state_path(state_dir, name).read_text()
    gen = int(re.search(r"^generation (\d+)$", snap, re.M).group(1))
    def with_tag(ln):
        # a record line without a tag field gets "-" (none)
        f = ln.split(" ")
        if (f[0] == "D" and len(f) == 7) or (f[0] == "P" and len(f) == 8):
            f.insert(7, "-")
        return " ".join(f)
    body = "".join(with_tag(ln) + "\n" for ln in lines).encode()
    h = 0xcbf29ce484222325
    for b in body:
        h = ((h ^ b) * 0x100000001b3) & 0xffffffffffffffff
    j = Path(state_dir) / f"{name}.journal"
    head = b"" if j.exists() else f"maild-journal 2 {gen}\n".encode()
    with open(j, "ab") as f:
        f.write(head + body + f"C {len(lines)} {h:016x}\n".encode())


def state_records(state_dir, name):
    """The D/P records of an account's state (the snapshot <name>.state
    with its journal <name>.journal replayed): a list of (kind, key bytes,
    ordinal), in the order they were first recorded.  [] if there is no
    state file."""
    return [(k, key, o) for k, key, o, _ in state_entries(state_dir, name)]


def state_entries(state_dir, name):
    """Like state_records, with a dict of the other fields (first, size,
    missed, absent, file) as a fourth element."""
    p = state_path(state_dir, name)
    if not p.exists():
        return []
    recs = {}

    def apply(f):
        if f[0] in ("D", "P"):
            if len(f) >= 8:         # version 2
                key = unescape_state(f[6])
                extra = {"first": int(f[1]), "size": int(f[3]),
                         "missed": int(f[4]), "absent": int(f[5]),
                         "tag": None if f[7] == "-" else
                         unescape_state(f[7]).decode(),
                         "file": f[8] if len(f) > 8 else None}
            elif len(f) >= 4:       # version 1
                key = unescape_state(f[3])
                extra = {"first": int(f[1]), "size": 0, "missed": 0,
                         "absent": 0, "tag": None,
                         "file": f[4] if len(f) > 4 else None}
            else:
                return
            k = (key, int(f[2]))
            recs.pop(k, None)
            recs[k] = (f[0], key, int(f[2]), extra)
        elif f[0] == "F" and len(f) == 3:
            recs.pop((unescape_state(f[2]), int(f[1])), None)

    for line in p.read_text(encoding="ascii",
                            errors="replace").splitlines():
        apply(line.split(" "))
    j = p.with_suffix(".journal")
    if j.exists():
        block = []
        for line in j.read_text(encoding="ascii",
                                errors="replace").splitlines()[1:]:
            f = line.split(" ")
            if f[0] == "C":
                for g in block:
                    apply(g)
                block = []
            else:
                block.append(f)
    return list(recs.values())


def unescape_state(s):
    return re.sub(rb"%([0-9A-Fa-f]{2})",
                  lambda m: bytes([int(m.group(1), 16)]), s.encode())


def umount(path):
    """Unmount path, whatever it takes (lazily as a last resort)."""
    for _ in range(50):
        r = subprocess.run(["umount", str(path)], capture_output=True,
                           timeout=30)
        if r.returncode == 0 or not os.path.ismount(path):
            return
        time.sleep(0.1)
    subprocess.run(["umount", "-l", str(path)], capture_output=True,
                   timeout=30)


def tmpfs_problem():
    """Why no tmpfs can be mounted here (not root, or mount refuses), or
    None: for the full-disk tests."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    d = tap.mkdtemp(prefix="maild-disk-probe-")
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k",
                            "tmpfs", str(d)], capture_output=True,
                           text=True, timeout=20)
        if r.returncode != 0:
            return f"cannot mount a tmpfs here: {r.stderr.strip()}"
        subprocess.run(["umount", str(d)], timeout=20)
        return None
    except (OSError, subprocess.SubprocessError) as e:
        return f"cannot mount a tmpfs here: {e}"
    finally:
        try:
            os.rmdir(d)
        except OSError:
            pass


def fs_snapshot(root):
    """Set of all paths below root (for "nothing outside" checks)."""
    root = Path(root)
    out = set()
    for dirpath, dirs, files in os.walk(root):
        for n in dirs + files:
            out.add(os.path.relpath(os.path.join(dirpath, n), root))
    return out
