"""fakepop3.py: a scriptable, fault-injecting POP3 server for the tests.

It runs an asyncio loop in a background thread of the test process and
listens on 127.0.0.1 (or ::1), port 0 (srv.port tells which):

    with fakepop3.FakePOP3(messages=[corpus.simple("a")],
                           tls=certs.server) as srv:     # implicit TLS
        ... run maild against srv.host, srv.port, srv.user, srv.password
        srv.mailbox                 # the messages still "on the server"
        srv.connections[0].verbs()  # ["CAPA", "USER", "PASS", "UIDL", ...]

By default it is a correct RFC 1939 / RFC 2449 server over a persistent
mailbox: USER PASS STAT LIST UIDL RETR TOP DELE NOOP RSET QUIT CAPA (and
STLS on a plain listener when given a certificate), dot-stuffing and CRLF
on output, PIPELINING advertised, DELE applied only at a successful QUIT
of a TRANSACTION state session.

Everything can be overridden per test:

  greeting=b"+OK\\r\\n"      raw greeting (or None: say nothing, or a list
                             of actions, see below)
  capa=[...]                 the CAPA lines (without the +OK and the ".")
  capa_err=True              CAPA answers -ERR
  pipelining=False           do not advertise PIPELINING
  handlers={"RETR": fn}      fn(conn, cmd) -> None (default behaviour) or
                             what to send; "*" catches every command
  drip=0.01                  send every response one byte at a time
  login_requires_tls=True    refuse USER/PASS (and APOP, AUTH) before TLS
  lock_mailbox=True          a second simultaneous login gets -ERR [IN-USE]
  apop=True                  put an APOP timestamp in the (default)
                             greeting and accept APOP (RFC 1939); a
                             timestamp in a custom greeting works too
  sasl=["PLAIN", ...]        advertise "SASL ..." in CAPA and accept AUTH
                             (RFC 5034) with PLAIN, LOGIN, CRAM-MD5,
                             XOAUTH2, OAUTHBEARER: initial response or
                             "+ " continuations, "*" cancels; a refused
                             OAuth token gets "+ base64(JSON error)"
                             first, as Gmail does, then -ERR
  tokens=[...]               the OAuth2 access tokens accepted (default:
                             the password)
  handoff=True               after a successful login, throw away what the
                             client sent behind the login command, as
                             Courier does when its login process hands
                             the connection to the mail process (the
                             lines are recorded with cmd.dropped set, and
                             never answered)

What a handler (or greeting) returns: bytes (sent as is), None (default
response), or a list / generator of actions, which may be infinite:
bytes, Sleep(sec), Drip(bytes, interval), DROP (close the connection),
ABORT (reset it), HANG (answer nothing more; wait for the client to go).
conn.default(cmd) gives the default response's bytes (with its side
effects, e.g. DELE marks the message), so handlers can corrupt or cut it.
Ready-made handlers: drop_after(nbytes, nth), hang_after(nbytes, nth),
drip_response(interval), endless_listing(), raw(bytes).

Every connection is recorded in srv.connections (a Conn): when it was
accepted and closed (conn.opened, conn.closed_at, monotonic), the command
lines received (cmd.line raw bytes, cmd.tls, cmd.t arrival time), whether TLS
came up (conn.tls_error otherwise), conn.pipelined() (a command arrived
before the answer to the previous one was written: only a pipelining
client does that).  Lines answering a SASL challenge are recorded too,
with cmd.verb "SASL-RESPONSE"; conn.auths lists each AUTH/APOP/PASS
attempt (an Auth: mechanism, whether an initial response came with the
AUTH line, the decoded responses, the token, the result);
conn.client_cert is the client certificate (getpeercert() form, {} if
none was verified).

server_context() makes TLS contexts with version limits or client
certificate requests, for tls=.
"""

import asyncio
import hashlib
import hmac
import itertools
import os
import re
import time

from fakeserver import (ABORT, DROP, HANG, LOOPBACK, Auth, BaseConn, Call,
                        Drip, Sleep, ThreadedServer, b64, oauth_error,
                        sasl_credentials, server_context, unb64)

