/*
 * Copyright (c) 2026 The maild authors
 *
 * Permission to use, copy, modify, and distribute this software for any
 * purpose with or without fee is hereby granted, provided that the above
 * copyright notice and this permission notice appear in all copies.
 *
 * THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES
 * WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF
 * MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR
 * ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES
 * WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN
 * ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF
 * OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.
 */

/*
 * pop3.c: the POP3 protocol (RFC 1939, 2449, 2595, 5034) as a state
 * machine on top of session.c: greeting, CAPA, STLS, the login, UIDL and
 * LIST, then RETR and DELE, pipelined when the server allows (RFC 2449)
 * but never across the login: some servers (Courier) hand the connection
 * to another process when the login succeeds and lose whatever followed
 * it.  Messages go to the delivery core (deliver.c), which says when a
 * message may be DELEted.
 *
 * pop3_enter_state() is the only way from one state to the next: it logs
 * the move and sends what the new state needs.  Replies are matched to
 * commands through a queue of the commands sent and not yet answered
 * (with pipelining it holds many), and each command has its handlers in
 * pop3_cmds[]: adding a command means adding a line there.
 */

#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "maild.h"
#include "session.h"

/* Pipelining window: RETRs in flight, and the bytes LIST says they hold. */
#define WINDOW_MAX_CMDS		200
#define WINDOW_MAX_BYTES	(16U << 20)
/* Decoded body bytes are written to disk in chunks of this size. */
#define OUTBUF_SIZE		(128U << 10)
/* How much larger than its LIST size a message may turn out (sizes are
   estimates on some servers); beyond that the server is lying. */
#define SIZE_LIMIT(sz)		(2 * ((sz) + (1U << 20)))
/* The UIDL arena never grows beyond this. */
#define ARENA_MAX		(64U << 20)
/* RFC 5034: an AUTH command with its initial response and CRLF fits 255
   octets. */
#define AUTH_LINE_MAX		255
/* Real servers list a dozen capabilities; an endless list is an attack. */
#define CAPA_LINES_MAX		10000
/* A server that keeps challenging is not going to let us in. */
#define SASL_MAX_STEPS		4

enum pop3_state {
	POP3_STATE_GREETING,
	POP3_STATE_CAPA,
	POP3_STATE_STLS,
	POP3_STATE_AUTH,
	POP3_STATE_CAPA_AGAIN,	/* after the login, for PIPELINING */
	POP3_STATE_STAT,	/* --check */
	POP3_STATE_LIST,	/* UIDL and LIST */
	POP3_STATE_TRANSFER,	/* RETR and DELE */
	POP3_STATE_QUIT,
	POP3_STATE_DONE
};

static const char *pop3_state_names[] = {
	[POP3_STATE_GREETING] = "greeting",
	[POP3_STATE_CAPA] = "capa",
	[POP3_STATE_STLS] = "stls",
	[POP3_STATE_AUTH] = "auth",
	[POP3_STATE_CAPA_AGAIN] = "capa",
	[POP3_STATE_STAT] = "stat",
	[POP3_STATE_LIST] = "list",
	[POP3_STATE_TRANSFER] = "transfer",
	[POP3_STATE_QUIT] = "quit",
	[POP3_STATE_DONE] = "done",
};

enum pop3_cmd {
	CMD_GREETING,		/* not sent: the server speaks first */
	CMD_CAPA,
	CMD_STLS,
	CMD_USER,
	CMD_PASS,
	CMD_APOP,
	CMD_AUTH,
	CMD_STAT,
	CMD_UIDL,
	CMD_LIST,
	CMD_RETR,
	CMD_DELE,
	CMD_QUIT
};

/* What the bytes arriving now are. */
enum pop3_read {
	RD_STATUS,		/* a status line */
	RD_LINES,		/* lines of a multi-line listing */
	RD_BODY			/* a message */
};

/* One message of the listing: a few dozen bytes, plus its UIDL. */
struct pop3_msg {
	uint64_t	 size;		/* from LIST, 0 if unknown */
	uint32_t	 num;		/* message number in this session */
	uint32_t	 ordinal;	/* nth message with this UIDL */
	uint32_t	 uidl;		/* offset in the arena */
	uint16_t	 uidl_len;
	uint8_t		 listed;	/* LIST gave its size */
};

struct pop3_pending {
	enum pop3_cmd	 cmd;
	uint32_t	 msg;		/* index in msgs, for RETR and DELE */
};

struct pop3_reply {
	enum reply_status st;
	const char	*text;
	size_t		 len;
	uint32_t	 msg;
};

struct pop3 {
	enum pop3_state		 state;
	int			 flags;
#define P_PIPELINING	0x01	/* commands are pipelined */
#define P_NO_UIDL	0x02	/* the server has no UIDL command */
#define P_HAVE_CAPA	0x04	/* the server answered CAPA */
#define P_SASL_IR	0x08	/* the AUTH command carried its response */

	/* Commands sent and not yet answered, oldest first (a ring). */
	struct pop3_pending	*q;
	size_t			 qhead, qlen, qcap;
	enum pop3_read		 rd;

	/* Login. */
	struct pop3_capa	 capa;
	unsigned		 capa_lines;
	char			 apop_ts[256];	/* empty: no APOP */
	enum auth_method	 method;
	int			 sasl_step;
	char			*sasl_error;	/* what an OAuth server said */

	/* The listing. */
	struct pop3_msg		*msgs;
	uint32_t		 nmsgs, capmsgs, listpos;
	char			*arena;
	size_t			 arenalen, arenacap;
	unsigned		 odd_uidls;

	/* The work: messages to fetch, and fetched ones to delete. */
	uint32_t		*want;
	uint32_t		 nwant, next_want;
	uint32_t		*dele;
	uint32_t		 ndele, next_dele, dele_cap;
	unsigned		 retr_inflight;
	uint64_t		 bytes_inflight;
	unsigned		 retr_failed;
	unsigned		 delivered;

	/* The message being received. */
	struct deliver_msg	 msg;
	struct body_decoder	 dec;
	uint32_t		 cur;
	uint64_t		 cur_raw;	/* bytes read, stuffed */
	uint64_t		 cur_decoded;	/* bytes written, less headers */
	char			*outbuf;
	size_t			 outlen;
};

struct pop3_cmd_def {
	const char	*name;
	int		 multi;		/* multi-line when +OK */
	void		(*reply)(struct session *, struct pop3_reply *);
	void		(*line)(struct session *, const char *, size_t);
	void		(*end)(struct session *);
};

static void	pop3_enter_state(struct session *, enum pop3_state);
static void	pop3_send(struct session *, enum pop3_cmd, uint32_t,
		    const char *, ...) PRINTFLIKE(4, 5);
static void	pop3_send_secret(struct session *, enum pop3_cmd, const char *,
		    const char *, size_t, const char *);
static struct pop3_pending pop3_dequeue(struct session *);
static void	pop3_server_error(struct session *, const char *, const char *,
		    size_t, int);
static void	pop3_login_begin(struct session *);
static void	pop3_login_done(struct session *);
static void	pop3_login_failed(struct session *, const char *, size_t);
static void	pop3_continuation(struct session *, const char *, size_t);
static void	pop3_plan(struct session *);
static void	pop3_pump(struct session *);
static void	pop3_quit(struct session *);
static void	pop3_body(struct session *, struct evbuffer *);
static void	pop3_message_done(struct session *);

