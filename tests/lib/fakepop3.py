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
  login_requires_tls=True    refuse USER/PASS before TLS
  lock_mailbox=True          a second simultaneous login gets -ERR [IN-USE]

What a handler (or greeting) returns: bytes (sent as is), None (default
response), or a list / generator of actions, which may be infinite:
bytes, Sleep(sec), Drip(bytes, interval), DROP (close the connection),
ABORT (reset it), HANG (answer nothing more; wait for the client to go).
conn.default(cmd) gives the default response's bytes (with its side
effects, e.g. DELE marks the message), so handlers can corrupt or cut it.
Ready-made handlers: drop_after(nbytes, nth), hang_after(nbytes, nth),
drip_response(interval), endless_listing(), raw(bytes).

Every connection is recorded in srv.connections (a Conn): the command lines
received (cmd.line raw bytes, cmd.tls, cmd.t arrival time), whether TLS
came up (conn.tls_error otherwise), conn.pipelined() (a command arrived
before the answer to the previous one was written: only a pipelining
client does that).
"""

import asyncio
import itertools
import ssl
import threading
import time

try:
    import tap
except ImportError:         # used on its own
    tap = None

LOOPBACK = "127.0.0.1"
LINE_LIMIT = 64 * 1024


# ---------------------------------------------------------------------------
# actions a handler can return

class Sleep:
    def __init__(self, seconds):
        self.seconds = seconds


class Drip:
    """Send data one byte (or chunk bytes) at a time, interval apart."""

    def __init__(self, data, interval, chunk=1):
        self.data = data
        self.interval = interval
        self.chunk = chunk


class _Marker:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


DROP = _Marker("DROP")      # close the connection (FIN)
ABORT = _Marker("ABORT")    # reset the connection (RST)
HANG = _Marker("HANG")      # stop answering, keep the connection open


# ---------------------------------------------------------------------------
# the mailbox

def wire_body(data):
    """A message (bytes, LF or CRLF line ends) as sent after +OK of RETR:
    CRLF line ends, dot-stuffed, terminated by ".\\r\\n"."""
    data = data.replace(b"\r\n", b"\n")
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

    def __repr__(self):
        return f"<Cmd {self.line!r}>"


class _TimedReader(asyncio.StreamReader):
    """Notes when each line's LF arrived."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.arrivals = []

    def feed_data(self, data):
        now = time.monotonic()
        self.arrivals.extend([now] * data.count(b"\n"))
        super().feed_data(data)


class Conn:
    """One client connection, as recorded by the server."""

    def __init__(self, server, cid, peer):
        self.server = server
        self.id = cid
        self.peer = peer
        self.tls = False
        self.tls_error = None       # why the TLS handshake failed
        self.commands = []          # [Cmd]
        self.greeting_end = None
        self.state = "connect"      # connect, auth, transaction, closed
        self.user = None
        self.session = None         # [Msg] snapshot at login
        self.deleted = set()        # indexes into session
        self.closing = False
        self.stls_pending = False
        self.closed_by = None       # "client", "server", "error", "stop"
        self.error = None
        self.counts = {}
        self.bytes_out = 0
        self.writer = None
        self.reader = None

    # -- introspection for the tests ----------------------------------
    def verbs(self):
        return [c.verb for c in self.commands]

    def lines(self):
        return [c.line for c in self.commands]

    def pipelined(self):
        """Commands that arrived before the answer to the previous command
        (or the greeting) was completely written: proof of pipelining."""
        out = []
        prev_end = self.greeting_end
        for c in self.commands:
            if prev_end is not None and c.t < prev_end:
                out.append(c)
            prev_end = c.reply_end
        return out

    def __repr__(self):
        return (f"<Conn {self.id} tls={self.tls} "
                f"{' '.join(self.verbs())[:200]}>")

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


# ---------------------------------------------------------------------------
# the server

