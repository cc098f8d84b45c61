#!/usr/bin/env python3
"""test_imap.py: maild against a real IMAP server (a private Dovecot), in
the foreground (--once, --check).

Keep mode: every corpus edge case (the headers-only message, dots, long
lines, 8-bit, a multi-MB message) delivered exactly once and byte-exact,
the server's messages untouched (no \\Seen: EXAMINE and BODY.PEEK), a
second run fetches nothing, a message added between runs is fetched by
the next run only.  Delete mode: everything delivered, the folder empty,
UID STORE + UID EXPUNGE and never a bare EXPUNGE.  Keep, then delete:
what was fetched is deleted without being fetched again.  move-to: the
messages end up in Archive, INBOX empty.  mark-seen: \\Seen on the server.
Several folders, into the Maildir or (folder-subdirs) into Maildir++
folders that Dovecot itself, reading that Maildir, lists by the same
names, a non-ASCII one among them (modified UTF-7 on the wire and in the
Maildir++ name).  STARTTLS on the plain port.  auth = user (LOGIN), plain,
login, cram-md5 and auto, as Dovecot logs them.  UIDVALIDITY changes:
the UIDs renumbered under a new UIDVALIDITY (doveadm, dovecot.reset_uids)
or only the UIDVALIDITY changed, with new messages added at the same time
and two byte-identical messages: nothing delivered twice, every new one
delivered, in keep mode and when switching to delete mode afterwards.
--check prints its table for an IMAP account.  max-size leaves the big
messages on the server; delete-after removes kept messages once old
enough.

Against the fake IMAP server (what Dovecot cannot show): delete mode with
another client's message flagged \\Deleted in the folder meanwhile (it
stays: UID EXPUNGE of maild's UIDs only, no bare EXPUNGE; and without
UIDPLUS no EXPUNGE at all while another client's message is marked),
move-to without MOVE (COPY, STORE, UID EXPUNGE), and tls = starttls
against a server that does not offer STARTTLS (refused, nothing sent).
"""

import functools
import os
import re
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import dovecot     # noqa: E402
import fakeimap    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

SEED = int(os.environ.get("MAILD_TEST_SEED", "1"))
HUGE = int(os.environ.get("MAILD_TEST_HUGE_BYTES", str(3_000_000)))
MECHS = "plain login cram-md5"
AUTHS = {"user": "PLAIN", "plain": "PLAIN", "login": "LOGIN",
         "cram-md5": "CRAM-MD5"}

# Dovecot's users, made before it starts (its passwd-file is reread at
# most once a second): one per test, so that tests do not share mail.
USERS = {u: None for u in (
    "keep", "delete", "keepdel", "move", "seen", "folders", "subdirs",
    "reader", "utf7", "starttls", "auto", "autoplain", "uvreset",
    "uvonly", "uvdelete", "uvtwins", "check", "maxsize", "delafter",
    "spaces", "inboxcase")}
USERS.update({f"auth-{a}": f"pw-{a}-S3cret \"q\" \\b" for a in AUTHS})


def msgs(prefix, n, **kw):
    kw.setdefault("max_large", 0)
    return corpus.generate(seed=SEED, count=n, prefix=prefix, **kw)


def account(t, srv, user, name="im", port=None, maildir=None, **extra):
    a = mt.account(name, "127.0.0.1", port or srv.imaps_port, user,
                   srv.users[user], maildir or t.tmp / "Maildir",
                   keep=True, ca_file=srv.ca, protocol="imap")
    a.update(extra)
    return a


def run(t, accounts, *flags, label="maild", limit=120):
    cfg = mt.write_config(t.tmp / "maild.conf", accounts,
                          state_dir=t.tmp / "state", timeout=30)
    mt.require_maild()
    return mt.run_maild(["--once", "-v", *flags, "-f", cfg], timeout=limit,
                        label=label)


def ok_run(r, name="im", fetched=None, deleted=None):
    """rc 0, no error, and the counts of the account's summary line."""
    s = r.account(name)
    assert r.rc == 0, f"exit {r.rc}: {s['error']}"
    assert s["error"] is None, s["line"]
    if fetched is not None:
        assert s["fetched"] == fetched, \
            f"fetched={s['fetched']}, expected {fetched}"
    if deleted is not None:
        assert s["deleted"] == deleted, \
            f"deleted={s['deleted']}, expected {deleted}"
    return s


def trace(r, name="im"):
    """maild's protocol trace (-vv): the lines it sent and received."""
    return [ln.split(f"account={name} ", 1)[1] for ln in
            r.stderr.splitlines() if f"account={name} >>> " in ln or
            f"account={name} <<< " in ln]


def sent(r, name="im"):
    """The commands maild sent (-vv), without their tags."""
    out = []
    for ln in trace(r, name):
        if ln.startswith(">>> "):
            words = ln[4:].split(" ", 1)
            out.append(words[1] if len(words) > 1 else words[0])
    return out


def flags_of(srv, user, folder="INBOX"):
    return {r["uid"]: r["flags"] for r in srv.messages(user, folder)}


def server_ids(srv, user, folder="INBOX"):
    return sorted(corpus.test_id(d) for d in srv.mailbox(user, folder))