__all__ = ["FakePOP3", "Msg", "Cmd", "Conn", "Auth", "Sleep", "Drip",
           "Call", "DROP", "ABORT", "HANG", "LOOPBACK", "server_context",
           "b64", "unb64", "wire_body", "crlf_size", "raw", "drop_after",
           "hang_after", "drip_response", "endless_listing", "SASL_MECHS"]


# ---------------------------------------------------------------------------
# the mailbox

def wire_body(data):
    """A message (bytes, LF or CRLF line ends) as sent after +OK of RETR:
    CRLF line ends, dot-stuffed, terminated by ".\\r\\n"."""
    data = data.replace(b"\r\n", b"\n")
    if not data:
        return b".\r\n"           # a zero-byte message: just the end
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    out = [(b"." + ln if ln.startswith(b".") else ln) for ln in lines]
    return b"\r\n".join(out) + (b"\r\n" if out else b"") + b".\r\n"


def crlf_size(data):
    """The size of a message in CRLF form (what LIST announces)."""
    data = data.replace(b"\r\n", b"\n")
    n = len(data) + data.count(b"\n")
    if data and not data.endswith(b"\n"):
        n += 2
    return n


class Msg:
    """A message on the fake server.  data: bytes (LF line ends), what a
    correct client delivers.  uidl: bytes or str (default "uid<n>").
    list_size: what LIST says (default: the true CRLF size).  retr: raw
    bytes sent after RETR's "+OK ..." line instead of the real body (must
    include the terminating ".\\r\\n" if wanted)."""

    _seq = itertools.count(1)

    def __init__(self, data, uidl=None, list_size=None, retr=None):
        if hasattr(data, "data"):       # a corpus.Message
            data = data.data
        self.data = bytes(data)
        if uidl is None:
            uidl = f"uid{next(Msg._seq)}"
        self.uidl = uidl.encode() if isinstance(uidl, str) else bytes(uidl)
        self.list_size = list_size
        self.retr = retr
        self._wire = None

    @property
    def size(self):
        return self.list_size if self.list_size is not None else crlf_size(
            self.data)

    def wire(self):
        if self.retr is not None:
            return self.retr
        if self._wire is None:
            self._wire = wire_body(self.data)
        return self._wire

    def __repr__(self):
        return f"<Msg {self.uidl!r} {len(self.data)} bytes>"


# ---------------------------------------------------------------------------
# connections

class Cmd:
    """One command line received."""

    def __init__(self, line, t, tls, index):
        self.line = line            # raw bytes, without CRLF
        self.t = t                  # monotonic arrival time
        self.tls = tls              # was the connection encrypted
        self.index = index          # position in conn.commands
        parts = line.split(b" ", 1)
        self.verb = parts[0].decode("latin-1").upper()
        self.arg = parts[1].decode("latin-1") if len(parts) > 1 else ""
        self.nth = 0                # server-wide: nth command of this verb
        self.conn_nth = 0           # in this connection
        self.reply_start = None     # monotonic times of the answer
        self.reply_end = None
        self.sasl = False           # a reply to a SASL challenge
        self.dropped = False        # thrown away unanswered (handoff)

    def __repr__(self):
        return f"<Cmd {self.line!r}>"


class Conn(BaseConn):
    """One client connection, as recorded by the server."""

    def __init__(self, server, cid, peer):
        super().__init__(server, cid, peer)
        self.state = "connect"      # connect, auth, transaction, closed
        self.user = None
        self.session = None         # [Msg] snapshot at login
        self.deleted = set()        # indexes into session
        self.closing = False
        self.stls_pending = False
        self.apop_ts = None         # the greeting's APOP timestamp (bytes)
        self.sasl = None            # the SASL exchange in progress


    # -- for handlers ----------------------------------------------------
    def default(self, cmd):
        """The default response to cmd (bytes), applying its effects."""
        return self.server._default(self, cmd)

    def msg(self, arg):
        """The session message numbered arg (str), or None."""
        try:
            n = int(arg)
        except (TypeError, ValueError):
            return None
        if self.session is None or not 1 <= n <= len(self.session):
            return None
        if n - 1 in self.deleted:
            return None
        return self.session[n - 1]


# ---------------------------------------------------------------------------
# ready-made handlers

def raw(data):
    """Always answer with data (bytes)."""
    return lambda conn, cmd: data


