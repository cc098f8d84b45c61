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
 * pop3.c: the life of one POP3 session: opening the account's state and
 * Maildir, getting the password, connecting (implicit TLS, STLS or, if
 * allowed, clear text), reading what the server sends and handing each
 * reply to the code that waits for it (login.c, fetch.c), timeouts, and
 * the end of the session, good or bad.
 *
 * Replies are matched to commands through a queue of the commands sent
 * and not yet answered; with pipelining it holds many.  A session never
 * frees itself inside one of its own callbacks: pop3_finish() marks it
 * dead and the free happens from a fresh event.
 */

#include "config.h"

#include <sys/socket.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include "maild.h"
#include "net.h"
#include "session.h"

/* A stalled transfer: less than this many bytes per timeout period. */
#define PROGRESS_BYTES		4096

static const char *pop3_statenames[] = {
	"init", "secret", "connect", "tls", "greeting", "capa", "stls",
	"auth", "list", "transfer", "quit", "done"
};

static void	pop3_free_cb(evutil_socket_t, short, void *);
static void	pop3_secret_cb(char *, size_t, const char *, int, void *);
static void	pop3_connected_cb(int, const char *, void *);
static void	pop3_unasked(struct session *, struct evbuffer *);
static void	pop3_read_cb(struct bufferevent *, void *);
static void	pop3_event_cb(struct bufferevent *, short, void *);
static void	pop3_progress_cb(evutil_socket_t, short, void *);
static void	pop3_deadline_cb(evutil_socket_t, short, void *);
static void	pop3_arm_progress(struct session *);
static void	pop3_status(struct session *, const char *, size_t);
static void	pop3_tls_failed(struct session *, short);

const char *
pop3_statename(enum pop3_state state)
{
	return (pop3_statenames[state]);
}

void
pop3_set_state(struct session *s, enum pop3_state state)
{
	log_trace("account=%s state %s -> %s", s->ac->name,
	    pop3_statenames[s->state], pop3_statenames[state]);
	s->state = state;
}

/* Pop the oldest pending command. */
struct pop3_pending
pop3_dequeue(struct session *s)
{
	struct pop3_pending	p = s->q[s->qhead];

	s->qhead = (s->qhead + 1) % s->qcap;
	s->qlen--;
	return (p);
}

/*
 * Start a session for an account.  done runs exactly once, later, from a
 * fresh event; the session frees itself after it.
 */
struct session *
session_start(const struct session_env *env, struct config *conf,
    const struct account_conf *ac, SSL_CTX *ctx, int mode, int nopipelining,
    session_done_cb done, void *arg)
{
	struct session	*s;
	struct timeval	 tv;
	char		*cause = NULL, path[4096], lock[4096], mailbox[512];
	uint32_t	 tag;
	int		 code, n;

	s = xcalloc(1, sizeof *s);
	s->ac = ac;
	s->conf = config_ref(conf);
	if (mode == SESSION_CHECK)
		s->flags |= S_CHECK;
	s->base = env->base;
	s->dns = env->dns;
	s->ctx = ctx;
	s->done = done;
	s->done_arg = arg;
	s->state = POP3_INIT;
	if (nopipelining || !ac->pipelining)
		s->flags |= S_NO_PIPE;
	s->qcap = 64;
	s->q = xcalloc(s->qcap, sizeof *s->q);
	s->file.fd = -1;

	s->deadline_ev = evtimer_new(s->base, pop3_deadline_cb, s);
	s->progress_ev = evtimer_new(s->base, pop3_progress_cb, s);
	tv.tv_sec = s->conf->session_timeout;
	tv.tv_usec = 0;
	evtimer_add(s->deadline_ev, &tv);
	if (s->flags & S_CHECK)
		goto secret;

	/* The state file and the Maildir come first: no point connecting
	   if we could not store anything. */
	snprintf(path, sizeof path, "%s/%s.state", s->conf->state_dir,
	    ac->name);
	snprintf(lock, sizeof lock, "%s/%s.lock", s->conf->state_dir, ac->name);
	snprintf(mailbox, sizeof mailbox, "%s@%s", ac->user, ac->host);
	if (mkdir_p(s->conf->state_dir, 0700) == -1) {
		pop3_fail(s, EXIT_IOERR, "state-dir %s: %s",
		    s->conf->state_dir, strerror(errno));
		return (s);
	}
	if ((s->st = state_open(path, lock, mailbox, ac->maildir, &code,
	    &cause)) == NULL) {
		pop3_fail(s, code, "%s", cause);
		free(cause);
		return (s);
	}
	tag = (uint32_t)siphash24((const uint8_t *)"maild tmp tag 01", path,
	    strlen(path));
	if (maildir_open(&s->md, ac->maildir, tag, &cause) == -1) {
		pop3_fail(s, EXIT_IOERR, "%s", cause);
		free(cause);
		return (s);
	}
	s->md_open = 1;
	s->md.account = ac->name;
	if (s->st->finished > 0)
		log_info("account=%s finished %u deliver%s a crash had "
		    "interrupted", ac->name, s->st->finished,
		    s->st->finished == 1 ? "y" : "ies");
	if (s->st->old_mailbox != NULL)
		log_warnx("account=%s the state file was kept for mailbox %s, "
		    "but the account is now %s: starting afresh", ac->name,
		    s->st->old_mailbox, mailbox);
	if ((n = maildir_cleanup_tmp(&s->md)) > 0)
		log_info("account=%s removed %d partial file%s an interrupted "
		    "fetch left in %s/tmp", ac->name, n, n == 1 ? "" : "s",
		    ac->maildir);
	if (s->st->dirty && state_save(s->st, &cause) == -1) {
		pop3_fail(s, EXIT_IOERR, "%s", cause);
		free(cause);
		return (s);
	}

secret:
	pop3_set_state(s, POP3_SECRET);
	s->secret_job = secret_get(s->base, ac, s->conf->timeout,
	    pop3_secret_cb, s);
	return (s);
}

