"""fakeserver.py: what the fake POP3 and IMAP servers share.

An asyncio loop in a background thread of the test process, serving
connections on 127.0.0.1 (or ::1) port 0, with implicit TLS or a later
upgrade (STLS, STARTTLS); the actions a handler may return instead of
plain bytes; TLS contexts; base64 and the SASL message formats.

Actions (in a list or a generator, which may be endless):
  bytes                 sent as is
  Sleep(sec)            wait
  Drip(data, interval, chunk=1)   send data chunk bytes at a time
  Call(fn)              run fn() in the server thread at that moment
                        (e.g. expunge a message mid-response); what it
                        returns (bytes, or None) is sent
  DROP                  close the connection (FIN)
  ABORT                 reset it (RST)
  HANG                  answer nothing more, wait for the client to go

A server listens on a unix socket instead of TCP when its unix attribute
is set to a path before start() (then port stays None).

A subclass provides _new_conn(cid, peer) -> a connection record (with the
attributes BaseConn sets) and async _serve(conn, reader, writer); it may
override _closed(conn), called when a connection ends.
"""

import asyncio
import base64
import collections
import itertools
import json
import re
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


class Call:
    """Run fn() in the server thread when the response gets there; send
    what it returns (bytes or str), if anything."""

    def __init__(self, fn):
        self.fn = fn


class _Marker:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


DROP = _Marker("DROP")      # close the connection (FIN)
ABORT = _Marker("ABORT")    # reset the connection (RST)
HANG = _Marker("HANG")      # stop answering, keep the connection open


# ---------------------------------------------------------------------------
# TLS contexts

_TLS_VERSIONS = {"1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1,
                 "1.2": ssl.TLSVersion.TLSv1_2,
                 "1.3": ssl.TLSVersion.TLSv1_3}


