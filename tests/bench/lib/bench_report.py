"""Results tables for tests/bench/run: per-cell summary, peer/maild ratios and
the performance targets from the benchmark issue (PASS/FAIL)."""

import statistics

SCENARIOS = {
    "S1": "1 account x {messages} mixed messages, direct (no added latency)",
    "S2": "1 account x {messages} mixed messages, {rtt:g} ms RTT",
    "S3": "{s3_accounts} accounts x {s3_messages} messages, {rtt:g} ms RTT",
    "S4": "1 account x 1 message of {huge_mb:g} MB, direct",
    "S5": "nothing new: a poll of 1 account with {messages} messages already "
          "fetched (keep mode; priming run untimed), {rtt:g} ms RTT",
}

# The sizes the targets were written for (the defaults of tests/bench/run).
REFERENCE_SIZES = {"messages": 1000, "s3_accounts": 20, "s3_messages": 100,
                   "huge_mb": 50, "rtt_ms": 50}

REF = "maild"


def fmt_med(vals, nd=2):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    m = statistics.median(vals)
    if len(vals) == 1:
        return f"{m:.{nd}f}"
    return f"{m:.{nd}f} ({min(vals):.{nd}f}-{max(vals):.{nd}f})"


def _med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


class Cell:
    """All runs of one client in one scenario."""

    def __init__(self, runs):
        self.runs = runs
        self.good = [r for r in runs if "error" not in r]
        self.ok = [r for r in self.good
                   if r["rc"] in r.get("ok_exit", [0]) and not r["timed_out"]]
        self.timed_out = any(r.get("timed_out") for r in self.good)
        ok_ids = {id(r) for r in self.ok}
        self.correct = (bool(self.good) and len(self.good) == len(runs)
                        and all(id(r) in ok_ids and r["verify"]["all_ok"]
                                and r["server_state_ok"]
                                and not r.get("prime_failed")
                                for r in self.good))
        # timings come from the successful runs (a run that failed half-way,
        # or hung until a timeout, says little about speed); from all of
        # them only if none succeeded
        self.measured = self.ok or self.good
        m = self.measured
        self.wall = _med([r["wall"] for r in m])
        self.cpu = _med([r.get("user", 0) + r.get("sys", 0) for r in m])
        self.rss = _med([r.get("maxrss_kb", 0) / 1024 for r in m])
        self.rss_max = max([r.get("maxrss_kb", 0) / 1024 for r in m],
                           default=None)

    def why_not_correct(self):
        if not self.runs:
            return "not run"
        if len(self.good) < len(self.runs):
            return "harness error"
        if self.timed_out:
            return "timed out"
        ok_ids = {id(r) for r in self.ok}
        bad_rc = sorted({r["rc"] for r in self.good if id(r) not in ok_ids})
        if bad_rc:
            return f"exit status {bad_rc}"
        if any(r.get("prime_failed") for r in self.good):
            return "priming run failed"
        v = [r["verify"] for r in self.good]
        lost = max(x["lost"] for x in v)
        dup = max(x["duplicated"] for x in v)
        cor = max(x["corrupted"] for x in v)
        if lost or dup or cor:
            return f"lost/dup/corrupt {lost}/{dup}/{cor}"
        if any(not x["all_ok"] for x in v):
            return "misdelivered or files left in tmp/"
        if any(not r["server_state_ok"] for r in self.good):
            return "server mailbox not as expected"
        return ""


def cells(results):
    """{scenario: {client: Cell}} in first-seen order."""
    out = {}
    for r in results:
        out.setdefault(r["scenario"], {}).setdefault(r["client"], []).append(r)
    return {sc: {c: Cell(rs) for c, rs in d.items()} for sc, d in out.items()}


def _ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def _x(v, nd=1):
    return "-" if v is None else f"{v:.{nd}f}x"


