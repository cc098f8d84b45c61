#!/usr/bin/env python3
"""test_imap_fixtures.py: the IMAP test servers themselves, before maild
speaks IMAP: so that a failing IMAP test later points at maild, not at
its fixtures.

The fake IMAP server (tests/lib/fakeimap.py): its self-test, run through
imaplib and raw sockets (commands, literals, IDLE, STARTTLS, SASL,
faults).

The private Dovecot (tests/lib/dovecot.py) with IMAP, LMTP and Sieve,
checked with imaplib and a small LMTP client: logins over IMAPS and
STARTTLS with the test CA; folders; messages added with doveadm save,
dovecot-lda and as files, listed with their UIDs and flags; UIDVALIDITY
changes with and without new UIDs; new mail pushed to a client in IDLE; a
restart on the same ports with the same mail; LMTP delivery (unix socket
and TCP) filed by a Sieve script, the duplicate extension discarding a
second copy; POP3 still served beside all that.
"""

import functools
import os
import socket
import ssl
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import corpus      # noqa: E402
import dovecot     # noqa: E402
import fakeimap    # noqa: E402
import tap         # noqa: E402

USERS = {"imap1": None, "imap2": None, "imap3": None, "lmtp1": None,
         "idle1": None}
SCALE = float(os.environ.get("MAILD_TIMEOUT_SCALE", "1"))


def msgs(prefix, n):
    return [corpus.simple(f"{prefix}/{i}") for i in range(n)]


def wire(m):
    return fakeimap.to_wire(m.data)


def uid_bodies(c, folder="INBOX"):
    """{uid: body} of a folder over IMAP (read-only)."""
    typ, _ = c.select(folder, readonly=True)
    assert typ == "OK", (folder, _)
    typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[])")
    assert typ == "OK", data
    out = {}
    for d in data:
        if isinstance(d, tuple):
            uid = int(d[0].split(b"UID ")[1].split()[0])
            out[uid] = d[1]
    return out


# ---------------------------------------------------------------------------
# the fake IMAP server

@tap.test(name="fakeimap: commands, folders, literals, LITERAL+")
def fake_basics(t):
    fakeimap._selftest_basics()


@tap.test(name="fakeimap: IDLE pushes, pending changes, silent IDLE/DONE")
def fake_idle(t):
    fakeimap._selftest_idle()


@tap.test(name="fakeimap: keepalive, autologout, UIDVALIDITY change, "
          "X-GM-MSGID, UTF8=ACCEPT")
def fake_session(t):
    fakeimap._selftest_session()


@tap.test(name="fakeimap: faults (literal lies, BYE, reorder, UIDs, ...)")
def fake_faults(t):
    fakeimap._selftest_faults()


@tap.test(name="fakeimap: TLS, STARTTLS, LOGINDISABLED, SASL")
def fake_auth(t):
    fakeimap._selftest_auth(t.tmp)


# ---------------------------------------------------------------------------
# Dovecot

@tap.test(name="dovecot: IMAPS and STARTTLS logins with the test CA")
def dovecot_logins(t):
    srv = t.fx.get(t)
    c = srv.imap("imap1")
    typ, caps = c.capability()
    assert b"IDLE" in caps[0].split() and b"UIDPLUS" in caps[0].split(), \
        caps
    typ, data = c.select("INBOX")
    assert typ == "OK", data
    c.logout()
    c = srv.imap("imap1", starttls=True)
    assert "STARTTLS" not in c.capabilities
    c.logout()
    # the plain port offers STARTTLS; a certificate for another CA fails
    plain = socket.create_connection((srv.host, srv.imap_port), timeout=10)
    with plain:
        greeting = plain.recv(4096)
    assert b"STARTTLS" in greeting, greeting
    bad = ssl.create_default_context(cafile=str(srv.certs.other_ca))
    try:
        import imaplib
        imaplib.IMAP4_SSL(srv.host, srv.imaps_port, ssl_context=bad,
                          timeout=10)
    except ssl.SSLError:
        pass
    else:
        raise AssertionError("IMAPS accepted by a client of another CA")
    # POP3 is still there
    assert srv.uidls("imap1") == []


@tap.test(name="dovecot: folders; doveadm save, dovecot-lda and files; "
          "UIDs, flags and bodies")
