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
 * socket or TCP, on the event loop.  One connection per account, kept
 * open while messages come; for each message MAIL FROM:<>, RCPT TO and
 * DATA (sent together when the server offers PIPELINING), then the
 * message streamed from its spool file, CRLF line ends and dot-stuffing
 * added on the way, so that no message is ever held in memory; the
 * recipient's reply after the final "." says whether it was taken.
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

/* RFC 5321: reply lines are at most 512 octets. */
#define LMTP_LINE_MAX		1000
#define LMTP_REPLY_LINES_MAX	100
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
	LMTP_RSET
};

struct lmtp_job {
	TAILQ_ENTRY(lmtp_job)	 entry;
	int			 fd;
	char			*header;
	dest_done_cb		 cb;
	void			*arg;
};

struct lmtp {
	struct event_base	*base;
	struct evdns_base	*dns;
	struct dest		*dest;
	const struct account_conf *ac;
	int			 timeout;
	enum lmtp_state		 state;
	struct net_connect	*nc;
	struct bufferevent	*bev;
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
	/* Body streaming: at a line start, a line left without LF. */
	int			 bol;
	struct evbuffer		*chunk;
};

static void	lmtp_connect(struct lmtp *);
static void	lmtp_next(struct lmtp *);
static void	lmtp_read_cb(struct bufferevent *, void *);
static void	lmtp_write_cb(struct bufferevent *, void *);
static void	lmtp_event_cb(struct bufferevent *, short, void *);
static void	lmtp_down(struct lmtp *, const char *, ...) PRINTFLIKE(2, 3);

struct lmtp *
lmtp_open(const struct session_env *env, const struct account_conf *ac,
    struct dest *dest, int timeout, char **cause)
{
	struct lmtp	*l;

	l = xcalloc(1, sizeof *l);
	l->base = env->base;
	l->dns = env->dns;
	l->dest = dest;
	l->ac = ac;
	l->timeout = timeout;
	l->state = LMTP_DOWN;
	l->chunk = evbuffer_new();
	TAILQ_INIT(&l->queue);
	return (l);
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
lmtp_send(struct lmtp *l, int fd, const char *header, dest_done_cb cb,
    void *arg)
{
	struct lmtp_job	*j;

	j = xcalloc(1, sizeof *j);
	j->fd = fd;
	j->header = xstrdup(header);
	j->cb = cb;
	j->arg = arg;
	TAILQ_INSERT_TAIL(&l->queue, j, entry);
	if (l->state == LMTP_DOWN)
		lmtp_connect(l);
	else if (l->state == LMTP_READY)
		lmtp_next(l);
}

/* The current message's answer (from the loop); on to the next. */
static void
lmtp_answer(struct lmtp *l, int status, const char *text)
{
	struct lmtp_job	*j = l->current;

	l->current = NULL;
	if (j == NULL)
		return;
	dest_answer_later(l->dest, j->cb, j->arg, status, text);
	lmtp_job_free(j);
}

/*
 * The connection is gone or unusable: the message in flight and every
 * message waiting are refused for now (they stay on the server); the
 * next message connects again.
 */
static void
lmtp_down(struct lmtp *l, const char *fmt, ...)
{
	struct lmtp_job	*j;
	va_list		 ap;
	char		*why;

	va_start(ap, fmt);
	if (vasprintf(&why, fmt, ap) == -1)
		why = NULL;
	va_end(ap);
	if (l->nc != NULL) {
		net_connect_cancel(l->nc);
		l->nc = NULL;
	}
	if (l->bev != NULL) {
		bufferevent_free(l->bev);
		l->bev = NULL;
	}
	l->state = LMTP_DOWN;
	lmtp_answer(l, DEST_TEMP, why);
	while ((j = TAILQ_FIRST(&l->queue)) != NULL) {
		TAILQ_REMOVE(&l->queue, j, entry);
		dest_answer_later(l->dest, j->cb, j->arg, DEST_TEMP, why);
		lmtp_job_free(j);
	}
	free(why);
}

/* Send a command line. */
static void
lmtp_cmd(struct lmtp *l, const char *fmt, ...)
{
	va_list	ap;
	char	line[LMTP_LINE_MAX];
	int	n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof line, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof line - 2)
		fatalx("lmtp_cmd: line too long");
	log_trace("account=%s lmtp >>> %s", l->ac->name, line);
	evbuffer_add_printf(bufferevent_get_output(l->bev), "%s\r\n", line);
}