static void	greeting_reply(struct session *, struct pop3_reply *);
static void	capa_reply(struct session *, struct pop3_reply *);
static void	capa_line(struct session *, const char *, size_t);
static void	capa_end(struct session *);
static void	stls_reply(struct session *, struct pop3_reply *);
static void	user_reply(struct session *, struct pop3_reply *);
static void	login_reply(struct session *, struct pop3_reply *);
static void	stat_reply(struct session *, struct pop3_reply *);
static void	uidl_reply(struct session *, struct pop3_reply *);
static void	uidl_line(struct session *, const char *, size_t);
static void	uidl_end(struct session *);
static void	list_reply(struct session *, struct pop3_reply *);
static void	list_line(struct session *, const char *, size_t);
static void	list_end(struct session *);
static void	retr_reply(struct session *, struct pop3_reply *);
static void	dele_reply(struct session *, struct pop3_reply *);
static void	quit_reply(struct session *, struct pop3_reply *);

/* Every command: its name and what handles its reply. */
static const struct pop3_cmd_def pop3_cmds[] = {
	[CMD_GREETING] =	{ "greeting", 0, greeting_reply, NULL, NULL },
	[CMD_CAPA] =		{ "CAPA", 1, capa_reply, capa_line, capa_end },
	[CMD_STLS] =		{ "STLS", 0, stls_reply, NULL, NULL },
	[CMD_USER] =		{ "USER", 0, user_reply, NULL, NULL },
	[CMD_PASS] =		{ "PASS", 0, login_reply, NULL, NULL },
	[CMD_APOP] =		{ "APOP", 0, login_reply, NULL, NULL },
	[CMD_AUTH] =		{ "AUTH", 0, login_reply, NULL, NULL },
	[CMD_STAT] =		{ "STAT", 0, stat_reply, NULL, NULL },
	[CMD_UIDL] =		{ "UIDL", 1, uidl_reply, uidl_line, uidl_end },
	[CMD_LIST] =		{ "LIST", 1, list_reply, list_line, list_end },
	[CMD_RETR] =		{ "RETR", 1, retr_reply, NULL, NULL },
	[CMD_DELE] =		{ "DELE", 0, dele_reply, NULL, NULL },
	[CMD_QUIT] =		{ "QUIT", 0, quit_reply, NULL, NULL },
};

#define P(s)	((struct pop3 *)(s)->p)

static const char *
pop3_uidl_of(struct session *s, uint32_t i, char *buf, size_t size)
{
	struct pop3	*p = P(s);

	return (log_escape(buf, size, p->arena + p->msgs[i].uidl,
	    p->msgs[i].uidl_len));
}

/*
 * Go to a new state, and send what it needs.  The one place where the
 * session moves on.
 */
static void
pop3_enter_state(struct session *s, enum pop3_state new)
{
	struct pop3	*p = P(s);

	log_trace("account=%s state %s -> %s", s->ac->name,
	    pop3_state_names[p->state], pop3_state_names[new]);
	p->state = new;
	switch (new) {
	case POP3_STATE_GREETING:
		pop3_send(s, CMD_GREETING, 0, NULL);
		break;
	case POP3_STATE_CAPA:
	case POP3_STATE_CAPA_AGAIN:
		memset(&p->capa, 0, sizeof p->capa);
		p->capa_lines = 0;
		p->flags &= ~P_HAVE_CAPA;
		s->result.capa[0] = '\0';
		pop3_send(s, CMD_CAPA, 0, "CAPA");
		break;
	case POP3_STATE_STLS:
		pop3_send(s, CMD_STLS, 0, "STLS");
		break;
	case POP3_STATE_AUTH:
		pop3_login_begin(s);
		break;
	case POP3_STATE_STAT:
		pop3_send(s, CMD_STAT, 0, "STAT");
		break;
	case POP3_STATE_LIST:
		if ((p->capa.flags & CAPA_PIPELINING) &&
		    !(s->flags & S_NO_PIPE))
			p->flags |= P_PIPELINING;
		pop3_send(s, CMD_UIDL, 0, "UIDL");
		if (p->flags & P_PIPELINING)
			pop3_send(s, CMD_LIST, 0, "LIST");
		break;
	case POP3_STATE_TRANSFER:
		pop3_pump(s);
		break;
	case POP3_STATE_QUIT:
		pop3_quit(s);
		break;
	case POP3_STATE_DONE:
		session_finish(s);
		break;
	}
}

/* The connection is up: at first, and again after STLS. */
static void
pop3_connected(struct session *s)
{
	struct pop3	*p = P(s);

	if (p == NULL) {
		s->p = p = xcalloc(1, sizeof *p);
		p->qcap = 64;
		p->q = xcalloc(p->qcap, sizeof *p->q);
		/* Never null: a server without UIDL still has empty ones. */
		p->arenacap = 8192;
		p->arena = xmalloc(p->arenacap);
		p->state = POP3_STATE_GREETING;
		pop3_enter_state(s, POP3_STATE_GREETING);
		return;
	}
	/* RFC 2595: forget what was learnt before TLS. */
	pop3_enter_state(s, POP3_STATE_CAPA);
}

/* Pop the oldest pending command. */
static struct pop3_pending
pop3_dequeue(struct session *s)
{
	struct pop3		*p = P(s);
	struct pop3_pending	 pd = p->q[p->qhead];

	p->qhead = (p->qhead + 1) % p->qcap;
	p->qlen--;
	return (pd);
}

/* Note that a reply to cmd is due. */
static void
pop3_queue(struct session *s, enum pop3_cmd cmd, uint32_t msg)
{
	struct pop3	*p = P(s);

	if (p->qlen == p->qcap) {
		struct pop3_pending	*nq;
		size_t			 i, cap = p->qcap ? p->qcap * 2 : 64;

		nq = xcalloc(cap, sizeof *nq);
		for (i = 0; i < p->qlen; i++)
			nq[i] = p->q[(p->qhead + i) % p->qcap];
		free(p->q);
		p->q = nq;
		p->qhead = 0;
		p->qcap = cap;
	}
	p->q[(p->qhead + p->qlen) % p->qcap].cmd = cmd;
	p->q[(p->qhead + p->qlen) % p->qcap].msg = msg;
	if (p->qlen++ == 0)
		session_arm_progress(s);
}

/* Queue a command and send it (fmt NULL: nothing to send). */
static void
pop3_send(struct session *s, enum pop3_cmd cmd, uint32_t msg, const char *fmt,
    ...)
{
	char		 line[POP3_LINE_MAX];
	va_list		 ap;
	int		 n;

	if (s->flags & S_DEAD)
		return;
	pop3_queue(s, cmd, msg);
	if (fmt == NULL)
		return;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof line - 2) {
		session_fail(s, EXIT_CONFIG, "the %s command would be longer "
		    "than POP3 allows (%d bytes); is the user name that long?",
		    pop3_cmds[cmd].name, POP3_LINE_MAX);
		return;
	}
	session_send(s, "%s", line);
}

/* Queue a command whose line holds a secret, and send it. */
static void
pop3_send_secret(struct session *s, enum pop3_cmd cmd, const char *prefix,
    const char *secret, size_t len, const char *trace)
{
	pop3_queue(s, cmd, 0);
	session_send_secret(s, prefix, secret, len, trace);
}

