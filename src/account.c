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
 * sessions at once; at most max-connections sessions run together, at
 * most max-connections-per-host to one server, and the others wait in
 * line (an account whose server is at its limit lets the next one in
 * line pass).  One account failing never holds up another: a server that
 * swallows packets costs only its own accounts their timeouts, and only
 * max-connections-per-host slots meanwhile.  After failures an account
 * is polled less and less often (backoff).
 *
 * A session waiting in IMAP IDLE gives its slot back while it waits (it
 * may wait for days: the accounts in line would never be polled) and
 * takes it again when news makes it work, even beyond the limits then,
 * since its connection is open already.
 *
 * Many accounts starting together (more than max-connections) have their
 * first polls spread over their poll interval, and each next poll counts
 * from when the previous one started, so the polls stay spread instead
 * of queueing up together at every interval.
 *
 * A reload (SIGHUP) matches the new configuration's accounts with the
 * running ones by name: unchanged accounts keep their schedule and their
 * session, removed ones finish what is in flight and go, changed ones
 * finish and start again with the new settings, new ones start now.
 * After every poll, the status file in the state directory is rewritten
 * (status.c says what goes into it), at most every millisecond per
 * account, and the metrics hear of it (metrics.c).
 */

#include "config.h"

#include <sys/queue.h>

#include <strings.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

/*
 * A server (host and port) that accounts poll, and its sessions: at most
 * max-connections-per-host.  It lives while an account waits for it or
 * polls it.
 */
struct host {
	LIST_ENTRY(host)	 entry;
	char			*name;
	int			 port;
	int			 refs;
	int			 active;
};
LIST_HEAD(host_list, host);

struct account {
	TAILQ_ENTRY(account)	 entry;
	TAILQ_ENTRY(account)	 waiting;
	struct host		*host;		/* while waiting or polling */
	int			 fresh;		/* added by this reload */
	struct config		*conf;		/* a reference */
	const struct account_conf *ac;		/* inside conf */
	struct config		*next_conf;	/* to switch to (reload) */
	const struct account_conf *next_ac;
	size_t			 slot;		/* IMAP: which folders (below) */
	int			 removed;	/* gone from the config */
	int			 readded;	/* and back, while it ran */
	SSL_CTX			*ctx;
	struct session		*session;
	struct event		*timer;
	int			 queued;
	int			 idle_free;	/* idling: its slot given back */
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
	/* For the metrics: totals since maild started, the last poll's. */
	unsigned long long	 bytes_total;
	unsigned long long	 deleted_total;
	unsigned long long	 errors[ERRC_MAX];
	struct poll_hist	 durations;
	unsigned		 waiting_msgs;
	long			 records;
	/* on-new-mail: the one running, and what waits for the next. */
	struct command		*hook;
	char			*hook_files;
	size_t			 hook_len;
	unsigned		 hook_count;
};
TAILQ_HEAD(account_list, account);

static struct account_list	 accounts = TAILQ_HEAD_INITIALIZER(accounts);
static struct account_list	 waitq = TAILQ_HEAD_INITIALIZER(waitq);
static struct host_list		 hosts = LIST_HEAD_INITIALIZER(hosts);
static size_t			 naccounts;	/* in accounts */
static int			 nqueued;	/* in waitq */
static struct event		*status_ev;	/* a status write to come */
static double			 status_last;	/* the last one */
static const struct session_env	*env;
static struct config		*current;
static int			 mode;		/* ACCOUNTS_* */
static int			 stopping;
static int			 active;
static int			 idling;	/* sessions in IDLE, not in active */
static int			 hooks;		/* on-new-mail running */

static void	account_timer_cb(evutil_socket_t, short, void *);
static void	account_done_cb(struct session_result *, int, void *);
static void	account_idle_cb(int, void *);
static void	account_run(struct account *);
static void	account_schedule(struct account *, long);
static void	account_schedule_ms(struct account *, long);
static void	account_free(struct account *);
static void	account_check_finished(void);
static long	account_next_delay_ms(struct account *,
		    const struct session_result *);
