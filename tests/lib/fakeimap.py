"""fakeimap.py: a scriptable, fault-injecting IMAP4rev1 server for the tests.

Like fakepop3 it runs an asyncio loop in a background thread of the test
process and listens on 127.0.0.1 (or ::1), port 0 (srv.port tells which):

    with fakeimap.FakeIMAP(tls=certs.get().server) as srv:   # implicit TLS
        srv.add(corpus.simple("a"))                  # into INBOX, uid 1
        srv.create("Archive")
        ... run maild against srv.host, srv.port, srv.user, srv.password
        srv.uids("INBOX")                 # what is left
        srv.verbs()                       # ["CAPABILITY", "LOGIN", ...]
        srv.events_of("UID EXPUNGE")      # what clients removed

By default it is a correct server (the RFC 3501 / RFC 9051 subset a
fetching client uses) over a store that lives as long as the server and
is shared by all connections: folders (INBOX and any others, names in
modified UTF-7 on the wire unless UTF8=ACCEPT is enabled), each with its
UIDVALIDITY, UIDNEXT and messages (uid, bytes, flags, internal date,
X-GM-MSGID).  Commands: CAPABILITY, STARTTLS, LOGIN (atoms, quoted
strings, literals: synchronizing {n} with a "+" continuation, and {n+}
when LITERAL+ is offered), AUTHENTICATE PLAIN / XOAUTH2 / OAUTHBEARER
(initial response with SASL-IR, or "+" continuations; "*" cancels; a
refused OAuth token gets "+ base64(JSON)" first, as Gmail does), LOGOUT,
NOOP, CHECK, SELECT / EXAMINE, CREATE, DELETE, SUBSCRIBE, LIST / LSUB,
STATUS, NAMESPACE, ID, ENABLE, APPEND, (UID) SEARCH, (UID) FETCH, (UID)
STORE, EXPUNGE, UID EXPUNGE (UIDPLUS), (UID) COPY (COPYUID with UIDPLUS),
(UID) MOVE (MOVE), IDLE / DONE, CLOSE, UNSELECT.  FETCH knows UID, FLAGS,
RFC822.SIZE, INTERNALDATE, X-GM-MSGID / X-GM-THRID (with X-GM-EXT-1),
RFC822, RFC822.HEADER, RFC822.TEXT, BODY[...] and BODY.PEEK[...] with the
sections "", HEADER, TEXT, HEADER.FIELDS (...), HEADER.FIELDS.NOT (...)
and partial <o.n>, and the macros FAST, ALL, FULL (without ENVELOPE).
Sequence sets are as RFC 9051 says: "n:*" includes the highest UID even
when n is larger.  A command that depends on a capability (IDLE, MOVE,
UID EXPUNGE, UNSELECT, {n+}, SASL-IR, X-GM-*) works only while that
capability is advertised.

Each session has its own view of the selected folder: changes made by
other sessions or by the test (srv.add, srv.delete, srv.set_flags) are
reported as EXISTS, EXPUNGE and FETCH (FLAGS) before the next tagged
completion (no EXPUNGE during FETCH, STORE or SEARCH), and at once (after
push_delay seconds; Dovecot waits about 0.5 s) to a client in IDLE.
srv.renumber() (a UIDVALIDITY change) ends the sessions that have the
folder selected with "* BYE".

Options (all keyword arguments):
  user, password, tokens=[...]   the account; tokens: the OAuth2 access
                             tokens accepted (default: the password)
  tls=(cert, key) or SSLContext, implicit_tls, starttls (offer and allow
                             STARTTLS on a plain connection; default: when
                             tls is given and not implicit)
  login_requires_tls=True    advertise LOGINDISABLED and refuse LOGIN and
                             AUTHENTICATE before TLS ([PRIVACYREQUIRED])
  sasl=["PLAIN", ...]        the AUTH= mechanisms (PLAIN, XOAUTH2,
                             OAUTHBEARER; default PLAIN)
  capabilities=[...]         the exact list advertised before login
  capabilities_auth=[...]    the exact list advertised after login
  extra_caps, drop_caps      add to / remove from the default lists (e.g.
                             drop_caps=["UIDPLUS"], extra_caps=
                             ["X-GM-EXT-1"]; "STARTTLS" in drop_caps only
                             hides it: STARTTLS still works)
  greeting=bytes / None / actions   the raw greeting (None: say nothing);
                             b"* PREAUTH ..." logs the session in,
                             b"* BYE ..." closes it after sending
  greeting_caps, login_caps  put [CAPABILITY ...] into the greeting / the
                             login's OK (both False by default)
  login_reply="NO [UNAVAILABLE] ..."  the answer (after the tag) to every
                             login attempt once its credentials are read,
                             or fn(conn, auth) -> text or None (default);
                             alert="text" sends "* OK [ALERT] text" first
  handlers={"UID FETCH": fn} fn(conn, cmd) -> None (the default) or what
                             to send; keys are verbs ("UID FETCH", "FETCH",
                             "LOGIN", "IDLE", "DONE", "SASL-RESPONSE") or
                             "*" for every command
  on_command=fn              fn(conn, cmd), called in the server thread
                             when each command (also DONE and SASL
                             responses) has arrived, before it is
                             answered: e.g. look at the Maildir when a
                             UID STORE arrives.  An exception it raises
                             goes to srv.errors, the client sees nothing.
  push_delay=0               seconds before a change reaches an IDLE client
  push_when="idle"           "selected": also push EXISTS to selected
                             clients between commands; "never"
  idle_keepalive=None        seconds between "* OK Still here" in IDLE
  autologout=None            close a session silent for that long, with
                             "* BYE Disconnected for inactivity."
  literal_continuation=b"+ OK\\r\\n"   what answers a {n}; None: nothing
  delimiter="/"              the hierarchy delimiter
  drip=0.01                  send everything one byte at a time
  expunge_order="ascending"  or "descending": order of EXPUNGE responses
  max_literal                the largest literal accepted (64 MiB)

What a handler (or greeting) returns: bytes (sent as is), None (default
response), or a list / generator of actions (fakeserver: Sleep, Drip,
Call, DROP, ABORT, HANG).  conn.default(cmd) is the default response's
bytes (with its side effects); conn.default_parts(cmd) the same as a
list: one item per untagged response, the tagged completion last, so
handlers can cut, reorder or corrupt it.  Ready-made handlers: reply,
refuse, raw, parts, literal_lie, drop_in_literal, bye_in_fetch, inject,
reorder, without_uid, map_uid, after_literal, endless, idle_silent,
idle_no_done, and from fakepop3 drop_after, hang_after, drip_response.
conn.fetch_line(uid, items) builds a FETCH response for any message
(unsolicited ones, UIDs not asked for); srv.push(data) writes raw bytes
to the open connections at once.  A message can lie by itself:
srv.add(data, size=n) (its RFC822.SIZE), body=b"..." (other bytes for
BODY[]), announce=n (the {n} of BODY[] whatever follows), wire=b"..."
(the exact literal instead of data with CRLF line ends).

Every connection is recorded in srv.connections (a Conn): the commands
received (cmd.line: the raw bytes with any literals, without the final
CRLF; cmd.tag, cmd.verb, cmd.args parsed, cmd.literals, cmd.tls, cmd.t
arrival time; what came in the clear after STARTTLS is dropped and
recorded with verb "PLAINTEXT-AFTER-STARTTLS"), whether TLS came up,
conn.auths (each LOGIN / AUTHENTICATE attempt), conn.pipelined().
conn.uids_of(cmd) says which UIDs a command addresses (in that session's
view, at the time it is called).  srv.events
records what clients changed: STORE, EXPUNGE (the bare one, which removes
every \\Deleted message, also those another client marked: a fetcher must
not use it), UID EXPUNGE, CLOSE (expunges too), COPY, MOVE, APPEND.
"""

import asyncio
import base64
import calendar
import collections
import itertools
import re
import time

from fakepop3 import (drip_response, drop_after, endless_listing,
                      hang_after, raw)
from fakeserver import (ABORT, DROP, HANG, LOOPBACK, Auth,
                        BaseConn, Call, Drip, Sleep, ThreadedServer, b64,
                        oauth_error, sasl_credentials, server_context, unb64)

__all__ = ["FakeIMAP", "Msg", "Folder", "Cmd", "Conn", "Event", "Atom",
           "Auth", "Sleep", "Drip", "Call", "DROP", "ABORT", "HANG",
           "LOOPBACK", "server_context", "b64", "unb64", "raw", "reply",
           "refuse", "parts", "literal_lie", "drop_in_literal",
           "bye_in_fetch", "inject", "reorder", "without_uid", "map_uid",
           "after_literal", "endless", "idle_silent", "idle_no_done",
           "drop_after",
           "hang_after", "drip_response", "mutf7_encode", "mutf7_decode",
           "quote", "seq_set", "compress_set", "imap_date", "to_wire",
           "UID_MAX"]

UID_MAX = 2 ** 32 - 1
MAX_LITERAL = 64 * 1024 * 1024
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_FLAG_CASE = {f.lower(): f for f in SYSTEM_FLAGS + ("\\Recent",)}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep",
           "Oct", "Nov", "Dec")
_LITERAL_RE = re.compile(rb"\{(\d{1,20})(\+?)\}\r?\n\Z")
_FETCH_RE = re.compile(rb"\* \d+ FETCH ")
_LITERAL_ARG_RE = re.compile(rb"\{(\d{1,20})\+?\}\r\n")
SASL_MECHS = ("PLAIN", "XOAUTH2", "OAUTHBEARER")


# ---------------------------------------------------------------------------
# wire formats

def mutf7_encode(name):
    """A mailbox name (str) in modified UTF-7 (RFC 3501 5.1.3)."""
    out, buf = [], []

    def flush():
        if buf:
            b = base64.b64encode("".join(buf).encode("utf-16-be"))
            out.append("&" + b.decode().rstrip("=").replace("/", ",") + "-")
            buf.clear()
    for ch in name:
        if 0x20 <= ord(ch) <= 0x7e:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            buf.append(ch)
    flush()
    return "".join(out)


def mutf7_decode(text):
    """Modified UTF-7 to str; text as is where it is not valid."""
    def one(m):
        if not m.group(1):
            return "&"
        b = m.group(1).replace(",", "/")
        try:
            return base64.b64decode(b + "=" * (-len(b) % 4)).decode(
                "utf-16-be")
        except (ValueError, UnicodeDecodeError):
            return m.group(0)
    return re.sub(r"&([A-Za-z0-9+,]*)-", one, text)


_ATOM_BAD = set(b'(){ %*"\\]') | set(range(0x20)) | {0x7f}