static void
lmtp_setup_bev(struct lmtp *l, int fd)
{
	struct timeval	tv = { l->timeout, 0 };

	l->bev = bufferevent_socket_new(l->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (l->bev == NULL) {
		close(fd);
		lmtp_down(l, "cannot set up the LMTP connection");
		return;
	}
	bufferevent_setcb(l->bev, lmtp_read_cb, NULL, lmtp_event_cb, l);
	bufferevent_set_timeouts(l->bev, &tv, &tv);
	bufferevent_enable(l->bev, EV_READ | EV_WRITE);
	l->state = LMTP_GREETING;
	l->nlines = 0;
}

static void
lmtp_connected_cb(int fd, const char *msg, void *arg)
{
	struct lmtp	*l = arg;

	l->nc = NULL;
	if (fd == -1) {
		lmtp_down(l, "cannot connect to the LMTP server: %s", msg);
		return;
	}
	lmtp_setup_bev(l, fd);
}

/* Connect: a unix socket ("unix:/path") or host:port over TCP. */
static void
lmtp_connect(struct lmtp *l)
{
	struct sockaddr_un	 sun;
	char			 host[256], label[128];
	const char		*colon;
	uint64_t		 port;
	int			 fd;

	l->state = LMTP_CONNECTING;
	if (strncmp(l->ac->lmtp, "unix:", 5) == 0) {
		memset(&sun, 0, sizeof sun);
		sun.sun_family = AF_UNIX;
		if (strlen(l->ac->lmtp + 5) >= sizeof sun.sun_path) {
			lmtp_down(l, "the LMTP socket path is too long");
			return;
		}
		memcpy(sun.sun_path, l->ac->lmtp + 5, strlen(l->ac->lmtp + 5));
		/* Local: a connect does not wait for a network. */
		if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) ==
		    -1 || connect(fd, (struct sockaddr *)&sun,
		    sizeof sun) == -1) {
			if (fd != -1)
				close(fd);
			lmtp_down(l, "cannot connect to the LMTP server %s: %s",
			    l->ac->lmtp + 5, strerror(errno));
			return;
		}
		evutil_make_socket_nonblocking(fd);
		lmtp_setup_bev(l, fd);
		return;
	}
	colon = strrchr(l->ac->lmtp, ':');
	if (colon == NULL || (size_t)(colon - l->ac->lmtp) >= sizeof host ||
	    parse_u64(colon + 1, 65535, &port) == -1 || port == 0) {
		lmtp_down(l, "lmtp \"%s\" is not host:port", l->ac->lmtp);
		return;
	}
	memcpy(host, l->ac->lmtp, colon - l->ac->lmtp);
	host[colon - l->ac->lmtp] = '\0';
	/* "[::1]:24" */
	if (host[0] == '[' && host[strlen(host) - 1] == ']') {
		memmove(host, host + 1, strlen(host));
		host[strlen(host) - 1] = '\0';
	}
	snprintf(label, sizeof label, "account=%s lmtp", l->ac->name);
	l->nc = net_connect(l->base, l->dns, label, host, (int)port, l->timeout,
	    lmtp_connected_cb, l);
}

/* Start the next message: MAIL, RCPT, DATA (together if pipelining). */
static void
lmtp_next(struct lmtp *l)
{
	struct lmtp_job	*j;

	if (l->state != LMTP_READY || l->current != NULL ||
	    (j = TAILQ_FIRST(&l->queue)) == NULL)
		return;
	TAILQ_REMOVE(&l->queue, j, entry);
	l->current = j;
	l->failed = 0;
	l->step = 0;
	free(l->refusal);
	l->refusal = NULL;
	l->state = LMTP_MAIL;
	lmtp_cmd(l, "MAIL FROM:<>");
	if (l->pipelining) {
		lmtp_cmd(l, "RCPT TO:<%s>", l->ac->lmtp_recipient);
		lmtp_cmd(l, "DATA");
	}
}

/*
 * Feed the message into the connection while its buffer is low: the
 * header, then the spool file, LF made CRLF and lines starting with "."
 * doubled; then the final ".".
 */
