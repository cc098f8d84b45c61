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
 * session.c: the life of one session with a server, whatever protocol it
 * speaks: opening the account's delivery (deliver.c), getting the
 * password, connecting (implicit TLS, STARTTLS or, if allowed, clear
 * text), handing what the server sends to the protocol (struct proto),
 * timeouts, and the end of the session, good or bad.
 *
 * A session never frees itself inside one of its own callbacks:
 * session_finish() marks it dead, stops its I/O, and the free (and the
 * report to the scheduler) happens from a fresh event.
 */

#include "config.h"

#include <sys/socket.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
/* A server that has not said hello after this long will not. */
#define GREETING_SECONDS	10
/* The longest command line a protocol may send (secrets apart). */
#define SEND_LINE_MAX		1024

static const char *phase_names[] = {
	[PHASE_INIT] = "init",
	[PHASE_SECRET] = "secret",
	[PHASE_CONNECT] = "connect",
	[PHASE_TLS] = "tls",
	[PHASE_PROTOCOL] = "protocol",
	[PHASE_DONE] = "done",
};

static void	session_free_cb(evutil_socket_t, short, void *);
static void	session_secret_cb(char *, size_t, const char *, int, void *);
static void	session_connected_cb(int, const char *, void *);
static void	session_read_cb(struct bufferevent *, void *);
static void	session_event_cb(struct bufferevent *, short, void *);
static void	session_progress_cb(evutil_socket_t, short, void *);
static void	session_conclude(struct session *);
static void	session_deadline_cb(evutil_socket_t, short, void *);
static void	session_greeting_cb(evutil_socket_t, short, void *);
static void	session_tls_failed(struct session *, short);
static void	session_committed_cb(void *, uint64_t, void *);
static void	session_ready_cb(void *, const char *);

/* The name of where the session is, for logs and errors. */
static const char *
session_state(struct session *s)
{
	if (s->phase == PHASE_PROTOCOL)
		return (s->proto->state(s));
	return (phase_names[s->phase]);
}

/* The server's address once connected, else its configured name. */
const char *
session_peer(struct session *s)
{
	return (s->result.peer[0] != '\0' ? s->result.peer : s->ac->host);
}

/*
 * Start a session for an account.  done runs exactly once, later, from a
 * fresh event; the session frees itself after it.
 */
struct session *
session_start(const struct session_env *env, struct config *conf,
    const struct account_conf *ac, SSL_CTX *ctx,
    const struct session_opts *opts, session_done_cb done, void *arg)
{
	struct session	*s;
	struct timeval	 tv;
	char		*cause = NULL, mailbox[512];
	int		 code;

	s = xcalloc(1, sizeof *s);
	s->proto = ac->protocol == PROTOCOL_IMAP ? &imap_proto : &pop3_proto;
	s->ac = ac;
	s->conf = config_ref(conf);
	if (opts->mode == SESSION_CHECK)
		s->flags |= S_CHECK;
	if (opts->nopipelining || !ac->pipelining)
		s->flags |= S_NO_PIPE;
	s->first_folder = opts->first_folder;
	s->nfolders = opts->nfolders != 0 ? opts->nfolders : ac->nfolders;
	s->idle = opts->idle && opts->mode != SESSION_CHECK;
	s->base = env->base;
	s->dns = env->dns;
	if ((s->ctx = ctx) != NULL)
		SSL_CTX_up_ref(ctx);
	s->done = done;
	s->done_arg = arg;
	s->idle_cb = opts->idle_cb;
	s->phase = PHASE_INIT;
	s->result.records = -1;

	s->deadline_ev = evtimer_new(s->base, session_deadline_cb, s);
	s->progress_ev = evtimer_new(s->base, session_progress_cb, s);
	s->greeting_ev = evtimer_new(s->base, session_greeting_cb, s);
	tv.tv_sec = s->conf->session_timeout;
	tv.tv_usec = 0;
	evtimer_add(s->deadline_ev, &tv);

	/* The state and the Maildir come first: no point connecting if
	   nothing could be stored. */
	if (!(s->flags & S_CHECK)) {
		/* POP3 UIDLs and IMAP UIDs of one mailbox are not alike. */
		snprintf(mailbox, sizeof mailbox, "%s%s@%s",
		    ac->protocol == PROTOCOL_IMAP ? "imap:" : "", ac->user,
		    ac->host);
		s->dl = deliver_open(ac, s->conf->state_dir, mailbox, env,
		    s->conf->timeout, session_committed_cb, s, &code, &cause);
		if (s->dl == NULL) {
			session_fail(s, code, "%s", cause);
			free(cause);
			return (s);
		}
		deliver_set_ready(s->dl, session_ready_cb, s);
	}
	s->phase = PHASE_SECRET;
	s->secret_job = secret_get(s->base, ac, s->conf->timeout,
	    session_secret_cb, s);
	return (s);
}

