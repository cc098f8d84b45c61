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
 * oauth2.c: the token life of an account with built-in OAuth2
 * (oauth2-provider): a session asks for its password and gets an access
 * token, from memory while it is fresh, else from a refresh at the
 * provider's token endpoint (RFC 6749 section 6) on the event loop, so
 * that other accounts go on fetching meanwhile.
 *
 * The tokens live in <state-dir>/<account>.oauth2 (mode 0600; written to
 * a temporary file, fsynced, renamed, the directory fsynced) and in
 * memory, per account, across sessions.  The refresh token never leaves
 * this file and the token endpoint.  A provider that rotates the refresh
 * token (Microsoft, on every use) gets its new one stored durably before
 * the access token that came with it is handed out: whenever maild is
 * killed, the file holds a refresh token the provider still honours.  A
 * refresh, once sent, is seen through to the end even if the session
 * that asked for it is gone, for the same reason.  Processes (the daemon,
 * --once, --check, --authorize) refresh an account one at a time: a lock
 * file beside the token file.
 *
 * invalid_grant (the refresh token was revoked, expired or the password
 * changed) means only a person can help: the account "needs
 * authorization" until its token file changes (maild --authorize) or
 * SIGHUP, and no request is sent for it meanwhile.  Network trouble and
 * 5xx replies are temporary, like a server that is down.
 *
 * Tokens never reach a log line, the status file or a core file; buffers
 * that held one are wiped, jansson's included (oauth2_init()).
 */

#include "config.h"

#include <sys/queue.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/http.h>

#include <jansson.h>

#include "maild.h"
#include "http.h"
#include "oauth2.h"

/* Refresh this long before the access token expires. */
#define OAUTH2_MARGIN		300
/* The token file: a few tokens and comments. */
#define OAUTH2_FILE_MAX		65536
/* Another process refreshing the same account: look again after this. */
#define OAUTH2_LOCK_RETRY_US	200000L
/* A token lives at most this long, whatever expires_in says. */
#define OAUTH2_EXPIRES_MAX	(366L * 86400)

/* What a job is waiting for, and its answer once it has it. */
struct oauth2_job {
	TAILQ_ENTRY(oauth2_job)	 entry;
	struct oauth2_cache	*c;
	struct event		*ev;		/* the deferred answer */
	secret_cb		 cb;
	void			*arg;
	int			 answered;
	char			*token;		/* the answer: a token ... */
	size_t			 tokenlen;
	char			*error;		/* ... or an error */
	int			 code;
};
TAILQ_HEAD(oauth2_jobs, oauth2_job);

/* Where a file was: it changed if it is another inode now. */
struct oauth2_file_id {
	int			 exists;
	dev_t			 dev;
	ino_t			 ino;
	struct timespec		 mtime;
};

/* A refresh in flight, with copies of what it needs: it may outlive
   the session (and the configuration) that started it. */
struct oauth2_refresh {
	struct oauth2_cache	*c;
	struct account_conf	 sac;	/* the client secret's source */
	char			*token_url;
	char			*client_id;
	char			*scope;
	char			*ca_file;
	char			*lock_path;
	int			 lockfd;
	int			 timeout;
	double			 deadline;
	struct event		*retry_ev;
	struct secret_job	*sjob;
	struct http_req		*http;
	struct oauth2_tokens	 old;		/* the file, as read */
	struct oauth2_file_id	 id;
};

/* An account's tokens in memory; they outlive its sessions. */
struct oauth2_cache {
	TAILQ_ENTRY(oauth2_cache) entry;
	char			*name;
	char			*file;
	char			*access;	/* NULL: none */
	size_t			 accesslen;
	time_t			 expires;
	int			 refused;	/* the server refused access */
	int			 needs_auth;
	struct oauth2_file_id	 refused_id;	/* the file it was with */
	char			*needs_why;
	struct oauth2_tokens	 pending;	/* rotated, not yet durable */
	struct oauth2_refresh	*refresh;
	struct oauth2_jobs	 jobs;
};
TAILQ_HEAD(oauth2_caches, oauth2_cache);

static struct oauth2_caches	 caches = TAILQ_HEAD_INITIALIZER(caches);
static struct event_base	*o_base;
static struct evdns_base	*o_dns;

static void	oauth2_begin(struct oauth2_cache *, const struct account_conf *,
		    int);
static void	oauth2_locked(struct oauth2_refresh *);
static void	oauth2_refresh_end(struct oauth2_refresh *);

/*
 * jansson's buffers hold tokens: wipe them before they are freed.
 * (glibc's malloc_usable_size() says how much there is to wipe.)
 */
static void *
oauth2_json_malloc(size_t size)
{
	return (malloc(size));
}

static void
oauth2_json_free(void *p)
{
	if (p != NULL) {
		wipe(p, malloc_usable_size(p));
		free(p);
	}
}

