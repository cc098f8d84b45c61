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
 * maild.h: the types shared between maild's modules and their exported
 * functions, grouped by the file that owns them.
 */

#ifndef MAILD_H
#define MAILD_H

#include <sys/types.h>

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct event_base;
struct evdns_base;
struct session;

#ifndef __dead
#define __dead __attribute__((__noreturn__))
#endif
#define PRINTFLIKE(a, b) __attribute__((__format__(__printf__, a, b)))

/* sysexits(3) codes, so shells and systemd see why a run failed. */
#define EXIT_USAGE	64	/* EX_USAGE */
#define EXIT_DATAERR	65	/* EX_DATAERR: corrupt state file */
#define EXIT_UNAVAIL	69	/* EX_UNAVAILABLE: host unreachable, DNS */
#define EXIT_SOFTWARE	70	/* EX_SOFTWARE: internal error */
#define EXIT_OSERR	71	/* EX_OSERR */
#define EXIT_IOERR	74	/* EX_IOERR: local disk or Maildir trouble */
#define EXIT_TEMPFAIL	75	/* EX_TEMPFAIL: timeout, dropped connection */
#define EXIT_PROTOCOL	76	/* EX_PROTOCOL: the server broke POP3 */
#define EXIT_NOPERM	77	/* EX_NOPERM: login or certificate refused */
#define EXIT_CONFIG	78	/* EX_CONFIG */

/*
 * RFC 1939: a status line is at most 512 octets including CRLF.  Lines of
 * multi-line listings (CAPA, UIDL, LIST) have the same bound.
 */
#define POP3_LINE_MAX		512
/* Most messages a listing may announce; more is treated as hostile. */
#define LISTING_MAX		1000000
/* RFC 1939 unique-id: 1 to 70 characters in 0x21..0x7e. */
#define UIDL_RFC_MAX		70

/* config.c */
enum secret_source {
	SECRET_NONE,
	SECRET_PASSWORD,	/* inline in the config */
	SECRET_FILE,		/* first line of a file */
	SECRET_COMMAND,		/* first line of a command's output */
	SECRET_CREDENTIAL,	/* $CREDENTIALS_DIRECTORY/<name> (systemd) */
	SECRET_OAUTH2		/* an access token from oauth2.c */
};

/* Who issues the OAuth2 tokens of an account (oauth2-provider). */
enum oauth2_provider {
	OAUTH2_NONE,		/* no built-in OAuth2 */
	OAUTH2_GOOGLE,
	OAUTH2_MICROSOFT,
	OAUTH2_CUSTOM
};

enum tls_mode {
	TLS_IMPLICIT,		/* POP3S: TLS from the first byte */
	TLS_STARTTLS,		/* POP3 upgraded with STLS (RFC 2595) */
	TLS_NONE		/* clear text, only with allow-plaintext */
};

enum protocol {
	PROTOCOL_POP3,
	PROTOCOL_IMAP
};
#define DELIVER_MAILDIR	0
#define DELIVER_LMTP	1
#define DELIVER_MDA	2
/* RFC 5321 4.5.3.1.3: a path is at most 256 octets. */
#define LMTP_RECIPIENT_MAX	254
#define IDLE_NO		0
#define IDLE_YES	1
#define IDLE_AUTO	2

enum auth_method {
	AUTH_AUTO,
	AUTH_USER,
	AUTH_APOP,
	AUTH_PLAIN,
	AUTH_LOGIN,
	AUTH_CRAM_MD5,
	AUTH_XOAUTH2,
	AUTH_OAUTHBEARER
};

/*
 * An account's settings.  Each field is listed once, here, with how a
 * reload compares it to decide whether the account changed
 * (config_account_equal()): ACF_STR (strings, or both NULL), ACF_VALUE
 * (byte for byte), ACF_PINS (npins SHA-256 pins), ACF_STRV (a NULL-terminated
 * list of strings) or ACF_NONE (where it
 * was written, not how the account polls).  A new field cannot be left out
 * of that comparison by mistake: it has to say how it compares.
 */