def quote(data):
    """bytes as an IMAP astring: an atom where it may be one, a quoted
    string where that works, else a literal."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    if data and not any(c in _ATOM_BAD or c > 0x7e for c in data):
        return data
    if not any(c in b"\r\n\0" or c > 0x7f for c in data):
        return _quoted(data)
    return b"{%d}\r\n" % len(data) + data


def _quoted(data):
    return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def imap_date(t):
    """An INTERNALDATE (epoch seconds) as "17-Jul-1996 02:44:25 +0000"."""
    tm = time.gmtime(t)
    return (f"{tm.tm_mday:02d}-{_MONTHS[tm.tm_mon - 1]}-{tm.tm_year} "
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} +0000")


def _parse_date(text):
    """A SEARCH date ("1-Feb-1994") as the epoch seconds of its start."""
    m = re.fullmatch(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})", text)
    mon = [x.lower() for x in _MONTHS]
    if not m or m.group(2).lower() not in mon:
        raise ValueError(f"bad date {text!r}")
    return calendar.timegm((int(m.group(3)), mon.index(m.group(2).lower())
                            + 1, int(m.group(1)), 0, 0, 0))


def seq_set(text, largest):
    """The numbers of an IMAP sequence set (str) as a predicate-friendly
    list of (lo, hi) ranges; "*" is largest (0 when there is nothing).
    "n:*" covers largest even when n > largest.  ValueError if it is not a
    sequence set."""
    out = []
    if not text:
        raise ValueError("empty sequence set")
    for item in text.split(","):
        ends = item.split(":")
        if len(ends) > 2:
            raise ValueError(f"bad range {item!r}")
        nums = []
        for e in ends:
            if e == "*":
                nums.append(largest)
            elif e.isdigit() and not e.startswith("0"):
                n = int(e)
                if n > UID_MAX:
                    raise ValueError(f"number out of range: {e}")
                nums.append(n)
            else:
                raise ValueError(f"bad number {e!r}")
        out.append((min(nums), max(nums)))
    return out


def in_set(n, ranges):
    return any(lo <= n <= hi for lo, hi in ranges)


def compress_set(nums):
    """[1, 2, 3, 5] -> "1:3,5"."""
    nums = sorted(set(nums))
    out = []
    for n in nums:
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ",".join(f"{a}" if a == b else f"{a}:{b}" for a, b in out)


def to_wire(data):
    """Message bytes with CRLF line ends (bare LFs become CRLF)."""
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def _flag(f):
    return _FLAG_CASE.get(f.lower(), f)


def _flags_bytes(flags):
    return b"(" + " ".join(sorted(flags)).encode() + b")"


# ---------------------------------------------------------------------------
# the store

class Msg:
    """A message in a folder.  data: bytes (LF or CRLF line ends), what a
    correct client delivers; on the wire it has CRLF line ends (wire=
    gives the exact literal bytes instead).  Lies for the tests: size=
    (what RFC822.SIZE says), body= (other bytes sent for BODY[] /
    RFC822), announce= (the number in the {n} of BODY[], whatever is
    sent)."""

    _gm = itertools.count(1)

    def __init__(self, data, flags=(), internaldate=None, gm_msgid=None,
                 wire=None, size=None, body=None, announce=None):
        if hasattr(data, "data"):       # a corpus.Message
            data = data.data
        self.data = bytes(data)
        self.wire = bytes(wire) if wire is not None else to_wire(self.data)
        self.uid = None                 # set by the folder
        self.flags = {_flag(f) for f in flags}
        self.internaldate = time.time() if internaldate is None \
            else internaldate
        self.gm_msgid = gm_msgid if gm_msgid is not None else \
            1600000000000000000 + next(Msg._gm)
        self.size = size
        self.body = body
        self.announce = announce
        self.recent = True

    @property
    def rfc822_size(self):
        return self.size if self.size is not None else len(self.wire)

    def header(self):
        end = self.wire.find(b"\r\n\r\n")
        return self.wire if end < 0 else self.wire[:end + 4]

    def text(self):
        end = self.wire.find(b"\r\n\r\n")
        return b"" if end < 0 else self.wire[end + 4:]

    def header_fields(self, names, negate=False):
        """The header fields named (or, negate, all others) and CRLF."""
        want = {n.lower() for n in names}
        out = []
        keep = False
        for line in self.header().split(b"\r\n"):
            if line[:1] in (b" ", b"\t"):
                if keep:
                    out.append(line)
                continue
            name = line.split(b":", 1)[0].strip().decode("latin-1").lower()
            keep = bool(line) and ((name in want) != negate)
            if keep:
                out.append(line)
        return b"".join(x + b"\r\n" for x in out) + b"\r\n"

    def copy(self):
        m = Msg(self.data, self.flags, self.internaldate, self.gm_msgid,
                wire=self.wire, size=self.size, body=self.body,
                announce=self.announce)
        return m

    def __repr__(self):
        return (f"<Msg uid={self.uid} {len(self.wire)} bytes "
                f"{sorted(self.flags)}>")


class Folder:
    def __init__(self, name, uidvalidity, special_use=None, attrs=()):
        self.name = name
        self.uidvalidity = uidvalidity
        self.uidnext = 1
        self.messages = []              # [Msg], ascending uid
        self.subscribed = True
        self.special_use = special_use  # e.g. "\\Archive"
        self.attrs = list(attrs)        # more LIST attributes
        self.generation = 0             # bumped by renumber()

    def by_uid(self, uid):
        for m in self.messages:
            if m.uid == uid:
                return m
        return None

    def uids(self):
        return [m.uid for m in self.messages]

    def append(self, m, uid=None):
        if uid is None:
            uid = self.uidnext
        if uid < self.uidnext or uid > UID_MAX:
            raise ValueError(f"uid {uid} not above {self.uidnext - 1}")
        m.uid = uid
        self.uidnext = uid + 1
        self.messages.append(m)
        return m

    def __repr__(self):
        return (f"<Folder {self.name!r} uidvalidity={self.uidvalidity} "
                f"uidnext={self.uidnext} {len(self.messages)} messages>")


class Event:
    """A change a client made: kind ("STORE", "EXPUNGE", "UID EXPUNGE",
    "CLOSE", "COPY", "MOVE", "APPEND"), the connection id, the folder
    name, the UIDs concerned and what else there is to say (the flags
    and mode of a STORE, the destination and its new UIDs of a COPY /
    MOVE)."""

    def __init__(self, kind, conn, folder, uids, **info):
        self.kind = kind
        self.conn = conn.id if conn is not None else None
        self.folder = folder
        self.uids = list(uids)
        self.info = info
        self.t = time.monotonic()

    def __repr__(self):
        return (f"<Event {self.kind} conn={self.conn} {self.folder!r} "
                f"{compress_set(self.uids)} {self.info}>")


# ---------------------------------------------------------------------------
# commands

class Atom(str):
    """An atom of a command (a str); strings (quoted or literal) are
    bytes, parenthesised lists are lists."""


class ParseError(ValueError):
    pass


def parse_args(data):
    """The arguments of a command (bytes, literals inline)."""
    top = []
    stack = [top]
    i, n = 0, len(data)
    while i < n:
        c = data[i]
        if c == 0x20:
            i += 1
        elif c == 0x28:                         # (
            new = []
            stack[-1].append(new)
            stack.append(new)
            i += 1
        elif c == 0x29:                         # )
            if len(stack) == 1:
                raise ParseError("unexpected )")
            stack.pop()
            i += 1
        elif c == 0x22:                         # "
            out = bytearray()
            i += 1
            while True:
                if i >= n or data[i] in (0x0d, 0x0a):
                    raise ParseError("unterminated quoted string")
                if data[i] == 0x5c:
                    if i + 1 >= n or data[i + 1] not in (0x5c, 0x22):
                        raise ParseError("bad escape in quoted string")
                    out.append(data[i + 1])
                    i += 2
                elif data[i] == 0x22:
                    i += 1
                    break
                else:
                    out.append(data[i])
                    i += 1
            stack[-1].append(bytes(out))
        elif c == 0x7b:                         # {
            m = _LITERAL_ARG_RE.match(data, i)
            if not m:
                raise ParseError("bad literal")
            size = int(m.group(1))
            start = m.end()
            if start + size > n:
                raise ParseError("literal cut short")
            stack[-1].append(data[start:start + size])
            i = start + size
        else:
            start = i
            depth = 0
            while i < n:
                ch = data[i]
                if ch == 0x5b:
                    depth += 1
                elif ch == 0x5d and depth:
                    depth -= 1
                elif depth == 0 and ch in (0x20, 0x28, 0x29):
                    break
                elif ch in (0x0d, 0x0a, 0x22, 0x7b) and depth == 0:
                    raise ParseError("bad character in atom")
                i += 1
            stack[-1].append(Atom(data[start:i].decode("latin-1")))
    if len(stack) != 1:
        raise ParseError("unbalanced parentheses")
    return top


def astring(tok):
    """An atom or string argument as bytes; ParseError for a list."""
    if isinstance(tok, Atom):
        return tok.encode("latin-1")
    if isinstance(tok, bytes):
        return tok
    raise ParseError("expected a string")


class Cmd:
    """One command received (or a line answering "+", or DONE)."""

    def __init__(self, line, t, tls, index, literals=()):
        self.line = line                # raw bytes, literals inline
        self.t = t                      # monotonic arrival time
        self.tls = tls
        self.index = index              # position in conn.commands
        self.literals = list(literals)  # the literal data
        self.tag = None
        self.verb = ""                  # "LOGIN", "UID FETCH", "DONE"...
        self.arg = ""                   # the rest of the line (latin-1)
        self.args = []                  # parsed arguments
        self.error = None               # why it could not be parsed
        self.nth = 0                    # server-wide: nth of this verb
        self.conn_nth = 0               # in this connection
        self.reply_start = None
        self.reply_end = None
        self.sasl = False               # a reply to a SASL challenge

    def parse(self):
        m = re.match(rb"([^ \r\n(){%*\"\\]+) ([A-Za-z0-9.-]+)(?: (.*))?\Z",
                     self.line, re.S)
        if not m:
            parts = self.line.split(b" ", 1)
            self.tag = parts[0].decode("latin-1") if parts[0] else "*"
            self.verb = ""
            self.error = "Error in IMAP command received by server."
            return
        self.tag = m.group(1).decode("latin-1")
        self.verb = m.group(2).decode("latin-1").upper()
        rest = m.group(3) or b""
        if self.verb == "UID":
            sub = re.match(rb"([A-Za-z]+)(?: (.*))?\Z", rest, re.S)
            if sub:
                self.verb = "UID " + sub.group(1).decode().upper()
                rest = sub.group(2) or b""
        self.arg = rest.decode("latin-1")
        try:
            self.args = parse_args(rest)
        except ParseError as e:
            self.error = f"Error in IMAP command {self.verb}: {e}."

    @property
    def uid(self):
        """A UID command (UID FETCH, UID STORE...)."""
        return self.verb.startswith("UID ")

    def __repr__(self):
        return f"<Cmd {self.line[:200]!r}>"


class Conn(BaseConn):
    """One client connection, as recorded by the server."""

    def __init__(self, server, cid, peer):
        super().__init__(server, cid, peer)
        # connect, not-auth, auth, selected, logout, closed
        self.state = "connect"
        self.user = None
        self.selected = None            # the Folder
        self.readonly = False
        self.view = []                  # UIDs this session knows, by seq
        self.vflags = {}                # uid -> flags this session knows
        self.generation = 0
        self.idling = None              # the IDLE Cmd
        self.sasl = None                # the AUTHENTICATE in progress
        self.closing = False
        self.starttls_pending = False
        self.enabled = set()
        self.client_id = None           # what ID said
        self.fed_offset = 0             # bytes consumed from the reader
        self.keepalive = None           # the "* OK Still here" task

    def default(self, cmd):
        """The default response to cmd (bytes), applying its effects."""
        return b"".join(x for x in self.default_parts(cmd)
                        if isinstance(x, bytes))

    def default_parts(self, cmd):
        """The same as a list: one untagged response per item, the tagged
        completion last."""
        return self.server._default(self, cmd)

    def uids_of(self, cmd):
        """The UIDs (in the selected folder, in this session's view) that
        a FETCH, STORE, COPY, MOVE or UID EXPUNGE addresses."""
        if not cmd.args or self.selected is None:
            return []
        try:
            if cmd.uid:
                r = seq_set(str(cmd.args[0]), max(self.view, default=0))
                return [u for u in self.view if in_set(u, r)]
            r = seq_set(str(cmd.args[0]), len(self.view))
        except ValueError:
            return []
        return [u for i, u in enumerate(self.view) if in_set(i + 1, r)]

    def fetch_line(self, uid, items="UID FLAGS", seq=None):
        """A FETCH response for the message uid of the selected folder
        (items: as in a FETCH command), at its sequence number in this
        session (or seq)."""
        f = self.selected
        m = f.by_uid(uid) if f else None
        if m is None:
            raise KeyError(f"no message with uid {uid}")
        if seq is None:
            seq = self.view.index(uid) + 1 if uid in self.view else 1
        its = self.server._fetch_items(parse_args(items.encode()))
        return self.server._fetch_one(self, seq, m, its, False, True)


# ---------------------------------------------------------------------------
# ready-made handlers

def reply(text):
    """Answer with "<tag> text"."""
    def handler(conn, cmd):
        return f"{cmd.tag} {text}\r\n".encode()
    return handler


def refuse(code="AUTHENTICATIONFAILED", text="Authentication failed.",
           alert=None, status="NO"):
    """For LOGIN / AUTHENTICATE: refuse at once with an RFC 5530 code
    (or code=None), after "* OK [ALERT] alert" if given."""
    def handler(conn, cmd):
        out = [f"* OK [ALERT] {alert}\r\n".encode()] if alert else []
        c = f"[{code}] " if code else ""
        return out + [f"{cmd.tag} {status} {c}{text}\r\n".encode()]
    return handler


def parts(fn, nth=None):
    """A handler that changes the default response: fn(conn, cmd, parts)
    returns the new list (of bytes and actions).  nth: only the nth such
    command (server-wide), the others get the default."""
    def handler(conn, cmd):
        if nth is not None and cmd.nth != nth:
            return None
        return fn(conn, cmd, list(conn.default_parts(cmd)))
    return handler


def _fetches(ps):
    return [i for i, p in enumerate(ps) if isinstance(p, bytes) and
            _FETCH_RE.match(p)]


def _literal_at(data):
    """(start, end, size) of the first literal announcement "{n}\\r\\n"
    in a FETCH response."""
    m = re.search(rb"\{(\d+)\}\r\n", data)
    return (m.start(), m.end(), int(m.group(1))) if m else None


def literal_lie(delta, msg=0, nth=1):
    """The msg-th FETCH response announces its (first) literal delta
    bytes longer (or shorter) than the bytes it sends."""
    def fn(conn, cmd, ps):
        i = _fetches(ps)[msg]
        s, e, size = _literal_at(ps[i])
        ps[i] = ps[i][:s] + b"{%d}\r\n" % (size + delta) + ps[i][e:]
        return ps
    return parts(fn, nth)


def drop_in_literal(msg=0, after=10, action=DROP, nth=1):
    """Send the FETCH responses before the msg-th, then that one up to
    `after` bytes into its literal, then action (DROP, ABORT, HANG)."""
    def fn(conn, cmd, ps):
        i = _fetches(ps)[msg]
        s, e, size = _literal_at(ps[i])
        return ps[:i] + [ps[i][:e + after], action]
    return parts(fn, nth)


def bye_in_fetch(after=1, text="Server shutting down.", action=DROP,
                 nth=1):
    """Send `after` FETCH responses, then "* BYE text", then action."""
    def fn(conn, cmd, ps):
        idx = _fetches(ps)
        cut = idx[after] if after < len(idx) else len(ps) - 1
        return ps[:cut] + [f"* BYE {text}\r\n".encode(), action]
    return parts(fn, nth)


def inject(data, at=0, verb=None, nth=1):
    """Put data (bytes, or fn(conn, cmd) -> bytes) among the default
    response's parts at index at (0: first, -1: just before the tagged
    completion).  verb: only for that verb, when used under "*"."""
    def fn(conn, cmd, ps):
        if verb is not None and cmd.verb != verb:
            return ps
        d = data(conn, cmd) if callable(data) else data
        ps.insert(at if at >= 0 else len(ps) + at, d)
        return ps
    return parts(fn, nth)


def reorder(fn=lambda xs: xs[::-1], nth=1):
    """Reorder the FETCH responses (default: reversed)."""
    def change(conn, cmd, ps):
        idx = _fetches(ps)
        new = fn([ps[i] for i in idx])
        for i, p in zip(idx, new):
            ps[i] = p
        return ps
    return parts(change, nth)


def _head_sub(ps, which, pattern, repl):
    """Rewrite the part before the first literal of FETCH responses."""
    for k, i in enumerate(_fetches(ps)):
        if which is not None and k not in which:
            continue
        lit = _literal_at(ps[i])
        cut = lit[0] if lit else len(ps[i])
        ps[i] = re.sub(pattern, repl, ps[i][:cut], count=1) + ps[i][cut:]
    return ps


def without_uid(which=None, nth=1):
    """FETCH responses without their UID item (which: indexes of the
    FETCH responses, default all)."""
    return parts(lambda conn, cmd, ps: _head_sub(
        ps, which, rb"UID \d+ ?", b""), nth)


def map_uid(fn, which=None, nth=1):
    """FETCH responses with UID n replaced by fn(n) (an int, or any text:
    0, 2**32, a UID not asked for, "abc")."""
    return parts(lambda conn, cmd, ps: _head_sub(
        ps, which, rb"UID (\d+)",
        lambda m: b"UID " + str(fn(int(m.group(1)))).encode()), nth)


def after_literal(data, msg=0, nth=1):
    """Insert data right after the literal of the msg-th FETCH response,
    before its closing parenthesis: never legal, a client must not take
    it for a response of its own."""
    def fn(conn, cmd, ps):
        i = _fetches(ps)[msg]
        s, e, size = _literal_at(ps[i])
        ps[i] = ps[i][:e + size] + data + ps[i][e + size:]
        return ps
    return parts(fn, nth)


def endless(first=b"", line=b"* OK flood\r\n", interval=0.0):
    """An answer that never ends: first, then line over and over (e.g.
    first=b"* 1 FETCH (UID 1 BODY[] {99999999999}\r\n", line=b"x" * 999
    for a literal without end)."""
    return endless_listing(first, line, interval)


def idle_silent():
    """For "IDLE": never answer "+ idling" (nor anything else)."""
    return lambda conn, cmd: [HANG]


def idle_no_done():
    """For "DONE": never end the IDLE, stay silent."""
    return lambda conn, cmd: [HANG]


# ---------------------------------------------------------------------------
# the server

_DEFAULT_GREETING = object()
DEFAULT_CAPS = ["IMAP4rev1", "SASL-IR", "LITERAL+", "ID", "ENABLE", "IDLE",
                "NAMESPACE", "UIDPLUS", "MOVE", "UNSELECT", "SPECIAL-USE"]


class FakeIMAP(ThreadedServer):
    thread_name = "fakeimap"

    def __init__(self, messages=(), user="fakeuser", password="fakepass",
                 tls=None, implicit_tls=None, starttls=None, host=LOOPBACK,
                 greeting=_DEFAULT_GREETING, capabilities=None,
                 capabilities_auth=None, extra_caps=(), drop_caps=(),
                 greeting_caps=False, login_caps=False, sasl=("PLAIN",),
                 tokens=None, login_requires_tls=False, login_reply=None,
                 alert=None, handlers=None, on_command=None, push_delay=0.0,
                 push_when="idle", idle_keepalive=None, autologout=None,
                 literal_continuation=b"+ OK\r\n", delimiter="/",
                 drip=None, expunge_order="ascending",
                 max_literal=MAX_LITERAL, uidvalidity=None):
        super().__init__(host=host, tls=tls, implicit_tls=implicit_tls,
                         drip=drip)
        self.user = user
        self.password = password
        self.tokens = list(tokens) if tokens is not None else None
        self.starttls = (tls is not None and not self.implicit_tls) \
            if starttls is None else starttls
        self.greeting = greeting
        self.capabilities = capabilities
        self.capabilities_auth = capabilities_auth
        self.extra_caps = list(extra_caps)
        self.drop_caps = {c.upper() for c in drop_caps}
        self.greeting_caps = greeting_caps
        self.login_caps = login_caps
        self.sasl = [m.upper() for m in sasl]
        self.login_requires_tls = login_requires_tls
        self.login_reply = login_reply
        self.alert = alert
        self.handlers = dict(handlers or {})
        self.on_command = on_command
        self.push_delay = push_delay
        self.push_when = push_when
        self.idle_keepalive = idle_keepalive
        self.autologout = autologout
        self.literal_continuation = literal_continuation
        self.delimiter = delimiter
        self.expunge_order = expunge_order
        self.max_literal = max_literal
        self.folders = collections.OrderedDict()   # name -> Folder
        self.events = []
        self._validity = itertools.count(
            uidvalidity or int(time.time()) % 1000000000 + 1000)
        self.create("INBOX")
        for m in messages:
            self.add(m)

    # -- the store (from the tests, any thread) -------------------------
    def create(self, name, uidvalidity=None, special_use=None, attrs=()):
        """Create a folder (str name; "INBOX" always exists)."""
        with self.lock:
            if self._find(name) is not None:
                raise ValueError(f"folder {name!r} exists")
            f = Folder(name, uidvalidity or next(self._validity),
                       special_use, attrs)
            self.folders[name] = f
            return f

    def _find(self, name):
        if name.upper() == "INBOX":
            name = "INBOX"
        return self.folders.get(name)

    def folder(self, name="INBOX"):
        f = self._find(name)
        if f is None:
            raise KeyError(f"no folder {name!r}")
        return f

    def add(self, data, folder="INBOX", uid=None, **kw):
        """Add a message (bytes, corpus.Message or Msg; kw as for Msg:
        flags, internaldate, gm_msgid, wire, size, body, announce) with
        the next UID (or uid); sessions that have the folder selected
        hear of it.  Returns the Msg."""
        m = data if isinstance(data, Msg) else Msg(data, **kw)
        with self.lock:
            f = self.folder(folder)
            f.append(m, uid)
        self._changed(f)
        return m

    def add_many(self, datas, folder="INBOX", **kw):
        return [self.add(d, folder, **kw) for d in datas]

    def delete(self, folder, uids):
        """Remove messages, as another client's expunge would."""
        uids = set(uids)
        with self.lock:
            f = self.folder(folder)
            f.messages = [m for m in f.messages if m.uid not in uids]
        self._changed(f)

    def set_flags(self, folder, uid, flags):
        with self.lock:
            self.folder(folder).by_uid(uid).flags = {_flag(x) for x in flags}
        self._changed(self.folder(folder))

    def renumber(self, folder="INBOX", uidvalidity=None, first_uid=1):
        """A UIDVALIDITY change: new UIDs from first_uid on, a new (or the
        given) UIDVALIDITY.  Sessions that have the folder selected get
        "* BYE" and are closed.  Returns the new UIDVALIDITY."""
        with self.lock:
            f = self.folder(folder)
            f.uidvalidity = uidvalidity or next(self._validity)
            f.generation += 1
            msgs, f.messages, f.uidnext = f.messages, [], first_uid
            for m in msgs:
                f.append(m)
        self._changed(f)
        return f.uidvalidity

    def messages(self, folder="INBOX"):
        with self.lock:
            return list(self.folder(folder).messages)

    def uids(self, folder="INBOX"):
        with self.lock:
            return self.folder(folder).uids()

    def datas(self, folder="INBOX"):
        with self.lock:
            return [m.data for m in self.folder(folder).messages]

    def flags(self, folder, uid):
        with self.lock:
            return set(self.folder(folder).by_uid(uid).flags)

    def events_of(self, kind):
        return [e for e in self.events if e.kind == kind]

    def push(self, data, conn=None):
        """Write data (bytes or actions) to conn, or to every open
        connection, now."""
        if self._loop is None:
            raise RuntimeError("the server is not running")
        conns = [conn] if conn is not None else [
            c for c in self.connections if c.state != "closed"]

        def go():
            for c in conns:
                self.spawn(self._emit(c, c.writer, data))
        self._loop.call_soon_threadsafe(go)

    # -- telling the sessions ------------------------------------------
    def _changed(self, folder):
        if self._loop is None or self._thread is None:
            return
        try:
            self._loop.call_soon_threadsafe(self._notify, folder)
        except RuntimeError:
            pass                    # the loop is closed

    def _notify(self, folder, skip=None):
        for c in self.connections:
            if c.selected is not folder or c.state != "selected" or \
                    c is skip:
                continue
            if c.generation != folder.generation:
                self.spawn(self._emit(c, c.writer, [
                    b"* BYE Mailbox UIDVALIDITY changed.\r\n", DROP]))
            elif c.idling is not None or self.push_when == "selected":
                self.spawn(self._push(c))

    async def _push(self, conn):
        if self.push_delay:
            await asyncio.sleep(self.push_delay)

        def now():
            if conn.idling is not None:
                return self._sync(conn, expunge=True)
            if self.push_when == "selected":
                return self._sync(conn, expunge=False, flags=False)
            return None
        await self._emit(conn, conn.writer, [Call(now)])

    def _sync(self, conn, expunge=True, flags=True):
        """The untagged responses that bring conn's view of its folder up
        to date (bytes), and the view updated."""
        f = conn.selected
        if f is None or conn.state != "selected" or \
                conn.generation != f.generation:
            return b""          # _notify says BYE to a renumbered one
        out = []
        with self.lock:
            current = {m.uid: m for m in f.messages}
            if expunge:
                gone = [i for i, u in enumerate(conn.view)
                        if u not in current]
                if self.expunge_order == "descending":
                    for i in reversed(gone):
                        out.append(b"* %d EXPUNGE\r\n" % (i + 1))
                else:
                    for k, i in enumerate(gone):
                        out.append(b"* %d EXPUNGE\r\n" % (i + 1 - k))
                for i in reversed(gone):
                    conn.vflags.pop(conn.view[i], None)
                    del conn.view[i]
            if flags:
                for i, u in enumerate(conn.view):
                    m = current.get(u)
                    if m is not None and m.flags != conn.vflags.get(u):
                        conn.vflags[u] = set(m.flags)
                        out.append(b"* %d FETCH (FLAGS %s)\r\n"
                                   % (i + 1, _flags_bytes(m.flags)))
            top = max(conn.view, default=0)
            new = [u for u in current if u > top]
            if new:
                conn.view.extend(sorted(new))
                for u in new:
                    conn.vflags[u] = set(current[u].flags)
                out.append(b"* %d EXISTS\r\n" % len(conn.view))
        return b"".join(out)

    # -- capabilities ------------------------------------------------------
    def caps(self, conn):
        """What CAPABILITY says now on conn."""
        authed = conn.state in ("auth", "selected")
        if authed and self.capabilities_auth is not None:
            return list(self.capabilities_auth)
        if not authed and self.capabilities is not None:
            return list(self.capabilities)
        out = list(DEFAULT_CAPS)
        if not authed:
            if self._starttls_ok(conn):
                out.append("STARTTLS")
            if self.login_requires_tls and not conn.tls:
                out.append("LOGINDISABLED")
            out += [f"AUTH={m}" for m in self.sasl]
        else:
            out.remove("SASL-IR")
        out += [c for c in self.extra_caps if c not in out]
        return [c for c in out if c.upper() not in self.drop_caps]

    def has_cap(self, conn, cap):
        cap = cap.upper()
        return any(c.upper() == cap for c in self.caps(conn))

    def _starttls_ok(self, conn):
        return (self.starttls and self.ssl_context is not None and
                not conn.tls and conn.state == "not-auth")

    def _cap_line(self, conn):
        return " ".join(self.caps(conn))

    # -- the connection ----------------------------------------------------
    def _new_conn(self, cid, peer):
        return Conn(self, cid, peer)

    async def _serve(self, conn, reader, writer):
        if self.implicit_tls:
            if not await self._start_tls(conn, writer):
                return
        conn.state = "not-auth"
        greeting = self.greeting
        if greeting is _DEFAULT_GREETING:
            c = f"[CAPABILITY {self._cap_line(conn)}] " \
                if self.greeting_caps else ""
            greeting = f"* OK {c}fakeimap ready.\r\n".encode()
        if isinstance(greeting, bytes):
            if greeting.startswith(b"* PREAUTH"):
                conn.state = "auth"
                conn.user = self.user
            elif greeting.startswith(b"* BYE"):
                await self._emit(conn, writer, [greeting, DROP])
                return
        if greeting is not None:
            if not await self._emit(conn, writer, greeting):
                return
        conn.greeting_end = time.monotonic()
        while not conn.closing:
            cmd = await self._read_cmd(conn, reader, writer)
            if cmd is None:
                return
            handler = self.handlers.get(cmd.verb) or (
                None if cmd.sasl or cmd.verb == "DONE" else
                self.handlers.get("*"))
            resp = handler(conn, cmd) if handler else None
            if resp is None:
                resp = self._default(conn, cmd)
            cmd.reply_start = time.monotonic()
            if not await self._emit(conn, writer, resp, cmd):
                return
            if conn.starttls_pending:
                conn.starttls_pending = False
                self._discard_plaintext(conn, reader)
                if not await self._start_tls(conn, writer):
                    return
            if conn.idling is not None and self.idle_keepalive and \
                    conn.keepalive is None:
                conn.keepalive = self.spawn(self._keepalive(conn))
        conn.closed_by = conn.closed_by or "server"
        try:
            await asyncio.wait_for(writer.drain(), 5)
        except Exception:
            pass

    def _discard_plaintext(self, conn, reader):
        """What came in the clear after STARTTLS is not a command of the
        TLS session (RFC 3207's injection attack): recorded as a Cmd with
        verb "PLAINTEXT-AFTER-STARTTLS", then dropped."""
        buf = getattr(reader, "_buffer", None)
        if not buf:
            return
        data = bytes(buf)
        buf.clear()
        conn.fed_offset += len(data)
        cmd = Cmd(data, reader.time_of(conn.fed_offset), False,
                  len(conn.commands))
        cmd.verb = "PLAINTEXT-AFTER-STARTTLS"
        conn.commands.append(cmd)
        conn.count(cmd)

    async def _keepalive(self, conn):
        try:
            while conn.idling is not None and conn.state != "closed":
                await asyncio.sleep(self.idle_keepalive)
                if conn.idling is not None:
                    await self._emit(conn, conn.writer,
                                     b"* OK Still here\r\n")
        finally:
            conn.keepalive = None

    async def _readline(self, conn, reader, writer):
        """One line (bytes with its LF), None at the end."""
        while True:
            try:
                fut = reader.readuntil(b"\n")
                line = await (asyncio.wait_for(fut, self.autologout)
                              if self.autologout else fut)
            except asyncio.TimeoutError:
                await self._emit(conn, writer, [
                    b"* BYE Disconnected for inactivity.\r\n", DROP])
                return None
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    conn.commands.append(Cmd(e.partial, time.monotonic(),
                                             conn.tls, len(conn.commands)))
                conn.closed_by = conn.closed_by or "client"
                return None
            except asyncio.LimitOverrunError:
                while True:         # swallow an overlong line, complain
                    try:
                        conn.fed_offset += len(await reader.readuntil(
                            b"\n"))
                        break
                    except asyncio.LimitOverrunError as e:
                        await reader.readexactly(e.consumed)
                        conn.fed_offset += e.consumed
                if not await self._emit(conn, writer,
                                        b"* BAD Line too long.\r\n"):
                    return None
                continue
            return line

    async def _read_cmd(self, conn, reader, writer):
        """The next command with its literals, recorded; None at the end
        of the connection."""
        segs, lits = [], []
        t = None
        error = None
        while True:
            line = await self._readline(conn, reader, writer)
            if line is None:
                if segs:
                    conn.commands.append(Cmd(b"".join(segs), t, conn.tls,
                                             len(conn.commands), lits))
                return None
            conn.fed_offset += len(line)
            if t is None:
                t = reader.time_of(conn.fed_offset)
            segs.append(line)
            if conn.idling is not None or conn.sasl is not None:
                break
            m = _LITERAL_RE.search(line)
            if not m:
                break
            size, plus = int(m.group(1)), bool(m.group(2))
            if size > self.max_literal:
                error = "Literal too large."
                break
            if plus and not (self.has_cap(conn, "LITERAL+") or (
                    size <= 4096 and self.has_cap(conn, "LITERAL-"))):
                error = "Non-synchronizing literal not offered."
                break
            if not plus and self.literal_continuation is not None:
                if not await self._emit(conn, writer,
                                        self.literal_continuation):
                    return None
            try:
                data = await reader.readexactly(size)
            except asyncio.IncompleteReadError as e:
                segs.append(e.partial)
                conn.commands.append(Cmd(b"".join(segs), t, conn.tls,
                                         len(conn.commands), lits))
                conn.closed_by = conn.closed_by or "client"
                return None
            conn.fed_offset += size
            lits.append(data)
            segs.append(data)
        raw_line = b"".join(segs)
        if raw_line.endswith(b"\n"):
            raw_line = raw_line[:-1]
        if raw_line.endswith(b"\r"):
            raw_line = raw_line[:-1]
        cmd = Cmd(raw_line, t, conn.tls, len(conn.commands), lits)
        if conn.sasl is not None:
            cmd.sasl = True
            cmd.verb = "SASL-RESPONSE"
        elif conn.idling is not None and raw_line.upper() == b"DONE":
            cmd.verb = "DONE"
            cmd.tag = conn.idling.tag
        else:
            cmd.parse()
            cmd.error = error or cmd.error
        conn.commands.append(cmd)
        conn.count(cmd)
        if self.on_command is not None:
            try:
                self.on_command(conn, cmd)
            except Exception as e:      # reported, never to the client
                self.errors.append(e)
        return cmd

    # -- the default IMAP server -------------------------------------------
    def _default(self, conn, cmd):
        if cmd.sasl:
            return self._sasl_step(conn, cmd)
        if cmd.verb == "DONE":
            idle, conn.idling = conn.idling, None
            return self._done(conn, idle, [], "OK Idle completed.")
        if conn.idling is not None:
            idle, conn.idling = conn.idling, None
            return [f"{idle.tag} BAD Expected DONE.\r\n".encode()]
        if cmd.error:
            return [f"{cmd.tag} BAD {cmd.error}\r\n".encode()]
        fn = getattr(self, "_cmd_" + cmd.verb.lower().replace("uid ", ""),
                     None)
        if cmd.uid and cmd.verb not in self._uid_verbs:
            fn = None
        if fn is None:
            return [f"{cmd.tag} BAD Error in IMAP command {cmd.verb}: "
                    f"Unknown command.\r\n".encode()]
        need = self._needs.get(cmd.verb.replace("UID ", ""), "any")
        if need == "not-auth" and conn.state != "not-auth" or \
                need == "auth" and conn.state not in ("auth", "selected") or \
                need == "selected" and conn.state != "selected":
            return self._bad(cmd, "Command not valid in this state")
        try:
            return fn(conn, cmd)
        except (ParseError, ValueError, IndexError, TypeError) as e:
            return self._bad(cmd, str(e) or "Invalid arguments")

    _uid_verbs = ("UID FETCH", "UID STORE", "UID SEARCH", "UID COPY",
                  "UID MOVE", "UID EXPUNGE")
    _needs = {"STARTTLS": "not-auth", "LOGIN": "not-auth",
              "AUTHENTICATE": "not-auth", "SELECT": "auth",
              "EXAMINE": "auth", "CREATE": "auth", "DELETE": "auth",
              "SUBSCRIBE": "auth", "UNSUBSCRIBE": "auth", "LIST": "auth",
              "LSUB": "auth", "STATUS": "auth", "APPEND": "auth",
              "NAMESPACE": "auth", "ENABLE": "auth", "IDLE": "auth",
              "CHECK": "selected", "CLOSE": "selected",
              "UNSELECT": "selected", "EXPUNGE": "selected",
              "SEARCH": "selected", "FETCH": "selected",
              "STORE": "selected", "COPY": "selected", "MOVE": "selected"}

    @staticmethod
    def _bad(cmd, why):
        return [f"{cmd.tag} BAD Error in IMAP command {cmd.verb}: "
                f"{why}.\r\n".encode()]

    def _done(self, conn, cmd, untagged, status, expunge=True):
        """untagged responses, the pending changes, the tagged status."""
        return list(untagged) + [self._sync(conn, expunge=expunge),
                                 f"{cmd.tag} {status}\r\n".encode()]

    def _no_arg(self, cmd, n):
        if len(cmd.args) != n:
            raise ParseError("Wrong number of arguments")

    # simple commands
    def _cmd_capability(self, conn, cmd):
        return self._done(conn, cmd,
                          [f"* CAPABILITY {self._cap_line(conn)}\r\n"
                           .encode()], "OK Capability completed.")

    def _cmd_noop(self, conn, cmd):
        return self._done(conn, cmd, [], "OK NOOP completed.")

    def _cmd_check(self, conn, cmd):
        return self._done(conn, cmd, [], "OK Check completed.")

    def _cmd_logout(self, conn, cmd):
        conn.closing = True
        conn.state = "logout"
        return [b"* BYE Logging out\r\n",
                f"{cmd.tag} OK Logout completed.\r\n".encode()]

    def _cmd_id(self, conn, cmd):
        conn.client_id = cmd.args[0] if cmd.args else None
        return self._done(conn, cmd, [b'* ID ("name" "fakeimap" '
                                      b'"version" "1")\r\n'],
                          "OK ID completed.")

    def _cmd_namespace(self, conn, cmd):
        d = _quoted(self.delimiter.encode())
        return self._done(conn, cmd, [b'* NAMESPACE (("" ' + d +
                                      b')) NIL NIL\r\n'],
                          "OK Namespace completed.")

    def _cmd_enable(self, conn, cmd):
        if not self.has_cap(conn, "ENABLE"):
            return self._bad(cmd, "Unknown command")
        known = {c.upper() for c in self.caps(conn)}
        on = [str(a).upper() for a in cmd.args if str(a).upper() in known]
        conn.enabled.update(on)
        return self._done(conn, cmd, [("* ENABLED" + "".join(
            " " + x for x in on) + "\r\n").encode()], "OK Enabled.")

    def _cmd_starttls(self, conn, cmd):
        if not self._starttls_ok(conn):
            return self._bad(cmd, "TLS not available")
        conn.starttls_pending = True
        return [f"{cmd.tag} OK Begin TLS negotiation now.\r\n".encode()]

    # logging in
    def _token_ok(self, token):
        tokens = self.tokens if self.tokens is not None else [self.password]
        return token in tokens

    def _privacy(self, conn):
        return self.login_requires_tls and not conn.tls

    def _login_done(self, conn, cmd, a, ok):
        """The answer to a login attempt whose credentials are known."""
        out = [f"* OK [ALERT] {self.alert}\r\n".encode()] if self.alert \
            else []
        text = self.login_reply(conn, a) if callable(self.login_reply) \
            else self.login_reply
        a.ok = text.upper().startswith("OK") if text is not None else ok
        if a.ok:
            conn.state = "auth"
            conn.user = a.user
        if text is None and a.ok:
            c = f"[CAPABILITY {self._cap_line(conn)}] " \
                if self.login_caps else ""
            text = f"OK {c}Logged in"
        elif text is None:
            text = "NO [AUTHENTICATIONFAILED] Authentication failed."
        return out + [f"{cmd.tag} {text}\r\n".encode()]

    def _cmd_login(self, conn, cmd):
        self._no_arg(cmd, 2)
        a = Auth("LOGIN", tls=conn.tls)
        a.user = astring(cmd.args[0]).decode("utf-8", "replace")
        a.password = astring(cmd.args[1]).decode("utf-8", "replace")
        a.responses.append(astring(cmd.args[1]))
        conn.auths.append(a)
        if self._privacy(conn) or self.has_cap(conn, "LOGINDISABLED"):
            a.ok = False
            return [f"{cmd.tag} NO [PRIVACYREQUIRED] Plaintext "
                    f"authentication disallowed on non-secure (SSL/TLS) "
                    f"connections.\r\n".encode()]
        return self._login_done(conn, cmd, a, a.user == self.user and
                                a.password == self.password)

    def _cmd_authenticate(self, conn, cmd):
        if not cmd.args or len(cmd.args) > 2:
            raise ParseError("Wrong number of arguments")
        mech = str(cmd.args[0]).upper()
        if mech not in self.sasl or mech not in SASL_MECHS or \
                not self.has_cap(conn, "AUTH=" + mech):
            return [f"{cmd.tag} NO Unsupported authentication "
                    f"mechanism.\r\n".encode()]
        ir = len(cmd.args) == 2
        if ir and not self.has_cap(conn, "SASL-IR"):
            return self._bad(cmd, "SASL-IR not offered")
        a = Auth(mech, ir=ir, tls=conn.tls)
        conn.auths.append(a)
        if self._privacy(conn):
            a.ok = False
            return [f"{cmd.tag} NO [PRIVACYREQUIRED] Plaintext "
                    f"authentication disallowed on non-secure (SSL/TLS) "
                    f"connections.\r\n".encode()]
        conn.sasl = {"auth": a, "cmd": cmd}
        if not ir:
            return [b"+ \r\n"]
        return self._sasl_feed(conn, str(cmd.args[1]))

    def _sasl_step(self, conn, cmd):
        return self._sasl_feed(conn, cmd.line.decode("latin-1"))

    def _sasl_end(self, conn, ok, bad=None):
        a, cmd = conn.sasl["auth"], conn.sasl["cmd"]
        conn.sasl = None
        if bad is not None:
            a.ok = False
            return [f"{cmd.tag} BAD {bad}\r\n".encode()]
        return self._login_done(conn, cmd, a, ok)

    def _sasl_feed(self, conn, text):
        sasl = conn.sasl
        a = sasl["auth"]
        if text == "*":
            a.cancelled = True
            return self._sasl_end(conn, False, "Authentication aborted by "
                                  "client.")
        if sasl.get("oauth_error"):
            a.responses.append(unb64(text) or b"")
            return self._sasl_end(conn, False)
        data = b"" if text == "=" else unb64(text)
        if data is None:
            return self._sasl_end(conn, False, "Invalid base64 data in "
                                  "continued response")
        a.responses.append(data)
        good = sasl_credentials(a, data) and a.user == self.user
        if a.mech == "PLAIN":
            return self._sasl_end(conn, good and a.password == self.password)
        if good and self._token_ok(a.token):
            return self._sasl_end(conn, True)
        sasl["oauth_error"] = True
        a.error_sent = True
        return [b"+ " + oauth_error(a.mech).encode() + b"\r\n"]

    # folders
    def _name_in(self, conn, tok):
        raw_name = astring(tok)
        if "UTF8=ACCEPT" in conn.enabled:
            return raw_name.decode("utf-8", "replace")
        return mutf7_decode(raw_name.decode("latin-1"))

    def _name_out(self, conn, name):
        if "UTF8=ACCEPT" in conn.enabled and not name.isascii():
            return _quoted(name.encode("utf-8"))
        return quote(mutf7_encode(name))

    def _select(self, conn, cmd, readonly):
        self._no_arg(cmd, 1)
        name = self._name_in(conn, cmd.args[0])
        conn.selected, conn.state = None, "auth"
        f = self._find(name)
        if f is None:
            return [f"{cmd.tag} NO Mailbox doesn't exist: "
                    f"{name}\r\n".encode()]
        with self.lock:
            conn.selected, conn.state, conn.readonly = f, "selected", \
                readonly
            conn.generation = f.generation
            conn.view = f.uids()
            conn.vflags = {m.uid: set(m.flags) for m in f.messages}
            recent = sum(1 for m in f.messages if m.recent)
            if not readonly:
                for m in f.messages:
                    m.recent = False
            out = [b"* FLAGS (" + " ".join(SYSTEM_FLAGS).encode() +
                   b")\r\n",
                   b"* OK [PERMANENTFLAGS (" + " ".join(
                       SYSTEM_FLAGS + ("\\*",)).encode() +
                   b")] Flags permitted.\r\n",
                   b"* %d EXISTS\r\n" % len(conn.view),
                   b"* %d RECENT\r\n" % recent,
                   b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % f.uidvalidity,
                   b"* OK [UIDNEXT %d] Predicted next UID\r\n" % f.uidnext]
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        return out + [f"{cmd.tag} OK [{mode}] Select completed.\r\n"
                      .encode()]

    def _cmd_select(self, conn, cmd):
        return self._select(conn, cmd, False)

    def _cmd_examine(self, conn, cmd):
        return self._select(conn, cmd, True)

    def _deselect(self, conn):
        conn.selected, conn.state = None, "auth"
        conn.view, conn.vflags = [], {}

    def _cmd_close(self, conn, cmd):
        if not conn.readonly:
            self._expunge(conn, None, "CLOSE")
            self._changed_others(conn, conn.selected)
        self._deselect(conn)
        return [f"{cmd.tag} OK Close completed.\r\n".encode()]

    def _cmd_unselect(self, conn, cmd):
        if not self.has_cap(conn, "UNSELECT"):
            return self._bad(cmd, "Unknown command")
        self._deselect(conn)
        return [f"{cmd.tag} OK Unselect completed.\r\n".encode()]

    def _cmd_create(self, conn, cmd):
        self._no_arg(cmd, 1)
        name = self._name_in(conn, cmd.args[0]).rstrip(self.delimiter)
        if self._find(name) is not None:
            return [f"{cmd.tag} NO [ALREADYEXISTS] Mailbox already "
                    f"exists\r\n".encode()]
        self.create(name)
        return self._done(conn, cmd, [], "OK Create completed.")

    def _cmd_delete(self, conn, cmd):
        self._no_arg(cmd, 1)
        f = self._find(self._name_in(conn, cmd.args[0]))
        if f is None or f.name == "INBOX":
            return [f"{cmd.tag} NO [NONEXISTENT] Mailbox can't be "
                    f"deleted.\r\n".encode()]
        with self.lock:
            del self.folders[f.name]
            f.generation += 1
        self._changed(f)
        return self._done(conn, cmd, [], "OK Delete completed.")

    def _subscribe(self, conn, cmd, on):
        self._no_arg(cmd, 1)
        f = self._find(self._name_in(conn, cmd.args[0]))
        if f is None:
            return [f"{cmd.tag} NO [NONEXISTENT] Mailbox doesn't "
                    f"exist\r\n".encode()]
        f.subscribed = on
        return self._done(conn, cmd, [], "OK Subscription changed.")

    def _cmd_subscribe(self, conn, cmd):
        return self._subscribe(conn, cmd, True)

    def _cmd_unsubscribe(self, conn, cmd):
        return self._subscribe(conn, cmd, False)

    def _match(self, pattern, name):
        rx = "".join(".*" if ch == "*" else
                     f"[^{re.escape(self.delimiter)}]*" if ch == "%"
                     else re.escape(ch) for ch in pattern)
        if re.fullmatch(rx, name, re.S):
            return True
        return name == "INBOX" and re.fullmatch(rx, "INBOX", re.I | re.S)

    def _list(self, conn, cmd, verb, subscribed):
        args = list(cmd.args)
        special = False
        if args and isinstance(args[0], list):      # LIST-EXTENDED
            special = "SPECIAL-USE" in [str(x).upper() for x in args[0]]
            args = args[1:]
        if len(args) > 2 and isinstance(args[2], Atom) and \
                args[2].upper() == "RETURN":
            args = args[:2]
        if len(args) != 2:
            raise ParseError("Wrong number of arguments")
        ref = self._name_in(conn, args[0])
        pattern = ref + self._name_in(conn, args[1])
        d = _quoted(self.delimiter.encode())
        if pattern == "":
            return self._done(conn, cmd, [f"* {verb} (\\Noselect) "
                                          .encode() + d + b' ""\r\n'],
                              f"OK {verb} completed.")
        out = []
        with self.lock:
            names = list(self.folders)
            for name, f in self.folders.items():
                if subscribed and not f.subscribed:
                    continue
                if special and not f.special_use:
                    continue
                if not self._match(pattern, name):
                    continue
                kids = any(n.startswith(name + self.delimiter)
                           for n in names)
                attrs = ["\\HasChildren" if kids else "\\HasNoChildren"]
                if f.special_use and self.has_cap(conn, "SPECIAL-USE"):
                    attrs.append(f.special_use)
                attrs += f.attrs
                out.append(f"* {verb} ({' '.join(attrs)}) ".encode() + d +
                           b" " + self._name_out(conn, name) + b"\r\n")
        return self._done(conn, cmd, out, f"OK {verb} completed.")

    def _cmd_list(self, conn, cmd):
        return self._list(conn, cmd, "LIST", False)

    def _cmd_lsub(self, conn, cmd):
        return self._list(conn, cmd, "LSUB", True)

    def _cmd_status(self, conn, cmd):
        self._no_arg(cmd, 2)
        f = self._find(self._name_in(conn, cmd.args[0]))
        if f is None:
            return [f"{cmd.tag} NO [NONEXISTENT] Mailbox doesn't "
                    f"exist\r\n".encode()]
        if not isinstance(cmd.args[1], list):
            raise ParseError("Status items must be a list")
        vals = {"MESSAGES": len(f.messages), "UIDNEXT": f.uidnext,
                "UIDVALIDITY": f.uidvalidity,
                "UNSEEN": sum(1 for m in f.messages
                              if "\\Seen" not in m.flags),
                "RECENT": sum(1 for m in f.messages if m.recent),
                "SIZE": sum(len(m.wire) for m in f.messages)}
        items = []
        for it in cmd.args[1]:
            it = str(it).upper()
            if it not in vals:
                raise ParseError(f"Unknown status item {it}")
            items.append(f"{it} {vals[it]}")
        line = b"* STATUS " + self._name_out(conn, f.name) + \
            f" ({' '.join(items)})\r\n".encode()
        return self._done(conn, cmd, [line], "OK Status completed.")

    def _cmd_append(self, conn, cmd):
        args = list(cmd.args)
        if len(args) < 2:
            raise ParseError("Wrong number of arguments")
        name = self._name_in(conn, args.pop(0))
        data = args.pop()
        if not isinstance(data, bytes):
            raise ParseError("Message must be a literal")
        flags = args.pop(0) if args and isinstance(args[0], list) else []
        date = None
        if args:
            date = calendar.timegm(time.strptime(
                astring(args.pop(0)).decode().strip()[:20],
                "%d-%b-%Y %H:%M:%S"))
        f = self._find(name)
        if f is None:
            return [f"{cmd.tag} NO [TRYCREATE] Mailbox doesn't "
                    f"exist: {name}\r\n".encode()]
        m = self.add(Msg(data, flags=[str(x) for x in flags],
                         internaldate=date, wire=data), f.name)
        self.events.append(Event("APPEND", conn, f.name, [m.uid]))
        code = f"[APPENDUID {f.uidvalidity} {m.uid}] " \
            if self.has_cap(conn, "UIDPLUS") else ""
        return self._done(conn, cmd, [], f"OK {code}Append completed.")

    # messages
    def _targets(self, conn, cmd, uid):
        """[(seq, Msg)] a set addresses (messages gone are left out)."""
        cur = {m.uid: m for m in conn.selected.messages}
        if uid:
            r = seq_set(str(cmd.args[0]), max(conn.view, default=0))
            hits = [(i + 1, u) for i, u in enumerate(conn.view)
                    if in_set(u, r)]
        else:
            r = seq_set(str(cmd.args[0]), len(conn.view))
            if any(hi > len(conn.view) for lo, hi in r) or not conn.view:
                raise ValueError("Invalid messageset")
            hits = [(i + 1, u) for i, u in enumerate(conn.view)
                    if in_set(i + 1, r)]
        return [(s, cur[u]) for s, u in hits if u in cur]

    def _fetch_items(self, spec):
        """FETCH items (a parsed argument) as [(NAME, Atom)]."""
        if isinstance(spec, list):
            items = spec
        else:
            macros = {"FAST": "FLAGS INTERNALDATE RFC822.SIZE",
                      "ALL": "FLAGS INTERNALDATE RFC822.SIZE",
                      "FULL": "FLAGS INTERNALDATE RFC822.SIZE"}
            items = [Atom(x) for x in macros.get(
                str(spec).upper(), str(spec)).split()]
        out = []
        for it in items:
            if not isinstance(it, Atom):
                raise ParseError("Invalid fetch item")
            out.append((it.upper(), it))
        return out

    def _section(self, m, up):
        """The bytes of BODY[...]: the section of up (upper case)."""
        sec = re.match(r"(?:BODY(?:\.PEEK)?|BINARY(?:\.PEEK)?)\[(.*)\]",
                       up, re.S).group(1)
        if sec == "":
            return m.body if m.body is not None else m.wire
        if sec == "HEADER":
            return m.header()
        if sec == "TEXT":
            return m.text()
        hf = re.fullmatch(r"HEADER\.FIELDS(\.NOT)? \((.*)\)", sec, re.S)
        if hf:
            names = [x for x in hf.group(2).replace('"', "").split()]
            return m.header_fields(names, bool(hf.group(1)))
        if sec == "1" and b"\r\nContent-Type: multipart" not in m.header():
            return m.text()
        raise ParseError(f"Unsupported section {sec}")

    def _fetch_one(self, conn, seq, m, items, uid_cmd, readonly):
        """One "* n FETCH (...)" response."""
        out = []
        seen_now = False
        if uid_cmd:
            out.append(b"UID %d" % m.uid)
        wants_flags = False
        for up, it in items:
            if (up.startswith("BODY[") or up == "RFC822" or
                    up == "RFC822.TEXT") and not readonly and \
                    "\\Seen" not in m.flags:
                m.flags.add("\\Seen")
                seen_now = True
        gm = self.has_cap(conn, "X-GM-EXT-1")
        for up, it in items:
            if up == "UID":
                if not uid_cmd:
                    out.append(b"UID %d" % m.uid)
            elif up == "FLAGS":
                wants_flags = True
                out.append(b"FLAGS " + _flags_bytes(m.flags))
            elif up == "RFC822.SIZE":
                out.append(b"RFC822.SIZE %d" % m.rfc822_size)
            elif up == "INTERNALDATE":
                out.append(b'INTERNALDATE "' + imap_date(
                    m.internaldate).encode() + b'"')
            elif up in ("X-GM-MSGID", "X-GM-THRID") and gm:
                out.append(up.encode() + b" %d" % m.gm_msgid)
            elif up in ("RFC822", "RFC822.HEADER", "RFC822.TEXT") or \
                    re.match(r"(BODY|BINARY)(\.PEEK)?\[", up):
                full = {"RFC822": "BODY[]", "RFC822.HEADER":
                        "BODY[HEADER]", "RFC822.TEXT": "BODY[TEXT]"}
                data = self._section(m, full.get(up, up))
                name = up if up.startswith("RFC822") else \
                    str(it).replace(".PEEK", "").replace(".peek", "")
                part = re.search(r"<(\d+)(?:\.(\d+))?>$", name)
                if part:
                    o = int(part.group(1))
                    n = int(part.group(2)) if part.group(2) else len(data)
                    data = data[o:o + n]
                    name = name[:part.start()] + f"<{o}>"
                whole = full.get(up, up).replace(".PEEK", "").startswith(
                    "BODY[]") and not part
                size = m.announce if (whole and m.announce is not None) \
                    else len(data)
                out.append(name.encode() + b" {%d}\r\n" % size + data)
            else:
                raise ParseError(f"Unsupported fetch item {up}")
        if seen_now and not wants_flags:
            out.append(b"FLAGS " + _flags_bytes(m.flags))
        if seen_now or wants_flags:
            conn.vflags[m.uid] = set(m.flags)
        return b"* %d FETCH (" % seq + b" ".join(out) + b")\r\n"

    def _cmd_fetch(self, conn, cmd):
        uid = cmd.uid
        if len(cmd.args) != 2:
            raise ParseError("Wrong number of arguments")
        items = self._fetch_items(cmd.args[1])
        if not self.has_cap(conn, "X-GM-EXT-1") and any(
                up.startswith("X-GM-") for up, _ in items):
            raise ParseError("Unknown fetch item")
        with self.lock:
            out = [self._fetch_one(conn, seq, m, items, uid, conn.readonly)
                   for seq, m in self._targets(conn, cmd, uid)]
        return self._done(conn, cmd, out, "OK Fetch completed.",
                          expunge=uid)

    def _cmd_store(self, conn, cmd):
        uid = cmd.uid
        if len(cmd.args) != 3:
            raise ParseError("Wrong number of arguments")
        what = str(cmd.args[1]).upper()
        m = re.fullmatch(r"([+-]?)FLAGS(\.SILENT)?", what)
        if not m:
            raise ParseError(f"Invalid STORE item {what}")
        flags = cmd.args[2] if isinstance(cmd.args[2], list) else \
            [cmd.args[2]]
        flags = {_flag(str(x)) for x in flags}
        if "\\Recent" in flags:
            raise ParseError("\\Recent can't be stored")
        if conn.readonly:
            return [f"{cmd.tag} NO Mailbox is read-only.\r\n".encode()]
        out = []
        with self.lock:
            hits = self._targets(conn, cmd, uid)
            for seq, msg in hits:
                if m.group(1) == "+":
                    msg.flags |= flags
                elif m.group(1) == "-":
                    msg.flags -= flags
                else:
                    msg.flags = set(flags)
                conn.vflags[msg.uid] = set(msg.flags)
                if not m.group(2):
                    u = b"UID %d " % msg.uid if uid else b""
                    out.append(b"* %d FETCH (%sFLAGS %s)\r\n" % (
                        seq, u, _flags_bytes(msg.flags)))
        self.events.append(Event("STORE", conn, conn.selected.name,
                                 [x.uid for _, x in hits],
                                 mode=what, flags=sorted(flags)))
        self._changed_others(conn, conn.selected)
        return self._done(conn, cmd, out, "OK Store completed.",
                          expunge=uid)

    def _expunge(self, conn, only, kind):
        """Remove the \\Deleted messages (of the UIDs only, if given)."""
        f = conn.selected
        with self.lock:
            gone = [m.uid for m in f.messages if "\\Deleted" in m.flags
                    and (only is None or m.uid in only)]
            f.messages = [m for m in f.messages if m.uid not in gone]
        self.events.append(Event(kind, conn, f.name, gone))
        return gone

    def _changed_others(self, conn, folder):
        """Tell the other sessions of folder about a change conn made (its
        own answer carries it to conn)."""
        self._notify(folder, skip=conn)

    def _cmd_expunge(self, conn, cmd):
        only = None
        if cmd.uid:                     # UID EXPUNGE (UIDPLUS)
            if not self.has_cap(conn, "UIDPLUS"):
                return self._bad(cmd, "Unknown command")
            self._no_arg(cmd, 1)
            r = seq_set(str(cmd.args[0]), max(conn.view, default=0))
            only = {u for u in conn.view if in_set(u, r)}
        if conn.readonly:
            return [f"{cmd.tag} NO Mailbox is read-only.\r\n".encode()]
        self._expunge(conn, only, cmd.verb)
        self._changed_others(conn, conn.selected)
        return self._done(conn, cmd, [], "OK Expunge completed.")

    def _cmd_copy(self, conn, cmd, move=False):
        uid = cmd.uid
        self._no_arg(cmd, 2)
        if move and not self.has_cap(conn, "MOVE"):
            return self._bad(cmd, "Unknown command")
        dest = self._find(self._name_in(conn, cmd.args[1]))
        if dest is None:
            return [f"{cmd.tag} NO [TRYCREATE] Mailbox doesn't "
                    f"exist\r\n".encode()]
        if move and conn.readonly:
            return [f"{cmd.tag} NO Mailbox is read-only.\r\n".encode()]
        src = conn.selected
        with self.lock:
            hits = self._targets(conn, cmd, uid)
            new = [dest.append(m.copy()).uid for _, m in hits]
            old = [m.uid for _, m in hits]
            if move:
                src.messages = [m for m in src.messages if m.uid not in old]
        kind = "MOVE" if move else "COPY"
        self.events.append(Event(kind, conn, src.name, old, to=dest.name,
                                 new_uids=new))
        self._changed(dest)
        if move:
            self._changed_others(conn, src)
        code = f"[COPYUID {dest.uidvalidity} {compress_set(old)} " \
            f"{compress_set(new)}] " if new and \
            self.has_cap(conn, "UIDPLUS") else ""
        if not move:
            return self._done(conn, cmd, [], f"OK {code}Copy completed.",
                              expunge=uid)
        pre = [f"* OK {code}Moved UIDs.\r\n".encode()] if code else []
        return self._done(conn, cmd, pre, "OK Move completed.")

    def _cmd_move(self, conn, cmd):
        return self._cmd_copy(conn, cmd, move=True)

    def _search_key(self, conn, toks, uid):
        """One search key from toks (consumed): a predicate (seq, Msg)."""
        t = toks.pop(0)
        if isinstance(t, list):
            subs = []
            sub = list(t)
            while sub:
                subs.append(self._search_key(conn, sub, uid))
            return lambda s, m: all(p(s, m) for p in subs)
        key = str(t).upper()
        flagkeys = {"SEEN": "\\Seen", "DELETED": "\\Deleted", "FLAGGED":
                    "\\Flagged", "ANSWERED": "\\Answered", "DRAFT":
                    "\\Draft"}
        if key == "ALL":
            return lambda s, m: True
        if key in flagkeys:
            return lambda s, m: flagkeys[key] in m.flags
        if key.startswith("UN") and key[2:] in flagkeys:
            return lambda s, m: flagkeys[key[2:]] not in m.flags
        if key in ("NEW", "RECENT"):
            return lambda s, m: m.recent
        if key == "OLD":
            return lambda s, m: not m.recent
        if key == "NOT":
            p = self._search_key(conn, toks, uid)
            return lambda s, m: not p(s, m)
        if key == "OR":
            a = self._search_key(conn, toks, uid)
            b = self._search_key(conn, toks, uid)
            return lambda s, m: a(s, m) or b(s, m)
        if key == "UID":
            r = seq_set(str(toks.pop(0)), max(conn.view, default=0))
            return lambda s, m: in_set(m.uid, r)
        if key in ("LARGER", "SMALLER"):
            n = int(str(toks.pop(0)))
            return (lambda s, m: m.rfc822_size > n) if key == "LARGER" \
                else (lambda s, m: m.rfc822_size < n)
        if key in ("KEYWORD", "UNKEYWORD"):
            kw = str(toks.pop(0))
            return (lambda s, m: kw in m.flags) if key == "KEYWORD" \
                else (lambda s, m: kw not in m.flags)
        if key == "HEADER":
            name = astring(toks.pop(0)).decode("latin-1")
            val = astring(toks.pop(0)).lower()
            return lambda s, m: any(
                val in line.lower() for line in
                m.header_fields([name]).split(b"\r\n") if line)
        if key in ("SINCE", "BEFORE", "ON"):
            day = _parse_date(astring(toks.pop(0)).decode())
            return {"SINCE": lambda s, m: m.internaldate >= day,
                    "BEFORE": lambda s, m: m.internaldate < day,
                    "ON": lambda s, m: day <= m.internaldate < day + 86400
                    }[key]
        if key == "X-GM-MSGID" and self.has_cap(conn, "X-GM-EXT-1"):
            n = int(str(toks.pop(0)))
            return lambda s, m: m.gm_msgid == n
        if re.fullmatch(r"[0-9*][0-9*:,]*", key):
            r = seq_set(key, len(conn.view))
            return lambda s, m: in_set(s, r)
        raise ParseError(f"Unknown search key {key}")

    def _cmd_search(self, conn, cmd):
        uid = cmd.uid
        toks = list(cmd.args)
        if toks and str(toks[0]).upper() == "CHARSET":
            toks = toks[2:]
        if not toks:
            raise ParseError("Missing search parameters")
        preds = []
        while toks:
            preds.append(self._search_key(conn, toks, uid))
        with self.lock:
            cur = {m.uid: m for m in conn.selected.messages}
            hits = [(i + 1, cur[u]) for i, u in enumerate(conn.view)
                    if u in cur]
            found = [(m.uid if uid else s) for s, m in hits
                     if all(p(s, m) for p in preds)]
        line = ("* SEARCH" + "".join(f" {n}" for n in found) + "\r\n")
        return self._done(conn, cmd, [line.encode()],
                          "OK Search completed.", expunge=uid)

    def _cmd_idle(self, conn, cmd):
        if not self.has_cap(conn, "IDLE"):
            return self._bad(cmd, "Unknown command")
        conn.idling = cmd
        return [b"+ idling\r\n", Call(lambda: self._sync(conn))]


