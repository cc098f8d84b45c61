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
 * lmtp.c: deliver = lmtp, a destination (see dest.c) that speaks LMTP
 * (RFC 2033) to a local delivery agent such as Dovecot's, over a unix
 * socket or TCP, on the event loop.  One connection per destination (the
 * server and the recipient), shared by every account that delivers
 * there and kept open while messages come: their messages are taken one
 * at a time, in the order handed over.  One at a time per recipient also
 * keeps the recipient's Sieve duplicate database right: Dovecot's
 * deliveries running side by side for one user may lose each other's
 * entries in it.  For each message MAIL FROM:<>, RCPT TO and
 * DATA (sent together when the server offers PIPELINING), then the
 * message streamed from its spool file, CRLF line ends and dot-stuffing
 * added on the way, so that no message is ever held in memory; the
 * recipient's reply after the final "." says whether it was taken.
 *
 * The spool file holds the message as it would be in a Maildir: LF line
 * ends, a CR before one being part of the line.  So every LF becomes
 * CRLF, whatever precedes it: the LMTP server stores the line as it was.
 * A connection lost before the server had any of a message (an idle
 * connection the server closed as the next MAIL went out) is tried once
 * more on a new connection; lost later, the message is refused for now,
 * since the server may have taken it.
 */

#include "config.h"

#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "maild.h"
#include "net.h"

/* Keep at most this much of a message in the connection's buffer. */
#define LMTP_OUT_HIGH		(256U << 10)
#define LMTP_CHUNK		(64U << 10)

enum lmtp_state {
	LMTP_DOWN,		/* not connected */
	LMTP_CONNECTING,
	LMTP_GREETING,
	LMTP_LHLO,
	LMTP_READY,		/* between messages */
	LMTP_MAIL,		/* MAIL, RCPT, DATA sent; their replies due */
	LMTP_BODY,		/* the message going out */
	LMTP_DOT,		/* the recipient's reply due */
	LMTP_ABORT,		/* a refused transaction's DATA ended */
	LMTP_RSET,
	LMTP_RECONNECT		/* connecting again, from a fresh event */
};

struct lmtp_conn;

/* An account's handle on the connection to its destination. */
struct lmtp {
	struct lmtp_conn	*c;
	struct dest		*dest;
	char			*account;	/* for logs */
};

struct lmtp_job {
	TAILQ_ENTRY(lmtp_job)	 entry;
	struct lmtp		*h;		/* NULL: its account has gone */
	int			 fd;
	int			 retried;	/* on a new connection */
	char			*header;
	dest_done_cb		 cb;
	void			*arg;
};

/* The connection to one destination: server and recipient. */
struct lmtp_conn {
	LIST_ENTRY(lmtp_conn)	 entry;
	char			*server;	/* "unix:/path" or "host:port" */
	char			*recipient;
	char			*who;		/* an account, for logs */
	int			 refs;
	struct event_base	*base;
	struct evdns_base	*dns;
	int			 timeout;
	enum lmtp_state		 state;
	struct net_connect	*nc;
	struct bufferevent	*bev;
	struct event		*retry;
	int			 pipelining;
	int			 step;		/* 0 MAIL, 1 RCPT, 2 DATA */
	int			 failed;	/* one of them refused */
	int			 refusal_code;
	char			*refusal;
	struct lmtp_job		*current;
	TAILQ_HEAD(, lmtp_job)	 queue;
	/* The reply being read (multi-line "250-..."). */
	char			 reply[LMTP_LINE_MAX + 1];
	int			 nlines;
	/* Body streaming: at a line start? */
	int			 bol;
};
static LIST_HEAD(, lmtp_conn) conns = LIST_HEAD_INITIALIZER(conns);

static void	lmtp_connect(struct lmtp_conn *);
static void	lmtp_next(struct lmtp_conn *);
static void	lmtp_read_cb(struct bufferevent *, void *);
static void	lmtp_write_cb(struct bufferevent *, void *);
static void	lmtp_event_cb(struct bufferevent *, short, void *);
static void	lmtp_down(struct lmtp_conn *, const char *, ...)
		    PRINTFLIKE(2, 3);
static void	lmtp_retry_cb(evutil_socket_t, short, void *);

/* The account whose message is on the connection, else its last one. */
static const char *
lmtp_who(const struct lmtp_conn *c)
{
	if (c->current != NULL && c->current->h != NULL)
		return (c->current->h->account);
	return (c->who);
}

/* A handle on the connection to the account's destination. */
struct lmtp *
lmtp_open(const struct session_env *env, const struct account_conf *ac,
    struct dest *dest, int timeout, char **cause)
{
	struct lmtp_conn	*c;
	struct lmtp		*h;