/*
 * Ask a session to stop early: the protocol asks for nothing new, ends
 * what is in flight and says goodbye.  Before it starts there is nothing
 * to finish.
 */
void
session_stop(struct session *s)
{
	if (s->flags & S_DEAD)
		return;
	s->flags |= S_STOPPING;
	s->result.stopped = 1;
	if (s->phase != PHASE_PROTOCOL) {
		session_fail(s, EXIT_TEMPFAIL, "stopped before fetching");
		return;
	}
	s->proto->stop(s);
}

/* SIGUSR1: look for new mail now, if the protocol waits for news. */
void
session_poll_now(struct session *s)
{
	if (!(s->flags & S_DEAD) && s->phase == PHASE_PROTOCOL &&
	    s->proto->poll_now != NULL)
		s->proto->poll_now(s);
}

/*
 * The session waits for news (IMAP IDLE): no timeout runs meanwhile, the
 * protocol watches the connection itself; or it works again.
 */
void
session_idle(struct session *s, int idle)
{
	struct timeval	tv = { s->conf->session_timeout, 0 };

	if (idle) {
		evtimer_del(s->progress_ev);
		evtimer_del(s->deadline_ev);
	} else {
		session_arm_progress(s);
		evtimer_add(s->deadline_ev, &tv);
	}
	if (idle == !!(s->flags & S_IDLING))
		return;
	if (idle)
		s->flags |= S_IDLING;
	else
		s->flags &= ~S_IDLING;
	if (s->idle_cb != NULL)
		s->idle_cb(idle, s->done_arg);
}

/* Is the session waiting for news (the metrics count the connections)? */
int
session_idling(const struct session *s)
{
	return ((s->flags & (S_IDLING | S_DEAD)) == S_IDLING);
}

/*
 * A session that goes on (IMAP IDLE) finished a round of fetching: report
 * it as if the session had ended, and count afresh.
 */
void
session_cycle(struct session *s)
{
	struct session_result	r = s->result;

	if (s->dl != NULL) {
		r.new_files = deliver_new_files(s->dl, &r.new_files_len);
		r.records = deliver_records(s->dl);
	}
	s->done(&r, 0, s->done_arg);
	free(r.new_files);
	s->result.fetched = 0;
	s->result.bytes = 0;
	s->result.deleted = 0;
	s->result.left = 0;
	s->result.too_big = 0;
	s->result.too_big_max = 0;
}

/*
 * Stop now (the grace time is over): keep the messages that are complete,
 * drop the one in flight, hang up.  Nothing is lost: what was not removed
 * is still on the server, and recorded if it was delivered.
 */
void
session_abort(struct session *s)
{
	if (s->flags & S_DEAD)
		return;
	s->result.stopped = 1;
	session_fail(s, EXIT_TEMPFAIL, "stopped in the middle of the session");
}

/*
 * A commit handed to the destination (deliver = lmtp or mda) has ended:
 * the protocol goes on (it may remove those messages now), or, if the
 * commit failed, the session ends.
 */
