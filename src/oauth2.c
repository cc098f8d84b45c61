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
 * that held one are wiped, jansson's included (oauth2_init()).  The token
 * file and the token endpoint's replies are oauth2_token.c's.
 */

#include "config.h"

#include <sys/queue.h>
#include <sys/stat.h>

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/http.h>

#include "maild.h"
#include "http.h"
#include "oauth2.h"

/* Refresh this long before the access token expires. */
#define OAUTH2_MARGIN		300
/* Another process refreshing the same account: look again after this. */
#define OAUTH2_LOCK_RETRY_US	200000L

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

void
oauth2_init(struct event_base *base, struct evdns_base *dns)
{
	o_base = base;
	o_dns = dns;
	oauth2_json_init();
}

/* ------------------------------------------------------------------ */
/* Has the token file changed (maild --authorize)? */

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
		if (error != NULL || c->access == NULL) {
			job->error = xstrdup(error != NULL ? error :
			    "internal error: no access token");
			job->code = error != NULL ? code : EXIT_SOFTWARE;
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

/* When the account's access token expires; 0: no token known. */
time_t
oauth2_expires(const struct account_conf *ac)
{
	struct oauth2_cache	*c;

	if (ac->oauth2_provider == OAUTH2_NONE ||
	    (c = oauth2_cache_find(ac->name)) == NULL)
		return (0);
	return (c->expires);
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