def server_context(cert, min_version=None, max_version=None, client_ca=None,
                   require_client_cert=True):
    """A server SSLContext for tls=: cert is (certfile, keyfile);
    min_version / max_version "1.2" or "1.3"; client_ca: ask for a client
    certificate signed by this CA (required unless require_client_cert
    is False)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    if min_version is not None:
        ctx.minimum_version = _TLS_VERSIONS[min_version]
    if max_version is not None:
        ctx.maximum_version = _TLS_VERSIONS[max_version]
    if client_ca is not None:
        ctx.load_verify_locations(cafile=str(client_ca))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert \
            else ssl.CERT_OPTIONAL
    return ctx


def as_context(tls):
    """tls= of a fake server: None, an SSLContext or (certfile, keyfile)."""
    if tls is None or isinstance(tls, ssl.SSLContext):
        return tls
    return server_context(tls)


# ---------------------------------------------------------------------------
# base64 and SASL

def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode("ascii")


def unb64(text):
    """Strict base64 decoding; None if text is not base64."""
    if isinstance(text, str):
        text = text.encode("latin-1")
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        return None


class Auth:
    """One login attempt as the server saw it."""

    def __init__(self, mech, ir=False, tls=False):
        self.mech = mech            # "USER", "LOGIN", "PLAIN", "XOAUTH2"...
        self.ir = ir                # the command carried a response
        self.tls = tls              # TLS was up when it started
        self.responses = []         # decoded client responses (bytes)
        self.user = None
        self.password = None        # PLAIN / LOGIN / IMAP LOGIN
        self.token = None           # XOAUTH2 / OAUTHBEARER bearer token
        self.ok = None              # True / False once decided
        self.cancelled = False
        self.error_sent = False     # an OAuth JSON error challenge

    def __repr__(self):
        return (f"<Auth {self.mech} ir={self.ir} ok={self.ok} "
                f"user={self.user!r}>")


def _text(data):
    return data.decode("utf-8", "replace")


def sasl_credentials(a, data):
    """Decode one client response of a PLAIN, XOAUTH2 or OAUTHBEARER
    exchange into a.user and a.password / a.token.  False if it is not
    well-formed."""
    if a.mech == "PLAIN":
        f = data.split(b"\0")
        if len(f) != 3:
            return False
        a.user, a.password = _text(f[1]), _text(f[2])
        return True
    if a.mech == "XOAUTH2":
        m = re.fullmatch(rb"user=([^\x01]*)\x01auth=Bearer "
                         rb"([^\x01]*)\x01\x01", data)
        if not m:
            return False
        a.user, a.token = _text(m.group(1)), _text(m.group(2))
        return True
    if a.mech == "OAUTHBEARER":
        m = re.fullmatch(rb"n,(?:a=([^,]*))?,\x01(.*)\x01\x01", data, re.S)
        if not m:
            return False
        a.user = _text((m.group(1) or b"").replace(b"=2C", b",").replace(
            b"=3D", b"="))
        for item in m.group(2).split(b"\x01"):
            k, _, v = item.partition(b"=")
            if k == b"auth" and v.startswith(b"Bearer "):
                a.token = _text(v[7:])
        return a.token is not None
    return False


def oauth_error(mech):
    """The base64 JSON error challenge a refused XOAUTH2 / OAUTHBEARER
    token gets (as Gmail sends it) before the final refusal."""
    if mech == "XOAUTH2":
        err = {"status": "401", "schemes": "Bearer",
               "scope": "https://mail.google.com/"}
    else:
        err = {"status": "invalid_token", "scope": "mail",
               "openid-configuration": "https://fake.test/.well-known/x"}
    return b64(json.dumps(err))


# ---------------------------------------------------------------------------
# connections

class TimedReader(asyncio.StreamReader):
    """Notes when each line's LF arrived (arrivals), and when the byte at
    each offset of the stream did (time_of)."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.arrivals = []
        self.fed = 0
        self.feeds = collections.deque()    # (end offset, time)

    def feed_data(self, data):
        now = time.monotonic()
        self.arrivals.extend([now] * data.count(b"\n"))
        self.fed += len(data)
        self.feeds.append((self.fed, now))
        super().feed_data(data)

    def time_of(self, offset):
        """When the byte before offset arrived (offsets asked for must
        not decrease)."""
        while len(self.feeds) > 1 and self.feeds[0][0] < offset:
            self.feeds.popleft()
        return self.feeds[0][1] if self.feeds else time.monotonic()


class BaseConn:
    """What every recorded connection has."""

    def __init__(self, server, cid, peer):
        self.server = server
        self.id = cid
        self.peer = peer
        self.tls = False
        self.tls_error = None       # why the TLS handshake failed
        self.commands = []          # [Cmd]
        self.greeting_end = None
        self.state = "connect"      # ... "closed" at the end
        self.closed_by = None       # "client", "server", "error", "stop"
        self.error = None
        self.counts = {}
        self.bytes_out = 0
        self.writer = None
        self.reader = None
        self.auths = []             # [Auth]
        self.client_cert = None     # getpeercert() after TLS
        self.wlock = None           # asyncio.Lock: one response at a time
        self.opened = time.monotonic()  # accepted
        self.closed_at = None       # monotonic time it was closed

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

    def count(self, cmd):
        """Number cmd (server-wide and in this connection) by its verb."""
        s = self.server
        s.counts[cmd.verb] = s.counts.get(cmd.verb, 0) + 1
        self.counts[cmd.verb] = self.counts.get(cmd.verb, 0) + 1
        cmd.nth = s.counts[cmd.verb]
        cmd.conn_nth = self.counts[cmd.verb]

    def __repr__(self):
        return (f"<Conn {self.id} tls={self.tls} "
                f"{' '.join(self.verbs())[:200]}>")


# ---------------------------------------------------------------------------
# the server thread

