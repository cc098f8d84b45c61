#!/usr/bin/env python3
"""test_hardening.py: what maild keeps to itself, what it makes durable
and which certificates it trusts after a reload (issue 9, items 13-15),
against the fake POP3 server.

  password-command   gets stdin, stdout and stderr and no other open file
                     descriptor of maild's (--once and the daemon)
  core dumps         off in the daemon (/proc/<pid>/limits: "Max core
                     file size 0"), and the process is not dumpable
                     (/proc/<pid> owned by root although maild runs as
                     another user; nobody when run as root); both as the
                     environment had them with --core-dumps
  directories        every directory maild creates (a Maildir with its
                     cur/ new/ tmp/ and missing parents, the state
                     directory and its missing parents) is fsynced in its
                     parent afterwards (traced with strace; skipped
                     without it)
  trust store        SIGHUP reads certificates anew: a ca-file replaced
                     in place, and the system trust store (SSL_CERT_FILE)
                     replaced in place, are used from the next poll on
"""

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import fakepop3    # noqa: E402
import hostile     # noqa: E402
import maildd      # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

NOBODY = 65534


def server(msgs=(), **kw):
    return fakepop3.FakePOP3(msgs, tls=certs.get().server, **kw).start()


def msgs(prefix, n=1):
    return [corpus.simple(f"{prefix}/{i}") for i in range(n)]


def conf(t, srv, base=None, name="h", **extra):
    base = base or t.tmp
    a = mt.account(name, "127.0.0.1", srv.port, srv.user,
                   extra.pop("password", srv.password), base / "Maildir",
                   keep=True, **extra)
    return mt.write_config(base / "maild.conf", [a], state_dir=base / "state",
                           timeout=10, poll_interval=mt.Raw("1h"))


# ---------------------------------------------------------------------------
# item 13: the password-command's descriptors

FDS_PY = """\
import os, sys
open_fds = []
for fd in range(0, 1024):
    try:
        os.fstat(fd)
    except OSError:
        continue
    open_fds.append(fd)
with open(sys.argv[1], "a") as f:
    f.write(" ".join(map(str, open_fds)) + "\\n")
print(sys.argv[2])
"""


@tap.test(name="the password-command has only descriptors 0, 1 and 2 open "
          "(--once and the daemon)")
def test_password_command_fds(t):
    script = mt.write_file(t.tmp / "fds.py", FDS_PY, 0o700)
    out = t.tmp / "fds.txt"
    srv = server(msgs("fds", 2))
    cmd = f"python3 {script} {out} {srv.password}"
    cfg = conf(t, srv, password=None, ca_file=certs.get().ca,
               password_command=cmd)
    r = mt.run_maild(["--once", "-f", cfg], timeout=30)
    assert r.rc == 0, f"exit {r.rc}: {mt.tail(r.stderr)}"
    srv.add(corpus.simple("fds/late"))
    dm = maildd.Daemon(t, cfg)
    rec = dm.wait_summaries("h", 1, timeout=20)[0]
    assert rec["fetched"] == 1, rec["line"]
    lines = out.read_text().splitlines()
    t.note(f"open descriptors seen by the command: {lines}")
    assert len(lines) == 2, lines
    for what, line in zip(("--once", "the daemon"), lines):
        assert line == "0 1 2", \
            f"{what}: the password-command had descriptors {line} open"
    assert dm.stop() == 0


# ---------------------------------------------------------------------------
# item 13: core dumps

def core_limit(pid):
    """(soft, hard) of "Max core file size" in /proc/<pid>/limits."""
    text = Path(f"/proc/{pid}/limits").read_text()
    m = re.search(r"^Max core file size\s+(\S+)\s+(\S+)", text, re.M)
    assert m, text
    return m.group(1), m.group(2)


def run_as():
    """(uid, gid, preexec) to run maild as someone else than root, so
    that not being dumpable shows in /proc/<pid>'s owner."""
    if os.geteuid() != 0:
        return os.geteuid(), os.getegid(), None

    def drop():
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
    return NOBODY, NOBODY, drop