static void
lmtp_body(struct lmtp *l)
{
	struct evbuffer	*out = bufferevent_get_output(l->bev);
	struct lmtp_job	*j = l->current;
	char		 in[LMTP_CHUNK];
	const char	*p, *nl;
	ssize_t		 n;
	size_t		 left;

	while (evbuffer_get_length(out) < LMTP_OUT_HIGH) {
		if (j->header != NULL) {
			p = j->header;
			left = strlen(p);
		} else {
			n = read(j->fd, in, sizeof in);
			if (n == -1 && errno == EINTR)
				continue;
			if (n == -1) {
				lmtp_down(l, "cannot read the spooled message: %s",
				    strerror(errno));
				return;
			}
			if (n == 0) {
				/* The end: a last line without LF gets one. */
				evbuffer_add(out, l->bol ? ".\r\n" : "\r\n.\r\n",
				    l->bol ? 3 : 5);
				l->state = LMTP_DOT;
				bufferevent_setcb(l->bev, lmtp_read_cb, NULL,
				    lmtp_event_cb, l);
				return;
			}
			p = in;
			left = (size_t)n;
		}
		while (left > 0) {
			if (l->bol && *p == '.')
				evbuffer_add(out, ".", 1);
			nl = memchr(p, '\n', left);
			if (nl == NULL) {
				evbuffer_add(out, p, left);
				l->bol = 0;
				break;
			}
			evbuffer_add(out, p, nl - p);
			/* A CRLF already there stays one. */
			if (nl > p && nl[-1] == '\r')
				evbuffer_add(out, "\n", 1);
			else
				evbuffer_add(out, "\r\n", 2);
			l->bol = 1;
			left -= nl - p + 1;
			p = nl + 1;
		}
		if (j->header != NULL) {
			free(j->header);
			j->header = NULL;
		}
	}
	/* Full enough: more when it has drained. */
	bufferevent_setcb(l->bev, lmtp_read_cb, lmtp_write_cb, lmtp_event_cb,
	    l);
	bufferevent_setwatermark(l->bev, EV_WRITE, LMTP_OUT_HIGH / 2, 0);
}

static void
lmtp_write_cb(struct bufferevent *bev, void *arg)
{
	struct lmtp	*l = arg;

	if (l->state == LMTP_BODY)
		lmtp_body(l);
}

/* A complete reply (its last line in l->reply, code first). */
static void
lmtp_reply(struct lmtp *l, int code)
{
	char	esc[LOG_ESCAPE_MAX];
	int	status = code / 100 == 2 ? DEST_OK : code / 100 == 4 ?
		    DEST_TEMP : DEST_PERM;

	switch (l->state) {
	case LMTP_GREETING:
		if (code != 220) {
			lmtp_down(l, "the LMTP server refused the connection: "
			    "%s", log_escape(esc, sizeof esc, l->reply,
			    strlen(l->reply)));
			return;
		}
		l->state = LMTP_LHLO;
		l->pipelining = 0;
		lmtp_cmd(l, "LHLO %s", "localhost");
		break;
	case LMTP_LHLO:
		if (code != 250) {
			lmtp_down(l, "the LMTP server refused LHLO: %s",
			    log_escape(esc, sizeof esc, l->reply,
			    strlen(l->reply)));
			return;
		}
		l->state = LMTP_READY;
		lmtp_next(l);
		break;
	case LMTP_MAIL:
		/* MAIL, RCPT, DATA, in order; the first refusal counts. */
		if (!l->failed && (l->step == 2 ? code != 354 :
		    status != DEST_OK)) {
			l->failed = 1;
			l->refusal_code = code;
			l->refusal = xstrdup(l->reply);
		}
		if (l->step < 2 && (l->pipelining || !l->failed)) {
			if (++l->step == 1 && !l->pipelining)
				lmtp_cmd(l, "RCPT TO:<%s>",
				    l->ac->lmtp_recipient);
			else if (l->step == 2 && !l->pipelining)
				lmtp_cmd(l, "DATA");
			break;
		}
		if (l->failed) {
			/* Refused: the message stays; start afresh. */
			lmtp_answer(l, l->refusal_code / 100 == 5 ?
			    DEST_PERM : DEST_TEMP, l->refusal);
			if (l->step == 2 && code == 354) {
				/* DATA was taken all the same: end it. */
				evbuffer_add(bufferevent_get_output(l->bev),
				    ".\r\n", 3);
				l->state = LMTP_ABORT;
				break;
			}
			l->state = LMTP_RSET;
			lmtp_cmd(l, "RSET");
			break;
		}
		l->state = LMTP_BODY;
		l->bol = 1;
		lmtp_body(l);
		break;
	case LMTP_ABORT:
		l->state = LMTP_RSET;
		lmtp_cmd(l, "RSET");
		break;
	case LMTP_DOT:
		lmtp_answer(l, status, l->reply);
		l->state = LMTP_READY;
		lmtp_next(l);
		break;
	case LMTP_RSET:
		l->state = LMTP_READY;
		lmtp_next(l);
		break;
	default:
		lmtp_down(l, "the LMTP server said something unasked: %s",
		    log_escape(esc, sizeof esc, l->reply, strlen(l->reply)));
		break;
	}
}

