#!/usr/bin/env python3
"""test_courier_imap.py: maild against a real Courier IMAP server (a
private one, see tests/lib/courier.py), the second real IMAP server of
the suite beside Dovecot.

Courier differs from Dovecot where a client can trip: LOGINDISABLED and
no AUTH=PLAIN before STARTTLS; every folder below "INBOX." with "." as
the separator (INBOX.Archive is .Archive on disk); no MOVE, so move-to
is UID COPY, \\Deleted and UID EXPUNGE; one "* 1 EXPUNGE" per message
expunged; IDLE that looks at the Maildir every IMAP_IDLE_TIMEOUT
seconds rather than being told.

Keep mode over IMAPS (all once and byte-exact, nothing on the server
changed, a second poll fetches nothing, then only what was added);
delete mode over STARTTLS (the server empty); move-to (the INBOX empty,
all in INBOX.Archive byte-exact); two folders into Maildir++ subfolders
(INBOX.Lists into .Lists); push (a message added while maild idles is
delivered, once).
"""

import contextlib
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import courier     # noqa: E402
import maildd      # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

USERS = ("keep", "del", "move", "folders", "push")
# every special case, 8-bit header fields too: Courier's IMAP serves them
# as they are (its POP3 server does not, see test_courier.py)
SPECIALS = list(corpus.SPECIALS)
IDLE_SECONDS = 2    # Courier's IMAP_IDLE_TIMEOUT: how often IDLE looks


def fixture():
    @contextlib.contextmanager
    def cm():
        mt.require_maild()
        with courier.Courier(certs.get(), imap=True,
                             idle_timeout=IDLE_SECONDS) as srv:
            for u in USERS:
                srv.add_user(u)
            yield srv
    return cm()


def messages(user, count=12, extra=""):
    return corpus.generate(seed=11, count=count, prefix=f"{user}{extra}",
                           specials=SPECIALS)


def account(t, srv, user, tls="implicit", **extra):
    port = srv.imaps_port if tls == "implicit" else srv.imap_port
    a = mt.account("ci", srv.host, port, user, srv.users[user],
                   t.tmp / "Maildir", ca_file=srv.ca, protocol="imap",
                   tls=mt.Raw(tls))
    a.update(extra)
    return a


def once(t, srv, accounts, label):
    cfg = mt.write_config(t.tmp / "maild.conf", accounts,
                          state_dir=t.tmp / "state", timeout=30)
    r = mt.run_maild(["--once", "-vv", "-f", cfg], timeout=120)
    t.attach(f"maild --once ({label})", r.stderr)
    assert r.rc == 0, f"{label}: exit {r.rc}: {mt.tail(r.stderr)}"
    srv.wait_idle()
    return r


def again(t, srv, a):
    """One more poll: it fetches nothing."""
    r = once(t, srv, [a], "again")
    assert r.account("ci")["fetched"] == 0, r.account("ci")["line"]


def server_files(srv, user):
    """The names of the server's INBOX files (flags included)."""
    md = srv.maildir(user)
    return sorted(n for sub in ("cur", "new") for n in os.listdir(md / sub))


def on_disk(folder):
    """Courier keeps INBOX.a.b in the Maildir++ folder .a.b, which is
    srv.maildir(user, "a.b")."""
    assert folder.startswith("INBOX."), folder
    return folder[len("INBOX."):]


def make_folder(srv, user, folder, msgs=()):
    """The folder, made with its maildirfolder file, holding msgs."""
    srv.add_messages(user, msgs, new=False, folder=on_disk(folder))


@tap.test(name="Courier IMAPS, keep mode: all once, byte-exact, nothing on "
          "the server changed; a second poll fetches nothing, a third only "
          "what was added")
def keep_mode(t):
    srv = t.fx
    u = "keep"
    m = messages(u)
    srv.set_mailbox(u, m)
    before = server_files(srv, u)
    a = account(t, srv, u, keep=True)
    r = once(t, srv, [a], "first")
    assert r.account("ci")["fetched"] == len(m), r.account("ci")["line"]
    mt.assert_maildir(t.tmp / "Maildir", m)
    assert server_files(srv, u) == before, "the server's files changed"
    again(t, srv, a)
    more = messages(u, 2, extra="-more")
    srv.add_messages(u, more)
    r = once(t, srv, [a], "third")
    assert r.account("ci")["fetched"] == 2, r.account("ci")["line"]
    mt.assert_maildir(t.tmp / "Maildir", m + more)