static void
session_ready_cb(void *arg, const char *cause)
{
	struct session	*s = arg;

	if (s->flags & S_DRAINING) {
		if (cause != NULL && s->result.error == NULL) {
			xasprintf(&s->result.error, "cannot deliver: %s",
			    cause);
			s->result.exitcode = EXIT_IOERR;
			s->result.errclass = ERRC_DISK;
		}
		if (deliver_in_flight(s->dl))
			return;		/* the next batch went out */
		s->flags &= ~S_DRAINING;
		session_conclude(s);
		return;
	}
	if (s->flags & S_DEAD)
		return;
	if (cause != NULL) {
		session_fail(s, EXIT_IOERR, "cannot deliver: %s; nothing is "
		    "deleted from the server", cause);
		return;
	}
	if (s->phase == PHASE_PROTOCOL && s->p != NULL)
		s->proto->ready(s);
}

/* A batch was delivered: count it (the protocol hears of it itself). */
static void
session_committed_cb(void *cookie, uint64_t size, void *arg)
{
	struct session	*s = arg;

	s->result.fetched++;
	s->result.bytes += size;
	s->proto->committed(s, cookie);
}

static void
session_secret_cb(char *secret, size_t len, const char *error, int code,
    void *arg)
{
	struct session	*s = arg;
	char		 label[128];

	s->secret_job = NULL;
	if (secret == NULL) {
		session_fail(s, code, "cannot get the %s: %s",
		    s->ac->secret_source == SECRET_OAUTH2 ?
		    "OAuth2 access token" : "password", error);
		return;
	}
	s->secret = secret;
	s->secretlen = len;
	s->phase = PHASE_CONNECT;
	snprintf(label, sizeof label, "account=%s", s->ac->name);
	s->nc = net_connect(s->base, s->dns, label, s->ac->host, s->ac->port,
	    s->conf->timeout, session_connected_cb, s);
}

/* Wipe and forget the password once it is no longer needed. */
void
session_wipe_secret(struct session *s)
{
	if (s->secret == NULL)
		return;
	wipe(s->secret, s->secretlen);
	free(s->secret);
	s->secret = NULL;
	s->secretlen = 0;
}

/* The protocol takes over, with the greeting's clock running. */
static void
session_begin(struct session *s)
{
	struct timeval	tv = { GREETING_SECONDS, 0 };

	s->phase = PHASE_PROTOCOL;
	if (!(s->flags & S_GREETED)) {
		if (tv.tv_sec > s->conf->timeout)
			tv.tv_sec = s->conf->timeout;
		evtimer_add(s->greeting_ev, &tv);
	}
	s->proto->connected(s);
}

static void
session_connected_cb(int fd, const char *msg, void *arg)
{
	struct session	*s = arg;

	s->nc = NULL;
	if (fd == -1) {
		session_fail(s, EXIT_UNAVAIL, "%s", msg);
		return;
	}
	snprintf(s->result.peer, sizeof s->result.peer, "%s", msg);
	s->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		close(fd);
		session_fail(s, EXIT_SOFTWARE, "cannot set up the connection");
		return;
	}
	bufferevent_setcb(s->bev, session_read_cb, NULL, session_event_cb, s);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	if (s->ac->tls == TLS_IMPLICIT) {
		session_start_tls(s, "nothing");
		return;
	}
	if (s->ac->tls == TLS_NONE)
		log_warnx("account=%s connection to %s is not encrypted "
		    "(tls = none): the password and the mail can be read "
		    "on the way", s->ac->name, s->result.peer);
	session_begin(s);
}

/*
 * Start TLS over the connection: at once for implicit TLS, after the
 * server agreed to STARTTLS otherwise.  TLS runs as a filter over the
 * socket's bufferevent, which reads the socket in large chunks: servers
 * send many small records, and OpenSSL reading them straight from the
 * socket would cost two system calls each.
 *
 * After STARTTLS (cmd: its name in the protocol), anything the server sent
 * after its agreement arrived in clear text after the point where it
 * promised TLS, so it can only be an attack (RFC 2595, and CVE-2011-0411
 * in other software): refuse it.
 */
