#!/usr/bin/env python3
"""test_fetch.py: maild against a real POP3S server (a private Dovecot).

Three accounts, a few hundred messages with every corpus edge case and one
multi-MB message.  Keep mode: everything delivered exactly once and
byte-exact, the server untouched, a second run fetches nothing, a message
added between runs is fetched by the next run only.  Delete mode: the same,
and the server mailboxes end up empty.  Switching an account from keep to
delete deletes what was fetched before without fetching it again.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                "..", "lib"))

import certs       # noqa: E402
import corpus      # noqa: E402
import dovecot     # noqa: E402
import maildtest as mt  # noqa: E402
import tap         # noqa: E402

SEED = int(os.environ.get("MAILD_TEST_SEED", "1"))
HUGE = int(os.environ.get("MAILD_TEST_HUGE_BYTES", str(6_000_000)))
USERS = {"user1": 110, "user2": 90, "user3": 70}


def corpora():
    out = {}
    for i, (u, n) in enumerate(USERS.items()):
        out[u] = corpus.generate(seed=SEED, count=n, prefix=u,
                                 huge_bytes=HUGE if i == 0 else 0)
    return out


class Fixture:
    def __init__(self, srv):
        self.srv = srv
        self.msgs = corpora()
        self.extra = 0


def fixture():
    import contextlib

    @contextlib.contextmanager
    def cm():
        mt.require_maild()
        c = certs.get()
        with dovecot.Dovecot(c) as srv:
            for u in USERS:
                srv.add_user(u)
            yield Fixture(srv)
    return cm()


def reset(fx):
    for u, msgs in fx.msgs.items():
        fx.srv.set_mailbox(u, msgs)


def config(t, fx, keep, accounts=None):
    srv = fx.srv
    accts = []
    for i, u in enumerate(accounts or USERS):
        accts.append(mt.account(f"acct{i + 1}", "127.0.0.1", srv.pop3s_port,
                                u, srv.password, t.tmp / f"Maildir-{u}",
                                keep=keep, ca_file=srv.ca))
    return mt.write_config(t.tmp / "maild.conf", accts,
                           state_dir=t.tmp / "state", timeout=30)


def once(t, cfg, label="maild"):
    return mt.run_maild(["--once", "-f", cfg], timeout=120, label=label)


def name_of(user):
    return f"acct{list(USERS).index(user) + 1}"


def check_run(r, fx, fetched, deleted):
    """rc 0 and per-account counts; fetched/deleted: user -> expected."""
    assert r.rc == 0, f"exit {r.rc}"
    for u in USERS:
        s = r.account(name_of(u))
        assert s["error"] is None, s["line"]
        assert s["fetched"] == fetched[u], \
            f"{u}: fetched={s['fetched']}, expected {fetched[u]}"
        assert s["deleted"] == deleted[u], \
            f"{u}: deleted={s['deleted']}, expected {deleted[u]}"


def check_maildirs(t, expected):
    for u, msgs in expected.items():
        md = t.tmp / f"Maildir-{u}"
        mt.assert_maildir(md, msgs, f"Maildir of {u}")
        assert not os.listdir(md / "cur"), f"{u}: files in cur/"


def new_message(fx, u):
    fx.extra += 1
    return corpus.simple(f"{u}/extra-{fx.extra}",
                         body="added between two runs\n.\n..\n")


@tap.test(timeout=300)
def test_keep_mode(t):
    fx = t.fx
    reset(fx)
    cfg = config(t, fx, keep=True)
    r = once(t, cfg, "first run")
    zero = {u: 0 for u in USERS}
    check_run(r, fx, {u: len(m) for u, m in fx.msgs.items()}, zero)
    check_maildirs(t, fx.msgs)
    for u, msgs in fx.msgs.items():
        # bytes= counts what was written, trace headers included
        s = r.account(name_of(u))
        size = mt.maildir_bytes(t.tmp / f"Maildir-{u}")
        assert s["bytes"] == size, \
            f"{u}: bytes={s['bytes']}, but the files have {size} bytes"
    for u, msgs in fx.msgs.items():
        mt.assert_messages(fx.srv.mailbox(u), msgs, f"server mailbox {u}")

    t.note("second run: nothing new")
    r = once(t, cfg, "second run")
    check_run(r, fx, zero, zero)
    check_maildirs(t, fx.msgs)

    t.note("third run: one new message for user2")
    m = new_message(fx, "user2")
    fx.srv.add_messages("user2", [m])
    r = once(t, cfg, "third run")
    check_run(r, fx, dict(zero, user2=1), zero)
    exp = dict(fx.msgs, user2=fx.msgs["user2"] + [m])
    check_maildirs(t, exp)
    for u, msgs in exp.items():
        mt.assert_messages(fx.srv.mailbox(u), msgs, f"server mailbox {u}")


@tap.test(timeout=300)
def test_delete_mode(t):
    fx = t.fx
    reset(fx)
    cfg = config(t, fx, keep=False)
    r = once(t, cfg, "first run")
    counts = {u: len(m) for u, m in fx.msgs.items()}
    zero = {u: 0 for u in USERS}
    check_run(r, fx, counts, counts)
    check_maildirs(t, fx.msgs)
    for u in USERS:
        left = fx.srv.mailbox(u)
        assert not left, f"{u}: {len(left)} messages left on the server"
        assert fx.srv.uidls(u) == [], f"{u}: server still lists messages"

    t.note("second run: nothing new")
    r = once(t, cfg, "second run")
    check_run(r, fx, zero, zero)
    check_maildirs(t, fx.msgs)

    t.note("third run: a new message for user1 and user3")
    m1, m3 = new_message(fx, "user1"), new_message(fx, "user3")
    fx.srv.add_messages("user1", [m1])
    fx.srv.add_messages("user3", [m3])
    r = once(t, cfg, "third run")
    one = dict(zero, user1=1, user3=1)
    check_run(r, fx, one, one)
    check_maildirs(t, dict(fx.msgs, user1=fx.msgs["user1"] + [m1],
                           user3=fx.msgs["user3"] + [m3]))
    for u in USERS:
        assert not fx.srv.mailbox(u), f"{u}: messages left on the server"


@tap.test(timeout=300)
def test_keep_then_delete(t):
    """Turning keep off deletes the messages fetched before, without
    fetching them again."""
    fx = t.fx
    reset(fx)
    cfg = config(t, fx, keep=True)
    r = once(t, cfg, "keep run")
    counts = {u: len(m) for u, m in fx.msgs.items()}
    zero = {u: 0 for u in USERS}
    check_run(r, fx, counts, zero)
    cfg = config(t, fx, keep=False)
    r = once(t, cfg, "delete run")
    check_run(r, fx, zero, counts)
    check_maildirs(t, fx.msgs)
    for u in USERS:
        assert not fx.srv.mailbox(u), f"{u}: messages left on the server"


@tap.test(timeout=300)
def test_state_files(t):
    """One versioned state file per account, listing every UIDL; the lock
    file sits next to it."""
    fx = t.fx
    reset(fx)
    cfg = config(t, fx, keep=True)
    r = once(t, cfg)
    assert r.rc == 0, f"exit {r.rc}"
    for u in USERS:
        name = name_of(u)
        p = mt.state_path(t.tmp / "state", name)
        assert p.exists(), f"no {p}"
        assert "maild-state 2" in p.read_text(), "no version line"
        recs = mt.state_records(t.tmp / "state", name)
        assert all(k == "D" for k, _, _ in recs), "pending records left"
        uidls = {x.encode() for _, x in fx.srv.uidls(u)}
        assert {x for _, x, _ in recs} == uidls, \
            f"{u}: state UIDLs differ from the server's"
        assert (t.tmp / "state" / f"{name}.lock").exists(), "no lock file"


if __name__ == "__main__":
    tap.main(fixture=fixture)
