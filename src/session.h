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
 * session.h: one POP3 session, shared by the files that drive it: pop3.c
 * (life cycle, I/O, dispatch), login.c (greeting, CAPA, STLS, login) and
 * fetch.c (listing, transfer and the commit protocol).  Nothing outside
 * those three files sees inside a session.
 */

#ifndef SESSION_H
#define SESSION_H

#include <openssl/evp.h>
#include <openssl/ssl.h>

#include "maild.h"

enum pop3_state {
	POP3_INIT,		/* opening state and Maildir */
	POP3_SECRET,		/* getting the password */
	POP3_CONNECT,		/* resolving and connecting */
	POP3_TLS,		/* TLS handshake */
	POP3_GREETING,
	POP3_CAPA,
	POP3_STLS,
	POP3_AUTH,
	POP3_LIST,		/* UIDL and LIST */
	POP3_TRANSFER,		/* RETR and DELE */
	POP3_QUIT,
	POP3_DONE
};

enum pop3_cmd {
	CMD_GREETING,		/* not sent: the server speaks first */
	CMD_CAPA,
	CMD_STLS,
	CMD_USER,
	CMD_PASS,
	CMD_APOP,
	CMD_AUTH,
	CMD_UIDL,
	CMD_LIST,
	CMD_RETR,
	CMD_DELE,
	CMD_STAT,
	CMD_QUIT,
	CMD_NONE		/* a reply within AUTH, not a command */
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
	int		 listed;	/* LIST gave its size */
};

struct pop3_pending {
	enum pop3_cmd	 cmd;
	size_t		 msg;		/* index in msgs, for RETR and DELE */
};

/* A message received and durable in tmp/, waiting for its commit. */
struct batch_item {
	size_t		 msg;
	char		 final[288];	/* its name in new/ */
	uint64_t	 size;
	char		 key[72];	/* no UIDL: "sha256:<hex>" instead */
	uint32_t	 ordinal;
};

struct session {
	enum pop3_state		 state;
	int			 flags;
#define S_DEAD		0x001	/* finished; only the deferred free is left */
#define S_PIPELINING	0x002	/* commands are pipelined */
#define S_TLS_UP	0x004	/* the connection is encrypted */
#define S_CAPA_AGAIN	0x008	/* asked CAPA again after login */
#define S_NO_UIDL	0x010	/* the server has no UIDL command */
#define S_STOPPING	0x020	/* asked to stop: no new RETRs */
#define S_STATE_SUSPECT	0x040	/* a commit failed: do not save the state */
#define S_HAVE_CAPA	0x080	/* the server answered CAPA */
#define S_SASL_IR	0x100	/* the AUTH command carried its response */
#define S_CHECK		0x200	/* --check: log in, STAT, QUIT */
#define S_NO_PIPE	0x400	/* never pipeline (config, or it failed) */
	const struct account_conf *ac;
	struct config		*conf;		/* a reference */
	struct event_base	*base;
	struct evdns_base	*dns;
	SSL_CTX			*ctx;
	session_done_cb		 done;
	void			*done_arg;
	struct session_result	 result;

	struct secret_job	*secret_job;
	char			*secret;
	size_t			 secretlen;
	struct net_connect	*nc;
	struct bufferevent	*bev;
	struct event		*progress_ev;
	struct event		*deadline_ev;
	struct event		*free_ev;
	size_t			 progress_bytes;
	struct evbuffer_cb_entry *quit_cb;	/* waiting for QUIT to leave */

	struct state		*st;
	struct maildir		 md;
	int			 md_open;

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
	uint64_t		 cur_raw;	/* bytes read, stuffed */
	uint64_t		 cur_decoded;	/* bytes written, less headers */
	char			*outbuf;
	size_t			 outlen;
	EVP_MD_CTX		*digest;	/* no UIDL: content digests */
	struct state		*digests;	/* seen in this session */

	/* Received and durable in tmp/, not yet committed. */
	struct batch_item	*batch;
	size_t			 nbatch;
	uint64_t		 batch_bytes;
	double			 batch_started;
};

/* pop3.c */
void		 pop3_set_state(struct session *, enum pop3_state);
const char	*pop3_statename(enum pop3_state);
void		 pop3_fail(struct session *, int, const char *, ...)
		     PRINTFLIKE(3, 4);
void		 pop3_server_error(struct session *, const char *, const char *,
		     size_t, int);
void		 pop3_finish(struct session *);
void		 pop3_send(struct session *, enum pop3_cmd, size_t,
		     const char *, ...) PRINTFLIKE(4, 5);
void		 pop3_send_secret(struct session *, enum pop3_cmd,
		     const char *, const char *, size_t, const char *);
void		 pop3_expect(struct session *, enum pop3_cmd);
struct pop3_pending pop3_dequeue(struct session *);
void		 pop3_start_tls(struct session *);
void		 pop3_wipe_secret(struct session *);
void		 pop3_progress(struct session *, size_t);

/* login.c */
void		 login_connected(struct session *);
void		 login_status(struct session *, enum pop3_cmd,
		     enum pop3_status, const char *, size_t);
void		 login_continuation(struct session *, const char *, size_t);
void		 login_capa_line(struct session *, const char *, size_t);
void		 login_capa_done(struct session *);

/* fetch.c */
void		 fetch_start(struct session *);
void		 fetch_status(struct session *, enum pop3_cmd,
		     enum pop3_status, const char *, size_t);
void		 fetch_list_line(struct session *, const char *, size_t);
void		 fetch_list_end(struct session *);
void		 fetch_body(struct session *, struct evbuffer *);
void		 fetch_pump(struct session *);
void		 fetch_abort(struct session *);
void		 fetch_free(struct session *);
size_t		 fetch_trace_headers(struct session *, char *, size_t);

#endif /* SESSION_H */
