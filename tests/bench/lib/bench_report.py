"""Results tables for tests/bench/run: per-cell summary (and the push
scenarios' own tables), peer/maild ratios and the performance targets from
the benchmark issues (PASS/FAIL)."""

import statistics

SCENARIOS = {
    "S1": "1 account x {messages} mixed messages, direct (no added latency)",
    "S2": "1 account x {messages} mixed messages, {rtt:g} ms RTT",
    "S3": "{s3_accounts} accounts x {s3_messages} messages, {rtt:g} ms RTT",
    "S4": "1 account x 1 message of {huge_mb:g} MB, direct",
    "S5": "nothing new: a poll of 1 account with {messages} messages already "
          "fetched (keep mode; priming run untimed), {rtt:g} ms RTT",
    "I1": "IMAPS, 1 account x {messages} mixed messages, direct",
    "I2": "IMAPS, 1 account x {messages} mixed messages, {rtt:g} ms RTT",
    "I3": "IMAPS, {s3_accounts} accounts x {s3_messages} messages, "
          "{rtt:g} ms RTT",
    "I4": "IMAPS, nothing new: a poll of 1 account with {messages} messages "
          "already fetched (keep mode; priming run untimed), {rtt:g} ms RTT",
    "I5": "IMAPS push latency: the client in its IDLE mode on an empty INBOX, "
          "{push_messages} messages APPENDed one every {push_interval:g} s "
          "(keep mode), {rtt:g} ms RTT",
    "I6": "IMAPS, {idle_accounts} accounts holding IDLE in one process, "
          "direct: RSS and CPU over {idle_seconds:g} s of idling, then one "
          "message APPENDed to every account",
    "I7": "IMAPS, 1 account x 1 message of {huge_mb:g} MB, direct",
    "L1": "1 account x {messages} mixed messages, {rtt:g} ms RTT (as S2), "
          "maild delivering into its Maildir (maild) or over LMTP to the "
          "benchmark's Dovecot, unix socket (maild-lmtp)",
}
PUSH, IDLE = "I5", "I6"     # scenarios with their own tables
LMTP = "maild-lmtp"         # L1's other maild (tests/bench/run)
ALWAYS_KEEP = ("S5", "I4", "I5", "I6")

# The sizes the targets were written for (the defaults of tests/bench/run).
REFERENCE_SIZES = {"messages": 1000, "s3_accounts": 20, "s3_messages": 100,
                   "huge_mb": 50, "rtt_ms": 50, "push_messages": 20,
                   "push_interval": 2.0, "idle_accounts": 200}
# I6: "near-zero CPU while idle", as a number: under 1 % of one core.
IDLE_CPU_MAX = 0.01

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


def _cpu(r):
    """user + sys CPU seconds of a run; None if time -v wrote no report (a
    run killed at --timeout takes time itself down with it)."""
    return r["user"] + r["sys"] if "user" in r and "sys" in r else None


def _rss(r):
    """Max RSS of a run in MiB (None: no time -v report)."""
    return r["maxrss_kb"] / 1024 if "maxrss_kb" in r else None


def _us(rs):
    """The (user / sys) column."""
    u, s = _med([r.get("user") for r in rs]), _med([r.get("sys") for r in rs])
    return "-" if u is None or s is None else f"{u:.2f} / {s:.2f}"


def _trouble(d):
    """What went wrong in a push or idle run, in words ("" if nothing)."""
    s = f" ({d['error']})" if d.get("error") else ""
    if d.get("early_exit") is not None:
        s += f" (client exited by itself, rc {d['early_exit']})"
    return s


def push_line(pu):
    """One run of I5, in words."""
    s = f"{pu['arrived']}/{pu['appended']} arrived"
    if pu["median"] is not None:
        s += f", latency median {pu['median']:.3f} s, max {pu['max']:.3f} s"
    return s + _trouble(pu)


