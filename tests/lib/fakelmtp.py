"""fakelmtp.py: a scriptable, fault-injecting LMTP server (RFC 2033).

An asyncio loop in a thread of the test process (see fakeserver.py),
listening on 127.0.0.1 port 0 (srv.port) or on a unix socket (unix=path):

    with fakelmtp.FakeLMTP() as srv:
        ... maild with deliver = lmtp, lmtp = f"127.0.0.1:{srv.port}"
        srv.delivered               # [bytes]: the messages taken (250),
                                    # CRLF made LF and dot-stuffing undone
        srv.transactions            # every DATA, taken or not (Txn)
        srv.connections[0].verbs()  # ["LHLO", "MAIL", "RCPT", "DATA", ...]

By default a correct LMTP server: a 220 greeting; LHLO answered with
PIPELINING, ENHANCEDSTATUSCODES and 8BITMIME; MAIL, RCPT (any address),
DATA (354 once a recipient was taken, else 503), after the final "." one
"250" per recipient taken; RSET, NOOP, QUIT.

Everything can be overridden:

  greeting=b"..."        the raw greeting, or a list of actions (None:
                         say nothing)
  pipelining=False       leave PIPELINING out of the LHLO reply
  caps=[...]             the LHLO capability lines (replaces the default)
  handlers={"RCPT": fn}  fn(conn, cmd) -> None (the default reply) or the
                         reply: bytes, or a list of actions (Sleep, DROP,
                         ABORT, HANG...: see fakeserver.py).  Verbs: LHLO,
                         MAIL, RCPT, DATA (the reply to the DATA command),
                         RSET, NOOP, QUIT, "*" (any command); and
                         "DOT": fn(conn, txn), the reply after the final
                         "." (for every recipient taken), and "BODY":
                         fn(conn, txn), called as each chunk of the
                         message arrives (txn.wire so far): what it
                         returns is sent at once (e.g. DROP or HANG).

Ready-made handlers: reply(bytes) for any verb, nth(n, bytes) (the
reply for the n-th such command or message over the whole server, the
default for the others), drop_in_body(nbytes), hang_in_body(nbytes).

A transaction (Txn) records: mail (the MAIL line), rcpts (taken), wire
(the raw bytes between 354 and the final ".", which ends it), data (wire
decoded: CRLF -> LF, leading dot removed), complete (the final "." came),
bare_lf / bare_cr (a line end that was not CRLF), replies (what the
server answered after "."), nth (1-based, server-wide).
"""

import os
import time

from fakeserver import (ABORT, DROP, HANG, LOOPBACK, BaseConn, Call, Drip,
                        Sleep, ThreadedServer)

__all__ = ["FakeLMTP", "Txn", "reply", "nth", "drop_in_body",
           "hang_in_body", "decode_wire", "encode_wire", "Sleep", "Drip",
           "Call", "DROP", "ABORT", "HANG", "LOOPBACK"]

CMD_LIMIT = 4096


def encode_wire(data):
    """A message (LF line ends) as a correct LMTP client sends it after
    354: every LF made CRLF, lines starting with "." doubled, a last line
    without LF ended, then ".\\r\\n"."""
    if not data:
        return b".\r\n"
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n"
                    for ln in lines) + b".\r\n"


def decode_wire(wire):
    """What was sent after 354 (the final ".\\r\\n" included) back in LF
    form: (data, bare_lf, bare_cr).  bare_lf: a LF without CR before it;
    bare_cr: a CR not followed by LF."""
    assert wire.endswith(b".\r\n"), wire[-20:]
    body = wire[:-3]
    bare_lf = b"\n" in body.replace(b"\r\n", b"")
    bare_cr = b"\r" in body.replace(b"\r\n", b"")
    if body and not body.endswith(b"\r\n"):
        bare_lf = True              # the final "." is not on a line
    out = []
    for ln in body.split(b"\r\n")[:-1] if body else []:
        out.append(ln[1:] if ln.startswith(b".") else ln)
    return b"".join(ln + b"\n" for ln in out), bare_lf, bare_cr