static void
lmtp_read_cb(struct bufferevent *bev, void *arg)
{
	struct lmtp		*l = arg;
	struct evbuffer		*in = bufferevent_get_input(bev);
	struct evbuffer_ptr	 eol;
	size_t			 eol_len, len;
	uint64_t		 code;
	char			 esc[LOG_ESCAPE_MAX];

	while (l->bev == bev && evbuffer_get_length(in) > 0) {
		eol = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
		if (eol.pos == -1) {
			if (evbuffer_get_length(in) > LMTP_LINE_MAX)
				lmtp_down(l, "the LMTP server sent a line too "
				    "long");
			return;
		}
		len = (size_t)eol.pos;
		if (len > LMTP_LINE_MAX || ++l->nlines > LMTP_REPLY_LINES_MAX) {
			lmtp_down(l, "the LMTP server sent a reply too long");
			return;
		}
		evbuffer_remove(in, l->reply, len + eol_len);
		if (len > 0 && l->reply[len - 1] == '\r')
			len--;
		l->reply[len] = '\0';
		log_trace("account=%s lmtp <<< %s", l->ac->name,
		    log_escape(esc, sizeof esc, l->reply, len));
		if (len < 3 || imap_number(l->reply, 3, 599, &code) == -1 ||
		    code < 200 || (len > 3 && l->reply[3] != ' ' &&
		    l->reply[3] != '-')) {
			lmtp_down(l, "the LMTP server sent a bad reply: %s",
			    log_escape(esc, sizeof esc, l->reply, len));
			return;
		}
		if (l->state == LMTP_LHLO && len > 4 &&
		    strcasecmp(l->reply + 4, "PIPELINING") == 0)
			l->pipelining = 1;
		if (len > 3 && l->reply[3] == '-')
			continue;		/* more lines to come */
		l->nlines = 0;
		lmtp_reply(l, (int)code);
	}
}

static void
lmtp_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct lmtp	*l = arg;

	if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
		lmtp_read_cb(bev, l);
	if (l->bev != bev)
		return;
	if (l->state == LMTP_READY && (what & BEV_EVENT_EOF)) {
		/* An idle connection closed: connect again when needed. */
		bufferevent_free(l->bev);
		l->bev = NULL;
		l->state = LMTP_DOWN;
		if (!TAILQ_EMPTY(&l->queue))
			lmtp_connect(l);
		return;
	}
	lmtp_down(l, "the LMTP connection %s", (what & BEV_EVENT_TIMEOUT) ?
	    "timed out" : (what & BEV_EVENT_EOF) ? "was closed by the server" :
	    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

/* Close; answers still due are not given. */
void
lmtp_close(struct lmtp *l)
{
	struct lmtp_job	*j;

	if (l == NULL)
		return;
	if (l->nc != NULL)
		net_connect_cancel(l->nc);
	if (l->bev != NULL)
		bufferevent_free(l->bev);
	if (l->current != NULL)
		lmtp_job_free(l->current);
	while ((j = TAILQ_FIRST(&l->queue)) != NULL) {
		TAILQ_REMOVE(&l->queue, j, entry);
		lmtp_job_free(j);
	}
	free(l->refusal);
	evbuffer_free(l->chunk);
	free(l);
}
