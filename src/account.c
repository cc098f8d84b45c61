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
 * account.c: when each account is polled.  Every account has a one-shot
 * timer, re-armed when its session ends, so an account never has two
 * sessions at once; at most max-connections sessions run together and the
 * others wait in line.  One account failing never holds up another; after
 * failures it is polled less and less often (backoff).
 *
 * A reload (SIGHUP) matches the new configuration's accounts with the
 * running ones by name: unchanged accounts keep their schedule and their
 * session, removed ones finish what is in flight and go, changed ones
 * finish and start again with the new settings, new ones start now.
 * After every poll, the status file in the state directory is rewritten.
 */

#include "config.h"

#include <sys/queue.h>
#include <sys/stat.h>

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include <openssl/ssl.h>

#include "maild.h"

#ifndef TAILQ_FOREACH_SAFE
#define TAILQ_FOREACH_SAFE(var, head, field, tvar)			\
	for ((var) = TAILQ_FIRST(head);					\
	    (var) != NULL && ((tvar) = TAILQ_NEXT(var, field), 1);	\
	    (var) = (tvar))
#endif

/* Backoff after failures never waits longer than this (or 16 polls). */
#define BACKOFF_CAP	3600

struct account {
	TAILQ_ENTRY(account)	 entry;
	TAILQ_ENTRY(account)	 waiting;
	struct config		*conf;		/* a reference */
	const struct account_conf *ac;		/* inside conf */
	struct config		*next_conf;	/* to switch to (reload) */
	const struct account_conf *next_ac;
	int			 removed;	/* gone from the config */
	int			 readded;	/* and back, while it ran */
	SSL_CTX			*ctx;
	struct session		*session;
	struct event		*timer;
	int			 queued;
	int			 polls;		/* sessions finished */
	int			 nopipelining;
	int			 retried;	/* --once: the lock-step retry */
	int			 exitcode;	/* of the last session */
	int			 failures;	/* in a row */
	long			 login_delay;	/* the server's LOGIN-DELAY */
	double			 started;
	time_t			 last_poll;
	time_t			 last_success;
	time_t			 next_poll;
	unsigned		 last_fetched;
	unsigned long long	 fetched_total;
	char			*last_error;
};
TAILQ_HEAD(account_list, account);

static struct account_list	 accounts = TAILQ_HEAD_INITIALIZER(accounts);
static struct account_list	 waitq = TAILQ_HEAD_INITIALIZER(waitq);
static const struct session_env	*env;
static struct config		*current;
static int			 mode;		/* ACCOUNTS_* */
static int			 stopping;
static int			 active;

static void	account_timer_cb(evutil_socket_t, short, void *);
static void	account_done_cb(struct session_result *, void *);
static void	account_run(struct account *);
static void	account_schedule(struct account *, long);
static void	account_schedule_ms(struct account *, long);
static void	account_free(struct account *);
static void	account_check_finished(void);
static void	account_report_check(struct account *,
		    const struct session_result *);
static long	account_next_delay_ms(struct account *,
		    const struct session_result *);
static void	accounts_write_status(void);

static struct account *
account_new(struct config *conf, const struct account_conf *ac)
{
	struct account	*a;

	a = xcalloc(1, sizeof *a);
	a->conf = config_ref(conf);
	a->ac = ac;
	a->timer = evtimer_new(env->base, account_timer_cb, a);
	TAILQ_INSERT_TAIL(&accounts, a, entry);
	return (a);
}

static void
account_free(struct account *a)
{
	TAILQ_REMOVE(&accounts, a, entry);
	if (a->queued)
		TAILQ_REMOVE(&waitq, a, waiting);
	event_free(a->timer);
	SSL_CTX_free(a->ctx);
	config_free(a->conf);
	config_free(a->next_conf);
	free(a->last_error);
	free(a);
}