void
session_start_tls(struct session *s, const char *cmd)
{
	struct bufferevent	*tls;
	SSL			*ssl;

	if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0) {
		session_fail(s, EXIT_PROTOCOL, "the server sent data after its "
		    "reply to %s, before TLS started; refusing to go on (an "
		    "attempt to inject commands?)", cmd);
		return;
	}
	if ((ssl = tls_ssl_new(s->ctx, s->ac)) == NULL) {
		session_fail(s, EXIT_SOFTWARE, "cannot set up TLS");
		return;
	}
	tls = bufferevent_openssl_filter_new(s->base, s->bev, ssl,
	    BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (tls == NULL) {
		/* libevent 2.1 does not free it when it fails. */
		SSL_free(ssl);
		session_fail(s, EXIT_SOFTWARE, "cannot start TLS");
		return;
	}
	s->bev = tls;
	bufferevent_setcb(s->bev, session_read_cb, NULL, session_event_cb, s);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
	s->phase = PHASE_TLS;
	session_arm_progress(s);
}

/* (Re)start the clock for "the server made progress". */
void
session_arm_progress(struct session *s)
{
	struct timeval	tv = { s->conf->timeout, 0 };

	s->progress_bytes = 0;
	evtimer_add(s->progress_ev, &tv);
}

/* Count bytes of a message as progress, 4 KiB at a time. */
void
session_progress(struct session *s, size_t n)
{
	s->progress_bytes += n;
	if (s->progress_bytes >= PROGRESS_BYTES)
		session_arm_progress(s);
}

/* The server said hello: stop the greeting's clock. */
void
session_greeted(struct session *s)
{
	s->flags |= S_GREETED;
	evtimer_del(s->greeting_ev);
}

static void
session_progress_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session	*s = arg;
	char		 lost[128] = "";

	/* Waiting for the LMTP server or the mda is not the server's
	   fault; the destination has time limits of its own. */
	if (deliver_in_flight(s->dl)) {
		session_arm_progress(s);
		return;
	}
	if (s->phase == PHASE_PROTOCOL)
		s->proto->lost(s, lost, sizeof lost);
	session_fail(s, EXIT_TEMPFAIL, "%s timed out after %d seconds "
	    "without progress (state %s)%s", session_peer(s), s->conf->timeout,
	    session_state(s), lost);
}

static void
session_greeting_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session	*s = arg;

	/* A greeting on its way (however slowly) is for the timeout. */
	if ((s->flags & S_GREETED) || (s->bev != NULL &&
	    evbuffer_get_length(bufferevent_get_input(s->bev)) > 0))
		return;
	if (s->ac->tls == TLS_IMPLICIT)
		session_fail(s, EXIT_TEMPFAIL, "no greeting from %s within %d "
		    "seconds after TLS started", session_peer(s),
		    GREETING_SECONDS);
	else
		session_fail(s, EXIT_TEMPFAIL, "no greeting from %s within %d "
		    "seconds; does this port expect TLS at once? try tls = "
		    "implicit", session_peer(s), GREETING_SECONDS);
}

static void
session_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session	*s = arg;

	session_fail(s, EXIT_TEMPFAIL, "session took longer than "
	    "session-timeout (%d seconds); what was fetched is kept, the "
	    "rest follows at the next poll", s->conf->session_timeout);
}

/*
 * Send a command line.  A line that does not fit (a user name the config
 * check let through, say) fails the session instead of being cut.
 */
