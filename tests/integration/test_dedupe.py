#!/usr/bin/env python3
"""test_dedupe.py: dedupe = message-id, one message delivered once to a
destination whatever number of accounts bring it.

Two (three) accounts of fake POP3 servers delivering into one Maildir
(and into one LMTP recipient): the same message (same Message-ID, same
size) is delivered once, whether the accounts poll one after the other
or in the same run, and across a restart; the second server deletes its
copy (delete mode), or it is recorded and not fetched again (keep
mode); the log says why.  Never suppressed: messages without a
Message-ID (or with a folded one), the same Message-ID with another
size, a Message-ID delivered longer than dedupe-days ago (a planted
index record), accounts with dedupe = no.  No on-new-mail run when
everything was suppressed.
"""

import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import delivery    # noqa: E402
import fakelmtp    # noqa: E402
import fakepop3    # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

DAY = 86400


def pop3(messages=(), **kw):
    return fakepop3.FakePOP3(messages, tls=certs.get().server, **kw)


def msg(mid, body="Hello.\n", message_id=True, extra=()):
    """A message with X-Test-Id mid#0; Message-ID <mid@...> unless
    message_id is False (none) or a string (that one)."""
    mid += "#0"
    h = [f"From: a@example.org", f"Subject: {mid}"]
    if message_id is True:
        h.append(f"Message-ID: <{mid.split('#')[0]}@dedupe.example>")
    elif message_id:
        h.append(message_id)
    h += [f"X-Test-Id: {mid}"] + list(extra)
    return corpus.Message(mid, ("\n".join(h) + "\n\n" + body).encode())


def same(m, k):
    """Copy k (1-9) of m: the same bytes but for X-Test-Id (mid#k, so that
    the test can tell the copies apart): same Message-ID, same size."""
    copy_id = m.id[:-1] + str(k)
    data = m.data.replace(f"X-Test-Id: {m.id}".encode(),
                          f"X-Test-Id: {copy_id}".encode())
    assert len(data) == len(m.data)
    return corpus.Message(copy_id, data)


class Setup:
    """Accounts a0, a1... (one fake server each) delivering to one
    Maildir (or deliver = lmtp to one fake LMTP recipient)."""

    def __init__(self, t, servers, lmtp=None, keep=False, **extra):
        self.t = t
        self.servers = servers
        self.lmtp = lmtp
        self.keep = keep
        self.extra = extra
        self.maildir = t.tmp / "Maildir"
        self.state = t.tmp / "state"

    def accounts(self, which=None, **more):
        out = []
        for i, s in enumerate(self.servers):
            if which is not None and i not in which:
                continue
            a = {"name": f"a{i}", "host": "127.0.0.1", "port": s.port,
                 "user": s.user, "password": s.password,
                 "ca_file": str(certs.get().ca), "keep": self.keep,
                 "dedupe": "message-id"}
            if self.lmtp is not None:
                a.update(deliver="lmtp", lmtp=f"127.0.0.1:{self.lmtp.port}",
                         lmtp_recipient="rcpt")
            else:
                a["maildir"] = str(self.maildir)
            a.update(self.extra)
            a.update(more.get(f"a{i}", {}))
            out.append(a)
        return out

    def run(self, which=None, rc=0, **more):
        cfg = mt.write_config(self.t.tmp / "maild.conf",
                              self.accounts(which, **more),
                              state_dir=self.state, timeout=10)
        r = mt.run_maild(["--once", "-v", "-f", cfg], timeout=60)
        assert r.rc == rc, f"exit {r.rc}, want {rc}: {mt.tail(r.stderr)}"
        return r

    def delivered(self):
        if self.lmtp is not None:
            return [delivery.after_id(d) for d in self.lmtp.delivered]
        return mt.read_maildir(self.maildir)

    def assert_delivered(self, expected):
        mt.assert_messages(self.delivered(), expected)


def suppressed(r):
    return re.findall(r"account=(\S+) message (\S+) was delivered before "
                      r"\(dedupe = message-id\)", r.stderr)


@tap.test(name="one after the other: the second account's copy is not "
          "delivered, and is deleted from its server; across a restart "
          "a third account's too")
