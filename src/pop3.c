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
 * pop3.c: one POP3 session of one account, as a state machine driven by
 * libevent: connect, TLS, greeting, CAPA, login, UIDL and LIST, then RETR
 * and DELE (pipelined when the server offers PIPELINING), then QUIT.
 *
 * THE COMMIT PROTOCOL.  Every message must land in the Maildir exactly
 * once, whatever happens and whenever maild is killed.  Messages are
 * committed in batches; for each batch:
 *
 *  1. Each message is streamed into its own file in tmp/.  When its final
 *     "." arrives the file is closed, its write-back started; at commit
 *     time every file of the batch is fdatasync()ed.
 *  2. tmp/ is fsync()ed, so the files' names are durable too.
 *  3. The batch is added to the state file as PENDING records naming each
 *     file, and the state file is replaced atomically (write a temporary
 *     file, fsync, rename, fsync the state directory).
 *  4. Each file is renamed from tmp/ into new/.
 *  5. new/ is fsync()ed.  The batch is delivered.
 *  6. In delete mode, the batch's DELE commands are sent.  The server only
 *     deletes at QUIT.
 *
 * Restarting after a crash, state_open() first finishes what a PENDING
 * record describes: the file is complete and durable (1, 2 happened before
 * 3), so if it is still in tmp/ it is moved to new/ now, and if it is not,
 * step 4 happened.  Either way the message counts as delivered and is not
 * fetched again.  Files in tmp/ without a record are partial downloads from
 * before step 3: they are removed and fetched again, and since nothing was
 * DELEted for them they are still on the server.  A message is DELEted
 * only after step 5 and after its record is durable, so nothing is deleted
 * before it is safe; a DELE that did not take effect (no QUIT) is simply
 * sent again by the next session, which finds the UIDL recorded.
 *
 * If any step fails (disk full, read-only Maildir, state directory not
 * writable), the session ends at once without touching that batch further:
 * whatever reached the disk is resolved by the rule above at the next
 * start.
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

#include <openssl/ssl.h>

#include "maild.h"
#include "net.h"

/* Commit a batch after this many messages, bytes or seconds. */
#define BATCH_MAX_MSGS		256
#define BATCH_MAX_BYTES		(64U << 20)
#define BATCH_MAX_SECONDS	2.0
/* Pipelining window: RETRs in flight, and the bytes LIST says they hold. */
#define WINDOW_MAX_CMDS		200
#define WINDOW_MAX_BYTES	(16U << 20)
/* Decoded body bytes are written to disk in chunks of this size. */
#define OUTBUF_SIZE		(128U << 10)
/* A stalled transfer: less than this many bytes per timeout period. */
#define PROGRESS_BYTES		4096
/* A message may exceed its LIST size by this much (sizes are estimates
   on some servers), beyond that the server is lying. */
#define SIZE_SLACK(sz)		((sz) + (1U << 20))
/* The uidl arena never grows beyond this. */
#define ARENA_MAX		(256U << 20)

enum pop3_state {
	POP3_INIT,		/* opening state and Maildir */
	POP3_SECRET,		/* getting the password */
	POP3_CONNECT,		/* resolving and connecting */
	POP3_TLS,		/* TLS handshake */
	POP3_GREETING,
	POP3_CAPA,
	POP3_AUTH,
	POP3_LIST,		/* UIDL and LIST */
	POP3_TRANSFER,		/* RETR and DELE */
	POP3_QUIT,
	POP3_DONE
};

enum pop3_cmd {
	CMD_GREETING,		/* not sent: the server speaks first */
	CMD_CAPA,
	CMD_USER,
	CMD_PASS,
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

struct pop3_msg {
	uint32_t	 num;		/* message number in this session */
	uint32_t	 ordinal;	/* nth message with this UIDL */
	uint64_t	 size;		/* from LIST, 0 if unknown */
	size_t		 uidl;		/* offset in the arena */
	uint32_t	 uidl_len;
	int		 listed;	/* LIST mentioned it */
};

struct pop3_pending {
	enum pop3_cmd	 cmd;
	size_t		 msg;		/* index in msgs, for RETR and DELE */
};

struct batch_item {
	size_t		 msg;
	char		 final[288];
	uint64_t	 size;
};

struct session {
	enum pop3_state		 state;
	int			 flags;
#define S_DEAD		0x01	/* finished; only the deferred free is left */
#define S_PIPELINING	0x02	/* the server accepts pipelined commands */
#define S_TLS_UP	0x04
#define S_CAPA_AGAIN	0x08	/* asked CAPA again after login */
#define S_NO_UIDL	0x10
#define S_STOPPING	0x20	/* asked to stop: no new RETRs */
#define S_STATE_SUSPECT	0x40	/* a commit failed: do not save the state */
	const struct account_conf *ac;
	const struct config	*conf;
	struct event_base	*base;
	struct evdns_base	*dns;
	SSL_CTX			*ctx;
	session_done_cb		 done;
	void			*done_arg;
	struct session_result	 result;
	double			 started;
	char			 peer[64];

	struct secret_job	*secret_job;
	char			*secret;
	size_t			 secretlen;
	struct net_connect	*nc;
	struct bufferevent	*bev;
	struct event		*progress_ev;
	struct event		*deadline_ev;
	struct event		*free_ev;
	size_t			 progress_bytes;

	struct state		*st;
	struct maildir		 md;
	int			 md_open;

	/* Commands sent and not yet answered, oldest first (a ring). */
	struct pop3_pending	*q;
	size_t			 qhead, qlen, qcap;
	enum pop3_read		 rd;
	struct pop3_capa	 capa;