int
session_send(struct session *s, const char *fmt, ...)
{
	char		 line[SEND_LINE_MAX + 2];
	va_list		 ap;
	int		 n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof line - 2, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof line - 2) {
		session_fail(s, EXIT_CONFIG, "a command would be longer than %d "
		    "bytes; is the user name that long?", SEND_LINE_MAX);
		return (-1);
	}
	log_trace("account=%s >>> %s", s->ac->name, line);
	memcpy(line + n, "\r\n", 2);
	evbuffer_add(bufferevent_get_output(s->bev), line, n + 2);
	return (0);
}

/*
 * Send a line that holds a secret: prefix, then the secret (which may be
 * long: OAuth tokens).  The trace shows only what is safe to show; the
 * copy made here is wiped.
 */
void
session_send_secret(struct session *s, const char *prefix, const char *secret,
    size_t len, const char *trace)
{
	size_t	 plen = strlen(prefix), total = plen + len + 2;
	char	*line;

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
int
session_read_line(struct evbuffer *in, char *buf, size_t max, size_t *lenp)
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
void
session_unasked(struct session *s, struct evbuffer *in)
{
	char	line[64], esc[LOG_ESCAPE_MAX];
	ssize_t	len;

	len = evbuffer_copyout(in, line, sizeof line);
	session_fail(s, EXIT_PROTOCOL, "server sent data nobody asked for: "
	    "'%s'", log_escape(esc, sizeof esc, line, len > 0 ?
	    (size_t)len : 0));
}

static void
session_read_cb(struct bufferevent *bev, void *arg)
{
	struct session	*s = arg;

	/*
	 * libevent 2.1 hands over what arrived with the server's last
	 * handshake message (a TLS 1.2 server's greeting, often) before it
	 * reports the handshake done: keep it for session_event_cb().
	 */
	if (s->phase == PHASE_TLS || (s->flags & S_DEAD) ||
	    s->bev != bev)
		return;
	s->proto->read(s, bufferevent_get_input(bev));
}

static void
session_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct session	*s = arg;
	char		 lost[128] = "";

	if (what & BEV_EVENT_CONNECTED) {
		SSL	*ssl = bufferevent_openssl_get_ssl(bev);
		int	 again = (s->flags & S_GREETED) != 0;

		s->flags |= S_TLS_UP;
		if (!tls_check_pin(ssl, s->ac)) {
			session_fail(s, EXIT_NOPERM, "the certificate of %s does "
			    "not match tls-fingerprint", s->ac->host);
			return;
		}
		tls_describe(ssl, s->result.tls, sizeof s->result.tls);
		log_debug("account=%s tls=\"%s\" peer=%s", s->ac->name,
		    s->result.tls, s->result.peer);
		/* After STARTTLS, the server speaks only when spoken to. */
		if (again &&
		    evbuffer_get_length(bufferevent_get_input(bev)) > 0) {
			session_unasked(s, bufferevent_get_input(bev));
			return;
		}
		session_begin(s);
		if (!(s->flags & S_DEAD) && s->bev == bev &&
		    evbuffer_get_length(bufferevent_get_input(bev)) > 0)
			session_read_cb(bev, s);
		return;
	}
	/* libevent 2.1 may report EOF with data still unread. */
	if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
		session_read_cb(bev, s);
	if ((s->flags & S_DEAD) || s->bev != bev)
		return;
	if (s->phase == PHASE_TLS) {
		session_tls_failed(s, what);
		return;
	}
	s->proto->lost(s, lost, sizeof lost);
	if (!(s->flags & S_GREETED) && (s->flags & S_TLS_UP) &&
	    tls_cert_requested(bufferevent_openssl_get_ssl(bev))) {
		/* TLS 1.3 refuses a missing certificate after the handshake. */
		s->result.errclass = ERRC_TLS;
		session_fail(s, EXIT_NOPERM, "the server asked for a client "
		    "certificate and then hung up: give one with "
		    "tls-cert-file and tls-key-file");
	} else if ((what & BEV_EVENT_EOF) || EVUTIL_SOCKET_ERROR() == 0)
		session_fail(s, EXIT_TEMPFAIL, "server closed the connection "
		    "(state %s)%s", session_state(s), lost);
	else
		session_fail(s, EXIT_TEMPFAIL, "connection error (state %s): "
		    "%s%s", session_state(s),
		    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()), lost);
}