# ---------------------------------------------------------------------------
# self-test: python3 tests/lib/fakeimap.py

class _Raw:
    """A raw IMAP client socket for the self-test."""

    def __init__(self, srv, tls_ctx=None):
        import socket
        self.sock = socket.create_connection((srv.host, srv.port),
                                             timeout=5)
        if tls_ctx is not None:
            self.sock = tls_ctx.wrap_socket(self.sock,
                                            server_hostname="localhost")
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def until(self, mark, limit=5):
        """Read until mark (bytes) is in what came; return everything."""
        deadline = time.monotonic() + limit
        while mark not in self.buf:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            d = self.sock.recv(65536)
            if not d:
                break
            self.buf += d
        i = self.buf.find(mark)
        if i < 0:
            out, self.buf = self.buf, b""
            return out
        i += len(mark)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def rest(self, limit=5):
        """Everything until the server closes the connection."""
        import socket
        deadline = time.monotonic() + limit
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                d = self.sock.recv(65536)
                if not d:
                    break
                self.buf += d
        except (socket.timeout, OSError):
            pass
        out, self.buf = self.buf, b""
        return out

    def quiet(self, seconds=0.3):
        """Nothing comes within seconds."""
        import socket
        self.sock.settimeout(seconds)
        try:
            d = self.sock.recv(100)
        except socket.timeout:
            return True
        self.buf += d
        return False

    def close(self):
        self.sock.close()