/* Set up the accounts of conf, to be polled in the given mode. */
void
accounts_init(const struct session_env *e, struct config *conf, int m)
{
	size_t	i;

	env = e;
	mode = m;
	current = config_ref(conf);
	for (i = 0; i < conf->naccounts; i++)
		account_new(conf, &conf->accounts[i]);
}

/* Poll every account now. */
void
accounts_start(void)
{
	struct account	*a;

	TAILQ_FOREACH(a, &accounts, entry)
		account_schedule(a, 0);
	accounts_write_status();
}

/* Poll now every account that is not already busy (SIGUSR1). */
void
accounts_poll_now(void)
{
	struct account	*a;

	if (stopping)
		return;
	TAILQ_FOREACH(a, &accounts, entry) {
		if (a->session == NULL && !a->queued && !a->removed)
			account_schedule(a, 0);
	}
}

/* Switch an idle account to its new configuration and poll it soon. */
static void
account_switch(struct account *a)
{
	config_free(a->conf);
	a->conf = a->next_conf;
	a->ac = a->next_ac;
	a->next_conf = NULL;
	a->next_ac = NULL;
	SSL_CTX_free(a->ctx);
	a->ctx = NULL;
	a->failures = 0;
	a->nopipelining = 0;
	if (!a->queued)		/* else it runs, as it is now, in its turn */
		account_schedule(a, 0);
}

/*
 * Take a new configuration (SIGHUP), already loaded and valid: see the
 * top of this file.  Returns how many accounts changed, came or went.
 */
int
accounts_reload(struct config *conf)
{
	struct account			*a, *next;
	const struct account_conf	*nac;
	size_t				 i;
	int				 changes = 0;

	TAILQ_FOREACH_SAFE(a, &accounts, entry, next) {
		if (a->removed)
			continue;
		/*
		 * Certificates are read anew at the next poll: the system
		 * trust store or a ca-file may have changed under the same
		 * name.  (A running session keeps its own reference.)
		 */
		SSL_CTX_free(a->ctx);
		a->ctx = NULL;
		nac = NULL;
		for (i = 0; i < conf->naccounts; i++) {
			if (strcmp(conf->accounts[i].name, a->ac->name) == 0)
				nac = &conf->accounts[i];
		}
		if (nac == NULL) {
			log_info("account=%s removed from the configuration",
			    a->ac->name);
			changes++;
			a->removed = 1;
			evtimer_del(a->timer);
			if (a->session != NULL)
				session_stop(a->session);
			else
				account_free(a);
			continue;
		}
		if (config_account_equal(a->conf, a->ac, conf, nac)) {
			/* Same settings: keep everything, new pointers. */
			config_free(a->next_conf);
			a->next_conf = NULL;
			if (a->session == NULL) {
				config_free(a->conf);
				a->conf = config_ref(conf);
				a->ac = nac;
			} else {
				a->next_conf = config_ref(conf);
				a->next_ac = nac;
			}
			continue;
		}
		log_info("account=%s changed in the configuration",
		    a->ac->name);
		changes++;
		config_free(a->next_conf);
		a->next_conf = config_ref(conf);
		a->next_ac = nac;
		if (a->session != NULL)
			session_stop(a->session);
		else
			account_switch(a);
	}
	for (i = 0; i < conf->naccounts; i++) {
		TAILQ_FOREACH(a, &accounts, entry) {
			if (strcmp(a->ac->name, conf->accounts[i].name) == 0)
				break;
		}
		if (a != NULL && a->removed) {
			/*
			 * Back before its old session ended: that session keeps
			 * the account (and its lock) until it ends; then the
			 * account starts again, as a changed one does.
			 */
			log_info("account=%s added to the configuration again; "
			    "it starts when its previous session has ended",
			    a->ac->name);
			changes++;
			a->removed = 0;
			a->readded = 1;
			config_free(a->next_conf);
			a->next_conf = config_ref(conf);
			a->next_ac = &conf->accounts[i];
			continue;
		}
		if (a != NULL)
			continue;
		log_info("account=%s added to the configuration",
		    conf->accounts[i].name);
		changes++;
		account_schedule(account_new(conf, &conf->accounts[i]), 0);
	}
	config_free(current);
	current = config_ref(conf);
	accounts_write_status();
	return (changes);
}