def idle_line(idle):
    """One run of I6, in words."""
    s = (f"{idle.get('sessions_idle', 0)}/{idle['accounts']} sessions in IDLE "
         f"after {idle.get('ready_s', 0):.1f} s")
    if "cpu" in idle:
        s += (f"; idling {idle['seconds']:.0f} s: CPU {idle['cpu']:.2f} s, "
              f"RSS {idle['rss_max_kb'] / 1024:.1f} MiB (peak of the session "
              f"so far {idle['hwm_kb'] / 1024:.1f}), {idle['ctxsw']} context "
              f"switches, {idle['sockets']} sockets")
    d = idle.get("delivery")
    if d:
        s += "; then " + push_line(d)
    return s + _trouble(idle)


def run_ok(r):
    """Did the run itself succeed (apart from what verify says)?"""
    if "push" in r:
        pu = r["push"]
        return (not pu.get("error") and pu.get("early_exit") is None
                and pu["arrived"] == pu["messages"])
    if "idle" in r:
        idle = r["idle"]
        d = idle.get("delivery") or {}
        return (not idle.get("error") and idle.get("early_exit") is None
                and d.get("arrived") == idle["accounts"])
    return r["rc"] in r.get("ok_exit", [0]) and not r["timed_out"]


class Cell:
    """All runs of one client in one scenario."""

    def __init__(self, runs):
        self.runs = runs
        self.na = runs[0]["na"] if runs and all("na" in r for r in runs) \
            else None
        runs = [r for r in runs if "na" not in r]
        self.good = [r for r in runs if "error" not in r]
        self.ok = [r for r in self.good if run_ok(r)]
        self.timed_out = any(r.get("timed_out") for r in self.good)
        ok_ids = {id(r) for r in self.ok}
        # maild is configured to add nothing: for it, "ok after removing
        # added headers" is not ok (byte-exact after CRLF -> LF)
        self.correct = (bool(self.good) and len(self.good) == len(runs)
                        and all(id(r) in ok_ids and r["verify"]["all_ok"]
                                and r["server_state_ok"]
                                and not r.get("prime_failed")
                                and not (r["client"] == REF and
                                         r["verify"]["ok_trace_headers"])
                                for r in self.good))
        # timings come from the successful runs (a run that failed half-way,
        # or hung until a timeout, says little about speed); from all of
        # them only if none succeeded
        self.measured = self.ok or self.good
        m = self.measured
        self.wall = _med([r["wall"] for r in m])
        self.cpu = _med([_cpu(r) for r in m])
        self.rss = _med([_rss(r) for r in m])
        self.rss_max = max([x for x in map(_rss, m) if x is not None],
                           default=None)

    def why_not_correct(self):
        if not self.runs:
            return "not run"
        if self.na:
            return "n/a"
        if len(self.good) < len([r for r in self.runs if "na" not in r]):
            return "harness error"
        if self.timed_out:
            return "timed out"
        ok_ids = {id(r) for r in self.ok}
        bad = [r for r in self.good if id(r) not in ok_ids]
        for r in bad:
            if "push" in r:
                return push_line(r["push"])
            if "idle" in r:
                return idle_line(r["idle"])
        bad_rc = sorted({r["rc"] for r in bad})
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
        if any(r["client"] == REF and x["ok_trace_headers"]
               for r, x in zip(self.good, v)):
            return "headers added"
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
    """Evaluate the issues' targets; a list of dicts (scenario, target,
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

    def vs_fastest(sc, factor):
        """maild >= factor x faster than the fastest peer (by median wall;
        a peer that loses messages still counts: it is noted)."""
        peers = {c: x for c, x in cs[sc].items()
                 if c != REF and x.good and x.wall is not None}
        what = f"maild >= {factor:g}x faster than the fastest peer"
        if not peers:
            add(sc, what, "no peer run", "n/a")
        else:
            best = min(peers, key=lambda c: peers[c].wall)
            faster(sc, best, factor, what + f" ({best})")

    def under(sc, what, value, fmt, limit):
        """maild's value(cell) below limit (value of a correct cell)."""
        m, err = ref_cell(sc)
        if m is None:
            add(sc, what, err, "n/a")
            return
        if value(m) is None:
            add(sc, what, "not measured" + (f"; {err}" if err else ""),
                "FAIL")
            return
        meas = fmt.format(value(m))
        if err:
            add(sc, what, meas + "; " + err, "FAIL")
        else:
            add(sc, what, meas, "PASS" if value(m) < limit else "FAIL")

    def max_rss(sc, limit):
        under(sc, f"maild peak RSS < {limit:g} MiB", lambda m: m.rss_max,
              "maild max RSS {:.1f} MiB (worst run)", limit)

    def wall_under(sc, limit):
        under(sc, f"maild < {limit:g} s", lambda m: m.wall,
              "maild {:.2f} s (median)", limit)

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
    if "S3" in cs:
        vs_fastest("S3", 5)
    if "S4" in cs:
        max_rss("S4", 8)
    if "S5" in cs:
        wall_under("S5", 0.4)
    # IMAP (issue 12)
    for sc, factor in (("I1", 1.5), ("I2", 1.5), ("I3", 4)):
        if sc in cs:
            vs_fastest(sc, factor)
    if "I4" in cs:
        wall_under("I4", 0.4)
    if "I7" in cs:
        max_rss("I7", 8)
    if "L1" in cs:
        lmtp_target(cs, ref_cell, add)
    if PUSH in cs:
        push_targets(cs, ref_cell, add)
    if IDLE in cs:
        idle_targets(cs, ref_cell, add)
    if sizes_differ:
        for t in out:
            if t["result"] in ("PASS", "FAIL"):
                t["result"] += " (other sizes)"
    return out