def drop_after(nbytes, nth=1, action=None):
    """For RETR (or any verb): on the nth such command (server-wide) send
    the first nbytes of the default answer, then close the connection."""
    def handler(conn, cmd):
        if cmd.nth != nth:
            return None
        data = conn.default(cmd)
        return [data[:nbytes], action or DROP]
    return handler


def hang_after(nbytes, nth=1):
    """Like drop_after, but then stay silent with the connection open."""
    return drop_after(nbytes, nth, HANG)


def drip_response(interval, chunk=1):
    """Send the default answer chunk bytes every interval seconds."""
    def handler(conn, cmd):
        return [Drip(conn.default(cmd), interval, chunk)]
    return handler


def endless_listing(first=b"+OK here it comes\r\n", line=b"1 1\r\n",
                    interval=0.0):
    """A multi-line answer that never ends."""
    def handler(conn, cmd):
        def gen():
            yield first
            while True:
                yield line * 64
                if interval:
                    yield Sleep(interval)
        return gen()
    return handler


_TS_RE = re.compile(rb"<[^<>\s]*@[^<>\s]*>")
SASL_MECHS = ("PLAIN", "LOGIN", "CRAM-MD5", "XOAUTH2", "OAUTHBEARER")


# ---------------------------------------------------------------------------
# the server