def sequential(t):
    x = msg("seq/x")
    m0 = [msg("seq/a0-1"), x, msg("seq/a0-2")]
    m1 = [msg("seq/a1-1"), same(x, 1)]
    m2 = [same(x, 2), msg("seq/a2-1")]
    with pop3(m0) as s0, pop3(m1) as s1, pop3(m2) as s2:
        st = Setup(t, [s0, s1, s2])
        st.run({0})
        r = st.run({1})
        assert suppressed(r) == [("a1", "<seq/x@dedupe.example>")], \
            suppressed(r)
        assert r.account("a1")["fetched"] == 1, r.account("a1")["line"]
        assert r.account("a1")["deleted"] == 2
        assert s1.mailbox == [], "the suppressed copy is still on a1's server"
        # another maild process: the index was on disk
        r = st.run({0, 1, 2})
        assert suppressed(r) == [("a2", "<seq/x@dedupe.example>")]
        st.assert_delivered(m0 + m1[:1] + m2[1:])
        assert s2.mailbox == []
        mt.assert_tmp_empty(st.maildir)


@tap.test(name="keep mode: the suppressed copy is recorded, not fetched "
          "again")
def keep_mode(t):
    x = msg("keep/x")
    with pop3([x]) as s0, pop3([same(x, 1)]) as s1:
        st = Setup(t, [s0, s1], keep=True)
        uidl = s1.mailbox[0].uidl
        st.run({0})
        r = st.run({1})
        assert len(suppressed(r)) == 1
        assert r.account("a1")["deleted"] == 0, r.account("a1")["line"]
        assert len(s1.mailbox) == 1, \
            "keep = yes, yet the suppressed copy was deleted from the server"
        r = st.run({0, 1})
        assert r.account("a1")["fetched"] == 0
        assert "was delivered before" not in r.stderr
        assert [k for _, k, _ in mt.state_records(st.state, "a1")] == [uidl]
        st.assert_delivered([x])


@tap.test(name="two accounts in the same run, the same message: delivered "
          "once")
def concurrent(t):
    for rnd in range(3):
        sub = t.tmp / f"r{rnd}"
        sub.mkdir()
        xs = [msg(f"conc{rnd}/x{i}") for i in range(20)]
        m0 = xs + [msg(f"conc{rnd}/only0")]
        m1 = [same(x, 1) for x in xs] + [msg(f"conc{rnd}/only1")]
        with pop3(m0) as s0, pop3(m1) as s1:
            st = Setup(t, [s0, s1])
            st.maildir, st.state = sub / "Maildir", sub / "state"
            st.run()
            got = [corpus.test_id(d).split("#")[0]
                   for d in st.delivered()]
            twice = sorted({i for i in got if got.count(i) > 1})
            assert not twice, (f"round {rnd}: {len(twice)} messages "
                               f"delivered twice: {twice[:5]}")
            assert sorted(set(got)) == sorted(
                [x.id.split("#")[0] for x in xs] + [f"conc{rnd}/only0",
                                                    f"conc{rnd}/only1"])


@tap.test(name="never suppressed: no Message-ID, a folded one, another "
          "size, dedupe = no")
def never_suppressed(t):
    noid = msg("never/noid", message_id=False)
    folded = msg("never/folded", message_id="Message-ID:\n <folded@x.example>")
    sized = msg("never/sized")
    longer = corpus.Message("never/sized#1", same(sized, 1).data + b"more\n")
    plain = msg("never/plain")
    m0 = [noid, folded, sized, plain]
    m1 = [same(noid, 1), same(folded, 1),
          longer]
    m2 = [same(plain, 2)]
    with pop3(m0) as s0, pop3(m1) as s1, pop3(m2) as s2:
        st = Setup(t, [s0, s1, s2])
        st.run({0})
        r = st.run({1, 2}, a2={"dedupe": "no"})
        assert not suppressed(r), suppressed(r)
        st.assert_delivered(m0 + m1 + m2)


def dedupe_index(state):
    names = [n for n in os.listdir(state) if n.startswith("dedupe-") and
             n.endswith(".state")]
    assert len(names) == 1, names
    return names[0][:-len(".state")]


@tap.test(name="dedupe-days: a record older than that does not count (a "
          "planted one, 40 days old: 30 days no, 60 days yes)")