/*
 * A -ERR where we cannot go on: classify it by its response code, so the
 * scheduler knows whether to retry soon or slow down.
 */
static void
pop3_server_error(struct session *s, const char *what, const char *text,
    size_t len, int code)
{
	char	esc[LOG_ESCAPE_MAX];
	int	resp = parse_resp_code(text, len);

	s->result.resp_codes = resp;
	if (resp & (RESP_IN_USE | RESP_LOGIN_DELAY | RESP_SYS_TEMP))
		code = EXIT_TEMPFAIL;
	else if (resp & (RESP_AUTH | RESP_SYS_PERM))
		code = EXIT_NOPERM;
	session_fail(s, code, "%s: server said '%s'", what,
	    log_escape(esc, sizeof esc, text, len));
}

/* A status line that is neither +OK nor -ERR. */
static void
pop3_bad_status(struct session *s, enum pop3_cmd cmd, const char *line,
    size_t len)
{
	struct pop3	*p = P(s);
	char		 esc[LOG_ESCAPE_MAX];
	int		 pipelined = (p->flags & P_PIPELINING) && p->qlen > 1;

	if (cmd == CMD_GREETING && len >= 4 && (strncmp(line, "* OK", 4) ==
	    0 || strncmp(line, "* PREAUTH", 4) == 0)) {
		session_fail(s, EXIT_PROTOCOL, "%s is an IMAP server, not POP3: "
		    "check host and port (its greeting: '%s')", session_peer(s),
		    log_escape(esc, sizeof esc, line, len));
		return;
	}
	if (cmd == CMD_GREETING && len >= 4 && strncmp(line, "220", 3) == 0 &&
	    (line[3] == ' ' || line[3] == '-')) {
		session_fail(s, EXIT_PROTOCOL, "%s is an SMTP server, not POP3: "
		    "check host and port (its greeting: '%s')", session_peer(s),
		    log_escape(esc, sizeof esc, line, len));
		return;
	}
	if (pipelined)
		s->result.nopipelining = 1;
	session_fail(s, EXIT_PROTOCOL, "server sent a bad status line (state "
	    "%s): '%s'%s", pop3_state_names[p->state],
	    log_escape(esc, sizeof esc, line, len), pipelined ?
	    "; pipelining is turned off for this account" : "");
}

/* A status line arrived: it answers the oldest pending command. */
static void
pop3_status(struct session *s, const char *line, size_t len)
{
	struct pop3		*p = P(s);
	enum pop3_cmd		 cmd = p->q[p->qhead].cmd;
	struct pop3_reply	 r;
	const char		*text;
	char			 esc[LOG_ESCAPE_MAX];

	log_trace("account=%s <<< %s", s->ac->name,
	    log_escape(esc, sizeof esc, line, len));
	if (cmd == CMD_GREETING)
		session_greeted(s);
	/* A SASL challenge: "+ " and base64 (RFC 5034). */
	if (cmd == CMD_AUTH && len >= 1 && line[0] == '+' &&
	    !(len >= 3 && strncasecmp(line, "+OK", 3) == 0)) {
		text = line + 1;
		if (len >= 2 && line[1] == ' ')
			text++;
		pop3_continuation(s, text, len - (text - line));
		return;
	}
	r.st = parse_status(line, len, &r.text, &r.len);
	if (r.st == REPLY_BAD) {
		pop3_bad_status(s, cmd, line, len);
		return;
	}
	r.msg = p->q[p->qhead].msg;
	/* A multi-line reply keeps its command queued until its ".". */
	if (!(r.st == REPLY_OK && pop3_cmds[cmd].multi))
		pop3_dequeue(s);
	pop3_cmds[cmd].reply(s, &r);
}

/*
 * Bytes arrived: hand each status line, listing line or body chunk to
 * the command it answers, until nothing complete is left, the session
 * ends or STLS replaces the connection.
 */
static void
pop3_read(struct session *s, struct evbuffer *in)
{
	struct pop3	*p = P(s);
	char		 line[POP3_LINE_MAX + 2], esc[LOG_ESCAPE_MAX];
	enum pop3_cmd	 cmd;
	size_t		 len;
	int		 r, dot;

	while (!(s->flags & S_DEAD) &&
	    in == bufferevent_get_input(s->bev) &&
	    evbuffer_get_length(in) > 0) {
		if (p->qlen == 0) {
			session_unasked(s, in);
			return;
		}
		if (p->rd == RD_BODY) {
			pop3_body(s, in);
			continue;
		}
		/* Listing lines have the status line's bound too. */
		r = session_read_line(in, line, POP3_LINE_MAX, &len);
		if (r == 0)
			break;
		if (r == -1) {
			len = evbuffer_copyout(in, line, 64);
			session_fail(s, EXIT_PROTOCOL, "server sent a line longer "
			    "than %d bytes: '%s'", POP3_LINE_MAX,
			    log_escape(esc, sizeof esc, line, len));
			return;
		}
		session_arm_progress(s);
		if (p->rd == RD_STATUS) {
			pop3_status(s, line, len);
			continue;
		}
		/* A line of a multi-line listing, dot-stuffed. */
		cmd = p->q[p->qhead].cmd;
		if (len == 1 && line[0] == '.') {
			p->rd = RD_STATUS;
			pop3_dequeue(s);
			pop3_cmds[cmd].end(s);
			continue;
		}
		dot = line[0] == '.';
		pop3_cmds[cmd].line(s, line + dot, len - dot);
	}
}

/* ---- greeting, CAPA, STLS and the login ---- */

static void
greeting_reply(struct session *s, struct pop3_reply *r)
{
	struct pop3	*p = P(s);

	if (r->st != REPLY_OK) {
		pop3_server_error(s, "server refused the connection", r->text,
		    r->len, EXIT_UNAVAIL);
		return;
	}
	auth_apop_timestamp(r->text, r->len, p->apop_ts, sizeof p->apop_ts);
	pop3_enter_state(s, POP3_STATE_CAPA);
}

static void
capa_reply(struct session *s, struct pop3_reply *r)
{
	if (r->st == REPLY_OK) {
		P(s)->flags |= P_HAVE_CAPA;
		P(s)->rd = RD_LINES;
		return;
	}
	/* No CAPA (a plain RFC 1939 server): assume nothing. */
	capa_end(s);
}

static void
capa_line(struct session *s, const char *line, size_t len)
{
	struct pop3	*p = P(s);
	char		 esc[LOG_ESCAPE_MAX];
	size_t		 o = strlen(s->result.capa);

	if (++p->capa_lines > CAPA_LINES_MAX) {
		session_fail(s, EXIT_PROTOCOL, "the server's CAPA list goes on "
		    "and on (more than %d lines)", CAPA_LINES_MAX);
		return;
	}
	log_trace("account=%s <<< %s", s->ac->name,
	    log_escape(esc, sizeof esc, line, len));
	parse_capa_line(&p->capa, line, len);
	/* For --check: the capabilities as the server put them. */
	if (o + 2 < sizeof s->result.capa)
		snprintf(s->result.capa + o, sizeof s->result.capa - o, "%s%s",
		    o ? ", " : "", log_escape(esc, sizeof esc, line, len));
}