/* The TLS handshake failed: say why, as precisely as OpenSSL lets us. */
static void
session_tls_failed(struct session *s, short what)
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
		session_fail(s, EXIT_NOPERM, "%s", msg);
	else if (err != 0)
		session_fail(s, EXIT_PROTOCOL, "%s", msg);
	else if (EVUTIL_SOCKET_ERROR() != 0 && !(what & BEV_EVENT_EOF))
		session_fail(s, EXIT_UNAVAIL, "%s: %s%s%s", msg,
		    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()),
		    v13, cert);
	else
		session_fail(s, EXIT_PROTOCOL, "%s: the server hung up without "
		    "saying why%s%s", msg, v13, cert);
	free(msg);
}

/*
 * Hang up once everything sent has left: for a goodbye (QUIT) whose
 * answer nothing depends on, saving a round trip.  Under TLS, our buffer
 * being empty only means it is encrypted into the socket's buffer: wait
 * for that one to empty too.
 */
static void
session_hangup_check(struct session *s)
{
	struct bufferevent	*sock = bufferevent_get_underlying(s->bev);

	if (s->flags & S_DEAD)
		return;
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) > 0 ||
	    (sock != NULL &&
	    evbuffer_get_length(bufferevent_get_output(sock)) > 0))
		return;
	s->phase = PHASE_DONE;
	session_finish(s);
}

static void
session_hangup_write_cb(struct bufferevent *bev, void *arg)
{
	session_hangup_check(arg);
}

static void
session_hangup_wire_cb(struct evbuffer *wire,
    const struct evbuffer_cb_info *info, void *arg)
{
	session_hangup_check(arg);
}

/* The server hung up first: fine, nothing was waiting for an answer. */
static void
session_hangup_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct session	*s = arg;

	s->phase = PHASE_DONE;
	session_finish(s);
}

void
session_hangup(struct session *s)
{
	struct bufferevent	*sock = bufferevent_get_underlying(s->bev);

	bufferevent_setcb(s->bev, NULL, session_hangup_write_cb,
	    session_hangup_event_cb, s);
	if (sock != NULL)
		s->hangup_cb = evbuffer_add_cb(bufferevent_get_output(sock),
		    session_hangup_wire_cb, s);
	session_hangup_check(s);
}

/*
 * What class of failure (the metrics) code is, from where the session
 * was: the exit codes alone do not tell a refused certificate from a
 * refused login, or a password command's failure from a server's.
 */
static enum error_class
session_error_class(const struct session *s, int code)
{
	if (code == EXIT_IOERR || code == EXIT_DATAERR)
		return (ERRC_DISK);
	if (code == EXIT_CONFIG)
		return (ERRC_CONFIG);
	switch (s->phase) {
	case PHASE_INIT:
		return (ERRC_DISK);	/* the state or the Maildir */
	case PHASE_SECRET:
		return (s->ac->secret_source == SECRET_OAUTH2 ? ERRC_OAUTH2 :
		    ERRC_CONFIG);
	case PHASE_CONNECT:
		return (ERRC_NETWORK);
	case PHASE_TLS:
		return (code == EXIT_TEMPFAIL || code == EXIT_UNAVAIL ?
		    ERRC_NETWORK : ERRC_TLS);
	default:
		break;
	}
	switch (code) {
	case EXIT_NOPERM:
		return (ERRC_AUTH);
	case EXIT_PROTOCOL:
	case EXIT_SOFTWARE:
		return (ERRC_PROTOCOL);
	default:
		return (ERRC_NETWORK);	/* timeouts, hang-ups */
	}
}

/*
 * End the session with an error.  The protocol drops what is half done
 * first, and keeps what is complete: not keeping it would only mean
 * fetching it again.
 */
