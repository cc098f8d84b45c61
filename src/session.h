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
 * session.h: a session with a server, as the files that drive it see it.
 * session.c owns what every protocol needs (the password, the connection,
 * TLS, timeouts, reading, the end of the session); a protocol (pop3.c)
 * plugs in through struct proto and keeps its own part in s->p.  Nothing
 * outside these files sees inside a session.
 */

#ifndef SESSION_H
#define SESSION_H

#include <openssl/ssl.h>

#include "maild.h"

struct evbuffer;

/* Where a session is, before and after the protocol's own states. */
enum session_phase {
	PHASE_INIT,		/* opening state and Maildir */
	PHASE_SECRET,		/* getting the password */
	PHASE_CONNECT,		/* resolving and connecting */
	PHASE_TLS,		/* TLS handshake (at once, or after STARTTLS) */
	PHASE_PROTOCOL,		/* the protocol's states: proto->state() */
	PHASE_DONE
};

/* What a protocol provides. */
struct proto {
	const char	*name;
	/* The connection is up: at first, and again after STARTTLS. */
	void		(*connected)(struct session *);
	/* Bytes arrived: consume what can be consumed. */
	void		(*read)(struct session *, struct evbuffer *);
	/* Asked to stop: ask for nothing new, finish what is in flight. */
	void		(*stop)(struct session *);
	/* SIGUSR1: look for new mail now (NULL: nothing to do). */
	void		(*poll_now)(struct session *);
	/* The session is failing: drop what is half done, keep the rest. */
	void		(*abort)(struct session *);
	/* A message of its was delivered (cookie: what it gave deliver.c). */
	void		(*committed)(struct session *, void *);
	/* A commit to the destination (LMTP, MDA) ended: go on. */
	void		(*ready)(struct session *);
	/* The name of its current state, for logs and errors. */
	const char	*(*state)(struct session *);
	/* What a lost connection cut short ("" if nothing). */
	void		(*lost)(struct session *, char *, size_t);
	void		(*free)(struct session *);
};

struct session {
	const struct proto	*proto;
	void			*p;		/* the protocol's part */
	enum session_phase	 phase;
	int			 flags;
#define S_DEAD		0x01	/* finished; only the free is left */
#define S_TLS_UP		0x02	/* the connection is encrypted */
#define S_STOPPING	0x04	/* asked to stop */
#define S_CHECK		0x08	/* --check: log in, look, log out */
#define S_NO_PIPE		0x10	/* never pipeline */
#define S_GREETED		0x20	/* the server spoke first */
#define S_DRAINING	0x40	/* dead, waiting for the destination */
#define S_IDLING		0x80	/* waiting for news (IMAP IDLE) */
	const struct account_conf *ac;
	struct config		*conf;		/* a reference */
	struct event_base	*base;
	struct evdns_base	*dns;
	SSL_CTX			*ctx;		/* a reference */
	session_done_cb		 done;
	void			*done_arg;
	void			(*idle_cb)(int, void *);
	struct session_result	 result;
	struct deliver		*dl;

	struct secret_job	*secret_job;
	char			*secret;
	size_t			 secretlen;
	struct net_connect	*nc;
	struct bufferevent	*bev;
	struct event		*progress_ev;
	struct event		*deadline_ev;
	struct event		*greeting_ev;
	struct event		*free_ev;
	size_t			 progress_bytes;
	struct evbuffer_cb_entry *hangup_cb;	/* waiting to hang up */

	/* IMAP: the folders of this session, and whether it may IDLE. */
	size_t			 first_folder;
	size_t			 nfolders;
	int			 idle;
};

/* session.c, for the protocols */
void		 session_fail(struct session *, int, const char *, ...)
		     PRINTFLIKE(3, 4);
void		 session_finish(struct session *);
int		 session_send(struct session *, const char *, ...)
		     PRINTFLIKE(2, 3);
void		 session_send_secret(struct session *, const char *,
		     const char *, size_t, const char *);
void		 session_start_tls(struct session *, const char *);
void		 session_wipe_secret(struct session *);
void		 session_progress(struct session *, size_t);
void		 session_arm_progress(struct session *);
void		 session_greeted(struct session *);
void		 session_hangup(struct session *);
void		 session_idle(struct session *, int);
void		 session_cycle(struct session *);
int		 session_read_line(struct evbuffer *, char *, size_t, size_t *);
void		 session_unasked(struct session *, struct evbuffer *);
const char	*session_peer(struct session *);

/* pop3.c, imap.c */
extern const struct proto pop3_proto;
extern const struct proto imap_proto;

#endif /* SESSION_H */
