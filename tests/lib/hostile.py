"""hostile.py: helpers for the hostile-server and full-disk tests.

Built on fakepop3's handler API (nothing here changes fakepop3):

    with hostile.server(msgs, handlers={"RETR": ...}) as srv:
        acct = hostile.Account(t, srv, keep=False)
        r = acct.once(expect_rc=76, within=10)    # bounded, sane, small
        acct.assert_nothing_delivered()
        acct.assert_server_untouched(msgs)

Account.once() runs `maild --once` under a hard timeout with its own peak
RSS measured (maildtest.run_maild(rss=True): r.maxrss_mb), and checks what
must hold after any run, whatever the server did: maild was not killed by
a signal, no sanitizer or valgrind report, not exit 70, peak RSS under
RSS_LIMIT_MB, finished within `within` seconds, no file appeared in the
test directory outside the Maildir and the state directory, and a failed
run has a summary line naming the account with an error="...".

IMAP (fakeimap):

    with hostile.imap_server(msgs, handlers={"UID FETCH": ...}) as srv:
        acct = hostile.ImapAccount(t, srv, keep=False)
        acct.once(expect_rc=76, within=10)
        acct.assert_server_untouched(msgs)     # no STORE, EXPUNGE, MOVE...
        acct.changes()                          # what maild changed

Handler factories for fakepop3 (fn(conn, cmd) -> response):
  body_of(srv, k)        answer RETR with the body of message k instead
  inject(data, verb, nth) send data before the default answer
  append(data, verb, nth) send data after the default answer
  gen(fn)                run fn(conn, cmd) as a generator in the server
                         thread (for side effects at an exact moment)
SilentServer: accepts TCP connections and never says a word.

Environment: MAILD_WRAPPER (a command put in front of maild, e.g.
valgrind; then the RSS limit is not checked, nor with an ASan build) and
MAILD_TIMEOUT_SCALE (multiplies every time limit; see
maildtest.timeout_scale()), as in tests/run;
MAILD_RSS_LIMIT_MB (default 30), the usual peak RSS limit.
"""

import os
import re
import shlex
import socket
import threading
from pathlib import Path

import certs
import corpus
import fakepop3
import maildtest as mt
import tap

RSS_LIMIT_MB = float(os.environ.get("MAILD_RSS_LIMIT_MB", "30"))
TIMEOUT = 3                 # maild's "timeout" in these tests (seconds)
SANITIZER_MARKS = ("AddressSanitizer", "LeakSanitizer",
                   "UndefinedBehaviorSanitizer", "runtime error:",
                   "ThreadSanitizer", "MemorySanitizer", "==ERROR",
                   "Invalid read", "Invalid write", "definitely lost")


def wrapper():
    return shlex.split(os.environ.get("MAILD_WRAPPER", ""))


def server(messages=(), tls="server", **kw):
    """A fake POP3S server with the test CA's certificate (tls=None: plain;
    tls="self_signed" etc.: that certificate of certs.get())."""
    if tls is not None:
        tls = getattr(certs.get(), tls)
    return fakepop3.FakePOP3(messages, tls=tls, **kw)


def imap_server(messages=(), tls="server", **kw):
    """A fake IMAP server (implicit TLS with the test CA's certificate
    unless tls=None or implicit_tls=False)."""
    import fakeimap
    if tls is not None:
        tls = getattr(certs.get(), tls)
    return fakeimap.FakeIMAP(messages, tls=tls, **kw)


def msgs(prefix, n, seed=11, **kw):
    """n small corpus messages (no large ones unless asked)."""
    kw.setdefault("max_large", 0)
    return corpus.generate(seed=seed, count=n, prefix=prefix, **kw)


def tiny(prefix, n, body="x\n"):
    return [corpus.simple(f"{prefix}/{i:05d}", body=body) for i in range(n)]


# ---------------------------------------------------------------------------
# running maild with its own peak RSS

def run_maild(args, timeout=60, label="maild", env=None):
    """maildtest.run_maild, with maild's own peak RSS (r.maxrss_mb)."""
    return mt.run_maild(args, timeout=timeout, env=env, label=label,
                        rss=True)


def check_sane(r, within=None, rss_mb=None):
    """What must hold after every run, whatever the server did."""
    assert r.rc >= 0, f"maild was killed by signal {-r.rc}"
    assert r.rc != mt.EX_SOFTWARE, "maild reported an internal error (70)"
    marks = [m for m in SANITIZER_MARKS if m in r.stderr]
    assert not marks, f"sanitizer/valgrind report in stderr: {marks}"
    if within is not None:
        assert r.seconds <= within * mt.timeout_scale(), \
            f"maild took {r.seconds:.1f} s, more than {within} s"
    limit = rss_mb if rss_mb is not None else RSS_LIMIT_MB
    if not wrapper() and not mt.sanitized() and r.maxrss_mb is not None:
        assert r.maxrss_mb <= limit, \
            f"maild's peak RSS was {r.maxrss_mb:.1f} MB (limit {limit} MB)"


