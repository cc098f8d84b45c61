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
 * others wait in line.  One account failing never holds up another.
 */

#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include <openssl/ssl.h>

#include "maild.h"

struct account {
	const struct account_conf *ac;
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
};

/* Backoff after failures never waits longer than this (or 16 polls). */
#define BACKOFF_CAP	3600

static struct account	*accounts;
static size_t		 naccounts;
static const struct session_env *env;
static int		 once;
static int		 stopping;
static int		 active;
static struct account	**waitq;	/* accounts waiting for a slot */
static size_t		 nwait;

static void	account_timer_cb(evutil_socket_t, short, void *);
static void	account_done_cb(struct session_result *, void *);
static void	account_run(struct account *);
static void	account_schedule(struct account *, int);
static void	account_check_finished(void);
static long	account_next_delay(struct account *,
		    const struct session_result *);

/* Set up the accounts of the configuration in env. */
int
accounts_init(const struct session_env *e, int run_once, char **cause)
{
	size_t	i;

	env = e;
	once = run_once;
	naccounts = e->conf->naccounts;
	accounts = xcalloc(naccounts, sizeof *accounts);
	waitq = xcalloc(naccounts, sizeof *waitq);
	for (i = 0; i < naccounts; i++) {
		struct account	*a = &accounts[i];

		a->ac = &e->conf->accounts[i];
		a->timer = evtimer_new(e->base, account_timer_cb, a);
	}
	(void)cause;
	return (0);
}

/* Poll every account now. */
void
accounts_start(void)
{
	size_t	i;

	for (i = 0; i < naccounts; i++)
		account_schedule(&accounts[i], 0);
}

/* Poll now every account that is not already busy (SIGUSR1). */
void
accounts_poll_now(void)
{
	size_t	i;

	if (stopping)
		return;
	for (i = 0; i < naccounts; i++) {
		struct account	*a = &accounts[i];

		if (a->session == NULL && !a->queued)
			account_schedule(a, 0);
	}
}

/* Stop: no new sessions; running ones end at their next safe point. */
void
accounts_stop(void)
{
	size_t	i;

	stopping = 1;
	nwait = 0;
	for (i = 0; i < naccounts; i++) {
		struct account	*a = &accounts[i];

		evtimer_del(a->timer);
		a->queued = 0;
		if (a->session != NULL)
			session_stop(a->session);
	}
	account_check_finished();
}

/* --once: the exit status of the first account that failed, or 0. */
int
accounts_exitcode(void)
{
	size_t	i;

	for (i = 0; i < naccounts; i++) {
		if (accounts[i].exitcode != 0)
			return (accounts[i].exitcode);
		if (accounts[i].polls == 0)
			return (EXIT_TEMPFAIL);		/* never ran */
	}
	return (0);
}

void
accounts_free(void)
{
	size_t	i;

	for (i = 0; i < naccounts; i++) {
		event_free(accounts[i].timer);
		SSL_CTX_free(accounts[i].ctx);
	}
	free(accounts);
	free(waitq);
	accounts = NULL;
	naccounts = 0;
}

static void
account_schedule(struct account *a, int seconds)
{
	struct timeval	tv = { seconds, 0 };

	evtimer_add(a->timer, &tv);
}

static void
account_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct account	*a = arg;

	if (stopping || a->session != NULL || a->queued)
		return;
	if (active >= env->conf->max_connections) {
		a->queued = 1;
		waitq[nwait++] = a;
		return;
	}
	account_run(a);
}

/* Start a session for a. */
static void
account_run(struct account *a)
{
	char	*cause = NULL;

	if (a->ctx == NULL && (a->ctx = tls_ctx_new(a->ac, &cause)) == NULL) {
		struct session_result	r;

		memset(&r, 0, sizeof r);
		r.exitcode = EXIT_CONFIG;
		r.error = cause;
		a->started = now_mono();
		active++;
		account_done_cb(&r, a);
		free(cause);
		return;
	}
	active++;
	a->started = now_mono();
	log_debug("account=%s polling %s:%d", a->ac->name, a->ac->host,
	    a->ac->port);
	a->session = session_start(env, a->ac, a->ctx, a->nopipelining,
	    account_done_cb, a);
}