class Cmd:
    def __init__(self, line, t):
        self.line = line                # raw, without CRLF
        self.t = t
        word = line.split(b" ", 1)[0]
        self.verb = word.decode("ascii", "replace").upper()
        # MAIL FROM:<a>, RCPT TO:<b>: the path; else what follows
        self.arg = line[len(word):].strip()
        if self.verb in ("MAIL", "RCPT") and b":" in self.arg:
            self.arg = self.arg.split(b":", 1)[1].split(b" ", 1)[0]
        self.reply_end = None
        self.nth = self.conn_nth = 0

    def __repr__(self):
        return f"<Cmd {self.line[:60]!r}>"


class Txn:
    def __init__(self, conn, mail, rcpts, nth):
        self.conn = conn
        self.mail = mail
        self.rcpts = list(rcpts)
        self.nth = nth
        self.wire = bytearray()
        self.complete = False
        self.data = None
        self.bare_lf = self.bare_cr = False
        self.replies = []

    def __repr__(self):
        return (f"<Txn {self.nth} {len(self.wire)} bytes "
                f"complete={self.complete} replies={self.replies}>")


class Conn(BaseConn):
    def __init__(self, server, cid, peer):
        super().__init__(server, cid, peer)
        self.buf = bytearray()
        self.pos = 0            # stream offset of buf[0]
        self.mail = None
        self.rcpts = []
        self.txns = []


def reply(data):
    """A handler that always gives data (bytes or actions)."""
    return lambda conn, x: data


def nth(n, data):
    """A handler giving data for the n-th command (or message) of its kind
    over the whole server (1-based; n may be a set), the default for the
    others."""
    ns = n if isinstance(n, (set, frozenset, list, tuple)) else {n}
    return lambda conn, x: data if x.nth in ns else None


def drop_in_body(nbytes, which=1):
    """BODY handler: close the connection once nbytes of the which-th
    message arrived."""
    return lambda conn, txn: [DROP] if (txn.nth == which and
                                        len(txn.wire) >= nbytes) else None


def hang_in_body(nbytes, which=1):
    """BODY handler: stop answering (and reading) once nbytes of the
    which-th message arrived."""
    return lambda conn, txn: [HANG] if (txn.nth == which and
                                        len(txn.wire) >= nbytes) else None