def lmtp_target(cs, ref_cell, add):
    """L1 (issue 14): LMTP delivery's wall time within 1.5x of Maildir
    delivery's, in the same run; both must be correct."""
    what = "maild-lmtp wall <= 1.5 x maild's (Maildir)"
    m, err = ref_cell("L1")
    x = cs["L1"].get(LMTP)
    if m is None or x is None or not x.good:
        add("L1", what, err or f"{LMTP} not run", "n/a")
        return
    if not x.correct:
        err = (err + "; " if err else "") + \
            f"{LMTP} runs not all correct ({x.why_not_correct()})"
    r = _ratio(x.wall, m.wall)
    meas = (f"maild {m.wall:.2f} s, {LMTP} {x.wall:.2f} s: "
            f"{LMTP}/maild = " + ("-" if r is None else f"{r:.2f}x"))
    if err:
        add("L1", what, meas + "; " + err, "FAIL")
    else:
        add("L1", what, meas, "PASS" if r is not None and r <= 1.5
            else "FAIL")


def push_targets(cs, ref_cell, add):
    """I5: median latency < 0.65 s, max < 1 s, every message arriving."""
    m, err = ref_cell(PUSH)
    whats = ("maild latency median < 0.65 s", "maild latency max < 1 s",
             "every message arrives (0 lost, 0 duplicated, byte-exact)")
    if m is None:
        for w in whats:
            add(PUSH, w, err, "n/a")
        return
    lat = [x for r in m.good for x in r["push"]["latencies"]]
    sent = sum(r["push"]["appended"] for r in m.good)
    want = sum(r["push"]["messages"] for r in m.good)
    med = statistics.median(lat) if lat else None
    mx = max(lat) if lat else None
    arrived = f"{len(lat)} of {want} messages arrived ({sent} APPENDed)"
    for what, val, limit in ((whats[0], med, 0.65), (whats[1], mx, 1.0)):
        if val is None:
            add(PUSH, what, arrived, "FAIL")
            continue
        meas = f"{val:.3f} s over {len(lat)} messages"
        add(PUSH, what, meas, "PASS" if val < limit else "FAIL")
    add(PUSH, whats[2], arrived + ("; " + err if err else ""),
        "FAIL" if err or len(lat) < want else "PASS")


def idle_targets(cs, ref_cell, add):
    """I6: RSS while idling < 32 MiB, CPU near zero (< 1 % of a core)."""
    m, err = ref_cell(IDLE)
    what_rss = "maild RSS while idle < 32 MiB"
    what_cpu = f"maild CPU while idle near zero (< {IDLE_CPU_MAX:.0%} of a core)"
    runs = [r for r in (m.good if m else []) if "cpu" in r["idle"]]
    if not runs:
        for w in (what_rss, what_cpu):
            add(IDLE, w, err or "no idle measurement", "n/a" if m is None
                else "FAIL")
        return
    n = runs[0]["idle"]["accounts"]
    rss = max(r["idle"]["rss_max_kb"] for r in runs) / 1024
    rate = max(r["idle"]["cpu"] / r["idle"]["seconds"] for r in runs)
    cpu = max(r["idle"]["cpu"] for r in runs)
    secs = min(r["idle"]["seconds"] for r in runs)
    tail = ("; " + err) if err else ""
    add(IDLE, what_rss, f"{n} accounts: {rss:.1f} MiB (largest sample, worst "
        f"run){tail}", "FAIL" if err or rss >= 32 else "PASS")
    add(IDLE, what_cpu, f"{n} accounts: {cpu:.2f} s CPU in {secs:.0f} s "
        f"= {rate:.2%} of a core (worst run){tail}",
        "FAIL" if err or rate >= IDLE_CPU_MAX else "PASS")