/* CAPA is answered (or refused): on to STLS, the login or the listing. */
static void
capa_end(struct session *s)
{
	struct pop3	*p = P(s);

	if (p->capa.flags & CAPA_LOGIN_DELAY)
		s->result.login_delay = p->capa.login_delay;
	if (p->state == POP3_STATE_CAPA_AGAIN) {
		pop3_enter_state(s, POP3_STATE_LIST);
		return;
	}
	if (s->ac->tls == TLS_STARTTLS && !(s->flags & S_TLS_UP)) {
		if (!(p->capa.flags & CAPA_STLS)) {
			session_fail(s, EXIT_NOPERM, "the server does not offer "
			    "STLS%s; maild does not log in without TLS (use "
			    "tls = implicit on port 995 if the server has "
			    "it)", (p->flags & P_HAVE_CAPA) ? "" :
			    " (it does not even answer CAPA)");
			return;
		}
		pop3_enter_state(s, POP3_STATE_STLS);
		return;
	}
	pop3_enter_state(s, POP3_STATE_AUTH);
}

static void
stls_reply(struct session *s, struct pop3_reply *r)
{
	if (r->st != REPLY_OK) {
		pop3_server_error(s, "the server refused STLS; maild does not "
		    "log in without TLS", r->text, r->len, EXIT_NOPERM);
		return;
	}
	session_start_tls(s, "STLS");
}

/* The initial response of a SASL method that has one; NULL otherwise. */
static char *
pop3_sasl_response(struct session *s)
{
	switch (P(s)->method) {
	case AUTH_PLAIN:
		return (auth_plain(s->ac->user, s->secret, s->secretlen));
	case AUTH_XOAUTH2:
		return (auth_xoauth2(s->ac->user, s->secret, s->secretlen));
	case AUTH_OAUTHBEARER:
		return (auth_oauthbearer(s->ac->user, s->ac->host, s->ac->port,
		    s->secret, s->secretlen));
	default:
		return (NULL);
	}
}

/* "AUTH <mech>", with the initial response when it fits the line. */
static void
pop3_sasl_start(struct session *s)
{
	struct pop3	*p = P(s);
	const char	*mech = auth_sasl_name(p->method);
	char		 prefix[64], trace[64];
	char		*ir;

	p->sasl_step = 0;
	p->flags &= ~P_SASL_IR;
	ir = pop3_sasl_response(s);
	snprintf(prefix, sizeof prefix, "AUTH %s ", mech);
	/* Microsoft's POP3 takes XOAUTH2's response only after its "+ ". */
	if (ir != NULL && p->method != AUTH_XOAUTH2 &&
	    strlen(prefix) + strlen(ir) + 2 <= AUTH_LINE_MAX) {
		snprintf(trace, sizeof trace, "AUTH %s ********", mech);
		p->flags |= P_SASL_IR;
		pop3_send_secret(s, CMD_AUTH, prefix, ir, strlen(ir), trace);
	} else
		pop3_send(s, CMD_AUTH, 0, "AUTH %s", mech);
	if (ir != NULL)
		freezero_str(ir);
}

/* Choose how to log in, and start.  Nothing follows the login command. */
static void
pop3_login_begin(struct session *s)
{
	struct pop3	*p = P(s);
	const char	*why = NULL;
	char		*line;
	int		 m;

	m = auth_choose(s->ac->auth, &p->capa, (p->flags & P_HAVE_CAPA) != 0,
	    p->apop_ts[0] != '\0', (s->flags & S_TLS_UP) != 0, &why);
	if (m == -1) {
		session_fail(s, EXIT_NOPERM, "cannot log in: %s", why);
		return;
	}
	p->method = (enum auth_method)m;
	log_debug("account=%s login=%s", s->ac->name,
	    auth_method_name(p->method));
	switch (p->method) {
	case AUTH_USER:
		pop3_send(s, CMD_USER, 0, "USER %s", s->ac->user);
		break;
	case AUTH_APOP:
		line = auth_apop(s->ac->user, p->apop_ts, s->secret,
		    s->secretlen);
		pop3_send_secret(s, CMD_APOP, "", line, strlen(line),
		    "APOP ********");
		freezero_str(line);
		break;
	default:
		pop3_sasl_start(s);
		break;
	}
}

static void
user_reply(struct session *s, struct pop3_reply *r)
{
	if (r->st != REPLY_OK) {
		pop3_login_failed(s, r->text, r->len);
		return;
	}
	pop3_send_secret(s, CMD_PASS, "PASS ", s->secret, s->secretlen,
	    "PASS ********");
}

static void
login_reply(struct session *s, struct pop3_reply *r)
{
	if (r->st != REPLY_OK) {
		pop3_login_failed(s, r->text, r->len);
		return;
	}
	pop3_login_done(s);
}

/* Keep what an OAuth server says when it refuses a token, for the log. */
static void
pop3_sasl_note_error(struct session *s, const char *text, size_t len)
{
	struct pop3	*p = P(s);
	unsigned char	*json;
	size_t		 jlen;
	char		 esc[LOG_ESCAPE_MAX];

	if ((json = auth_unb64(text, len, &jlen)) == NULL)
		return;
	free(p->sasl_error);
	p->sasl_error = xstrdup(log_escape(esc, sizeof esc, json, jlen));
	free(json);
}

/* The server sent a SASL challenge ("+ ..."): answer it. */
static void
pop3_continuation(struct session *s, const char *text, size_t len)
{
	struct pop3	*p = P(s);
	char		*resp = NULL;
	int		 step = p->sasl_step++;

	if (step >= SASL_MAX_STEPS) {
		session_fail(s, EXIT_PROTOCOL, "the server keeps sending SASL "
		    "challenges; giving up the login");
		return;
	}
	switch (p->method) {
	case AUTH_PLAIN:
		if (step == 0 && !(p->flags & P_SASL_IR))
			resp = pop3_sasl_response(s);
		break;
	case AUTH_LOGIN:
		/* The prompts are "Username:" and "Password:". */
		if (step == 0)
			resp = auth_b64(s->ac->user, strlen(s->ac->user));
		else if (step == 1)
			resp = auth_b64(s->secret, s->secretlen);
		break;
	case AUTH_CRAM_MD5:
		if (step == 0 && (resp = auth_cram_md5(s->ac->user, s->secret,
		    s->secretlen, text, len)) == NULL) {
			session_fail(s, EXIT_PROTOCOL, "the server sent a "
			    "CRAM-MD5 challenge that is not base64");
			return;
		}
		break;
	case AUTH_XOAUTH2:
	case AUTH_OAUTHBEARER:
		if (step == 0 && !(p->flags & P_SASL_IR)) {
			resp = pop3_sasl_response(s);
			break;
		}
		/* A refusal with details; answer so the server says -ERR. */
		pop3_sasl_note_error(s, text, len);
		session_send_secret(s, p->method == AUTH_XOAUTH2 ? "" : "AQ==",
		    "", 0, "(acknowledging the error)");
		return;
	default:
		break;
	}
	if (resp == NULL) {
		/* Nothing sensible to say: cancel (RFC 5034 "*"). */
		session_send_secret(s, "*", "", 0, "*");
		return;
	}
	session_send_secret(s, "", resp, strlen(resp), "********");
	freezero_str(resp);
}