void
oauth2_init(struct event_base *base, struct evdns_base *dns)
{
	o_base = base;
	o_dns = dns;
	json_set_alloc_funcs(oauth2_json_malloc, oauth2_json_free);
}

const char *
oauth2_provider_name(enum oauth2_provider p)
{
	switch (p) {
	case OAUTH2_GOOGLE:
		return ("google");
	case OAUTH2_MICROSOFT:
		return ("microsoft");
	case OAUTH2_CUSTOM:
		return ("custom");
	default:
		return ("none");
	}
}

/*
 * The endpoints and scope of a provider, for the mail service (POP3 or
 * IMAP; Microsoft wants a scope per protocol).  tenant: Microsoft's
 * (NULL: "common").  Returns 0; custom and none preset nothing.
 */
int
oauth2_preset(enum oauth2_provider p, const char *tenant, int service,
    struct oauth2_endpoints *e)
{
	memset(e, 0, sizeof *e);
	switch (p) {
	case OAUTH2_GOOGLE:
		/* Google refuses the device grant for the mail scope. */
		e->auth_url = xstrdup("https://accounts.google.com/o/oauth2/"
		    "v2/auth");
		e->token_url = xstrdup("https://oauth2.googleapis.com/token");
		e->scope = xstrdup("https://mail.google.com/");
		break;
	case OAUTH2_MICROSOFT:
		if (tenant == NULL)
			tenant = "common";
		xasprintf(&e->auth_url, "https://login.microsoftonline.com/%s/"
		    "oauth2/v2.0/authorize", tenant);
		xasprintf(&e->token_url, "https://login.microsoftonline.com/%s/"
		    "oauth2/v2.0/token", tenant);
		xasprintf(&e->device_url, "https://login.microsoftonline.com/"
		    "%s/oauth2/v2.0/devicecode", tenant);
		xasprintf(&e->scope, "https://outlook.office.com/%s."
		    "AccessAsUser.All offline_access",
		    service == OAUTH2_SERVICE_IMAP ? "IMAP" : "POP");
		break;
	default:
		break;
	}
	return (0);
}

/* ------------------------------------------------------------------ */
/* The token file */

void
oauth2_tokens_clear(struct oauth2_tokens *t)
{
	freezero_str(t->refresh);
	freezero_str(t->access);
	memset(t, 0, sizeof *t);
}

/* A token as RFC 6749 allows it (VSCHAR, here without the space). */
static int
oauth2_token_ok(const char *s, size_t len)
{
	size_t	i;

	if (len == 0 || len > OAUTH2_TOKEN_MAX)
		return (0);
	for (i = 0; i < len; i++) {
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
			return (0);
	}
	return (1);
}

static void
oauth2_file_id(const char *path, struct oauth2_file_id *id)
{
	struct stat	sb;

	memset(id, 0, sizeof *id);
	if (stat(path, &sb) == -1)
		return;
	id->exists = 1;
	id->dev = sb.st_dev;
	id->ino = sb.st_ino;
	id->mtime = sb.st_mtim;
}

static int
oauth2_file_id_equal(const struct oauth2_file_id *a,
    const struct oauth2_file_id *b)
{
	return (a->exists == b->exists && (!a->exists || (a->dev == b->dev &&
	    a->ino == b->ino && a->mtime.tv_sec == b->mtime.tv_sec &&
	    a->mtime.tv_nsec == b->mtime.tv_nsec)));
}

/*
 * Read a token file.  Returns 0, or -1 with *cause (errno ENOENT if there
 * is no file).
 */
int
oauth2_file_read(const char *path, struct oauth2_tokens *t, char **cause)
{
	char		*buf, *line, *next, *val;
	ssize_t		 n;
	size_t		 len = 0;
	int		 fd, saved;
	uint64_t	 exp;

	memset(t, 0, sizeof *t);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) == -1) {
		saved = errno;
		xasprintf(cause, "%s: %s", path, strerror(errno));
		errno = saved;
		return (-1);
	}
	if (private_file(fd, "token file", path, cause) == -1) {
		close(fd);
		errno = EPERM;
		return (-1);
	}
	buf = xmalloc(OAUTH2_FILE_MAX + 1);
	while (len < OAUTH2_FILE_MAX) {
		n = read(fd, buf + len, OAUTH2_FILE_MAX - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += n;
	}
	close(fd);
	buf[len] = '\0';
	for (line = buf; line != NULL && *line != '\0'; line = next) {
		if ((next = strchr(line, '\n')) != NULL)
			*next++ = '\0';
		if (*line == '#' || *line == '\0')
			continue;
		if ((val = strchr(line, ' ')) == NULL)
			goto bad;
		*val++ = '\0';
		if (strcmp(line, "refresh-token") == 0 && t->refresh == NULL &&
		    oauth2_token_ok(val, strlen(val)))
			t->refresh = xstrdup(val);
		else if (strcmp(line, "access-token") == 0 &&
		    t->access == NULL && oauth2_token_ok(val, strlen(val)))
			t->access = xstrdup(val);
		else if (strcmp(line, "access-expires") == 0 &&
		    parse_u64(val, INT64_MAX, &exp) == 0)
			t->expires = (time_t)exp;
		else if (strcmp(line, "refresh-token") == 0 ||
		    strcmp(line, "access-token") == 0)
			goto bad;
		/* Other keys: from a later maild; ignored. */
	}
	wipe(buf, len);
	free(buf);
	if (t->refresh == NULL) {
		oauth2_tokens_clear(t);
		xasprintf(cause, "%s holds no refresh-token", path);
		errno = EINVAL;
		return (-1);
	}
	return (0);
bad:
	wipe(buf, len);
	free(buf);
	oauth2_tokens_clear(t);
	xasprintf(cause, "%s is damaged (not what maild writes)", path);
	errno = EINVAL;
	return (-1);
}