# ---------------------------------------------------------------- markdown
def _fmt_args(args):
    """Sizes for the scenario descriptions (results.json of older runs
    may lack the IMAP ones)."""
    d = dict(REFERENCE_SIZES, idle_seconds=130)
    d.update({k: v for k, v in args.items() if v is not None})
    return {"messages": d["messages"], "rtt": d["rtt_ms"],
            "huge_mb": d["huge_mb"], "s3_accounts": d["s3_accounts"],
            "s3_messages": d["s3_messages"],
            "push_messages": d["push_messages"],
            "push_interval": d["push_interval"],
            "idle_accounts": d["idle_accounts"],
            "idle_seconds": d["idle_seconds"]}


def _notes(c, args):
    """The Notes column of a cell."""
    rs = [r for r in c.runs if "na" not in r]
    g = c.good
    notes = []
    if any("error" in r for r in rs):
        notes.append("error: " + next(r["error"] for r in rs
                                       if "error" in r)[:120])
    if c.timed_out:
        notes.append(f"capped: killed after {args['timeout']:g} s")
    bad_rc = sorted({r["rc"] for r in g
                     if "push" not in r and "idle" not in r
                     and r["rc"] not in r.get("ok_exit", [0])
                     and not r["timed_out"]})
    if bad_rc:
        notes.append(f"exit status {bad_rc}")
    for key in ("push", "idle"):
        errs = sorted({r[key]["error"] for r in g
                       if key in r and r[key].get("error")})
        notes += errs
        early = sorted({r[key]["early_exit"] for r in g if key in r
                        and r[key].get("early_exit") is not None})
        if early:
            notes.append(f"client exited by itself (exit status {early})")
    short = [r for r in g if "push" in r
             and r["push"]["arrived"] < r["push"]["appended"]]
    if short:
        notes.append(f"{len(short)} run(s) with messages not delivered within "
                     f"{args.get('push_wait', 30):g} s of the last APPEND")
    if not g:
        return notes
    ben = max(r["verify"]["benign"] for r in g)
    if ben:
        kinds = set()
        for r in g:
            kinds |= {k.replace("special:", "")
                      for k in r["verify"]["benign_kinds"]}
        notes.append(f"{ben} corrupt = benign ({', '.join(sorted(kinds))})")
    added = sorted({h for r in g for h in r["verify"]["added_headers"]})
    if added:
        notes.append(f"header added ({', '.join(added)})")
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
    if c.ok and len(c.ok) < len(g):
        notes.append(f"times: the {len(c.ok)} successful run(s)")
    elif not c.ok:
        notes.append("times: failed runs")
    return notes


def _worst(g):
    return (max(r["verify"]["lost"] for r in g),
            max(r["verify"]["duplicated"] for r in g),
            max(r["verify"]["corrupted"] for r in g))


def _cell_row(sc, client, c, args, ncols, body):
    """One table row: scenario, client, runs ok, the ncols measured columns
    body(c) returns (dashes if nothing was measured, n/a with the reason),
    the notes."""
    if c.na:
        cols, runs_ok, notes = ["-"] * ncols, "n/a", [c.na]
    else:
        rs = [r for r in c.runs if "na" not in r]
        runs_ok = f"{len(c.ok)}/{len(rs)}"
        notes = _notes(c, args)
        cols = body(c) if c.good else ["-"] * ncols
    return "| " + " | ".join([sc, client, runs_ok] + cols
                             + ["; ".join(notes)]) + " |"


