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
 * imap.c: IMAP as a source (RFC 3501 / 9051, with 2177 IDLE, 2595
 * STARTTLS, 4315 UIDPLUS, 4959 SASL-IR, 6851 MOVE, 5530 response codes),
 * as a state machine on top of session.c, delivering through deliver.c.
 *
 * What is new is decided by UID, never by \Seen: a message's record is
 * keyed "<folder> NUL <UIDVALIDITY> NUL <UID>" and tagged with its content
 * digest (or, on Gmail, its X-GM-MSGID), so that when a folder's
 * UIDVALIDITY changes a message delivered before is recognised by its
 * digest as it is fetched again (and not delivered twice), and a message
 * Gmail shows in several folders (labels) is delivered once.
 *
 * For each folder: SELECT (EXAMINE when nothing will be changed), list
 * every message's UID and RFC822.SIZE, fetch the new ones with
 * "UID FETCH <set> (UID RFC822.SIZE BODY.PEEK[])" several commands at a
 * time, each body literal streamed into tmp/ with CRLF made LF; then,
 * only for messages whose delivery is committed (durable and recorded),
 * flag \Seen (mark-seen), or move them (UID MOVE, or COPY + delete), or
 * delete them: UID STORE +FLAGS.SILENT (\Deleted) and UID EXPUNGE of
 * exactly those UIDs (never a bare EXPUNGE, which would also remove what
 * another client marked).  Without UIDPLUS maild expunges only when no
 * other message of the folder is marked \Deleted.
 *
 * With IDLE, the session then stays in the folder and waits for the
 * server to announce new mail (EXISTS), fetches it, and waits again,
 * re-issuing IDLE every idle-refresh.
 *
 * imap_enter_state() is the only way from one state to the next, as in
 * pop3.c; every command is tagged and its tagged answer goes to the
 * handler the command was sent with.
 */

#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "maild.h"
#include "session.h"

/* A line (less its literals) may not be longer; nor a whole response. */
#define IMAP_LINE_MAX		(256U << 10)
#define IMAP_RESPONSE_MAX	(1U << 20)
/* Literals other than message bodies are kept in memory up to this. */
#define IMAP_SMALL_LITERAL_MAX	(64U << 10)
/* Values of one response. */
#define IMAP_NODES_MAX		4096
/* Commands in flight at once (pipelining); FETCHes among them, and
   STORE/COPY/MOVE/EXPUNGE commands of one step. */
#define IMAP_PENDING_MAX	64
#define FETCH_CMDS_MAX		8
#define REMOVE_CMDS_MAX		16
/* One FETCH asks for at most this many messages, or bytes. */
#define FETCH_MSGS_MAX		64
#define FETCH_BYTES_MAX		(4U << 20)
/* All FETCHes in flight hold at most this many bytes. */
#define WINDOW_BYTES_MAX	(16U << 20)
/* Decoded body bytes are written to disk in chunks of this size. */
#define OUTBUF_SIZE		(128U << 10)
/* A server that keeps challenging is not going to let us in. */
#define SASL_MAX_STEPS		4
/* Longest set of UIDs in one command line, and longest line (RFC 7162
   section 4: servers take 8192 octets; a quoted folder name may take
   2300 of them). */
#define SET_MAX			2000
#define IMAP_CMD_MAX		8192
/* How much larger than its listed RFC822.SIZE a body literal may be
   (as in pop3.c): beyond that the server is lying. */
#define SIZE_LIMIT(sz)		(2 * ((sz) + (1U << 20)))

enum imap_state {
	IMAP_STATE_GREETING,
	IMAP_STATE_CAPABILITY,
	IMAP_STATE_STARTTLS,
	IMAP_STATE_AUTH,
	IMAP_STATE_SELECT,	/* SELECT or EXAMINE the folder */
	IMAP_STATE_LIST,	/* UIDs and sizes */
	IMAP_STATE_TRANSFER,	/* fetch, commit, then flag/move/delete */
	IMAP_STATE_IDLE,	/* waiting for news (RFC 2177) */
	IMAP_STATE_LOGOUT,
	IMAP_STATE_DONE
};

static const char *imap_state_names[] = {
	[IMAP_STATE_GREETING] = "greeting",
	[IMAP_STATE_CAPABILITY] = "capability",
	[IMAP_STATE_STARTTLS] = "starttls",
	[IMAP_STATE_AUTH] = "auth",
	[IMAP_STATE_SELECT] = "select",
	[IMAP_STATE_LIST] = "list",
	[IMAP_STATE_TRANSFER] = "transfer",
	[IMAP_STATE_IDLE] = "idle",
	[IMAP_STATE_LOGOUT] = "logout",
	[IMAP_STATE_DONE] = "done",
};

/* Capabilities maild acts upon. */
#define CAP_IMAP4REV1		0x0001
#define CAP_STARTTLS		0x0002
#define CAP_LOGINDISABLED	0x0004
#define CAP_IDLE		0x0008
#define CAP_UIDPLUS		0x0010
#define CAP_MOVE		0x0020
#define CAP_SASL_IR		0x0040
#define CAP_LITERALPLUS		0x0080	/* LITERAL+ or LITERAL- */
#define CAP_GMAIL		0x0100	/* X-GM-EXT-1 */
#define CAP_AUTH_PLAIN		0x0200
#define CAP_AUTH_LOGIN		0x0400
#define CAP_AUTH_CRAM_MD5	0x0800
#define CAP_AUTH_XOAUTH2	0x1000
#define CAP_AUTH_OAUTHBEARER	0x2000
#define CAP_KNOWN		0x8000	/* the list was read */

struct imap;
typedef void (*imap_done_fn)(struct session *, struct imap_resp *);

/* A command sent and not answered yet. */
struct imap_cmd {
	unsigned	 tag;
	imap_done_fn	 done;
	/* A FETCH of bodies: which messages, how many bytes listed. */
	uint32_t	 first, count;	/* into the want (or removal) list */
	uint64_t	 bytes;
	uint64_t	 maxsize;	/* the largest of them */
	/* Parts of the command still to send after a "+" (literals). */
	struct evbuffer	*rest;
	int		 secret;	/* rest holds a password */
};

/* A message of the folder's listing. */
struct imap_msg {
	uint64_t	 size;		/* RFC822.SIZE */
	uint64_t	 gmid;		/* X-GM-MSGID, 0 if none */
	uint32_t	 uid;
	uint8_t		 flags;
#define M_WANT		0x01	/* to be fetched */
#define M_GOT		0x02	/* its body arrived (in the batch) */
#define M_DONE		0x04	/* delivered (or known): may be removed */
#define M_REMOVE	0x08	/* to be moved or deleted */
#define M_SEEN		0x10	/* to be flagged \Seen */
};

struct imap {
	enum imap_state	 state;
	unsigned	 caps;
	int		 flags;
#define I_PREAUTH	0x01	/* the greeting logged us in */
#define I_BYE		0x02	/* the server said BYE */
#define I_IDLING	0x04	/* "+ idling" came; DONE ends it */
#define I_DONE_SENT	0x08	/* DONE sent, the IDLE's answer due */
#define I_NEWS		0x10	/* EXISTS grew: fetch after the IDLE */
#define I_EXAMINE	0x20	/* the folder is read-only for us */
#define I_SASL_IR	0x40
#define I_REIDENT	0x80	/* UIDVALIDITY changed: match by digest */
#define I_FULL		0x100	/* list everything after this IDLE */
#define I_NOIDLE	0x200	/* the server refused IDLE: poll */
	unsigned	 nexttag;
	struct imap_cmd	 pending[IMAP_PENDING_MAX];
	size_t		 npending;
	enum auth_method method;
	int		 sasl_step;
	char		*sasl_error;

	/* The response being read. */
	char		*resp;
	size_t		 resplen, respcap;
	uint64_t	 literal;	/* bytes of a literal still to come */
	int		 body;		/* ... and it is a body, streamed */
	int		 body_pending_cr;
	int		 body_seen;	/* this response had a body */
	struct imap_node nodes[IMAP_NODES_MAX];
	struct deliver_msg msg;
	uint64_t	 body_raw;	/* bytes of the literal */
	char		*outbuf;
	size_t		 outlen;

	/* The folder being worked on. */
	size_t		 folder;	/* index into ac->folders */
	char		*mailbox;	/* its name on the wire, quoted */
	char		*subdir;	/* its Maildir++ folder, or NULL */
	char		 delim;		/* the server's hierarchy separator */
	int		 delim_known;
	uint32_t	 validity;
	int		 have_validity;
	uint32_t	 exists;
	char		*prefix;	/* "<folder>\0<validity>\0" */
	size_t		 prefixlen;
	char		*fprefix;	/* "<folder>\0" */
	size_t		 fprefixlen;
	struct imap_msg	*msgs;
	uint32_t	 nmsgs, capmsgs;
	uint32_t	*want;		/* indexes into msgs, by UID */
	uint32_t	 nwant, next_want, nfetching;
	uint64_t	 bytes_inflight;
	uint32_t	 maxuid;	/* the highest UID listed */
	unsigned	 missing;	/* asked for and not returned */
	unsigned	 delivered;
	unsigned	 removing;	/* STORE/EXPUNGE/MOVE in flight */
	int		 rem_step;
#define REM_NONE	0
#define REM_SEEN	1
#define REM_MOVE	2
#define REM_COPY	3
#define REM_DELETE	4
#define REM_SEARCH	5
#define REM_EXPUNGE	6
#define REM_DONE	7
	char		*move_to;	/* the move-to folder, quoted */
	int		 partial;	/* listing only what is new */
	int		 fast;		/* fetching behind DONE, unlisted */
	uint32_t	*rem;		/* the step's messages, indexes */
	uint32_t	 nrem, next_rem;
	uint32_t	*search;	/* SEARCH DELETED's answer */
	size_t		 nsearch;
	int		 searched;
	struct event	*refresh_ev;	/* re-IDLE */
};

#define I(s)	((struct imap *)(s)->p)

static void	imap_enter_state(struct session *, enum imap_state);
static int	imap_send(struct session *, imap_done_fn, const char *, ...)
		    PRINTFLIKE(3, 4);
static struct imap_cmd *imap_cmd_new(struct session *, imap_done_fn);
static void	imap_capabilities(struct session *, const char *, size_t);
static void	imap_login(struct session *);
static void	imap_next_folder(struct session *);
static void	imap_select(struct session *);
static void	imap_pump(struct session *);
static void	imap_remove(struct session *);
static void	imap_remove_more(struct session *);
static void	imap_last_cmd(struct session *, uint32_t, uint32_t);
static void	imap_idle(struct session *);
static void	imap_response(struct session *, struct imap_resp *);
static void	imap_folder_done(struct session *);
static void	imap_idle_end(struct session *);
static void	imap_relist(struct session *);
static int	imap_may_idle(struct session *);
static int	imap_fast_msg(struct session *, struct imap_resp *);

static void	greeting_done(struct session *, struct imap_resp *);
static void	capability_done(struct session *, struct imap_resp *);
static void	starttls_done(struct session *, struct imap_resp *);
static void	login_done(struct session *, struct imap_resp *);
static void	select_done(struct session *, struct imap_resp *);
static void	delim_done(struct session *, struct imap_resp *);
static void	list_done(struct session *, struct imap_resp *);
static void	fetch_done(struct session *, struct imap_resp *);
static void	store_done(struct session *, struct imap_resp *);
static void	search_done(struct session *, struct imap_resp *);
static void	expunge_done(struct session *, struct imap_resp *);
static void	idle_done(struct session *, struct imap_resp *);
static void	logout_done(struct session *, struct imap_resp *);