/* Stop: no new sessions; running ones end at their next safe point. */
void
accounts_stop(void)
{
	struct account	*a;

	stopping = 1;
	TAILQ_FOREACH(a, &accounts, entry) {
		evtimer_del(a->timer);
		if (a->queued) {
			TAILQ_REMOVE(&waitq, a, waiting);
			a->queued = 0;
		}
		if (a->session != NULL)
			session_stop(a->session);
	}
	account_check_finished();
}

/* The grace time is over: end the sessions still running now. */
void
accounts_abort(void)
{
	struct account	*a;

	TAILQ_FOREACH(a, &accounts, entry) {
		if (a->session != NULL)
			session_abort(a->session);
	}
}

/* --once and --check: the status of the first account that failed. */
int
accounts_exitcode(void)
{
	struct account	*a;

	TAILQ_FOREACH(a, &accounts, entry) {
		if (a->exitcode != 0)
			return (a->exitcode);
		if (a->polls == 0)
			return (EXIT_TEMPFAIL);		/* never ran */
	}
	return (0);
}

void
accounts_free(void)
{
	struct account	*a;

	while ((a = TAILQ_FIRST(&accounts)) != NULL)
		account_free(a);
	config_free(current);
	current = NULL;
}

static void
account_schedule(struct account *a, long seconds)
{
	account_schedule_ms(a, seconds * 1000);
}

static void
account_schedule_ms(struct account *a, long ms)
{
	struct timeval	tv = { ms / 1000, (ms % 1000) * 1000 };

	a->next_poll = time(NULL) + (ms + 999) / 1000;
	evtimer_add(a->timer, &tv);
}

static void
account_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct account	*a = arg;

	if (stopping || a->session != NULL || a->queued || a->removed)
		return;
	/* OAuth2: nothing to try until maild --authorize (or SIGHUP). */
	if (mode == ACCOUNTS_DAEMON && oauth2_needs_authorization(a->ac)) {
		account_schedule(a, a->ac->poll_interval);
		return;
	}
	if (active >= current->max_connections) {
		a->queued = 1;
		TAILQ_INSERT_TAIL(&waitq, a, waiting);
		return;
	}
	account_run(a);
}

/* Start a session for a. */
static void
account_run(struct account *a)
{
	char	*cause = NULL;

	active++;
	a->started = now_mono();
	a->last_poll = time(NULL);
	if (a->ctx == NULL && a->ac->tls != TLS_NONE &&
	    (a->ctx = tls_ctx_new(a->ac, &cause)) == NULL) {
		struct session_result	r;

		memset(&r, 0, sizeof r);
		r.exitcode = EXIT_CONFIG;
		r.error = cause;
		r.stage = "init";
		account_done_cb(&r, a);
		free(cause);
		return;
	}
	log_debug("account=%s polling %s:%d", a->ac->name, a->ac->host,
	    a->ac->port);
	a->session = session_start(env, a->conf, a->ac, a->ctx,
	    mode == ACCOUNTS_CHECK ? SESSION_CHECK : SESSION_FETCH,
	    a->nopipelining, account_done_cb, a);
}

