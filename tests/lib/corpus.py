"""corpus.py: deterministic test messages.

    msgs = corpus.generate(seed=1, count=100, prefix="user1")
    m.id      unique, also in the message's "X-Test-Id:" header
    m.data    the message as bytes, LF line endings: exactly what maild
              must write into the Maildir
    m.kind    "text", "alternative", "mime", "mime-large", "huge" or
              "special:<edge case>"

The same arguments always give the same bytes (for a given Python).

Size mix of the regular messages: 80 % 2-20 KB plain text, 15 % 20-100 KB
(text+HTML or a small attachment), 5 % 100 KB-2 MB with a base64
attachment (log-uniform); huge_bytes adds one message of that size.
With specials=True the POP3 edge cases in SPECIALS are spread over the
list (see special() for what each holds).
"""

import base64
import math
import random
import re
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

DOMAIN = "maild-test.example"

SPECIALS = ["dot-lines", "dot-foo", "many-dots", "headers-only",
            "empty-body", "long-line", "utf8-8bit", "trailing-whitespace",
            "from-lines", "long-headers", "blank-lines"]

_WORDS = (
    "the of and to in is that for it as was with be by on not he this are "
    "or his from at which but have an they you were her she there one all "
    "we their been has would when who will more no if out so said what up "
    "its about into than them can only other new some could time these two "
    "may then do first any my now such like our over man me even most made "
    "after also did many before must through back years where much your way "
    "well down should because each just those people how too little state "
    "good very make world still own see men work long get here between both "
    "mailbox server message delivery protocol network latency retrieve "
    "account folder archive invoice meeting report schedule project budget "
    "review release version update deadline customer support ticket draft"
).split()

_UTF8 = [
    "Grüße aus München – die Straße ist schön, Äpfel und Öl für morgen.",
    "Съешь же ещё этих мягких французских булок да выпей чаю.",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.",
    "我能吞下玻璃而不伤身体。邮件服务器正在同步。",
    "いろはにほへと ちりぬるを わかよたれそ つねならむ",
    "Příliš žluťoučký kůň úpěl ďábelské ódy. Zażółć gęślą jaźń.",
    "Emoji: \U0001F4EC \U0001F680 \u2705 \u2764\ufe0f \U0001F600",
    "Arabic: صباح الخير — Hebrew: שלום עולם — Thai: สวัสดีครับ",
]

_ID_RE = re.compile(rb"^X-Test-Id: ([^\r\n]*)", re.M | re.I)


class Message:
    __slots__ = ("id", "data", "kind")

    def __init__(self, id, data, kind="custom"):
        self.id = id
        self.data = data
        self.kind = kind

    def __repr__(self):
        return f"<Message {self.id} {self.kind} {len(self.data)} bytes>"


def test_id(data):
    """The X-Test-Id of a message (bytes), searched in its header only;
    None if there is none."""
    end = data.find(b"\n\n")
    head = data if end == -1 else data[:end + 1]
    m = _ID_RE.search(head)
    return m.group(1).decode("utf-8", "replace").strip() if m else None