# ---------------------------------------------------------------------------
# one account against one server

class Account:
    """Config + state + Maildir of one account in t.tmp (or under base)."""

    def __init__(self, t, srv, keep=True, name="evil", base=None,
                 maildir=None, state=None, timeout=TIMEOUT, globals_=None,
                 **extra):
        self.t = t
        self.srv = srv
        self.name = name
        self.keep = keep
        self.base = Path(base or t.tmp)
        self.maildir = Path(maildir or self.base / "Maildir")
        self.state = Path(state or self.base / "state")
        self.extra = dict(extra)
        self.extra.setdefault("ca_file", certs.get().ca)
        self.timeout = timeout
        self.globals_ = dict(globals_ or {})
        self.cfg = self.base / "maild.conf"
        self.write()

    def write(self, **changes):
        self.extra.update(changes)
        extra = dict(self.extra)
        port = extra.pop("port", self.srv.port if self.srv else 1)
        a = mt.account(self.name, "127.0.0.1", port,
                       self.srv.user if self.srv else "u",
                       self.srv.password if self.srv else "p",
                       self.maildir, keep=self.keep, **extra)
        g = dict(self.globals_)
        g.setdefault("timeout", self.timeout)
        mt.write_config(self.cfg, [a], state_dir=self.state, **g)

    def once(self, *flags, expect_rc=None, within=None, rss_mb=None,
             timeout=60, check_outside=True):
        """maild --once: sane, bounded; expect_rc: the exit status wanted
        (an int or a tuple of ints)."""
        mt.require_maild()
        before = mt.fs_snapshot(self.base) if check_outside else None
        r = run_maild(["--once", "-v", *flags, "-f", self.cfg],
                      timeout=timeout)
        if self.srv is not None and hasattr(self.srv, "wait_idle"):
            self.srv.wait_idle(5)
        check_sane(r, within=within, rss_mb=rss_mb)
        if expect_rc is not None:
            want = expect_rc if isinstance(expect_rc, tuple) else (expect_rc,)
            assert r.rc in want, (f"exit {r.rc}, expected "
                                  f"{' or '.join(map(str, want))}; "
                                  f"error: {self.error(r)!r}")
        if r.rc != 0:
            s = self.summary(r)
            assert s["error"] or s.get("busy"), \
                f"failed without error=: {s['line']}"
        if check_outside:
            self.assert_nothing_outside(before)
        return r

    def summary(self, r):
        """The account's last summary line (maild may retry an account
        within one --once run, e.g. without pipelining)."""
        recs = [x for x in mt.summary_lines(r.stderr)
                if x["account"] == self.name]
        assert recs, f"no summary line for account {self.name}"
        return recs[-1]

    def error(self, r):
        """error="..." (or busy="...") of the last summary line."""
        try:
            s = self.summary(r)
        except AssertionError:
            return None
        return s["error"] or s.get("busy")

    # -- what is where ---------------------------------------------------
    def delivered(self):
        return mt.read_maildir(self.maildir)

    def records(self):
        return mt.state_records(self.state, self.name)

    def assert_delivered(self, expected, strip=True):
        mt.assert_maildir(self.maildir, expected, strip=strip)

    def assert_nothing_delivered(self):
        got = self.delivered()
        assert not got, f"{len(got)} message(s) delivered: {got[0][:100]!r}"
        recs = self.records()
        assert not recs, f"the state file records {recs[:5]}"

    def assert_no_partial_in_new(self, expected):
        """Everything in new/ is one of expected, complete, at most once."""
        problems = [p for p in mt.compare_messages(self.delivered(),
                                                   expected)
                    if " lost" not in p]
        assert not problems, "\n".join(problems[:10])

    def assert_nothing_outside(self, before):
        after = mt.fs_snapshot(self.base)
        mine = (self.maildir, self.state)
        outside = []
        for p in sorted(after - before):
            full = self.base / p
            if any(full == m or m in full.parents for m in mine):
                continue
            if p.startswith("stderr."):
                continue
            outside.append(p)
        assert not outside, f"files outside the Maildir/state: {outside}"

    def assert_server_untouched(self, expected_msgs=None):
        """No DELE was ever sent and the mailbox is as it was."""
        if self.srv is None:
            return
        deles = [c.line for c in self.srv.commands() if c.verb == "DELE"]
        assert not deles, f"DELE sent: {deles[:5]}"
        if expected_msgs is not None:
            assert len(self.srv.mailbox) == len(expected_msgs), \
                f"{len(self.srv.mailbox)} messages left on the server, " \
                f"expected {len(expected_msgs)}"

    def assert_no_password_sent(self):
        pw = self.srv.password.encode()
        bad = [c.line for c in self.srv.commands()
               if c.verb in ("USER", "PASS", "APOP", "AUTH") or
               pw in c.line]
        assert not bad, f"login commands sent: {bad}"