enum account_field_cmp { ACF_STR, ACF_VALUE, ACF_PINS, ACF_STRV, ACF_NONE };
typedef uint8_t tls_pin[32];
#define ACCOUNT_CONF_FIELDS(F)						\
	F(char *,		name,		ACF_STR)		\
	F(char *,		host,		ACF_STR)		\
	F(int,			port,		ACF_VALUE)		\
	F(char *,		user,		ACF_STR)		\
	F(enum secret_source,	secret_source,	ACF_VALUE)		\
	/* the password, or a path or command giving it */		\
	F(char *,		secret,		ACF_STR)		\
	/* absolute, expanded */					\
	F(char *,		maildir,	ACF_STR)		\
	/* leave messages on the server */				\
	F(int,			keep,		ACF_VALUE)		\
	/* keep mode: delete after this many seconds */			\
	F(long,			delete_after,	ACF_VALUE)		\
	/* larger messages stay; 0: no limit */				\
	F(uint64_t,		max_size,	ACF_VALUE)		\
	/* LIST sizes must match what comes */				\
	F(int,			exact_sizes,	ACF_VALUE)		\
	/* HDR_* */							\
	F(int,			add_headers,	ACF_VALUE)		\
	F(enum tls_mode,	tls,		ACF_VALUE)		\
	F(int,			allow_plaintext, ACF_VALUE)		\
	/* NULL: the system trust store */				\
	F(char *,		ca_file,	ACF_STR)		\
	/* check the chain and the name */				\
	F(int,			tls_verify,	ACF_VALUE)		\
	/* SHA-256 of acceptable certificates */			\
	F(tls_pin *,		pins,		ACF_PINS)		\
	F(size_t,		npins,		ACF_VALUE)		\
	/* client certificate and key */				\
	F(char *,		tls_cert_file,	ACF_STR)		\
	F(char *,		tls_key_file,	ACF_STR)		\
	/* 12 or 13 */							\
	F(int,			tls_min_version, ACF_VALUE)		\
	F(enum auth_method,	auth,		ACF_VALUE)		\
	/* 0: never pipeline */						\
	F(int,			pipelining,	ACF_VALUE)		\
	/* built-in OAuth2 (oauth2.c); OAUTH2_NONE: none */		\
	F(enum oauth2_provider,	oauth2_provider, ACF_VALUE)		\
	F(char *,		oauth2_client_id, ACF_STR)		\
	/* the client secret: SECRET_NONE, or as for the password */	\
	F(enum secret_source,	oauth2_secret_source, ACF_VALUE)	\
	F(char *,		oauth2_client_secret, ACF_STR)		\
	/* the provider's preset, or what the options say */		\
	F(char *,		oauth2_auth_url, ACF_STR)		\
	F(char *,		oauth2_token_url, ACF_STR)		\
	F(char *,		oauth2_device_url, ACF_STR)		\
	F(char *,		oauth2_scope,	ACF_STR)		\
	F(char *,		oauth2_tenant,	ACF_STR)		\
	/* <state-dir>/<name>.oauth2: the tokens */			\
	F(char *,		oauth2_file,	ACF_STR)		\
	/* seconds */							\
	F(int,			poll_interval,	ACF_VALUE)		\
	F(enum protocol,	protocol,	ACF_VALUE)		\
	/* IMAP: the folders to fetch from, NULL-terminated */		\
	F(char **,		folders,	ACF_STRV)		\
	F(size_t,		nfolders,	ACF_VALUE)		\
	/* IMAP: each folder into a Maildir++ folder of the maildir */	\
	F(int,			folder_subdirs,	ACF_VALUE)		\
	/* IMAP: move fetched messages there instead of deleting them */ \
	F(char *,		move_to,	ACF_STR)		\
	/* IMAP, keep mode: flag fetched messages \Seen */		\
	F(int,			mark_seen,	ACF_VALUE)		\
	/* IMAP: IDLE_NO, IDLE_YES or IDLE_AUTO (when offered) */	\
	F(int,			idle,		ACF_VALUE)		\
	/* IMAP: re-issue IDLE after this many seconds */		\
	F(int,			idle_refresh,	ACF_VALUE)		\
	/* DELIVER_MAILDIR, _LMTP or _MDA */				\
	F(int,			deliver,	ACF_VALUE)		\
	/* LMTP: "unix:/path" or "host:port"; the recipient */		\
	F(char *,		lmtp,		ACF_STR)		\
	F(char *,		lmtp_recipient,	ACF_STR)		\
	/* MDA: the command (sh -c), the message on its stdin */	\
	F(char *,		mda,		ACF_STR)		\
	/* run after a poll that delivered something */			\
	F(char *,		on_new_mail,	ACF_STR)		\
	/* a Message-ID delivered within dedupe_days is not again */	\
	F(int,			dedupe,		ACF_VALUE)		\
	F(int,			dedupe_days,	ACF_VALUE)		\
	/* the file (maild.conf or one of include-dir) and where in it	\
	   the account block and some options are */			\
	F(const char *,		file,		ACF_NONE)		\
	F(int,			line,		ACF_NONE)		\
	F(int,			port_line,	ACF_NONE)		\
	F(int,			maildir_line,	ACF_NONE)