class _Gen:
    def __init__(self, seed, prefix):
        self.seed = seed
        self.prefix = prefix
        self.rng = random.Random(f"maild-corpus:{seed}:{prefix}")
        pool_rng = random.Random(f"maild-corpus-pool:{seed}")
        self.pool = [self._line(pool_rng) for _ in range(2048)]

    @staticmethod
    def _line(rng):
        words, n = [], 0
        target = rng.randint(40, 76)
        while True:
            w = rng.choice(_WORDS)
            if n + len(w) + 1 > target and words:
                break
            words.append(w)
            n += len(w) + 1
        line = " ".join(words)
        return line[0].upper() + line[1:]

    def text(self, nbytes):
        out, size, rng, pool = [], 0, self.rng, self.pool
        while size < nbytes:
            for _ in range(rng.randint(2, 9)):
                ln = rng.choice(pool)
                out.append(ln)
                size += len(ln) + 1
            out[-1] += "."
            out.append("")
            size += 1
        return "\n".join(out) + "\n"

    def subject(self):
        rng = self.rng
        return " ".join(rng.choice(_WORDS)
                        for _ in range(rng.randint(2, 8))).capitalize()

    def headers(self, mid, idx, subject, ctype, extra=()):
        rng = self.rng
        date = datetime(2024, 1, 1, tzinfo=timezone.utc) + timedelta(
            minutes=idx * 37 + rng.randint(0, 30))
        sender = f"{rng.choice(_WORDS)}.{rng.choice(_WORDS)}"
        mx = rng.randint(1, 9)
        h = [
            f"Return-Path: <{sender}@example.org>",
            f"Received: from mx{mx}.example.net (mx{mx}.example.net "
            f"[192.0.2.{mx}])\n\tby pop.{DOMAIN} with ESMTPS id "
            f"{rng.getrandbits(48):012X}\n\tfor <{self.prefix}@{DOMAIN}>; "
            f"{format_datetime(date)}",
            f"From: \"{sender.title().replace('.', ' ')}\" "
            f"<{sender}@example.org>",
            f"To: {self.prefix}@{DOMAIN}",
            f"Subject: {subject}",
            f"Date: {format_datetime(date)}",
            f"Message-ID: <{self.seed}.{mid}@{DOMAIN}>",
            f"X-Test-Id: {mid}",
            "MIME-Version: 1.0",
        ]
        h += list(extra)
        if ctype:
            h.append(ctype)
        return "\n".join(h) + "\n"

    PLAIN = ("Content-Type: text/plain; charset=us-ascii\n"
             "Content-Transfer-Encoding: 7bit")

    def msg_text(self, mid, idx, size):
        h = self.headers(mid, idx, self.subject(), self.PLAIN)
        return h + "\n" + self.text(max(64, size - len(h)))

    def msg_mime(self, mid, idx, size):
        rng = self.rng
        b = f"=_maild_{idx}_{rng.getrandbits(32):08x}"
        h = self.headers(mid, idx, self.subject(),
                         f"Content-Type: multipart/mixed; boundary=\"{b}\"")
        intro = self.text(rng.randint(300, 2000))
        kind, ext = rng.choice([("application/pdf", "pdf"),
                                ("image/jpeg", "jpg"),
                                ("application/octet-stream", "bin")])
        fname = f"{rng.choice(_WORDS)}-{idx}.{ext}"
        head = (f"{h}\nThis is a multi-part message in MIME format.\n\n--{b}\n"
                "Content-Type: text/plain; charset=us-ascii\n"
                f"Content-Transfer-Encoding: 7bit\n\n{intro}\n--{b}\n"
                f"Content-Type: {kind}; name=\"{fname}\"\n"
                "Content-Transfer-Encoding: base64\n"
                f"Content-Disposition: attachment; filename=\"{fname}\"\n\n")
        tail = f"\n--{b}--\n"
        raw = max(16, int((size - len(head) - len(tail)) * 57 / 78))
        body = base64.encodebytes(rng.randbytes(raw)).decode("ascii")
        return head + body + tail

    def msg_alternative(self, mid, idx, size):
        rng = self.rng
        b = f"=_alt_{idx}_{rng.getrandbits(32):08x}"
        h = self.headers(mid, idx, self.subject(),
                         "Content-Type: multipart/alternative; "
                         f"boundary=\"{b}\"")
        t = self.text(max(200, (size - len(h)) // 2))
        html = "\n".join(["<html><body>"] + [
            f"<p>{p}</p>" for p in t.split("\n\n") if p.strip()] +
            ["</body></html>"]) + "\n"
        return (f"{h}\n--{b}\nContent-Type: text/plain; charset=us-ascii\n"
                f"Content-Transfer-Encoding: 7bit\n\n{t}\n--{b}\n"
                "Content-Type: text/html; charset=us-ascii\n"
                f"Content-Transfer-Encoding: 7bit\n\n{html}\n--{b}--\n")

    def special(self, mid, idx, kind):
        rng, plain = self.rng, self.PLAIN
        if kind == "dot-lines":
            # dot-stuffing: lines starting with '.', a lone '.', '..'
            body = ("Lines starting with a dot must survive dot-stuffing.\n"
                    ".\n..\n...\n.leading dot\n. space after dot\n.\tTAB\n"
                    + self.text(1500) + ".\n.. two\n" + self.text(800)
                    + "The last line of this body is a single dot:\n.\n")
            return self.headers(mid, idx, "dot-stuffing", plain) + "\n" + body
        if kind == "dot-foo":
            body = (".foo\nThe first and the last line read '.foo'.\n"
                    + self.text(500) + ".foo\n")
            return self.headers(mid, idx, "dot foo", plain) + "\n" + body
        if kind == "many-dots":
            # every line starts with a dot, so stuffed dots straddle every
            # read and TLS record boundary somewhere
            lines = []
            size = 0
            while size < 60_000:
                ln = "." * rng.randint(1, 3) + rng.choice(self.pool)
                lines.append(ln)
                size += len(ln) + 1
            lines.append(".")
            return (self.headers(mid, idx, "dots everywhere", plain) + "\n"
                    + "\n".join(lines) + "\n")
        if kind == "headers-only":
            # no empty line at all: the message is a header block only
            return self.headers(mid, idx, "headers only, no blank line",
                                plain)
        if kind == "empty-body":
            return self.headers(mid, idx, "empty body", plain) + "\n"
        if kind == "long-line":
            long1 = " ".join(rng.choice(_WORDS) for _ in range(900))
            long2 = "x" * 20_000
            body = ("A very long line follows.\n" + long1 + "\n"
                    "And one without spaces:\n" + long2 + "\n"
                    "And a short one.\n")
            return self.headers(mid, idx, "long lines (>998 chars)",
                                plain) + "\n" + body
        if kind == "utf8-8bit":
            h = self.headers(mid, idx, "=?UTF-8?B?" + base64.b64encode(
                "Grüße – Привет – 你好".encode()).decode() + "?=",
                "Content-Type: text/plain; charset=utf-8\n"
                "Content-Transfer-Encoding: 8bit",
                extra=["X-Raw-8bit-Header: Grüße aus Köln"])
            return h + "\n" + "\n".join(rng.choice(_UTF8)
                                        for _ in range(120)) + "\n"
        if kind == "trailing-whitespace":
            body = ("trailing spaces   \ntrailing tab\t\n   \n\t\n"
                    + self.text(1000) + "last line with spaces  \n\n\n")
            return self.headers(mid, idx, "trailing whitespace",
                                plain) + "\n" + body
        if kind == "from-lines":
            body = ("From the desk of the tester: mbox-style lines\n"
                    "From here on, lines start with 'From '.\n"
                    ">From this one is already quoted.\n\n"
                    + self.text(2000) + "From the end.\n")
            return (self.headers(mid, idx, "From lines", plain) + "\n"
                    + body)
        if kind == "long-headers":
            refs = "\n\t".join(f"<{rng.getrandbits(64):016x}.{i}@{DOMAIN}>"
                               for i in range(40))
            tos = ",\n    ".join(f"{rng.choice(_WORDS)}{i}@example.org"
                                 for i in range(60))
            extra = [f"References: {refs}", f"Cc: {tos}",
                     "X-Unfolded-Long: " + "y" * 1500]
            subj = " ".join(rng.choice(_WORDS) for _ in range(40))
            subj = subj[:60] + "\n " + subj[60:]
            return (self.headers(mid, idx, subj, plain, extra) + "\n"
                    + self.text(3000))
        if kind == "blank-lines":
            body = "\n" * 50 + "text between blank lines\n" + "\n" * 50
            return self.headers(mid, idx, "blank lines", plain) + "\n" + body
        raise ValueError(f"unknown special message kind {kind!r}")

    def regular(self, mid, idx, allow_large=True):
        rng = self.rng
        r = rng.random()
        if r < 0.80 or (r >= 0.95 and not allow_large):
            return "text", self.msg_text(mid, idx, rng.randint(2_000, 20_000))
        if r < 0.95:
            size = rng.randint(20_000, 100_000)
            if rng.random() < 0.5:
                return "alternative", self.msg_alternative(mid, idx, size)
            return "mime", self.msg_mime(mid, idx, size)
        size = int(math.exp(rng.uniform(math.log(100_000),
                                        math.log(2_000_000))))
        return "mime-large", self.msg_mime(mid, idx, size)


def _special_positions(count, kinds):
    n = min(len(kinds), count)
    if n == 0:
        return {}
    return {k * count // n: kinds[k] for k in range(n)}


def generate(seed=1, count=50, prefix="box", huge_bytes=0, specials=True,
             max_large=None):
    """count messages (plus one of huge_bytes if given, placed in the
    middle), ids "<prefix>/<n>".  specials: True for all of SPECIALS, or a
    list of kinds.  max_large caps the 100 KB-2 MB messages."""
    g = _Gen(seed, prefix)
    kinds = list(SPECIALS) if specials is True else list(specials or [])
    spec = _special_positions(count, kinds)
    out = []
    large = 0
    for idx in range(count):
        mid = f"{prefix}/{idx:05d}"
        if idx in spec:
            kind = spec[idx]
            text = g.special(mid, idx, kind)
            kind = "special:" + kind
        else:
            kind, text = g.regular(mid, idx, allow_large=(
                max_large is None or large < max_large))
            if kind == "mime-large":
                large += 1
        out.append(Message(mid, text.encode("utf-8"), kind))
    if huge_bytes:
        mid = f"{prefix}/huge"
        text = g.msg_mime(mid, count, int(huge_bytes))
        out.insert(len(out) // 2, Message(mid, text.encode("ascii"), "huge"))
    return out


def simple(mid, body="Hello.\n", subject=None, extra_headers=()):
    """One small message with X-Test-Id mid (for fake-server tests)."""
    h = [f"From: sender@example.org", f"To: rcpt@{DOMAIN}",
         f"Subject: {subject or 'test ' + mid}",
         f"Message-ID: <{mid.replace('/', '.')}@{DOMAIN}>",
         f"X-Test-Id: {mid}"] + list(extra_headers)
    return Message(mid, ("\n".join(h) + "\n\n" + body).encode("utf-8"),
                   "simple")


def total_bytes(msgs):
    return sum(len(m.data) for m in msgs)