	LIST_FOREACH(c, &conns, entry) {
		if (strcmp(c->server, ac->lmtp) == 0 &&
		    strcmp(c->recipient, ac->lmtp_recipient) == 0)
			break;
	}
	if (c == NULL) {
		c = xcalloc(1, sizeof *c);
		c->server = xstrdup(ac->lmtp);
		c->recipient = xstrdup(ac->lmtp_recipient);
		c->base = env->base;
		c->dns = env->dns;
		c->timeout = timeout;
		c->state = LMTP_DOWN;
		c->retry = event_new(c->base, -1, 0, lmtp_retry_cb, c);
		TAILQ_INIT(&c->queue);
		LIST_INSERT_HEAD(&conns, c, entry);
	}
	c->refs++;
	free(c->who);
	c->who = xstrdup(ac->name);
	h = xcalloc(1, sizeof *h);
	h->c = c;
	h->dest = dest;
	h->account = xstrdup(ac->name);
	return (h);
}

static void
lmtp_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	struct lmtp_conn	*c = arg;

	if (c->state == LMTP_RECONNECT)
		lmtp_connect(c);
}

static void
lmtp_job_free(struct lmtp_job *j)
{
	if (j->fd != -1)
		close(j->fd);
	free(j->header);
	free(j);
}

/* Deliver the message in fd (header first); cb answers later. */
void
lmtp_send(struct lmtp *h, int fd, const char *header, dest_done_cb cb,
    void *arg)
{
	struct lmtp_conn	*c = h->c;
	struct lmtp_job		*j;

	j = xcalloc(1, sizeof *j);
	j->h = h;
	j->fd = fd;
	j->header = xstrdup(header);
	j->cb = cb;
	j->arg = arg;
	TAILQ_INSERT_TAIL(&c->queue, j, entry);
	if (c->state == LMTP_DOWN)
		lmtp_connect(c);
	else if (c->state == LMTP_READY)
		lmtp_next(c);
}

/* A message's answer, from a fresh event (none if its account went). */
static void
lmtp_answer_job(struct lmtp_job *j, int status, const char *text)
{
	if (j->h != NULL)
		dest_answer_later(j->h->dest, j->cb, j->arg, status, text);
	lmtp_job_free(j);
}

/* The current message's answer; on to the next. */
static void
lmtp_answer(struct lmtp_conn *c, int status, const char *text)
{
	struct lmtp_job	*j = c->current;

	c->current = NULL;
	if (j != NULL)
		lmtp_answer_job(j, status, text);
}

/*
 * The connection is gone or unusable: the message in flight and every
 * message waiting are refused for now (they stay on the server); the
 * next message connects again.
 */
static void
lmtp_down(struct lmtp_conn *c, const char *fmt, ...)
{
	struct lmtp_job	*j;
	va_list		 ap;
	char		*why;

	va_start(ap, fmt);
	if (vasprintf(&why, fmt, ap) == -1)
		why = NULL;
	va_end(ap);
	if (c->nc != NULL) {
		net_connect_cancel(c->nc);
		c->nc = NULL;
	}
	if (c->bev != NULL) {
		bufferevent_free(c->bev);
		c->bev = NULL;
	}
	/* Nothing of the message went out yet: once more, anew. */
	if (c->state == LMTP_MAIL && c->current != NULL &&
	    c->current->h != NULL && !c->current->retried) {
		c->current->retried = 1;
		TAILQ_INSERT_HEAD(&c->queue, c->current, entry);
		c->current = NULL;
		log_debug("account=%s %s; trying again on a new connection",
		    lmtp_who(c), why != NULL ? why : "LMTP connection lost");
		free(why);
		/* Not from inside the old connection's callbacks. */
		c->state = LMTP_RECONNECT;
		event_active(c->retry, EV_TIMEOUT, 0);
		return;
	}
	c->state = LMTP_DOWN;
	lmtp_answer(c, DEST_TEMP, why);
	while ((j = TAILQ_FIRST(&c->queue)) != NULL) {
		TAILQ_REMOVE(&c->queue, j, entry);
		lmtp_answer_job(j, DEST_TEMP, why);
	}
	free(why);
}

/* Send a command line (config.c keeps the recipient short enough). */
static void
lmtp_cmd(struct lmtp_conn *c, const char *fmt, ...)
{
	va_list	ap;
	char	line[LMTP_LINE_MAX];
	int	n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof line - 2)
		fatalx("lmtp_cmd: line too long");
	log_trace("account=%s lmtp >>> %s", lmtp_who(c), line);
	evbuffer_add_printf(bufferevent_get_output(c->bev), "%s\r\n", line);
}