def _selftest_basics():
    import imaplib
    msgs = [b"Message-ID: <a@x>\nSubject: a\n\nhello\n",
            b"Message-ID: <b@x>\nSubject: b\n\nworld\n",
            b"Subject: headers only\n"]
    with FakeIMAP(msgs) as srv:
        srv.create("Archive", special_use="\\Archive")
        srv.create("Ünïcode & Co")
        c = imaplib.IMAP4(srv.host, srv.port, timeout=5)
        assert "IDLE" in c.capabilities and "AUTH=PLAIN" in c.capabilities
        c.login(srv.user, srv.password)
        typ, data = c.list()
        assert typ == "OK" and len(data) == 3, data
        assert any(b"\\Archive" in d for d in data), data
        assert any(b"&ANw-n&AO8-code &- Co" in d for d in data), data
        typ, data = c.select("INBOX")
        assert data == [b"3"], data
        assert c.untagged_responses.get("UIDVALIDITY") == [
            str(srv.folder().uidvalidity).encode()]
        typ, data = c.uid("FETCH", "1:*", "(UID RFC822.SIZE BODY.PEEK[])")
        bodies = [d[1] for d in data if isinstance(d, tuple)]
        assert bodies == [to_wire(m) for m in msgs], data
        typ, data = c.uid("FETCH", "7:*", "(UID)")      # n:* above the top
        assert data == [b"3 (UID 3)"], data
        typ, data = c.uid("FETCH", "1,3", "(BODY.PEEK[HEADER.FIELDS "
                          "(MESSAGE-ID)] FLAGS)")
        assert data[0][1] == b"Message-ID: <a@x>\r\n\r\n", data
        assert data[2][1] == b"\r\n", data
        typ, data = c.fetch("2", "(BODY[TEXT] INTERNALDATE)")
        assert data[0][1] == b"world\r\n" and b"\\Seen" in data[1], data
        typ, data = c.uid("SEARCH", None, "UID", "2:*")
        assert data == [b"2 3"], data
        typ, data = c.uid("SEARCH", None, "UNSEEN")
        assert data == [b"1 3"], data
        typ, data = c.uid("STORE", "1", "+FLAGS.SILENT", "(\\Deleted)")
        assert typ == "OK" and data == [None], data
        typ, data = c.uid("COPY", "2", "Archive")
        arc = srv.folder("Archive").uidvalidity
        assert c.response("COPYUID")[1] == [b"%d 2 1" % arc], c.response(
            "COPYUID")
        typ, data = c.uid("MOVE", "3", "Archive")
        assert typ == "OK", data
        typ, data = c.uid("EXPUNGE", "1")
        assert srv.uids() == [2], srv.uids()
        assert srv.uids("Archive") == [1, 2]
        assert srv.datas("Archive") == [msgs[1], msgs[2]]
        assert [e.kind for e in srv.events] == ["STORE", "COPY", "MOVE",
                                                "UID EXPUNGE"], srv.events
        typ, data = c.status("Archive", "(MESSAGES UIDNEXT UIDVALIDITY)")
        assert b"MESSAGES 2 UIDNEXT 3" in data[0], data
        c.logout()
        conn = srv.connections[0]
        assert conn.pipelined() == [], conn.pipelined()
        assert "EXPUNGE" not in conn.verbs() and \
            "UID EXPUNGE" in conn.verbs(), conn.verbs()
    # a login with a literal password, and {n+} (LITERAL+)
    with FakeIMAP(password='p "w\\ {x}') as srv:
        c = imaplib.IMAP4(srv.host, srv.port, timeout=5)
        c.literal = srv.password.encode()
        typ, _ = c._simple_command("LOGIN", srv.user)
        assert typ == "OK", typ
        c.logout()
        r = _Raw(srv)
        r.until(b"\r\n")
        r.send(b"a LOGIN {8+}\r\nfakeuser {%d+}\r\n%s\r\n"
               % (len(srv.password), srv.password.encode()))
        assert r.until(b"a OK").endswith(b"a OK"), r.buf
        cmds = srv.connections[1].commands
        assert cmds[0].literals == [b"fakeuser", srv.password.encode()]
        assert srv.connections[0].auths[0].password == srv.password
        r.close()
    with FakeIMAP(drop_caps=["LITERAL+"]) as srv:
        r = _Raw(srv)
        r.until(b"\r\n")
        r.send(b"a LOGIN {8+}\r\n")
        assert b"a BAD" in r.until(b"\r\n")
        r.close()