/*
 * Replace a token file, durably: a temporary file beside it, written and
 * fsynced, renamed over it, the directory fsynced.  A crash leaves the
 * old file or the new one, never half of one.
 */
int
oauth2_file_write(const char *path, const char *account,
    const struct oauth2_tokens *t, char **cause)
{
	char		*text, *tmp, *dir, *slash;
	int		 fd, len;

	xasprintf(&tmp, "%s.XXXXXX", path);
	if ((fd = mkstemp(tmp)) == -1) {
		xasprintf(cause, "cannot create a file beside %s: %s", path,
		    strerror(errno));
		free(tmp);
		return (-1);
	}
	len = xasprintf(&text, "# maild OAuth2 tokens of account \"%s\": "
	    "secret, keep it so; see maild(8)\nrefresh-token %s\n"
	    "%s%s%saccess-expires %lld\n", account, t->refresh,
	    t->access != NULL ? "access-token " : "",
	    t->access != NULL ? t->access : "", t->access != NULL ? "\n" : "",
	    (long long)(t->access != NULL ? t->expires : 0));
	if (fchmod(fd, 0600) == -1 || write_full(fd, text, len) == -1 ||
	    fsync(fd) == -1) {
		xasprintf(cause, "cannot write %s: %s", tmp, strerror(errno));
		wipe(text, len);
		free(text);
		close(fd);
		unlink(tmp);
		free(tmp);
		return (-1);
	}
	wipe(text, len);
	free(text);
	if (close(fd) == -1 || rename(tmp, path) == -1) {
		xasprintf(cause, "cannot replace %s: %s", path, strerror(errno));
		unlink(tmp);
		free(tmp);
		return (-1);
	}
	free(tmp);
	dir = xstrdup(path);
	if ((slash = strrchr(dir, '/')) != NULL)
		*(slash == dir ? slash + 1 : slash) = '\0';
	if (fsync_dir(slash != NULL ? dir : ".") == -1) {
		xasprintf(cause, "cannot make %s durable (fsync of its "
		    "directory): %s", path, strerror(errno));
		free(dir);
		return (-1);
	}
	free(dir);
	return (0);
}

/* ------------------------------------------------------------------ */
/* Forms and JSON */

/*
 * "k1=v1&k2=v2..." from pairs of strings ending with NULL; a NULL value
 * leaves its key out.  Allocated; wipe it (it holds secrets).
 */
char *
oauth2_form(const char *key, ...)
{
	va_list		 ap;
	const char	*k, *v;
	char		*out = NULL, *enc, *next;
	size_t		 outlen = 0;

	va_start(ap, key);
	for (k = key; k != NULL; k = va_arg(ap, const char *)) {
		v = va_arg(ap, const char *);
		if (v == NULL)
			continue;
		if ((enc = evhttp_uriencode(v, -1, 1)) == NULL)
			fatalx("evhttp_uriencode failed");
		xasprintf(&next, "%s%s%s=%s", out != NULL ? out : "",
		    out != NULL ? "&" : "", k, enc);
		wipe(enc, strlen(enc));
		free(enc);
		if (out != NULL) {
			wipe(out, outlen);
			free(out);
		}
		out = next;
		outlen = strlen(out);
	}
	va_end(ap);
	return (out != NULL ? out : xstrdup(""));
}

static json_t *
oauth2_json_load(const char *body, size_t len)
{
	json_error_t	 err;
	json_t		*j;

	j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
	if (j != NULL && !json_is_object(j)) {
		json_decref(j);
		return (NULL);
	}
	return (j);
}