def dovecot_logins(srv, user):
    try:
        log = srv.log.read_text(errors="replace")
    except OSError:
        log = ""
    return re.findall(rf"imap-login: (?:Info: )?Login: user=<"
                      rf"{re.escape(user)}>, "
                      rf"method=([A-Z0-9-]+)", log)


def settle(srv, limit=10):
    """Wait until Dovecot's IMAP session processes are gone (maild's
    LOGOUT answered, the process may take a moment), before changing a
    folder behind Dovecot's back."""
    deadline = time.monotonic() + limit
    while srv.sessions("imap") and time.monotonic() < deadline:
        time.sleep(0.02)
    srv.wait_idle()


def wait_logins(srv, user, n, limit=10):
    """Dovecot writes its log a moment after the login."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = dovecot_logins(srv, user)
        if len(got) >= n:
            return got
        time.sleep(0.05)
    return dovecot_logins(srv, user)


# ---------------------------------------------------------------------------
# keep, delete, keep then delete

@tap.test(name="keep: every corpus edge case byte-exact, headers-only "
          "intact, no \\Seen on the server; second run nothing; a new "
          "message fetched once", timeout=300)
def test_keep(t):
    srv = t.fx.get(t)
    u = "keep"
    m = msgs(u, 60, huge_bytes=HUGE)
    srv.set_mailbox(u, m)
    before = srv.messages(u)
    r = run(t, [account(t, srv, u)], "-vv", label="first run")
    ok_run(r, fetched=len(m), deleted=0)
    mt.assert_maildir(t.tmp / "Maildir", m)
    assert not os.listdir(t.tmp / "Maildir" / "cur"), "files in cur/"
    kinds = {x.kind for x in m}
    assert "special:headers-only" in kinds and "huge" in kinds, kinds
    ho = next(x for x in m if x.kind == "special:headers-only")
    assert b"\n\n" not in ho.data
    got = [mt.strip_trace(d) for d in mt.read_maildir(t.tmp / "Maildir")]
    assert ho.data in got, "the headers-only message is not intact"
    s = r.account("im")
    size = mt.maildir_bytes(t.tmp / "Maildir")
    assert s["bytes"] == size, f"bytes={s['bytes']}, the files: {size}"
    # untouched: same UIDs, no \Seen, nothing gone
    after = srv.messages(u)
    assert [x["uid"] for x in after] == [x["uid"] for x in before]
    seen = [x["uid"] for x in after if "\\Seen" in x["flags"]]
    assert not seen, f"keep mode set \\Seen on UIDs {seen}"
    mt.assert_messages(srv.mailbox(u), m, "server mailbox")
    cmds = sent(r)
    assert any(c.startswith("EXAMINE") for c in cmds), cmds[:10]
    assert not any(re.match(r"(UID )?(STORE|EXPUNGE|MOVE|COPY)", c)
                   for c in cmds), [c for c in cmds if "STORE" in c]
    assert all("BODY[]" not in c for c in cmds if "FETCH" in c), \
        "a FETCH of BODY[] (not BODY.PEEK[]) sets \\Seen"

    t.note("second run: nothing new")
    r = run(t, [account(t, srv, u)], label="second run")
    ok_run(r, fetched=0, deleted=0)
    mt.assert_maildir(t.tmp / "Maildir", m)

    t.note("third run: one new message")
    new = corpus.simple(f"{u}/extra", body="added between runs\n.\n..\n")
    srv.deliver(u, [new])
    r = run(t, [account(t, srv, u)], label="third run")
    ok_run(r, fetched=1, deleted=0)
    mt.assert_maildir(t.tmp / "Maildir", m + [new])
    r = run(t, [account(t, srv, u)], label="fourth run")
    ok_run(r, fetched=0)


@tap.test(name="delete: everything delivered, the folder empty, UID STORE "
          "and UID EXPUNGE (no bare EXPUNGE); second run nothing; a new "
          "message fetched and deleted", timeout=300)
def test_delete(t):
    srv = t.fx.get(t)
    u = "delete"
    m = msgs(u, 50, huge_bytes=HUGE)
    srv.set_mailbox(u, m)
    r = run(t, [account(t, srv, u, keep=False)], "-vv")
    ok_run(r, fetched=len(m), deleted=len(m))
    mt.assert_maildir(t.tmp / "Maildir", m)
    left = srv.messages(u)
    assert not left, f"{len(left)} messages left on the server"
    cmds = sent(r)
    assert any(c.startswith("SELECT") for c in cmds), cmds[:10]
    assert any(re.match(r"UID STORE \S+ \+FLAGS\.SILENT \(\\\\?Deleted\)",
                        c) for c in cmds), [c for c in cmds if "STORE" in c]
    assert any(c.startswith("UID EXPUNGE ") for c in cmds), cmds
    assert "EXPUNGE" not in cmds, "a bare EXPUNGE was sent"
    # nothing is flagged before it is durable: the STOREs come after
    # the last FETCH of a body has been answered
    recs = mt.state_records(t.tmp / "state", "im")
    assert recs == [], f"records of deleted messages left: {recs[:5]}"

    t.note("second run: nothing new")
    r = run(t, [account(t, srv, u, keep=False)], label="second run")
    ok_run(r, fetched=0, deleted=0)

    t.note("third run: one new message")
    new = corpus.simple(f"{u}/extra")
    srv.deliver(u, [new])
    r = run(t, [account(t, srv, u, keep=False)], label="third run")
    ok_run(r, fetched=1, deleted=1)
    mt.assert_maildir(t.tmp / "Maildir", m + [new])
    assert not srv.messages(u)


@tap.test(name="keep, then delete: what was fetched is deleted without "
          "being fetched again")
def test_keep_then_delete(t):
    srv = t.fx.get(t)
    u = "keepdel"
    m = msgs(u, 30)
    srv.set_mailbox(u, m)
    r = run(t, [account(t, srv, u)], label="keep run")
    ok_run(r, fetched=len(m), deleted=0)
    r = run(t, [account(t, srv, u, keep=False)], "-vv", label="delete run")
    ok_run(r, fetched=0, deleted=len(m))
    assert not any("BODY.PEEK[]" in c for c in sent(r)), \
        "bodies fetched again"
    mt.assert_maildir(t.tmp / "Maildir", m)
    assert not srv.messages(u)


# ---------------------------------------------------------------------------
# move-to, mark-seen

@tap.test(name="move-to: the messages end up in Archive (UID MOVE), none "
          "left in INBOX, none fetched twice")
def test_move_to(t):
    srv = t.fx.get(t)
    u = "move"
    m = msgs(u, 25)
    srv.set_mailbox(u, m)
    srv.create_folder(u, "Archive")
    old = [corpus.simple(f"{u}/archived-before")]
    srv.deliver(u, old, folder="Archive")
    r = run(t, [account(t, srv, u, keep=False, move_to="Archive")], "-vv")
    ok_run(r, fetched=len(m))
    mt.assert_maildir(t.tmp / "Maildir", m)
    assert not srv.messages(u), "messages left in INBOX"
    mt.assert_messages(srv.mailbox(u, "Archive"), m + old,
                       "the Archive folder")
    cmds = sent(r)
    assert any(c.startswith("UID MOVE ") and c.endswith('"Archive"')
               for c in cmds), [c for c in cmds if "MOVE" in c]
    assert "EXPUNGE" not in cmds
    t.note("second run: nothing in INBOX, Archive is not fetched")
    r = run(t, [account(t, srv, u, keep=False, move_to="Archive")],
            label="second run")
    ok_run(r, fetched=0, deleted=0)
    new = corpus.simple(f"{u}/new")
    srv.deliver(u, [new])
    r = run(t, [account(t, srv, u, keep=False, move_to="Archive")],
            label="third run")
    ok_run(r, fetched=1)
    mt.assert_maildir(t.tmp / "Maildir", m + [new])
    mt.assert_messages(srv.mailbox(u, "Archive"), m + old + [new])


@tap.test(name="mark-seen: the fetched messages are \\Seen on the server, "
          "the others not; second run nothing")
def test_mark_seen(t):
    srv = t.fx.get(t)
    u = "seen"
    m = msgs(u, 12)
    srv.set_mailbox(u, m)
    r = run(t, [account(t, srv, u, mark_seen=True)], "-vv")
    ok_run(r, fetched=len(m), deleted=0)
    mt.assert_maildir(t.tmp / "Maildir", m)
    fl = flags_of(srv, u)
    unseen = [uid for uid, f in fl.items() if "\\Seen" not in f]
    assert not unseen, f"not \\Seen: {unseen}"
    assert all("\\Deleted" not in f for f in fl.values())
    assert any(re.match(r"UID STORE \S+ \+FLAGS\.SILENT \(\\\\?Seen\)", c)
               for c in sent(r)), sent(r)
    new = corpus.simple(f"{u}/new")
    srv.deliver(u, [new])
    r = run(t, [account(t, srv, u, mark_seen=True)], label="second run")
    ok_run(r, fetched=1, deleted=0)
    fl = flags_of(srv, u)
    assert all("\\Seen" in f for f in fl.values()), fl
    r = run(t, [account(t, srv, u, mark_seen=True)], label="third run")
    ok_run(r, fetched=0)
    mt.assert_maildir(t.tmp / "Maildir", m + [new])


# ---------------------------------------------------------------------------
# folders

FOLDERS = ["INBOX", "Work", "Lists/Linux"]


def fill_folders(srv, u, n=6):
    """A few messages in each of FOLDERS; returns folder -> messages."""
    out = {}
    for i, f in enumerate(FOLDERS):
        out[f] = msgs(f"{u}-{i}", n, specials=["headers-only", "dot-lines"])
    srv.set_mailbox(u, out["INBOX"])
    for f in FOLDERS[1:]:
        srv.create_folder(u, f)
        srv.add_messages(u, out[f], new=False, folder=f)
    return out


def folder_list(names):
    return mt.Raw("{" + ", ".join(mt.quote(n) for n in names) + "}")


@tap.test(name="folders: three folders (one nested) into the Maildir; "
          "the folder not listed is left alone")
def test_folders(t):
    srv = t.fx.get(t)
    u = "folders"
    by = fill_folders(srv, u)
    srv.create_folder(u, "Spam")
    spam = [corpus.simple(f"{u}/spam")]
    srv.add_messages(u, spam, new=False, folder="Spam")
    a = account(t, srv, u, folders=folder_list(FOLDERS))
    r = run(t, [a])
    everything = [x for f in FOLDERS for x in by[f]]
    ok_run(r, fetched=len(everything))
    mt.assert_maildir(t.tmp / "Maildir", everything)
    subs = [p for p in os.listdir(t.tmp / "Maildir") if p.startswith(".")]
    assert not subs, f"Maildir++ folders without folder-subdirs: {subs}"
    for f in FOLDERS:
        mt.assert_messages(srv.mailbox(u, f), by[f], f"server folder {f}")
    mt.assert_messages(srv.mailbox(u, "Spam"), spam, "Spam")
    r = run(t, [a], label="second run")
    ok_run(r, fetched=0)
    new = {f: corpus.simple(f"{u}/new-{i}") for i, f in enumerate(FOLDERS)}
    for f, x in new.items():
        srv.deliver(u, [x], folder=f)
    r = run(t, [a], label="third run")
    ok_run(r, fetched=len(FOLDERS))
    mt.assert_maildir(t.tmp / "Maildir", everything + list(new.values()))


@tap.test(name="folder-subdirs: INBOX into the Maildir, the others into "
          "Maildir++ folders (.Work, .Lists.Linux) that Dovecot reads back "
          "by their names; delete mode empties each server folder")
def test_folder_subdirs(t):
    srv = t.fx.get(t)
    u = "subdirs"
    by = fill_folders(srv, u)
    # maild's Maildir is the Maildir of Dovecot's user "reader"
    md = srv.maildir("reader")
    a = account(t, srv, u, folders=folder_list(FOLDERS), maildir=md,
                folder_subdirs=True, keep=False)
    r = run(t, [a])
    everything = [x for f in FOLDERS for x in by[f]]
    ok_run(r, fetched=len(everything), deleted=len(everything))
    mt.assert_maildir(md, by["INBOX"], "INBOX -> the Maildir")
    mt.assert_maildir(md / ".Work", by["Work"], ".Work")
    mt.assert_maildir(md / ".Lists.Linux", by["Lists/Linux"],
                      ".Lists.Linux")
    for f in FOLDERS:
        assert not srv.messages(u, f), f"{f}: messages left on the server"
    # Dovecot reading that Maildir sees the same folders and messages
    dovecot.chown_tree(srv.home("reader"), srv.mail_uid, srv.mail_gid)
    names = set(srv.folders("reader"))
    assert {"INBOX", "Work", "Lists/Linux"} <= names, names
    for f in FOLDERS:
        got = [mt.strip_trace(d) for d in srv.mailbox("reader", f)]
        mt.assert_messages(got, by[f], f"Dovecot's view of {f}")
        assert len(srv.messages("reader", f)) == len(by[f])


@tap.test(name="a non-ASCII folder name: modified UTF-7 on the wire, and "
          "as the Maildir++ folder's name")
def test_folder_utf7(t):
    srv = t.fx.get(t)
    u = "utf7"
    names = ["Entwürfe", "Été/Sub&Co", "日本語"]
    by = {}
    srv.set_mailbox(u, [])
    for i, f in enumerate(names):
        srv.create_folder(u, f)
        by[f] = msgs(f"{u}-{i}", 3, specials=False)
        srv.deliver(u, by[f], folder=f)
    a = account(t, srv, u, folders=folder_list(names))
    r = run(t, [a], "-vv", label="into the Maildir")
    ok_run(r, fetched=9)
    mt.assert_maildir(t.tmp / "Maildir", [x for f in names for x in by[f]])
    cmds = sent(r)
    for f in names:
        w = fakeimap.mutf7_encode(f)
        assert f'EXAMINE "{w}"' in cmds, (w, cmds[:12])
    md = t.tmp / "Maildir2"
    a = account(t, srv, u, folders=folder_list(names), maildir=md,
                folder_subdirs=True)
    mt.remove_state(t.tmp / "state", "im")
    r = run(t, [a], label="into Maildir++ folders")
    ok_run(r, fetched=9)
    for f in names:
        sub = "." + fakeimap.mutf7_encode(f).replace("/", ".")
        mt.assert_maildir(md / sub, by[f], sub)
        # the same name Dovecot gives that folder in its own Maildir
        assert srv.maildir(u, f).is_dir(), f"Dovecot has no {sub}"


@tap.test(name="folder-subdirs: a folder name with spaces (\"Sent Items\") "
          "keeps them in its Maildir++ name, as Dovecot names it")
def test_folder_spaces(t):
    srv = t.fx.get(t)
    u = "spaces"
    srv.set_mailbox(u, [])
    f = "Sent Items"
    srv.create_folder(u, f)
    m = msgs(u, 3, specials=False)
    srv.deliver(u, m, folder=f)
    assert srv.maildir(u, f).is_dir(), "Dovecot names it otherwise"
    a = account(t, srv, u, folders=folder_list([f]), folder_subdirs=True)
    r = run(t, [a])
    ok_run(r, fetched=3)
    md = t.tmp / "Maildir"
    subs = sorted(p for p in os.listdir(md) if p.startswith("."))
    assert subs == [srv.maildir(u, f).name], \
        f"Maildir++ folders {subs}, Dovecot's is {srv.maildir(u, f).name!r}"
    mt.assert_maildir(md / srv.maildir(u, f).name, m)


@tap.test(name="folders = {\"INBOX\", \"inbox\"} (one folder: INBOX is "
          "case-insensitive): refused by the configuration check, or each "
          "message delivered once")
def test_inbox_case(t):
    srv = t.fx.get(t)
    u = "inboxcase"
    m = msgs(u, 4, specials=False)
    srv.set_mailbox(u, m)
    a = account(t, srv, u, folders=folder_list(["INBOX", "inbox"]))
    r = run(t, [a])
    if r.rc == mt.EX_CONFIG:
        return
    ok_run(r)
    mt.assert_maildir(t.tmp / "Maildir", m)


# ---------------------------------------------------------------------------
# TLS and login

@tap.test(name="tls = starttls on the plain IMAP port: STARTTLS, then "
          "login and fetch")
def test_starttls(t):
    srv = t.fx.get(t)
    u = "starttls"
    m = msgs(u, 8)
    srv.set_mailbox(u, m)
    a = account(t, srv, u, port=srv.imap_port, tls=mt.Raw("starttls"))
    r = run(t, [a], "-vv")
    ok_run(r, fetched=len(m))
    mt.assert_maildir(t.tmp / "Maildir", m)
    cmds = sent(r)
    k = cmds.index("STARTTLS")
    login = [i for i, c in enumerate(cmds)
             if c.startswith(("LOGIN", "AUTHENTICATE"))]
    assert login and min(login) > k, cmds[:8]
    assert re.search(r'account=im tls="TLSv1\.[23] ', r.stderr), \
        "no TLS line in the log"
    # the capabilities were asked again after STARTTLS
    assert "CAPABILITY" in cmds[k + 1:min(login)], cmds[:8]


def _auth_test(auth):
    def test(t):
        srv = t.fx.get(t)
        u = f"auth-{auth}"
        m = msgs(u, 3)
        srv.set_mailbox(u, m)
        n0 = len(dovecot_logins(srv, u))
        r = run(t, [account(t, srv, u, auth=auth)], "-vv")
        ok_run(r, fetched=len(m))
        mt.assert_maildir(t.tmp / "Maildir", m)
        got = wait_logins(srv, u, n0 + 1)[n0:]
        assert got == [AUTHS[auth]], \
            f"auth = {auth}: Dovecot logged method={got}"
        pw = srv.users[u]
        assert pw not in r.stderr, "the password is in the -vv log"
        cmds = sent(r)
        if auth == "user":
            assert any(c.startswith("LOGIN ") for c in cmds), cmds[:6]
    test.__name__ = f"test_auth_{auth}"
    return test


for _a in AUTHS:
    tap.test(name=f"auth = {_a}: logs in (Dovecot logs method="
             f"{AUTHS[_a]}), password with quotes and a backslash, not "
             "in the -vv log")(_auth_test(_a))


@tap.test(name="auth = auto over TLS: the strongest method offered, "
          "CRAM-MD5, as maild.conf(5) documents (and POP3 does)")
def test_auth_auto_tls(t):
    srv = t.fx.get(t)
    u = "auto"
    m = msgs(u, 3)
    srv.set_mailbox(u, m)
    n0 = len(dovecot_logins(srv, u))
    r = run(t, [account(t, srv, u, auth="auto")])
    ok_run(r, fetched=len(m))
    got = wait_logins(srv, u, n0 + 1)[n0:]
    assert got == ["CRAM-MD5"], f"auth = auto: Dovecot logged {got}"


@tap.test(name="auth = auto without TLS (tls = none, allow-plaintext): "
          "CRAM-MD5, the password never on the wire")
def test_auth_auto_plaintext(t):
    srv = t.fx.get(t)
    u = "autoplain"
    m = msgs(u, 3)
    srv.set_mailbox(u, m)
    n0 = len(dovecot_logins(srv, u))
    a = account(t, srv, u, port=srv.imap_port, tls=mt.Raw("none"),
                allow_plaintext=True, ca_file=None)
    r = run(t, [a], "-vv")
    ok_run(r, fetched=len(m))
    got = wait_logins(srv, u, n0 + 1)[n0:]
    assert got == ["CRAM-MD5"], f"Dovecot logged {got}"
    assert not any(c.startswith(("LOGIN", "AUTHENTICATE PLAIN"))
                   for c in sent(r)), sent(r)


# ---------------------------------------------------------------------------
# UIDVALIDITY

@tap.test(name="UIDVALIDITY reset (UIDs renumbered from 1), two new "
          "messages at the same time: only those delivered, nothing twice")
def test_uidvalidity_reset(t):
    srv = t.fx.get(t)
    u = "uvreset"
    m = msgs(u, 20, specials=["headers-only", "empty-body", "dot-lines"])
    srv.set_mailbox(u, m)
    a = account(t, srv, u)
    r = run(t, [a], label="first run")
    ok_run(r, fetched=len(m))
    before = srv.status(u)
    # some messages vanish, two come, then the UIDs are forgotten
    gone = m[:3]
    c = srv.imap(u)
    try:
        c.select("INBOX")
        c.uid("STORE", "1:3", "+FLAGS.SILENT", "(\\Deleted)")
        c.expunge()
    finally:
        c.logout()
    new = [corpus.simple(f"{u}/new-{i}") for i in range(2)]
    srv.deliver(u, new)
    settle(srv)
    v = srv.reset_uids(u)
    assert v != before["uidvalidity"]
    assert [x["uid"] for x in srv.messages(u)][:2] == [1, 2]
    r = run(t, [a], label="after the reset")
    ok_run(r, fetched=2)
    assert "UIDVALIDITY" in r.stderr, "the change is not logged"
    mt.assert_maildir(t.tmp / "Maildir", m + new)
    r = run(t, [a], label="third run")
    ok_run(r, fetched=0)
    t.note(f"{len(gone)} messages were expunged before the reset")


@tap.test(name="UIDVALIDITY changed, UIDs kept: nothing delivered twice, "
          "a new message delivered")
def test_uidvalidity_only(t):
    srv = t.fx.get(t)
    u = "uvonly"
    m = msgs(u, 10)
    srv.set_mailbox(u, m)
    a = account(t, srv, u)
    ok_run(run(t, [a], label="first run"), fetched=len(m))
    new = corpus.simple(f"{u}/new")
    srv.deliver(u, [new])
    settle(srv)
    srv.set_uidvalidity(u, "INBOX")
    r = run(t, [a], label="after the change")
    ok_run(r, fetched=1)
    mt.assert_maildir(t.tmp / "Maildir", m + [new])
    ok_run(run(t, [a], label="third run"), fetched=0)


@tap.test(name="UIDVALIDITY reset, then delete mode: the messages "
          "delivered before are deleted, not delivered again; the new one "
          "is delivered and deleted")
def test_uidvalidity_then_delete(t):
    srv = t.fx.get(t)
    u = "uvdelete"
    m = msgs(u, 12)
    srv.set_mailbox(u, m)
    ok_run(run(t, [account(t, srv, u)], label="keep run"), fetched=len(m))
    new = corpus.simple(f"{u}/new")
    srv.deliver(u, [new])
    settle(srv)
    srv.reset_uids(u)
    r = run(t, [account(t, srv, u, keep=False)], label="delete run")
    ok_run(r, fetched=1, deleted=len(m) + 1)
    mt.assert_maildir(t.tmp / "Maildir", m + [new])
    assert not srv.messages(u), "messages left on the server"


@tap.test(name="UIDVALIDITY reset with byte-identical messages: one copy "
          "delivered before, a second identical copy arrives: exactly one "
          "more delivered")
def test_uidvalidity_twins(t):
    srv = t.fx.get(t)
    u = "uvtwins"
    twin = corpus.simple(f"{u}/twin", body="the same bytes\n")
    other = msgs(u, 4, specials=False)
    srv.set_mailbox(u, other + [twin])
    a = account(t, srv, u)
    ok_run(run(t, [a], label="first run"), fetched=5)
    srv.deliver(u, [twin])          # byte-identical
    settle(srv)
    srv.reset_uids(u)
    r = run(t, [a], label="after the reset")
    ok_run(r, fetched=1)
    got = [mt.strip_trace(d) for d in mt.read_maildir(t.tmp / "Maildir")]
    assert got.count(twin.data) == 2, \
        f"{got.count(twin.data)} copies of the twin, expected 2"
    mt.assert_messages([d for d in got if d != twin.data], other)
    ok_run(run(t, [a], label="third run"), fetched=0)


# ---------------------------------------------------------------------------
# --check, max-size, delete-after

@tap.test(name="--check for an IMAP account: connect, TLS, capabilities, "
          "login, mailbox; nothing fetched")
def test_check(t):
    srv = t.fx.get(t)
    u = "check"
    m = msgs(u, 7)
    srv.set_mailbox(u, m)
    cfg = mt.write_config(t.tmp / "maild.conf", [account(t, srv, u)],
                          state_dir=t.tmp / "state", timeout=30)
    r = mt.run_maild(["--check", "-f", cfg], timeout=60)
    assert r.rc == 0, f"exit {r.rc}\n{r.stdout}"
    out = r.stdout
    t.attach("--check output", out)
    for line in (r'account "im": check@127\.0\.0\.1 port \d+',
                 r"connect\s+ok\s+127\.0\.0\.1:\d+",
                 r"tls\s+ok\s+TLSv1\.[23] .*certificate verified",
                 r"capabilities\s+.*IMAP4rev1",
                 r"login\s+ok\s+\S+",
                 r"mailbox\s+ok\s+7 messages"):
        assert re.search(line, out), f"no line /{line}/ in:\n{out}"
    assert not re.search(r"mailbox\s+ok\s+7 messages, 0 bytes", out), \
        f"7 messages of 0 bytes:\n{out}"
    assert mt.read_maildir(t.tmp / "Maildir") == []
    assert srv.users[u] not in out + r.stderr
    assert not any("\\Seen" in f for f in flags_of(srv, u).values())


@tap.test(name="max-size: bigger messages stay on the server (delete "
          "mode), logged; fetched once the limit is raised")
def test_max_size(t):
    srv = t.fx.get(t)
    u = "maxsize"
    small = [corpus.simple(f"{u}/small-{i}") for i in range(4)]
    big = [corpus.simple(f"{u}/big-{i}", body="x" * 60 + "\n" * 3000)
           for i in range(2)]
    srv.set_mailbox(u, small[:2] + big[:1] + small[2:] + big[1:])
    a = account(t, srv, u, keep=False, max_size=mt.Raw("2k"))
    r = run(t, [a])
    ok_run(r, fetched=4, deleted=4)
    mt.assert_maildir(t.tmp / "Maildir", small)
    left = server_ids(srv, u)
    assert left == sorted(x.id for x in big), left
    assert re.search(r"2 messages over max-size", r.stderr), \
        "no max-size warning"
    r = run(t, [account(t, srv, u, keep=False, max_size=mt.Raw("10M"))],
            label="limit raised")
    ok_run(r, fetched=2, deleted=2)
    mt.assert_maildir(t.tmp / "Maildir", small + big)
    assert not srv.messages(u)


@tap.test(name="delete-after in keep mode: kept at first, deleted once "
          "delivered long enough ago, never fetched twice")
def test_delete_after(t):
    srv = t.fx.get(t)
    u = "delafter"
    m = msgs(u, 6)
    srv.set_mailbox(u, m)
    a = account(t, srv, u, delete_after=mt.Raw("2s"))
    r = run(t, [a], label="first run")
    ok_run(r, fetched=len(m), deleted=0)
    assert len(srv.messages(u)) == len(m)
    new = corpus.simple(f"{u}/new")
    time.sleep(2.5)
    srv.deliver(u, [new])
    r = run(t, [a], label="after 2.5 s")
    ok_run(r, fetched=1, deleted=len(m))
    assert server_ids(srv, u) == [new.id], server_ids(srv, u)
    time.sleep(2.5)
    r = run(t, [a], label="after 5 s")
    ok_run(r, fetched=0, deleted=1)
    assert not srv.messages(u)
    mt.assert_maildir(t.tmp / "Maildir", m + [new])


# ---------------------------------------------------------------------------
# the fake server: what Dovecot does not show

def fake(messages=(), **kw):
    kw.setdefault("tls", certs.get().server)
    return fakeimap.FakeIMAP(messages, **kw)


def fake_account(t, srv, **extra):
    a = mt.account("im", "127.0.0.1", srv.port, srv.user, srv.password,
                   t.tmp / "Maildir", keep=True, ca_file=certs.get().ca,
                   protocol="imap", timeout=None)
    a.update(extra)
    return a


def fake_run(t, srv, *flags, base=None, **extra):
    base = base or t.tmp
    extra.setdefault("maildir", base / "Maildir")
    cfg = mt.write_config(base / "maild.conf", [fake_account(t, srv,
                                                             **extra)],
                          state_dir=base / "state", timeout=10)
    mt.require_maild()
    return mt.run_maild(["--once", "-v", *flags, "-f", cfg], timeout=60)


def verbs(srv):
    return [c.verb for conn in srv.connections for c in conn.commands]


def foreign_on_store(srv, data):
    """on_command: when maild's first UID STORE arrives, another client
    adds a message flagged \\Deleted (after maild's listing)."""
    done = []

    def hook(conn, cmd):
        if cmd.verb == "UID STORE" and not done:
            done.append(srv.add(data, flags=["\\Deleted"]))
    return hook, done


@tap.test(name="fake: delete mode, another client's message marked "
          "\\Deleted meanwhile stays: UID EXPUNGE of maild's UIDs only, "
          "never a bare EXPUNGE")
def test_fake_no_bare_expunge(t):
    m = [corpus.simple(f"nbe/{i}") for i in range(5)]
    other = corpus.simple("nbe/other")
    with fake(m) as srv:
        hook, done = foreign_on_store(srv, other)
        srv.on_command = hook
        r = fake_run(t, srv, keep=False)
        ok_run(r, fetched=5, deleted=5)
        mt.assert_maildir(t.tmp / "Maildir", m)
        assert done, "maild sent no UID STORE"
        assert "EXPUNGE" not in verbs(srv), verbs(srv)
        ex = srv.events_of("UID EXPUNGE")
        assert ex and sorted(u for e in ex for u in e.uids) == \
            [1, 2, 3, 4, 5], ex
        assert srv.uids() == [done[0].uid], srv.uids()
        assert "\\Deleted" in srv.flags("INBOX", done[0].uid)


@tap.test(name="fake: delete mode without UIDPLUS: EXPUNGE only when no "
          "other message is marked \\Deleted, else none (a warning)")
def test_fake_no_uidplus(t):
    m = [corpus.simple(f"nup/{i}") for i in range(4)]
    with fake(m, drop_caps=["UIDPLUS"]) as srv:
        r = fake_run(t, srv, keep=False)
        ok_run(r, fetched=4, deleted=4)
        assert srv.uids() == [], srv.uids()
        assert "UID EXPUNGE" not in verbs(srv)
    t.note("now with another client's \\Deleted message")
    m2 = [corpus.simple(f"nup2/{i}") for i in range(4)]
    other = corpus.simple("nup2/other")
    two = t.tmp / "two"
    with fake(m2, drop_caps=["UIDPLUS"]) as srv:
        hook, done = foreign_on_store(srv, other)
        srv.on_command = hook
        r = fake_run(t, srv, keep=False, base=two)
        assert r.rc == 0, f"exit {r.rc}"
        assert done, "maild sent no UID STORE"
        assert "EXPUNGE" not in verbs(srv), \
            "EXPUNGE with another client's message marked \\Deleted"
        assert done[0].uid in srv.uids(), "the other message was expunged"
        assert re.search(r"UIDPLUS", r.stderr), "no warning"
        mt.assert_maildir(two / "Maildir", m2)
        t.note("the next run does not deliver the marked ones again; it "
               "fetches the other one, and then all marked are maild's")
        r = fake_run(t, srv, keep=False, base=two)
        assert r.rc == 0
        mt.assert_maildir(two / "Maildir", m2 + [other])
        assert srv.uids() == [], srv.uids()


@tap.test(name="fake: move-to without MOVE: UID COPY, UID STORE \\Deleted, "
          "UID EXPUNGE; Archive has them, INBOX empty")
def test_fake_move_copy(t):
    m = [corpus.simple(f"mv/{i}") for i in range(6)]
    with fake(m, drop_caps=["MOVE"]) as srv:
        srv.create("Archive")
        r = fake_run(t, srv, keep=False, move_to="Archive")
        ok_run(r, fetched=6)
        mt.assert_maildir(t.tmp / "Maildir", m)
        assert srv.uids() == []
        assert srv.datas("Archive") == [x.data for x in m]
        v = verbs(srv)
        assert "UID MOVE" not in v and "EXPUNGE" not in v, v
        i_copy, i_store, i_exp = (v.index("UID COPY"), v.index("UID STORE"),
                                  v.index("UID EXPUNGE"))
        assert i_copy < i_store < i_exp, v


def _gmail_test(keep):
    def test(t):
        a, b, c = (corpus.simple(f"gm{keep}/{i}") for i in range(3))
        with fake(extra_caps=["X-GM-EXT-1"]) as srv:
            srv.create("Work")
            x = srv.add(a)
            srv.add(b)
            srv.add(fakeimap.Msg(a.data, gm_msgid=x.gm_msgid), "Work")
            srv.add(c, "Work")
            r = fake_run(t, srv, "-vv", folders=folder_list(["INBOX",
                                                             "Work"]),
                         keep=keep)
            ok_run(r, fetched=3)
            mt.assert_maildir(t.tmp / "Maildir", [a, b, c])
            assert any("X-GM-MSGID" in c for c in sent(r)), \
                "X-GM-MSGID not asked for"
            if not keep:
                assert srv.uids() == [] and srv.uids("Work") == [], \
                    (srv.uids(), srv.uids("Work"))
            r = fake_run(t, srv, folders=folder_list(["INBOX", "Work"]),
                         keep=keep)
            ok_run(r, fetched=0)
    return test


tap.test(name="fake: Gmail (X-GM-EXT-1), keep mode: a message in two "
         "labels (one X-GM-MSGID) delivered once")(_gmail_test(True))
tap.test(name="fake: Gmail (X-GM-EXT-1), delete mode: a message in two "
         "labels delivered once, removed from both")(_gmail_test(False))


@tap.test(name="fake: folder-subdirs with a server that nests under "
          "INBOX with \".\" (Courier): INBOX.Sent -> .Sent, "
          "INBOX.Lists.Linux -> .Lists.Linux")
def test_fake_inbox_prefix(t):
    by = {f: [corpus.simple(f"cp/{i}-{k}") for k in range(2)]
          for i, f in enumerate(["INBOX", "INBOX.Sent",
                                 "INBOX.Lists.Linux"])}
    with fake(delimiter=".") as srv:
        for f, ms in by.items():
            if f != "INBOX":
                srv.create(f)
            for x in ms:
                srv.add(x, f)
        r = fake_run(t, srv, folders=folder_list(list(by)),
                     folder_subdirs=True)
        ok_run(r, fetched=6)
        md = t.tmp / "Maildir"
        mt.assert_maildir(md, by["INBOX"])
        mt.assert_maildir(md / ".Sent", by["INBOX.Sent"])
        mt.assert_maildir(md / ".Lists.Linux", by["INBOX.Lists.Linux"])


@tap.test(name="fake: move-to names a folder that is also fetched: refused "
          "by the configuration (78), or each message delivered once over "
          "three runs")
def test_fake_move_to_fetched_folder(t):
    m = [corpus.simple(f"mvf/{i}") for i in range(3)]
    with fake(m) as srv:
        srv.create("Archive")
        for k in range(3):
            r = fake_run(t, srv, keep=False, move_to="Archive",
                         folders=folder_list(["INBOX", "Archive"]))
            if r.rc == mt.EX_CONFIG:
                assert k == 0
                return
            assert r.rc == 0, f"exit {r.rc}"
        mt.assert_maildir(t.tmp / "Maildir", m)


@tap.test(name="fake: tls = starttls and no STARTTLS offered: refused "
          "(77), no login sent")
def test_fake_starttls_not_offered(t):
    for kw in ({"tls": None}, {"implicit_tls": False,
                               "drop_caps": ["STARTTLS"]}):
        with fake([corpus.simple("st/1")], **kw) as srv:
            r = fake_run(t, srv, tls=mt.Raw("starttls"))
            assert r.rc == mt.EX_NOPERM, f"{kw}: exit {r.rc}"
            err = r.account("im")["error"] or ""
            assert "STARTTLS" in err, err
            v = verbs(srv)
            assert not any(x in ("LOGIN", "AUTHENTICATE", "STARTTLS",
                                 "SASL-RESPONSE") for x in v), v
            assert not any(srv.password.encode() in c.line for conn in
                           srv.connections for c in conn.commands)
            assert mt.read_maildir(t.tmp / "Maildir") == []


if __name__ == "__main__":
    tap.main(fixture=functools.partial(dovecot.Lazy, USERS, imap=True,
                                       auth_mechanisms=MECHS))