struct account_conf {
#define ACCOUNT_CONF_MEMBER(type, field, cmp)	type field;
	ACCOUNT_CONF_FIELDS(ACCOUNT_CONF_MEMBER)
#undef ACCOUNT_CONF_MEMBER
};
#define HDR_RECEIVED		0x1
#define HDR_DELIVERED_TO	0x2
#define HDR_X_ORIGINAL_TO	0x4

struct config {
	int		 refs;
	char		*path;
	int		 poll_interval;		/* seconds */
	int		 timeout;		/* seconds without progress */
	int		 session_timeout;	/* seconds per session */
	int		 max_connections;
	int		 max_connections_per_host;
	char		*state_dir;
	int		 state_dir_line;	/* 0: the default */
	char		*on_new_mail;		/* the accounts' default */
	char		*include_dir;		/* NULL: none */
	char		**files;		/* [0] path, then the included */
	size_t		 nfiles;
	char		*metrics_listen;	/* as written; NULL: none */
	char		*metrics_addr;		/* its address, numeric */
	int		 metrics_port;
	char		*metrics_file;		/* NULL: none */
	struct account_conf *accounts;
	size_t		 naccounts;
};

struct config	*config_load(const char *, char **);
struct config	*config_load_readonly(const char *, char **);
struct config	*config_ref(struct config *);
int		 config_keep_account(struct config *, const char *);
void		 config_free(struct config *);
int		 config_account_equal(const struct config *,
		     const struct account_conf *, const struct config *,
		     const struct account_conf *);
char		*config_default_path(char **);
char		*config_expand_path(const char *, char **);

/* check.c */
int		 check_config(const struct config *);
int		 check_start(const struct config *);
int		 check_account_report(const struct config *,
		     const struct account_conf *);
void		 check_dests_probe(const struct config *);
void		 check_dests_free(void);

/* probe.c: --check's look at an LMTP server or an mda, before the loop */
int		 probe_lmtp(const char *, const char *, int, char **);
int		 probe_mda(const char *, char **);

/* log.c */
void		 log_init(int, int);
void		 log_setverbose(int);
int		 log_to_stderr(void);
void		 log_warn(const char *, ...) PRINTFLIKE(1, 2);
void		 log_warnx(const char *, ...) PRINTFLIKE(1, 2);
void		 log_info(const char *, ...) PRINTFLIKE(1, 2);
void		 log_debug(const char *, ...) PRINTFLIKE(1, 2);
void		 log_trace(const char *, ...) PRINTFLIKE(1, 2);
__dead void	 fatal(const char *, ...) PRINTFLIKE(1, 2);
__dead void	 fatalx(const char *, ...) PRINTFLIKE(1, 2);
/* Escape untrusted bytes for a log line; see log.c. */
#define LOG_ESCAPE_MAX	256
const char	*log_escape(char *, size_t, const void *, size_t);

/* xmalloc.c */
void		*xmalloc(size_t);
void		*xcalloc(size_t, size_t);
void		*xreallocarray(void *, size_t, size_t);
char		*xstrdup(const char *);
char		*xstrndup(const char *, size_t);
int		 xasprintf(char **, const char *, ...) PRINTFLIKE(2, 3);
void		 freezero_str(char *);

/* util.c */
double		 now_mono(void);
int		 mkdir_p(const char *, mode_t);
int		 fsync_dir(const char *);
int		 lock_file(const char *, int *, long *);
void		 lock_file_pid(int);
int		 write_full(int, const void *, size_t);
int		 private_file(int, const char *, const char *, char **);
int		 private_path(const char *, const char *, char **);
uint64_t	 siphash24(const uint8_t[16], const void *, size_t);
void		 random_bytes(void *, size_t);
void		 wipe(void *, size_t);
size_t		 edit_distance(const char *, const char *);

/* parse.c: pure parsers for what the server sends; fuzzed. */
enum reply_status {
	REPLY_OK,
	REPLY_ERR,
	REPLY_BAD		/* neither +OK nor -ERR */
};
/* RFC 2449 / RFC 3206 extended response codes we act upon. */
#define RESP_LOGIN_DELAY	0x01
#define RESP_IN_USE		0x02
#define RESP_SYS_TEMP		0x04
#define RESP_SYS_PERM		0x08
#define RESP_AUTH		0x10
enum reply_status parse_status(const char *, size_t, const char **, size_t *);
int		 parse_resp_code(const char *, size_t);
int		 parse_uidl_line(const char *, size_t, uint32_t *, const char **,
		     size_t *);
int		 parse_list_line(const char *, size_t, uint32_t *, uint64_t *);
int		 parse_stat(const char *, size_t, uint64_t *, uint64_t *);
int		 parse_retr_octets(const char *, size_t, uint64_t *);
int		 parse_u64(const char *, uint64_t, uint64_t *);