/* A string member of a JSON object, copied into buf; NULL if none. */
const char *
oauth2_json_string(const char *body, size_t len, const char *key, char *buf,
    size_t size)
{
	json_t		*j, *v;
	const char	*s = NULL;

	if ((j = oauth2_json_load(body, len)) == NULL)
		return (NULL);
	v = json_object_get(j, key);
	if (json_is_string(v) && json_string_length(v) < size &&
	    memchr(json_string_value(v), '\0', json_string_length(v)) ==
	    NULL) {
		memcpy(buf, json_string_value(v), json_string_length(v) + 1);
		s = buf;
	}
	json_decref(j);
	return (s);
}

/* A whole number member (or a string of digits: some providers); -1. */
static long
oauth2_json_number(json_t *v)
{
	uint64_t	 n;

	if (json_is_integer(v))
		return (json_integer_value(v) >= 0 &&
		    json_integer_value(v) <= OAUTH2_EXPIRES_MAX ?
		    (long)json_integer_value(v) : -1);
	if (json_is_string(v) &&
	    parse_u64(json_string_value(v), OAUTH2_EXPIRES_MAX, &n) == 0)
		return ((long)n);
	return (-1);
}

long
oauth2_json_integer(const char *body, size_t len, const char *key)
{
	json_t	*j;
	long	 n;

	if ((j = oauth2_json_load(body, len)) == NULL)
		return (-1);
	n = oauth2_json_number(json_object_get(j, key));
	json_decref(j);
	return (n);
}

/* An OAuth2 error reply (RFC 6749 5.2): error and error_description. */
static int
oauth2_error_of(json_t *j, struct oauth2_error *e)
{
	json_t		*err = json_object_get(j, "error");
	json_t		*desc = json_object_get(j, "error_description");

	if (!json_is_string(err))
		return (-1);
	log_escape(e->error, sizeof e->error, json_string_value(err),
	    json_string_length(err));
	if (json_is_string(desc))
		log_escape(e->desc, sizeof e->desc, json_string_value(desc),
		    json_string_length(desc));
	return (0);
}

/*
 * Understand a token endpoint's reply (RFC 6749 5.1 and 5.2): the tokens
 * (refresh: NULL if it sent none), or the error it sent, or why the reply
 * is neither.
 */
int
oauth2_token_reply(int status, const char *body, size_t len,
    struct oauth2_tokens *t, struct oauth2_error *e)
{
	json_t		*j, *at, *rt, *type;
	long		 exp;

	memset(t, 0, sizeof *t);
	memset(e, 0, sizeof *e);
	j = oauth2_json_load(body, len);
	if (status != 200) {
		if (j != NULL && oauth2_error_of(j, e) == 0) {
			json_decref(j);
			return (OAUTH2_REPLY_REFUSED);
		}
		json_decref(j);
		snprintf(e->desc, sizeof e->desc, "HTTP status %d without an "
		    "OAuth2 error", status);
		return (OAUTH2_REPLY_BAD);
	}
	if (j == NULL) {
		snprintf(e->desc, sizeof e->desc, "a reply that is not a JSON "
		    "object");
		return (OAUTH2_REPLY_BAD);
	}
	at = json_object_get(j, "access_token");
	rt = json_object_get(j, "refresh_token");
	type = json_object_get(j, "token_type");
	if (!json_is_string(at) || !oauth2_token_ok(json_string_value(at),
	    json_string_length(at))) {
		snprintf(e->desc, sizeof e->desc, "a reply without a valid "
		    "access_token");
		goto bad;
	}
	if (type != NULL && (!json_is_string(type) ||
	    strcasecmp(json_string_value(type), "bearer") != 0)) {
		snprintf(e->desc, sizeof e->desc, "a token_type that is not "
		    "Bearer");
		goto bad;
	}
	if (rt != NULL && (!json_is_string(rt) ||
	    !oauth2_token_ok(json_string_value(rt), json_string_length(rt)))) {
		snprintf(e->desc, sizeof e->desc, "an invalid refresh_token");
		goto bad;
	}
	if (json_object_get(j, "expires_in") == NULL)
		exp = 3600;	/* RFC 6749 5.1: RECOMMENDED; an hour is usual */
	else if ((exp = oauth2_json_number(json_object_get(j,
	    "expires_in"))) == -1) {
		snprintf(e->desc, sizeof e->desc, "an invalid expires_in");
		goto bad;
	}
	t->access = xstrdup(json_string_value(at));
	t->refresh = rt != NULL ? xstrdup(json_string_value(rt)) : NULL;
	t->expires = time(NULL) + exp;
	json_decref(j);
	return (OAUTH2_REPLY_OK);
bad:
	json_decref(j);
	return (OAUTH2_REPLY_BAD);
}