/* ---- sending ---- */

/*
 * A new command in flight.  The windows (FETCH_CMDS_MAX,
 * REMOVE_CMDS_MAX) keep their number below IMAP_PENDING_MAX whatever the
 * server does; should that ever fail, the session ends (NULL).
 */
static struct imap_cmd *
imap_cmd_new(struct session *s, imap_done_fn done)
{
	struct imap	*p = I(s);
	struct imap_cmd	*c;

	if (p->npending >= IMAP_PENDING_MAX) {
		session_fail(s, EXIT_SOFTWARE, "more than %d IMAP commands in "
		    "flight (a bug in maild; please report it)",
		    IMAP_PENDING_MAX);
		return (NULL);
	}
	c = &p->pending[p->npending++];
	memset(c, 0, sizeof *c);
	c->tag = ++p->nexttag;
	c->done = done;
	if (p->npending == 1)
		session_arm_progress(s);
	return (c);
}

/*
 * Send a tagged command (its text after the tag); -1 if it failed.  Not
 * session_send(): IMAP's lines (sets of UIDs, folder names) are longer
 * than POP3's, up to IMAP_CMD_MAX.
 */
static int
imap_send(struct session *s, imap_done_fn done, const char *fmt, ...)
{
	struct imap_cmd	*c;
	struct evbuffer	*out;
	char		*line;
	va_list		 ap;
	int		 r;

	if (s->flags & S_DEAD)
		return (-1);
	va_start(ap, fmt);
	r = vasprintf(&line, fmt, ap);
	va_end(ap);
	if (r == -1)
		fatalx("imap_send: vasprintf");
	if (r > IMAP_CMD_MAX - 16) {
		session_fail(s, EXIT_CONFIG, "an IMAP command would be longer "
		    "than %d bytes; is a folder name that long?", IMAP_CMD_MAX);
		free(line);
		return (-1);
	}
	if ((c = imap_cmd_new(s, done)) == NULL) {
		free(line);
		return (-1);
	}
	log_trace("account=%s >>> A%u %s", s->ac->name, c->tag, line);
	out = bufferevent_get_output(s->bev);
	evbuffer_add_printf(out, "A%u ", c->tag);
	evbuffer_add(out, line, (size_t)r);
	evbuffer_add(out, "\r\n", 2);
	free(line);
	return (0);
}

/* The command whose tag this is; NULL if none. */
static struct imap_cmd *
imap_cmd_find(struct session *s, const char *tag, size_t len)
{
	struct imap	*p = I(s);
	uint64_t	 n;
	size_t		 i;

	if (len < 2 || tag[0] != 'A' || imap_number(tag + 1, len - 1,
	    UINT32_MAX, &n) == -1)
		return (NULL);
	for (i = 0; i < p->npending; i++) {
		if (p->pending[i].tag == n)
			return (&p->pending[i]);
	}
	return (NULL);
}

static void
imap_cmd_remove(struct session *s, struct imap_cmd *c)
{
	struct imap	*p = I(s);
	size_t		 i = c - p->pending;

	if (c->rest != NULL) {
		if (c->secret) {
			size_t	 n = evbuffer_get_length(c->rest);
			char	*buf = xmalloc(n + 1);

			evbuffer_remove(c->rest, buf, n);
			wipe(buf, n);
			free(buf);
		}
		evbuffer_free(c->rest);
	}
	memmove(&p->pending[i], &p->pending[i + 1],
	    (p->npending - i - 1) * sizeof p->pending[0]);
	p->npending--;
}

/*
 * An astring argument: quoted when it can be, else a literal, which (not
 * a non-synchronizing one with LITERAL+) waits for the server's "+".
 * Appends to line (what goes now) or, once a literal waits, to rest.
 */
static void
imap_astring(struct session *s, struct evbuffer *line, struct evbuffer **rest,
    const char *str, size_t len, int *waiting)
{
	struct imap	*p = I(s);
	struct evbuffer	*to = *waiting ? *rest : line;
	char		 q[1100];
	ssize_t		 n;

	if (len < 1000 && (n = imap_quote(str, len, q, sizeof q)) != -1) {
		evbuffer_add(to, q, n);
		wipe(q, sizeof q);
		return;
	}
	if (p->caps & CAP_LITERALPLUS) {
		evbuffer_add_printf(to, "{%zu+}\r\n", len);
		evbuffer_add(to, str, len);
		return;
	}
	evbuffer_add_printf(to, "{%zu}\r\n", len);
	if (*rest == NULL)
		*rest = evbuffer_new();
	/* What follows goes after the server's "+". */
	*waiting = 1;
	evbuffer_add(*rest, str, len);
}

/* LOGIN user password, with literals where they are needed. */
static void
imap_send_login(struct session *s)
{
	struct imap_cmd	*c;
	struct evbuffer	*line, *rest = NULL;
	int		 waiting = 0;
	size_t		 n;
	char		*buf;

	if ((c = imap_cmd_new(s, login_done)) == NULL)
		return;
	line = evbuffer_new();
	evbuffer_add_printf(line, "A%u LOGIN ", c->tag);
	imap_astring(s, line, &rest, s->ac->user, strlen(s->ac->user),
	    &waiting);
	evbuffer_add(waiting ? rest : line, " ", 1);
	imap_astring(s, line, &rest, s->secret, s->secretlen, &waiting);
	evbuffer_add(waiting ? rest : line, "\r\n", 2);
	if (waiting) {
		/* Up to the first "{n}\r\n"; the rest after "+". */
		c->rest = rest;
		c->secret = 1;
	} else if (rest != NULL)
		evbuffer_free(rest);
	log_trace("account=%s >>> A%u LOGIN %s ********", s->ac->name, c->tag,
	    s->ac->user);
	n = evbuffer_get_length(line);
	buf = xmalloc(n);
	evbuffer_remove(line, buf, n);
	evbuffer_add(bufferevent_get_output(s->bev), buf, n);
	wipe(buf, n);
	free(buf);
	evbuffer_free(line);
}

/* ---- states ---- */

static void
imap_enter_state(struct session *s, enum imap_state new)
{
	struct imap	*p = I(s);
	struct imap_cmd	*c;

	log_trace("account=%s state %s -> %s", s->ac->name,
	    imap_state_names[p->state], imap_state_names[new]);
	p->state = new;
	switch (new) {
	case IMAP_STATE_GREETING:
		if ((c = imap_cmd_new(s, greeting_done)) != NULL)
			c->tag = 0;
		break;
	case IMAP_STATE_CAPABILITY:
		p->caps = 0;
		imap_send(s, capability_done, "CAPABILITY");
		break;
	case IMAP_STATE_STARTTLS:
		imap_send(s, starttls_done, "STARTTLS");
		break;
	case IMAP_STATE_AUTH:
		imap_login(s);
		break;
	case IMAP_STATE_SELECT:
		imap_select(s);
		break;
	case IMAP_STATE_LIST:
		if (p->exists == 0) {
			/* "1:*" of an empty folder is an error on some. */
			list_done(s, NULL);
			break;
		}
		imap_send(s, list_done, "UID FETCH 1:* (UID RFC822.SIZE%s)",
		    (p->caps & CAP_GMAIL) ? " X-GM-MSGID" : "");
		break;
	case IMAP_STATE_TRANSFER:
		if (p->nwant > 0 && p->outbuf == NULL)
			p->outbuf = xmalloc(OUTBUF_SIZE);
		imap_pump(s);
		break;
	case IMAP_STATE_IDLE:
		imap_idle(s);
		break;
	case IMAP_STATE_LOGOUT:
		imap_send(s, logout_done, "LOGOUT");
		break;
	case IMAP_STATE_DONE:
		session_finish(s);
		break;
	}
}

/* The connection is up: at first, and again after STARTTLS. */
static void
imap_connected(struct session *s)
{
	struct imap	*p = I(s);

	char		 utf7[1100], q[2300];
	ssize_t		 n;

	if (p == NULL) {
		s->p = p = xcalloc(1, sizeof *p);
		p->state = IMAP_STATE_GREETING;
		if (s->dl != NULL) {
			deliver_want_digests(s->dl);
			deliver_stable_keys(s->dl);
		}
		if (s->ac->move_to != NULL) {
			n = imap_utf7_encode(s->ac->move_to,
			    strlen(s->ac->move_to), utf7, sizeof utf7 - 1);
			if (n == -1 || (n = imap_quote(utf7, (size_t)n, q,
			    sizeof q - 1)) == -1) {
				session_fail(s, EXIT_CONFIG, "move-to cannot be "
				    "named in IMAP");
				return;
			}
			q[n] = '\0';
			p->move_to = xstrdup(q);
		}
		imap_enter_state(s, IMAP_STATE_GREETING);
		return;
	}
	/* RFC 2595: forget what was learnt before TLS. */
	imap_enter_state(s, IMAP_STATE_CAPABILITY);
}

/* A tagged NO or BAD (or BYE) where we cannot go on: classify it. */
static void
imap_server_error(struct session *s, const char *what, struct imap_resp *r,
    int code)
{
	char	esc[LOG_ESCAPE_MAX], c[64];
	size_t	n = r->codelen < sizeof c - 1 ? r->codelen : sizeof c - 1;

	memcpy(c, r->code != NULL ? r->code : "", r->code != NULL ? n : 0);
	c[r->code != NULL ? n : 0] = '\0';
	if (strcasecmp(c, "UNAVAILABLE") == 0 || strcasecmp(c, "INUSE") == 0 ||
	    strcasecmp(c, "LIMIT") == 0 || strcasecmp(c, "SERVERBUG") == 0) {
		s->result.resp_codes = RESP_SYS_TEMP;
		code = EXIT_TEMPFAIL;
	} else if (strcasecmp(c, "AUTHENTICATIONFAILED") == 0) {
		s->result.resp_codes = RESP_AUTH;
		code = EXIT_NOPERM;
	} else if (strcasecmp(c, "AUTHORIZATIONFAILED") == 0 ||
	    strcasecmp(c, "EXPIRED") == 0 || strcasecmp(c, "CONTACTADMIN") ==
	    0 || strcasecmp(c, "PRIVACYREQUIRED") == 0) {
		s->result.resp_codes = RESP_SYS_PERM;
		code = EXIT_NOPERM;
	}
	session_fail(s, code, "%s: server said '%s%s%s%s'", what,
	    c[0] != '\0' ? "[" : "", c, c[0] != '\0' ? "] " : "",
	    log_escape(esc, sizeof esc, r->text, r->textlen));
}

/* The greeting: OK (with capabilities, perhaps), PREAUTH or BYE. */
static void
greeting_done(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);

	if (r->cond == IMAP_COND_BYE) {
		imap_server_error(s, "the server refused the connection", r,
		    EXIT_UNAVAIL);
		return;
	}
	if (r->cond == IMAP_COND_PREAUTH) {
		if (s->ac->tls != TLS_IMPLICIT) {
			session_fail(s, EXIT_NOPERM, "the server logged us in "
			    "before TLS (PREAUTH), so STARTTLS is no longer "
			    "possible; maild does not go on without TLS");
			return;
		}
		p->flags |= I_PREAUTH;
	}
	if (p->caps & CAP_KNOWN)
		capability_done(s, NULL);
	else
		imap_enter_state(s, IMAP_STATE_CAPABILITY);
}