def _batch_cols(c):
    m = c.measured
    lost, dup, cor = _worst(c.good)
    return [fmt_med([r["wall"] for r in m]),
            fmt_med([_cpu(r) for r in m]), _us(m),
            fmt_med([_rss(r) for r in m], 1),
            f"{lost} / {dup} / {cor}", fmt_med([r["server_cpu"] for r in m])]


def _push_cols(c):
    g = c.good
    lost, dup, cor = _worst(g)
    meds = [r["push"]["median"] for r in g if r["push"]["median"] is not None]
    pooled = [x for r in g for x in r["push"]["latencies"]]
    med = f"{statistics.median(pooled):.3f}" if pooled else "-"
    if len(meds) > 1:
        med += f" ({min(meds):.3f}-{max(meds):.3f})"
    return [g[0].get("push_mode", "?"), med,
            f"{max(pooled):.3f}" if pooled else "-",
            "; ".join(f"{r['push']['arrived']}/{r['push']['messages']}"
                      for r in g),
            fmt_med([_cpu(r) for r in g]),
            fmt_med([_rss(r) for r in g], 1),
            f"{lost} / {dup} / {cor}", fmt_med([r["server_cpu"] for r in g])]


def _idle_cols(c):
    g = c.good
    lost, dup, cor = _worst(g)
    ids = [r["idle"] for r in g]
    meas = [i for i in ids if "cpu" in i]
    cpu = fmt_med([i["cpu"] for i in meas])
    share = _med([i["cpu"] / i["seconds"] for i in meas])
    if share is not None:
        cpu += f" ({share:.2%} over {_med([i['seconds'] for i in meas]):.0f} s)"
    dl = [i["delivery"] for i in ids if i.get("delivery")]
    lat = [x for d in dl for x in d["latencies"]]
    arr = "; ".join(f"{d['arrived']}/{d['appended']}" for d in dl) or "-"
    if lat:
        arr += f" ({statistics.median(lat):.2f} / {max(lat):.2f})"
    return ["; ".join(f"{i.get('sessions_idle', 0)}/{i['accounts']}"
                      for i in ids),
            fmt_med([i["rss_max_kb"] / 1024 for i in meas], 1), cpu,
            fmt_med([i["ctxsw"] for i in meas], 0),
            fmt_med([_rss(r) for r in g], 1), arr,
            f"{lost} / {dup} / {cor}",
            fmt_med([i["server_cpu"] for i in meas])]


TABLES = {
    # scenario (None: all the others): header columns after "Runs ok"
    None: ("Wall s, median (min-max)", "CPU user+sys s", "(user / sys)",
           "Max RSS MiB", "Lost / Dup / Corrupt", "Server CPU s"),
    PUSH: ("Push mode", "Latency s, median (min-max of runs)",
           "Latency max s", "Arrived", "CPU user+sys s", "Max RSS MiB",
           "Lost / Dup / Corrupt", "Server CPU s"),
    IDLE: ("Accounts in IDLE", "RSS while idle MiB",
           "CPU while idle s (share of a core)",
           "Context switches while idle", "Peak RSS MiB (whole run)",
           "Then arrived (latency median / max s)", "Lost / Dup / Corrupt",
           "Server CPU while idle s"),
}
COLUMNS = {None: _batch_cols, PUSH: _push_cols, IDLE: _idle_cols}


def _table(cs, which, args):
    """The table of scenario `which` (None: every batch scenario)."""
    head = ("Scenario", "Client", "Runs ok") + TABLES[which] + ("Notes",)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc, row in cs.items():
        if (sc in (PUSH, IDLE)) != (which is not None) or \
                (which is not None and sc != which):
            continue
        for client, c in row.items():
            lines.append(_cell_row(sc, client, c, args, len(TABLES[which]),
                                   COLUMNS[which]))
    return lines