def owned_tree(t, uid, gid):
    """A directory for maild's files that uid can use."""
    base = t.tmp / "u"
    base.mkdir()
    shutil.copy(certs.get().ca, base / "ca.pem")
    if os.geteuid() == 0:
        os.chmod(t.tmp, 0o711)
        for p in (base, base / "ca.pem"):
            os.chown(p, uid, gid)
    return base


def core_case(t, flags):
    uid, gid, drop = run_as()
    base = owned_tree(t, uid, gid)
    srv = server(msgs("core"))
    cfg = conf(t, srv, base=base, ca_file=base / "ca.pem")
    if os.geteuid() == 0:
        os.chown(cfg, uid, gid)
    # What the environment allows; --core-dumps keeps it.
    soft = 1 << 20

    def pre():
        resource.setrlimit(resource.RLIMIT_CORE,
                           (soft, resource.RLIM_INFINITY))
        if drop:
            drop()
    # ASan lowers RLIMIT_CORE to 0 at start (disable_coredump); this test
    # is about what maild does to the limits, so ASan must leave them.
    saved = os.environ.get("ASAN_OPTIONS")
    if mt.sanitized():
        os.environ["ASAN_OPTIONS"] = ((saved + ":") if saved else "") + \
            "disable_coredump=0"
    try:
        dm = maildd.Daemon(t, cfg, *flags, preexec=pre)
    finally:
        if saved is None:
            os.environ.pop("ASAN_OPTIONS", None)
        else:
            os.environ["ASAN_OPTIONS"] = saved
    rec = dm.wait_summaries("h", 1, timeout=20)[0]
    assert rec["error"] is None, rec["line"]
    owner = os.stat(f"/proc/{dm.pid}/status").st_uid
    limits = core_limit(dm.pid)
    t.note(f"maild runs as uid {uid}; /proc/{dm.pid}/status is owned by "
           f"{owner}; core limits {limits}")
    assert dm.stop() == 0
    return uid, owner, limits, soft


@tap.test(name="core dumps are off in the daemon and it is not dumpable "
          "(/proc/<pid> owned by root)")
def test_no_core_dumps(t):
    uid, owner, limits, soft = core_case(t, ())
    assert limits == ("0", "0"), f"core dumps allowed: {limits}"
    if mt.sanitized():
        t.skip("an ASan build stays dumpable (LeakSanitizer needs ptrace)")
    assert owner == 0, (f"/proc/<pid> is owned by {owner}, not root: the "
                        "process is dumpable")


@tap.test(name="--core-dumps: the limits as they were, and dumpable")
def test_core_dumps_allowed(t):
    uid, owner, limits, soft = core_case(t, ("--core-dumps",))
    assert limits == (str(soft), "unlimited"), f"core limits {limits}"
    assert owner == uid, f"/proc/<pid> owned by {owner}, not {uid}"


# ---------------------------------------------------------------------------
# item 14: directories fsynced in their parent

_MKDIR_RE = re.compile(r'^\d+\s+mkdir(?:at)?\((?:(\d+)<([^>]*)>, )?'
                       r'"([^"]+)", 0\d+\) = 0$')
_FSYNC_RE = re.compile(r'^\d+\s+f(?:data)?sync\(\d+<([^>]*)>\) = 0$')


def strace_problem():
    if shutil.which("strace") is None:
        return "strace is not installed (tests/install-deps --full)"
    return None


@tap.test(name="every directory maild creates is fsynced in its parent "
          "(strace)", skip=strace_problem)