/* What to do about an error the provider sent, or "". */
const char *
oauth2_error_hint(const struct oauth2_error *e)
{
	if (strcmp(e->error, "invalid_client") == 0 ||
	    strcmp(e->error, "unauthorized_client") == 0) {
		if (strstr(e->desc, "AADSTS700025") != NULL)
			return ("; this client is public: remove "
			    "oauth2-client-secret");
		if (strstr(e->desc, "AADSTS7000218") != NULL)
			return ("; this client is confidential: give its "
			    "oauth2-client-secret, or allow public client "
			    "flows in its registration");
		return ("; check oauth2-client-id and oauth2-client-secret "
		    "against the client's registration");
	}
	if (strcmp(e->error, "invalid_scope") == 0)
		return ("; the provider does not grant this scope to this "
		    "client (Google allows the mail scope only with the "
		    "authorization code grant: no oauth2-device-url)");
	return ("");
}

/* ------------------------------------------------------------------ */
/* The cache and the jobs */

static struct oauth2_cache *
oauth2_cache_find(const char *name)
{
	struct oauth2_cache	*c;

	TAILQ_FOREACH(c, &caches, entry) {
		if (strcmp(c->name, name) == 0)
			return (c);
	}
	return (NULL);
}

static void
oauth2_forget_access(struct oauth2_cache *c)
{
	freezero_str(c->access);
	c->access = NULL;
	c->accesslen = 0;
	c->expires = 0;
}

/* The account's cache, made if new; its file follows the configuration. */
static struct oauth2_cache *
oauth2_cache_get(const struct account_conf *ac)
{
	struct oauth2_cache	*c;

	if ((c = oauth2_cache_find(ac->name)) == NULL) {
		c = xcalloc(1, sizeof *c);
		c->name = xstrdup(ac->name);
		c->file = xstrdup(ac->oauth2_file);
		TAILQ_INIT(&c->jobs);
		TAILQ_INSERT_TAIL(&caches, c, entry);
	} else if (strcmp(c->file, ac->oauth2_file) != 0) {
		/* Another state directory: other tokens. */
		free(c->file);
		c->file = xstrdup(ac->oauth2_file);
		oauth2_forget_access(c);
		c->needs_auth = 0;
	}
	return (c);
}

/* The refresh margin: MAILD_OAUTH2_MARGIN (seconds) for the tests. */
static long
oauth2_margin(void)
{
	const char	*env = getenv("MAILD_OAUTH2_MARGIN");
	uint64_t	 v;

	if (env != NULL && parse_u64(env, 86400, &v) == 0)
		return ((long)v);
	return (OAUTH2_MARGIN);
}

static int
oauth2_fresh(time_t expires)
{
	return (expires > 0 && (long)(expires - time(NULL)) > oauth2_margin());
}

static void
oauth2_job_cb(evutil_socket_t fd, short what, void *arg)
{
	struct oauth2_job	*job = arg;
	secret_cb		 cb = job->cb;
	void			*cbarg = job->arg;
	char			*token = job->token, *error = job->error;
	size_t			 len = job->tokenlen;
	int			 code = job->code;

	job->token = NULL;
	job->error = NULL;
	oauth2_cancel(job);
	cb(token, len, error, code, cbarg);
	free(error);
}

/* Answer every job that waits: the access token, or error. */
static void
oauth2_answer(struct oauth2_cache *c, const char *error, int code)
{
	struct oauth2_job	*job;

	TAILQ_FOREACH(job, &c->jobs, entry) {
		if (job->answered)
			continue;
		job->answered = 1;
		if (error != NULL) {
			job->error = xstrdup(error);
			job->code = code;
		} else {
			job->token = xmalloc(c->accesslen + 1);
			memcpy(job->token, c->access, c->accesslen + 1);
			job->tokenlen = c->accesslen;
		}
		event_active(job->ev, EV_TIMEOUT, 0);
	}
}

/*
 * Get the access token of an account; cb runs once, later, from the event
 * loop, with a copy of the token (the callee wipes it) or an error.
 * timeout bounds a refresh.
 */
struct oauth2_job *
oauth2_get(const struct account_conf *ac, int timeout, secret_cb cb,
    void *arg)
{
	struct oauth2_cache	*c = oauth2_cache_get(ac);
	struct oauth2_job	*job;

	job = xcalloc(1, sizeof *job);
	job->c = c;
	job->cb = cb;
	job->arg = arg;
	job->ev = event_new(o_base, -1, 0, oauth2_job_cb, job);
	TAILQ_INSERT_TAIL(&c->jobs, job, entry);
	if (c->refresh == NULL)
		oauth2_begin(c, ac, timeout);
	return (job);
}

/* Forget a job (a refresh it started goes on: see the top). */
void
oauth2_cancel(struct oauth2_job *job)
{
	if (job == NULL)
		return;
	TAILQ_REMOVE(&job->c->jobs, job, entry);
	event_free(job->ev);
	if (job->token != NULL) {
		wipe(job->token, job->tokenlen);
		free(job->token);
	}
	free(job->error);
	free(job);
}

