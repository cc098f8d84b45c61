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
 * message on its standard input, one at a time in the order given.  Exit
 * status 0 is delivered, 75 (EX_TEMPFAIL) refused for now, anything else
 * (or a signal) refused, with what the command printed in the log; one
 * that takes longer than its time limit is killed with its process group.
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

struct mda_job {
	TAILQ_ENTRY(mda_job)	 entry;
	int			 fd;
	char			*header;
	dest_done_cb		 cb;
	void			*arg;
};

struct mda {
	struct event_base	*base;
	struct dest		*dest;
	const struct account_conf *ac;
	int			 timeout;
	struct command		*running;
	struct mda_job		*current;
	char			*env[3];
	TAILQ_HEAD(, mda_job)	 queue;
};

static void	mda_next(struct mda *);

struct mda *
mda_open(const struct session_env *env, const struct account_conf *ac,
    struct dest *dest, int timeout, char **cause)
{
	struct mda	*m;

	m = xcalloc(1, sizeof *m);
	m->base = env->base;
	m->dest = dest;
	m->ac = ac;
	m->timeout = timeout * MDA_TIMEOUT_FACTOR;
	xasprintf(&m->env[0], "MAILD_ACCOUNT=%s", ac->name);
	xasprintf(&m->env[1], "MAILD_USER=%s", ac->user);
	TAILQ_INIT(&m->queue);
	return (m);
}

/* Deliver the message in fd (header first); cb answers later. */
void
mda_send(struct mda *m, int fd, const char *header, dest_done_cb cb,
    void *arg)
{
	struct mda_job	*j;

	j = xcalloc(1, sizeof *j);
	j->fd = fd;
	j->header = xstrdup(header);
	j->cb = cb;
	j->arg = arg;
	TAILQ_INSERT_TAIL(&m->queue, j, entry);
	if (m->running == NULL)
		mda_next(m);
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
	struct mda	*m = arg;
	struct mda_job	*j = m->current;
	char		 why[128], *reply;
	size_t		 n;
	int		 r;

	m->running = NULL;
	m->current = NULL;
	if (status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0)
		r = DEST_OK;
	else if (status == -1 || (WIFEXITED(status) &&
	    WEXITSTATUS(status) == 75))
		r = DEST_TEMP;
	else
		r = DEST_PERM;
	/* Its words, on one line, after how it ended. */
	n = strlen(output);
	while (n > 0 && (output[n - 1] == '\n' || output[n - 1] == '\r'))
		n--;
	xasprintf(&reply, "mda %s%s%.*s", command_status(status, why,
	    sizeof why), n > 0 ? ": " : "", (int)n, output);
	j->cb(r, reply, j->arg);
	free(reply);
	mda_job_free(j);
	mda_next(m);
}

/* Start the next message's MDA. */
static void
mda_next(struct mda *m)
{
	struct mda_job	*j;
	char		*cause = NULL;

	while ((j = TAILQ_FIRST(&m->queue)) != NULL) {
		TAILQ_REMOVE(&m->queue, j, entry);
		m->current = j;
		m->running = command_run(m->base, m->ac->mda, m->env,
		    j->header, strlen(j->header), j->fd, m->timeout,
		    mda_done_cb, m, &cause);
		j->fd = -1;	/* the command has it */
		if (m->running != NULL)
			return;
		m->current = NULL;
		/* Not even started: refused for now, from a fresh event. */
		dest_answer_later(m->dest, j->cb, j->arg, DEST_TEMP, cause);
		free(cause);
		cause = NULL;
		mda_job_free(j);
	}
}

/* Stop: the running MDA is killed; no callback runs any more. */
void
mda_close(struct mda *m)
{
	struct mda_job	*j;

	if (m == NULL)
		return;
	command_cancel(m->running);
	if (m->current != NULL)
		mda_job_free(m->current);
	while ((j = TAILQ_FIRST(&m->queue)) != NULL) {
		TAILQ_REMOVE(&m->queue, j, entry);
		mda_job_free(j);
	}
	free(m->env[0]);
	free(m->env[1]);
	free(m);
}