	/* The listing. */
	struct pop3_msg		*msgs;
	size_t			 nmsgs, capmsgs, listpos;
	char			*arena;
	size_t			 arenalen, arenacap;
	unsigned		 odd_uidls;

	/* The work: messages to fetch, and fetched ones to delete. */
	size_t			*want;
	size_t			 nwant, next_want;
	size_t			*dele;
	size_t			 ndele, next_dele, dele_cap;
	unsigned		 retr_inflight;
	uint64_t		 bytes_inflight;
	unsigned		 retr_failed;

	/* The message being received. */
	struct maildir_file	 file;
	struct body_decoder	 dec;
	size_t			 cur;
	uint64_t		 cur_raw;
	char			*outbuf;
	size_t			 outlen;

	/* Received and durable in tmp/, not yet committed. */
	struct batch_item	*batch;
	size_t			 nbatch;
	uint64_t		 batch_bytes;
	double			 batch_started;
};

static const char *pop3_statenames[] = {
	"init", "secret", "connect", "tls", "greeting", "capa", "auth",
	"list", "transfer", "quit", "done"
};

static void	pop3_set_state(struct session *, enum pop3_state);
static void	pop3_fail(struct session *, int, const char *, ...)
		    PRINTFLIKE(3, 4);
static void	pop3_finish(struct session *);
static void	pop3_free_cb(evutil_socket_t, short, void *);
static void	pop3_secret_cb(char *, size_t, const char *, void *);
static void	pop3_connected_cb(int, const char *, void *);
static void	pop3_read_cb(struct bufferevent *, void *);
static void	pop3_event_cb(struct bufferevent *, short, void *);
static void	pop3_progress_cb(evutil_socket_t, short, void *);
static void	pop3_deadline_cb(evutil_socket_t, short, void *);
static void	pop3_arm_progress(struct session *);
static void	pop3_send(struct session *, enum pop3_cmd, size_t,
		    const char *, ...) PRINTFLIKE(4, 5);
static void	pop3_send_pass(struct session *);
static int	pop3_read_line(struct session *, struct evbuffer *, char *,
		    size_t, size_t *);
static void	pop3_status(struct session *, const char *, size_t);
static void	pop3_list_line(struct session *, const char *, size_t);
static void	pop3_list_end(struct session *);
static void	pop3_body(struct session *, struct evbuffer *);
static void	pop3_message_done(struct session *);
static int	pop3_commit(struct session *, char **);
static void	pop3_pump(struct session *);
static void	pop3_plan(struct session *);
static void	pop3_login(struct session *);
static void	pop3_after_login(struct session *);
static void	pop3_retr_failed(struct session *, const char *, size_t);
static void	pop3_server_error(struct session *, const char *,
		    const char *, size_t, int);

/* Pop the oldest pending command. */
static struct pop3_pending
pop3_dequeue(struct session *s)
{
	struct pop3_pending	p = s->q[s->qhead];

	s->qhead = (s->qhead + 1) % s->qcap;
	s->qlen--;
	return (p);
}

static struct pop3_pending *
pop3_head(struct session *s)
{
	return (s->qlen > 0 ? &s->q[s->qhead] : NULL);
}

static const char *
pop3_uidl(struct session *s, size_t i, char *buf, size_t size)
{
	return (log_escape(buf, size, s->arena + s->msgs[i].uidl,
	    s->msgs[i].uidl_len));
}

static void
pop3_set_state(struct session *s, enum pop3_state state)
{
	log_trace("account=%s state %s -> %s", s->ac->name,
	    pop3_statenames[s->state], pop3_statenames[state]);
	s->state = state;
}

/*
 * Start a session for an account.  done runs exactly once, later, from a
 * fresh event; the session frees itself after it.
 */
struct session *
session_start(const struct session_env *env, const struct account_conf *ac,
    SSL_CTX *ctx, int nopipelining, session_done_cb done, void *arg)
{
	struct session	*s;
	char		*cause = NULL, path[4096], lock[4096], mailbox[512];
	uint32_t	 tag;
	int		 code;

	s = xcalloc(1, sizeof *s);
	s->ac = ac;
	s->conf = env->conf;
	s->base = env->base;
	s->dns = env->dns;
	s->ctx = ctx;
	s->done = done;
	s->done_arg = arg;
	s->started = now_mono();
	s->state = POP3_INIT;
	if (nopipelining)
		s->result.nopipelining = 1;
	s->qcap = 64;
	s->q = xcalloc(s->qcap, sizeof *s->q);
	s->file.fd = -1;

	s->deadline_ev = evtimer_new(s->base, pop3_deadline_cb, s);
	s->progress_ev = evtimer_new(s->base, pop3_progress_cb, s);
	{
		struct timeval	tv = { s->conf->session_timeout, 0 };

		evtimer_add(s->deadline_ev, &tv);
	}

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
	maildir_cleanup_tmp(&s->md, s->st);
	if (s->st->dirty && state_save(s->st, &cause) == -1) {
		pop3_fail(s, EXIT_IOERR, "%s", cause);
		free(cause);
		return (s);
	}

	pop3_set_state(s, POP3_SECRET);
	s->secret_job = secret_get(s->base, ac, s->conf->timeout,
	    pop3_secret_cb, s);
	return (s);
}

/* Ask a session to stop early: it ends at the next safe point. */
void
session_stop(struct session *s)
{
	if (s->flags & S_DEAD)
		return;
	s->flags |= S_STOPPING;
	if (s->state < POP3_TRANSFER) {
		pop3_fail(s, EXIT_TEMPFAIL, "stopped before fetching");
		return;
	}
	if (s->state == POP3_TRANSFER)
		pop3_pump(s);
}

static void
pop3_secret_cb(char *secret, size_t len, const char *error, void *arg)
{
	struct session	*s = arg;

	s->secret_job = NULL;
	if (secret == NULL) {
		pop3_fail(s, EXIT_CONFIG, "cannot get the password: %s", error);
		return;
	}
	s->secret = secret;
	s->secretlen = len;
	pop3_set_state(s, POP3_CONNECT);
	s->nc = net_connect(s->base, s->dns, s->ac->host, s->ac->port,
	    s->conf->timeout, pop3_connected_cb, s);
}

static void
pop3_connected_cb(int fd, const char *msg, void *arg)
{
	struct session	*s = arg;
	SSL		*ssl;

	s->nc = NULL;
	if (fd == -1) {
		pop3_fail(s, EXIT_UNAVAIL, "%s", msg);
		return;
	}
	snprintf(s->peer, sizeof s->peer, "%s", msg);
	if ((ssl = tls_ssl_new(s->ctx, s->ac->host)) == NULL) {
		close(fd);
		pop3_fail(s, EXIT_SOFTWARE, "cannot set up TLS");
		return;
	}
	s->bev = bufferevent_openssl_socket_new(s->base, fd, ssl,
	    BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE);
	if (s->bev == NULL) {
		/* With CLOSE_ON_FREE, libevent freed ssl already. */
		close(fd);
		pop3_fail(s, EXIT_SOFTWARE, "cannot set up the connection");
		return;
	}
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

static void
pop3_progress_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session	*s = arg;

	pop3_fail(s, EXIT_TEMPFAIL, "%s timed out after %d seconds without "
	    "progress (state %s)", s->peer[0] ? s->peer : s->ac->host,
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

/* Queue a command and send it. */
static void
pop3_send(struct session *s, enum pop3_cmd cmd, size_t msg, const char *fmt,
    ...)
{
	struct evbuffer	*out = bufferevent_get_output(s->bev);
	char		 line[POP3_STATUS_MAX];
	va_list		 ap;
	int		 n;

	if (s->qlen == s->qcap) {
		struct pop3_pending	*nq;
		size_t			 i;

		nq = xcalloc(s->qcap * 2, sizeof *nq);
		for (i = 0; i < s->qlen; i++)
			nq[i] = s->q[(s->qhead + i) % s->qcap];
		free(s->q);
		s->q = nq;
		s->qhead = 0;
		s->qcap *= 2;
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
	evbuffer_add(out, line, n + 2);
}

/* PASS goes out without being logged, and its buffer is wiped. */
static void
pop3_send_pass(struct session *s)
{
	struct evbuffer	*out = bufferevent_get_output(s->bev);
	char		*line;
	size_t		 len = s->secretlen + 7;

	pop3_send(s, CMD_PASS, 0, NULL);
	line = xmalloc(len);
	memcpy(line, "PASS ", 5);
	memcpy(line + 5, s->secret, s->secretlen);
	memcpy(line + 5 + s->secretlen, "\r\n", 2);
	log_trace("account=%s >>> PASS ********", s->ac->name);
	evbuffer_add(out, line, len);
	wipe(line, len);
	free(line);
}

/*
 * Take one line (up to LF) from in into buf, without the line end.
 * Returns 1 with a line, 0 if none is complete yet, -1 if the line is
 * longer than max.
 */
static int
pop3_read_line(struct session *s, struct evbuffer *in, char *buf, size_t max,
    size_t *lenp)
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

static void
pop3_read_cb(struct bufferevent *bev, void *arg)
{
	struct session	*s = arg;
	struct evbuffer	*in = bufferevent_get_input(bev);
	char		 line[POP3_STATUS_MAX + 2], esc[LOG_ESCAPE_MAX];
	size_t		 len;
	int		 r;

	while (!(s->flags & S_DEAD) && evbuffer_get_length(in) > 0) {
		if (s->qlen == 0) {
			if (s->state == POP3_DONE)
				return;
			len = evbuffer_copyout(in, line, 64);
			pop3_fail(s, EXIT_PROTOCOL, "server sent data nobody "
			    "asked for: '%s'", log_escape(esc, sizeof esc,
			    line, len));
			return;
		}
		if (s->rd == RD_BODY) {
			pop3_body(s, in);
			continue;
		}
		r = pop3_read_line(s, in, line, s->rd == RD_STATUS ?
		    POP3_STATUS_MAX : POP3_LISTLINE_MAX, &len);
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
		if (s->rd == RD_STATUS)
			pop3_status(s, line, len);
		else if (len == 1 && line[0] == '.')
			pop3_list_end(s);
		else if (line[0] == '.')
			pop3_list_line(s, line + 1, len - 1);
		else
			pop3_list_line(s, line, len);
	}
}

static void
pop3_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct session	*s = arg;
	char		 desc[128], *msg;
	unsigned long	 err;

	if (what & BEV_EVENT_CONNECTED) {
		s->flags |= S_TLS_UP;
		tls_describe(bufferevent_openssl_get_ssl(bev), desc,
		    sizeof desc);
		log_debug("account=%s tls=%s peer=%s", s->ac->name, desc,
		    s->peer);
		pop3_set_state(s, POP3_GREETING);
		pop3_send(s, CMD_GREETING, 0, NULL);
		return;
	}
	/* libevent 2.1 may report EOF with data still unread. */
	if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
		pop3_read_cb(bev, s);
	if (s->flags & S_DEAD)
		return;
	if (s->state == POP3_DONE)
		return;
	if (!(s->flags & S_TLS_UP)) {
		int	verify;

		err = bufferevent_get_openssl_error(bev);
		msg = tls_explain_failure(bufferevent_openssl_get_ssl(bev),
		    s->ac->host, err, &verify);
		if (verify)
			pop3_fail(s, EXIT_NOPERM, "%s", msg);
		else if (err != 0)
			pop3_fail(s, EXIT_PROTOCOL, "%s", msg);
		else
			pop3_fail(s, EXIT_UNAVAIL, "%s: %s", msg,
			    (what & BEV_EVENT_EOF) ? "the server closed the "
			    "connection" : evutil_socket_error_to_string(
			    EVUTIL_SOCKET_ERROR()));
		free(msg);
		return;
	}
	if (s->state == POP3_TRANSFER && s->rd == RD_BODY)
		pop3_fail(s, EXIT_TEMPFAIL, "connection lost while receiving "
		    "message %u; it will be fetched again",
		    s->msgs[s->cur].num);
	else if (what & BEV_EVENT_EOF)
		pop3_fail(s, EXIT_TEMPFAIL, "server closed the connection "
		    "(state %s)", pop3_statenames[s->state]);
	else
		pop3_fail(s, EXIT_TEMPFAIL, "connection error (state %s): %s",
		    pop3_statenames[s->state],
		    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
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
	else if (resp & RESP_AUTH)
		code = EXIT_NOPERM;
	pop3_fail(s, code, "%s: server said '%s'", what,
	    log_escape(esc, sizeof esc, text, len));
}

/* A status line arrived: it answers the oldest pending command. */
static void
pop3_status(struct session *s, const char *line, size_t len)
{
	struct pop3_pending	 p;
	enum pop3_status	 st;
	const char		*text;
	size_t			 textlen;
	char			 esc[LOG_ESCAPE_MAX];

	log_trace("account=%s <<< %s", s->ac->name,
	    log_escape(esc, sizeof esc, line, len));
	st = parse_status(line, len, &text, &textlen);
	if (st == POP3_BAD) {
		pop3_fail(s, EXIT_PROTOCOL, "server sent a bad status line "
		    "(state %s): '%s'%s", pop3_statenames[s->state],
		    log_escape(esc, sizeof esc, line, len),
		    (s->flags & S_PIPELINING) && s->qlen > 1 ?
		    "; pipelining is turned off for this account" : "");
		if ((s->flags & S_PIPELINING) && s->qlen > 1)
			s->result.nopipelining = 1;
		return;
	}
	p = *pop3_head(s);
	switch (p.cmd) {
	case CMD_GREETING:
		pop3_dequeue(s);
		if (st != POP3_OK) {
			pop3_server_error(s, "server refused the connection",
			    text, textlen, EXIT_UNAVAIL);
			return;
		}
		pop3_set_state(s, POP3_CAPA);
		pop3_send(s, CMD_CAPA, 0, "CAPA");
		break;
	case CMD_CAPA:
		if (st == POP3_OK) {
			s->rd = RD_LINES;	/* dequeued at the "." */
			break;
		}
		pop3_dequeue(s);
		/* No CAPA (RFC 1939 servers): assume nothing, go on. */
		if (s->flags & S_CAPA_AGAIN)
			pop3_after_login(s);
		else
			pop3_login(s);
		break;
	case CMD_USER:
		pop3_dequeue(s);
		if (st != POP3_OK) {
			pop3_server_error(s, "login failed (USER)", text,
			    textlen, EXIT_NOPERM);
			return;
		}
		if (!(s->flags & S_PIPELINING))
			pop3_send_pass(s);
		break;
	case CMD_PASS:
		pop3_dequeue(s);
		wipe(s->secret, s->secretlen);
		if (st != POP3_OK) {
			pop3_server_error(s, "login failed; check user and "
			    "password", text, textlen, EXIT_NOPERM);
			return;
		}
		log_debug("account=%s logged in", s->ac->name);
		if (!(s->flags & S_PIPELINING) && !(s->capa.flags &
		    CAPA_PIPELINING) && !s->result.nopipelining) {
			/* Some servers announce more after login (mpop
			   learnt this from Gmail). */
			s->flags |= S_CAPA_AGAIN;
			memset(&s->capa, 0, sizeof s->capa);
			pop3_send(s, CMD_CAPA, 0, "CAPA");
			break;
		}
		pop3_after_login(s);
		break;
	case CMD_UIDL:
		if (st == POP3_OK) {
			s->rd = RD_LINES;
			s->listpos = 0;
			break;
		}
		pop3_dequeue(s);
		if (s->ac->keep) {
			pop3_fail(s, EXIT_PROTOCOL, "the server does not "
			    "support UIDL, so maild cannot tell old messages "
			    "from new ones; with keep = yes it would fetch "
			    "every message again at every poll: set keep = no");
			return;
		}
		s->flags |= S_NO_UIDL;
		if (!(s->flags & S_PIPELINING))
			pop3_send(s, CMD_LIST, 0, "LIST");
		break;
	case CMD_LIST:
		if (st == POP3_OK) {
			s->rd = RD_LINES;
			s->listpos = 0;
			break;
		}
		pop3_dequeue(s);
		if (s->flags & S_NO_UIDL) {
			pop3_server_error(s, "LIST failed", text, textlen,
			    EXIT_PROTOCOL);
			return;
		}
		/* Sizes unknown: only the window by count applies. */
		pop3_plan(s);
		break;
	case CMD_RETR:
		if (st == POP3_OK) {
			char	*cause = NULL;

			s->cur = p.msg;
			s->cur_raw = 0;
			s->outlen = 0;
			body_decoder_init(&s->dec);
			if (maildir_create(&s->md, &s->file, &cause) == -1) {
				pop3_fail(s, EXIT_IOERR, "%s", cause);
				free(cause);
				return;
			}
			s->rd = RD_BODY;
			break;
		}
		pop3_dequeue(s);
		s->retr_inflight--;
		s->bytes_inflight -= s->msgs[p.msg].size;
		pop3_retr_failed(s, text, textlen);
		if (!(s->flags & S_DEAD))
			pop3_pump(s);
		break;
	case CMD_DELE:
		pop3_dequeue(s);
		if (st == POP3_OK)
			s->result.deleted++;
		else {
			char	u[LOG_ESCAPE_MAX];

			log_warnx("account=%s DELE of message %u (uidl \"%s\") "
			    "failed: \"%s\"; it stays on the server and is "
			    "deleted at the next poll", s->ac->name,
			    s->msgs[p.msg].num, pop3_uidl(s, p.msg, u,
			    sizeof u), log_escape(esc, sizeof esc, text,
			    textlen));
		}
		pop3_pump(s);
		break;
	case CMD_QUIT:
		pop3_dequeue(s);
		if (st != POP3_OK) {
			pop3_server_error(s, "QUIT failed, so the server may "
			    "not have deleted the fetched messages (they are "
			    "deleted at the next poll)", text, textlen,
			    EXIT_PROTOCOL);
			return;
		}
		pop3_set_state(s, POP3_DONE);
		pop3_finish(s);
		break;
	}
}

/* Log in; USER and PASS go out together when the server pipelines. */
static void
pop3_login(struct session *s)
{
	if ((s->capa.flags & CAPA_PIPELINING) && !s->result.nopipelining)
		s->flags |= S_PIPELINING;
	pop3_set_state(s, POP3_AUTH);
	pop3_send(s, CMD_USER, 0, "USER %s", s->ac->user);
	if (s->flags & S_PIPELINING)
		pop3_send_pass(s);
}

/* Logged in: ask for the listing. */
static void
pop3_after_login(struct session *s)
{
	if (s->secret != NULL) {
		wipe(s->secret, s->secretlen);
		free(s->secret);
		s->secret = NULL;
	}
	if ((s->capa.flags & CAPA_PIPELINING) && !s->result.nopipelining)
		s->flags |= S_PIPELINING;
	pop3_set_state(s, POP3_LIST);
	pop3_send(s, CMD_UIDL, 0, "UIDL");
	if (s->flags & S_PIPELINING)
		pop3_send(s, CMD_LIST, 0, "LIST");
}

/* Add one UIDL listing line to msgs. */
static void
pop3_uidl_line(struct session *s, const char *line, size_t len)
{
	struct pop3_msg	*m;
	const char	*uidl;
	size_t		 ulen, i;
	uint32_t	 num;
	char		 esc[LOG_ESCAPE_MAX];

	if (parse_uidl_line(line, len, &num, &uidl, &ulen) == -1) {
		pop3_fail(s, EXIT_PROTOCOL, "bad line in the UIDL listing: "
		    "'%s'", log_escape(esc, sizeof esc, line, len));
		return;
	}
	if (s->nmsgs > 0 && num <= s->msgs[s->nmsgs - 1].num) {
		pop3_fail(s, EXIT_PROTOCOL, "UIDL listing is not in order at "
		    "message %u", num);
		return;
	}
	if (s->nmsgs >= POP3_MAX_MESSAGES ||
	    s->arenalen + ulen > ARENA_MAX) {
		pop3_fail(s, EXIT_PROTOCOL, "UIDL listing is too long");
		return;
	}
	for (i = 0; i < ulen; i++) {
		if ((unsigned char)uidl[i] < 0x21 ||
		    (unsigned char)uidl[i] > 0x7e)
			break;
	}
	if (i < ulen || ulen > UIDL_RFC_MAX) {
		if (s->odd_uidls++ == 0)
			log_warnx("account=%s the server sends UIDLs that break "
			    "RFC 1939 (like \"%s\" for message %u); maild "
			    "handles them, but tell the server's "
			    "administrator", s->ac->name,
			    log_escape(esc, sizeof esc, uidl, ulen), num);
	}
	if (s->nmsgs == s->capmsgs) {
		s->capmsgs = s->capmsgs ? s->capmsgs * 2 : 256;
		s->msgs = xreallocarray(s->msgs, s->capmsgs, sizeof *s->msgs);
	}
	if (s->arenalen + ulen > s->arenacap) {
		while (s->arenalen + ulen > s->arenacap)
			s->arenacap = s->arenacap ? s->arenacap * 2 : 8192;
		s->arena = xreallocarray(s->arena, 1, s->arenacap);
	}
	memcpy(s->arena + s->arenalen, uidl, ulen);
	m = &s->msgs[s->nmsgs++];
	memset(m, 0, sizeof *m);
	m->num = num;
	m->uidl = s->arenalen;
	m->uidl_len = (uint32_t)ulen;
	s->arenalen += ulen;
}

/* Add one LIST line: the size of a message UIDL listed (or a new one). */
static void
pop3_size_line(struct session *s, const char *line, size_t len)
{
	struct pop3_msg	*m;
	uint32_t	 num;
	uint64_t	 size;
	char		 esc[LOG_ESCAPE_MAX];

	if (parse_list_line(line, len, &num, &size) == -1) {
		pop3_fail(s, EXIT_PROTOCOL, "bad line in the LIST listing: "
		    "'%s'", log_escape(esc, sizeof esc, line, len));
		return;
	}
	if (s->flags & S_NO_UIDL) {
		if ((s->nmsgs > 0 && num <= s->msgs[s->nmsgs - 1].num) ||
		    s->nmsgs >= POP3_MAX_MESSAGES) {
			pop3_fail(s, EXIT_PROTOCOL, "LIST listing is not in "
			    "order or too long at message %u", num);
			return;
		}
		if (s->nmsgs == s->capmsgs) {
			s->capmsgs = s->capmsgs ? s->capmsgs * 2 : 256;
			s->msgs = xreallocarray(s->msgs, s->capmsgs,
			    sizeof *s->msgs);
		}
		m = &s->msgs[s->nmsgs++];
		memset(m, 0, sizeof *m);
		m->num = num;
		m->size = size;
		m->listed = 1;
		return;
	}
	/* Both listings are in order: walk UIDL's alongside. */
	if (s->listpos >= s->nmsgs || s->msgs[s->listpos].num != num) {
		pop3_fail(s, EXIT_PROTOCOL, "LIST and UIDL disagree about "
		    "message %u", num);
		return;
	}
	m = &s->msgs[s->listpos++];
	m->size = size;
	m->listed = 1;
}

static void
pop3_list_line(struct session *s, const char *line, size_t len)
{
	char	esc[LOG_ESCAPE_MAX];

	switch (pop3_head(s)->cmd) {
	case CMD_CAPA:
		log_trace("account=%s <<< %s", s->ac->name,
		    log_escape(esc, sizeof esc, line, len));
		parse_capa_line(&s->capa, line, len);
		break;
	case CMD_UIDL:
		pop3_uidl_line(s, line, len);
		break;
	case CMD_LIST:
		pop3_size_line(s, line, len);
		break;
	default:
		fatalx("pop3_list_line: no listing pending");
	}
}

/* The "." ending a listing. */
static void
pop3_list_end(struct session *s)
{
	struct pop3_pending	p = pop3_dequeue(s);

	s->rd = RD_STATUS;
	switch (p.cmd) {
	case CMD_CAPA:
		if (s->flags & S_CAPA_AGAIN)
			pop3_after_login(s);
		else
			pop3_login(s);
		break;
	case CMD_UIDL:
		if (s->flags & S_PIPELINING)
			break;		/* LIST is on its way */
		if (s->nmsgs == 0) {
			pop3_plan(s);
			break;
		}
		pop3_send(s, CMD_LIST, 0, "LIST");
		break;
	case CMD_LIST:
		if (!(s->flags & S_NO_UIDL) && s->listpos != s->nmsgs) {
			pop3_fail(s, EXIT_PROTOCOL, "LIST and UIDL disagree "
			    "about the number of messages (%zu and %zu)",
			    s->listpos, s->nmsgs);
			return;
		}
		pop3_plan(s);
		break;
	default:
		fatalx("pop3_list_end: no listing pending");
	}
}

/*
 * Both listings are in: decide what to fetch (UIDLs not in the state)
 * and what to delete (delete mode: UIDLs already delivered).
 */
static void
pop3_plan(struct session *s)
{
	struct state_entry	*e;
	struct {
		uint64_t	hash;
		size_t		msg;
	}			*seen = NULL;
	size_t			 i, size = 16, mask, slot, known = 0;
	uint8_t			 key[16];
	char			 esc[LOG_ESCAPE_MAX];

	s->want = xcalloc(s->nmsgs ? s->nmsgs : 1, sizeof *s->want);
	s->dele_cap = s->nmsgs ? s->nmsgs : 1;
	s->dele = xcalloc(s->dele_cap, sizeof *s->dele);
	if (s->flags & S_NO_UIDL) {
		/* Without UIDLs every message is new; delete mode only. */
		for (i = 0; i < s->nmsgs; i++)
			s->want[s->nwant++] = i;
		goto done;
	}

	/* Number the messages that share a UIDL: 1, 2, ... */
	while (size < s->nmsgs * 2)
		size *= 2;
	mask = size - 1;
	seen = xcalloc(size, sizeof *seen);
	random_bytes(key, sizeof key);
	for (i = 0; i < s->nmsgs; i++) {
		struct pop3_msg	*m = &s->msgs[i];
		uint64_t	 h = siphash24(key, s->arena + m->uidl,
				    m->uidl_len) | 1;

		m->ordinal = 1;
		for (slot = h & mask; seen[slot].hash != 0;
		    slot = (slot + 1) & mask) {
			struct pop3_msg	*o = &s->msgs[seen[slot].msg];

			if (seen[slot].hash == h && o->uidl_len ==
			    m->uidl_len && memcmp(s->arena + o->uidl,
			    s->arena + m->uidl, m->uidl_len) == 0) {
				m->ordinal = o->ordinal + 1;
				seen[slot].msg = i;	/* latest with it */
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
			    "them once", s->ac->name, pop3_uidl(s, i, esc,
			    sizeof esc));
		e = state_find(s->st, s->arena + m->uidl, m->uidl_len,
		    m->ordinal);
		if (e != NULL) {
			e->listed = 1;
			known++;
			if (!s->ac->keep)
				s->dele[s->ndele++] = i;
		} else
			s->want[s->nwant++] = i;
	}
	free(seen);
	/* Forget UIDLs that are gone from the server. */
	for (i = 0; i < s->st->nentries; i++) {
		if (!s->st->entries[i]->listed)
			break;
	}
	if (i < s->st->nentries) {
		size_t	before = s->st->nentries;

		/* Only entries from earlier sessions can be unlisted. */
		state_forget_unlisted(s->st);
		log_debug("account=%s forgot %zu UIDLs no longer on the "
		    "server", s->ac->name, before - s->st->nentries);
	}
done:
	log_debug("account=%s messages=%zu new=%zu known=%zu%s", s->ac->name,
	    s->nmsgs, s->nwant, known, s->flags & S_NO_UIDL ?
	    " (server has no UIDL)" : "");
	s->outbuf = s->nwant > 0 ? xmalloc(OUTBUF_SIZE + 1) : NULL;
	pop3_set_state(s, POP3_TRANSFER);
	pop3_pump(s);
}

/*
 * Keep the server busy: send RETRs while the window allows, DELEs for
 * committed messages, and QUIT once everything is done.
 */
static void
pop3_pump(struct session *s)
{
	int	pipelining = (s->flags & S_PIPELINING) != 0;

	if (s->flags & S_DEAD)
		return;
	if (s->state != POP3_TRANSFER)
		return;
	while (s->next_dele < s->ndele && (pipelining || s->qlen == 0)) {
		size_t	i = s->dele[s->next_dele++];

		pop3_send(s, CMD_DELE, i, "DELE %u", s->msgs[i].num);
	}
	while (!(s->flags & S_STOPPING) && s->next_want < s->nwant &&
	    (pipelining || s->qlen == 0) &&
	    (s->retr_inflight == 0 || (s->retr_inflight < WINDOW_MAX_CMDS &&
	    s->bytes_inflight < WINDOW_MAX_BYTES))) {
		size_t	i = s->want[s->next_want++];

		s->retr_inflight++;
		s->bytes_inflight += s->msgs[i].size;
		pop3_send(s, CMD_RETR, i, "RETR %u", s->msgs[i].num);
	}
	if (s->qlen > 0 || s->nbatch > 0 || s->next_dele < s->ndele)
		return;
	if (s->next_want < s->nwant && !(s->flags & S_STOPPING))
		return;
	pop3_set_state(s, POP3_QUIT);
	pop3_send(s, CMD_QUIT, 0, "QUIT");
}

/* Write out what the decoder has produced so far. */
static int
pop3_flush_body(struct session *s)
{
	if (s->outlen == 0)
		return (0);
	if (maildir_write(&s->file, s->outbuf, s->outlen) == -1) {
		pop3_fail(s, EXIT_IOERR, "cannot write message to %s/tmp: %s",
		    s->md.path, strerror(errno));
		return (-1);
	}
	s->outlen = 0;
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
	struct evbuffer_iovec	 v[8];
	struct pop3_msg		*m = &s->msgs[s->cur];
	size_t			 consumed = 0, used, n, out;
	int			 i, nv;

	nv = evbuffer_peek(in, -1, NULL, v, 8);
	if (nv > 8)
		nv = 8;
	for (i = 0; i < nv && !s->dec.done; i++) {
		const char	*p = v[i].iov_base;
		size_t		 left = v[i].iov_len;

		while (left > 0 && !s->dec.done) {
			if (s->outlen >= OUTBUF_SIZE &&
			    pop3_flush_body(s) == -1)
				return;
			/* body_decode may emit one byte more than it eats:
			   outbuf has OUTBUF_SIZE + 1 bytes. */
			n = left;
			if (n > OUTBUF_SIZE - s->outlen)
				n = OUTBUF_SIZE - s->outlen;
			used = body_decode(&s->dec, p, n, s->outbuf + s->outlen,
			    &out);
			s->outlen += out;
			p += used;
			left -= used;
			consumed += used;
		}
	}
	evbuffer_drain(in, consumed);
	s->cur_raw += consumed;
	s->progress_bytes += consumed;
	if (s->progress_bytes >= PROGRESS_BYTES)
		pop3_arm_progress(s);
	if (m->listed && s->cur_raw > SIZE_SLACK(m->size) * 2) {
		pop3_fail(s, EXIT_PROTOCOL, "message %u is far larger than the "
		    "%llu bytes the server announced; giving up on this "
		    "server", m->num, (unsigned long long)m->size);
		return;
	}
	if (s->outlen >= OUTBUF_SIZE / 2 || s->dec.done) {
		if (pop3_flush_body(s) == -1)
			return;
	}
	if (s->dec.done)
		pop3_message_done(s);
}

/* The final "." of a message arrived. */
static void
pop3_message_done(struct session *s)
{
	struct pop3_pending	 p = pop3_dequeue(s);
	struct batch_item	*b;
	char			*cause = NULL;

	s->rd = RD_STATUS;
	s->retr_inflight--;
	s->bytes_inflight -= s->msgs[p.msg].size;
	if (maildir_finish(&s->file, &cause) == -1) {
		pop3_fail(s, EXIT_IOERR, "%s", cause);
		free(cause);
		return;
	}
	if (s->nbatch == 0) {
		s->batch = xreallocarray(s->batch, BATCH_MAX_MSGS,
		    sizeof *s->batch);
		s->batch_started = now_mono();
	}
	b = &s->batch[s->nbatch++];
	b->msg = p.msg;
	b->size = s->file.size;
	snprintf(b->final, sizeof b->final, "%s", s->file.final);
	s->batch_bytes += s->file.size;
	s->file.fd = -1;
	s->file.name[0] = '\0';

	/*
	 * Commit when the batch is full or old, or when no more messages
	 * are coming: that is, in lock-step mode, not after every message.
	 */
	if (s->nbatch >= BATCH_MAX_MSGS || s->batch_bytes >= BATCH_MAX_BYTES ||
	    now_mono() - s->batch_started >= BATCH_MAX_SECONDS ||
	    (s->retr_inflight == 0 && (s->next_want >= s->nwant ||
	    (s->flags & S_STOPPING)))) {
		if (pop3_commit(s, &cause) == -1) {
			pop3_fail(s, EXIT_IOERR, "cannot deliver: %s; nothing "
			    "is deleted from the server", cause);
			free(cause);
			return;
		}
	}
	pop3_pump(s);
}

/*
 * Steps 2 to 6 of the commit protocol (see the top of this file) for the
 * messages in the batch.  On failure the session is over.
 */
static int
pop3_commit(struct session *s, char **cause)
{
	struct state_entry	**ents;
	time_t			  now = time(NULL);
	size_t			  i;

	if (s->nbatch == 0)
		return (0);
	for (i = 0; i < s->nbatch; i++) {
		if (maildir_sync_file(&s->md, s->batch[i].final, cause) == -1)
			goto discard;
	}
	if (maildir_sync_tmp(&s->md, cause) == -1)
		goto discard;
	ents = xcalloc(s->nbatch, sizeof *ents);
	for (i = 0; i < s->nbatch; i++) {
		struct pop3_msg	*m = &s->msgs[s->batch[i].msg];

		if (s->flags & S_NO_UIDL)
			continue;
		ents[i] = state_add(s->st, s->arena + m->uidl, m->uidl_len,
		    m->ordinal, now, s->batch[i].final);
	}
	/* From here on, a failure may have left records on disk. */
	if (!(s->flags & S_NO_UIDL) && state_save(s->st, cause) == -1) {
		free(ents);
		goto fail;
	}
	for (i = 0; i < s->nbatch; i++) {
		if (maildir_move(&s->md, s->batch[i].final, cause) == -1) {
			free(ents);
			goto fail;
		}
	}
	if (maildir_sync_new(&s->md, cause) == -1) {
		free(ents);
		goto fail;
	}
	for (i = 0; i < s->nbatch; i++) {
		if (ents[i] != NULL) {
			ents[i]->kind = STATE_DELIVERED;
			free(ents[i]->file);
			ents[i]->file = NULL;
			s->st->dirty = 1;
		}
		s->result.fetched++;
		s->result.bytes += s->batch[i].size;
		if (!s->ac->keep) {
			if (s->ndele == s->dele_cap) {
				s->dele_cap *= 2;
				s->dele = xreallocarray(s->dele, s->dele_cap,
				    sizeof *s->dele);
			}
			s->dele[s->ndele++] = s->batch[i].msg;
		}
	}
	free(ents);
	log_debug("account=%s committed %zu messages", s->ac->name, s->nbatch);
	s->nbatch = 0;
	s->batch_bytes = 0;
	return (0);

discard:
	/* Nothing about this batch was recorded: it will be fetched again. */
	for (i = 0; i < s->nbatch; i++)
		maildir_unlink(&s->md, s->batch[i].final);
fail:
	/*
	 * Otherwise leave the batch's files where they are: whether they
	 * count as delivered depends on whether the state file got their
	 * records, which only the next state_open() can tell for sure.
	 */
	s->nbatch = 0;
	s->batch_bytes = 0;
	s->flags |= S_STATE_SUSPECT;
	return (-1);
}

/* RETR was refused: the message stays on the server; note and go on. */
static void
pop3_retr_failed(struct session *s, const char *text, size_t len)
{
	char	esc[LOG_ESCAPE_MAX];

	s->retr_failed++;
	log_warnx("account=%s cannot retrieve a message, it stays on the "
	    "server: \"%s\"", s->ac->name, log_escape(esc, sizeof esc, text,
	    len));
}

/*
 * End the session with an error.  Messages already complete in tmp/ are
 * committed first: they are good, and not keeping them would only mean
 * fetching them again.
 */
static void
pop3_fail(struct session *s, int code, const char *fmt, ...)
{
	va_list	 ap;
	char	*cause = NULL;

	if (s->flags & S_DEAD)
		return;
	if (s->result.error == NULL) {
		va_start(ap, fmt);
		if (vasprintf(&s->result.error, fmt, ap) == -1)
			s->result.error = NULL;
		va_end(ap);
		s->result.exitcode = code;
	}
	if (s->file.fd != -1 || s->file.name[0] != '\0')
		maildir_abort(&s->md, &s->file);
	if (s->nbatch > 0 && pop3_commit(s, &cause) == -1) {
		log_warnx("account=%s cannot keep the messages fetched before "
		    "the error: %s", s->ac->name, cause);
		free(cause);
	}
	pop3_finish(s);
}

/*
 * The session is over (well or not): tidy the state file, stop all I/O
 * and report from a fresh event, since we may be deep in a callback.
 */
static void
pop3_finish(struct session *s)
{
	char	*cause = NULL;

	if (s->flags & S_DEAD)
		return;
	s->flags |= S_DEAD;
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
	if (s->bev != NULL) {
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
	if (s->bev != NULL)
		bufferevent_free(s->bev);
	if (s->secret != NULL) {
		wipe(s->secret, s->secretlen);
		free(s->secret);
	}
	if (s->md_open)
		maildir_close(&s->md);
	state_close(s->st);
	event_free(s->progress_ev);
	event_free(s->deadline_ev);
	event_free(s->free_ev);
	free(s->q);
	free(s->msgs);
	free(s->arena);
	free(s->want);
	free(s->dele);
	free(s->outbuf);
	free(s->batch);
	free(s);
}