class FakeLMTP(ThreadedServer):
    thread_name = "fakelmtp"

    def __init__(self, greeting=b"220 fakelmtp.example LMTP ready\r\n",
                 pipelining=True, caps=None, handlers=None, unix=None,
                 host=LOOPBACK):
        super().__init__(host=host)
        self.greeting = greeting
        if caps is None:
            caps = ["ENHANCEDSTATUSCODES", "8BITMIME"]
            if pipelining:
                caps.insert(0, "PIPELINING")
        self.caps = caps
        self.handlers = dict(handlers or {})
        if unix:
            self.unix = str(unix)
            if os.path.exists(self.unix):
                os.unlink(self.unix)
        self.transactions = []
        self.delivered = []
        self.txn_count = 0

    def _new_conn(self, cid, peer):
        return Conn(self, cid, peer)

    # -- reading -----------------------------------------------------------
    async def _fill(self, conn, reader):
        chunk = await reader.read(65536)
        if not chunk:
            return False
        conn.buf += chunk
        return True

    async def _readline(self, conn, reader):
        while b"\n" not in conn.buf:
            if len(conn.buf) > CMD_LIMIT:
                return None
            if not await self._fill(conn, reader):
                return None
        i = conn.buf.index(b"\n")
        line = bytes(conn.buf[:i + 1])
        del conn.buf[:i + 1]
        conn.pos += i + 1
        # when its LF arrived (not when it is read): pipelining shows
        conn.line_t = reader.time_of(conn.pos)
        return line

    async def _send(self, conn, writer, resp, cmd=None):
        if resp is None:
            return True
        return await self._emit(conn, writer, resp, cmd)

    # -- the protocol ------------------------------------------------------
    async def _serve(self, conn, reader, writer):
        conn.greeting_end = time.monotonic()
        if self.greeting is not None:
            if not await self._send(conn, writer, self.greeting):
                return
        conn.greeting_end = time.monotonic()
        conn.state = "ready"
        while True:
            line = await self._readline(conn, reader)
            if line is None:
                conn.closed_by = conn.closed_by or "client"
                return
            cmd = Cmd(line.rstrip(b"\r\n"), conn.line_t)
            conn.count(cmd)
            conn.commands.append(cmd)
            resp = None
            for key in (cmd.verb, "*"):
                h = self.handlers.get(key)
                if h is not None:
                    resp = h(conn, cmd)
                    if resp is not None:
                        break
            if resp is not None:
                if not await self._send(conn, writer, resp, cmd):
                    return
                if cmd.verb == "QUIT":
                    return
                if cmd.verb == "DATA" and resp and \
                        bytes(resp if isinstance(resp, (bytes, bytearray))
                              else b"").startswith(b"354"):
                    if not await self._data(conn, reader, writer):
                        return
                continue
            if not await self._default(conn, reader, writer, cmd):
                return

    async def _default(self, conn, reader, writer, cmd):
        v = cmd.verb
        if v == "LHLO":
            conn.mail, conn.rcpts = None, []
            lines = ["fakelmtp.example"] + self.caps
            text = "".join(f"250{'-' if i < len(lines) - 1 else ' '}{ln}"
                           "\r\n" for i, ln in enumerate(lines))
            return await self._send(conn, writer, text.encode(), cmd)
        if v == "MAIL":
            conn.mail, conn.rcpts = cmd.line, []
            return await self._send(conn, writer, b"250 2.1.0 OK\r\n", cmd)
        if v == "RCPT":
            if conn.mail is None:
                return await self._send(conn, writer,
                                        b"503 5.5.1 MAIL first\r\n", cmd)
            conn.rcpts.append(cmd.arg)
            return await self._send(conn, writer, b"250 2.1.5 OK\r\n", cmd)
        if v == "DATA":
            if not conn.rcpts:
                return await self._send(conn, writer,
                                        b"503 5.5.1 No valid recipients\r\n",
                                        cmd)
            if not await self._send(conn, writer,
                                    b"354 OK, end with <CRLF>.<CRLF>\r\n",
                                    cmd):
                return False
            return await self._data(conn, reader, writer)
        if v == "RSET":
            conn.mail, conn.rcpts = None, []
            return await self._send(conn, writer, b"250 2.0.0 OK\r\n", cmd)
        if v == "NOOP":
            return await self._send(conn, writer, b"250 2.0.0 OK\r\n", cmd)
        if v == "QUIT":
            await self._send(conn, writer, b"221 2.0.0 Bye\r\n", cmd)
            conn.closed_by = "client"
            return False
        return await self._send(conn, writer,
                                b"500 5.5.2 Unknown command\r\n", cmd)

    async def _data(self, conn, reader, writer):
        """Read the message up to the final "."; answer for each
        recipient."""
        with self.lock:
            self.txn_count += 1
            txn = Txn(conn, conn.mail, conn.rcpts, self.txn_count)
            self.transactions.append(txn)
        conn.txns.append(txn)
        body_h = self.handlers.get("BODY")
        scanned = 0
        while True:
            # the end: ".\r\n" at the start, or "\r\n.\r\n"
            w = txn.wire
            w += conn.buf
            conn.pos += len(conn.buf)
            conn.buf.clear()
            if body_h is not None:
                resp = body_h(conn, txn)
                if resp is not None:
                    await self._send(conn, writer, resp)
                    return False
            end = -1
            if w.startswith(b".\r\n"):
                end = 3
            else:
                i = w.find(b"\r\n.\r\n", max(0, scanned - 4))
                if i != -1:
                    end = i + 5
            if end != -1:
                conn.buf += w[end:]
                conn.pos -= len(w) - end
                del w[end:]
                break
            scanned = len(w)
            if not await self._fill(conn, reader):
                conn.closed_by = conn.closed_by or "client"
                return False
        txn.complete = True
        txn.data, txn.bare_lf, txn.bare_cr = decode_wire(bytes(txn.wire))
        h = self.handlers.get("DOT")
        resp = h(conn, txn) if h is not None else None
        if resp is None:
            resp = b"".join(b"250 2.0.0 <" + r.strip(b"<>") +
                            b"> Saved\r\n" for r in txn.rcpts)
            txn.replies = [b"250"] * len(txn.rcpts)
        else:
            txn.replies = [resp]
        first = resp if isinstance(resp, (bytes, bytearray)) else next(
            (x for x in resp if isinstance(x, (bytes, bytearray))), b"")
        ok = bytes(first).startswith(b"250")
        if ok:
            with self.lock:
                self.delivered.append(txn.data)
        conn.mail, conn.rcpts = None, []
        return await self._send(conn, writer, resp)