/* Log how a poll went, in one key=value line (and a word on what stays). */
static void
account_log(struct account *a, const struct session_result *r, long next)
{
	double	secs = now_mono() - a->started;
	char	tail[96] = "", left[32] = "";

	if (r->left > 0)
		snprintf(left, sizeof left, " left=%u", r->left);
	if (mode == ACCOUNTS_DAEMON && !stopping && !a->removed)
		snprintf(tail, sizeof tail, " next=%lds%s", (next + 500) / 1000,
		    left);
	else
		snprintf(tail, sizeof tail, "%s", left);
	if (r->error == NULL)
		log_info("account=%s fetched=%u bytes=%llu deleted=%u "
		    "seconds=%.1f%s", a->ac->name, r->fetched,
		    (unsigned long long)r->bytes, r->deleted, secs, tail);
	else if (r->stopped || (r->resp_codes & (RESP_IN_USE | RESP_SYS_TEMP |
	    RESP_LOGIN_DELAY)))
		/* Stopped on purpose, or the server is busy: no alarm. */
		log_info("account=%s fetched=%u bytes=%llu deleted=%u "
		    "seconds=%.1f %s=\"%s\"%s", a->ac->name, r->fetched,
		    (unsigned long long)r->bytes, r->deleted, secs,
		    r->stopped ? "stopped" : "busy", r->error, tail);
	else
		log_warnx("account=%s fetched=%u bytes=%llu deleted=%u "
		    "seconds=%.1f error=\"%s\"%s", a->ac->name, r->fetched,
		    (unsigned long long)r->bytes, r->deleted, secs, r->error,
		    tail);
	if (r->left > 0 && (r->stopped || r->error != NULL))
		log_info("account=%s %u new message%s left on the server for "
		    "the next poll", a->ac->name, r->left, r->left == 1 ? "" :
		    "s");
	/* One line per poll, a warning when there are more than before. */
	if (r->too_big > 0 && r->too_big > r->too_big_before)
		log_warnx("account=%s %u message%s over max-size (%llu bytes) "
		    "stay%s on the server, the largest %llu bytes; raise "
		    "max-size to fetch %s", a->ac->name, r->too_big,
		    r->too_big == 1 ? "" : "s",
		    (unsigned long long)a->ac->max_size,
		    r->too_big == 1 ? "s" : "",
		    (unsigned long long)r->too_big_max,
		    r->too_big == 1 ? "it" : "them");
	else if (r->too_big > 0)
		log_info("account=%s %u message%s over max-size stay%s on the "
		    "server", a->ac->name, r->too_big, r->too_big == 1 ? "" :
		    "s", r->too_big == 1 ? "s" : "");
}

static void
account_done_cb(struct session_result *r, void *arg)
{
	struct account	*a = arg, *b;
	long		 next;

	a->session = NULL;
	active--;
	a->polls++;
	a->last_fetched = r->fetched;
	a->fetched_total += r->fetched;
	/* Stopped on purpose is neither a success nor a failure. */
	if (!r->stopped) {
		a->exitcode = r->exitcode;
		free(a->last_error);
		a->last_error = r->error != NULL ? xstrdup(r->error) : NULL;
		if (r->exitcode == 0)
			a->last_success = time(NULL);
		if (r->exitcode == EXIT_NOPERM)
			oauth2_token_refused(a->ac);
	}
	next = account_next_delay_ms(a, r);
	if (a->next_conf != NULL && a->next_ac != NULL &&
	    !config_account_equal(a->conf, a->ac, a->next_conf, a->next_ac))
		next = 0;		/* changed: it restarts at once */
	if (mode == ACCOUNTS_CHECK)
		account_report_check(a, r);
	else
		account_log(a, r, next);

	if (r->nopipelining && !a->nopipelining) {
		a->nopipelining = 1;
		log_warnx("account=%s the server mishandled pipelined commands;"
		    " using one command at a time from now on", a->ac->name);
		if (mode == ACCOUNTS_ONCE && !a->retried && !stopping) {
			a->retried = 1;
			a->polls--;
			next = 0;
		}
	}
	if (a->removed)
		account_free(a);
	else if (a->next_conf != NULL && a->next_ac != NULL && (a->readded ||
	    !config_account_equal(a->conf, a->ac, a->next_conf, a->next_ac))) {
		a->readded = 0;
		account_switch(a);
	}
	else {
		if (a->next_conf != NULL) {
			config_free(a->conf);
			a->conf = a->next_conf;
			a->ac = a->next_ac;
			a->next_conf = NULL;
			a->next_ac = NULL;
		}
		if (!stopping && (mode == ACCOUNTS_DAEMON || next == 0))
			account_schedule_ms(a, next);
	}

	/* Hand the slot to the next account in line. */
	while (!stopping && active < current->max_connections &&
	    (b = TAILQ_FIRST(&waitq)) != NULL) {
		TAILQ_REMOVE(&waitq, b, waiting);
		b->queued = 0;
		account_run(b);
	}
	accounts_write_status();
	account_check_finished();
}

