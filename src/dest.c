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
 * dest.c: a destination other than the Maildir, for deliver.c: LMTP
 * (lmtp.c) or an MDA (mda.c).  deliver.c hands it one spooled message at
 * a time (an open file and a header to put on top) and hears back, later
 * and never from inside dest_send(), whether the message was taken,
 * refused for now or refused for good, with the destination's words.
 */

#include "config.h"

#include <sys/queue.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "maild.h"

/* An answer that is known at once, given from a fresh event. */
struct later {
	LIST_ENTRY(later)	 entry;
	struct dest		*d;
	struct event		*ev;
	dest_done_cb		 cb;
	void			*arg;
	int			 status;
	char			*text;
};

struct dest {
	struct event_base	*base;
	struct lmtp		*lmtp;
	struct mda		*mda;
	LIST_HEAD(, later)	 later;
};

struct dest *
dest_open(const struct session_env *env, const struct account_conf *ac,
    int timeout, char **cause)
{
	struct dest	*d;

	d = xcalloc(1, sizeof *d);
	d->base = env->base;
	LIST_INIT(&d->later);
	if (ac->deliver == DELIVER_LMTP)
		d->lmtp = lmtp_open(env, ac, d, timeout, cause);
	else
		d->mda = mda_open(env, ac, d, timeout, cause);
	if (d->lmtp == NULL && d->mda == NULL) {
		free(d);
		return (NULL);
	}
	return (d);
}

/* Hand over the message in fd (which the destination closes). */
void
dest_send(struct dest *d, int fd, const char *header, dest_done_cb cb,
    void *arg)
{
	if (d->lmtp != NULL)
		lmtp_send(d->lmtp, fd, header, cb, arg);
	else
		mda_send(d->mda, fd, header, cb, arg);
}

static void
later_free(struct later *l)
{
	event_free(l->ev);
	free(l->text);
	free(l);
}

static void
dest_later_free(struct later *l)
{
	LIST_REMOVE(l, entry);
	later_free(l);
}

static void
dest_later_cb(evutil_socket_t fd, short what, void *arg)
{
	struct later	*l = arg;
	dest_done_cb	 cb = l->cb;
	void		*cbarg = l->arg;
	int		 status = l->status;
	char		*text = l->text != NULL ? xstrdup(l->text) : NULL;

	dest_later_free(l);
	cb(status, text, cbarg);
	free(text);
}

/* Answer for a message (status, text), from a fresh event. */
void
dest_answer_later(struct dest *d, dest_done_cb cb, void *arg, int status,
    const char *text)
{
	struct later	*l;

	l = xcalloc(1, sizeof *l);
	l->d = d;
	l->cb = cb;
	l->arg = arg;
	l->status = status;
	l->text = text != NULL ? xstrdup(text) : NULL;
	l->ev = event_new(d->base, -1, 0, dest_later_cb, l);
	LIST_INSERT_HEAD(&d->later, l, entry);
	event_active(l->ev, EV_TIMEOUT, 0);
}

/* Close; answers still due are not given. */
void
dest_close(struct dest *d)
{
	struct later	*l, *next;

	if (d == NULL)
		return;
	/* Walked by hand: the whole list goes, so nothing is unlinked. */
	for (l = LIST_FIRST(&d->later); l != NULL; l = next) {
		next = LIST_NEXT(l, entry);
		later_free(l);
	}
	LIST_INIT(&d->later);
	lmtp_close(d->lmtp);
	mda_close(d->mda);
	free(d);
}