class FakePOP3(ThreadedServer):
    thread_name = "fakepop3"

    def __init__(self, messages=(), user="fakeuser", password="fakepass",
                 tls=None, implicit_tls=None, stls=None, host=LOOPBACK,
                 greeting=b"+OK fakepop3 ready\r\n", capa=None,
                 capa_err=False, pipelining=True, handlers=None, drip=None,
                 login_requires_tls=False, lock_mailbox=False,
                 resp_codes=True, extra_capa=(), apop=False, sasl=None,
                 tokens=None, handoff=False):
        """tls: (certfile, keyfile) or an ssl.SSLContext.  implicit_tls
        defaults to True when tls is given; stls (offer STLS on a plain
        connection) defaults to not implicit_tls."""
        super().__init__(host=host, tls=tls, implicit_tls=implicit_tls,
                         drip=drip)
        self.user = user
        self.password = password
        self.stls = (tls is not None and not self.implicit_tls) \
            if stls is None else stls
        self.greeting = greeting
        self.capa = capa
        self.capa_err = capa_err
        self.pipelining = pipelining
        self.resp_codes = resp_codes
        self.extra_capa = list(extra_capa)
        self.handlers = dict(handlers or {})
        self.login_requires_tls = login_requires_tls
        self.lock_mailbox = lock_mailbox
        self.apop = apop
        self.sasl = [m.upper() for m in sasl] if sasl else []
        self.tokens = list(tokens) if tokens is not None else None
        self.handoff = handoff
        self._ts_seq = itertools.count(1)
        self.mailbox = []
        for m in messages:
            self.add(m)
        self._locked_by = None

    # -- mailbox ---------------------------------------------------------
    def add(self, data, uidl=None, list_size=None, retr=None):
        """Add a message (bytes, corpus.Message or Msg); returns the Msg."""
        m = data if isinstance(data, Msg) else Msg(data, uidl, list_size,
                                                    retr)
        with self.lock:
            self.mailbox.append(m)
        return m

    def uidls(self):
        with self.lock:
            return [m.uidl for m in self.mailbox]

    def datas(self):
        with self.lock:
            return [m.data for m in self.mailbox]

    # -- the connection --------------------------------------------------
    def _new_conn(self, cid, peer):
        return Conn(self, cid, peer)

    def _closed(self, conn):
        if self._locked_by is conn:
            self._locked_by = None

    async def _serve(self, conn, reader, writer):
        if self.implicit_tls:
            if not await self._start_tls(conn, writer):
                return
        conn.state = "auth"
        greeting = self.greeting
        if self.apop and greeting == b"+OK fakepop3 ready\r\n":
            greeting = (f"+OK fakepop3 ready <{os.getpid()}."
                        f"{next(self._ts_seq)}.{time.time_ns()}"
                        f"@fakepop3.test>\r\n").encode()
        if isinstance(greeting, (bytes, bytearray)):
            m = _TS_RE.search(greeting)
            conn.apop_ts = m.group(0) if m else None
        if greeting is not None:
            if not await self._emit(conn, writer, greeting):
                return
        conn.greeting_end = time.monotonic()
        while not conn.closing:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    conn.commands.append(Cmd(e.partial, time.monotonic(),
                                             conn.tls, len(conn.commands)))
                conn.closed_by = conn.closed_by or "client"
                return
            except asyncio.LimitOverrunError:
                # an overlong line: swallow it and complain
                while True:
                    try:
                        await reader.readuntil(b"\n")
                        break
                    except asyncio.LimitOverrunError as e:
                        await reader.readexactly(e.consumed)
                if reader.arrivals:
                    reader.arrivals.pop(0)
                if not await self._emit(conn, writer,
                                        b"-ERR line too long\r\n"):
                    return
                continue
            t = reader.arrivals.pop(0) if reader.arrivals else \
                time.monotonic()
            cmd = Cmd(line.rstrip(b"\r\n"), t, conn.tls, len(conn.commands))
            if conn.sasl is not None:
                cmd.sasl = True
                cmd.verb, cmd.arg = "SASL-RESPONSE", ""
            conn.commands.append(cmd)
            conn.count(cmd)
            was_auth = conn.state == "auth"
            if cmd.sasl:
                handler = self.handlers.get(cmd.verb)
            else:
                handler = self.handlers.get(cmd.verb) or \
                    self.handlers.get("*")
            resp = handler(conn, cmd) if handler else None
            if resp is None:
                resp = self._sasl_step(conn, cmd) if cmd.sasl else \
                    self._default(conn, cmd)
            if self.handoff and was_auth and conn.state == "transaction":
                # before the +OK goes out: what comes after it is new
                self._drop_pipelined(conn, reader)
            cmd.reply_start = time.monotonic()
            ok = await self._emit(conn, writer, resp, cmd)
            if not ok:
                return
            if conn.stls_pending:
                conn.stls_pending = False
                if not await self._start_tls(conn, writer):
                    return
        # QUIT (or a handler) ended the session
        conn.closed_by = conn.closed_by or "server"
        try:
            await asyncio.wait_for(writer.drain(), 5)
        except Exception:
            pass


    @staticmethod
    def _drop_pipelined(conn, reader):
        """Throw away the complete lines already received (Courier's
        login process exits with them in its buffer)."""
        buf = reader._buffer
        end = buf.rfind(b"\n") + 1
        for line in bytes(buf[:end]).splitlines():
            t = reader.arrivals.pop(0) if reader.arrivals else \
                time.monotonic()
            cmd = Cmd(line, t, conn.tls, len(conn.commands))
            cmd.dropped = True
            conn.commands.append(cmd)
        del buf[:end]

    # -- the default POP3 server ---------------------------------------------
    def capa_lines(self, conn):
        if self.capa is not None:
            return list(self.capa)
        lines = ["TOP", "UIDL", "USER"]
        if self.resp_codes:
            lines += ["RESP-CODES", "AUTH-RESP-CODE"]
        if self.pipelining:
            lines.append("PIPELINING")
        if self.stls and self.ssl_context is not None and not conn.tls:
            lines.append("STLS")
        if self.sasl:
            lines.append("SASL " + " ".join(self.sasl))
        lines += self.extra_capa
        lines.append("IMPLEMENTATION fakepop3")
        return lines

    def _default(self, conn, cmd):
        verb, arg = cmd.verb, cmd.arg
        fn = getattr(self, f"_cmd_{verb.lower()}", None)
        if fn is None or not verb.isalpha():
            return b"-ERR unknown command\r\n"
        return fn(conn, arg)

    @staticmethod
    def _multi(first, lines):
        out = [first.encode() if isinstance(first, str) else first, b"\r\n"]
        for ln in lines:
            ln = ln.encode() if isinstance(ln, str) else ln
            if ln.startswith(b"."):
                ln = b"." + ln
            out += [ln, b"\r\n"]
        out.append(b".\r\n")
        return b"".join(out)

    def _cmd_capa(self, conn, arg):
        if self.capa_err:
            return b"-ERR CAPA not supported\r\n"
        return self._multi("+OK Capability list follows",
                           self.capa_lines(conn))

    def _cmd_stls(self, conn, arg):
        if conn.state != "auth" or conn.tls or self.ssl_context is None \
                or not self.stls:
            return b"-ERR STLS not available\r\n"
        conn.stls_pending = True
        return b"+OK Begin TLS negotiation\r\n"

    def _cmd_user(self, conn, arg):
        if conn.state != "auth":
            return b"-ERR already logged in\r\n"
        if self.login_requires_tls and not conn.tls:
            return b"-ERR [AUTH] Plaintext login not allowed\r\n"
        conn.user = arg
        return b"+OK\r\n"

    def _cmd_pass(self, conn, arg):
        if conn.state != "auth":
            return b"-ERR already logged in\r\n"
        if self.login_requires_tls and not conn.tls:
            return b"-ERR [AUTH] Plaintext login not allowed\r\n"
        if conn.user is None:
            return b"-ERR USER first\r\n"
        a = Auth("USER", tls=conn.tls)
        a.user = conn.user
        a.responses.append(arg.encode("latin-1"))
        conn.auths.append(a)
        if conn.user != self.user or arg != self.password:
            conn.user = None
            a.ok = False
            return b"-ERR [AUTH] Authentication failed\r\n"
        return self._login(conn, a)

    def _login(self, conn, a):
        """The credentials are right: enter the TRANSACTION state."""
        with self.lock:
            if self.lock_mailbox:
                if self._locked_by is not None and \
                        self._locked_by.state != "closed":
                    a.ok = False
                    return b"-ERR [IN-USE] Mailbox is locked\r\n"
                self._locked_by = conn
            conn.session = list(self.mailbox)
        a.ok = True
        conn.user = a.user
        conn.state = "transaction"
        return b"+OK Logged in\r\n"

    def _token_ok(self, token):
        tokens = self.tokens if self.tokens is not None else [self.password]
        return token in tokens

    def _cmd_apop(self, conn, arg):
        if conn.state != "auth":
            return b"-ERR already logged in\r\n"
        if self.login_requires_tls and not conn.tls:
            return b"-ERR [AUTH] Plaintext login not allowed\r\n"
        a = Auth("APOP", tls=conn.tls)
        conn.auths.append(a)
        parts = arg.split(" ")
        if len(parts) != 2:
            a.ok = False
            return b"-ERR usage: APOP name digest\r\n"
        a.user = parts[0]
        a.responses.append(parts[1].encode("latin-1"))
        if not self.apop or conn.apop_ts is None:
            a.ok = False
            return b"-ERR APOP not available\r\n"
        want = hashlib.md5(conn.apop_ts + self.password.encode()).hexdigest()
        if a.user != self.user or parts[1].lower() != want:
            a.ok = False
            return b"-ERR [AUTH] Authentication failed\r\n"
        return self._login(conn, a)

    # -- SASL (RFC 5034) ---------------------------------------------------
    def _cmd_auth(self, conn, arg):
        if conn.state != "auth":
            return b"-ERR already logged in\r\n"
        if not arg:
            return self._multi("+OK", self.sasl) if self.sasl else \
                b"-ERR no SASL mechanisms\r\n"
        parts = arg.split(" ")
        mech = parts[0].upper()
        if mech not in self.sasl or mech not in SASL_MECHS:
            return b"-ERR [AUTH] unsupported SASL mechanism\r\n"
        if self.login_requires_tls and not conn.tls:
            return b"-ERR [AUTH] Plaintext login not allowed\r\n"
        ir = parts[1] if len(parts) > 1 else None
        a = Auth(mech, ir=ir is not None, tls=conn.tls)
        conn.auths.append(a)
        conn.sasl = {"auth": a, "step": 0}
        if mech == "CRAM-MD5":
            conn.sasl["challenge"] = (f"<{next(self._ts_seq)}."
                                      f"{time.time_ns()}@fakepop3.test>"
                                      ).encode()
            if ir is not None:
                return self._sasl_end(conn, False, b"-ERR no initial "
                                      b"response with CRAM-MD5\r\n")
            return b"+ " + b64(conn.sasl["challenge"]).encode() + b"\r\n"
        if mech == "LOGIN":
            if ir is not None:      # some clients send the user name
                return self._sasl_feed(conn, ir)
            return b"+ " + b64("Username:").encode() + b"\r\n"
        if ir is None:
            return b"+ \r\n"
        return self._sasl_feed(conn, ir)

    def _sasl_step(self, conn, cmd):
        return self._sasl_feed(conn, cmd.line.decode("latin-1"))

    def _sasl_end(self, conn, ok, resp=None):
        a = conn.sasl["auth"]
        conn.sasl = None
        if ok:
            return self._login(conn, a)
        a.ok = False
        return resp or b"-ERR [AUTH] Authentication failed\r\n"

    def _sasl_feed(self, conn, text):
        """One client response (base64 text) in the exchange."""
        sasl = conn.sasl
        a = sasl["auth"]
        if text == "*":
            a.cancelled = True
            return self._sasl_end(conn, False, b"-ERR authentication "
                                  b"cancelled\r\n")
        if sasl.get("oauth_error"):
            # the client acknowledged the JSON error: now refuse
            a.responses.append(unb64(text) if text else b"")
            return self._sasl_end(conn, False)
        data = unb64(text)
        if data is None:
            return self._sasl_end(conn, False, b"-ERR invalid base64\r\n")
        a.responses.append(data)
        sasl["step"] += 1
        mech = a.mech
        if mech == "PLAIN":
            ok = sasl_credentials(a, data)
            return self._sasl_end(conn, ok and a.user == self.user and
                                  a.password == self.password)
        if mech == "LOGIN":
            if sasl["step"] == 1:
                a.user = data.decode("utf-8", "replace")
                return b"+ " + b64("Password:").encode() + b"\r\n"
            a.password = data.decode("utf-8", "replace")
            return self._sasl_end(conn, a.user == self.user and
                                  a.password == self.password)
        if mech == "CRAM-MD5":
            user, _, digest = data.rpartition(b" ")
            a.user = user.decode("utf-8", "replace")
            want = hmac.new(self.password.encode(), sasl["challenge"],
                            hashlib.md5).hexdigest().encode()
            return self._sasl_end(conn, a.user == self.user and
                                  digest.lower() == want)
        if mech in ("XOAUTH2", "OAUTHBEARER"):
            if sasl_credentials(a, data) and a.user == self.user and \
                    self._token_ok(a.token):
                return self._sasl_end(conn, True)
            sasl["oauth_error"] = True
            a.error_sent = True
            return b"+ " + oauth_error(mech).encode() + b"\r\n"
        return self._sasl_end(conn, False)

    def _need_trans(self, conn):
        return None if conn.state == "transaction" else \
            b"-ERR not logged in\r\n"

    def _live(self, conn):
        return [(i + 1, m) for i, m in enumerate(conn.session)
                if i not in conn.deleted]

    def _cmd_stat(self, conn, arg):
        bad = self._need_trans(conn)
        if bad:
            return bad
        live = self._live(conn)
        return f"+OK {len(live)} {sum(m.size for _, m in live)}\r\n".encode()

    def _cmd_list(self, conn, arg):
        bad = self._need_trans(conn)
        if bad:
            return bad
        if arg:
            m = conn.msg(arg)
            if m is None:
                return b"-ERR no such message\r\n"
            return f"+OK {int(arg)} {m.size}\r\n".encode()
        live = self._live(conn)
        return self._multi(f"+OK {len(live)} messages",
                           [f"{n} {m.size}" for n, m in live])

    def _cmd_uidl(self, conn, arg):
        bad = self._need_trans(conn)
        if bad:
            return bad
        if arg:
            m = conn.msg(arg)
            if m is None:
                return b"-ERR no such message\r\n"
            return b"+OK " + str(int(arg)).encode() + b" " + m.uidl + b"\r\n"
        return self._multi("+OK", [str(n).encode() + b" " + m.uidl
                                   for n, m in self._live(conn)])

    def _cmd_retr(self, conn, arg):
        bad = self._need_trans(conn)
        if bad:
            return bad
        m = conn.msg(arg)
        if m is None:
            return b"-ERR no such message\r\n"
        return f"+OK {m.size} octets\r\n".encode() + m.wire()

    def _cmd_top(self, conn, arg):
        bad = self._need_trans(conn)
        if bad:
            return bad
        parts = arg.split()
        if len(parts) != 2 or not parts[1].isdigit():
            return b"-ERR usage: TOP msg n\r\n"
        m = conn.msg(parts[0])
        if m is None:
            return b"-ERR no such message\r\n"
        data = m.data.replace(b"\r\n", b"\n")
        end = data.find(b"\n\n")
        if end == -1:
            part = data
        else:
            body = data[end + 2:].split(b"\n")
            part = data[:end + 2] + b"\n".join(body[:int(parts[1])])
            if int(parts[1]) > 0 and not part.endswith(b"\n"):
                part += b"\n"
        return b"+OK\r\n" + wire_body(part)

    def _cmd_dele(self, conn, arg):
        bad = self._need_trans(conn)
        if bad:
            return bad
        m = conn.msg(arg)
        if m is None:
            return b"-ERR no such message\r\n"
        conn.deleted.add(int(arg) - 1)
        return f"+OK message {int(arg)} deleted\r\n".encode()

    def _cmd_noop(self, conn, arg):
        bad = self._need_trans(conn)
        return bad or b"+OK\r\n"

    def _cmd_rset(self, conn, arg):
        bad = self._need_trans(conn)
        if bad:
            return bad
        conn.deleted.clear()
        return b"+OK\r\n"

    def _cmd_quit(self, conn, arg):
        conn.closing = True
        if conn.state != "transaction":
            return b"+OK bye\r\n"
        gone = {id(conn.session[i]) for i in conn.deleted}
        with self.lock:
            self.mailbox = [m for m in self.mailbox if id(m) not in gone]
        conn.state = "update"
        return f"+OK bye ({len(gone)} deleted)\r\n".encode()