def _selftest_idle():
    """IDLE spoken raw (imaplib has no IDLE): EXISTS and EXPUNGE arrive
    while idling; pending changes come before a NOOP's OK."""
    with FakeIMAP([b"Subject: 1\n\nx\n"], push_delay=0.05) as srv:
        r = _Raw(srv)
        r.until(b"\r\n")
        r.send(b"a LOGIN fakeuser fakepass\r\nb SELECT INBOX\r\n"
               b"c IDLE\r\n")
        assert b"+ idling\r\n" in r.until(b"+ idling\r\n")
        srv.add(b"Subject: 2\n\ny\n")
        assert r.until(b"EXISTS\r\n").endswith(b"* 2 EXISTS\r\n")
        srv.delete("INBOX", [1])
        assert r.until(b"EXPUNGE\r\n").endswith(b"* 1 EXPUNGE\r\n")
        r.send(b"DONE\r\n")
        assert r.until(b"c OK").endswith(b"c OK")
        r.until(b"\r\n")
        srv.add(b"Subject: 3\n\nz\n")
        assert r.quiet(), "pushed EXISTS outside IDLE"
        r.send(b"d NOOP\r\n")
        got = r.until(b"d OK")
        assert got == b"* 2 EXISTS\r\nd OK", got
        r.close()
        conn = srv.connections[0]
        assert conn.verbs() == ["LOGIN", "SELECT", "IDLE", "DONE", "NOOP"]
    # faults: IDLE never answered; DONE never answered
    for handlers, done in (({"IDLE": idle_silent()}, False),
                           ({"DONE": idle_no_done()}, True)):
        with FakeIMAP(handlers=handlers) as srv:
            r = _Raw(srv)
            r.send(b"a LOGIN fakeuser fakepass\r\nb SELECT INBOX\r\n"
                   b"c IDLE\r\n")
            r.until(b"b OK")
            r.until(b"\r\n")
            if done:
                assert r.until(b"+ idling\r\n") == b"+ idling\r\n"
                r.send(b"DONE\r\n")
            assert r.quiet(0.3), r.buf
            r.close()