@tap.test(name="Courier IMAP with STARTTLS (LOGINDISABLED before it), "
          "delete mode: all once, byte-exact, the server empty")
def delete_mode(t):
    srv = t.fx
    u = "del"
    m = messages(u)
    srv.set_mailbox(u, m)
    a = account(t, srv, u, tls="starttls", keep=False)
    r = once(t, srv, [a], "delete")
    s = r.account("ci")
    assert s["fetched"] == len(m) and s["deleted"] == len(m), s["line"]
    assert "LOGINDISABLED" in r.stderr, "Courier did not say LOGINDISABLED"
    mt.assert_maildir(t.tmp / "Maildir", m)
    assert srv.mailbox(u) == []
    again(t, srv, a)


@tap.test(name="Courier IMAP, move-to = INBOX.Archive without MOVE (UID "
          "COPY, \\Deleted, UID EXPUNGE): the INBOX empty, all in the "
          "archive byte-exact, delivered once")
def move_to(t):
    srv = t.fx
    u = "move"
    m = messages(u)
    srv.set_mailbox(u, m)
    make_folder(srv, u, "INBOX.Archive")
    a = account(t, srv, u, keep=False, move_to="INBOX.Archive")
    r = once(t, srv, [a], "move")
    assert r.account("ci")["fetched"] == len(m), r.account("ci")["line"]
    assert "UID MOVE" not in r.stderr and "UID COPY" in r.stderr, \
        "not the COPY fallback"
    mt.assert_maildir(t.tmp / "Maildir", m)
    assert srv.mailbox(u) == []
    mt.assert_messages(srv.mailbox(u, on_disk("INBOX.Archive")), m,
                       "INBOX.Archive")
    again(t, srv, a)


@tap.test(name="Courier IMAP, folders INBOX and INBOX.Lists with "
          "folder-subdirs: INBOX's into the Maildir, INBOX.Lists's into "
          "its .Lists folder, each once")
def two_folders(t):
    srv = t.fx
    u = "folders"
    inbox = messages(u, 5)
    lists = messages(u, 4, extra="-lists")
    srv.set_mailbox(u, inbox)
    make_folder(srv, u, "INBOX.Lists", lists)
    a = account(t, srv, u, keep=True, folder_subdirs=True,
                folders=mt.Raw('{"INBOX", "INBOX.Lists"}'))
    r = once(t, srv, [a], "folders")
    assert r.account("ci")["fetched"] == 9, r.account("ci")["line"]
    mt.assert_maildir(t.tmp / "Maildir", inbox)
    sub = t.tmp / "Maildir" / ".Lists"
    assert (sub / "maildirfolder").exists(), "no Maildir++ folder .Lists"
    mt.assert_maildir(sub, lists)
    again(t, srv, a)


@tap.test(timeout=120, name="Courier IMAP IDLE: a message added while maild "
          "idles is delivered, once; then a second one")
def push(t):
    srv = t.fx
    u = "push"
    srv.set_mailbox(u, [])
    a = account(t, srv, u, keep=True, idle=mt.Raw("yes"))
    cfg = mt.write_config(t.tmp / "maild.conf", [a],
                          state_dir=t.tmp / "state", timeout=30,
                          poll_interval=mt.Raw("1h"))
    d = maildd.Daemon(t, cfg, "-vv")
    d.wait_log(r"account=ci <<< \+ ", timeout=30)
    md = t.tmp / "Maildir"
    for i in (1, 2):
        m = messages(u, 1, extra=f"-push{i}")
        srv.add_messages(u, m)
        maildd.wait_until(lambda: len(mt.read_maildir(md)) >= i,
                          IDLE_SECONDS * 5 + 10, f"pushed message {i}")
    rc = d.stop()
    assert rc == 0, f"maild exited {rc}"
    got = mt.read_maildir(md)
    assert len(got) == 2, f"{len(got)} messages delivered"


if __name__ == "__main__":
    tap.main(fixture=fixture)