/* Note the capabilities of a CAPABILITY response or [CAPABILITY] code. */
static void
imap_capabilities(struct session *s, const char *list, size_t len)
{
	static const struct {
		const char	*name;
		unsigned	 flag;
	} caps[] = {
		{ "IMAP4rev1", CAP_IMAP4REV1 }, { "IMAP4rev2", CAP_IMAP4REV1 },
		{ "STARTTLS", CAP_STARTTLS },
		{ "LOGINDISABLED", CAP_LOGINDISABLED }, { "IDLE", CAP_IDLE },
		{ "UIDPLUS", CAP_UIDPLUS }, { "MOVE", CAP_MOVE },
		{ "SASL-IR", CAP_SASL_IR }, { "LITERAL+", CAP_LITERALPLUS },
		{ "X-GM-EXT-1", CAP_GMAIL }, { "AUTH=PLAIN", CAP_AUTH_PLAIN },
		{ "AUTH=LOGIN", CAP_AUTH_LOGIN },
		{ "AUTH=CRAM-MD5", CAP_AUTH_CRAM_MD5 },
		{ "AUTH=XOAUTH2", CAP_AUTH_XOAUTH2 },
		{ "AUTH=OAUTHBEARER", CAP_AUTH_OAUTHBEARER },
	};
	struct imap	*p = I(s);
	char		 esc[LOG_ESCAPE_MAX];
	size_t		 i;

	p->caps = CAP_KNOWN;
	for (i = 0; i < sizeof caps / sizeof caps[0]; i++) {
		if (imap_has_word(list, len, caps[i].name))
			p->caps |= caps[i].flag;
	}
	/* IMAP4rev2 has UIDPLUS, MOVE, LITERAL- built in. */
	if (imap_has_word(list, len, "IMAP4rev2"))
		p->caps |= CAP_UIDPLUS | CAP_MOVE;
	if (imap_has_word(list, len, "LITERAL-"))
		p->caps |= CAP_LITERALPLUS;
	snprintf(s->result.capa, sizeof s->result.capa, "%s",
	    log_escape(esc, sizeof esc, list, len));
}

/* The capabilities are known: on to STARTTLS, the login, or the work. */
static void
capability_done(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);

	if (r != NULL && r->cond != IMAP_COND_OK) {
		imap_server_error(s, "CAPABILITY failed", r, EXIT_PROTOCOL);
		return;
	}
	if (s->ac->tls == TLS_STARTTLS && !(s->flags & S_TLS_UP)) {
		if (!(p->caps & CAP_STARTTLS)) {
			session_fail(s, EXIT_NOPERM, "the server does not offer "
			    "STARTTLS; maild does not log in without TLS (use "
			    "tls = implicit on port 993 if the server has it)");
			return;
		}
		imap_enter_state(s, IMAP_STATE_STARTTLS);
		return;
	}
	if (s->result.login != NULL || (p->flags & I_PREAUTH)) {
		if (p->flags & I_PREAUTH)
			s->result.login = "preauth";
		imap_next_folder(s);
		return;
	}
	imap_enter_state(s, IMAP_STATE_AUTH);
}

static void
starttls_done(struct session *s, struct imap_resp *r)
{
	if (r->cond != IMAP_COND_OK) {
		imap_server_error(s, "the server refused STARTTLS; maild does "
		    "not log in without TLS", r, EXIT_NOPERM);
		return;
	}
	session_start_tls(s, "STARTTLS");
}