/* The login was refused: say so usefully, and classify it. */
static void
pop3_login_failed(struct session *s, const char *text, size_t len)
{
	struct pop3	*p = P(s);
	char		 what[512];
	int		 resp = parse_resp_code(text, len);

	if (resp & RESP_SYS_PERM)
		snprintf(what, sizeof what, "login (%s) refused for a reason on "
		    "the server's side, not the password (RFC 3206 SYS/PERM): "
		    "see what it says, or ask the provider",
		    auth_method_name(p->method));
	else if (resp & (RESP_SYS_TEMP | RESP_IN_USE | RESP_LOGIN_DELAY))
		snprintf(what, sizeof what, "login (%s) refused for now",
		    auth_method_name(p->method));
	else if (p->sasl_error != NULL)
		snprintf(what, sizeof what, "login (%s) refused, the token was "
		    "not accepted (%s); %s", auth_method_name(p->method),
		    p->sasl_error, s->ac->secret_source == SECRET_OAUTH2 ?
		    "maild gets a new one for the next poll" :
		    "check password-command");
	else
		snprintf(what, sizeof what, "login (%s) refused; check user "
		    "and password", auth_method_name(p->method));
	pop3_server_error(s, what, text, len, EXIT_NOPERM);
}

/* Logged in: the password is no longer needed. */
static void
pop3_login_done(struct session *s)
{
	struct pop3	*p = P(s);

	session_wipe_secret(s);
	s->result.login = auth_method_name(p->method);
	log_debug("account=%s logged in (%s)", s->ac->name, s->result.login);
	if (s->flags & S_CHECK)
		pop3_enter_state(s, POP3_STATE_STAT);
	/* Some servers announce more after login (mpop learnt this from
	   Gmail); ask again if pipelining was not offered before. */
	else if (!(p->capa.flags & CAPA_PIPELINING) &&
	    !(s->flags & S_NO_PIPE))
		pop3_enter_state(s, POP3_STATE_CAPA_AGAIN);
	else
		pop3_enter_state(s, POP3_STATE_LIST);
}

static void
stat_reply(struct session *s, struct pop3_reply *r)
{
	if (r->st != REPLY_OK) {
		pop3_server_error(s, "STAT failed", r->text, r->len,
		    EXIT_PROTOCOL);
		return;
	}
	if (parse_stat(r->text, r->len, &s->result.messages,
	    &s->result.octets) == -1) {
		session_fail(s, EXIT_PROTOCOL, "bad reply to STAT");
		return;
	}
	pop3_enter_state(s, POP3_STATE_QUIT);
}

/* ---- UIDL and LIST ---- */

static void
uidl_reply(struct session *s, struct pop3_reply *r)
{
	struct pop3	*p = P(s);

	if (r->st == REPLY_OK) {
		p->rd = RD_LINES;
		return;
	}
	/* A response code means a condition, not "no UIDL here". */
	if (parse_resp_code(r->text, r->len) != 0) {
		pop3_server_error(s, "UIDL failed", r->text, r->len,
		    EXIT_TEMPFAIL);
		return;
	}
	if (s->ac->keep) {
		session_fail(s, EXIT_PROTOCOL, "the server does not support "
		    "UIDL, so maild cannot tell old messages from new ones; "
		    "with keep = yes it would fetch every message again at "
		    "every poll: set keep = no");
		return;
	}
	/*
	 * Messages recorded by UIDL cannot be recognised without one: they
	 * might be delivered again.  A server that had UIDL and now refuses
	 * it is having trouble; wait.
	 */
	if (deliver_use_digests(s->dl) == -1) {
		pop3_server_error(s, "the server refused UIDL, which it "
		    "supported before; not fetching, so as not to deliver "
		    "anything twice", r->text, r->len, EXIT_TEMPFAIL);
		return;
	}
	p->flags |= P_NO_UIDL;
	log_info("account=%s the server has no UIDL: every message is "
	    "fetched and deleted", s->ac->name);
	if (!(p->flags & P_PIPELINING))
		pop3_send(s, CMD_LIST, 0, "LIST");
}

/* Make room for one more message in the listing. */
static struct pop3_msg *
pop3_new_msg(struct session *s, uint32_t num)
{
	struct pop3	*p = P(s);
	struct pop3_msg	*m;

	if (p->nmsgs == p->capmsgs) {
		p->capmsgs = p->capmsgs ? p->capmsgs * 2 : 256;
		p->msgs = xreallocarray(p->msgs, p->capmsgs, sizeof *p->msgs);
	}
	m = &p->msgs[p->nmsgs++];
	memset(m, 0, sizeof *m);
	m->num = num;
	return (m);
}

/* Add one UIDL listing line. */
static void
uidl_line(struct session *s, const char *line, size_t len)
{
	struct pop3	*p = P(s);
	struct pop3_msg	*m;
	const char	*uidl;
	size_t		 ulen, i;
	uint32_t	 num;
	char		 esc[LOG_ESCAPE_MAX];

	if (parse_uidl_line(line, len, &num, &uidl, &ulen) == -1) {
		session_fail(s, EXIT_PROTOCOL, "bad line in the UIDL listing: "
		    "'%s'", log_escape(esc, sizeof esc, line, len));
		return;
	}
	if (p->nmsgs > 0 && num <= p->msgs[p->nmsgs - 1].num) {
		session_fail(s, EXIT_PROTOCOL, "UIDL listing is not in order at "
		    "message %u", num);
		return;
	}
	if (p->nmsgs >= LISTING_MAX || p->arenalen + ulen > ARENA_MAX) {
		session_fail(s, EXIT_PROTOCOL, "UIDL listing is too long");
		return;
	}
	for (i = 0; i < ulen; i++) {
		if ((unsigned char)uidl[i] < 0x21 ||
		    (unsigned char)uidl[i] > 0x7e)
			break;
	}
	if ((i < ulen || ulen > UIDL_RFC_MAX) && p->odd_uidls++ == 0)
		log_warnx("account=%s the server sends UIDLs that break RFC "
		    "1939 (like \"%s\" for message %u); maild handles them, "
		    "but tell the server's administrator", s->ac->name,
		    log_escape(esc, sizeof esc, uidl, ulen), num);
	if (p->arenalen + ulen > p->arenacap) {
		while (p->arenalen + ulen > p->arenacap)
			p->arenacap = p->arenacap ? p->arenacap * 2 : 8192;
		p->arena = xreallocarray(p->arena, 1, p->arenacap);
	}
	memcpy(p->arena + p->arenalen, uidl, ulen);
	m = pop3_new_msg(s, num);
	m->uidl = (uint32_t)p->arenalen;
	m->uidl_len = (uint16_t)ulen;
	p->arenalen += ulen;
}

static void
uidl_end(struct session *s)
{
	struct pop3	*p = P(s);

	if (p->flags & P_PIPELINING)
		return;		/* LIST is on its way */
	if (p->nmsgs == 0) {
		pop3_plan(s);
		return;
	}
	pop3_send(s, CMD_LIST, 0, "LIST");
}

static void
list_reply(struct session *s, struct pop3_reply *r)
{
	struct pop3	*p = P(s);

	if (r->st == REPLY_OK) {
		p->rd = RD_LINES;
		p->listpos = 0;
		return;
	}
	if (p->flags & P_NO_UIDL) {
		pop3_server_error(s, "LIST failed", r->text, r->len,
		    EXIT_PROTOCOL);
		return;
	}
	/* Sizes unknown: only the window by count applies. */
	pop3_plan(s);
}

