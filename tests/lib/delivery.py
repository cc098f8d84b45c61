"""delivery.py: helpers for the tests of deliver = lmtp | mda, on-new-mail
and dedupe (test_lmtp.py, test_mda.py, test_hook.py, test_dedupe.py,
test_crash_lmtp.py).

    delivery.maild_id(data)        # the X-Maild-Id maild put on a message
    delivery.after_id(data)        # the message as maild fetched it: what
                                   # the destination (Dovecot's Return-Path,
                                   # Delivered-To, Received) and maild
                                   # (X-Maild-Id, its trace headers) added
                                   # on top is cut off
    delivery.with_list_id(msgs, lists)   # messages with List-Id headers
    delivery.script(path, text)    # an executable shell script
    delivery.SIEVE_DUPLICATE       # the snippet of maild.conf(5)
"""

import os
import re
from pathlib import Path

import certs
import corpus
import hostile
import maildtest as mt

ID_RE = re.compile(rb"^X-Maild-Id: ([0-9a-f]{32})\n", re.M)

# The Sieve snippet maild.conf(5) ships: a message that comes twice with
# the same X-Maild-Id (maild crashed between the LMTP 250 and its record)
# is dropped the second time.
SIEVE_DUPLICATE = (
    'require ["duplicate"];\n'
    'if duplicate :header "X-Maild-Id" {\n'
    '    discard;\n'
    '    stop;\n'
    '}\n')


def _head(data):
    end = data.find(b"\n\n")
    return data if end == -1 else data[:end + 1]


def maild_ids(data):
    """Every X-Maild-Id in the header of data (list of str)."""
    return [m.group(1).decode() for m in ID_RE.finditer(_head(data))]


def maild_id(data):
    """The one X-Maild-Id in the header of data; fails if there is not
    exactly one."""
    ids = maild_ids(data)
    assert len(ids) == 1, (f"expected one X-Maild-Id header, found "
                           f"{len(ids)}: {data[:300]!r}")
    return ids[0]


def after_id(data):
    """data without what was put on top of the fetched message: the
    lines before X-Maild-Id (the destination's), X-Maild-Id itself and
    the trace headers maild adds (add-headers)."""
    m = ID_RE.search(_head(data))
    assert m is not None, f"no X-Maild-Id header: {data[:300]!r}"
    return mt.strip_trace(data[m.end():])


def assert_delivered(got, expected, what="delivered messages"):
    """got (bytes as the destination stored them) is exactly expected
    (corpus messages), once each and byte-exact below maild's header."""
    mt.assert_messages([after_id(d) for d in got], expected, what,
                       strip=False)


def with_list_id(msgs, lists):
    """Copies of msgs (corpus.Message) where message i gets the header
    "List-Id: <lists[i % len(lists)]>" as its second line (no header if
    that entry is None).  Returns [(message, list or None)]."""
    out = []
    for i, m in enumerate(msgs):
        lst = lists[i % len(lists)]
        data = m.data
        if lst is not None:
            nl = data.find(b"\n") + 1
            data = (data[:nl] + f"List-Id: Test list <{lst}>\n".encode()
                    + data[nl:])
        out.append((corpus.Message(m.id, data, m.kind), lst))
    return out


def script(path, text, mode=0o755):
    """Write an executable script (text after a #!/bin/sh line)."""
    path = Path(path)
    path.write_text("#!/bin/sh\n" + text)
    os.chmod(path, mode)
    return path


def lmtp_account(name, src, dest, state=None, **extra):
    """An account dict (see maildtest.account) for a source server src
    ((host, port, user, password, ca) or a fake server with .port, .user,
    .password) delivering over LMTP to dest ("unix:/path" or
    "host:port")."""
    if isinstance(src, tuple):
        host, port, user, password, ca = src
    else:
        host, port, user, password = "127.0.0.1", src.port, src.user, \
            src.password
        ca = certs.get().ca
    a = {"name": name, "host": host, "port": port, "user": user,
         "password": password, "ca_file": str(ca), "keep": False,
         "deliver": "lmtp", "lmtp": dest}
    a.update(extra)
    return a


class Account(hostile.Account):
    """One account of a fake source server src (fakepop3 / fakeimap)
    delivering elsewhere than a Maildir: deliver = "lmtp" (to dest,
    "unix:/path" or "host:port") or "mda" (dest: the command), or
    "maildir" (dest: the Maildir); config and state in t.tmp (or base).
    once() runs maild --once bounded and checked as hostile.Account
    does (no signal, no exit 70, no sanitizer report, bounded RSS,
    nothing written outside the Maildir and the state directory, but by
    an mda)."""

    def __init__(self, t, src, dest, deliver="lmtp", name="acct",
                 keep=False, base=None, **kw):
        self.dest = dest
        self.deliver = deliver
        super().__init__(t, src, keep=keep, name=name, base=base, **kw)

    def conf(self):
        """The account's dict for maildtest.write_config()."""
        a = {"name": self.name, "host": "127.0.0.1", "port": self.srv.port,
             "user": self.srv.user, "password": self.srv.password,
             "keep": self.keep}
        if self.deliver == "maildir":
            a["maildir"] = str(self.dest)
        else:
            a["deliver"] = self.deliver
            a[self.deliver] = self.dest
        a.update(self.extra)
        return a

    def write(self, **changes):
        self.extra.update(changes)
        g = dict(self.globals_)
        g.setdefault("timeout", self.timeout)
        mt.write_config(self.cfg, [self.conf()], state_dir=self.state, **g)

    def once(self, *flags, check_outside=None, **kw):
        """hostile.Account.once(); an mda may write where it likes."""
        if check_outside is None:
            check_outside = self.deliver != "mda"
        return super().once(*flags, check_outside=check_outside, **kw)

    @property
    def src(self):
        return self.srv

    @src.setter
    def src(self, value):
        self.srv = value


def leftover(marker):
    """PIDs of the processes whose command line holds marker (to see that
    a killed command's children are gone too)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            pass
    return out