def _selftest_session():
    """Keepalives, autologout, pushes between commands, UIDVALIDITY
    changes, EXAMINE, Gmail's X-GM-MSGID, UTF8=ACCEPT names."""
    login = b"a LOGIN fakeuser fakepass\r\nb SELECT INBOX\r\n"
    with FakeIMAP([b"Subject: 1\n\nx\n"], idle_keepalive=0.05,
                  autologout=1.0) as srv:
        r = _Raw(srv)
        r.send(login + b"c IDLE\r\n")
        assert r.until(b"* OK Still here\r\n").endswith(b"Still here\r\n")
        assert r.rest(3).endswith(b"* BYE Disconnected for inactivity.\r\n")
        r.close()
    with FakeIMAP([b"Subject: 1\n\nx\n"], push_when="selected") as srv:
        r = _Raw(srv)
        r.send(login)
        r.until(b"b OK")
        r.until(b"\r\n")
        srv.add(b"Subject: 2\n\ny\n")
        assert r.until(b"\r\n") == b"* 2 EXISTS\r\n"
        srv.delete("INBOX", [1])
        assert r.quiet(), "EXPUNGE outside a command"
        r.send(b"c UID FETCH 1:* (UID)\r\n")
        got = r.until(b"c OK")
        assert got == b"* 2 FETCH (UID 2)\r\n* 1 EXPUNGE\r\nc OK", got
        r.until(b"\r\n")
        v = srv.renumber("INBOX")
        assert r.rest(2) == b"* BYE Mailbox UIDVALIDITY changed.\r\n"
        assert srv.uids() == [1] and srv.folder().uidnext == 2
        r = _Raw(srv)
        r.send(login)
        assert b"[UIDVALIDITY %d]" % v in r.until(b"b OK")
        r.close()
    gm = [b"Subject: 1\n\nx\n", b"Subject: 2\n\ny\n"]
    with FakeIMAP(gm, extra_caps=["X-GM-EXT-1", "UTF8=ACCEPT"]) as srv:
        srv.create("Été")
        srv.add(srv.messages()[0].copy(), "Été")
        r = _Raw(srv)
        r.send(b"a LOGIN fakeuser fakepass\r\nb EXAMINE INBOX\r\n"
               b"c FETCH 1:* (X-GM-MSGID BODY[])\r\nd UID SEARCH "
               b"X-GM-MSGID %d\r\ne ENABLE UTF8=ACCEPT\r\n"
               b"f LIST \"\" *\r\n" % srv.messages()[1].gm_msgid)
        got = r.until(b"f OK")
        ids = [m.gm_msgid for m in srv.messages()]
        assert b"* 1 FETCH (X-GM-MSGID %d BODY[] {" % ids[0] in got, got
        assert b"* SEARCH 2\r\n" in got and b"FLAGS (\\Seen" not in got
        assert b'* ENABLED UTF8=ACCEPT' in got
        assert '(\\HasNoChildren) "/" "Été"'.encode() in got, got
        assert srv.messages("Été")[0].gm_msgid == ids[0]
        r.close()