def dedupe_days(t):
    old = msg("days/old")
    ref = msg("days/ref")
    with pop3([ref]) as s0, pop3([same(old, 1)]) as s1, \
            pop3([same(old, 2)]) as s2:
        st = Setup(t, [s0, s1, s2])
        st.run({0})              # makes the index
        name = dedupe_index(st.state)
        size = len(old.data)
        key = "<days/old@dedupe.example>%00" + str(size)
        now = int(__import__("time").time())
        mt.append_state_block(st.state, name,
                              [f"D {now - 40 * DAY} 1 {size} 0 0 {key}"])
        r = st.run({1})          # dedupe-days 30 by default
        assert not suppressed(r), suppressed(r)
        # a fresh index: the same old record, dedupe-days 60
        mt.remove_state(st.state, name)
        st.run({0}, a0={"dedupe_days": 60})
        name = dedupe_index(st.state)
        mt.append_state_block(st.state, name,
                              [f"D {now - 40 * DAY} 1 {size} 0 0 {key}"])
        r = st.run({2}, a2={"dedupe_days": 60})
        assert suppressed(r) == [("a2", "<days/old@dedupe.example>")], \
            suppressed(r)
        st.assert_delivered([ref, same(old, 1)])


@tap.test(name="the old records go: at the next start the index holds only "
          "those younger than dedupe-days")
def index_pruned(t):
    with pop3([msg("prune/a")]) as s0, pop3([msg("prune/b")]) as s1:
        st = Setup(t, [s0, s1])
        st.run({0})
        name = dedupe_index(st.state)
        now = int(__import__("time").time())
        mt.append_state_block(st.state, name, [
            f"D {now - 31 * DAY} 1 10 0 0 <gone@x>%0010",
            f"D {now - 29 * DAY} 1 10 0 0 <stays@x>%0010"])
        st.run({1})
        keys = [k for _, k, _ in mt.state_records(st.state, name)]
        assert b"<gone@x>\x0010" not in keys, keys
        assert b"<stays@x>\x0010" in keys, keys
        assert len(keys) == 3, keys


@tap.test(name="deliver = lmtp: the accounts delivering to one recipient "
          "share the index")
def lmtp_shared(t):
    x = msg("lmtp/x")
    with pop3([x, msg("lmtp/a")]) as s0, \
            pop3([same(x, 1), msg("lmtp/b")]) as s1, \
            fakelmtp.FakeLMTP() as lm:
        st = Setup(t, [s0, s1], lmtp=lm)
        st.run({0})
        r = st.run({1})
        assert len(suppressed(r)) == 1, suppressed(r)
        st.assert_delivered([x, msg("lmtp/a"), msg("lmtp/b")])
        assert s1.mailbox == []


@tap.test(name="IMAP: the suppressed copy is removed from the server in "
          "delete mode, kept (and not fetched again) in keep mode")
def imap_source(t):
    import fakeimap
    x = msg("imap/x")
    for keep in (False, True):
        sub = t.tmp / f"keep{keep}"
        sub.mkdir()
        with pop3([x]) as s0, \
                fakeimap.FakeIMAP(tls=certs.get().server) as s1:
            s1.add(same(x, 1).data)
            s1.add(msg("imap/y").data)
            st = Setup(t, [s0, s1], keep=keep)
            st.maildir, st.state = sub / "Maildir", sub / "state"
            st.run({0})
            r = st.run({1}, a1={"protocol": "imap"})
            assert len(suppressed(r)) == 1, suppressed(r)
            left = s1.uids("INBOX")
            assert len(left) == (2 if keep else 0), (keep, left)
            r = st.run({1}, a1={"protocol": "imap"})
            assert r.account("a1")["fetched"] == 0
            st.assert_delivered([x, msg("imap/y")])


@tap.test(name="a poll whose every message was suppressed runs no "
          "on-new-mail")
def no_hook(t):
    x = msg("hook/x")
    log = t.tmp / "hook.log"
    hook = delivery.script(t.tmp / "hook.sh", f'echo "$MAILD_ACCOUNT '
                           f'$MAILD_COUNT" >> {log}\n')
    with pop3([x]) as s0, pop3([same(x, 1)]) as s1:
        st = Setup(t, [s0, s1], on_new_mail=str(hook))
        st.run({0})
        r = st.run({1})
        assert len(suppressed(r)) == 1
        assert log.read_text() == "a0 1\n", log.read_text()


if __name__ == "__main__":
    tap.main()