/* Add one LIST line: the size of a message UIDL listed (or a new one). */
static void
list_line(struct session *s, const char *line, size_t len)
{
	struct pop3	*p = P(s);
	struct pop3_msg	*m;
	uint32_t	 num;
	uint64_t	 size;
	char		 esc[LOG_ESCAPE_MAX];

	if (parse_list_line(line, len, &num, &size) == -1) {
		session_fail(s, EXIT_PROTOCOL, "bad line in the LIST listing: "
		    "'%s'", log_escape(esc, sizeof esc, line, len));
		return;
	}
	if (p->flags & P_NO_UIDL) {
		if ((p->nmsgs > 0 && num <= p->msgs[p->nmsgs - 1].num) ||
		    p->nmsgs >= LISTING_MAX) {
			session_fail(s, EXIT_PROTOCOL, "LIST listing is not in "
			    "order or too long at message %u", num);
			return;
		}
		m = pop3_new_msg(s, num);
		m->size = size;
		m->listed = 1;
		return;
	}
	/* Both listings are in order: walk UIDL's alongside. */
	if (p->listpos >= p->nmsgs || p->msgs[p->listpos].num != num) {
		session_fail(s, EXIT_PROTOCOL, "LIST and UIDL disagree about "
		    "message %u", num);
		return;
	}
	m = &p->msgs[p->listpos++];
	m->size = size;
	m->listed = 1;
}

static void
list_end(struct session *s)
{
	struct pop3	*p = P(s);

	if (!(p->flags & P_NO_UIDL) && p->listpos != p->nmsgs) {
		session_fail(s, EXIT_PROTOCOL, "LIST and UIDL disagree about "
		    "the number of messages (%u and %u)", p->listpos,
		    p->nmsgs);
		return;
	}
	pop3_plan(s);
}

/*
 * Number the messages that share a UIDL: 1, 2, ...  Some servers derive
 * UIDLs from a few headers and give two messages the same one; telling
 * them apart by order lets both be delivered, once each.
 */
static void
pop3_number_duplicates(struct session *s)
{
	struct pop3	*p = P(s);
	struct {
		uint64_t	hash;
		uint32_t	msg;
	}		*seen;
	size_t		 size = 16, mask, slot;
	uint32_t	 i;
	uint8_t		 key[16];
	char		 esc[LOG_ESCAPE_MAX];

	while (size < (size_t)p->nmsgs * 2)
		size *= 2;
	mask = size - 1;
	seen = xcalloc(size, sizeof *seen);
	random_bytes(key, sizeof key);
	for (i = 0; i < p->nmsgs; i++) {
		struct pop3_msg	*m = &p->msgs[i];
		uint64_t	 h = siphash24(key, p->arena + m->uidl,
				    m->uidl_len) | 1;

		m->ordinal = 1;
		for (slot = h & mask; seen[slot].hash != 0;
		    slot = (slot + 1) & mask) {
			struct pop3_msg	*o = &p->msgs[seen[slot].msg];

			if (seen[slot].hash == h && o->uidl_len ==
			    m->uidl_len && memcmp(p->arena + o->uidl,
			    p->arena + m->uidl, m->uidl_len) == 0) {
				m->ordinal = o->ordinal + 1;
				seen[slot].msg = i;	/* the latest */
				break;
			}
		}
		if (seen[slot].hash == 0) {
			seen[slot].hash = h;
			seen[slot].msg = i;
		}
		if (m->ordinal == 2)
			log_warnx("account=%s the server lists UIDL \"%s\" for "
			    "more than one message; maild fetches each of "
			    "them once", s->ac->name, pop3_uidl_of(s, i, esc,
			    sizeof esc));
	}
	free(seen);
}

/* Is this message over max-size?  Count it if so. */
static int
pop3_too_big(struct session *s, struct pop3_msg *m)
{
	if (s->ac->max_size == 0 || !m->listed || m->size <= s->ac->max_size)
		return (0);
	s->result.too_big++;
	if (m->size > s->result.too_big_max)
		s->result.too_big_max = m->size;
	return (1);
}

/* Queue a message for DELE. */
static void
pop3_want_dele(struct session *s, uint32_t i)
{
	struct pop3	*p = P(s);

	if (p->ndele == p->dele_cap) {
		p->dele_cap = p->dele_cap ? p->dele_cap * 2 : 64;
		p->dele = xreallocarray(p->dele, p->dele_cap, sizeof *p->dele);
	}
	p->dele[p->ndele++] = i;
}

/*
 * The listings are in: decide what to fetch (what the state does not
 * know) and what to delete (delete mode: what was delivered; keep mode
 * with delete-after: what was delivered long enough ago).
 */
static void
pop3_plan(struct session *s)
{
	struct pop3	*p = P(s);
	struct pop3_msg	*m;
	uint32_t	 i, known = 0;
	int64_t		 first;
	time_t		 now = time(NULL);

	p->want = xcalloc(p->nmsgs ? p->nmsgs : 1, sizeof *p->want);
	if (p->flags & P_NO_UIDL) {
		/* Every message is new; the digests catch repeats. */
		for (i = 0; i < p->nmsgs; i++) {
			if (!pop3_too_big(s, &p->msgs[i]))
				p->want[p->nwant++] = i;
		}
		goto done;
	}
	deliver_use_keys(s->dl);
	pop3_number_duplicates(s);
	deliver_listing_start(s->dl, "", 0);
	for (i = 0; i < p->nmsgs; i++) {
		m = &p->msgs[i];
		if (deliver_listed(s->dl, p->arena + m->uidl, m->uidl_len,
		    m->ordinal, m->listed ? m->size : 0, &first) ==
		    DELIVER_DONE) {
			known++;
			if (!s->ac->keep || (s->ac->delete_after > 0 &&
			    now - first >= s->ac->delete_after))
				pop3_want_dele(s, i);
			continue;
		}
		if (!pop3_too_big(s, m))
			p->want[p->nwant++] = i;
	}
	deliver_listing_end(s->dl, "", 0);
done:
	s->result.too_big_before = deliver_too_big(s->dl, s->result.too_big);
	log_debug("account=%s messages=%u new=%u known=%u too-big=%u%s",
	    s->ac->name, p->nmsgs, p->nwant, known, s->result.too_big,
	    p->flags & P_NO_UIDL ? " (no UIDL)" : "");
	if (p->nwant > 0)
		p->outbuf = xmalloc(OUTBUF_SIZE + 1);
	pop3_enter_state(s, POP3_STATE_TRANSFER);
}

/* ---- RETR and DELE ---- */

/*
 * Keep the server busy: send RETRs while the window allows, DELEs for
 * committed messages, commit when nothing more is coming, and QUIT once
 * everything is done.
 */