static void
lmtp_setup_bev(struct lmtp_conn *c, int fd)
{
	struct timeval	tv = { c->timeout, 0 };

	c->bev = bufferevent_socket_new(c->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL) {
		close(fd);
		lmtp_down(c, "cannot set up the LMTP connection");
		return;
	}
	bufferevent_setcb(c->bev, lmtp_read_cb, NULL, lmtp_event_cb, c);
	bufferevent_set_timeouts(c->bev, &tv, &tv);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	c->state = LMTP_GREETING;
	c->nlines = 0;
}

static void
lmtp_connected_cb(int fd, const char *msg, void *arg)
{
	struct lmtp_conn	*c = arg;

	c->nc = NULL;
	if (fd == -1) {
		lmtp_down(c, "cannot connect to the LMTP server: %s", msg);
		return;
	}
	lmtp_setup_bev(c, fd);
}

/* Connect: a unix socket ("unix:/path") or host:port over TCP. */
static void
lmtp_connect(struct lmtp_conn *c)
{
	struct sockaddr_un	 sun;
	char			 host[256], label[128];
	int			 fd, port;

	c->state = LMTP_CONNECTING;
	if (strncmp(c->server, "unix:", 5) == 0) {
		memset(&sun, 0, sizeof sun);
		sun.sun_family = AF_UNIX;
		if (strlen(c->server + 5) >= sizeof sun.sun_path) {
			lmtp_down(c, "the LMTP socket path is too long");
			return;
		}
		memcpy(sun.sun_path, c->server + 5, strlen(c->server + 5));
		/* Local: a connect does not wait for a network. */
		if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) ==
		    -1 || connect(fd, (struct sockaddr *)&sun,
		    sizeof sun) == -1) {
			if (fd != -1)
				close(fd);
			lmtp_down(c, "cannot connect to the LMTP server %s: %s",
			    c->server + 5, strerror(errno));
			return;
		}
		evutil_make_socket_nonblocking(fd);
		lmtp_setup_bev(c, fd);
		return;
	}
	if (lmtp_host_port(c->server, host, sizeof host, &port) == -1) {
		lmtp_down(c, "lmtp \"%s\" is not host:port", c->server);
		return;
	}
	snprintf(label, sizeof label, "account=%s lmtp", lmtp_who(c));
	c->nc = net_connect(c->base, c->dns, label, host, port, c->timeout,
	    lmtp_connected_cb, c);
}

/*
 * One line of an LMTP reply (RFC 5321 4.2: a code from 200 to 599, then
 * nothing, a space or "-" and more lines to come, in *more): the code,
 * or -1 if the line is not that.
 */
int
lmtp_reply_code(const char *line, size_t len, int *more)
{
	uint64_t	code;

	if (len < 3 || imap_number(line, 3, 599, &code) == -1 || code < 200 ||
	    (len > 3 && line[3] != ' ' && line[3] != '-'))
		return (-1);
	*more = len > 3 && line[3] == '-';
	return ((int)code);
}

/*
 * Split an lmtp = "host:port" (or "[v6 address]:port") into its host,
 * without brackets, and port.  -1 if it is not that.
 */
int
lmtp_host_port(const char *server, char *host, size_t size, int *port)
{
	const char	*colon;
	size_t		 len;
	uint64_t	 n;

	colon = strrchr(server, ':');
	if (colon == NULL || (len = (size_t)(colon - server)) == 0 ||
	    len >= size || parse_u64(colon + 1, 65535, &n) == -1 || n == 0)
		return (-1);
	if (server[0] == '[' && colon[-1] == ']') {
		if (len < 3)
			return (-1);
		memcpy(host, server + 1, len - 2);
		host[len - 2] = '\0';
	} else {
		memcpy(host, server, len);
		host[len] = '\0';
	}
	*port = (int)n;
	return (0);
}

/* Start the next message: MAIL, RCPT, DATA (together if pipelining). */
static void
lmtp_next(struct lmtp_conn *c)
{
	struct lmtp_job	*j;

	if (c->state != LMTP_READY || c->current != NULL ||
	    (j = TAILQ_FIRST(&c->queue)) == NULL)
		return;
	TAILQ_REMOVE(&c->queue, j, entry);
	c->current = j;
	c->failed = 0;
	c->step = 0;
	free(c->refusal);
	c->refusal = NULL;
	c->state = LMTP_MAIL;
	lmtp_cmd(c, "MAIL FROM:<>");
	if (c->pipelining) {
		lmtp_cmd(c, "RCPT TO:<%s>", c->recipient);
		lmtp_cmd(c, "DATA");
	}
}