void
session_fail(struct session *s, int code, const char *fmt, ...)
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
		if (s->result.errclass == ERRC_NONE)
			s->result.errclass = session_error_class(s, code);
	}
	if (s->p != NULL)
		s->proto->abort(s);
	session_finish(s);
}

/*
 * The session is over (well or not): make the state durable, stop all
 * I/O and report from a fresh event, since we may be deep in a callback.
 */
void
session_finish(struct session *s)
{
	if (s->flags & S_DEAD)
		return;
	s->flags |= S_DEAD;
	s->result.stage = session_state(s);
	session_wipe_secret(s);
	if (s->bev != NULL) {
		if (s->hangup_cb != NULL) {
			evbuffer_remove_cb_entry(bufferevent_get_output(
			    bufferevent_get_underlying(s->bev)), s->hangup_cb);
			s->hangup_cb = NULL;
		}
		bufferevent_setcb(s->bev, NULL, NULL, NULL, NULL);
		bufferevent_disable(s->bev, EV_READ | EV_WRITE);
	}
	evtimer_del(s->progress_ev);
	evtimer_del(s->deadline_ev);
	evtimer_del(s->greeting_ev);
	/* What the destination has taken must be recorded, however the
	   session ended: session_ready_cb() goes on when it has answered. */
	if (deliver_in_flight(s->dl)) {
		s->flags |= S_DRAINING;
		return;
	}
	session_conclude(s);
}

/* The session and its deliveries are over: the result, from a fresh
   event. */
static void
session_conclude(struct session *s)
{
	char		*cause = NULL;
	const char	*reply;
	unsigned	 n;
	int		 perm;

	if (s->dl != NULL && s->result.error == NULL &&
	    (n = deliver_refused(s->dl, &perm, &reply)) > 0) {
		xasprintf(&s->result.error, "the %s refused %u message%s%s; "
		    "%s stay%s on the server: %s", s->ac->deliver ==
		    DELIVER_LMTP ? "LMTP server" : "mda", n, n == 1 ? "" : "s",
		    perm ? "" : " for now", n == 1 ? "it" : "they",
		    n == 1 ? "s" : "", reply != NULL ? reply : "");
		s->result.exitcode = perm ? EXIT_UNAVAIL : EXIT_TEMPFAIL;
		s->result.errclass = ERRC_DISK;		/* local delivery */
	}
	if (s->dl != NULL && deliver_sync(s->dl, &cause) == -1) {
		if (s->result.error == NULL) {
			s->result.error = cause;
			s->result.exitcode = EXIT_IOERR;
			s->result.errclass = ERRC_DISK;
		} else
			free(cause);
	}
	s->free_ev = evtimer_new(s->base, session_free_cb, s);
	event_active(s->free_ev, EV_TIMEOUT, 0);
}

static void
session_free_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session	*s = arg;

	/* Unlock the state before the scheduler may start the next one. */
	if (s->dl != NULL) {
		s->result.new_files = deliver_new_files(s->dl,
		    &s->result.new_files_len);
		s->result.records = deliver_records(s->dl);
	}
	deliver_close(s->dl);
	s->dl = NULL;
	s->done(&s->result, 1, s->done_arg);
	free(s->result.error);
	free(s->result.new_files);
	if (s->secret_job != NULL)
		secret_cancel(s->secret_job);
	if (s->nc != NULL)
		net_connect_cancel(s->nc);
	if (s->bev != NULL) {
		if (s->phase == PHASE_DONE && (s->flags & S_TLS_UP))
			tls_clean_end(bufferevent_openssl_get_ssl(s->bev));
		bufferevent_free(s->bev);
	}
	session_wipe_secret(s);
	if (s->p != NULL)
		s->proto->free(s);
	event_free(s->progress_ev);
	event_free(s->deadline_ev);
	event_free(s->greeting_ev);
	event_free(s->free_ev);
	SSL_CTX_free(s->ctx);
	config_free(s->conf);
	free(s);
}