/* The account needs a person; say what to do. */
static void
oauth2_needs(struct oauth2_cache *c, const struct oauth2_file_id *id,
    const char *why)
{
	char	*msg, *copy = xstrdup(why);	/* why may be needs_why */

	c->needs_auth = 1;
	c->refused_id = *id;
	free(c->needs_why);
	c->needs_why = copy;
	oauth2_forget_access(c);
	xasprintf(&msg, "needs authorization: run maild --authorize %s (%s)",
	    c->name, c->needs_why);
	oauth2_answer(c, msg, EXIT_NOPERM);
	free(msg);
}

/*
 * Does the account need a person (maild --authorize)?  Not any more once
 * its token file changed.
 */
int
oauth2_needs_authorization(const struct account_conf *ac)
{
	struct oauth2_cache	*c;
	struct oauth2_file_id	 id;

	if (ac->oauth2_provider == OAUTH2_NONE ||
	    (c = oauth2_cache_find(ac->name)) == NULL || !c->needs_auth)
		return (0);
	oauth2_file_id(c->file, &id);
	if (!oauth2_file_id_equal(&id, &c->refused_id)) {
		log_info("account=%s the OAuth2 token file changed; trying it",
		    c->name);
		c->needs_auth = 0;
		c->refused = 0;
		return (0);
	}
	return (1);
}

/* The mail server refused the access token: get a new one next time. */
void
oauth2_token_refused(const struct account_conf *ac)
{
	struct oauth2_cache	*c;

	if (ac->oauth2_provider == OAUTH2_NONE ||
	    (c = oauth2_cache_find(ac->name)) == NULL)
		return;
	oauth2_forget_access(c);
	c->refused = 1;
}

/* SIGHUP: try again the accounts that needed authorization. */
void
oauth2_reload(void)
{
	struct oauth2_cache	*c;

	TAILQ_FOREACH(c, &caches, entry)
		c->needs_auth = 0;
}

/* " token-expires=<ISO 8601>" for the status file, or "". */
void
oauth2_status(const struct account_conf *ac, char *buf, size_t size)
{
	struct oauth2_cache	*c;
	struct tm		 tm;
	char			 t[32];

	buf[0] = '\0';
	if (ac->oauth2_provider == OAUTH2_NONE ||
	    (c = oauth2_cache_find(ac->name)) == NULL || c->expires == 0)
		return;
	gmtime_r(&c->expires, &tm);
	strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%SZ", &tm);
	snprintf(buf, size, " token-expires=%s", t);
}

/* At exit: everything goes, a refresh in flight too. */
void
oauth2_shutdown(void)
{
	struct oauth2_cache	*c;
	struct oauth2_job	*job, *next;

	while ((c = TAILQ_FIRST(&caches)) != NULL) {
		for (job = TAILQ_FIRST(&c->jobs); job != NULL; job = next) {
			next = TAILQ_NEXT(job, entry);
			oauth2_cancel(job);
		}
		if (c->refresh != NULL)
			oauth2_refresh_end(c->refresh);
		TAILQ_REMOVE(&caches, c, entry);
		oauth2_forget_access(c);
		oauth2_tokens_clear(&c->pending);
		free(c->needs_why);
		free(c->name);
		free(c->file);
		free(c);
	}
}

/* ------------------------------------------------------------------ */
/* The refresh */

static void
oauth2_refresh_end(struct oauth2_refresh *r)
{
	r->c->refresh = NULL;
	if (r->retry_ev != NULL)
		event_free(r->retry_ev);
	if (r->sjob != NULL)
		secret_cancel(r->sjob);
	if (r->http != NULL)
		http_cancel(r->http);
	/* The lock file stays: unlinking it would let two lock it. */
	if (r->lockfd != -1)
		close(r->lockfd);
	oauth2_tokens_clear(&r->old);
	if (r->sac.secret_source == SECRET_PASSWORD)
		freezero_str(r->sac.secret);
	else
		free(r->sac.secret);
	free(r->sac.name);
	free(r->token_url);
	free(r->client_id);
	free(r->scope);
	free(r->ca_file);
	free(r->lock_path);
	free(r);
}

/* The refresh failed: tell the jobs. */
static void
oauth2_fail(struct oauth2_refresh *r, int code, const char *fmt, ...)
{
	struct oauth2_cache	*c = r->c;
	va_list			 ap;
	char			*msg;

	va_start(ap, fmt);
	if (vasprintf(&msg, fmt, ap) == -1)
		msg = NULL;
	va_end(ap);
	oauth2_refresh_end(r);
	oauth2_answer(c, msg != NULL ? msg : "out of memory", code);
	free(msg);
}

/* Take the access token t (moved), good until expires, and answer. */
static void
oauth2_use(struct oauth2_cache *c, char **access, time_t expires)
{
	if (*access == NULL) {
		oauth2_answer(c, "internal error: no access token",
		    EXIT_SOFTWARE);
		return;
	}
	oauth2_forget_access(c);
	c->access = *access;
	c->accesslen = strlen(c->access);
	c->expires = expires;
	c->refused = 0;
	*access = NULL;
	oauth2_answer(c, NULL, 0);
}