def _selftest_faults():
    msgs = [b"Subject: %d\n\n%s\n" % (i, b"x" * 40 * i) for i in range(1, 4)]
    fetch = b"a LOGIN fakeuser fakepass\r\nb SELECT INBOX\r\n" \
        b"c UID FETCH 1:* (UID RFC822.SIZE BODY.PEEK[])\r\n"
    logout = b"z LOGOUT\r\n"

    def run(handlers, **kw):
        with FakeIMAP(msgs, handlers=handlers, **kw) as srv:
            r = _Raw(srv)
            r.send(fetch + logout)
            return r.rest(2.0)
    w = [to_wire(m) for m in msgs]
    got = run({"UID FETCH": literal_lie(+5)})
    assert b"BODY[] {%d}\r\n" % (len(w[0]) + 5) in got, got
    got = run({"UID FETCH": drop_in_literal(msg=1, after=7)})
    assert got.endswith(b"BODY[] {%d}\r\n" % len(w[1]) + w[1][:7]), got
    got = run({"UID FETCH": bye_in_fetch(after=2)})
    assert got.endswith(b"* BYE Server shutting down.\r\n"), got
    assert got.count(b" FETCH (") == 2
    got = run({"UID FETCH": reorder()})
    assert got.index(b"* 3 FETCH") < got.index(b"* 1 FETCH"), got
    got = run({"UID FETCH": without_uid(which={1})})
    assert b"* 2 FETCH (RFC822.SIZE" in got and b"* 1 FETCH (UID 1" in got
    got = run({"UID FETCH": map_uid(lambda u: 2 ** 32 if u == 2 else u)})
    assert b"* 2 FETCH (UID 4294967296 " in got, got
    got = run({"UID FETCH": inject(b"* 7 EXISTS\r\n", at=1)})
    assert got.index(b"* 7 EXISTS") < got.index(b"* 2 FETCH"), got
    got = run({"UID FETCH": after_literal(b" * 2 EXPUNGE\r\n")})
    assert w[0] + b" * 2 EXPUNGE\r\n" in got, got
    got = run({"UID FETCH": inject(lambda conn, cmd: conn.fetch_line(
        3, "UID FLAGS"), at=0)})
    assert got.index(b"* 3 FETCH (UID 3 FLAGS ()") < \
        got.index(b"* 1 FETCH"), got
    got = run({}, greeting=b"* BYE go away\r\n")
    assert got == b"* BYE go away\r\n", got
    got = run({}, greeting=b"* PREAUTH welcome\r\n")
    assert b"a BAD" in got and b"c OK Fetch" in got, got
    got = run({"LOGIN": refuse("UNAVAILABLE", "Try later.",
                               alert="Maintenance")})
    assert b"* OK [ALERT] Maintenance\r\na NO [UNAVAILABLE] Try later." \
        in got, got
    got = run({}, login_reply="NO [AUTHENTICATIONFAILED] Nope.")
    assert b"a NO [AUTHENTICATIONFAILED] Nope." in got, got
    assert b"b BAD" in got
    # messages that lie by themselves
    with FakeIMAP() as srv:
        srv.add(b"Subject: x\n\nbody\n", announce=3, size=99)
        r = _Raw(srv)
        r.send(fetch + logout)
        got = r.rest(2.0)
        assert b"RFC822.SIZE 99 BODY[] {3}\r\nSubject: x\r\n" in got, got
    # the message sent mid-response is expunged by "another client"
    with FakeIMAP(msgs) as srv:
        def cut(conn, cmd, ps):
            return ps[:1] + [Call(lambda: srv.delete("INBOX", [2]))] + ps[1:]
        srv.handlers["UID FETCH"] = parts(cut)
        r = _Raw(srv)
        r.send(fetch + b"d NOOP\r\n")
        got = r.until(b"d OK")
        assert got.endswith(b"c OK Fetch completed.\r\n* 2 EXPUNGE\r\nd OK")
        r.close()
    # a silent server (no greeting), a dripping one
    with FakeIMAP(greeting=None) as srv:
        r = _Raw(srv)
        assert r.quiet(0.3)
        r.close()
    with FakeIMAP(drip=0.005) as srv:
        r = _Raw(srv)
        t0 = time.monotonic()
        assert r.until(b"\r\n") == b"* OK fakeimap ready.\r\n"
        assert time.monotonic() - t0 > 0.05
        r.close()
    # on_command sees each command before it is answered
    seen = []
    with FakeIMAP(msgs, on_command=lambda conn, cmd: seen.append(
            (cmd.verb, conn.uids_of(cmd), srv.uids()))) as srv:
        r = _Raw(srv)
        r.send(b"a LOGIN fakeuser fakepass\r\nb SELECT INBOX\r\n"
               b"c UID STORE 2:* +FLAGS.SILENT (\\Deleted)\r\n"
               b"d EXPUNGE\r\ne LOGOUT\r\n")
        r.rest(2.0)
    assert seen[2] == ("UID STORE", [2, 3], [1, 2, 3]), seen
    assert len(srv.connections[0].pipelined()) == 4
    assert seen[3] == ("EXPUNGE", [], [1, 2, 3]), seen
    assert srv.uids() == [1] and srv.events_of("EXPUNGE")[0].uids == [2, 3]