def markdown(env, args, results):
    fmt = _fmt_args(args)
    sizes_differ = any(args.get(k) is not None and args.get(k) != v
                       for k, v in REFERENCE_SIZES.items())
    cs = cells(results)
    vers = env.get("clients", {})
    always = [s for s in ALWAYS_KEEP if s in cs or s == "S5"]
    lines = ["# maild benchmark", "",
             f"Command: `{env.get('command', '?')}`  ",
             f"Date: {env.get('date_utc', '?')}  ",
             f"Machine: {env.get('cpus', '?')} CPUs ({env.get('cpu_model', '?')}), "
             f"{env.get('mem_mib', '?')} MiB RAM, kernel {env.get('kernel', '?')}, "
             f"{env.get('os', '?')}, load average at start "
             f"{env.get('loadavg_start', '?')}  ",
             f"Server: Dovecot {env.get('dovecot', '?')} (POP3S"
             + (", IMAPS" if env.get("imap") else "") + ", TLS 1.2+), "
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
             f"mode {args['mode']} ({', '.join(always)} always keep); "
             f"{args['runs']} run(s) per cell"
             + ("; QUICK (smoke) sizes" if args.get("quick") else ""),
             ""]
    for sc in cs:
        lines.append(f"- **{sc}**: {SCENARIOS[sc].format(**fmt)}")
    if any(sc not in (PUSH, IDLE) for sc in cs):
        lines += [""] + _table(cs, None, args)
    for which in (PUSH, IDLE):
        if which in cs:
            lines += [""] + _table(cs, which, args)

    # ratios
    batch = {sc: row for sc, row in cs.items() if sc not in (PUSH, IDLE)}
    peers = list(dict.fromkeys(c for row in batch.values() for c in row
                               if c != REF))
    if peers and any(REF in row for row in batch.values()):
        lines += ["", "Peer / maild (medians; above 1x = maild is faster, "
                  "uses less CPU or less memory):", "",
                  "| Scenario | " + " | ".join(peers) + " |",
                  "|---|" + "---|" * len(peers)]
        for sc, row in batch.items():
            m = row.get(REF)
            if m is None or not m.good:
                continue
            cellstr = []
            for p in peers:
                x = row.get(p)
                if x is None or not x.good:
                    cellstr.append("n/a" if x is not None and x.na else "-")
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
        lines += ["", "Targets (from the benchmark issues):", "",
                  "| Scenario | Target | Measured | Result |",
                  "|---|---|---|---|"]
        for t in ts:
            lines.append(f"| {t['scenario']} | {t['target']} | {t['measured']} "
                         f"| **{t['result']}** |")
        if sizes_differ:
            lines += ["", "The targets were set for the default sizes (1000 "
                      "messages, 20 x 100, 50 MB, 50 ms, I5 20 messages every "
                      "2 s, I6 200 accounts); with other sizes their verdicts "
                      "are only indicative."]

    lines += ["",
              "Wall: measured around `/usr/bin/time -v` (median of the successful "
              "runs, min-max in brackets). CPU: user+sys of the client and all its "
              "children (e.g. fetchmail's MDA), from `time -v`; (user / sys): "
              "the medians of each. Max RSS: the "
              "largest single process of the client's tree. Lost / Dup / "
              "Corrupt: worst run; byte-exact comparison after CRLF->LF "
              "('benign' = differs only by header re-folding or an added empty "
              "line after a headers-only message; 'header added': the file "
              "matches once a header the client added is removed, e.g. "
              "mbsync's X-TUID). Server CPU: Dovecot, all its "
              "processes, during the timed run. 'Other CPU load': CPU used by "
              "unrelated processes during the run (the machine was shared)."]
    if PUSH in cs:
        lines += ["",
                  f"{PUSH}: latency = from the server's OK to the harness's "
                  "APPEND until the message's file is in the client's Maildir "
                  "(new/ or cur/, scanned every 5 ms); the median is over all "
                  "messages of all runs, in brackets the range of the per-run "
                  "medians.  Dovecot reports new mail to an IDLE session only "
                  "0.5 s after it arrived (a fixed delay), so that is the "
                  "floor.  CPU and max RSS cover the client's whole session "
                  "(start, idle waits, all fetches)."]
    if IDLE in cs:
        lines += ["",
                  f"{IDLE}: RSS while idle = the largest VmRSS of the client "
                  "process sampled every second while every account's session "
                  "was in IDLE (Dovecot's process titles) and nothing "
                  "happened; CPU and context switches over that window from "
                  "/proc.  Peak RSS (whole run) includes start-up (every TLS "
                  "handshake at once) and the final delivery of one message "
                  "per account."]
    return "\n".join(lines) + "\n", ts