/*
 * Ask a session to stop early: no new message is asked for; the ones on
 * their way are delivered, then the session deletes what it should and
 * says QUIT.  Before the transfer there is nothing to finish.
 */
void
session_stop(struct session *s)
{
	if (s->flags & S_DEAD)
		return;
	s->flags |= S_STOPPING;
	s->result.stopped = 1;
	if (s->state < POP3_TRANSFER) {
		pop3_fail(s, EXIT_TEMPFAIL, "stopped before fetching");
		return;
	}
	if (s->state == POP3_TRANSFER)
		fetch_pump(s);
}

/*
 * Stop now (the grace time is over): keep the messages that are complete,
 * drop the one in flight, hang up.  Nothing is lost: what was not deleted
 * is still on the server, and its UIDL is recorded if it was delivered.
 */
void
session_abort(struct session *s)
{
	if (s->flags & S_DEAD)
		return;
	s->result.stopped = 1;
	pop3_fail(s, EXIT_TEMPFAIL, "stopped in the middle of the session; "
	    "the rest follows at the next poll");
}

static void
pop3_secret_cb(char *secret, size_t len, const char *error, int code,
    void *arg)
{
	struct session	*s = arg;
	char		 label[128];

	s->secret_job = NULL;
	if (secret == NULL) {
		pop3_fail(s, code, "cannot get the password: %s", error);
		return;
	}
	s->secret = secret;
	s->secretlen = len;
	pop3_set_state(s, POP3_CONNECT);
	snprintf(label, sizeof label, "account=%s", s->ac->name);
	s->nc = net_connect(s->base, s->dns, label, s->ac->host, s->ac->port,
	    s->conf->timeout, pop3_connected_cb, s);
}

/* Wipe and forget the password once it is no longer needed. */
void
pop3_wipe_secret(struct session *s)
{
	if (s->secret == NULL)
		return;
	wipe(s->secret, s->secretlen);
	free(s->secret);
	s->secret = NULL;
	s->secretlen = 0;
}

static void
pop3_connected_cb(int fd, const char *msg, void *arg)
{
	struct session	*s = arg;

	s->nc = NULL;
	if (fd == -1) {
		pop3_fail(s, EXIT_UNAVAIL, "%s", msg);
		return;
	}
	snprintf(s->result.peer, sizeof s->result.peer, "%s", msg);
	s->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		close(fd);
		pop3_fail(s, EXIT_SOFTWARE, "cannot set up the connection");
		return;
	}
	bufferevent_setcb(s->bev, pop3_read_cb, NULL, pop3_event_cb, s);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	if (s->ac->tls == TLS_IMPLICIT)
		pop3_start_tls(s);
	else
		login_connected(s);
}