/* The SASL initial response of the method; NULL if it has none. */
static char *
imap_sasl_response(struct session *s)
{
	switch (I(s)->method) {
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

/*
 * auth = auto: the choice POP3 makes (auth.c), from what the server
 * offers: its AUTH= mechanisms, and LOGIN unless LOGINDISABLED.
 */
static int
imap_auth_auto(struct session *s)
{
	static const struct {
		unsigned	 flag;
		const char	*mech;
	} mechs[] = {
		{ CAP_AUTH_CRAM_MD5, "CRAM-MD5" }, { CAP_AUTH_PLAIN, "PLAIN" },
		{ CAP_AUTH_LOGIN, "LOGIN" },
	};
	struct imap		*p = I(s);
	struct pop3_capa	 capa;
	const char		*why = NULL;
	size_t			 i, o = 0;
	int			 m;

	memset(&capa, 0, sizeof capa);
	for (i = 0; i < sizeof mechs / sizeof mechs[0]; i++) {
		if (p->caps & mechs[i].flag)
			o += snprintf(capa.sasl + o, sizeof capa.sasl - o,
			    "%s%s", o ? " " : "", mechs[i].mech);
	}
	if (o > 0)
		capa.flags |= CAPA_SASL;
	if (!(p->caps & CAP_LOGINDISABLED))
		capa.flags |= CAPA_USER;
	m = auth_choose(AUTH_AUTO, &capa, 1, 0,
	    (s->flags & S_TLS_UP) != 0, &why);
	if (m == -1) {
		session_fail(s, EXIT_NOPERM, "cannot log in: %s", why);
		return (-1);
	}
	p->method = (enum auth_method)m;
	return (0);
}

/* Choose how to log in, and do. */
static void
imap_login(struct session *s)
{
	struct imap	*p = I(s);
	struct imap_cmd	*c;
	const char	*mech;
	char		*ir;
	int		 tls = (s->flags & S_TLS_UP) != 0;
	unsigned	 need = 0;

	p->method = s->ac->auth;
	if (p->method == AUTH_AUTO && imap_auth_auto(s) == -1)
		return;
	switch (p->method) {
	case AUTH_PLAIN:
		need = CAP_AUTH_PLAIN;
		break;
	case AUTH_LOGIN:
		need = CAP_AUTH_LOGIN;
		break;
	case AUTH_CRAM_MD5:
		need = CAP_AUTH_CRAM_MD5;
		break;
	case AUTH_XOAUTH2:
		need = CAP_AUTH_XOAUTH2;
		break;
	case AUTH_OAUTHBEARER:
		need = CAP_AUTH_OAUTHBEARER;
		break;
	case AUTH_APOP:
		session_fail(s, EXIT_CONFIG, "auth = apop is for POP3");
		return;
	default:
		break;
	}
	if (need != 0 && !(p->caps & need)) {
		session_fail(s, EXIT_NOPERM, "cannot log in: the server does "
		    "not offer %s (it offers: %s)", auth_method_name(p->method),
		    s->result.capa);
		return;
	}
	log_debug("account=%s login=%s", s->ac->name,
	    auth_method_name(p->method));
	if (p->method == AUTH_USER) {
		if (p->caps & CAP_LOGINDISABLED) {
			session_fail(s, EXIT_NOPERM, "cannot log in: the server "
			    "does not allow LOGIN here (LOGINDISABLED)%s",
			    tls ? "" : "; use TLS");
			return;
		}
		imap_send_login(s);
		return;
	}
	mech = auth_sasl_name(p->method);
	p->sasl_step = 0;
	if ((c = imap_cmd_new(s, login_done)) == NULL)
		return;
	ir = imap_sasl_response(s);
	if (ir != NULL && (p->caps & CAP_SASL_IR)) {
		char	prefix[64], trace[64];

		p->flags |= I_SASL_IR;
		snprintf(prefix, sizeof prefix, "A%u AUTHENTICATE %s ", c->tag,
		    mech);
		snprintf(trace, sizeof trace, "A%u AUTHENTICATE %s ********",
		    c->tag, mech);
		session_send_secret(s, prefix, ir, strlen(ir), trace);
	} else
		session_send(s, "A%u AUTHENTICATE %s", c->tag, mech);
	if (ir != NULL)
		freezero_str(ir);
}

/* A "+" from the server: a literal may go on, or SASL wants an answer. */
static void
imap_continuation(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	struct imap_cmd	*c = NULL;
	char		*resp = NULL, *buf;
	unsigned char	*json;
	size_t		 n, i, jlen;
	struct evbuffer_ptr ptr;
	char		 esc[LOG_ESCAPE_MAX];
	int		 step;

	for (i = 0; i < p->npending; i++) {
		if (p->pending[i].rest != NULL)
			c = &p->pending[i];
	}
	if (c != NULL) {
		/* The rest of the command, up to the next literal. */
		ptr = evbuffer_search(c->rest, "}\r\n", 3, NULL);
		n = ptr.pos == -1 ? evbuffer_get_length(c->rest) :
		    (size_t)ptr.pos + 3;
		buf = xmalloc(n);
		evbuffer_remove(c->rest, buf, n);
		evbuffer_add(bufferevent_get_output(s->bev), buf, n);
		wipe(buf, n);
		free(buf);
		if (evbuffer_get_length(c->rest) == 0) {
			evbuffer_free(c->rest);
			c->rest = NULL;
		}
		return;
	}
	if (p->state == IMAP_STATE_IDLE) {
		p->flags |= I_IDLING;
		/* Silence is normal now; the refresh timer watches. */
		session_idle(s, 1);
		if ((p->flags & (I_NEWS | I_FULL)) || (s->flags & S_STOPPING))
			imap_idle_end(s);
		return;
	}
	if (p->state != IMAP_STATE_AUTH) {
		session_fail(s, EXIT_PROTOCOL, "unexpected continuation from "
		    "the server (state %s)", imap_state_names[p->state]);
		return;
	}
	step = p->sasl_step++;
	if (step >= SASL_MAX_STEPS) {
		session_fail(s, EXIT_PROTOCOL, "the server keeps sending SASL "
		    "challenges; giving up the login");
		return;
	}
	switch (p->method) {
	case AUTH_PLAIN:
		if (step == 0 && !(p->flags & I_SASL_IR))
			resp = imap_sasl_response(s);
		break;
	case AUTH_LOGIN:
		if (step == 0)
			resp = auth_b64(s->ac->user, strlen(s->ac->user));
		else if (step == 1)
			resp = auth_b64(s->secret, s->secretlen);
		break;
	case AUTH_CRAM_MD5:
		if (step == 0 && (resp = auth_cram_md5(s->ac->user, s->secret,
		    s->secretlen, r->text, r->textlen)) == NULL) {
			session_fail(s, EXIT_PROTOCOL, "the server sent a "
			    "CRAM-MD5 challenge that is not base64");
			return;
		}
		break;
	case AUTH_XOAUTH2:
	case AUTH_OAUTHBEARER:
		if (step == 0 && !(p->flags & I_SASL_IR)) {
			resp = imap_sasl_response(s);
			break;
		}
		/* A refusal with details; answer so the server says NO. */
		if ((json = auth_unb64(r->text, r->textlen, &jlen)) != NULL) {
			free(p->sasl_error);
			p->sasl_error = xstrdup(log_escape(esc, sizeof esc,
			    json, jlen));
			free(json);
		}
		session_send_secret(s, p->method == AUTH_XOAUTH2 ? "" : "AQ==",
		    "", 0, "(acknowledging the error)");
		return;
	default:
		break;
	}
	if (resp == NULL) {
		session_send_secret(s, "*", "", 0, "*");
		return;
	}
	session_send_secret(s, "", resp, strlen(resp), "********");
	freezero_str(resp);
}

static void
login_done(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	char		 what[512], esc[LOG_ESCAPE_MAX];

	if (r->cond != IMAP_COND_OK) {
		if (p->sasl_error != NULL)
			snprintf(what, sizeof what, "login (%s) refused, the "
			    "token was not accepted (%s); check "
			    "password-command", auth_method_name(p->method),
			    p->sasl_error);
		else
			snprintf(what, sizeof what, "login (%s) refused; check "
			    "user and password", auth_method_name(p->method));
		imap_server_error(s, what, r, EXIT_NOPERM);
		return;
	}
	session_wipe_secret(s);
	s->result.login = auth_method_name(p->method);
	log_debug("account=%s logged in (%s)", s->ac->name, s->result.login);
	(void)esc;
	/* The capabilities may differ after the login: read them again. */
	if (r->code != NULL && r->codelen == 10 &&
	    strncasecmp(r->code, "CAPABILITY", 10) == 0) {
		imap_capabilities(s, r->codeargs, r->codeargslen);
		imap_next_folder(s);
		return;
	}
	imap_enter_state(s, IMAP_STATE_CAPABILITY);
}

/* ---- folders ---- */

/* Forget what the last folder left. */
static void
imap_folder_clear(struct imap *p)
{
	free(p->mailbox);
	free(p->subdir);
	free(p->prefix);
	free(p->fprefix);
	free(p->msgs);
	free(p->want);
	free(p->search);
	free(p->rem);
	p->mailbox = p->subdir = p->prefix = p->fprefix = NULL;
	p->msgs = NULL;
	p->want = p->search = p->rem = NULL;
	p->nrem = p->next_rem = 0;
	p->nmsgs = p->capmsgs = p->nwant = p->next_want = p->nfetching = 0;
	p->nsearch = 0;
	p->searched = 0;
	p->maxuid = 0;
	p->bytes_inflight = 0;
	p->missing = 0;
	p->have_validity = 0;
	p->exists = 0;
	p->flags &= ~(I_EXAMINE | I_REIDENT | I_NEWS);
}

/*
 * May this session wait in its folder for news?  Only a session of one
 * folder, in the daemon, when the server has IDLE and idle is not off.
 */
static int
imap_may_idle(struct session *s)
{
	struct imap	*p = I(s);

	return (s->idle && s->nfolders == 1 && (p->caps & CAP_IDLE) &&
	    !(p->flags & I_NOIDLE) && s->ac->idle != IDLE_NO &&
	    !(s->flags & S_STOPPING));
}

/* On to the next folder, or (after the last) to LOGOUT. */
static void
imap_next_folder(struct session *s)
{
	struct imap	*p = I(s);

	if (p->mailbox != NULL)
		p->folder++;
	else
		p->folder = s->first_folder;
	imap_folder_clear(p);
	if ((s->flags & S_STOPPING) || p->folder >= s->first_folder +
	    s->nfolders || p->folder >= s->ac->nfolders) {
		imap_enter_state(s, IMAP_STATE_LOGOUT);
		return;
	}
	imap_enter_state(s, IMAP_STATE_SELECT);
}

/* SELECT (or EXAMINE) the folder; with folder-subdirs, learn the
   hierarchy separator first. */
static void
imap_select(struct session *s)
{
	struct imap	*p = I(s);
	const char	*name = s->ac->folders[p->folder];
	char		 utf7[1100], q[2300];
	ssize_t		 n;

	if ((n = imap_utf7_encode(name, strlen(name), utf7,
	    sizeof utf7 - 1)) == -1) {
		session_fail(s, EXIT_CONFIG, "folder \"%s\" is not valid UTF-8",
		    name);
		return;
	}
	utf7[n] = '\0';
	if ((n = imap_quote(utf7, (size_t)n, q, sizeof q - 1)) == -1) {
		session_fail(s, EXIT_CONFIG, "folder \"%s\" cannot be named "
		    "in IMAP", name);
		return;
	}
	q[n] = '\0';
	free(p->mailbox);
	p->mailbox = xstrdup(q);
	if (s->ac->folder_subdirs && !p->delim_known &&
	    !(s->flags & S_CHECK)) {
		imap_send(s, delim_done, "LIST \"\" \"\"");
		return;
	}
	/* Nothing to change in the folder: open it read-only. */
	if ((s->flags & S_CHECK) || (s->ac->keep && !s->ac->mark_seen &&
	    s->ac->delete_after == 0))
		p->flags |= I_EXAMINE;
	imap_send(s, select_done, "%s %s", (p->flags & I_EXAMINE) ?
	    "EXAMINE" : "SELECT", p->mailbox);
}

/* LIST "" "": the hierarchy separator is known (NIL: none). */
static void
delim_done(struct session *s, struct imap_resp *r)
{
	if (r->cond != IMAP_COND_OK) {
		imap_server_error(s, "LIST failed", r, EXIT_PROTOCOL);
		return;
	}
	I(s)->delim_known = 1;
	imap_select(s);
}

/*
 * With folder-subdirs, the folder's Maildir++ folder (".Name", named as
 * Dovecot names it; see imap_maildir_folder()), or the Maildir itself
 * for INBOX.  A name that has no safe Maildir++ name (the folder "/"
 * with the separator "/" would be "..") is refused.
 */
static int
imap_folder_subdir(struct session *s)
{
	struct imap	*p = I(s);
	const char	*name = s->ac->folders[p->folder];
	char		 utf7[1100], sub[256], esc[LOG_ESCAPE_MAX];
	ssize_t		 n;

	free(p->subdir);
	p->subdir = NULL;
	if ((n = imap_utf7_encode(name, strlen(name), utf7,
	    sizeof utf7)) == -1 || (n = imap_maildir_folder(utf7, (size_t)n,
	    p->delim, sub, sizeof sub)) == -1) {
		session_fail(s, EXIT_CONFIG, "folder \"%s\" has no safe "
		    "Maildir++ folder name (an empty level between the "
		    "server's hierarchy separators \"%c\", or too long); fetch "
		    "it without folder-subdirs, in an account of its own",
		    log_escape(esc, sizeof esc, name, strlen(name)),
		    p->delim != '\0' ? p->delim : '-');
		return (-1);
	}
	if (n > 0)
		p->subdir = xstrdup(sub);
	return (0);
}

/* Note the UIDVALIDITYs other than now of the folder's records. */
static void
imap_old_validity(const char *key, size_t len, uint32_t ord, const char *tag,
    void *arg)
{
	struct session	*s = arg;
	struct imap	*p = I(s);

	if (len < p->prefixlen || memcmp(key, p->prefix, p->prefixlen) != 0)
		p->flags |= I_REIDENT;
}

static void
select_done(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	const char	*name = s->ac->folders[p->folder];
	char		 esc[LOG_ESCAPE_MAX];
	size_t		 len = strlen(name);

	if (r->cond != IMAP_COND_OK) {
		imap_server_error(s, "cannot open the folder", r,
		    EXIT_PROTOCOL);
		return;
	}
	if (!p->have_validity) {
		session_fail(s, EXIT_PROTOCOL, "the server gave no UIDVALIDITY "
		    "for folder \"%s\"", log_escape(esc, sizeof esc, name,
		    len));
		return;
	}
	if (s->flags & S_CHECK) {
		/* The messages and their sizes, from the listing. */
		imap_enter_state(s, IMAP_STATE_LIST);
		return;
	}
	if (s->ac->folder_subdirs && imap_folder_subdir(s) == -1)
		return;
	free(p->fprefix);
	p->fprefixlen = len + 1;
	p->fprefix = xmalloc(p->fprefixlen + 1);
	memcpy(p->fprefix, name, len + 1);
	/* NUL separates: a folder name cannot hold one. */
	free(p->prefix);
	p->prefix = xmalloc(len + 16);
	memcpy(p->prefix, name, len + 1);
	p->prefixlen = len + 1 + (size_t)snprintf(p->prefix + len + 1, 12,
	    "%u", p->validity);
	p->prefix[p->prefixlen++] = '\0';
	deliver_scan(s->dl, p->fprefix, p->fprefixlen, imap_old_validity, s);
	if (p->flags & I_REIDENT) {
		log_info("account=%s folder \"%s\" has a new UIDVALIDITY (%u): "
		    "its messages are fetched again and recognised by their "
		    "content, so that none is delivered twice", s->ac->name,
		    log_escape(esc, sizeof esc, name, len), p->validity);
		deliver_reident(s->dl, p->fprefix, p->fprefixlen, p->prefix,
		    p->prefixlen);
	}
	imap_enter_state(s, IMAP_STATE_LIST);
}

/* One message of a FETCH listing: UID, RFC822.SIZE (X-GM-MSGID). */
static void
imap_list_fetch(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	struct imap_msg	*m;
	uint64_t	 uid, size, gmid = 0;

	if (imap_node_number(r, imap_fetch_att(r, "UID"), UINT32_MAX,
	    &uid) == -1 || uid == 0)
		return;		/* unsolicited (flags), or broken: ignored */
	if (p->partial && uid <= p->maxuid)
		return;		/* "n:*" returns the last one anyway */
	if (imap_node_number(r, imap_fetch_att(r, "RFC822.SIZE"),
	    IMAP_LITERAL_LEN_MAX, &size) == -1) {
		session_fail(s, EXIT_PROTOCOL, "the server listed UID %llu "
		    "without a valid RFC822.SIZE", (unsigned long long)uid);
		return;
	}
	if (p->caps & CAP_GMAIL)
		imap_node_number(r, imap_fetch_att(r, "X-GM-MSGID"), UINT64_MAX,
		    &gmid);
	if (p->nmsgs >= LISTING_MAX) {
		session_fail(s, EXIT_PROTOCOL, "the folder lists more than %d "
		    "messages", LISTING_MAX);
		return;
	}
	if (p->nmsgs == p->capmsgs) {
		p->capmsgs = p->capmsgs ? p->capmsgs * 2 : 256;
		p->msgs = xreallocarray(p->msgs, p->capmsgs, sizeof *p->msgs);
	}
	m = &p->msgs[p->nmsgs++];
	memset(m, 0, sizeof *m);
	m->uid = (uint32_t)uid;
	m->size = size;
	m->gmid = gmid;
}

static int
imap_msg_cmp(const void *a, const void *b)
{
	const struct imap_msg	*x = a, *y = b;

	return (x->uid < y->uid ? -1 : x->uid > y->uid);
}

/* The listing's message with this UID, or NULL. */
static struct imap_msg *
imap_msg_by_uid(struct imap *p, uint32_t uid)
{
	struct imap_msg	key;
	uint32_t	i;

	key.uid = uid;
	if (p->nmsgs == 0)
		return (NULL);
	/* Behind DONE the list grows as bodies come: not sorted. */
	if (p->fast) {
		for (i = 0; i < p->nmsgs; i++) {
			if (p->msgs[i].uid == uid)
				return (&p->msgs[i]);
		}
		return (NULL);
	}
	return (bsearch(&key, p->msgs, p->nmsgs, sizeof *p->msgs,
	    imap_msg_cmp));
}

/* A message's record key: "<folder>\0<UIDVALIDITY>\0<UID>". */
static size_t
imap_key(struct imap *p, uint32_t uid, char *buf, size_t size)
{
	int	n;

	if (p->prefixlen + 12 > size)
		fatalx("imap_key: folder name too long");
	memcpy(buf, p->prefix, p->prefixlen);
	n = snprintf(buf + p->prefixlen, size - p->prefixlen, "%u", uid);
	return (p->prefixlen + (size_t)n);
}

/* The listing is in: what to fetch, what to remove (see pop3_plan()). */
static void
list_done(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	struct imap_msg	*m;
	char		 key[1200], tag[32];
	size_t		 klen;
	uint32_t	 i, known = 0;
	int64_t		 first;
	time_t		 now = time(NULL);
	int		 full = !p->partial;

	if (r != NULL && r->cond != IMAP_COND_OK) {
		imap_server_error(s, "listing the folder failed", r,
		    EXIT_PROTOCOL);
		return;
	}
	p->partial = 0;
	if (s->flags & S_CHECK) {
		s->result.messages += p->nmsgs;
		for (i = 0; i < p->nmsgs; i++)
			s->result.octets += p->msgs[i].size;
		imap_next_folder(s);
		return;
	}
	if (p->nmsgs > 1)
		qsort(p->msgs, p->nmsgs, sizeof *p->msgs, imap_msg_cmp);
	for (i = 1; i < p->nmsgs; i++) {
		if (p->msgs[i].uid == p->msgs[i - 1].uid) {
			session_fail(s, EXIT_PROTOCOL, "the server listed UID "
			    "%u twice", p->msgs[i].uid);
			return;
		}
	}
	free(p->want);
	p->want = xcalloc(p->nmsgs ? p->nmsgs : 1, sizeof *p->want);
	p->nwant = p->next_want = 0;
	if (full)
		deliver_listing_start(s->dl, p->prefix, p->prefixlen);
	for (i = 0; i < p->nmsgs; i++) {
		m = &p->msgs[i];
		if (m->uid > p->maxuid)
			p->maxuid = m->uid;
		klen = imap_key(p, m->uid, key, sizeof key);
		if (deliver_listed(s->dl, key, klen, 1, m->size, &first) ==
		    DELIVER_DONE) {
			known++;
			m->flags |= M_DONE;
			if (!s->ac->keep || (s->ac->delete_after > 0 &&
			    now - first >= s->ac->delete_after))
				m->flags |= M_REMOVE;
			continue;
		}
		/* Gmail: the same message in another label is known. */
		if (m->gmid != 0) {
			snprintf(tag, sizeof tag, "gm:%llu",
			    (unsigned long long)m->gmid);
			if (deliver_find_tag(s->dl, tag, "", 0, NULL, NULL)) {
				deliver_record(s->dl, key, klen, 1, m->size,
				    tag);
				known++;
				m->flags |= M_DONE;
				if (!s->ac->keep)
					m->flags |= M_REMOVE;
				continue;
			}
		}
		if (s->ac->max_size > 0 && m->size > s->ac->max_size) {
			s->result.too_big++;
			if (m->size > s->result.too_big_max)
				s->result.too_big_max = m->size;
			continue;
		}
		m->flags |= M_WANT;
		p->want[p->nwant++] = i;
	}
	if (full) {
		deliver_listing_end(s->dl, p->prefix, p->prefixlen);
		s->result.too_big_before = deliver_too_big(s->dl,
		    s->result.too_big);
	}
	log_debug("account=%s folder=%s messages=%u new=%u known=%u "
	    "too-big=%u", s->ac->name, p->mailbox, p->nmsgs, p->nwant, known,
	    s->result.too_big);
	imap_enter_state(s, IMAP_STATE_TRANSFER);
}

/*
 * A set of UIDs for a command, "1:5,9", from the messages flagged with
 * flag (and not done) starting at *pos; at most max messages and bytes
 * and SET_MAX characters.  Returns how many it took.
 */
static uint32_t
imap_set(struct imap *p, uint32_t *idx, uint32_t n, uint32_t *pos,
    uint32_t max, uint64_t maxbytes, uint64_t *bytes, char *buf, size_t size)
{
	uint32_t	count = 0, start, last;
	size_t		o = 0;
	int		w;

	*bytes = 0;
	buf[0] = '\0';
	while (*pos < n && count < max && (count == 0 || *bytes +
	    p->msgs[idx[*pos]].size <= maxbytes) && o + 24 < size) {
		start = last = p->msgs[idx[*pos]].uid;
		*bytes += p->msgs[idx[*pos]].size;
		(*pos)++;
		count++;
		while (*pos < n && count < max && p->msgs[idx[*pos]].uid ==
		    last + 1 && *bytes + p->msgs[idx[*pos]].size <= maxbytes) {
			last = p->msgs[idx[*pos]].uid;
			*bytes += p->msgs[idx[*pos]].size;
			(*pos)++;
			count++;
		}
		if (start == last)
			w = snprintf(buf + o, size - o, "%s%u", o ? "," : "",
			    start);
		else
			w = snprintf(buf + o, size - o, "%s%u:%u", o ? "," : "",
			    start, last);
		o += (size_t)w;
	}
	return (count);
}

/*
 * Keep the server busy with FETCHes while the window allows, commit when
 * nothing more is coming, then flag, move or delete what was delivered.
 */
static void
imap_pump(struct session *s)
{
	struct imap	*p = I(s);
	struct imap_cmd	*c;
	char		 set[SET_MAX], *cause = NULL;
	uint32_t	 first, n, i;
	uint64_t	 bytes;

	if ((s->flags & S_DEAD) || p->state != IMAP_STATE_TRANSFER)
		return;
	if (p->nfetching == 0 && deliver_batched(s->dl) > 0 &&
	    (p->next_want >= p->nwant || (s->flags & S_STOPPING)) &&
	    deliver_commit(s->dl, &cause) == -1) {
		session_fail(s, EXIT_IOERR, "cannot deliver: %s; nothing is "
		    "deleted from the server", cause);
		free(cause);
		return;
	}
	while (!(s->flags & S_STOPPING) && p->next_want < p->nwant &&
	    p->nfetching < FETCH_CMDS_MAX && (p->nfetching == 0 ||
	    p->bytes_inflight < WINDOW_BYTES_MAX)) {
		first = p->next_want;
		n = imap_set(p, p->want, p->nwant, &p->next_want,
		    FETCH_MSGS_MAX, FETCH_BYTES_MAX, &bytes, set, sizeof set);
		if (imap_send(s, fetch_done, "UID FETCH %s (UID RFC822.SIZE "
		    "BODY.PEEK[])", set) == -1)
			return;
		c = &p->pending[p->npending - 1];
		c->first = first;
		c->count = n;
		c->bytes = bytes;
		for (i = first; i < first + n; i++) {
			if (p->msgs[p->want[i]].size > c->maxsize)
				c->maxsize = p->msgs[p->want[i]].size;
		}
		p->nfetching++;
		p->bytes_inflight += bytes;
	}
	if (p->nfetching > 0 || deliver_batched(s->dl) > 0 || p->removing > 0)
		return;
	if (p->next_want < p->nwant && !(s->flags & S_STOPPING))
		return;
	imap_remove(s);
}

/* A delivered message: it may now be flagged, moved or deleted. */
static void
imap_committed(struct session *s, void *cookie)
{
	struct imap	*p = I(s);
	uint32_t	 i = (uint32_t)(uintptr_t)cookie;

	if (i >= p->nmsgs)
		return;
	p->delivered++;
	p->msgs[i].flags |= M_DONE;
	if (!s->ac->keep)
		p->msgs[i].flags |= M_REMOVE;
	else if (s->ac->mark_seen)
		p->msgs[i].flags |= M_SEEN;
}

/* The answer to a FETCH of bodies: what did not come is for next time. */
static void
fetch_done(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	struct imap_cmd	*c = imap_cmd_find(s, r->tag, r->taglen);
	char		 esc[LOG_ESCAPE_MAX];
	uint32_t	 i, miss = 0;

	if (r->cond == IMAP_COND_BAD) {
		imap_server_error(s, "the server refused a FETCH", r,
		    EXIT_PROTOCOL);
		return;
	}
	for (i = c->first; i < c->first + c->count && i < p->nwant; i++) {
		if (!(p->msgs[p->want[i]].flags & (M_GOT | M_DONE)))
			miss++;
	}
	p->nfetching--;
	p->bytes_inflight -= c->bytes;
	if (miss > 0) {
		p->missing += miss;
		log_info("account=%s folder=%s %u message%s asked for did not "
		    "come (removed by another client?)%s%s", s->ac->name,
		    p->mailbox, miss, miss == 1 ? "" : "s",
		    r->cond == IMAP_COND_NO ? ": server said " : "",
		    r->cond == IMAP_COND_NO ? log_escape(esc, sizeof esc,
		    r->text, r->textlen) : "");
	}
}

/* Write out what the decoder has produced so far. */
static int
imap_flush_body(struct session *s)
{
	struct imap	*p = I(s);

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
 * A body literal of n bytes is announced: it may be no larger than what
 * the server listed (the largest message of the FETCHes in flight;
 * behind DONE, unlisted, the RFC822.SIZE before it in the response),
 * with the slack pop3.c allows for sizes that are estimates.  A server
 * that announces more is lying, and could fill the disk: nothing of it
 * is written.
 */
static int
imap_body_bound(struct session *s, uint64_t n)
{
	struct imap	*p = I(s);
	uint64_t	 listed = 0;
	size_t		 i;

	if (p->fast) {
		if (imap_fetch_size_before(p->resp, p->resplen, &listed) == -1)
			return (0);	/* only the literal's own bound */
	} else {
		for (i = 0; i < p->npending; i++) {
			if (p->pending[i].done == fetch_done &&
			    p->pending[i].maxsize > listed)
				listed = p->pending[i].maxsize;
		}
	}
	if (n <= SIZE_LIMIT(listed))
		return (0);
	session_fail(s, EXIT_PROTOCOL, "the server announced a message of %llu "
	    "bytes, far larger than the %llu bytes it listed: nothing of it "
	    "was kept, nothing was deleted; giving up on this server",
	    (unsigned long long)n, (unsigned long long)listed);
	return (-1);
}

/* A body literal begins: a new file in tmp/ (which message: at its end). */
static int
imap_body_begin(struct session *s)
{
	struct imap	*p = I(s);
	char		 trace[1024], *cause = NULL;
	size_t		 tlen;

	if (s->dl == NULL || p->body_seen) {
		session_fail(s, EXIT_PROTOCOL, "the server sent a message body "
		    "nobody asked for");
		return (-1);
	}
	if (p->outbuf == NULL)
		p->outbuf = xmalloc(OUTBUF_SIZE);
	tlen = deliver_trace_headers(s->ac, "IMAP", session_peer(s),
	    s->result.tls, trace, sizeof trace);
	if (deliver_begin(s->dl, &p->msg, p->subdir, trace, tlen,
	    &cause) == -1) {
		session_fail(s, EXIT_IOERR, "%s", cause);
		free(cause);
		return (-1);
	}
	p->outlen = 0;
	p->body = 1;
	p->body_seen = 1;
	p->body_pending_cr = 0;
	p->body_raw = 0;
	return (0);
}

/*
 * Stream body bytes to the file in tmp/, CRLF made LF (a lone CR stays),
 * in chunks: memory does not grow with the size of a message.
 */
static int
imap_body(struct session *s, struct evbuffer *in)
{
	struct imap		*p = I(s);
	struct evbuffer_iovec	 v[8];
	size_t			 take, k, done = 0;
	int			 i, nv;
	const char		*q;

	take = evbuffer_get_length(in);
	if (take > p->literal)
		take = p->literal;
	nv = evbuffer_peek(in, (ssize_t)take, NULL, v, 8);
	if (nv > 8)
		nv = 8;
	for (i = 0; i < nv && done < take; i++) {
		q = v[i].iov_base;
		for (k = 0; k < v[i].iov_len && done < take; k++, done++) {
			if (p->outlen + 2 > OUTBUF_SIZE &&
			    imap_flush_body(s) == -1)
				return (-1);
			if (p->body_pending_cr) {
				p->body_pending_cr = 0;
				if (q[k] == '\n') {
					p->outbuf[p->outlen++] = '\n';
					continue;
				}
				p->outbuf[p->outlen++] = '\r';
			}
			if (q[k] == '\r')
				p->body_pending_cr = 1;
			else
				p->outbuf[p->outlen++] = q[k];
		}
	}
	evbuffer_drain(in, done);
	p->literal -= done;
	p->body_raw += done;
	session_progress(s, done);
	if (p->literal == 0) {
		if (p->body_pending_cr)
			p->outbuf[p->outlen++] = '\r';
		p->body_pending_cr = 0;
		p->body = 0;
	}
	if ((p->outlen >= OUTBUF_SIZE / 2 || !p->body) &&
	    imap_flush_body(s) == -1)
		return (-1);
	return (0);
}

/*
 * A body of the fetch behind DONE: a message newer than the listing is
 * added to it (its size as the response gives it); anything else is
 * dropped, quietly ("n:*" returns the last message even when it is
 * older).  -1: not to be delivered.
 */
static int
imap_fast_msg(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	struct imap_msg	*m;
	uint64_t	 uid, size;
	char		 key[1200];
	size_t		 klen;

	if (imap_node_number(r, imap_fetch_att(r, "UID"), UINT32_MAX,
	    &uid) == -1 || uid == 0 || uid <= p->maxuid ||
	    imap_msg_by_uid(p, (uint32_t)uid) != NULL)
		return (-1);
	if (imap_node_number(r, imap_fetch_att(r, "RFC822.SIZE"),
	    IMAP_LITERAL_LEN_MAX, &size) == -1)
		size = p->body_raw;
	klen = imap_key(p, (uint32_t)uid, key, sizeof key);
	if (deliver_listed(s->dl, key, klen, 1, size, NULL) == DELIVER_DONE)
		return (-1);
	if (p->nmsgs >= LISTING_MAX)
		return (-1);
	/* In UID order: the server sends them so; if not, sort. */
	if (p->nmsgs == p->capmsgs) {
		p->capmsgs = p->capmsgs ? p->capmsgs * 2 : 16;
		p->msgs = xreallocarray(p->msgs, p->capmsgs, sizeof *p->msgs);
	}
	m = &p->msgs[p->nmsgs++];
	memset(m, 0, sizeof *m);
	m->uid = (uint32_t)uid;
	m->size = size;
	m->flags = M_WANT;
	p->maxuid = m->uid;
	p->nwant++;
	p->next_want = p->nwant;
	return (0);
}

/*
 * A FETCH response with a body is complete: which message is it?  A body
 * that cannot be placed (no UID, not asked for, twice) is dropped; a size
 * other than the listing's (exact-sizes) ends the session, as in POP3.
 */
static void
imap_fetch_body_done(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	struct imap_msg	*m;
	uint64_t	 uid;
	char		 key[1200], tag[32], *cause = NULL;
	size_t		 klen;
	int		 x;

	p->body_seen = 0;
	if (p->fast && imap_fast_msg(s, r) == -1) {
		deliver_discard(s->dl, &p->msg);
		return;
	}
	if (imap_node_number(r, imap_fetch_att(r, "UID"), UINT32_MAX,
	    &uid) == -1 || (m = imap_msg_by_uid(p, (uint32_t)uid)) == NULL ||
	    !(m->flags & M_WANT) || (m->flags & (M_GOT | M_DONE)) ||
	    p->state != IMAP_STATE_TRANSFER) {
		deliver_discard(s->dl, &p->msg);
		log_warnx("account=%s folder=%s the server sent a message "
		    "that was not asked for (UID %s); it was dropped",
		    s->ac->name, p->mailbox, imap_fetch_att(r, "UID") ==
		    IMAP_NONE ? "missing" : "not one being fetched");
		return;
	}
	if (s->ac->exact_sizes && p->body_raw != m->size) {
		deliver_discard(s->dl, &p->msg);
		session_fail(s, EXIT_PROTOCOL, "message UID %u arrived with "
		    "%llu bytes, but the server listed it with %llu: the "
		    "message was not kept, nothing was deleted (if this "
		    "server's sizes are estimates, set exact-sizes = no)",
		    m->uid, (unsigned long long)p->body_raw,
		    (unsigned long long)m->size);
		return;
	}
	m->flags |= M_GOT;
	klen = imap_key(p, m->uid, key, sizeof key);
	if (m->gmid != 0)
		snprintf(tag, sizeof tag, "gm:%llu",
		    (unsigned long long)m->gmid);
	else
		tag[0] = '\0';	/* its content digest */
	x = deliver_end(s->dl, &p->msg, key, klen, 1, m->size, tag,
	    (void *)(uintptr_t)(m - p->msgs), &cause);
	if (x == -1) {
		session_fail(s, EXIT_IOERR, "cannot deliver: %s; nothing is "
		    "deleted from the server", cause);
		free(cause);
		return;
	}
	if (x == DELIVER_DONE) {
		/* Its digest matched a message of the old UIDVALIDITY. */
		m->flags |= M_DONE;
		if (!s->ac->keep)
			m->flags |= M_REMOVE;
	}
}

/* ---- flag, move, delete ---- */

/*
 * What comes after step for the folder's delivered messages: \Seen for
 * those mark-seen wants; then for those to go, MOVE (or COPY and on as a
 * deletion), \Deleted, then UID EXPUNGE (UIDPLUS) or, after a SEARCH
 * that shows only ours marked, EXPUNGE.
 */
static int
imap_next_step(struct session *s, int step, int seen, int gone)
{
	struct imap	*p = I(s);

	switch (step) {
	case REM_NONE:
		if (seen)
			return (REM_SEEN);
		/* FALLTHROUGH */
	case REM_SEEN:
		if (!gone)
			return (REM_DONE);
		if (s->ac->move_to != NULL)
			return ((p->caps & CAP_MOVE) ? REM_MOVE : REM_COPY);
		return (REM_DELETE);
	case REM_COPY:
		return (REM_DELETE);
	case REM_DELETE:
		return ((p->caps & CAP_UIDPLUS) ? REM_EXPUNGE : REM_SEARCH);
	case REM_SEARCH:
		return (REM_EXPUNGE);
	default:
		return (REM_DONE);
	}
}

/*
 * The messages whose delivery is committed (or that were known) may be
 * flagged, moved or deleted now; one step at a time.  A step's commands
 * are pipelined, at most REMOVE_CMDS_MAX in flight, each naming a set of
 * at most SET_MAX characters: a folder of any size needs no more.
 */
static void
imap_remove(struct session *s)
{
	struct imap	*p = I(s);
	uint32_t	*seen, *gone, nseen = 0, ngone = 0, i;

	seen = xcalloc(p->nmsgs ? p->nmsgs : 1, sizeof *seen);
	gone = xcalloc(p->nmsgs ? p->nmsgs : 1, sizeof *gone);
	for (i = 0; i < p->nmsgs; i++) {
		if (!(p->msgs[i].flags & M_DONE))
			continue;
		if (p->msgs[i].flags & M_SEEN)
			seen[nseen++] = i;
		if (p->msgs[i].flags & M_REMOVE)
			gone[ngone++] = i;
	}
	p->rem_step = (p->flags & I_EXAMINE) ? REM_DONE :
	    imap_next_step(s, p->rem_step, nseen > 0, ngone > 0);
	free(p->rem);
	if (p->rem_step == REM_SEEN) {
		p->rem = seen;
		p->nrem = nseen;
		free(gone);
	} else {
		p->rem = gone;
		p->nrem = ngone;
		free(seen);
	}
	p->next_rem = 0;
	switch (p->rem_step) {
	case REM_DONE:
		imap_folder_done(s);
		break;
	case REM_SEARCH:
		p->removing++;
		free(p->search);
		p->search = NULL;
		p->nsearch = 0;
		imap_send(s, search_done, "UID SEARCH DELETED");
		break;
	case REM_EXPUNGE:
		if (!(p->caps & CAP_UIDPLUS)) {
			p->removing++;
			if (imap_send(s, expunge_done, "EXPUNGE") == 0)
				imap_last_cmd(s, 0, p->nrem);
			p->next_rem = p->nrem;
			break;
		}
		/* FALLTHROUGH */
	default:
		imap_remove_more(s);
		break;
	}
}

/* The command just sent is about rem[first .. first + count). */
static void
imap_last_cmd(struct session *s, uint32_t first, uint32_t count)
{
	struct imap	*p = I(s);
	struct imap_cmd	*c = &p->pending[p->npending - 1];

	c->first = first;
	c->count = count;
}

/* Send more of the step's commands, while the window allows. */
static void
imap_remove_more(struct session *s)
{
	struct imap	*p = I(s);
	char		 set[SET_MAX];
	uint32_t	 first, n;
	uint64_t	 bytes;
	int		 r;

	while (!(s->flags & S_DEAD) && p->next_rem < p->nrem &&
	    p->removing < REMOVE_CMDS_MAX) {
		first = p->next_rem;
		n = imap_set(p, p->rem, p->nrem, &p->next_rem, UINT32_MAX,
		    UINT64_MAX, &bytes, set, sizeof set);
		if (p->rem_step == REM_SEEN)
			r = imap_send(s, store_done, "UID STORE %s "
			    "+FLAGS.SILENT (\\Seen)", set);
		else if (p->rem_step == REM_MOVE)
			r = imap_send(s, expunge_done, "UID MOVE %s %s", set,
			    p->move_to);
		else if (p->rem_step == REM_COPY)
			r = imap_send(s, store_done, "UID COPY %s %s", set,
			    p->move_to);
		else if (p->rem_step == REM_DELETE)
			r = imap_send(s, store_done, "UID STORE %s "
			    "+FLAGS.SILENT (\\Deleted)", set);
		else
			r = imap_send(s, expunge_done, "UID EXPUNGE %s", set);
		if (r == -1)
			return;
		imap_last_cmd(s, first, n);
		p->removing++;
	}
}

/* A command of the step is answered: more of it, or the next step. */
static void
imap_remove_next(struct session *s)
{
	struct imap	*p = I(s);

	if (p->next_rem < p->nrem)
		imap_remove_more(s);
	else if (p->removing == 0)
		imap_remove(s);
}

/* A STORE or COPY is answered. */
static void
store_done(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);

	p->removing--;
	if (r->cond != IMAP_COND_OK) {
		/* Nothing deleted: the messages stay, recorded as delivered. */
		imap_server_error(s, p->rem_step == REM_COPY ? "copying to "
		    "move-to failed, nothing was deleted" : "flagging the "
		    "fetched messages failed", r, EXIT_PROTOCOL);
		return;
	}
	imap_remove_next(s);
}

/* UID SEARCH DELETED: may a plain EXPUNGE go (only ours \Deleted)? */
static void
search_done(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	struct imap_msg	*m;
	size_t		 i;

	p->removing--;
	if (r->cond != IMAP_COND_OK) {
		imap_server_error(s, "searching for deleted messages failed",
		    r, EXIT_PROTOCOL);
		return;
	}
	for (i = 0; i < p->nsearch; i++) {
		m = imap_msg_by_uid(p, p->search[i]);
		if (m == NULL || (m->flags & (M_DONE | M_REMOVE)) !=
		    (M_DONE | M_REMOVE)) {
			log_warnx("account=%s folder=%s the server has no "
			    "UIDPLUS, and other messages are marked deleted: "
			    "maild does not EXPUNGE, which would remove them "
			    "too; the fetched ones stay marked \\Deleted",
			    s->ac->name, p->mailbox);
			p->rem_step = REM_EXPUNGE;	/* skipped */
			imap_remove(s);
			return;
		}
	}
	imap_remove(s);
}

/*
 * The messages of a UID EXPUNGE, UID MOVE or EXPUNGE are gone for good:
 * so are their records.  Not on Gmail, where expunging a message from a
 * folder only takes a label off: its record (tagged with its
 * X-GM-MSGID) stays to recognise it in the other folders, until the
 * listings have not shown it for long enough (deliver.c).  (IMAP never
 * gives a UID to another message of the folder, so a record kept longer
 * claims nothing it does not describe.)
 */
static void
expunge_done(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	struct imap_cmd	*c = imap_cmd_find(s, r->tag, r->taglen);
	struct imap_msg	*m;
	char		 key[1200];
	size_t		 klen;
	uint32_t	 i, end;

	p->removing--;
	if (r->cond != IMAP_COND_OK) {
		imap_server_error(s, p->rem_step == REM_MOVE ? "moving the "
		    "fetched messages failed" : "expunging the fetched "
		    "messages failed", r, EXIT_PROTOCOL);
		return;
	}
	end = c != NULL ? c->first + c->count : 0;
	for (i = c != NULL ? c->first : 0; i < end && i < p->nrem; i++) {
		m = &p->msgs[p->rem[i]];
		if ((m->flags & (M_DONE | M_REMOVE)) != (M_DONE | M_REMOVE))
			continue;
		if (m->gmid == 0) {
			klen = imap_key(p, m->uid, key, sizeof key);
			deliver_forget(s->dl, key, klen, 1);
		}
		s->result.deleted++;
		m->flags &= ~M_REMOVE;
	}
	imap_remove_next(s);
}

/*
 * The folder is done.  After a UIDVALIDITY change, fully fetched, the
 * records of the old UIDVALIDITY have served.  Then IDLE, or on.
 */
static void
imap_folder_done(struct session *s)
{
	struct imap	*p = I(s);
	char		*cause = NULL;

	if ((p->flags & I_REIDENT) && p->missing == 0 &&
	    p->next_want >= p->nwant && !(s->flags & S_STOPPING))
		deliver_reident_done(s->dl);
	p->rem_step = REM_NONE;
	if (p->nwant > p->delivered + p->missing)
		s->result.left += p->nwant - p->delivered - p->missing;
	if (deliver_sync(s->dl, &cause) == -1) {
		session_fail(s, EXIT_IOERR, "%s", cause);
		free(cause);
		return;
	}
	if (imap_may_idle(s)) {
		session_cycle(s);
		imap_enter_state(s, IMAP_STATE_IDLE);
		return;
	}
	imap_next_folder(s);
}

/* ---- IDLE ---- */

static void
imap_refresh_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session	*s = arg;
	struct imap	*p = I(s);

	p->flags |= I_FULL;	/* a full look now and then */
	imap_idle_end(s);
}

/* Wait in the folder for news, until idle-refresh or news. */
static void
imap_idle(struct session *s)
{
	struct imap	*p = I(s);
	struct timeval	 tv = { s->ac->idle_refresh, 0 };

	p->flags &= ~(I_IDLING | I_DONE_SENT);
	p->fast = 0;
	if ((p->flags & (I_NEWS | I_FULL)) && !(s->flags & S_STOPPING)) {
		/* News came while busy: look before waiting. */
		imap_relist(s);
		return;
	}
	if (p->refresh_ev == NULL)
		p->refresh_ev = evtimer_new(s->base, imap_refresh_cb, s);
	evtimer_add(p->refresh_ev, &tv);
	imap_send(s, idle_done, "IDLE");
}

/* End the IDLE (news, refresh, stop): DONE, then its tagged answer. */
static void
imap_idle_end(struct session *s)
{
	struct imap	*p = I(s);

	if (p->state != IMAP_STATE_IDLE || (p->flags & I_DONE_SENT))
		return;
	if (!(p->flags & I_IDLING))
		return;		/* "+" not yet here: DONE then */
	p->flags |= I_DONE_SENT;
	evtimer_del(p->refresh_ev);
	session_idle(s, 0);
	log_trace("account=%s >>> DONE", s->ac->name);
	evbuffer_add(bufferevent_get_output(s->bev), "DONE\r\n", 6);
	/*
	 * New mail, and nothing to decide before fetching it (no max-size,
	 * no Gmail labels, no UIDVALIDITY matching): ask for the new
	 * messages' bodies right behind DONE, saving two round trips.
	 */
	if ((p->flags & I_NEWS) && !(p->flags & (I_FULL | I_REIDENT)) &&
	    !(s->flags & S_STOPPING) && s->ac->max_size == 0 &&
	    !(p->caps & CAP_GMAIL) && s->dl != NULL &&
	    p->maxuid < UINT32_MAX) {
		p->flags &= ~I_NEWS;
		free(p->msgs);
		p->msgs = NULL;
		p->nmsgs = p->capmsgs = 0;
		free(p->want);
		p->want = NULL;
		p->nwant = p->next_want = 0;
		p->delivered = p->missing = 0;
		p->fast = 1;
		p->state = IMAP_STATE_TRANSFER;
		if (imap_send(s, fetch_done, "UID FETCH %u:* (UID RFC822.SIZE "
		    "BODY.PEEK[])", p->maxuid + 1) == 0)
			p->nfetching++;
	}
}

/* The IDLE is over: stop, look (again), or wait again. */
static void
idle_done(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	char		 esc[LOG_ESCAPE_MAX];

	evtimer_del(p->refresh_ev);
	session_idle(s, 0);
	if (r->cond != IMAP_COND_OK) {
		/*
		 * It offered IDLE, and refuses it: nothing is wrong with the
		 * folder, which is polled (this session ends; the next
		 * comes after poll-interval) rather than failed.
		 */
		log_warnx("account=%s folder=%s the server refused IDLE (%s): "
		    "the folder is polled every poll-interval instead (set "
		    "idle = no not to try)", s->ac->name, p->mailbox,
		    log_escape(esc, sizeof esc, r->text, r->textlen));
		p->flags |= I_NOIDLE;
		if (p->state == IMAP_STATE_IDLE)
			imap_enter_state(s, IMAP_STATE_LOGOUT);
		return;
	}
	if (p->state != IMAP_STATE_IDLE)
		return;		/* the fetch went on behind DONE */
	if (s->flags & S_STOPPING) {
		imap_enter_state(s, IMAP_STATE_LOGOUT);
		return;
	}
	imap_idle(s);
}

/* List again: only what is new after news, everything now and then. */
static void
imap_relist(struct session *s)
{
	struct imap	*p = I(s);
	uint64_t	 from = (uint64_t)p->maxuid + 1;

	p->partial = !(p->flags & I_FULL);
	p->flags &= ~(I_FULL | I_NEWS);
	free(p->msgs);
	p->msgs = NULL;
	p->nmsgs = p->capmsgs = 0;
	p->delivered = p->missing = 0;
	p->state = IMAP_STATE_LIST;
	if (p->partial && from > UINT32_MAX)
		list_done(s, NULL);	/* no UID can be higher */
	else if (p->partial)
		imap_send(s, list_done, "UID FETCH %llu:* (UID RFC822.SIZE%s)",
		    (unsigned long long)from, (p->caps & CAP_GMAIL) ?
		    " X-GM-MSGID" : "");
	else
		imap_send(s, list_done, "UID FETCH 1:* (UID RFC822.SIZE%s)",
		    (p->caps & CAP_GMAIL) ? " X-GM-MSGID" : "");
}

/* ---- the end ---- */

/* LOGOUT: nothing depends on its answer (EXPUNGE is confirmed). */
static void
logout_done(struct session *s, struct imap_resp *r)
{
	imap_enter_state(s, IMAP_STATE_DONE);
}

/* ---- reading ---- */

/*
 * [UIDVALIDITY n]: the folder's, as it is selected.  Announced later
 * (another client, or the server, renumbered the folder), a new one
 * means that every UID maild holds now names another message, or none:
 * nothing more may be stored, moved or expunged by them.  The session
 * ends at once (what is fetched and complete is kept); the next one
 * lists the folder again under the new UIDVALIDITY.
 */
static void
imap_validity(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	uint64_t	 v;

	if (imap_number(r->codeargs, r->codeargslen, UINT32_MAX, &v) == -1 ||
	    v == 0) {
		session_fail(s, EXIT_PROTOCOL, "bad UIDVALIDITY from the "
		    "server");
		return;
	}
	if (p->state == IMAP_STATE_SELECT) {
		p->validity = (uint32_t)v;
		p->have_validity = 1;
		return;
	}
	if (p->state < IMAP_STATE_LIST || p->state > IMAP_STATE_IDLE ||
	    v == p->validity)
		return;
	session_fail(s, EXIT_TEMPFAIL, "folder %s was renumbered while maild "
	    "had it open (UIDVALIDITY %u, now %llu): nothing more is done "
	    "there by the old UIDs; the next poll lists it again",
	    p->mailbox, p->validity, (unsigned long long)v);
}

/* An untagged response: data, or news, at any time. */
static void
imap_untagged(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	char		 esc[LOG_ESCAPE_MAX];
	uint64_t	 v;
	size_t		 i;
	char		 d[8];

	if (r->cond == IMAP_COND_OK && r->code != NULL) {
		if (r->codelen == 10 && strncasecmp(r->code, "CAPABILITY",
		    10) == 0)
			imap_capabilities(s, r->codeargs, r->codeargslen);
		else if (r->codelen == 11 && strncasecmp(r->code,
		    "UIDVALIDITY", 11) == 0)
			imap_validity(s, r);
		return;
	}
	if (r->cond == IMAP_COND_BYE) {
		p->flags |= I_BYE;
		if (p->state == IMAP_STATE_LOGOUT || p->state ==
		    IMAP_STATE_GREETING)
			return;
		session_fail(s, EXIT_TEMPFAIL, "the server said goodbye (state "
		    "%s): %s", imap_state_names[p->state],
		    log_escape(esc, sizeof esc, r->text, r->textlen));
		return;
	}
	if (r->cond == IMAP_COND_NO || r->cond == IMAP_COND_BAD) {
		log_warnx("account=%s the server warns: %s", s->ac->name,
		    log_escape(esc, sizeof esc, r->text, r->textlen));
		return;
	}
	if (r->cond != IMAP_COND_NONE)
		return;
	if (strcasecmp(r->name, "CAPABILITY") == 0) {
		const char	*start = r->data != IMAP_NONE ?
		    r->nodes[r->data].p : "";
		size_t		 len = 0;

		for (i = r->data; i != IMAP_NONE; i = r->nodes[i].next)
			len = (size_t)(r->nodes[i].p + r->nodes[i].len - start);
		imap_capabilities(s, start, len);
	} else if (r->has_num && strcasecmp(r->name, "EXISTS") == 0) {
		if (r->num > p->exists && p->state >= IMAP_STATE_LIST) {
			p->flags |= I_NEWS;
			if (p->state == IMAP_STATE_IDLE)
				imap_idle_end(s);
		}
		p->exists = r->num;
	} else if (r->has_num && strcasecmp(r->name, "EXPUNGE") == 0) {
		if (p->exists > 0)
			p->exists--;
	} else if (r->has_num && strcasecmp(r->name, "FETCH") == 0) {
		if (p->body_seen)
			imap_fetch_body_done(s, r);
		else if (p->state == IMAP_STATE_LIST)
			imap_list_fetch(s, r);
		/* else flags and such: not maild's business */
	} else if (strcasecmp(r->name, "SEARCH") == 0) {
		for (i = r->data; i != IMAP_NONE; i = r->nodes[i].next) {
			if (imap_node_number(r, i, UINT32_MAX, &v) == -1)
				continue;
			if (p->nsearch >= LISTING_MAX)
				break;
			p->search = xreallocarray(p->search, p->nsearch + 1,
			    sizeof *p->search);
			p->search[p->nsearch++] = (uint32_t)v;
		}
	} else if (strcasecmp(r->name, "LIST") == 0 && r->data != IMAP_NONE) {
		/* (flags) "delimiter" name: the separator, or NIL */
		i = r->nodes[r->data].next;
		if (i != IMAP_NONE && imap_node_string(r, i, d,
		    sizeof d) == 1)
			p->delim = d[0];
	}
}

/* A complete response: to the command it answers, or untagged. */
static void
imap_response(struct session *s, struct imap_resp *r)
{
	struct imap	*p = I(s);
	struct imap_cmd	*c, copy;
	char		 esc[LOG_ESCAPE_MAX];

	if (r->kind == IMAP_CONTINUATION) {
		imap_continuation(s, r);
		return;
	}
	/* RFC 3501 7.1: an ALERT must be shown, wherever it comes. */
	if (r->code != NULL && r->codelen == 5 &&
	    strncasecmp(r->code, "ALERT", 5) == 0)
		log_warnx("account=%s the server says: %s", s->ac->name,
		    log_escape(esc, sizeof esc, r->text, r->textlen));
	if (r->kind == IMAP_UNTAGGED && p->state == IMAP_STATE_GREETING &&
	    p->npending == 1 && p->pending[0].tag == 0) {
		if (r->code != NULL && r->codelen == 10 &&
		    strncasecmp(r->code, "CAPABILITY", 10) == 0)
			imap_capabilities(s, r->codeargs, r->codeargslen);
		session_greeted(s);
		if (r->cond != IMAP_COND_OK && r->cond != IMAP_COND_PREAUTH &&
		    r->cond != IMAP_COND_BYE) {
			session_fail(s, EXIT_PROTOCOL, "the server's greeting "
			    "is not IMAP (check host, port and protocol)");
			return;
		}
		imap_cmd_remove(s, &p->pending[0]);
		greeting_done(s, r);
		return;
	}
	if (r->kind == IMAP_UNTAGGED) {
		imap_untagged(s, r);
		return;
	}
	if ((c = imap_cmd_find(s, r->tag, r->taglen)) == NULL) {
		session_fail(s, EXIT_PROTOCOL, "the server answered a command "
		    "that was not sent (tag %.*s)", (int)(r->taglen < 16 ?
		    r->taglen : 16), r->tag);
		return;
	}
	if (r->cond == IMAP_COND_OK && r->code != NULL && r->codelen == 10 &&
	    strncasecmp(r->code, "CAPABILITY", 10) == 0 &&
	    p->state != IMAP_STATE_AUTH)
		imap_capabilities(s, r->codeargs, r->codeargslen);
	copy = *c;
	copy.rest = NULL;
	/* The handler sees the command (fetch_done needs it) first. */
	copy.done(s, r);
	if (s->flags & S_DEAD)
		return;
	if ((c = imap_cmd_find(s, r->tag, r->taglen)) != NULL)
		imap_cmd_remove(s, c);
	if (p->state == IMAP_STATE_TRANSFER)
		imap_pump(s);
}

/*
 * Bytes arrived: lines, literals kept in the response, body literals
 * streamed to tmp/; each complete response parsed and handled.
 */
static void
imap_read(struct session *s, struct evbuffer *in)
{
	struct imap		*p = I(s);
	struct imap_resp	 r;
	struct evbuffer_ptr	 eol;
	size_t			 eol_len, len, take;
	uint64_t		 n;
	char			 esc[LOG_ESCAPE_MAX], line[64], *tail;
	int			 body;

	while (!(s->flags & S_DEAD) && in == bufferevent_get_input(s->bev) &&
	    evbuffer_get_length(in) > 0) {
		if (p->literal > 0 && p->body) {
			if (imap_body(s, in) == -1)
				return;
			continue;
		}
		if (p->literal > 0) {
			take = evbuffer_get_length(in);
			if (take > p->literal)
				take = (size_t)p->literal;
			if (p->resplen + take > IMAP_RESPONSE_MAX) {
				session_fail(s, EXIT_PROTOCOL, "the server sent "
				    "a response longer than %u bytes",
				    IMAP_RESPONSE_MAX);
				return;
			}
			if (p->resplen + take > p->respcap) {
				while (p->resplen + take > p->respcap)
					p->respcap *= 2;
				p->resp = xreallocarray(p->resp, p->respcap, 1);
			}
			evbuffer_remove(in, p->resp + p->resplen, take);
			p->resplen += take;
			p->literal -= take;
			session_progress(s, take);
			continue;
		}
		eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (eol.pos == -1) {
			if (evbuffer_get_length(in) > IMAP_LINE_MAX) {
				len = evbuffer_copyout(in, line, sizeof line);
				session_fail(s, EXIT_PROTOCOL, "the server sent a "
				    "line longer than %u bytes: '%s'",
				    IMAP_LINE_MAX, log_escape(esc, sizeof esc,
				    line, len));
			}
			return;
		}
		len = (size_t)eol.pos + eol_len;
		if (len > IMAP_LINE_MAX || p->resplen + len >
		    IMAP_RESPONSE_MAX) {
			session_fail(s, EXIT_PROTOCOL, "the server sent a line "
			    "or response over the limit");
			return;
		}
		if (p->resplen + len + 1 > p->respcap) {
			while (p->resplen + len + 1 > p->respcap)
				p->respcap = p->respcap ? p->respcap * 2 : 8192;
			p->resp = xreallocarray(p->resp, p->respcap, 1);
		}
		evbuffer_remove(in, p->resp + p->resplen, len);
		/* A bare LF is taken as CRLF. */
		if (len < 2 || p->resp[p->resplen + len - 2] != '\r') {
			p->resp[p->resplen + len - 1] = '\r';
			p->resp[p->resplen + len] = '\n';
			len++;
		}
		p->resplen += len;
		session_arm_progress(s);
		if (imap_literal_marker(p->resp, p->resplen)) {
			body = imap_literal_is_body(p->resp, p->resplen, &n);
			if (body == -1) {
				session_fail(s, EXIT_PROTOCOL, "bad literal from "
				    "the server");
				return;
			}
			if (body) {
				/* Keep "{0}" in its place: it is on disk. */
				tail = p->resp + p->resplen - 3;
				while (tail > p->resp && tail[-1] != '{')
					tail--;
				memcpy(tail, "0}\r\n", 4);
				p->resplen = (size_t)(tail - p->resp) + 4;
				if (imap_body_bound(s, n) == -1 ||
				    imap_body_begin(s) == -1)
					return;
				p->literal = n;
				if (n == 0) {
					p->body = 0;
					if (imap_flush_body(s) == -1)
						return;
				}
				continue;
			}
			if (n > IMAP_SMALL_LITERAL_MAX) {
				session_fail(s, EXIT_PROTOCOL, "the server sent a "
				    "literal of %llu bytes where maild expects "
				    "a short string", (unsigned long long)n);
				return;
			}
			p->literal = n;
			continue;
		}
		log_trace("account=%s <<< %s", s->ac->name, log_escape(esc,
		    sizeof esc, p->resp, p->resplen - 2));
		if (imap_parse(p->resp, p->resplen, p->nodes, IMAP_NODES_MAX,
		    &r) == -1) {
			session_fail(s, EXIT_PROTOCOL, "the server sent what is "
			    "not an IMAP response (state %s): '%s'",
			    imap_state_names[p->state], log_escape(esc,
			    sizeof esc, p->resp, p->resplen - 2));
			return;
		}
		imap_response(s, &r);
		/* A body the response did not finish (no FETCH) goes. */
		if (p->body_seen && !(s->flags & S_DEAD)) {
			p->body_seen = 0;
			deliver_discard(s->dl, &p->msg);
		}
		p->resplen = 0;
	}
}

/* ---- the session's hooks ---- */

/* Asked to stop: no new FETCH; an IDLE ends. */
static void
imap_stop(struct session *s)
{
	struct imap	*p = I(s);

	switch (p->state) {
	case IMAP_STATE_GREETING:
	case IMAP_STATE_CAPABILITY:
	case IMAP_STATE_STARTTLS:
	case IMAP_STATE_AUTH:
		session_fail(s, EXIT_TEMPFAIL, "stopped before fetching");
		break;
	case IMAP_STATE_IDLE:
		if (p->flags & I_IDLING)
			imap_idle_end(s);
		break;
	case IMAP_STATE_TRANSFER:
		imap_pump(s);
		break;
	default:
		break;
	}
}

/* SIGUSR1: look now (an IDLE ends, everything is listed again). */
static void
imap_poll_now(struct session *s)
{
	struct imap	*p = I(s);

	p->flags |= I_FULL;
	if (p->state == IMAP_STATE_IDLE)
		imap_idle_end(s);
}

/* Failing: drop the message half received, keep the complete ones. */
static void
imap_abort(struct session *s)
{
	struct imap	*p = I(s);
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
	if (p->state == IMAP_STATE_TRANSFER && p->nwant > p->delivered +
	    p->missing)
		s->result.left += p->nwant - p->delivered - p->missing;
}

static const char *
imap_state(struct session *s)
{
	return (imap_state_names[I(s)->state]);
}

static void
imap_lost(struct session *s, char *buf, size_t size)
{
	struct imap	*p = I(s);

	if (p->body)
		snprintf(buf, size, " while receiving a message of folder %s; "
		    "it will be fetched again", p->mailbox);
}

static void
imap_free(struct session *s)
{
	struct imap	*p = I(s);

	while (p->npending > 0)
		imap_cmd_remove(s, &p->pending[p->npending - 1]);
	imap_folder_clear(p);
	if (p->refresh_ev != NULL)
		event_free(p->refresh_ev);
	free(p->sasl_error);
	free(p->resp);
	free(p->outbuf);
	free(p->move_to);
	free(p);
	s->p = NULL;
}

const struct proto imap_proto = {
	.name = "imap",
	.connected = imap_connected,
	.read = imap_read,
	.stop = imap_stop,
	.poll_now = imap_poll_now,
	.abort = imap_abort,
	.state = imap_state,
	.lost = imap_lost,
	.committed = imap_committed,
	.ready = imap_pump,
	.free = imap_free,
};