class ThreadedServer:
    thread_name = "fakeserver"

    def __init__(self, host=LOOPBACK, tls=None, implicit_tls=None,
                 drip=None):
        """tls: (certfile, keyfile) or an ssl.SSLContext; implicit_tls
        defaults to True when tls is given.  drip: send every response
        one byte at a time, drip seconds apart."""
        self.host = host
        self.ssl_context = as_context(tls)
        self.implicit_tls = (tls is not None) if implicit_tls is None \
            else implicit_tls
        self.drip = drip
        self.unix = None            # a unix socket's path instead of TCP
        self.lock = threading.RLock()
        self.connections = []
        self.errors = []            # exceptions inside the server
        self.counts = {}
        self.port = None
        self._loop = None
        self._thread = None
        self._stop_ev = None
        self._ready = threading.Event()
        self._tasks = set()
        self._start_error = None
        self._cid = itertools.count(1)

    def commands(self):
        """All command lines received, over all connections."""
        return [c for conn in self.connections for c in conn.commands]

    def verbs(self):
        return [c.verb for c in self.commands()]

    # -- life cycle --------------------------------------------------------
    def start(self, timeout=10):
        self._thread = threading.Thread(target=self._run,
                                        name=self.thread_name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"{self.thread_name} did not start")
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
            raise RuntimeError(f"{self.thread_name} thread did not stop "
                               f"within {timeout} s")

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

    def call(self, fn, timeout=10):
        """Run fn() in the server thread and return its result (for
        changes that must not race with a response being built)."""
        if self._loop is None or self._thread is None:
            return fn()
        done = threading.Event()
        box = {}

        def run():
            try:
                box["r"] = fn()
            except BaseException as e:     # noqa: B902 - handed back
                box["e"] = e
            done.set()
        self._loop.call_soon_threadsafe(run)
        if not done.wait(timeout):
            raise RuntimeError(f"{self.thread_name} did not run a call "
                               f"within {timeout} s")
        if "e" in box:
            raise box["e"]
        return box.get("r")

    def spawn(self, coro):
        """Run a coroutine as a task of the server (in its thread)."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _run(self):
        try:
            asyncio.run(self._main())
        except BaseException as e:      # noqa: B902
            self.errors.append(e)
            self._start_error = self._start_error or e
            self._ready.set()

    async def _main(self):
        loop = asyncio.get_running_loop()
        self._stop_ev = asyncio.Event()
        loop.set_exception_handler(
            lambda lp, ctx: self.errors.append(ctx.get("exception")
                                               or ctx.get("message")))

        def factory():
            reader = TimedReader(limit=LINE_LIMIT, loop=loop)
            return asyncio.StreamReaderProtocol(reader, self._client,
                                                loop=loop)
        try:
            if self.unix is not None:
                server = await loop.create_unix_server(factory, self.unix)
            else:
                server = await loop.create_server(factory, self.host, 0)
        except OSError as e:
            self._start_error = e
            self._ready.set()
            return
        if self.unix is None:
            self.port = server.sockets[0].getsockname()[1]
        self._loop = loop
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
        conn = self._new_conn(next(self._cid),
                              writer.get_extra_info("peername"))
        conn.writer = writer
        conn.reader = reader
        conn.wlock = asyncio.Lock()
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
            conn.closed_at = time.monotonic()
            conn.state = "closed"
            self._closed(conn)
            try:
                writer.close()
            except Exception:
                pass
            self._tasks.discard(task)

    def _new_conn(self, cid, peer):
        return BaseConn(self, cid, peer)

    async def _serve(self, conn, reader, writer):
        raise NotImplementedError

    def _closed(self, conn):
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
        try:
            conn.client_cert = writer.get_extra_info("peercert") or {}
        except Exception:
            conn.client_cert = {}
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
        """Send a response (one at a time per connection); False if the
        connection is to be closed."""
        async with conn.wlock:
            return await self._emit_locked(conn, writer, resp, cmd)

    async def _emit_locked(self, conn, writer, resp, cmd):
        if isinstance(resp, (bytes, bytearray, memoryview, str)):
            resp = [resp]
        for item in resp:
            if writer.transport.is_closing():
                conn.closed_by = conn.closed_by or "client"
                return False
            if isinstance(item, Call):
                item = item.fn()
                if item is None:
                    continue
            if isinstance(item, (bytes, bytearray, memoryview)):
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