/*
 * Start TLS over the connection: at once for implicit TLS, after the +OK
 * to STLS otherwise.  TLS runs as a filter over the socket's bufferevent,
 * which reads the socket in large chunks: servers send many small
 * records, and OpenSSL reading them straight from the socket would cost
 * two system calls each.
 *
 * After STLS, anything the server sent after its +OK arrived in clear
 * text after the point where it promised TLS, so it can only be an attack
 * (RFC 2595, and CVE-2011-0411 in other software): refuse it.
 */
void
pop3_start_tls(struct session *s)
{
	struct bufferevent	*tls;
	SSL			*ssl;

	if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0) {
		pop3_fail(s, EXIT_PROTOCOL, "the server sent data after its "
		    "reply to STLS, before TLS started; refusing to go on "
		    "(an attempt to inject commands?)");
		return;
	}
	if ((ssl = tls_ssl_new(s->ctx, s->ac)) == NULL) {
		pop3_fail(s, EXIT_SOFTWARE, "cannot set up TLS");
		return;
	}
	tls = bufferevent_openssl_filter_new(s->base, s->bev, ssl,
	    BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (tls == NULL) {
		pop3_fail(s, EXIT_SOFTWARE, "cannot start TLS");
		return;
	}
	s->bev = tls;
	bufferevent_setcb(s->bev, pop3_read_cb, NULL, pop3_event_cb, s);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	pop3_set_state(s, POP3_TLS);
	pop3_arm_progress(s);
}

/* (Re)start the clock for "the server made progress". */
static void
pop3_arm_progress(struct session *s)
{
	struct timeval	tv = { s->conf->timeout, 0 };

	s->progress_bytes = 0;
	evtimer_add(s->progress_ev, &tv);
}

/* Count bytes of a message as progress, 4 KiB at a time. */
void
pop3_progress(struct session *s, size_t n)
{
	s->progress_bytes += n;
	if (s->progress_bytes >= PROGRESS_BYTES)
		pop3_arm_progress(s);
}

static void
pop3_progress_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session	*s = arg;

	pop3_fail(s, EXIT_TEMPFAIL, "%s timed out after %d seconds without "
	    "progress (state %s)", s->result.peer[0] ? s->result.peer : s->ac->host,
	    s->conf->timeout, pop3_statenames[s->state]);
}

static void
pop3_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session	*s = arg;

	pop3_fail(s, EXIT_TEMPFAIL, "session took longer than "
	    "session-timeout (%d seconds); what was fetched is kept, the "
	    "rest follows at the next poll", s->conf->session_timeout);
}

/* Note that a reply to cmd is due (the greeting is not asked for). */
void
pop3_expect(struct session *s, enum pop3_cmd cmd)
{
	pop3_send(s, cmd, 0, NULL);
}

/* Queue a command and send it. */
void
pop3_send(struct session *s, enum pop3_cmd cmd, size_t msg, const char *fmt,
    ...)
{
	char		 line[POP3_STATUS_MAX];
	va_list		 ap;
	int		 n;

	if (s->qlen == s->qcap) {
		struct pop3_pending	*nq;
		size_t			 i;

		size_t			 cap = s->qcap ? s->qcap * 2 : 64;

		nq = xcalloc(cap, sizeof *nq);
		for (i = 0; i < s->qlen; i++)
			nq[i] = s->q[(s->qhead + i) % s->qcap];
		free(s->q);
		s->q = nq;
		s->qhead = 0;
		s->qcap = cap;
	}
	s->q[(s->qhead + s->qlen) % s->qcap].cmd = cmd;
	s->q[(s->qhead + s->qlen) % s->qcap].msg = msg;
	s->qlen++;
	if (s->qlen == 1)
		pop3_arm_progress(s);
	if (fmt == NULL)
		return;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof line - 2, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof line - 2)
		fatalx("pop3_send: command too long");
	log_trace("account=%s >>> %s", s->ac->name, line);
	memcpy(line + n, "\r\n", 2);
	evbuffer_add(bufferevent_get_output(s->bev), line, n + 2);
}

/*
 * Send a line that holds a secret: prefix, then the secret (which may be
 * long: OAuth tokens).  The trace shows only what is safe to show; the
 * copy made here is wiped.  CMD_NONE: a reply to a SASL challenge, part
 * of the AUTH command already queued.
 */