static void
pop3_pump(struct session *s)
{
	struct pop3	*p = P(s);
	int		 pipelining = (p->flags & P_PIPELINING) != 0;
	char		*cause = NULL;
	uint32_t	 i;

	if ((s->flags & S_DEAD) || p->state != POP3_STATE_TRANSFER)
		return;
	/* Nothing more is coming in: commit what came (DELEs follow). */
	if (p->retr_inflight == 0 && deliver_batched(s->dl) > 0 &&
	    (p->next_want >= p->nwant || (s->flags & S_STOPPING)) &&
	    deliver_commit(s->dl, &cause) == -1) {
		session_fail(s, EXIT_IOERR, "cannot deliver: %s; nothing is "
		    "deleted from the server", cause);
		free(cause);
		return;
	}
	while (p->next_dele < p->ndele && (pipelining || p->qlen == 0)) {
		i = p->dele[p->next_dele++];
		pop3_send(s, CMD_DELE, i, "DELE %u", p->msgs[i].num);
	}
	while (!(s->flags & S_STOPPING) && p->next_want < p->nwant &&
	    (pipelining || p->qlen == 0) &&
	    (p->retr_inflight == 0 || (p->retr_inflight < WINDOW_MAX_CMDS &&
	    p->bytes_inflight < WINDOW_MAX_BYTES))) {
		i = p->want[p->next_want++];
		p->retr_inflight++;
		p->bytes_inflight += p->msgs[i].size;
		pop3_send(s, CMD_RETR, i, "RETR %u", p->msgs[i].num);
	}
	if (p->qlen > 0 || deliver_batched(s->dl) > 0 ||
	    p->next_dele < p->ndele)
		return;
	if (p->next_want < p->nwant && !(s->flags & S_STOPPING))
		return;
	pop3_enter_state(s, POP3_STATE_QUIT);
}

/* A batch was delivered: its messages may go from the server now. */
static void
pop3_committed(struct session *s, void *cookie)
{
	struct pop3	*p = P(s);

	p->delivered++;
	if (!s->ac->keep)
		pop3_want_dele(s, (uint32_t)(uintptr_t)cookie);
}

/* Say goodbye; the deletions happen when the server gets the QUIT. */
static void
pop3_quit(struct session *s)
{
	struct pop3	*p = P(s);
	char		*cause = NULL;

	if (p->nwant > p->delivered)
		s->result.left = p->nwant - p->delivered;
	if (s->result.error == NULL && p->retr_failed > 0) {
		xasprintf(&s->result.error, "%u message%s could not be "
		    "retrieved and stayed on the server", p->retr_failed,
		    p->retr_failed == 1 ? "" : "s");
		s->result.exitcode = EXIT_PROTOCOL;
	}
	if (s->dl != NULL && deliver_removing(s->dl, &cause) == -1) {
		session_fail(s, EXIT_IOERR, "%s; not saying QUIT, so nothing "
		    "is deleted", cause);
		free(cause);
		return;
	}
	pop3_send(s, CMD_QUIT, 0, "QUIT");
	if (p->ndele > 0)
		return;		/* the deletions happen at QUIT: wait for it */
	/* Nothing depends on the reply: hang up once QUIT is on its way. */
	pop3_dequeue(s);
	session_hangup(s);
}

static void
quit_reply(struct session *s, struct pop3_reply *r)
{
	if (r->st != REPLY_OK) {
		pop3_server_error(s, "QUIT failed, so the server may not have "
		    "deleted the fetched messages (they are deleted at the "
		    "next poll)", r->text, r->len, EXIT_PROTOCOL);
		return;
	}
	if (s->dl != NULL)
		deliver_removed(s->dl);
	pop3_enter_state(s, POP3_STATE_DONE);
}

static void
dele_reply(struct session *s, struct pop3_reply *r)
{
	struct pop3	*p = P(s);
	struct pop3_msg	*m = &p->msgs[r->msg];
	char		 esc[LOG_ESCAPE_MAX], u[LOG_ESCAPE_MAX];

	if (r->st == REPLY_OK) {
		s->result.deleted++;
		deliver_removal_acked(s->dl, p->arena + m->uidl, m->uidl_len,
		    m->ordinal);
	} else
		log_warnx("account=%s DELE of message %u (uidl \"%s\") failed, "
		    "it is deleted at the next poll: server said \"%s\"",
		    s->ac->name, m->num, pop3_uidl_of(s, r->msg, u, sizeof u),
		    log_escape(esc, sizeof esc, r->text, r->len));
	pop3_pump(s);
}

/*
 * Replies are matched to commands by their order only.  A server that
 * sends one reply too many or too few, forgets to dot-stuff a line or
 * answers RETR with another message would have maild record a body under
 * the wrong UIDL, and later delete the message that UIDL really names.
 * RFC 1939 says LIST gives each message's exact size; a message that
 * arrives with another size is not recorded, and the session ends: the
 * rest of the conversation cannot be trusted.  (exact-sizes = no, for
 * servers whose sizes are estimates, keeps only a coarse bound.)
 */
static void
pop3_out_of_step(struct session *s, uint32_t i, uint64_t got, int others)
{
	struct pop3	*p = P(s);
	/* With other commands in flight, pipelining may have confused it. */
	int		 pipelined = (p->flags & P_PIPELINING) && others;

	if (pipelined)
		s->result.nopipelining = 1;
	session_fail(s, EXIT_PROTOCOL, "message %u arrived with %llu bytes, "
	    "but the server listed it with %llu: its replies are out of step, "
	    "or its sizes are wrong; the message was not kept, nothing was "
	    "deleted (if this server's sizes are estimates, set exact-sizes "
	    "= no)%s", p->msgs[i].num, (unsigned long long)got,
	    (unsigned long long)p->msgs[i].size, pipelined ?
	    "; pipelining is turned off for this account" : "");
}

static void
retr_reply(struct session *s, struct pop3_reply *r)
{
	struct pop3	*p = P(s);
	struct pop3_msg	*m = &p->msgs[r->msg];
	char		 esc[LOG_ESCAPE_MAX], u[LOG_ESCAPE_MAX];
	char		 trace[1024], *cause = NULL;
	uint64_t	 n;
	size_t		 tlen;

	if (r->st != REPLY_OK) {
		p->retr_inflight--;
		p->bytes_inflight -= m->size;
		p->retr_failed++;
		log_warnx("account=%s cannot retrieve message %u (uidl \"%s\"); "
		    "it stays on the server: server said \"%s\"", s->ac->name,
		    m->num, pop3_uidl_of(s, r->msg, u, sizeof u),
		    log_escape(esc, sizeof esc, r->text, r->len));
		pop3_pump(s);
		return;
	}
	/* Does a "+OK <n> octets" contradict LIST?  (Still queued.) */
	if (s->ac->exact_sizes && m->listed &&
	    parse_retr_octets(r->text, r->len, &n) == 0 && n != m->size) {
		pop3_out_of_step(s, r->msg, n, p->qlen > 1);
		return;
	}
	p->cur = r->msg;
	p->cur_raw = 0;
	p->cur_decoded = 0;
	body_decoder_init(&p->dec);
	tlen = deliver_trace_headers(s->ac, "POP3", session_peer(s),
	    s->result.tls, trace, sizeof trace);
	if (deliver_begin(s->dl, &p->msg, NULL, trace, tlen, &cause) == -1) {
		session_fail(s, EXIT_IOERR, "%s", cause);
		free(cause);
		return;
	}
	p->outlen = 0;
	p->rd = RD_BODY;	/* dequeued at the "." */
}