def _selftest_auth(tmp):
    import imaplib
    import ssl
    try:
        import certs
    except ImportError:
        return
    c = certs.make(tmp)
    ctx = ssl.create_default_context(cafile=str(c.ca))
    # implicit TLS, AUTHENTICATE with continuations and with SASL-IR
    with FakeIMAP(tls=c.server, sasl=SASL_MECHS, tokens=["tok"]) as srv:
        m = imaplib.IMAP4_SSL(srv.host, srv.port, ssl_context=ctx,
                              timeout=5)
        assert "SASL-IR" in m.capabilities
        typ, _ = m.authenticate("PLAIN", lambda ch: b"\0fakeuser\0fakepass")
        assert typ == "OK" and srv.connections[0].tls
        m.logout()
        r = _Raw(srv, ctx)
        r.until(b"\r\n")
        xo = b64("user=fakeuser\1auth=Bearer tok\1\1").encode()
        r.send(b"a AUTHENTICATE XOAUTH2 " + xo + b"\r\n")
        assert r.until(b"\r\n").startswith(b"a OK"), r.buf
        r.close()
        r = _Raw(srv, ctx)
        r.until(b"\r\n")
        bad = b64("n,a=fakeuser,\1auth=Bearer no\1\1").encode()
        r.send(b"a AUTHENTICATE OAUTHBEARER " + bad + b"\r\n")
        assert r.until(b"\r\n").startswith(b"+ ey")
        r.send(b"AQ==\r\n")
        assert r.until(b"\r\n").startswith(
            b"a NO [AUTHENTICATIONFAILED]"), r.buf
        r.send(b"b AUTHENTICATE PLAIN\r\n")
        assert r.until(b"\r\n") == b"+ \r\n"
        r.send(b"*\r\n")
        assert r.until(b"\r\n").startswith(b"b BAD")
        r.close()
        oks = [a.ok for cn in srv.connections for a in cn.auths]
        assert oks == [True, True, False, False], oks
    # STARTTLS, LOGINDISABLED before it
    with FakeIMAP(tls=c.server, implicit_tls=False,
                  login_requires_tls=True) as srv:
        m = imaplib.IMAP4(srv.host, srv.port, timeout=5)
        assert "STARTTLS" in m.capabilities
        assert "LOGINDISABLED" in m.capabilities
        m.starttls(ctx)
        assert "LOGINDISABLED" not in m.capabilities
        assert "STARTTLS" not in m.capabilities
        m.login(srv.user, srv.password)
        m.logout()
        conn = srv.connections[0]
        k = conn.verbs().index("STARTTLS")
        assert not any(x.tls for x in conn.commands[:k + 1])
        assert all(x.tls for x in conn.commands[k + 1:])
        r = _Raw(srv)
        r.until(b"\r\n")
        r.send(b"a LOGIN fakeuser fakepass\r\n")
        assert b"a NO [PRIVACYREQUIRED]" in r.until(b"\r\n")
        r.close()
    # commands sent in the clear right after STARTTLS are not taken
    with FakeIMAP(tls=c.server, implicit_tls=False) as srv:
        r = _Raw(srv)
        r.until(b"\r\n")
        r.send(b"a STARTTLS\r\nb LOGIN fakeuser fakepass\r\n")
        assert r.until(b"\r\n").startswith(b"a OK")
        time.sleep(0.2)
        r.sock = ctx.wrap_socket(r.sock, server_hostname="localhost")
        r.send(b"c CAPABILITY\r\n")
        assert r.until(b"c OK").startswith(b"* CAPABILITY")
        r.close()
        verbs = srv.connections[0].verbs()
        assert verbs == ["STARTTLS", "PLAINTEXT-AFTER-STARTTLS",
                         "CAPABILITY"], verbs
        assert srv.connections[0].commands[1].line.startswith(b"b LOGIN")
    # STARTTLS stripped from CAPABILITY (it would still work)
    with FakeIMAP(tls=c.server, implicit_tls=False,
                  drop_caps=["STARTTLS"]) as srv:
        m = imaplib.IMAP4(srv.host, srv.port, timeout=5)
        assert "STARTTLS" not in m.capabilities
        m.logout()


def _selftest():
    import tempfile
    _selftest_basics()
    _selftest_idle()
    _selftest_session()
    _selftest_faults()
    with tempfile.TemporaryDirectory() as d:
        _selftest_auth(d)
    print("fakeimap self-test: ok")


if __name__ == "__main__":
    _selftest()