static long	account_keep_phase(const struct account *, long);
static void	account_count(struct account *, const struct session_result *);
static void	accounts_write_status(void);
static void	status_write_now(void);
static void	accounts_dequeue(void);

/*
 * How many sessions an account has at once: an IMAP account that waits
 * for news (IDLE) in the daemon needs one per folder, within
 * max-connections; the last one polls the folders beyond that.  Any
 * other account has one.
 */
static size_t
account_slots(const struct config *conf, const struct account_conf *ac)
{
	size_t	max = (size_t)conf->max_connections;

	if (mode != ACCOUNTS_DAEMON || ac->protocol != PROTOCOL_IMAP ||
	    ac->idle == IDLE_NO || ac->nfolders < 2)
		return (1);
	if ((size_t)conf->max_connections_per_host < max)
		max = (size_t)conf->max_connections_per_host;
	return (ac->nfolders < max ? ac->nfolders : max);
}

/* The server of an account, with a reference. */
static struct host *
host_get(const struct account_conf *ac)
{
	struct host	*h;

	LIST_FOREACH(h, &hosts, entry) {
		if (h->port == ac->port && strcasecmp(h->name, ac->host) == 0) {
			h->refs++;
			return (h);
		}
	}
	h = xcalloc(1, sizeof *h);
	h->name = xstrdup(ac->host);
	h->port = ac->port;
	h->refs = 1;
	LIST_INSERT_HEAD(&hosts, h, entry);
	return (h);
}

static void
host_put(struct host *h)
{
	if (--h->refs > 0)
		return;
	LIST_REMOVE(h, entry);
	free(h->name);
	free(h);
}

/* Out of the line of accounts waiting for a connection. */
static void
account_dequeue(struct account *a)
{
	TAILQ_REMOVE(&waitq, a, waiting);
	a->queued = 0;
	nqueued--;
}

static struct account *
account_new(struct config *conf, const struct account_conf *ac, size_t slot)
{
	struct account	*a;

	a = xcalloc(1, sizeof *a);
	a->conf = config_ref(conf);
	a->ac = ac;
	a->slot = slot;
	a->records = -1;
	a->timer = evtimer_new(env->base, account_timer_cb, a);
	TAILQ_INSERT_TAIL(&accounts, a, entry);
	naccounts++;
	return (a);
}

static void
account_free(struct account *a)
{
	TAILQ_REMOVE(&accounts, a, entry);
	naccounts--;
	if (a->queued)
		account_dequeue(a);
	if (a->host != NULL)
		host_put(a->host);
	event_free(a->timer);
	if (a->hook != NULL) {
		command_cancel(a->hook);
		hooks--;
	}
	free(a->hook_files);
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

	size_t	n, j;

	env = e;
	mode = m;
	current = config_ref(conf);
	for (i = 0; i < conf->naccounts; i++) {
		n = account_slots(conf, &conf->accounts[i]);
		for (j = 0; j < n; j++)
			account_new(conf, &conf->accounts[i], j);
	}
}

/* Does the account wait for news (IMAP IDLE, in the daemon)? */
static int
account_pushes(const struct account_conf *ac)
{
	return (mode == ACCOUNTS_DAEMON && ac->protocol == PROTOCOL_IMAP &&
	    ac->idle != IDLE_NO);
}

/*
 * When the ith of n accounts starting together first polls: all at once
 * if max-connections lets them (or not in the daemon), else spread evenly
 * over the poll interval.  An account that waits for news in IDLE starts
 * at once, in line for a slot: it holds one only until it idles.
 */
static long
account_spread_ms(const struct account *a, const struct config *conf,
    size_t i, size_t n)
{
	if (mode != ACCOUNTS_DAEMON || n <= (size_t)conf->max_connections ||
	    account_pushes(a->ac))
		return (0);
	return ((long)((double)a->ac->poll_interval * 1000.0 * (double)i /
	    (double)n));
}

