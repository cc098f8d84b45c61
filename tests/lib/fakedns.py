"""fakedns.py: a tiny DNS server on 127.0.0.1 that answers by name, for
the tests of what maild says when a host name does not resolve.

    with fakedns.FakeDNS() as dns:
        dns.resolv_conf(path)       # "nameserver 127.0.0.1:<port>" + short
                                    # timeouts, for maild's evdns
        dns.queries                 # the names asked, in order

The first label of the name asked chooses the answer:

    nxdomain.*    NXDOMAIN (no such name)
    servfail.*    SERVFAIL (the name server failed)
    noaddr.*      an empty answer (the name exists, has no address)
    silent.*      no answer at all (maild's resolver times out)
    anything else NXDOMAIN

It answers over UDP only, and never with an address: no test may reach
anything but 127.0.0.1 / ::1.  evdns takes a port after the address on a
nameserver line (glibc does not, but maild resolves with evdns only).
"""

import socket
import struct
import threading

RCODE = {"nxdomain": 3, "servfail": 2, "noaddr": 0}


def _qname(packet):
    """The question's name (lower case) and the offset after the question,
    or (None, None) if the packet is not a query we understand."""
    labels, o = [], 12
    while o < len(packet):
        n = packet[o]
        if n == 0:
            return ".".join(labels).lower(), o + 5
        if n & 0xC0:
            return None, None
        labels.append(packet[o + 1:o + 1 + n].decode("ascii", "replace"))
        o += 1 + n
    return None, None


class FakeDNS:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.queries = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def resolv_conf(self, path, timeout=1, attempts=1):
        with open(path, "w") as f:
            f.write(f"nameserver 127.0.0.1:{self.port}\n"
                    "search invalid\n"
                    f"options timeout:{timeout} attempts:{attempts}\n")
        return path

    def _answer(self, packet):
        if len(packet) < 12:
            return None
        qid, flags = struct.unpack("!HH", packet[:4])
        if flags & 0x8000:              # a response, not a query
            return None
        name, end = _qname(packet)
        if name is None:
            return None
        self.queries.append(name)
        kind = name.split(".", 1)[0]
        if kind == "silent":
            return None
        rcode = RCODE.get(kind, 3)
        # QR, the query's opcode and RD, RA, the rcode
        out_flags = 0x8000 | (flags & 0x7900) | 0x0080 | rcode
        return struct.pack("!HHHHHH", qid, out_flags, 1, 0, 0, 0) + \
            packet[12:end]

    def _run(self):
        while not self._stop.is_set():
            try:
                packet, peer = self.sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            reply = self._answer(packet)
            if reply is not None:
                self.sock.sendto(reply, peer)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