#define CAPA_PIPELINING		0x0001
#define CAPA_UIDL		0x0002
#define CAPA_TOP		0x0004
#define CAPA_USER		0x0008
#define CAPA_STLS		0x0010
#define CAPA_SASL		0x0020
#define CAPA_RESP_CODES		0x0040
#define CAPA_AUTH_RESP_CODE	0x0080
#define CAPA_LOGIN_DELAY	0x0100
struct pop3_capa {
	unsigned	 flags;
	long		 login_delay;	/* seconds, if CAPA_LOGIN_DELAY */
	char		 sasl[POP3_LINE_MAX];	/* mechanisms, spaces */
};
void		 parse_capa_line(struct pop3_capa *, const char *, size_t);

/* maild.conf values: durations in seconds, sizes in bytes. */
#define PARSE_DURATION_MAX	(30L * 86400)	/* poll-interval, timeout */
#define PARSE_LONG_DURATION_MAX	(3650L * 86400)	/* delete-after */
#define PARSE_SIZE_MAX		(1L << 40)
int		 parse_duration(const char *, long, long *);
int		 parse_duration_hint(const char *, long, char *, size_t);
int		 parse_size(const char *, long *);
int		 parse_size_hint(const char *, char *, size_t);
int		 parse_hexdigit(int);
int		 parse_fingerprint(const char *, uint8_t[32]);

/*
 * Undo POP3 framing of a multi-line body as it streams by: remove the
 * dot-stuffing, turn CRLF into LF and find the terminating ".".  Keeps
 * its state between calls, so input may be split anywhere.
 */
struct body_decoder {
	int		 state;
	int		 done;
	uint64_t	 crs;	/* CRs of CRLFs dropped: output + crs is the
				   size the message had on the wire */
	uint64_t	 lines;	/* LFs written */
};
void		 body_decoder_init(struct body_decoder *);
size_t		 body_decode(struct body_decoder *, const char *, size_t, char *,
		     size_t *);

/* imap_parse.c: pure parsers for what an IMAP server sends; fuzzed. */
#define IMAP_NONE		((size_t)-1)
#define IMAP_LITERAL_LEN_MAX	(1ULL << 40)
#define IMAP_TAG_MAX		32
enum imap_type {
	IMAP_ATOM,
	IMAP_NUMBER,		/* an atom of digits; num holds it */
	IMAP_STRING,		/* quoted (escapes kept) or literal */
	IMAP_NIL,
	IMAP_LIST		/* (...): child is its first element */
};
struct imap_node {
	const char	*p;		/* into the response */
	size_t		 len;
	uint64_t	 num;
	size_t		 next;		/* the next sibling, or IMAP_NONE */
	size_t		 child;
	uint8_t		 type;
	uint8_t		 quoted;
	uint8_t		 literal;
};
enum imap_kind {
	IMAP_TAGGED,
	IMAP_UNTAGGED,
	IMAP_CONTINUATION
};
enum imap_cond {
	IMAP_COND_NONE,		/* data, not a status response */
	IMAP_COND_OK,
	IMAP_COND_NO,
	IMAP_COND_BAD,
	IMAP_COND_BYE,
	IMAP_COND_PREAUTH
};
struct imap_resp {
	enum imap_kind	 kind;
	const char	*tag;
	size_t		 taglen;
	enum imap_cond	 cond;
	int		 has_num;	/* "* <num> EXISTS" and such */
	uint32_t	 num;
	char		 name[32];	/* OK, CAPABILITY, FETCH, EXISTS... */
	const char	*code;		/* [CODE args] of a status response */
	size_t		 codelen;
	const char	*codeargs;
	size_t		 codeargslen;
	const char	*text;		/* its text, or a continuation's */
	size_t		 textlen;
	struct imap_node *nodes;
	size_t		 nnodes;
	size_t		 data;		/* the first value after name */
};
int		 imap_number(const char *, size_t, uint64_t, uint64_t *);
int		 imap_parse(const char *, size_t, struct imap_node *, size_t,
		     struct imap_resp *);
int		 imap_literal_marker(const char *, size_t);
int		 imap_literal_is_body(const char *, size_t, uint64_t *);
int		 imap_fetch_size_before(const char *, size_t, uint64_t *);
ssize_t		 imap_maildir_folder(const char *, size_t, char, char *,
		     size_t);
size_t		 imap_fetch_att(const struct imap_resp *, const char *);
int		 imap_node_number(const struct imap_resp *, size_t, uint64_t,
		     uint64_t *);
ssize_t		 imap_node_string(const struct imap_resp *, size_t, char *,
		     size_t);
int		 imap_has_word(const char *, size_t, const char *);
ssize_t		 imap_quote(const char *, size_t, char *, size_t);
ssize_t		 imap_utf7_encode(const char *, size_t, char *, size_t);

