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
 * mda.c: deliver = mda, a destination (see dest.c) that runs the account's
 * mda command once per message (dovecot-lda, procmail, maildrop...), the
 * message on its standard input.  Exit status 0 is delivered, 75
 * (EX_TEMPFAIL) refused for now, anything else (or a signal) refused,
 * with what the command printed in the log; one that takes longer than
 * its time limit is killed with its process group.
 *
 * One command runs at a time per command line, for all the accounts
 * that have the same one, in the order the messages were handed over:
 * an MDA such as dovecot-lda keeps a duplicate database per user that
 * deliveries running side by side may each overwrite, and the Sieve
 * duplicate test that makes a crash harmless (see deliver.c) needs it
 * whole.  Accounts with different command lines run side by side.
 */

#include "config.h"

#include <sys/queue.h>
#include <sys/wait.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "maild.h"

/* An MDA gets this many times the timeout to take one message. */
#define MDA_TIMEOUT_FACTOR	10

struct mda_runner;

/* An account's handle on the runner of its command. */
struct mda {
	struct mda_runner	*r;
	struct dest		*dest;
	char			*env[3];	/* MAILD_ACCOUNT, MAILD_USER */
};

struct mda_job {
	TAILQ_ENTRY(mda_job)	 entry;
	struct mda		*m;
	int			 fd;
	char			*header;
	dest_done_cb		 cb;
	void			*arg;
};

/* The runner of one command line: one message at a time. */
struct mda_runner {
	LIST_ENTRY(mda_runner)	 entry;
	char			*cmd;
	int			 refs;
	struct event_base	*base;
	int			 timeout;
	struct command		*running;
	struct mda_job		*current;
	TAILQ_HEAD(, mda_job)	 queue;
};
static LIST_HEAD(, mda_runner) runners = LIST_HEAD_INITIALIZER(runners);

static void	mda_next(struct mda_runner *);

struct mda *
mda_open(const struct session_env *env, const struct account_conf *ac,
    struct dest *dest, int timeout, char **cause)
{
	struct mda_runner	*r;
	struct mda		*m;

	LIST_FOREACH(r, &runners, entry) {
		if (strcmp(r->cmd, ac->mda) == 0)
			break;
	}
	if (r == NULL) {
		r = xcalloc(1, sizeof *r);
		r->cmd = xstrdup(ac->mda);
		r->base = env->base;
		r->timeout = timeout * MDA_TIMEOUT_FACTOR;
		TAILQ_INIT(&r->queue);
		LIST_INSERT_HEAD(&runners, r, entry);
	}
	r->refs++;
	m = xcalloc(1, sizeof *m);
	m->r = r;
	m->dest = dest;
	xasprintf(&m->env[0], "MAILD_ACCOUNT=%s", ac->name);
	xasprintf(&m->env[1], "MAILD_USER=%s", ac->user);
	return (m);
}

/* Deliver the message in fd (header first); cb answers later. */
void
mda_send(struct mda *m, int fd, const char *header, dest_done_cb cb,
    void *arg)
{
	struct mda_job	*j;

	j = xcalloc(1, sizeof *j);
	j->m = m;
	j->fd = fd;
	j->header = xstrdup(header);
	j->cb = cb;
	j->arg = arg;
	TAILQ_INSERT_TAIL(&m->r->queue, j, entry);
	if (m->r->running == NULL)
		mda_next(m->r);
}

static void
mda_job_free(struct mda_job *j)
{
	if (j->fd != -1)
		close(j->fd);
	free(j->header);
	free(j);
}

static void
mda_done_cb(int status, const char *output, void *arg)
{
	struct mda_runner	*r = arg;
	struct mda_job		*j = r->current;
	dest_done_cb		 cb = j->cb;
	void			*cbarg = j->arg;
	char			 why[128], *reply;
	size_t			 n;
	int			 st;

	r->running = NULL;
	r->current = NULL;
	if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
		st = DEST_OK;
	else if (status == -1 || (WIFEXITED(status) &&
	    WEXITSTATUS(status) == 75))
		st = DEST_TEMP;
	else
		st = DEST_PERM;
	/* Its words, on one line, after how it ended. */
	n = strlen(output);
	while (n > 0 && (output[n - 1] == '\n' || output[n - 1] == '\r'))
		n--;
	xasprintf(&reply, "mda %s%s%.*s", command_status(status, why,
	    sizeof why), n > 0 ? ": " : "", (int)n, output);
	mda_job_free(j);
	mda_next(r);
	/* Last, from the command's own event: r may be gone after it. */
	cb(st, reply, cbarg);
	free(reply);
}

/* Start the next message's MDA. */
static void
mda_next(struct mda_runner *r)
{
	struct mda_job	*j;
	char		*cause = NULL;

	while (r->running == NULL && (j = TAILQ_FIRST(&r->queue)) != NULL) {
		TAILQ_REMOVE(&r->queue, j, entry);
		r->current = j;
		r->running = command_run(r->base, r->cmd, j->m->env,
		    j->header, strlen(j->header), j->fd, r->timeout,
		    mda_done_cb, r, &cause);
		j->fd = -1;	/* the command has it */
		if (r->running != NULL)
			return;
		r->current = NULL;
		/* Not even started: refused for now, from a fresh event. */
		dest_answer_later(j->m->dest, j->cb, j->arg, DEST_TEMP, cause);
		free(cause);
		cause = NULL;
		mda_job_free(j);
	}
}

/*
 * An account lets go: its waiting messages are dropped and its running
 * MDA, if any, is killed; no callback of its runs any more.  The other
 * accounts' messages go on.
 */
void
mda_close(struct mda *m)
{
	struct mda_runner	*r;
	struct mda_job		*j, *next;

	if (m == NULL)
		return;
	r = m->r;
	for (j = TAILQ_FIRST(&r->queue); j != NULL; j = next) {
		next = TAILQ_NEXT(j, entry);
		if (j->m == m) {
			TAILQ_REMOVE(&r->queue, j, entry);
			mda_job_free(j);
		}
	}
	if (r->current != NULL && r->current->m == m) {
		command_cancel(r->running);
		r->running = NULL;
		mda_job_free(r->current);
		r->current = NULL;
	}
	free(m->env[0]);
	free(m->env[1]);
	free(m);
	if (--r->refs > 0) {
		mda_next(r);
		return;
	}
	LIST_REMOVE(r, entry);
	free(r->cmd);
	free(r);
}