def dovecot_folders(t):
    srv = t.fx.get(t)
    u = "imap2"
    srv.create_folder(u, "Archive")
    srv.create_folder(u, "Été/Sub")
    assert {"INBOX", "Archive", "Été/Sub"} <= set(srv.folders(u)), \
        srv.folders(u)
    a = msgs("save", 2)
    b = msgs("lda", 2)
    f = msgs("file", 2)
    srv.deliver(u, a, folder="Archive")
    srv.deliver(u, b, via="lda")
    srv.add_messages(u, f, folder="Été/Sub")
    srv.deliver(u, msgs("sub", 1), folder="Été/Sub")
    arch = srv.messages(u, "Archive")
    assert [r["uid"] for r in arch] == [1, 2], arch
    assert [r["size"] for r in arch] == [len(wire(m)) for m in a], arch
    assert all(r["message_id"] for r in arch), arch
    assert [r["uid"] for r in srv.messages(u)] == [1, 2]
    assert len(srv.messages(u, "Été/Sub")) == 3
    # file names sort by time only roughly (M<usec> is not padded)
    assert sorted(srv.mailbox(u, "Archive")) == sorted(m.data for m in a)
    c = srv.imap(u)
    try:
        typ, data = c.list()
        assert any(b"\\Archive" in d and b'"Archive"' in d or
                   b"\\Archive" in d and d.endswith(b" Archive")
                   for d in data), data
        assert any(b"&AMk-t&AOk-/Sub" in d for d in data), data
        assert uid_bodies(c, "Archive") == {1: wire(a[0]), 2: wire(a[1])}
        got = uid_bodies(c, "INBOX")
        assert [corpus.test_id(x.replace(b"\r\n", b"\n"))
                for x in got.values()] == [m.id for m in b], got
        typ, _ = c.select("Archive")
        c.uid("STORE", "2", "+FLAGS.SILENT", "(\\Seen \\Deleted)")
        c.close()
    finally:
        c.logout()
    assert srv.messages(u, "Archive")[0]["uid"] == 1
    assert [r["uid"] for r in srv.messages(u, "Archive")] == [1], \
        "CLOSE expunged nothing"
    st = srv.status(u, "Archive")
    assert st["messages"] == 1 and st["uidnext"] == 3, st


@tap.test(name="dovecot: UIDVALIDITY changes (same UIDs; UIDs anew)")
def dovecot_uidvalidity(t):
    srv = t.fx.get(t)
    u = "imap3"
    srv.deliver(u, msgs("uv", 3))
    c = srv.imap(u)
    c.select("INBOX")
    c.uid("STORE", "1", "+FLAGS.SILENT", "(\\Deleted)")
    c.uid("EXPUNGE", "1")
    c.logout()
    before = srv.status(u)
    assert [r["uid"] for r in srv.messages(u)] == [2, 3]
    v = srv.set_uidvalidity(u, "INBOX", before["uidvalidity"] + 7)
    assert srv.status(u)["uidvalidity"] == v
    assert [r["uid"] for r in srv.messages(u)] == [2, 3]
    c = srv.imap(u)
    c.select("INBOX", readonly=True)
    assert c.untagged_responses["UIDVALIDITY"] == [str(v).encode()]
    c.logout()
    srv.wait_idle()
    w = srv.reset_uids(u)
    assert w != v, (w, v)
    assert [r["uid"] for r in srv.messages(u)] == [1, 2]
    assert srv.status(u)["uidvalidity"] == w
    w2 = srv.reset_uids(u, uidvalidity=4242)
    assert w2 == 4242 and srv.status(u)["uidvalidity"] == 4242


class RawIMAP:
    """An IMAPS connection spoken raw (imaplib has no IDLE)."""

    def __init__(self, srv, user):
        s = socket.create_connection((srv.host, srv.imaps_port), timeout=10)
        self.sock = srv.ssl_context().wrap_socket(
            s, server_hostname="localhost")
        self.buf = b""
        self.until(b"\r\n")
        self.send(f"a LOGIN {user} {srv.users[user]}\r\n"
                  "b SELECT INBOX\r\n".encode())
        self.until(b"b OK")
        self.until(b"\r\n")

    def send(self, data):
        self.sock.sendall(data)

    def until(self, mark, limit=20):
        deadline = time.monotonic() + limit * SCALE
        while mark not in self.buf:
            left = deadline - time.monotonic()
            assert left > 0, f"no {mark!r} within {limit} s: {self.buf!r}"
            self.sock.settimeout(left)
            d = self.sock.recv(65536)
            if not d:
                raise EOFError(self.buf)
            self.buf += d
        i = self.buf.index(mark) + len(mark)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def close(self):
        self.sock.close()