/* auth.c */
char		*auth_b64(const void *, size_t);
unsigned char	*auth_unb64(const char *, size_t, size_t *);
size_t		 auth_apop_timestamp(const char *, size_t, char *, size_t);
char		*auth_apop(const char *, const char *, const char *, size_t);
char		*auth_plain(const char *, const char *, size_t);
char		*auth_cram_md5(const char *, const char *, size_t, const char *,
		     size_t);
char		*auth_xoauth2(const char *, const char *, size_t);
char		*auth_oauthbearer(const char *, const char *, int, const char *,
		     size_t);
const char	*auth_sasl_name(enum auth_method);
const char	*auth_method_name(enum auth_method);
int		 auth_choose(enum auth_method, const struct pop3_capa *, int, int,
		     int, const char **);

/* state.c: records of delivered messages, kept on disk; see state.c. */
#define STATE_VERSION	2
#define STATE_NONE	UINT32_MAX
#define STATE_FIX_HINT	"; restore it from a backup, or move it and its " \
	".journal away: maild then fetches again every message still on " \
	"the server (with keep = yes, all of them)"
enum state_kind {
	STATE_DELIVERED = 'D',	/* in the Maildir */
	STATE_PENDING = 'P'	/* durable in tmp/, being moved to new/ */
};
struct state_rec {
	uint64_t	 hash;
	uint64_t	 size;		/* as the server listed it; 0: unknown */
	int64_t		 first;		/* when delivered (unix time) */
	int64_t		 absent;	/* missing from listings since; 0 */
	uint32_t	 key;		/* offsets in the state's arena */
	uint32_t	 keylen;
	uint32_t	 file;		/* PENDING: its name in new/ */
	uint32_t	 tag;		/* what else is known of it; 0: none */
	uint32_t	 ordinal;	/* nth message with this key */
	uint8_t		 kind;		/* enum state_kind; 0: forgotten */
	uint8_t		 missed;	/* listings in a row without it */
	uint8_t		 flags;		/* the caller's, not on disk */
};
struct state;
struct state	*state_open(const char *, const char *, int *, char **);
struct state	*state_new(void);
int		 state_load(struct state *, const char *, const char *,
		     char **);
int		 state_lock(const char *, int *, char **);
void		 state_close(struct state *);
uint32_t	 state_find(struct state *, const void *, size_t, uint32_t);
const struct state_rec *state_rec(const struct state *, uint32_t);
const struct state_rec *state_next(const struct state *, uint32_t *);
uint32_t	 state_rec_id(const struct state *, const struct state_rec *);
const char	*state_rec_key(const struct state *, const struct state_rec *,
		     size_t *);
const char	*state_rec_file(const struct state *, const struct state_rec *);
uint32_t	 state_count(const struct state *);
uint32_t	 state_put(struct state *, const void *, size_t, uint32_t,
		     int64_t, uint64_t, const char *, const char *);
const char	*state_rec_tag(const struct state *, const struct state_rec *);
void		 state_delivered(struct state *, uint32_t);
void		 state_set_absence(struct state *, uint32_t, unsigned, int64_t);
void		 state_set_flags(struct state *, uint32_t, uint8_t, uint8_t);
void		 state_forget(struct state *, uint32_t);
void		 state_forget_all(struct state *);
const char	*state_meta(const struct state *, const char *);
void		 state_set_meta(struct state *, const char *, const char *);
int		 state_dirty(const struct state *);
int		 state_sync(struct state *, char **);
uint64_t	 state_epoch(const struct state *);
char		*state_escape(const char *, size_t);
int		 state_unescape(const char *, size_t, char **, size_t *);

/* maildir.c */
/* A file's name in tmp/ (maildir_make_name), and in new/: that and
   ",S=<size>". */
#define MAILDIR_TMP_NAME_MAX	256
#define MAILDIR_NAME_MAX	(MAILDIR_TMP_NAME_MAX + 32)
struct maildir {
	char		*path;
	const char	*account;	/* for log lines */
	int		 tmpfd;		/* directory fds, for fsync */
	int		 newfd;
	uint32_t	 tag;		/* marks this account's tmp/ files */
};
struct maildir_file {
	int		 fd;
	char		 name[MAILDIR_TMP_NAME_MAX];	/* the name in tmp/ */
	char		 final[MAILDIR_NAME_MAX];	/* in new/: name,S=size */
	uint64_t	 size;
};
#define MAILDIR_MISSING		0
#define MAILDIR_MOVED		1
#define MAILDIR_PRESENT		2
int		 maildir_open(struct maildir *, const char *, uint32_t,
		     const char *, char **);