class FakePOP3:
    def __init__(self, messages=(), user="fakeuser", password="fakepass",
                 tls=None, implicit_tls=None, stls=None, host=LOOPBACK,
                 greeting=b"+OK fakepop3 ready\r\n", capa=None,
                 capa_err=False, pipelining=True, handlers=None, drip=None,
                 login_requires_tls=False, lock_mailbox=False,
                 resp_codes=True, extra_capa=()):
        """tls: (certfile, keyfile) or an ssl.SSLContext.  implicit_tls
        defaults to True when tls is given; stls (offer STLS on a plain
        connection) defaults to not implicit_tls."""
        self.host = host
        self.user = user
        self.password = password
        self.ssl_context = None
        if tls is not None:
            if isinstance(tls, ssl.SSLContext):
                self.ssl_context = tls
            else:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(str(tls[0]), str(tls[1]))
                self.ssl_context = ctx
        self.implicit_tls = (tls is not None) if implicit_tls is None \
            else implicit_tls
        self.stls = (tls is not None and not self.implicit_tls) \
            if stls is None else stls
        self.greeting = greeting
        self.capa = capa
        self.capa_err = capa_err
        self.pipelining = pipelining
        self.resp_codes = resp_codes
        self.extra_capa = list(extra_capa)
        self.handlers = dict(handlers or {})
        self.drip = drip
        self.login_requires_tls = login_requires_tls
        self.lock_mailbox = lock_mailbox
        self.lock = threading.RLock()
        self.mailbox = []
        for m in messages:
            self.add(m)
        self.connections = []
        self.errors = []            # exceptions inside the server
        self.counts = {}
        self.port = None
        self._locked_by = None
        self._loop = None
        self._thread = None
        self._stop_ev = None
        self._ready = threading.Event()
        self._tasks = set()
        self._start_error = None
        self._cid = itertools.count(1)

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

    def commands(self):
        """All command lines received, over all connections."""
        return [c for conn in self.connections for c in conn.commands]

    def verbs(self):
        return [c.verb for c in self.commands()]

    # -- life cycle --------------------------------------------------------
    def start(self, timeout=10):
        self._thread = threading.Thread(target=self._run, name="fakepop3",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("fakepop3 did not start")
        if self._start_error is not None:
            raise self._start_error
        # stopped at the end of the running test at the latest
        if tap is not None and tap.current() is not None:
            tap.current().defer(self.stop)
        return self

    def stop(self, timeout=10):
        if self._thread is None:
            return
        if self._loop is not None and self._stop_ev is not None:
            try:
                self._loop.call_soon_threadsafe(self._stop_ev.set)
            except RuntimeError:
                pass            # loop already closed
        self._thread.join(timeout)
        alive = self._thread.is_alive()
        self._thread = None
        if alive:
            raise RuntimeError("fakepop3 thread did not stop within "
                               f"{timeout} s")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False

    def wait_idle(self, timeout=10):
        """Wait until no connection is being served."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(c.state == "closed" for c in self.connections):
                return True
            time.sleep(0.01)
        return False

    def _run(self):
        try:
            asyncio.run(self._main())
        except BaseException as e:      # noqa: B902
            self.errors.append(e)
            self._start_error = self._start_error or e
            self._ready.set()

    async def _main(self):
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stop_ev = asyncio.Event()
        loop.set_exception_handler(
            lambda lp, ctx: self.errors.append(ctx.get("exception")
                                               or ctx.get("message")))

        def factory():
            reader = _TimedReader(limit=LINE_LIMIT, loop=loop)
            return asyncio.StreamReaderProtocol(reader, self._client,
                                                loop=loop)
        try:
            server = await loop.create_server(factory, self.host, 0)
        except OSError as e:
            self._start_error = e
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop_ev.wait()
        server.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        try:
            await asyncio.wait_for(server.wait_closed(), 5)
        except (asyncio.TimeoutError, Exception):
            pass

    async def _client(self, reader, writer):
        task = asyncio.current_task()
        self._tasks.add(task)
        conn = Conn(self, next(self._cid), writer.get_extra_info("peername"))
        conn.writer = writer
        conn.reader = reader
        self.connections.append(conn)
        try:
            await self._serve(conn, reader, writer)
        except asyncio.CancelledError:
            conn.closed_by = conn.closed_by or "stop"
        except (ConnectionError, OSError) as e:
            conn.closed_by = conn.closed_by or "error"
            conn.error = conn.error or repr(e)
        except Exception as e:          # a bug in a handler or here
            conn.closed_by = "error"
            conn.error = repr(e)
            self.errors.append(e)
        finally:
            conn.state = "closed"
            if self._locked_by is conn:
                self._locked_by = None
            try:
                writer.close()
            except Exception:
                pass
            self._tasks.discard(task)

    async def _serve(self, conn, reader, writer):
        if self.implicit_tls:
            if not await self._start_tls(conn, writer):
                return
        conn.state = "auth"
        if self.greeting is not None:
            if not await self._emit(conn, writer, self.greeting):
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
            conn.commands.append(cmd)
            self.counts[cmd.verb] = self.counts.get(cmd.verb, 0) + 1
            conn.counts[cmd.verb] = conn.counts.get(cmd.verb, 0) + 1
            cmd.nth = self.counts[cmd.verb]
            cmd.conn_nth = conn.counts[cmd.verb]
            handler = self.handlers.get(cmd.verb) or self.handlers.get("*")
            resp = handler(conn, cmd) if handler else None
            if resp is None:
                resp = self._default(conn, cmd)
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

    async def _start_tls(self, conn, writer):
        try:
            await writer.start_tls(self.ssl_context,
                                   ssl_handshake_timeout=10)
        except (ssl.SSLError, OSError, ConnectionError,
                asyncio.TimeoutError) as e:
            conn.tls_error = f"{type(e).__name__}: {e}"
            conn.closed_by = "error"
            return False
        conn.tls = True
        return True

    async def _write(self, conn, writer, data, cmd):
        if not data:
            return
        if self.drip:
            for i in range(len(data)):
                writer.write(data[i:i + 1])
                await writer.drain()
                await asyncio.sleep(self.drip)
        else:
            writer.write(data)
        conn.bytes_out += len(data)
        if cmd is not None:
            cmd.reply_end = time.monotonic()
        await writer.drain()

    async def _emit(self, conn, writer, resp, cmd=None):
        """Send a response; False if the connection is to be closed."""
        if isinstance(resp, (bytes, bytearray, memoryview)):
            resp = [bytes(resp)]
        elif isinstance(resp, str):
            resp = [resp.encode()]
        for item in resp:
            if writer.transport.is_closing():
                conn.closed_by = conn.closed_by or "client"
                return False
            if isinstance(item, (bytes, bytearray)):
                await self._write(conn, writer, bytes(item), cmd)
            elif isinstance(item, str):
                await self._write(conn, writer, item.encode(), cmd)
            elif isinstance(item, Sleep):
                await asyncio.sleep(item.seconds)
            elif isinstance(item, Drip):
                d = item.data
                for i in range(0, len(d), item.chunk):
                    await self._write(conn, writer, d[i:i + item.chunk], cmd)
                    await asyncio.sleep(item.interval)
            elif item is DROP:
                conn.closed_by = "server"
                await writer.drain()
                writer.close()
                return False
            elif item is ABORT:
                conn.closed_by = "server"
                writer.transport.abort()
                return False
            elif item is HANG:
                conn.closed_by = "server"
                # wait until the client goes away (or the server stops)
                while await conn.reader.read(65536):
                    pass
                return False
            else:
                raise TypeError(f"bad response item {item!r}")
        if cmd is not None and cmd.reply_end is None:
            cmd.reply_end = time.monotonic()
        return True

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
        if conn.user != self.user or arg != self.password:
            conn.user = None
            return b"-ERR [AUTH] Authentication failed\r\n"
        with self.lock:
            if self.lock_mailbox:
                if self._locked_by is not None and \
                        self._locked_by.state != "closed":
                    return b"-ERR [IN-USE] Mailbox is locked\r\n"
                self._locked_by = conn
            conn.session = list(self.mailbox)
        conn.state = "transaction"
        return b"+OK Logged in\r\n"

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