void
pop3_send_secret(struct session *s, enum pop3_cmd cmd, const char *prefix,
    const char *secret, size_t len, const char *trace)
{
	size_t	 plen = strlen(prefix), total = plen + len + 2;
	char	*line;

	if (cmd != CMD_NONE)
		pop3_send(s, cmd, 0, NULL);
	line = xmalloc(total);
	memcpy(line, prefix, plen);
	memcpy(line + plen, secret, len);
	memcpy(line + plen + len, "\r\n", 2);
	log_trace("account=%s >>> %s", s->ac->name, trace);
	evbuffer_add(bufferevent_get_output(s->bev), line, total);
	wipe(line, total);
	free(line);
}

/*
 * Take one line (up to LF) from in into buf, without the line end.
 * Returns 1 with a line, 0 if none is complete yet, -1 if the line is
 * longer than max.
 */
static int
pop3_read_line(struct evbuffer *in, char *buf, size_t max, size_t *lenp)
{
	struct evbuffer_ptr	 p;
	size_t			 eol_len, len;

	p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
	if (p.pos == -1) {
		if (evbuffer_get_length(in) > max)
			return (-1);
		return (0);
	}
	len = (size_t)p.pos;
	if (len > max)
		return (-1);
	evbuffer_remove(in, buf, len + eol_len);
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	buf[len] = '\0';
	*lenp = len;
	return (1);
}

/* The server spoke out of turn: fail, showing the start of what it said. */
static void
pop3_unasked(struct session *s, struct evbuffer *in)
{
	char	line[64], esc[LOG_ESCAPE_MAX];
	ssize_t	len;

	len = evbuffer_copyout(in, line, sizeof line);
	pop3_fail(s, EXIT_PROTOCOL, "server sent data nobody asked for: '%s'",
	    log_escape(esc, sizeof esc, line, len > 0 ? (size_t)len : 0));
}

static void
pop3_read_cb(struct bufferevent *bev, void *arg)
{
	struct session	*s = arg;
	struct evbuffer	*in = bufferevent_get_input(bev);
	char		 line[POP3_STATUS_MAX + 2], esc[LOG_ESCAPE_MAX];
	size_t		 len;
	int		 r;

	/*
	 * libevent 2.1 hands over what arrived with the server's last
	 * handshake message (a TLS 1.2 server's greeting, often) before it
	 * reports the handshake done: keep it for pop3_event_cb().
	 */
	if (s->state == POP3_TLS)
		return;
	/* Stop when the session ends or STLS replaced the bufferevent. */
	while (!(s->flags & S_DEAD) && s->bev == bev &&
	    evbuffer_get_length(in) > 0) {
		if (s->qlen == 0) {
			if (s->state == POP3_DONE)
				return;
			pop3_unasked(s, in);
			return;
		}
		if (s->rd == RD_BODY) {
			fetch_body(s, in);
			continue;
		}
		/* Listing lines have the status line's bound too. */
		r = pop3_read_line(in, line, POP3_STATUS_MAX, &len);
		if (r == 0)
			break;
		if (r == -1) {
			len = evbuffer_copyout(in, line, 64);
			pop3_fail(s, EXIT_PROTOCOL, "server sent a line longer "
			    "than %d bytes: '%s'", POP3_STATUS_MAX,
			    log_escape(esc, sizeof esc, line, len));
			return;
		}
		pop3_arm_progress(s);
		if (s->rd == RD_STATUS) {
			pop3_status(s, line, len);
			continue;
		}
		/* A line of a multi-line listing, dot-stuffed. */
		if (len == 1 && line[0] == '.') {
			s->rd = RD_STATUS;
			if (s->q[s->qhead].cmd == CMD_CAPA)
				login_capa_done(s);
			else
				fetch_list_end(s);
		} else if (s->q[s->qhead].cmd == CMD_CAPA)
			login_capa_line(s, line + (line[0] == '.'),
			    len - (line[0] == '.'));
		else
			fetch_list_line(s, line + (line[0] == '.'),
			    len - (line[0] == '.'));
	}
}