@tap.test(name="dovecot: new mail reaches a client in IDLE; restart on the "
          "same ports keeps the mail")
def dovecot_idle_restart(t):
    srv = t.fx.get(t)
    u = "idle1"
    srv.deliver(u, msgs("idle-old", 1))
    r = RawIMAP(srv, u)
    t.defer(r.close)
    r.send(b"c IDLE\r\n")
    r.until(b"+ idling\r\n")
    srv.deliver(u, msgs("idle-new", 1))
    assert r.until(b"EXISTS\r\n").endswith(b"* 2 EXISTS\r\n")
    srv.add_messages(u, msgs("idle-file", 1))
    assert r.until(b"EXISTS\r\n").endswith(b"* 3 EXISTS\r\n")
    ports = (srv.imaps_port, srv.imap_port, srv.pop3s_port, srv.lmtp_port)
    old_pid = srv.master_pid
    srv.restart()
    assert srv.master_pid != old_pid
    assert (srv.imaps_port, srv.imap_port, srv.pop3s_port,
            srv.lmtp_port) == ports
    try:                            # Dovecot says BYE, or just closes
        r.until(b"* BYE")
    except (EOFError, ConnectionError, ssl.SSLError):
        pass
    c = srv.imap(u)
    try:
        assert len(uid_bodies(c)) == 3
    finally:
        c.logout()


SIEVE = """require ["fileinto", "duplicate"];
if duplicate { discard; stop; }
if header :contains "List-Id" "lists.maild-test.example" {
    fileinto "Lists";
}
"""


@tap.test(name="dovecot: LMTP (socket, TCP) filed by Sieve; duplicate "
          "discards a second copy; vnd.dovecot.duplicate available")
def dovecot_lmtp_sieve(t):
    srv = t.fx.get(t)
    u = "lmtp1"
    srv.set_sieve(u, SIEVE)
    plain = corpus.simple("lmtp/plain")
    listed = corpus.simple("lmtp/list", extra_headers=[
        "List-Id: Test list <test.lists.maild-test.example>"])
    assert [c for c, _ in srv.lmtp_send([u], plain.data)] == [250]
    assert [c for c, _ in srv.lmtp_send([u], listed.data, tcp=True)] == \
        [250]
    # the same message again: accepted, and discarded by the script
    assert [c for c, _ in srv.lmtp_send([u], listed.data)] == [250]
    res = srv.lmtp_send([u, "nosuchuser"], plain.data)
    assert res[0][0] == 250 and res[1][0] == 550, res
    inbox = [corpus.test_id(m) for m in srv.mailbox(u)]
    lists = [corpus.test_id(m) for m in srv.mailbox(u, "Lists")]
    assert inbox == [plain.id], inbox
    assert lists == [listed.id], lists
    try:
        srv.set_sieve(u, 'require "nosuchext";\nkeep;\n', name="bad")
    except dovecot.DovecotError as e:
        assert "nosuchext" in str(e), e
    else:
        raise AssertionError("sievec accepted an unknown extension")
    srv.set_sieve(u, 'require ["vnd.dovecot.duplicate", "fileinto"];\n'
                  'if duplicate { fileinto "Dupes"; stop; }\n', name="vnd")
    fresh = corpus.simple("lmtp/vnd")
    for _ in range(2):
        assert [c for c, _ in srv.lmtp_send([u], fresh.data)] == [250]
    assert sorted(corpus.test_id(m) for m in srv.mailbox(u)) == \
        sorted([plain.id, fresh.id])
    assert [corpus.test_id(m) for m in srv.mailbox(u, "Dupes")] == \
        [fresh.id]


if __name__ == "__main__":
    tap.main(fixture=functools.partial(dovecot.Lazy, USERS, imap=True,
                                       lmtp=True))