void		 maildir_close(struct maildir *);
int		 maildir_mark_folder(struct maildir *, char **);
int		 maildir_create(struct maildir *, struct maildir_file *, char **);
int		 maildir_write(struct maildir_file *, const void *, size_t);
int		 maildir_finish(struct maildir_file *, char **);
int		 maildir_sync_file(struct maildir *, const char *, char **);
void		 maildir_unlink(struct maildir *, const char *);
void		 maildir_abort(struct maildir *, struct maildir_file *);
int		 maildir_sync_tmp(struct maildir *, char **);
int		 maildir_move(struct maildir *, const char *, char **);
int		 maildir_sync_new(struct maildir *, char **);
int		 maildir_recover(struct maildir *, const char *, char **);
int		 maildir_cleanup_tmp(struct maildir *);
int		 maildir_make_name(char *, size_t, uint32_t);
const char	*maildir_tmp_name(const char *, char *, size_t);
int		 maildir_name_tag(const char *, uint32_t *);

/* deliver.c: the one delivery core; see deliver.c. */
#define DELIVER_NEW	0
#define DELIVER_DONE	1
#define DELIVER_LATER	2	/* dedupe: another account delivers it now */
struct deliver;
struct deliver_msg {
	struct maildir_file	 file;
	size_t			 dir;	/* which Maildir of the account */
	uint64_t		 body;	/* bytes written after the prefix */
	int			 open;
	/* dedupe: the header line being read, and the Message-ID */
	int			 hdrdone;
	size_t			 hdrlen;
	char			 hdr[1024];
	size_t			 msgidlen;
	char			 msgid[1000];
};
struct session_env;
typedef void (*deliver_committed_cb)(void *, uint64_t, void *);
typedef void (*deliver_ready_cb)(void *, const char *);
struct deliver	*deliver_open(const struct account_conf *, const char *,
		     const char *, const struct session_env *, int,
		     deliver_committed_cb, void *, int *, char **);
void		 deliver_set_ready(struct deliver *, deliver_ready_cb, void *);
char		*deliver_new_files(struct deliver *, size_t *);
unsigned	 deliver_refused(const struct deliver *, int *, const char **);
void		 deliver_close(struct deliver *);
int		 deliver_sync(struct deliver *, char **);
int		 deliver_use_digests(struct deliver *);
void		 deliver_use_keys(struct deliver *);
void		 deliver_want_digests(struct deliver *);
void		 deliver_stable_keys(struct deliver *);
void		 deliver_listing_start(struct deliver *, const char *, size_t);
int		 deliver_listed(struct deliver *, const char *, size_t, uint32_t,
		     uint64_t, int64_t *);
void		 deliver_listing_end(struct deliver *, const char *, size_t);
void		 deliver_scan(struct deliver *, const char *, size_t,
		     void (*)(const char *, size_t, uint32_t, const char *,
		     void *), void *);
int		 deliver_find_tag(struct deliver *, const char *, const char *,
		     size_t, char *, size_t *);
void		 deliver_record(struct deliver *, const char *, size_t,
		     uint32_t, uint64_t, const char *);
void		 deliver_forget(struct deliver *, const char *, size_t,
		     uint32_t);
void		 deliver_reident(struct deliver *, const char *, size_t,
		     const char *, size_t);
void		 deliver_reident_done(struct deliver *);
unsigned	 deliver_too_big(struct deliver *, unsigned);
int		 deliver_begin(struct deliver *, struct deliver_msg *,
		     const char *, const char *, size_t, char **);
int		 deliver_write(struct deliver *, struct deliver_msg *,
		     const void *, size_t);
void		 deliver_discard(struct deliver *, struct deliver_msg *);
int		 deliver_receiving(const struct deliver_msg *);
int		 deliver_end(struct deliver *, struct deliver_msg *, const char *,
		     size_t, uint32_t, uint64_t, const char *, void *, char **);
size_t		 deliver_batched(const struct deliver *);
int		 deliver_commit(struct deliver *, char **);
int		 deliver_abort(struct deliver *, char **);
int		 deliver_in_flight(const struct deliver *);
void		 deliver_removal_acked(struct deliver *, const char *, size_t,
		     uint32_t);
int		 deliver_removing(struct deliver *, char **);
void		 deliver_removed(struct deliver *);
const char	*deliver_maildir(const struct deliver *);
uint32_t	 deliver_records(const struct deliver *);
size_t		 deliver_trace_headers(const struct account_conf *,
		     const char *, const char *, const char *, char *, size_t);

/* dest.c: where messages go when not into a Maildir (deliver = lmtp or
   mda): one message at a time, answered later, never from inside. */