static void
pop3_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct session	*s = arg;

	if (what & BEV_EVENT_CONNECTED) {
		SSL	*ssl = bufferevent_openssl_get_ssl(bev);

		s->flags |= S_TLS_UP;
		if (!tls_check_pin(ssl, s->ac)) {
			pop3_fail(s, EXIT_NOPERM, "the certificate of %s does "
			    "not match tls-fingerprint", s->ac->host);
			return;
		}
		tls_describe(ssl, s->result.tls, sizeof s->result.tls);
		log_debug("account=%s tls=\"%s\" peer=%s", s->ac->name,
		    s->result.tls, s->result.peer);
		/* After STLS, the server speaks only when spoken to. */
		if (s->ac->tls == TLS_STARTTLS &&
		    evbuffer_get_length(bufferevent_get_input(bev)) > 0) {
			pop3_unasked(s, bufferevent_get_input(bev));
			return;
		}
		login_connected(s);
		if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
			pop3_read_cb(bev, s);
		return;
	}
	/* libevent 2.1 may report EOF with data still unread. */
	if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
		pop3_read_cb(bev, s);
	if ((s->flags & S_DEAD) || s->state == POP3_DONE || s->bev != bev)
		return;
	if (s->state == POP3_TLS) {
		pop3_tls_failed(s, what);
		return;
	}
	if (s->state == POP3_TRANSFER && s->rd == RD_BODY)
		pop3_fail(s, EXIT_TEMPFAIL, "connection lost while receiving "
		    "message %u; it will be fetched again",
		    s->msgs[s->cur].num);
	else if (s->state <= POP3_GREETING && (s->flags & S_TLS_UP) &&
	    tls_cert_requested(bufferevent_openssl_get_ssl(bev)))
		/* TLS 1.3 refuses a missing certificate after the handshake. */
		pop3_fail(s, EXIT_NOPERM, "the server asked for a client "
		    "certificate and then hung up: give one with "
		    "tls-cert-file and tls-key-file");
	else if ((what & BEV_EVENT_EOF) || EVUTIL_SOCKET_ERROR() == 0)
		pop3_fail(s, EXIT_TEMPFAIL, "server closed the connection "
		    "(state %s)", pop3_statenames[s->state]);
	else
		pop3_fail(s, EXIT_TEMPFAIL, "connection error (state %s): %s",
		    pop3_statenames[s->state],
		    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

/* The TLS handshake failed: say why, as precisely as OpenSSL lets us. */
static void
pop3_tls_failed(struct session *s, short what)
{
	SSL		*ssl = bufferevent_openssl_get_ssl(s->bev);
	unsigned long	 err;
	char		*msg;
	const char	*v13, *cert;
	int		 verify;

	err = bufferevent_get_openssl_error(s->bev);
	msg = tls_explain_failure(ssl, s->ac->host, err, &verify);
	/* A hang-up or a reset says nothing: guess what the server disliked. */
	v13 = s->ac->tls_min_version == 13 ? "; it may not speak TLS 1.3 "
	    "(tls-min-version = 1.3)" : "";
	cert = tls_cert_requested(ssl) ? "; it asked for a client "
	    "certificate (tls-cert-file)" : "";
	if (verify)
		pop3_fail(s, EXIT_NOPERM, "%s", msg);
	else if (err != 0)
		pop3_fail(s, EXIT_PROTOCOL, "%s", msg);
	else if (EVUTIL_SOCKET_ERROR() != 0 && !(what & BEV_EVENT_EOF))
		pop3_fail(s, EXIT_UNAVAIL, "%s: %s%s%s", msg,
		    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()),
		    v13, cert);
	else
		pop3_fail(s, EXIT_PROTOCOL, "%s: the server hung up without "
		    "saying why%s%s", msg, v13, cert);
	free(msg);
}

/*
 * A -ERR where we cannot go on: classify it by its response code, so the
 * scheduler knows whether to retry soon or slow down.
 */
void
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
	pop3_fail(s, code, "%s: server said '%s'", what,
	    log_escape(esc, sizeof esc, text, len));
}