/*
 * When to poll next: after poll-interval, or after a failure later and
 * later (doubling, with jitter, capped), so that a broken account does
 * not hammer its server; a refused login backs off faster.  Never sooner
 * than the server's LOGIN-DELAY allows.
 */
static long
account_next_delay_ms(struct account *a, const struct session_result *r)
{
	long		base = a->ac->poll_interval * 1000L, cap, delay;
	int		k;
	uint32_t	rnd;

	if (r->login_delay > 0)
		a->login_delay = r->login_delay;
	if (r->stopped)
		delay = base;
	else if (r->exitcode == 0) {
		a->failures = 0;
		delay = base;
	} else {
		a->failures++;
		k = a->failures;
		if (r->exitcode == EXIT_NOPERM ||
		    (r->resp_codes & (RESP_AUTH | RESP_SYS_PERM)))
			k += 2;
		cap = base * 16 > BACKOFF_CAP * 1000L ? base * 16 :
		    BACKOFF_CAP * 1000L;
		delay = base;
		while (--k > 0 && delay < cap)
			delay *= 2;
		if (delay > cap)
			delay = cap;
		/* +-10%, so that accounts failing together spread out. */
		random_bytes(&rnd, sizeof rnd);
		delay += delay * ((long)(rnd % 2001) - 1000) / 10000;
	}
	if (delay < a->login_delay * 1000L)
		delay = a->login_delay * 1000L;
	return (delay < 1000 ? 1000 : delay);
}

/* In --once/--check mode, or when stopping, leave the loop when done. */
static void
account_check_finished(void)
{
	struct account	*a;

	if (mode == ACCOUNTS_DAEMON && !stopping)
		return;
	if (active > 0 || !TAILQ_EMPTY(&waitq))
		return;
	TAILQ_FOREACH(a, &accounts, entry) {
		if (!stopping && evtimer_pending(a->timer, NULL))
			return;
	}
	event_base_loopexit(env->base, NULL);
}

/* --check: what worked and what did not, for a human. */
static void
account_report_check(struct account *a, const struct session_result *r)
{
	const char	*stage = r->stage != NULL ? r->stage : "?";
	int		 reached_tls, logged_in;

	printf("account \"%s\": %s@%s port %d\n", a->ac->name, a->ac->user,
	    a->ac->host, a->ac->port);
	if (r->peer[0] != '\0')
		printf("  connect       ok      %s\n", r->peer);
	reached_tls = r->tls[0] != '\0';
	if (reached_tls)
		printf("  tls           ok      %s, certificate %s\n", r->tls,
		    a->ac->npins > 0 ? "matches tls-fingerprint" : "verified");
	else if (a->ac->tls == TLS_NONE && r->peer[0] != '\0')
		printf("  tls           NONE    (tls = none: not encrypted)\n");
	if (r->capa[0] != '\0')
		printf("  capabilities          %s\n", r->capa);
	logged_in = r->login != NULL;
	if (logged_in)
		printf("  login         ok      %s\n", r->login);
	if (r->exitcode == 0)
		printf("  mailbox       ok      %llu message%s, %llu bytes\n",
		    (unsigned long long)r->messages, r->messages == 1 ? "" :
		    "s", (unsigned long long)r->octets);
	else
		printf("  %-13s FAILED  %s\n", stage, r->error != NULL ?
		    r->error : "?");
	if (check_account_report(a->conf, a->ac) == -1 && a->exitcode == 0)
		a->exitcode = EXIT_IOERR;
	fflush(stdout);
}