class ImapAccount(Account):
    """An IMAP account (protocol = imap) against a fakeimap server."""

    def __init__(self, t, srv, keep=True, **extra):
        extra.setdefault("protocol", "imap")
        super().__init__(t, srv, keep=keep, **extra)

    def changes(self, folder=None):
        """What clients changed on the server (fakeimap events: STORE,
        EXPUNGE, UID EXPUNGE, CLOSE, COPY, MOVE), other than APPEND."""
        return [e for e in self.srv.events if e.kind != "APPEND" and
                (folder is None or e.folder == folder)]

    def assert_server_untouched(self, expected_msgs=None, folder="INBOX"):
        """No flag stored, nothing copied, moved or expunged; the folder
        holds as many messages as expected_msgs."""
        if self.srv is None:
            return
        ch = self.changes()
        assert not ch, f"the server was changed: {ch[:5]}"
        if expected_msgs is not None:
            n = len(self.srv.messages(folder))
            assert n == len(expected_msgs), \
                f"{n} messages in {folder}, expected {len(expected_msgs)}"

    def assert_no_password_sent(self):
        pw = self.srv.password.encode()
        bad = [c.line for c in self.srv.commands()
               if c.verb in ("LOGIN", "AUTHENTICATE", "SASL-RESPONSE") or
               pw in c.line]
        assert not bad, f"login commands sent: {bad}"


def imap_durable_watch(acct, violations):
    """An on_command hook for fakeimap: every UID STORE \\Deleted, UID
    MOVE, UID COPY, UID EXPUNGE and EXPUNGE must address only messages
    complete in new/ (or cur/) and recorded in the state at the moment
    the command arrives (a D record, or a P record: deliver.c writes the
    D records at the next sync); what does not goes to violations."""
    srv = acct.srv

    def hook(conn, cmd):
        if cmd.verb not in ("UID STORE", "UID MOVE", "UID COPY",
                            "UID EXPUNGE", "EXPUNGE"):
            return
        if cmd.verb == "UID STORE" and "DELETED" not in cmd.arg.upper():
            return
        uids = conn.uids_of(cmd) if cmd.verb != "EXPUNGE" else \
            [x.uid for x in srv.messages() if "\\Deleted" in x.flags]
        have = {mt.strip_trace(p.read_bytes()) for _, _, p in
                mt.maildir_files(acct.maildir, ("new", "cur"))}
        keys = {k.rsplit(b"\0", 1)[-1] for kind, k, _ in
                mt.state_records(acct.state, acct.name)}
        for u in uids:
            x = srv.folder().by_uid(u)
            if x is None:
                continue
            if x.data not in have:
                violations.append(f"{cmd.verb} of UID {u}: not in new/")
            if str(u).encode() not in keys:
                violations.append(f"{cmd.verb} of UID {u}: not recorded")
    return hook


def assert_error_mentions(r, name, *words):
    """The summary line of account name has error="..." containing every
    one of words (case-insensitive)."""
    recs = [x for x in mt.summary_lines(r.stderr) if x["account"] == name]
    assert recs, f"no summary line for account {name}"
    s = recs[-1]
    err = (s["error"] or s.get("busy") or "").lower()
    missing = [w for w in words if w.lower() not in err]
    assert not missing, f"error={s['error']!r} does not mention {missing}"


# ---------------------------------------------------------------------------
# handler factories

def _nth_ok(cmd, nth):
    return nth is None or cmd.nth == nth


def body_of(srv, k, nth=None):
    """Answer RETR with the (correct) answer for message number k."""
    def handler(conn, cmd):
        if not _nth_ok(cmd, nth):
            return None
        m = conn.msg(str(k))
        return f"+OK {m.size} octets\r\n".encode() + m.wire()
    return handler


def inject(data, nth=None):
    """Send data, then the default answer."""
    def handler(conn, cmd):
        if not _nth_ok(cmd, nth):
            return None
        return [data, conn.default(cmd)]
    return handler


def append(data, nth=None):
    """Send the default answer, then data."""
    def handler(conn, cmd):
        if not _nth_ok(cmd, nth):
            return None
        return [conn.default(cmd), data]
    return handler