static void
account_done_cb(struct session_result *r, void *arg)
{
	struct account	*a = arg;
	double		 secs = now_mono() - a->started;

	long		 next;

	a->session = NULL;
	active--;
	a->polls++;
	a->exitcode = r->exitcode;
	next = account_next_delay(a, r);
	if (r->error == NULL)
		log_info("account=%s fetched=%u bytes=%llu deleted=%u "
		    "seconds=%.1f", a->ac->name, r->fetched,
		    (unsigned long long)r->bytes, r->deleted, secs);
	else if (r->resp_codes & (RESP_IN_USE | RESP_SYS_TEMP |
	    RESP_LOGIN_DELAY))
		/* The server is busy, not broken: no alarm. */
		log_info("account=%s fetched=%u bytes=%llu deleted=%u "
		    "seconds=%.1f busy=\"%s\" retry=%ld", a->ac->name,
		    r->fetched, (unsigned long long)r->bytes, r->deleted, secs,
		    r->error, next);
	else
		log_warnx("account=%s fetched=%u bytes=%llu deleted=%u "
		    "seconds=%.1f error=\"%s\" retry=%ld", a->ac->name,
		    r->fetched, (unsigned long long)r->bytes, r->deleted, secs,
		    r->error, next);

	if (r->nopipelining && !a->nopipelining) {
		a->nopipelining = 1;
		log_warnx("account=%s the server mishandled pipelined commands;"
		    " using one command at a time from now on", a->ac->name);
		if (once && !a->retried && !stopping) {
			a->retried = 1;
			a->polls--;
			account_schedule(a, 0);
			goto next;
		}
	}
	if (!once && !stopping)
		account_schedule(a, (int)next);

next:
	/* Hand the slot to the next account in line. */
	while (nwait > 0 && active < env->conf->max_connections && !stopping) {
		struct account	*b = waitq[0];

		memmove(waitq, waitq + 1, --nwait * sizeof *waitq);
		b->queued = 0;
		account_run(b);
	}
	account_check_finished();
}

/*
 * When to poll next: after poll-interval, or after a failure later and
 * later (doubling, with jitter, capped), so that a broken account does
 * not hammer its server; a refused login backs off faster.  Never sooner
 * than the server's LOGIN-DELAY allows.
 */
static long
account_next_delay(struct account *a, const struct session_result *r)
{
	long		base = a->ac->poll_interval, cap, delay;
	int		k;
	uint32_t	rnd;

	if (r->login_delay > 0)
		a->login_delay = r->login_delay;
	if (r->exitcode == 0) {
		a->failures = 0;
		delay = base;
	} else {
		a->failures++;
		k = a->failures;
		if (r->exitcode == EXIT_NOPERM ||
		    (r->resp_codes & (RESP_AUTH | RESP_SYS_PERM)))
			k += 2;
		cap = base * 16 > BACKOFF_CAP ? base * 16 : BACKOFF_CAP;
		delay = base;
		while (--k > 0 && delay < cap)
			delay *= 2;
		if (delay > cap)
			delay = cap;
		/* +-10%, so that accounts failing together spread out. */
		random_bytes(&rnd, sizeof rnd);
		delay += (long)((double)delay * ((rnd % 2001) - 1000) / 10000);
	}
	if (delay < a->login_delay)
		delay = a->login_delay;
	return (delay < 1 ? 1 : delay);
}

/* In --once mode, or when stopping, leave the loop when all are done. */
static void
account_check_finished(void)
{
	size_t	i;

	if (!once && !stopping)
		return;
	if (active > 0 || nwait > 0)
		return;
	for (i = 0; i < naccounts && !stopping; i++) {
		if (evtimer_pending(accounts[i].timer, NULL))
			return;
	}
	event_base_loopexit(env->base, NULL);
}