/* Start polling: every account now, or spread out (above). */
void
accounts_start(void)
{
	struct account	*a;
	size_t		 i = 0;

	TAILQ_FOREACH(a, &accounts, entry)
		account_schedule_ms(a, account_spread_ms(a, current, i++,
		    naccounts));
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
		if (a->session != NULL)
			session_poll_now(a->session);
		else if (!a->queued && !a->removed)
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
	size_t				 i, nfresh = 0;
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
		/* Fewer folders to wait in: the extra sessions go. */
		if (nac != NULL && a->slot >= account_slots(conf, nac))
			nac = NULL;
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
		size_t	slot, n = account_slots(conf, &conf->accounts[i]);

		for (slot = 0; slot < n; slot++) {
			TAILQ_FOREACH(a, &accounts, entry) {
				if (a->slot == slot && strcmp(a->ac->name,
				    conf->accounts[i].name) == 0)
					break;
			}
			if (a != NULL && a->removed) {
				/*
				 * Back before its old session ended: that session
				 * keeps the account (and its lock) until it ends;
				 * then the account starts again, as a changed one
				 * does.
				 */
				log_info("account=%s added to the configuration "
				    "again; it starts when its previous session "
				    "has ended", a->ac->name);
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
			if (slot == 0) {
				log_info("account=%s added to the configuration",
				    conf->accounts[i].name);
				changes++;
			}
			account_new(conf, &conf->accounts[i], slot)->fresh = 1;
			nfresh++;
		}
	}
	/* Many new accounts at once (a file of include-dir): spread. */
	i = 0;
	TAILQ_FOREACH(a, &accounts, entry) {
		if (!a->fresh)
			continue;
		a->fresh = 0;
		account_schedule_ms(a, account_spread_ms(a, conf, i++, nfresh));
	}
	config_free(current);
	current = config_ref(conf);
	accounts_dequeue();	/* the limits may have grown */
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
		/* A daemon's stop waits for no notification; --once,
		   whose caller may want the hook's work done, does. */
		if (mode == ACCOUNTS_DAEMON && a->hook != NULL) {
			log_info("account=%s stopping: on-new-mail killed "
			    "before it finished", a->ac->name);
			command_cancel(a->hook);
			a->hook = NULL;
			hooks--;
		}
		if (a->queued) {
			account_dequeue(a);
			host_put(a->host);
			a->host = NULL;
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

	if (status_ev != NULL) {
		/* --once: the last poll's status is still to be written. */
		if (evtimer_pending(status_ev, NULL))
			status_write_now();
		event_free(status_ev);
		status_ev = NULL;
	}
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
	if (a->host == NULL)
		a->host = host_get(a->ac);
	if (active >= current->max_connections ||
	    a->host->active >= current->max_connections_per_host) {
		a->queued = 1;
		nqueued++;
		TAILQ_INSERT_TAIL(&waitq, a, waiting);
		return;
	}
	account_run(a);
}

/*
 * Hand free connections to the accounts in line, in their order, passing
 * over those whose server has max-connections-per-host already.  (A run
 * may end at once and come back here: start again from the head.)
 */
static void
accounts_dequeue(void)
{
	struct account	*b;

again:
	TAILQ_FOREACH(b, &waitq, waiting) {
		if (stopping || active >= current->max_connections)
			return;
		if (b->host->active >= current->max_connections_per_host)
			continue;
		account_dequeue(b);
		account_run(b);
		goto again;
	}
}

/* Start a session for a. */
static void
account_run(struct account *a)
{
	struct session_opts	 opts;
	struct host		*h;
	char			*cause = NULL;
	size_t			 n;

	/* Its settings may have changed while it waited (reload). */
	if (a->host->port != a->ac->port ||
	    strcasecmp(a->host->name, a->ac->host) != 0) {
		h = host_get(a->ac);
		host_put(a->host);
		a->host = h;
	}
	active++;
	a->host->active++;
	a->started = now_mono();
	a->last_poll = time(NULL);
	if (a->ctx == NULL && a->ac->tls != TLS_NONE &&
	    (a->ctx = tls_ctx_get(a->ac, &cause)) == NULL) {
		struct session_result	r;

		memset(&r, 0, sizeof r);
		r.exitcode = EXIT_CONFIG;
		r.errclass = ERRC_CONFIG;
		r.records = -1;
		r.error = cause;
		r.stage = "init";
		account_done_cb(&r, 1, a);
		free(cause);
		return;
	}
	log_debug("account=%s polling %s:%d", a->ac->name, a->ac->host,
	    a->ac->port);
	memset(&opts, 0, sizeof opts);
	opts.mode = mode == ACCOUNTS_CHECK ? SESSION_CHECK : SESSION_FETCH;
	/* With several sessions: one folder each, the last the rest. */
	if ((n = account_slots(a->conf, a->ac)) > 1) {
		opts.first_folder = a->slot;
		opts.nfolders = a->slot + 1 < n ? 1 : a->ac->nfolders - a->slot;
	}
	opts.nopipelining = a->nopipelining;
	/* IMAP in the daemon: a session of one folder waits there. */
	opts.idle = account_pushes(a->ac);
	opts.idle_cb = account_idle_cb;
	a->session = session_start(env, a->conf, a->ac, a->ctx, &opts,
	    account_done_cb, a);
}

/*
 * Log how a poll went, in one key=value line (and a word on what stays).
 * next= is the delay until the next poll, counted from this one's start.
 */
static void
account_log(struct account *a, const struct session_result *r, long next)
{
	double	secs = now_mono() - a->started;
	char	tail[96] = "", left[32] = "";

	if (r->left > 0)
		snprintf(left, sizeof left, " left=%u", r->left);
	if (mode == ACCOUNTS_DAEMON && !stopping && !a->removed && next >= 0)
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

static void	account_hook_start(struct account *);

static void
account_hook_done(int status, const char *output, void *arg)
{
	struct account	*a = arg;
	char		 why[128], esc[LOG_ESCAPE_MAX];
	size_t		 n = strlen(output);

	a->hook = NULL;
	hooks--;
	while (n > 0 && output[n - 1] == '\n')
		n--;
	if (status == 0)
		log_debug("account=%s on-new-mail done%s%s", a->ac->name,
		    n > 0 ? ": " : "", log_escape(esc, sizeof esc, output, n));
	else
		/* Delivery is done already: this changes nothing of it. */
		log_warnx("account=%s on-new-mail %s%s%s", a->ac->name,
		    command_status(status, why, sizeof why), n > 0 ? ": " : "",
		    log_escape(esc, sizeof esc, output, n));
	if (a->hook_count > 0)
		account_hook_start(a);
	account_check_finished();
}

/* Run on-new-mail for what waits (one at a time per account). */
static void
account_hook_start(struct account *a)
{
	char	*vars[4], *cause = NULL;
	int	 i;

	if (stopping && mode == ACCOUNTS_DAEMON)
		return;		/* see accounts_stop() */
	xasprintf(&vars[0], "MAILD_ACCOUNT=%s", a->ac->name);
	xasprintf(&vars[1], "MAILD_COUNT=%u", a->hook_count);
	if (a->ac->deliver == DELIVER_MAILDIR)
		xasprintf(&vars[2], "MAILD_MAILDIR=%s", a->ac->maildir);
	else
		vars[2] = NULL;
	vars[3] = NULL;
	a->hook = command_run(env->base, a->ac->on_new_mail, vars,
	    a->hook_files, a->hook_len, -1, a->conf->timeout * 10,
	    account_hook_done, a, &cause);
	for (i = 0; i < 3; i++)
		free(vars[i]);
	free(a->hook_files);
	a->hook_files = NULL;
	a->hook_len = 0;
	a->hook_count = 0;
	if (a->hook == NULL) {
		log_warnx("account=%s cannot run on-new-mail: %s", a->ac->name,
		    cause);
		free(cause);
		return;
	}
	hooks++;
}

/*
 * After a poll that delivered something: run on-new-mail (once per poll,
 * never per message), or, if it still runs, when it has ended.
 */
static void
account_hook(struct account *a, const struct session_result *r)
{
	if (r->fetched == 0 || a->ac->on_new_mail == NULL ||
	    mode == ACCOUNTS_CHECK)
		return;
	if (r->new_files_len > 0) {
		a->hook_files = xreallocarray(a->hook_files, a->hook_len +
		    r->new_files_len, 1);
		memcpy(a->hook_files + a->hook_len, r->new_files,
		    r->new_files_len);
		a->hook_len += r->new_files_len;
	}
	a->hook_count += r->fetched;
	if (a->hook == NULL)
		account_hook_start(a);
}

/* What a poll adds to the account's figures (status, metrics). */
static void
account_count(struct account *a, const struct session_result *r)
{
	a->last_fetched = r->fetched;
	a->fetched_total += r->fetched;
	a->bytes_total += r->bytes;
	a->deleted_total += r->deleted;
	if (r->records >= 0)
		a->records = r->records;
	/* A poll that failed before the listing knows nothing of it. */
	if (r->error == NULL || r->left + r->too_big > 0)
		a->waiting_msgs = r->left + r->too_big;
}

/* A session that goes on (IMAP IDLE) fetched a round: log it. */
static void
account_cycle(struct account *a, const struct session_result *r)
{
	a->last_poll = time(NULL);
	a->last_success = a->last_poll;
	a->exitcode = 0;
	a->failures = 0;
	free(a->last_error);
	a->last_error = NULL;
	account_count(a, r);
	if (r->fetched > 0 || r->deleted > 0 || r->too_big > 0)
		account_log(a, r, -1);
	account_hook(a, r);
	a->started = now_mono();	/* the next round's time */
	accounts_write_status();
}

/* The session waits in IDLE (1), or works again (0): see the top. */
static void
account_idle_cb(int idle, void *arg)
{
	struct account	*a = arg;

	if (idle && !a->idle_free) {
		a->idle_free = 1;
		idling++;
		active--;
		a->host->active--;
		accounts_dequeue();
	} else if (!idle && a->idle_free) {
		a->idle_free = 0;
		idling--;
		active++;
		a->host->active++;
	}
}

static void
account_done_cb(struct session_result *r, int final, void *arg)
{
	struct account	*a = arg;
	long		 next;

	if (!final) {
		account_cycle(a, r);
		return;
	}
	a->session = NULL;
	if (a->idle_free) {
		a->idle_free = 0;
		idling--;
	} else {
		active--;
		a->host->active--;
	}
	host_put(a->host);
	a->host = NULL;
	a->polls++;
	account_count(a, r);
	/* Stopped on purpose is neither a success nor a failure. */
	if (!r->stopped) {
		a->exitcode = r->exitcode;
		free(a->last_error);
		a->last_error = r->error != NULL ? xstrdup(r->error) : NULL;
		if (r->exitcode == 0)
			a->last_success = time(NULL);
		else
			a->errors[r->errclass != ERRC_NONE ? r->errclass :
			    ERRC_PROTOCOL]++;
		if (r->exitcode == EXIT_NOPERM)
			oauth2_token_refused(a->ac);
		metrics_observe(&a->durations, now_mono() - a->started);
	}
	next = account_next_delay_ms(a, r);
	if (a->next_conf != NULL && a->next_ac != NULL &&
	    !config_account_equal(a->conf, a->ac, a->next_conf, a->next_ac))
		next = 0;		/* changed: it restarts at once */
	if (mode == ACCOUNTS_CHECK) {
		if (status_report_check(a->conf, a->ac, r) == -1 &&
		    a->exitcode == 0)
			a->exitcode = EXIT_IOERR;
	} else {
		account_log(a, r, next);
		account_hook(a, r);
	}

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
			account_schedule_ms(a, account_keep_phase(a, next));
	}

	/* Hand the slot to the next account in line. */
	accounts_dequeue();
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

/*
 * The next poll counts from when this one started, not from when it
 * ended, so that polls keep the spread of their start times however long
 * each takes.  A poll that took about its whole interval is followed by a
 * full one; LOGIN-DELAY counts from the end, to be safe.
 */
static long
account_keep_phase(const struct account *a, long delay)
{
	long	took = (long)((now_mono() - a->started) * 1000.0);

	if (mode != ACCOUNTS_DAEMON || delay - took < 1000)
		return (delay);
	if (delay - took < a->login_delay * 1000L)
		return (a->login_delay * 1000L);
	return (delay - took);
}

/* In --once/--check mode, or when stopping, leave the loop when done. */
static void
account_check_finished(void)
{
	struct account	*a;

	if (mode == ACCOUNTS_DAEMON && !stopping)
		return;
	if (active > 0 || !TAILQ_EMPTY(&waitq) || hooks > 0)
		return;
	TAILQ_FOREACH(a, &accounts, entry) {
		if (a->session != NULL)
			return;		/* one in IDLE is not in active */
		if (!stopping && evtimer_pending(a->timer, NULL))
			return;
	}
	event_base_loopexit(env->base, NULL);
}

/*
 * What account.c knows of every account (and IMAP folder session), for
 * the status file and the metrics; NULL in --check mode.  The names and
 * settings it points to are valid until the next reload.
 */
struct status_account *
accounts_status(size_t *np, struct status_totals *tot)
{
	struct account		*a;
	struct status_account	*sa, *x;

	*np = 0;
	if (tot != NULL) {
		tot->accounts = current != NULL ? current->naccounts : 0;
		tot->active = active + idling;
		tot->queued = nqueued;
	}
	if (mode == ACCOUNTS_CHECK)
		return (NULL);
	sa = xcalloc(naccounts ? naccounts : 1, sizeof *sa);
	TAILQ_FOREACH(a, &accounts, entry) {
		x = &sa[(*np)++];
		x->name = a->ac->name;
		x->ac = a->ac;
		x->state = a->session != NULL ? "polling" :
		    oauth2_needs_authorization(a->ac) ? "needs-authorization" :
		    a->polls == 0 ? "waiting" : a->exitcode == 0 ? "ok" :
		    "failing";
		x->failing = a->exitcode != 0 && a->polls > 0;
		x->last_poll = a->last_poll;
		x->last_success = a->last_success;
		if (mode == ACCOUNTS_DAEMON && !stopping)
			x->next_poll = a->next_poll;
		x->fetched = a->last_fetched;
		x->fetched_total = a->fetched_total;
		x->failures = a->failures;
		x->error = a->last_error;
		oauth2_status(a->ac, x->token, sizeof x->token);
		x->removed = a->removed;
		x->bytes_total = a->bytes_total;
		x->deleted_total = a->deleted_total;
		memcpy(x->errors, a->errors, sizeof x->errors);
		x->durations = a->durations;
		x->waiting = a->waiting_msgs;
		x->records = a->records;
		x->token_expires = oauth2_expires(a->ac);
		x->idle = a->session != NULL && session_idling(a->session);
	}
	return (sa);
}

/* Rewrite the status file and tell systemd (status.c). */
static void
status_write_now(void)
{
	struct status_account	*sa;
	size_t			 n;

	if ((sa = accounts_status(&n, NULL)) == NULL)
		return;
	status_write(current->state_dir, mode, sa, n);
	free(sa);
	status_last = now_mono();
}

static void
status_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	status_write_now();
}

/*
 * After every poll and every change of the accounts: the status file is
 * rewritten, and the metrics told.  A write costs a line per account:
 * with thousands of accounts polls end faster than that is worth, so a
 * write comes at most every millisecond per account (a few ms for a few
 * accounts; two seconds for 2000), the polls in between in one write.
 * --check has no status to tell.
 */
static void
accounts_write_status(void)
{
	struct timeval	tv;
	double		gap = (double)naccounts / 1000.0, wait;

	if (mode == ACCOUNTS_CHECK)
		return;
	metrics_changed();
	if (status_ev == NULL &&
	    (status_ev = evtimer_new(env->base, status_timer_cb, NULL)) == NULL)
		fatalx("evtimer_new failed");
	if (evtimer_pending(status_ev, NULL))
		return;
	wait = status_last + gap - now_mono();
	if (status_last == 0 || wait <= 0) {
		status_write_now();
		return;
	}
	tv.tv_sec = (time_t)wait;
	tv.tv_usec = (suseconds_t)((wait - (double)tv.tv_sec) * 1e6);
	evtimer_add(status_ev, &tv);
}