/* A status line arrived: it answers the oldest pending command. */
static void
pop3_status(struct session *s, const char *line, size_t len)
{
	enum pop3_cmd		 cmd = s->q[s->qhead].cmd;
	enum pop3_status	 st;
	const char		*text;
	size_t			 textlen;
	char			 esc[LOG_ESCAPE_MAX];

	log_trace("account=%s <<< %s", s->ac->name,
	    log_escape(esc, sizeof esc, line, len));
	/* A SASL challenge: "+ " and base64 (RFC 5034). */
	if (cmd == CMD_AUTH && len >= 1 && line[0] == '+' &&
	    !(len >= 3 && strncasecmp(line, "+OK", 3) == 0)) {
		text = line + 1;
		if (len >= 2 && line[1] == ' ')
			text++;
		login_continuation(s, text, len - (text - line));
		return;
	}
	st = parse_status(line, len, &text, &textlen);
	if (st == POP3_BAD) {
		int	pipelined = (s->flags & S_PIPELINING) && s->qlen > 1;

		if (pipelined)
			s->result.nopipelining = 1;
		pop3_fail(s, EXIT_PROTOCOL, "server sent a bad status line "
		    "(state %s): '%s'%s", pop3_statenames[s->state],
		    log_escape(esc, sizeof esc, line, len), pipelined ?
		    "; pipelining is turned off for this account" : "");
		return;
	}
	switch (cmd) {
	case CMD_GREETING:
	case CMD_CAPA:
	case CMD_STLS:
	case CMD_USER:
	case CMD_PASS:
	case CMD_APOP:
	case CMD_AUTH:
		login_status(s, cmd, st, text, textlen);
		break;
	default:
		fetch_status(s, cmd, st, text, textlen);
		break;
	}
}

/*
 * End the session with an error.  Messages already complete in tmp/ are
 * committed first: they are good, and not keeping them would only mean
 * fetching them again.
 */
void
pop3_fail(struct session *s, int code, const char *fmt, ...)
{
	va_list	ap;

	if (s->flags & S_DEAD)
		return;
	if (s->result.error == NULL) {
		va_start(ap, fmt);
		if (vasprintf(&s->result.error, fmt, ap) == -1)
			s->result.error = NULL;
		va_end(ap);
		s->result.exitcode = code;
	}
	fetch_abort(s);
	pop3_finish(s);
}

/*
 * The session is over (well or not): tidy the state file, stop all I/O
 * and report from a fresh event, since we may be deep in a callback.
 */
void
pop3_finish(struct session *s)
{
	char	*cause = NULL;

	if (s->flags & S_DEAD)
		return;
	s->flags |= S_DEAD;
	s->result.stage = pop3_statenames[s->state];
	if (s->result.error == NULL && s->retr_failed > 0) {
		xasprintf(&s->result.error, "%u message%s could not be "
		    "retrieved and stayed on the server", s->retr_failed,
		    s->retr_failed == 1 ? "" : "s");
		s->result.exitcode = EXIT_PROTOCOL;
	}
	if (s->st != NULL && s->st->dirty && !(s->flags & S_STATE_SUSPECT) &&
	    state_save(s->st, &cause) == -1) {
		if (s->result.error == NULL) {
			s->result.error = cause;
			s->result.exitcode = EXIT_IOERR;
		} else
			free(cause);
	}
	pop3_wipe_secret(s);
	if (s->bev != NULL) {
		if (s->quit_cb != NULL) {
			evbuffer_remove_cb_entry(bufferevent_get_output(
			    bufferevent_get_underlying(s->bev)), s->quit_cb);
			s->quit_cb = NULL;
		}
		bufferevent_setcb(s->bev, NULL, NULL, NULL, NULL);
		bufferevent_disable(s->bev, EV_READ | EV_WRITE);
	}
	evtimer_del(s->progress_ev);
	evtimer_del(s->deadline_ev);
	s->free_ev = evtimer_new(s->base, pop3_free_cb, s);
	event_active(s->free_ev, EV_TIMEOUT, 0);
}

static void
pop3_free_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session	*s = arg;

	s->done(&s->result, s->done_arg);
	free(s->result.error);
	if (s->secret_job != NULL)
		secret_cancel(s->secret_job);
	if (s->nc != NULL)
		net_connect_cancel(s->nc);
	if (s->bev != NULL) {
		if (s->state == POP3_DONE && (s->flags & S_TLS_UP))
			tls_clean_end(bufferevent_openssl_get_ssl(s->bev));
		bufferevent_free(s->bev);
	}
	pop3_wipe_secret(s);
	free(s->sasl_error);
	fetch_free(s);
	if (s->md_open)
		maildir_close(&s->md);
	state_close(s->st);
	event_free(s->progress_ev);
	event_free(s->deadline_ev);
	event_free(s->free_ev);
	free(s->q);
	config_free(s->conf);
	free(s);
}