/*
 * Make a rotated refresh token durable (c->pending); only then may the
 * access token that came with it be used.  0, or -1 (still pending).
 */
static int
oauth2_store_pending(struct oauth2_cache *c, char **cause)
{
	if (oauth2_file_write(c->file, c->name, &c->pending, cause) == -1)
		return (-1);
	oauth2_use(c, &c->pending.access, c->pending.expires);
	oauth2_tokens_clear(&c->pending);
	return (0);
}

static void
oauth2_begin(struct oauth2_cache *c, const struct account_conf *ac,
    int timeout)
{
	struct oauth2_refresh	*r;
	struct oauth2_file_id	 id;
	char			*cause = NULL;

	if (c->pending.refresh != NULL) {
		/* A rotated token that could not be stored: store it now. */
		if (oauth2_store_pending(c, &cause) == -1) {
			oauth2_answer(c, cause, EXIT_IOERR);
			free(cause);
			return;
		}
		if (oauth2_fresh(c->expires))
			return;
	}
	if (c->needs_auth) {
		oauth2_file_id(c->file, &id);
		if (oauth2_file_id_equal(&id, &c->refused_id)) {
			oauth2_needs(c, &id, c->needs_why);
			return;
		}
		c->needs_auth = 0;
		c->refused = 0;
	}
	if (c->access != NULL && !c->refused && oauth2_fresh(c->expires)) {
		oauth2_answer(c, NULL, 0);
		return;
	}

	r = xcalloc(1, sizeof *r);
	r->c = c;
	c->refresh = r;
	r->lockfd = -1;
	r->timeout = timeout;
	r->deadline = now_mono() + timeout;
	r->token_url = xstrdup(ac->oauth2_token_url);
	r->client_id = xstrdup(ac->oauth2_client_id);
	r->scope = ac->oauth2_scope != NULL ? xstrdup(ac->oauth2_scope) : NULL;
	r->ca_file = ac->ca_file != NULL ? xstrdup(ac->ca_file) : NULL;
	r->sac.name = xstrdup(ac->name);
	r->sac.secret_source = ac->oauth2_secret_source;
	r->sac.secret = ac->oauth2_client_secret != NULL ?
	    xstrdup(ac->oauth2_client_secret) : NULL;
	xasprintf(&r->lock_path, "%s.lock", c->file);
	oauth2_locked(r);
}

static void
oauth2_lock_retry_cb(evutil_socket_t fd, short what, void *arg)
{
	oauth2_locked(arg);
}

static void	oauth2_secret_cb(char *, size_t, const char *, int, void *);
static void	oauth2_post(struct oauth2_refresh *, const char *, size_t);

/*
 * Take the account's refresh lock (another maild may be refreshing it:
 * wait for it), then read the token file: another process may have just
 * refreshed.
 */
static void
oauth2_locked(struct oauth2_refresh *r)
{
	struct oauth2_cache	*c = r->c;
	struct timeval		 tv = { 0, OAUTH2_LOCK_RETRY_US };
	char			*cause = NULL;
	long			 holder;

	switch (lock_file(r->lock_path, &r->lockfd, &holder)) {
	case 0:
		break;
	case -1:
		if (now_mono() > r->deadline) {
			oauth2_fail(r, EXIT_TEMPFAIL, "another maild (pid %ld) "
			    "has been refreshing the OAuth2 token for %d "
			    "seconds", holder, r->timeout);
			return;
		}
		if (r->retry_ev == NULL)
			r->retry_ev = evtimer_new(o_base, oauth2_lock_retry_cb,
			    r);
		evtimer_add(r->retry_ev, &tv);
		return;
	default:
		oauth2_fail(r, EXIT_IOERR, "cannot lock %s: %s", r->lock_path,
		    strerror(errno));
		return;
	}
	oauth2_file_id(c->file, &r->id);
	if (oauth2_file_read(c->file, &r->old, &cause) == -1) {
		if (errno == ENOENT) {
			struct oauth2_file_id	id = r->id;

			free(cause);
			oauth2_refresh_end(r);
			oauth2_needs(c, &id, "there is no token yet");
			return;
		}
		oauth2_fail(r, EXIT_CONFIG, "%s", cause);
		free(cause);
		return;
	}
	if (r->old.access != NULL && !c->refused &&
	    oauth2_fresh(r->old.expires)) {
		log_debug("account=%s OAuth2 access token from %s, valid for "
		    "%llds", c->name, c->file,
		    (long long)(r->old.expires - time(NULL)));
		oauth2_use(c, &r->old.access, r->old.expires);
		oauth2_refresh_end(r);
		return;
	}
	if (r->sac.secret_source == SECRET_NONE) {
		oauth2_post(r, NULL, 0);
		return;
	}
	r->sjob = secret_get(o_base, &r->sac, r->timeout, oauth2_secret_cb, r);
}