# ---------------------------------------------------------------- targets
def targets(cs, sizes_differ=False):
    """Evaluate the issue's targets; a list of dicts (scenario, target,
    measured, result) with result PASS, FAIL or n/a."""
    out = []

    def add(sc, target, measured, result):
        out.append({"scenario": sc, "target": target, "measured": measured,
                    "result": result})

    def ref_cell(sc):
        m = cs.get(sc, {}).get(REF)
        if m is None or not m.good:
            return None, "maild not run"
        if not m.correct:
            return m, f"maild runs not all correct ({m.why_not_correct()})"
        return m, None

    def faster(sc, peer, factor, what):
        """maild wall <= peer wall / factor  (factor < 1: a fraction of)"""
        m, err = ref_cell(sc)
        p = cs.get(sc, {}).get(peer)
        if p is None or not p.good:
            add(sc, what, f"{peer} not run", "n/a")
            return
        if err:
            add(sc, what, err, "FAIL")
            return
        r = _ratio(p.wall, m.wall)
        lb = ">= " if p.timed_out else ""
        meas = (f"maild {m.wall:.2f} s, {peer} {lb}{p.wall:.2f} s: "
                f"{peer}/maild = {lb}{r:.2f}x")
        if not p.correct:
            meas += f" ({peer}: {p.why_not_correct()})"
        add(sc, what, meas, "PASS" if r >= factor else "FAIL")

    # S1: wall <= 0.6 x mpop, CPU <= 0.7 x mpop
    if "S1" in cs:
        faster("S1", "mpop", 1 / 0.6, "maild wall <= 0.6 x mpop's")
        m, err = ref_cell("S1")
        p = cs["S1"].get("mpop")
        what = "maild CPU <= 0.7 x mpop's"
        if p is None or not p.good:
            add("S1", what, "mpop not run", "n/a")
        elif err:
            add("S1", what, err, "FAIL")
        else:
            r = _ratio(m.cpu, p.cpu)
            meas = (f"maild {m.cpu:.2f} s, mpop {p.cpu:.2f} s: maild/mpop = "
                    + ("-" if r is None else f"{r:.2f}x"))
            add("S1", what, meas,
                "n/a" if r is None else ("PASS" if r <= 0.7 else "FAIL"))
    # S2: >= 2x faster than mpop, >= 30x faster than the others
    if "S2" in cs:
        faster("S2", "mpop", 2, "maild >= 2x faster than mpop")
        for peer in ("fetchmail", "getmail6", "fdm"):
            faster("S2", peer, 30, f"maild >= 30x faster than {peer}")
    # S3: >= 5x faster than the fastest peer
    if "S3" in cs:
        peers = {c: x for c, x in cs["S3"].items()
                 if c != REF and x.good and x.wall is not None}
        what = "maild >= 5x faster than the fastest peer"
        if not peers:
            add("S3", what, "no peer run", "n/a")
        else:
            best = min(peers, key=lambda c: peers[c].wall)
            faster("S3", best, 5, what + f" ({best})")
    # S4: peak RSS < 8 MiB (worst run)
    if "S4" in cs:
        m, err = ref_cell("S4")
        what = "maild peak RSS < 8 MiB"
        if m is None:
            add("S4", what, err, "n/a")
        else:
            meas = f"maild max RSS {m.rss_max:.1f} MiB (worst run)"
            if err:
                add("S4", what, meas + "; " + err, "FAIL")
            else:
                add("S4", what, meas, "PASS" if m.rss_max < 8 else "FAIL")
    # S5: maild < 0.4 s
    if "S5" in cs:
        m, err = ref_cell("S5")
        what = "maild < 0.4 s"
        if m is None:
            add("S5", what, err, "n/a")
        else:
            meas = f"maild {m.wall:.2f} s (median)"
            if err:
                add("S5", what, meas + "; " + err, "FAIL")
            else:
                add("S5", what, meas, "PASS" if m.wall < 0.4 else "FAIL")
    if sizes_differ:
        for t in out:
            if t["result"] in ("PASS", "FAIL"):
                t["result"] += " (other sizes)"
    return out