/* Copy what is in p into the connection: LF made CRLF, dots doubled. */
static void
lmtp_encode(struct lmtp_conn *c, struct evbuffer *out, const char *p,
    size_t left)
{
	const char	*nl;

	while (left > 0) {
		if (c->bol && *p == '.')
			evbuffer_add(out, ".", 1);
		if ((nl = memchr(p, '\n', left)) == NULL) {
			evbuffer_add(out, p, left);
			c->bol = 0;
			return;
		}
		evbuffer_add(out, p, nl - p);
		evbuffer_add(out, "\r\n", 2);
		c->bol = 1;
		left -= nl - p + 1;
		p = nl + 1;
	}
}

/*
 * Feed the message into the connection while its buffer is low: the
 * header, then the spool file; then the final ".".
 */
static void
lmtp_body(struct lmtp_conn *c)
{
	struct evbuffer	*out = bufferevent_get_output(c->bev);
	struct lmtp_job	*j = c->current;
	struct timeval	 tv = { c->timeout, 0 };
	char		 in[LMTP_CHUNK];
	ssize_t		 n;

	/* The server is taking it: no reply is due before the end. */
	bufferevent_set_timeouts(c->bev, &tv, &tv);
	if (j->header != NULL) {
		lmtp_encode(c, out, j->header, strlen(j->header));
		free(j->header);
		j->header = NULL;
	}
	while (evbuffer_get_length(out) < LMTP_OUT_HIGH) {
		n = read(j->fd, in, sizeof in);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			lmtp_down(c, "cannot read the spooled message: %s",
			    strerror(errno));
			return;
		}
		if (n == 0) {
			/* The end: a last line without LF gets one. */
			evbuffer_add(out, c->bol ? ".\r\n" : "\r\n.\r\n",
			    c->bol ? 3 : 5);
			c->state = LMTP_DOT;
			bufferevent_setcb(c->bev, lmtp_read_cb, NULL,
			    lmtp_event_cb, c);
			return;
		}
		lmtp_encode(c, out, in, (size_t)n);
	}
	/* Full enough: more when it has drained. */
	bufferevent_setcb(c->bev, lmtp_read_cb, lmtp_write_cb, lmtp_event_cb,
	    c);
	bufferevent_setwatermark(c->bev, EV_WRITE, LMTP_OUT_HIGH / 2, 0);
}

static void
lmtp_write_cb(struct bufferevent *bev, void *arg)
{
	struct lmtp_conn	*c = arg;

	if (c->state == LMTP_BODY)
		lmtp_body(c);
}

/* The reply to MAIL, RCPT or DATA (in that order). */
static void
lmtp_reply_mail(struct lmtp_conn *c, int code)
{
	/* The first refusal counts. */
	if (!c->failed && (c->step == 2 ? code != 354 : code / 100 != 2)) {
		c->failed = 1;
		c->refusal_code = code;
		c->refusal = xstrdup(c->reply);
	}
	if (c->step < 2 && (c->pipelining || !c->failed)) {
		if (++c->step == 1 && !c->pipelining)
			lmtp_cmd(c, "RCPT TO:<%s>", c->recipient);
		else if (c->step == 2 && !c->pipelining)
			lmtp_cmd(c, "DATA");
		return;
	}
	if (c->failed) {
		/* Refused: the message stays; start afresh. */
		lmtp_answer(c, c->refusal_code / 100 == 5 ? DEST_PERM :
		    DEST_TEMP, c->refusal);
		if (c->step == 2 && code == 354) {
			/* DATA was taken all the same: end it. */
			evbuffer_add(bufferevent_get_output(c->bev), ".\r\n",
			    3);
			c->state = LMTP_ABORT;
			return;
		}
		c->state = LMTP_RSET;
		lmtp_cmd(c, "RSET");
		return;
	}
	c->state = LMTP_BODY;
	c->bol = 1;
	lmtp_body(c);
}