def endless(first, line, then_sleep=0.0):
    """A multi-line answer that never ends: first, then line forever.
    Unlike fakepop3.endless_listing it yields to the event loop after
    every chunk, so the server notices when maild hangs up (under TLS a
    write to a dead connection does not block, and a loop that never
    yields would keep the server from stopping)."""
    def handler(conn, cmd):
        def g():
            yield first
            chunk = line * max(1, 16384 // max(1, len(line)))
            while True:
                yield chunk
                yield fakepop3.Sleep(then_sleep)
        return g()
    return handler


def gen(fn):
    """fn(conn, cmd) is a generator function: its side effects run in the
    server's thread exactly when its items are sent."""
    def handler(conn, cmd):
        return fn(conn, cmd)
    return handler


def shutdown_raw(conn):
    """Half-close the TCP connection under TLS without close_notify (a
    truncation attack)."""
    sock = conn.writer.get_extra_info("socket")
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


# ---------------------------------------------------------------------------
# a server that accepts and never speaks

class SilentServer:
    """Accepts TCP connections on 127.0.0.1, reads and discards whatever
    comes, never sends a byte (no greeting, no TLS handshake).
    close="fin" / "rst": close every connection at once instead;
    send=bytes: send that first (e.g. garbage instead of a TLS hello)."""

    def __init__(self, close=None, send=None):
        self.close = close
        self.send = send
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.host = "127.0.0.1"
        self.user, self.password = "fakeuser", "fakepass"
        self.accepted = 0
        self.received = b""
        self._stop = threading.Event()
        self._conns = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            if self.send:
                try:
                    c.sendall(self.send)
                except OSError:
                    pass
            if self.close == "rst":
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                             b"\1\0\0\0\0\0\0\0")
                c.close()
                continue
            if self.close == "fin":
                c.close()
                continue
            c.settimeout(0.2)
            self._conns.append(c)
            threading.Thread(target=self._read, args=(c,),
                             daemon=True).start()

    def _read(self, c):
        while not self._stop.is_set():
            try:
                d = c.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            if not d:
                return
            self.received += d

    def commands(self):
        return []

    def __enter__(self):
        self._thread.start()
        t = tap.current()
        if t is not None:
            t.defer(self.stop)
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def stop(self):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)
        for c in self._conns:
            try:
                c.close()
            except OSError:
                pass
        self.sock.close()


# asyncio warns on stderr for every write to a connection maild has closed
# (the endless generators above do that on purpose): not interesting.
import logging  # noqa: E402
logging.getLogger("asyncio").setLevel(logging.CRITICAL)


def renumber(nums, sizes=None):
    """Handlers for UIDL, LIST, RETR and DELE that number the session's
    messages nums[i] instead of i + 1 (e.g. [1, 7, 2000000]); sizes[i]
    (if given) is what LIST says.  Returns a dict for handlers=."""
    def index(conn, arg):
        try:
            n = int(arg)
        except ValueError:
            return None
        for i, x in enumerate(nums):
            if x == n and i < len(conn.session) and i not in conn.deleted:
                return i
        return None

    def live(conn):
        return [(nums[i], i, m) for i, m in enumerate(conn.session)
                if i not in conn.deleted]

    def uidl(conn, cmd):
        if cmd.arg:
            i = index(conn, cmd.arg)
            return None if i is None else \
                b"+OK %d %s\r\n" % (nums[i], conn.session[i].uidl)
        return b"+OK\r\n" + b"".join(b"%d %s\r\n" % (n, m.uidl)
                                     for n, i, m in live(conn)) + b".\r\n"

    def size(i, m):
        return sizes[i] if sizes is not None else m.size

    def list_(conn, cmd):
        return b"+OK\r\n" + b"".join(b"%d %d\r\n" % (n, size(i, m))
                                     for n, i, m in live(conn)) + b".\r\n"

    def retr(conn, cmd):
        i = index(conn, cmd.arg)
        if i is None:
            return b"-ERR no such message\r\n"
        m = conn.session[i]
        return b"+OK %d octets\r\n" % m.size + m.wire()

    def dele(conn, cmd):
        i = index(conn, cmd.arg)
        if i is None:
            return b"-ERR no such message\r\n"
        conn.deleted.add(i)
        return b"+OK deleted\r\n"
    return {"UIDL": uidl, "LIST": list_, "RETR": retr, "DELE": dele}


def listing(lines, status=b"+OK\r\n"):
    """A handler answering with a fixed multi-line listing (list of bytes
    lines, without CRLF; not dot-stuffed)."""
    data = status + b"".join(ln + b"\r\n" for ln in lines) + b".\r\n"
    return lambda conn, cmd: data


def limit(name, default):
    """A #define of maild.h (e.g. LISTING_MAX), from the source tree
    ($MAILD_SRCDIR or this checkout); default if it cannot be read."""
    src = os.environ.get("MAILD_SRCDIR") or str(mt.REPO)
    try:
        text = (Path(src) / "src" / "maild.h").read_text()
    except OSError:
        return default
    m = re.search(rf"^#define\s+{re.escape(name)}\s+\(?(\d+)", text, re.M)
    return int(m.group(1)) if m else default


MAX_MESSAGES = limit("LISTING_MAX", 1000000)