# ---------------------------------------------------------------- markdown
def markdown(env, args, results):
    fmt = {"messages": args["messages"], "rtt": args["rtt_ms"],
           "huge_mb": args["huge_mb"], "s3_accounts": args["s3_accounts"],
           "s3_messages": args["s3_messages"]}
    sizes_differ = any(args.get(k) != v for k, v in REFERENCE_SIZES.items())
    cs = cells(results)
    vers = env.get("clients", {})
    lines = ["# maild benchmark", "",
             f"Command: `{env.get('command', '?')}`  ",
             f"Date: {env.get('date_utc', '?')}  ",
             f"Machine: {env.get('cpus', '?')} CPUs ({env.get('cpu_model', '?')}), "
             f"{env.get('mem_mib', '?')} MiB RAM, kernel {env.get('kernel', '?')}, "
             f"{env.get('os', '?')}, load average at start "
             f"{env.get('loadavg_start', '?')}  ",
             f"Server: Dovecot {env.get('dovecot', '?')} (POP3S, TLS 1.2+), "
             f"delay proxy {args['rtt_ms']:g} ms RTT"
             + (f", {args['rate_mbit']:g} Mbit/s" if args.get("rate_mbit") else "")
             + "  ",
             f"maild: {env.get('maild', {}).get('version', '?')}"
             + (f", git {env['maild']['git']}" if env.get("maild", {}).get("git")
                else "")
             + (f", binary sha256 {env['maild']['sha256'][:12]}"
                if env.get("maild", {}).get("sha256") else "") + "  ",
             "Peers: " + ", ".join(f"{v}" for c, v in vers.items() if c != REF)
             + "  ",
             f"Mailboxes (server and clients) on: {env.get('data_fs', '?')}  ",
             f"Clients run as {env.get('run_as') or 'the invoking user'}; "
             f"mode {args['mode']} (S5 always keep); {args['runs']} run(s) per "
             "cell" + ("; QUICK (smoke) sizes" if args.get("quick") else ""),
             ""]
    for sc in cs:
        lines.append(f"- **{sc}**: {SCENARIOS[sc].format(**fmt)}")
    lines += ["",
              "| Scenario | Client | Runs ok | Wall s, median (min-max) | "
              "CPU user+sys s | (user / sys) | Max RSS MiB | "
              "Lost / Dup / Corrupt | Server CPU s | Notes |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for sc, row in cs.items():
        for client, c in row.items():
            rs = c.runs
            notes = []
            if any("error" in r for r in rs):
                notes.append("error: " + next(r["error"] for r in rs
                                               if "error" in r)[:120])
            if c.timed_out:
                notes.append(f"capped: killed after {args['timeout']:g} s")
            bad_rc = sorted({r["rc"] for r in c.good
                             if r["rc"] not in r.get("ok_exit", [0])
                             and not r["timed_out"]})
            if bad_rc:
                notes.append(f"exit status {bad_rc}")
            if not c.good:
                lines.append(f"| {sc} | {client} | 0/{len(rs)} | - | - | - | - "
                             f"| - | - | {'; '.join(notes)} |")
                continue
            g = c.good
            lost = max(r["verify"]["lost"] for r in g)
            dup = max(r["verify"]["duplicated"] for r in g)
            cor = max(r["verify"]["corrupted"] for r in g)
            ben = max(r["verify"]["benign"] for r in g)
            if ben:
                kinds = set()
                for r in g:
                    kinds |= {k.replace("special:", "")
                              for k in r["verify"]["benign_kinds"]}
                notes.append(f"{ben} corrupt = benign ({', '.join(sorted(kinds))})")
            if any(r["verify"]["ok_trace_headers"] for r in g):
                notes.append("trace headers added")
            if any(r["verify"]["misdelivered"] for r in g):
                notes.append("misdelivered")
            if any(r["verify"]["tmp_leftovers"] for r in g):
                notes.append("files left in tmp/")
            if any(not r["server_state_ok"] for r in g):
                notes.append("server mailbox not as expected after run "
                             f"({g[0]['server_left']} left)")
            if any(r.get("prime_failed") for r in g):
                notes.append("priming run failed")
            nz = [r for r in g if r.get("noisy")]
            if nz:
                notes.append(f"{len(nz)} run(s) with other CPU load (up to "
                             f"{max(r['other_cpu'] for r in nz):.1f} CPU-s)")
            m = c.measured
            if c.ok and len(c.ok) < len(g):
                notes.append(f"times: the {len(c.ok)} successful run(s)")
            elif not c.ok:
                notes.append("times: failed runs")
            wall = [r["wall"] for r in m]
            cpu = [r.get("user", 0) + r.get("sys", 0) for r in m]
            rss = [r.get("maxrss_kb", 0) / 1024 for r in m]
            srv = [r["server_cpu"] for r in m]
            us = (f"{_med([r.get('user', 0) for r in m]):.2f} / "
                  f"{_med([r.get('sys', 0) for r in m]):.2f}")
            lines.append(
                f"| {sc} | {client} | {len(c.ok)}/{len(rs)} | {fmt_med(wall)} | "
                f"{fmt_med(cpu)} | {us} | {fmt_med(rss, 1)} | "
                f"{lost} / {dup} / {cor} | {fmt_med(srv)} | {'; '.join(notes)} |")

    # ratios
    peers = list(dict.fromkeys(c for row in cs.values() for c in row if c != REF))
    if peers and any(REF in row for row in cs.values()):
        lines += ["", "Peer / maild (medians; above 1x = maild is faster, "
                  "uses less CPU or less memory):", "",
                  "| Scenario | " + " | ".join(peers) + " |",
                  "|---|" + "---|" * len(peers)]
        for sc, row in cs.items():
            m = row.get(REF)
            if m is None or not m.good:
                continue
            cellstr = []
            for p in peers:
                x = row.get(p)
                if x is None or not x.good:
                    cellstr.append("-")
                    continue
                lb = ">=" if x.timed_out else ""
                cellstr.append(
                    f"wall {lb}{_x(_ratio(x.wall, m.wall))}, "
                    f"CPU {_x(_ratio(x.cpu, m.cpu))}, "
                    f"RSS {_x(_ratio(x.rss, m.rss))}")
            lines.append(f"| {sc} | " + " | ".join(cellstr) + " |")

    # targets
    ts = targets(cs, sizes_differ)
    if ts:
        lines += ["", "Targets (from the benchmark issue):", "",
                  "| Scenario | Target | Measured | Result |",
                  "|---|---|---|---|"]
        for t in ts:
            lines.append(f"| {t['scenario']} | {t['target']} | {t['measured']} "
                         f"| **{t['result']}** |")
        if sizes_differ:
            lines += ["", "The targets were set for the default sizes (1000 "
                      "messages, 20 x 100, 50 MB, 50 ms); with other sizes "
                      "their verdicts are only indicative."]

    lines += ["",
              "Wall: measured around `/usr/bin/time -v` (median of the successful "
              "runs, min-max in brackets). CPU: user+sys of the client and all its "
              "children (e.g. fetchmail's MDA), from `time -v`; (user / sys): "
              "the medians of each. Max RSS: the "
              "largest single process of the client's tree. Lost / Dup / "
              "Corrupt: worst run; byte-exact comparison after CRLF->LF "
              "('benign' = differs only by header re-folding or an added empty "
              "line after a headers-only message). Server CPU: Dovecot, all its "
              "processes, during the timed run. 'Other CPU load': CPU used by "
              "unrelated processes during the run (the machine was shared)."]
    return "\n".join(lines) + "\n", ts