/* A complete reply (its last line in c->reply, code first). */
static void
lmtp_reply(struct lmtp_conn *c, int code)
{
	char	esc[LOG_ESCAPE_MAX];

	switch (c->state) {
	case LMTP_GREETING:
		if (code != 220) {
			lmtp_down(c, "the LMTP server refused the connection: "
			    "%s", log_escape(esc, sizeof esc, c->reply,
			    strlen(c->reply)));
			return;
		}
		c->state = LMTP_LHLO;
		c->pipelining = 0;
		lmtp_cmd(c, "LHLO %s", "localhost");
		break;
	case LMTP_LHLO:
		if (code != 250) {
			lmtp_down(c, "the LMTP server refused LHLO: %s",
			    log_escape(esc, sizeof esc, c->reply,
			    strlen(c->reply)));
			return;
		}
		c->state = LMTP_READY;
		lmtp_next(c);
		break;
	case LMTP_MAIL:
		lmtp_reply_mail(c, code);
		break;
	case LMTP_ABORT:
		c->state = LMTP_RSET;
		lmtp_cmd(c, "RSET");
		break;
	case LMTP_DOT:
		lmtp_answer(c, code / 100 == 2 ? DEST_OK : code / 100 == 4 ?
		    DEST_TEMP : DEST_PERM, c->reply);
		c->state = LMTP_READY;
		lmtp_next(c);
		break;
	case LMTP_RSET:
		c->state = LMTP_READY;
		lmtp_next(c);
		break;
	default:
		lmtp_down(c, "the LMTP server said something unasked: %s",
		    log_escape(esc, sizeof esc, c->reply, strlen(c->reply)));
		break;
	}
}

static void
lmtp_read_cb(struct bufferevent *bev, void *arg)
{
	struct lmtp_conn	*c = arg;
	struct evbuffer		*in = bufferevent_get_input(bev);
	struct evbuffer_ptr	 eol;
	size_t			 eol_len, len;
	int			 code, more;
	char			 esc[LOG_ESCAPE_MAX];

	while (c->bev == bev && evbuffer_get_length(in) > 0) {
		eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (eol.pos == -1) {
			if (evbuffer_get_length(in) > LMTP_LINE_MAX)
				lmtp_down(c, "the LMTP server sent a line too "
				    "long");
			return;
		}
		len = (size_t)eol.pos;
		if (len > LMTP_LINE_MAX || ++c->nlines > LMTP_REPLY_LINES_MAX) {
			lmtp_down(c, "the LMTP server sent a reply too long");
			return;
		}
		evbuffer_remove(in, c->reply, len + eol_len);
		if (len > 0 && c->reply[len - 1] == '\r')
			len--;
		c->reply[len] = '\0';
		log_trace("account=%s lmtp <<< %s", lmtp_who(c),
		    log_escape(esc, sizeof esc, c->reply, len));
		if ((code = lmtp_reply_code(c->reply, len, &more)) == -1) {
			lmtp_down(c, "the LMTP server sent a bad reply: %s",
			    log_escape(esc, sizeof esc, c->reply, len));
			return;
		}
		if (c->state == LMTP_LHLO && len > 4 &&
		    strcasecmp(c->reply + 4, "PIPELINING") == 0)
			c->pipelining = 1;
		if (more)
			continue;		/* more lines to come */
		c->nlines = 0;
		lmtp_reply(c, code);
	}
}

static void
lmtp_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct lmtp_conn	*c = arg;

	if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
		lmtp_read_cb(bev, c);
	if (c->bev != bev)
		return;
	if (c->state == LMTP_READY && (what & BEV_EVENT_EOF)) {
		/* An idle connection closed: connect again when needed. */
		bufferevent_free(c->bev);
		c->bev = NULL;
		c->state = LMTP_DOWN;
		if (!TAILQ_EMPTY(&c->queue))
			lmtp_connect(c);
		return;
	}
	lmtp_down(c, "the LMTP connection %s", (what & BEV_EVENT_TIMEOUT) ?
	    "timed out" : (what & BEV_EVENT_EOF) ? "was closed by the server" :
	    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

/*
 * An account lets go: its waiting messages are dropped, unanswered; the
 * one on the connection, if its, goes on (the server has it in part) with
 * nobody to hear the answer.  The last account closes the connection.
 */
void
lmtp_close(struct lmtp *h)
{
	struct lmtp_conn	*c;
	struct lmtp_job		*j, *next;

	if (h == NULL)
		return;
	c = h->c;
	for (j = TAILQ_FIRST(&c->queue); j != NULL; j = next) {
		next = TAILQ_NEXT(j, entry);
		if (j->h == h) {
			TAILQ_REMOVE(&c->queue, j, entry);
			lmtp_job_free(j);
		}
	}
	if (c->current != NULL && c->current->h == h)
		c->current->h = NULL;
	free(h->account);
	free(h);
	if (--c->refs > 0)
		return;
	LIST_REMOVE(c, entry);
	if (c->nc != NULL)
		net_connect_cancel(c->nc);
	if (c->bev != NULL)
		bufferevent_free(c->bev);
	if (c->current != NULL)
		lmtp_job_free(c->current);
	event_free(c->retry);
	free(c->refusal);
	free(c->server);
	free(c->recipient);
	free(c->who);
	free(c);
}