/* Times in the status file: UTC, ISO 8601; "-" for never. */
static const char *
status_time(time_t t, char *buf, size_t size)
{
	struct tm	tm;

	if (t == 0)
		return ("-");
	gmtime_r(&t, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
	return (buf);
}

/* Is the status file at path the one of a daemon that still runs? */
static int
status_of_running_daemon(const char *path)
{
	FILE	*f;
	char	 line[256];
	long	 pid;
	int	 r = 0;

	if ((f = fopen(path, "re")) == NULL)
		return (0);
	while (fgets(line, sizeof line, f) != NULL) {
		if (strncmp(line, "pid=", 4) != 0)
			continue;
		pid = strtol(line + 4, NULL, 10);
		r = strstr(line, " mode=daemon ") != NULL && pid > 0 &&
		    pid != (long)getpid() && kill((pid_t)pid, 0) == 0;
		break;
	}
	fclose(f);
	return (r);
}

/*
 * Rewrite <state-dir>/maild.status (atomically) and tell systemd a
 * one-line summary: what "maild --status" shows.  A --once run leaves
 * alone the file of a daemon that is running.
 */
static void
accounts_write_status(void)
{
	struct account	*a;
	char		 path[PATH_MAX], tmp[PATH_MAX], t1[32], t2[32], t3[32];
	char		 esc[LOG_ESCAPE_MAX], token[64];
	time_t		 last = 0;
	FILE		*f;
	int		 fd, n = 0, failing = 0;

	if (mode == ACCOUNTS_CHECK)
		return;
	TAILQ_FOREACH(a, &accounts, entry) {
		n++;
		if (a->exitcode != 0 && a->polls > 0)
			failing++;
		if (a->last_poll > last)
			last = a->last_poll;
	}
	sdnotify("STATUS=%d account%s, last poll %s, %d failing", n,
	    n == 1 ? "" : "s", status_time(last, t1, sizeof t1), failing);

	if ((size_t)snprintf(path, sizeof path, "%s/maild.status",
	    current->state_dir) >= sizeof path - 8)
		return;
	snprintf(tmp, sizeof tmp, "%.*s.XXXXXX", (int)(sizeof tmp - 8), path);
	if (mode == ACCOUNTS_ONCE && status_of_running_daemon(path))
		return;
	if (mkdir_p(current->state_dir, 0700) == -1 ||
	    (fd = mkstemp(tmp)) == -1)
		return;
	if ((f = fdopen(fd, "w")) == NULL) {
		close(fd);
		unlink(tmp);
		return;
	}
	fprintf(f, "# maild status, see maild(8); times are UTC\n"
	    "pid=%ld mode=%s written=%s\n", (long)getpid(),
	    mode == ACCOUNTS_DAEMON ? "daemon" : "once",
	    status_time(time(NULL), t1, sizeof t1));
	TAILQ_FOREACH(a, &accounts, entry) {
		fprintf(f, "account=%s state=%s last-poll=%s last-success=%s "
		    "next-poll=%s fetched=%u fetched-total=%llu failures=%d",
		    a->ac->name, a->session != NULL ? "polling" :
		    oauth2_needs_authorization(a->ac) ? "needs-authorization" :
		    a->polls == 0 ? "waiting" : a->exitcode == 0 ? "ok" :
		    "failing", status_time(a->last_poll, t1, sizeof t1),
		    status_time(a->last_success, t2, sizeof t2),
		    mode == ACCOUNTS_DAEMON && !stopping ?
		    status_time(a->next_poll, t3, sizeof t3) : "-",
		    a->last_fetched, a->fetched_total, a->failures);
		oauth2_status(a->ac, token, sizeof token);
		fputs(token, f);
		if (a->last_error != NULL)
			fprintf(f, " error=\"%s\"", log_escape(esc, sizeof esc,
			    a->last_error, strlen(a->last_error)));
		fputc('\n', f);
	}
	if (fflush(f) == EOF || ferror(f)) {
		fclose(f);
		unlink(tmp);
		return;
	}
	fclose(f);
	if (rename(tmp, path) == -1)
		unlink(tmp);
}