# ---------------------------------------------------------------------------
# self-test: python3 tests/lib/fakepop3.py

def _selftest():
    import poplib
    import socket
    import ssl
    import tempfile

    def lines_of(sock, n, timeout=5):
        sock.settimeout(timeout)
        buf = b""
        while buf.count(b"\r\n") < n:
            d = sock.recv(65536)
            if not d:
                break
            buf += d
        return buf

    msgs = [b"Subject: a\n\n.dot\n..\n.\nend\n", b"Subject: b\n\nbody\n"]
    # the default server, through poplib
    with FakePOP3(msgs) as srv:
        p = poplib.POP3(srv.host, srv.port, timeout=5)
        assert "PIPELINING" in p.capa()
        p.user(srv.user)
        p.pass_(srv.password)
        assert p.stat() == (2, crlf_size(msgs[0]) + crlf_size(msgs[1]))
        r = p.retr(1)[1]
        assert b"\n".join(r) + b"\n" == msgs[0], r
        assert p.top(1, 0)[1] == [b"Subject: a", b""], p.top(1, 0)
        p.dele(1)
        p.rset()
        p.dele(2)
        p.quit()
        assert srv.datas() == [msgs[0]], srv.datas()
        assert srv.connections[0].verbs()[-1] == "QUIT"
    # no greeting; drop after n bytes; endless listing; drip; hang
    handlers = {"RETR": drop_after(7, nth=1), "LIST": endless_listing(),
                "NOOP": drip_response(0.01), "STAT": hang_after(3)}
    with FakePOP3(msgs, greeting=None, handlers=handlers) as srv:
        s = socket.create_connection((srv.host, srv.port), timeout=5)
        s.sendall(b"USER fakeuser\r\nPASS fakepass\r\n")
        assert lines_of(s, 2) == b"+OK\r\n+OK Logged in\r\n"
        s.sendall(b"NOOP\r\n")
        t0 = time.monotonic()
        assert lines_of(s, 1) == b"+OK\r\n"
        assert time.monotonic() - t0 >= 0.03
        s.sendall(b"LIST\r\n")
        got = lines_of(s, 5000)
        assert got.count(b"1 1\r\n") >= 4000, len(got)
        s.close()
        s = socket.create_connection((srv.host, srv.port), timeout=5)
        s.sendall(b"USER fakeuser\r\nPASS fakepass\r\nRETR 1\r\n")
        s.settimeout(5)
        buf = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            buf += d
        assert buf.endswith(b"+OK Logged in\r\n+OK 32 "), buf
        s.close()
        s = socket.create_connection((srv.host, srv.port), timeout=5)
        s.sendall(b"USER fakeuser\r\nPASS fakepass\r\nSTAT\r\n")
        assert lines_of(s, 2) == b"+OK\r\n+OK Logged in\r\n"
        s.settimeout(0.3)
        try:
            assert s.recv(100) == b"+OK", "hang_after sent more"
            s.recv(100)
            raise AssertionError("HANG did not hang")
        except socket.timeout:
            pass
        s.close()
    # APOP and the SASL mechanisms
    with FakePOP3(msgs, apop=True, sasl=list(SASL_MECHS),
                  tokens=["tok"]) as srv:
        p = poplib.POP3(srv.host, srv.port, timeout=5)
        assert "SASL" in p.capa() and "CRAM-MD5" in p.capa()["SASL"]
        p.apop(srv.user, srv.password)
        assert p.stat()[0] == 2
        p.quit()

        def auth(mech, *responses, ir=None):
            p = poplib.POP3(srv.host, srv.port, timeout=5)
            p._putcmd(f"AUTH {mech}" + (f" {b64(ir)}" if ir else ""))
            out = []
            line = p._getline()[0]
            for r in responses:
                out.append(line)
                if not line.startswith(b"+ "):
                    break
                chal = unb64(line[2:])
                p._putcmd(b64(r(chal) if callable(r) else r))
                line = p._getline()[0]
            p.close()
            return line
        u, pw = srv.user, srv.password
        assert auth("PLAIN", ir=f"\0{u}\0{pw}").startswith(b"+OK")
        assert auth("PLAIN", f"\0{u}\0{pw}").startswith(b"+OK")
        assert auth("PLAIN", ir=f"\0{u}\0no").startswith(b"-ERR [AUTH]")
        assert auth("LOGIN", u, pw).startswith(b"+OK")
        assert auth("LOGIN", u, "no").startswith(b"-ERR")
        cram = (lambda c: f"{u} " + hmac.new(pw.encode(), c,
                                              hashlib.md5).hexdigest())
        assert auth("CRAM-MD5", cram).startswith(b"+OK")
        assert auth("CRAM-MD5", lambda c: f"{u} 00").startswith(b"-ERR")
        xo = f"user={u}\1auth=Bearer tok\1\1"
        assert auth("XOAUTH2", ir=xo).startswith(b"+OK")
        assert auth("XOAUTH2", xo).startswith(b"+OK")
        bad = f"user={u}\1auth=Bearer bad\1\1"
        assert auth("XOAUTH2", "", ir=bad).startswith(b"-ERR [AUTH]")
        ob = f"n,a={u},\1host=h\1port=1\1auth=Bearer tok\1\1"
        assert auth("OAUTHBEARER", ir=ob).startswith(b"+OK")
        ob = f"n,a={u},\1host=h\1port=1\1auth=Bearer no\1\1"
        assert auth("OAUTHBEARER", "\1", ir=ob).startswith(b"-ERR")
        oks = [a.ok for c in srv.connections for a in c.auths]
        assert oks == [True, True, True, False, True, False, True, False,
                       True, True, False, True, False], oks
    # a zero-byte message
    with FakePOP3([b""]) as srv:
        p = poplib.POP3(srv.host, srv.port, timeout=5)
        p.user(srv.user)
        p.pass_(srv.password)
        assert p.list()[1] == [b"1 0"], p.list()
        assert p.retr(1)[1] == [], p.retr(1)
        p.quit()
    # STLS with a throw-away certificate
    try:
        import certs
    except ImportError:
        return
    with tempfile.TemporaryDirectory() as d:
        c = certs.make(d)
        with FakePOP3(msgs, tls=c.server, implicit_tls=False,
                      login_requires_tls=True) as srv:
            p = poplib.POP3(srv.host, srv.port, timeout=5)
            assert "STLS" in p.capa()
            p.stls(ssl.create_default_context(cafile=str(c.ca)))
            p.user(srv.user)
            p.pass_(srv.password)
            assert p.stat()[0] == 2
            p.quit()
            conn = srv.connections[0]
            k = conn.verbs().index("STLS")
            assert not any(cm.tls for cm in conn.commands[:k + 1])
            assert all(cm.tls for cm in conn.commands[k + 1:])
            assert "USER" in conn.verbs()[k + 1:]
    print("fakepop3 self-test: ok")


if __name__ == "__main__":
    _selftest()