def test_new_directories_fsynced(t):
    if os.environ.get("MAILD_WRAPPER"):
        t.skip("not under MAILD_WRAPPER")
    srv = server(msgs("dirs", 2))
    md = t.tmp / "deep" / "er" / "Maildir"
    st = t.tmp / "st" / "ate"
    a = mt.account("h", "127.0.0.1", srv.port, srv.user, srv.password, md,
                   keep=True, ca_file=certs.get().ca)
    cfg = mt.write_config(t.tmp / "maild.conf", [a], state_dir=st,
                          timeout=10)
    trace = t.tmp / "strace.out"
    cmd = ["strace", "-f", "-qq", "-y", "-o", str(trace), "-e",
           "trace=mkdir,mkdirat,fsync,fdatasync", mt.maild_bin(), "--once",
           "-f", str(cfg)]
    r = subprocess.run(cmd, capture_output=True, text=True,
                       timeout=60 * mt.timeout_scale(), env=mt._env())
    t.attach("maild stderr", r.stderr)
    text = trace.read_text()
    t.attach("strace", text)
    if r.returncode != 0 and "ptrace" in r.stderr:
        t.skip(f"strace cannot trace here: {mt.tail(r.stderr, 2)}")
    assert r.returncode == 0, f"exit {r.returncode}"
    made, pending = [], []
    for line in text.splitlines():
        m = _MKDIR_RE.match(line)
        if m:
            path = m.group(3)
            if not path.startswith("/"):
                path = os.path.join(m.group(2) or os.getcwd(), path)
            path = os.path.normpath(path)
            made.append(path)
            pending.append(path)
            continue
        m = _FSYNC_RE.match(line)
        if m:
            synced = os.path.normpath(m.group(1))
            pending = [p for p in pending if os.path.dirname(p) != synced]
    t.note(f"created: {made}")
    want = {str(p) for p in (t.tmp / "deep", t.tmp / "deep" / "er", md,
                             md / "cur", md / "new", md / "tmp",
                             t.tmp / "st", st)}
    assert want <= set(made), f"not created: {sorted(want - set(made))}"
    assert not pending, ("created, and never fsynced in its parent "
                         f"afterwards: {pending}")


# ---------------------------------------------------------------------------
# item 15: certificates read anew at SIGHUP

def trust_case(t, ca_file=None, env=None, bundle=None):
    """A daemon that trusts only an unrelated CA (in bundle) polls and
    fails; the bundle's content is replaced in place by the right CA;
    SIGHUP, SIGUSR1: the next poll succeeds."""
    bundle.write_bytes(Path(certs.get().other_ca).read_bytes())
    srv = server(msgs("trust"))
    cfg = conf(t, srv, ca_file=ca_file)
    dm = maildd.Daemon(t, cfg, env=env)
    rec = dm.wait_summaries("h", 1, timeout=20)[0]
    assert rec["error"] is not None and rec["fetched"] == 0, rec["line"]
    t.note(f"with the unrelated CA: {rec['line']}")
    with open(bundle, "r+b") as f:       # the same file, new content
        f.truncate(0)
        f.write(Path(certs.get().ca).read_bytes())
    line = dm.reload()
    assert "reloaded" in line, line
    mark = dm.mark()
    dm.signal(signal.SIGUSR1)
    rec = dm.wait_summaries("h", 1, since=mark, timeout=20)[0]
    assert rec["error"] is None and rec["fetched"] == 1, \
        f"the new certificate was not used: {rec['line']}"
    assert dm.stop() == 0


@tap.test(name="SIGHUP reads a ca-file anew: replaced in place with the "
          "right CA, the next poll succeeds")
def test_reload_rereads_ca_file(t):
    ca = t.tmp / "ca.pem"
    trust_case(t, ca_file=ca, bundle=ca)


@tap.test(name="SIGHUP reads the system trust store anew (SSL_CERT_FILE "
          "replaced in place)")
def test_reload_rereads_system_store(t):
    bundle = t.tmp / "system-bundle.pem"
    trust_case(t, env={"SSL_CERT_FILE": bundle, "SSL_CERT_DIR": t.tmp /
                       "no-such-dir"}, bundle=bundle)


if __name__ == "__main__":
    tap.main()