static void
oauth2_secret_cb(char *secret, size_t len, const char *error, int code,
    void *arg)
{
	struct oauth2_refresh	*r = arg;

	r->sjob = NULL;
	if (secret == NULL) {
		oauth2_fail(r, code, "cannot get the OAuth2 client secret: %s",
		    error);
		return;
	}
	oauth2_post(r, secret, len);
	wipe(secret, len);
	free(secret);
}

static void	oauth2_reply_cb(const struct http_reply *, void *);

static void
oauth2_post(struct oauth2_refresh *r, const char *secret, size_t len)
{
	char	*form;

	log_debug("account=%s refreshing the OAuth2 access token at %s",
	    r->c->name, r->token_url);
	form = oauth2_form("grant_type", "refresh_token", "refresh_token",
	    r->old.refresh, "client_id", r->client_id, "client_secret", secret,
	    "scope", r->scope, (char *)NULL);
	r->http = http_post(o_base, o_dns, r->token_url, r->ca_file, form,
	    r->timeout, oauth2_reply_cb, r);
	wipe(form, strlen(form));
	free(form);
}

static void
oauth2_reply_cb(const struct http_reply *reply, void *arg)
{
	struct oauth2_refresh	*r = arg;
	struct oauth2_cache	*c = r->c;
	struct oauth2_tokens	 t;
	struct oauth2_error	 e;
	struct oauth2_file_id	 now, id;
	char			*cause = NULL, why[512];
	int			 rotated;

	r->http = NULL;
	if (reply->error != NULL) {
		oauth2_fail(r, reply->code, "OAuth2 token endpoint: %s",
		    reply->error);
		return;
	}
	if (reply->status >= 500 || reply->status == 429) {
		oauth2_fail(r, EXIT_TEMPFAIL, "the OAuth2 token endpoint %s "
		    "answered HTTP %d; trying again later", r->token_url,
		    reply->status);
		return;
	}
	switch (oauth2_token_reply(reply->status, reply->body, reply->len, &t,
	    &e)) {
	case OAUTH2_REPLY_OK:
		break;
	case OAUTH2_REPLY_REFUSED:
		if (strcmp(e.error, "invalid_grant") == 0) {
			snprintf(why, sizeof why, "the provider refused the "
			    "refresh token: invalid_grant%s%s", e.desc[0] ?
			    ": " : "", e.desc);
			id = r->id;
			oauth2_refresh_end(r);
			oauth2_needs(c, &id, why);
			return;
		}
		oauth2_fail(r, EXIT_CONFIG, "the OAuth2 token endpoint refused "
		    "the refresh: %s%s%s%s", e.error, e.desc[0] ? ": " : "",
		    e.desc, oauth2_error_hint(&e));
		return;
	default:
		oauth2_fail(r, reply->status == 200 ? EXIT_PROTOCOL :
		    EXIT_CONFIG, "the OAuth2 token endpoint %s sent %s%s",
		    r->token_url, e.desc, reply->status == 200 ? "" :
		    "; is oauth2-token-url right?");
		return;
	}

	rotated = t.refresh != NULL && strcmp(t.refresh, r->old.refresh) != 0;
	if (t.refresh == NULL)
		t.refresh = xstrdup(r->old.refresh);
	oauth2_file_id(c->file, &now);
	if (!oauth2_file_id_equal(&now, &r->id)) {
		/* maild --authorize wrote a new one meanwhile: it wins. */
		log_info("account=%s the OAuth2 token file changed during a "
		    "refresh; keeping the new file", c->name);
		oauth2_use(c, &t.access, t.expires);
		oauth2_tokens_clear(&t);
		oauth2_refresh_end(r);
		return;
	}
	oauth2_tokens_clear(&c->pending);
	c->pending = t;
	if (oauth2_store_pending(c, &cause) == -1) {
		if (rotated) {
			/* The old token may be void now: keep the new one in
			   memory and use nothing until it is stored. */
			oauth2_fail(r, EXIT_IOERR, "cannot store the new OAuth2 "
			    "refresh token (not using it until it is stored): "
			    "%s", cause);
			free(cause);
			return;
		}
		/* Nothing rotated: the file's refresh token still works. */
		log_warnx("account=%s %s; the access token is kept in memory "
		    "only", c->name, cause);
		free(cause);
		oauth2_use(c, &c->pending.access, c->pending.expires);
		oauth2_tokens_clear(&c->pending);
		oauth2_refresh_end(r);
		return;
	}
	log_debug("account=%s new OAuth2 access token, valid for %llds%s",
	    c->name, (long long)(c->expires - time(NULL)), rotated ?
	    ", refresh token rotated and stored" : "");
	oauth2_refresh_end(r);
}