/* Write out what the decoder has produced so far. */
static int
pop3_flush_body(struct session *s)
{
	struct pop3	*p = P(s);

	if (p->outlen == 0)
		return (0);
	if (deliver_write(s->dl, &p->msg, p->outbuf, p->outlen) == -1) {
		session_fail(s, EXIT_IOERR, "cannot write to %s/tmp: %s",
		    deliver_maildir(s->dl), strerror(errno));
		return (-1);
	}
	p->outlen = 0;
	return (0);
}

/*
 * Stream message data from the connection to the file in tmp/, undoing
 * the POP3 framing on the way, in chunks: memory does not grow with the
 * size of a message or of its lines.
 */
static void
pop3_body(struct session *s, struct evbuffer *in)
{
	struct pop3		*p = P(s);
	struct evbuffer_iovec	 v[8];
	struct pop3_msg		*m = &p->msgs[p->cur];
	size_t			 consumed = 0, used, n, out;
	int			 i, nv;

	nv = evbuffer_peek(in, -1, NULL, v, 8);
	if (nv > 8)
		nv = 8;
	for (i = 0; i < nv && !p->dec.done; i++) {
		const char	*q = v[i].iov_base;
		size_t		 left = v[i].iov_len;

		while (left > 0 && !p->dec.done) {
			if (p->outlen >= OUTBUF_SIZE &&
			    pop3_flush_body(s) == -1)
				return;
			/* body_decode may emit one byte more than it eats:
			   outbuf has OUTBUF_SIZE + 1 bytes. */
			n = left;
			if (n > OUTBUF_SIZE - p->outlen)
				n = OUTBUF_SIZE - p->outlen;
			used = body_decode(&p->dec, q, n, p->outbuf + p->outlen,
			    &out);
			p->outlen += out;
			p->cur_decoded += out;
			q += used;
			left -= used;
			consumed += used;
		}
	}
	evbuffer_drain(in, consumed);
	p->cur_raw += consumed;
	session_progress(s, consumed);
	if (m->listed && p->cur_raw > SIZE_LIMIT(m->size)) {
		session_fail(s, EXIT_PROTOCOL, "message %u is far larger than "
		    "the %llu bytes the server announced; giving up on this "
		    "server", m->num, (unsigned long long)m->size);
		return;
	}
	if (p->outlen >= OUTBUF_SIZE / 2 || p->dec.done) {
		if (pop3_flush_body(s) == -1)
			return;
	}
	if (p->dec.done)
		pop3_message_done(s);
}

/* Is got the listed size, or that plus a CRLF the server added? */
static int
pop3_size_is(uint64_t got, uint64_t listed)
{
	return (got == listed || got == listed + 2);
}

/*
 * Does the message just received have the size LIST gave?  As RFC 1939
 * counts it, that is its size on the wire: what was written, less the
 * trace headers, plus the CRs of the CRLFs.  Some servers send bare LFs
 * but count CRLFs, or count LFs (the size on their disk): those are the
 * same message too.  A server may add a final CRLF to a message that
 * lacked one.
 */
static int
pop3_size_agrees(struct session *s, uint32_t i)
{
	struct pop3	*p = P(s);
	uint64_t	 out = p->cur_decoded, size = p->msgs[i].size;
	uint64_t	 wire = out + p->dec.crs;

	return (!s->ac->exact_sizes || !p->msgs[i].listed ||
	    pop3_size_is(wire, size) || pop3_size_is(out + p->dec.lines, size) ||
	    pop3_size_is(out, size));
}

/* The final "." of a message arrived. */
static void
pop3_message_done(struct session *s)
{
	struct pop3		*p = P(s);
	struct pop3_pending	 pd = pop3_dequeue(s);
	struct pop3_msg		*m = &p->msgs[pd.msg];
	char			*cause = NULL;
	int			 r;

	p->rd = RD_STATUS;
	p->retr_inflight--;
	p->bytes_inflight -= m->size;
	if (!pop3_size_agrees(s, pd.msg)) {
		deliver_discard(s->dl, &p->msg);
		pop3_out_of_step(s, pd.msg, p->cur_decoded + p->dec.crs,
		    p->qlen > 0);
		return;
	}
	r = deliver_end(s->dl, &p->msg, p->arena + m->uidl, m->uidl_len,
	    m->ordinal, m->listed ? m->size : 0, NULL,
	    (void *)(uintptr_t)pd.msg, &cause);
	if (r == -1) {
		session_fail(s, EXIT_IOERR, "cannot deliver: %s; nothing is "
		    "deleted from the server", cause);
		free(cause);
		return;
	}
	if (r == DELIVER_DONE) {
		/* No UIDL: delivered by a session that died before QUIT.
		   Or dedupe: delivered through another account. */
		if (p->flags & P_NO_UIDL)
			log_info("account=%s message %u was delivered before "
			    "(same content); deleting it without delivering "
			    "it again", s->ac->name, m->num);
		p->delivered++;
		if (!s->ac->keep)
			pop3_want_dele(s, pd.msg);
	}
	/* DELIVER_LATER: it stays on the server until the next poll. */
	pop3_pump(s);
}

/* ---- the session's hooks ---- */

/* Asked to stop: no new RETRs; what is on its way is delivered. */
static void
pop3_stop(struct session *s)
{
	struct pop3	*p = P(s);

	if (p->state < POP3_STATE_TRANSFER) {
		session_fail(s, EXIT_TEMPFAIL, "stopped before fetching");
		return;
	}
	if (p->state == POP3_STATE_TRANSFER)
		pop3_pump(s);
}

/*
 * The session is failing: drop the message being received, and keep the
 * ones that are complete in tmp/: they are good, and not keeping them
 * would only mean fetching them again.
 */
static void
pop3_abort(struct session *s)
{
	struct pop3	*p = P(s);
	char		*cause = NULL;

	if (s->dl == NULL)
		return;
	deliver_discard(s->dl, &p->msg);
	if (deliver_batched(s->dl) > 0 &&
	    deliver_abort(s->dl, &cause) == -1) {
		log_warnx("account=%s cannot keep the messages fetched before "
		    "the error: %s", s->ac->name, cause);
		free(cause);
	}
	if (p->state >= POP3_STATE_TRANSFER && p->nwant > p->delivered)
		s->result.left = p->nwant - p->delivered;
}

static const char *
pop3_state(struct session *s)
{
	return (pop3_state_names[P(s)->state]);
}

/* What a lost connection cut short. */
static void
pop3_lost(struct session *s, char *buf, size_t size)
{
	struct pop3	*p = P(s);

	if (p->state == POP3_STATE_TRANSFER && p->rd == RD_BODY)
		snprintf(buf, size, " while receiving message %u; it will be "
		    "fetched again", p->msgs[p->cur].num);
}

static void
pop3_free(struct session *s)
{
	struct pop3	*p = P(s);

	free(p->q);
	free(p->sasl_error);
	free(p->msgs);
	free(p->arena);
	free(p->want);
	free(p->dele);
	free(p->outbuf);
	free(p);
	s->p = NULL;
}

const struct proto pop3_proto = {
	.name = "pop3",
	.connected = pop3_connected,
	.read = pop3_read,
	.stop = pop3_stop,
	.abort = pop3_abort,
	.state = pop3_state,
	.lost = pop3_lost,
	.committed = pop3_committed,
	.ready = pop3_pump,
	.free = pop3_free,
};