#define DEST_OK		0	/* taken: LMTP 250, MDA exit 0 */
#define DEST_TEMP	1	/* refused for now: 4xx, exit 75, no answer */
#define DEST_PERM	2	/* refused: 5xx, another exit status */
typedef void (*dest_done_cb)(int, const char *, void *);
struct dest;
struct dest	*dest_open(const struct session_env *, const struct account_conf *,
		     int, char **);
void		 dest_send(struct dest *, int, const char *, dest_done_cb,
		     void *);
void		 dest_answer_later(struct dest *, dest_done_cb, void *, int,
		     const char *);
void		 dest_close(struct dest *);

/* command.c: a user's command, run without blocking */
typedef void (*command_done_cb)(int, const char *, void *);
struct command;
struct command	*command_run(struct event_base *, const char *, char *const *,
		     const void *, size_t, int, int, command_done_cb, void *,
		     char **);
void		 command_cancel(struct command *);
const char	*command_status(int, char *, size_t);

/* lmtp.c, mda.c: the two kinds of destination, for dest.c */
/* RFC 5321: reply lines are at most 512 octets. */
#define LMTP_LINE_MAX		1000
#define LMTP_REPLY_LINES_MAX	100
struct lmtp;
struct lmtp	*lmtp_open(const struct session_env *,
		     const struct account_conf *, struct dest *, int, char **);
void		 lmtp_send(struct lmtp *, int, const char *, dest_done_cb,
		     void *);
void		 lmtp_close(struct lmtp *);
int		 lmtp_host_port(const char *, char *, size_t, int *);
int		 lmtp_reply_code(const char *, size_t, int *);
struct mda;
struct mda	*mda_open(const struct session_env *,
		     const struct account_conf *, struct dest *, int, char **);
void		 mda_send(struct mda *, int, const char *, dest_done_cb,
		     void *);
void		 mda_close(struct mda *);

/* tls.c */
struct ssl_ctx_st;
struct ssl_st;
struct ssl_ctx_st *tls_ctx_new(const struct account_conf *, char **);
struct ssl_ctx_st *tls_ctx_get(const struct account_conf *, char **);
void		 tls_shutdown(void);
struct ssl_st	*tls_ssl_new(struct ssl_ctx_st *, const struct account_conf *);
int		 tls_check_pin(struct ssl_st *, const struct account_conf *);
int		 tls_cert_requested(struct ssl_st *);
char		*tls_explain_failure(struct ssl_st *, const char *,
		     unsigned long, int *);
void		 tls_describe(struct ssl_st *, char *, size_t);
void		 tls_clean_end(struct ssl_st *);

/* secret.c */
/* The secret (allocated; the callee wipes it) or an error and its code. */
typedef void (*secret_cb)(char *, size_t, const char *, int, void *);
struct secret_job;
struct secret_job *secret_get(struct event_base *, const struct account_conf *,
		     int, secret_cb, void *);
void		 secret_cancel(struct secret_job *);

/* oauth2.c: the token life of the accounts with built-in OAuth2. */
struct oauth2_job;
void		 oauth2_init(struct event_base *, struct evdns_base *);
struct oauth2_job *oauth2_get(const struct account_conf *, int, secret_cb,
		     void *);
void		 oauth2_cancel(struct oauth2_job *);
int		 oauth2_needs_authorization(const struct account_conf *);
void		 oauth2_token_refused(const struct account_conf *);
void		 oauth2_reload(void);
void		 oauth2_status(const struct account_conf *, char *, size_t);
time_t		 oauth2_expires(const struct account_conf *);
void		 oauth2_shutdown(void);

/* session.c */
/* What kind of failure ended a session: the metrics count them by class. */
enum error_class {
	ERRC_NONE,
	ERRC_AUTH,		/* login refused */
	ERRC_TLS,		/* handshake, certificate */
	ERRC_NETWORK,		/* DNS, connect, timeouts, hang-ups */
	ERRC_PROTOCOL,		/* the server broke POP3 or IMAP */
	ERRC_DISK,		/* state, Maildir, local delivery */
	ERRC_CONFIG,		/* a password file or command, a ca-file */
	ERRC_OAUTH2,		/* no OAuth2 access token */
	ERRC_MAX
};
struct session_result {
	int		 exitcode;	/* 0 or an EXIT_* code */
	char		*error;		/* what went wrong, for the log */
	enum error_class errclass;	/* with error */
	long		 records;	/* in the state after it; -1: unknown */
	int		 stopped;	/* ended early on request */
	const char	*stage;		/* the state it ended in */
	unsigned	 fetched;
	uint64_t	 bytes;
	unsigned	 deleted;
	unsigned	 left;		/* new messages not fetched this time */
	unsigned	 too_big;	/* left for their size (max-size) */
	uint64_t	 too_big_max;	/* the largest of them */
	unsigned	 too_big_before;	/* at the poll before */
	unsigned	 resp_codes;	/* RESP_* seen on the failure */
	long		 login_delay;	/* CAPA LOGIN-DELAY, seconds */
	int		 nopipelining;	/* server choked on pipelining */
	/* The files delivered (Maildir), one path a line, for the hook. */
	char		*new_files;
	size_t		 new_files_len;
	/* What --check reports. */
	char		 peer[64];
	char		 tls[128];
	char		 capa[512];
	const char	*login;
	uint64_t	 messages;	/* STAT */
	uint64_t	 octets;
};
/* final: the session ended; else a cycle of a session that goes on. */
typedef void (*session_done_cb)(struct session_result *, int, void *);
struct session_env {
	struct event_base	*base;
	struct evdns_base	*dns;
};
#define SESSION_FETCH	0
#define SESSION_CHECK	1	/* log in, look, log out: --check */
struct session_opts {
	int		 mode;		/* SESSION_* */
	int		 nopipelining;
	size_t		 first_folder;	/* IMAP: its folders */
	size_t		 nfolders;	/* 0: all */
	int		 idle;		/* IMAP: may wait in its folder */
	/* Told (with the done argument) when the session starts (1) and
	   stops (0) waiting for news in IDLE. */
	void		(*idle_cb)(int, void *);
};
struct session	*session_start(const struct session_env *, struct config *,
		     const struct account_conf *, struct ssl_ctx_st *,
		     const struct session_opts *, session_done_cb, void *);
void		 session_stop(struct session *);
void		 session_poll_now(struct session *);
void		 session_abort(struct session *);
int		 session_idling(const struct session *);

/* authorize.c: maild --authorize */
int		 authorize_run(const struct session_env *, struct config *,
		     const char *);

/* sdnotify.c */
void		 sdnotify(const char *, ...) PRINTFLIKE(1, 2);
void		 sdnotify_reloading(void);

/* status.c: the status file, maild --status and the --check report. */
/* Poll durations, for a histogram: counts per bucket (metrics.c). */
#define POLL_BUCKETS	10
struct poll_hist {
	unsigned long long	 count[POLL_BUCKETS + 1];	/* last: +Inf */
	double			 sum;
};
/* One account (or one IMAP folder session of one) as account.c sees it. */
struct status_account {
	const char	*name;
	const char	*state;		/* polling, waiting, ok, failing or
					   needs-authorization */
	int		 failing;	/* its last poll failed */
	time_t		 last_poll;	/* 0: never */
	time_t		 last_success;
	time_t		 next_poll;	/* 0: none planned */
	unsigned	 fetched;	/* at the last poll */
	unsigned long long fetched_total;
	int		 failures;	/* in a row */
	const char	*error;		/* of the last poll, or NULL */
	char		 token[64];	/* oauth2_status() */
	/* What the metrics add: counters since maild started, ... */
	const struct account_conf *ac;
	int		 removed;	/* gone from the config, ending */
	unsigned long long bytes_total;
	unsigned long long deleted_total;
	unsigned long long errors[ERRC_MAX];
	struct poll_hist durations;
	/* ... and what the last poll saw. */
	unsigned	 waiting;	/* new messages left on the server */
	long		 records;	/* in the state; -1: not known yet */
	time_t		 token_expires;	/* 0: no OAuth2 token known */
	int		 idle;		/* connections waiting in IDLE */
};
/* The whole of it: accounts configured, sessions running and waiting. */
struct status_totals {
	size_t		 accounts;
	int		 active;
	int		 queued;
};
void		 status_write(const char *, int, const struct status_account *,
		     size_t);
int		 status_show(const struct config *);
int		 status_report_check(const struct config *,
		     const struct account_conf *, const struct session_result *);

/* account.c */
#define ACCOUNTS_DAEMON	0
#define ACCOUNTS_ONCE	1
#define ACCOUNTS_CHECK	2
void		 accounts_init(const struct session_env *, struct config *, int);
void		 accounts_start(void);
void		 accounts_poll_now(void);
int		 accounts_reload(struct config *);
void		 accounts_stop(void);
void		 accounts_abort(void);
int		 accounts_exitcode(void);
void		 accounts_free(void);
struct status_account *accounts_status(size_t *, struct status_totals *);

/* metrics.c: the accounts' health for Prometheus; see metrics.c. */
void		 metrics_init(struct event_base *, int);
int		 metrics_configure(const struct config *, char **);
void		 metrics_changed(void);
void		 metrics_observe(struct poll_hist *, double);
void		 metrics_shutdown(void);

/* limits.c */
void		 limits_raise(const struct config *);

#endif /* MAILD_H */
