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
 * limits.c: the open files a configuration needs, and raising the soft
 * RLIMIT_NOFILE to that (at start and at every reload), or saying what to
 * change when the hard limit is lower.  A session that runs out of files
 * fails with "Too many open files", costing its account a poll; maild
 * itself goes on.
 *
 * The count, per session at once (max-connections of them): the socket;
 * the state file, its journal and lock, and those of the dedupe state;
 * the Maildir's tmp/ and new/ (two more per Maildir++ folder); the
 * message being written; a password command's or an MDA's pipes, or an
 * LMTP connection.  Per account with on-new-mail, whose command may run
 * while the account's next poll does: its pipes.  Per OAuth2 account: a
 * token refresh.  And what the process always holds: standard streams,
 * the event loop, DNS, syslog, the metrics' listener and its clients.
 */

#include "config.h"

#include <sys/resource.h>

#include <errno.h>
#include <string.h>

#include "maild.h"

#define FDS_BASE	64	/* the process, whatever it polls */
#define FDS_SESSION	16	/* one session, at most (above) */
#define FDS_HOOK	4	/* on-new-mail: stdin, stdout, stderr, spare */
#define FDS_OAUTH2	2	/* a token refresh over HTTPS */

/* How many open files conf may need at most. */
static rlim_t
limits_needed(const struct config *conf)
{
	const struct account_conf	*a;
	rlim_t				 n = FDS_BASE, folders = 0, f;
	size_t				 i;

	for (i = 0; i < conf->naccounts; i++) {
		a = &conf->accounts[i];
		if (a->on_new_mail != NULL)
			n += FDS_HOOK;
		if (a->oauth2_provider != OAUTH2_NONE)
			n += FDS_OAUTH2;
		/* A session in IDLE holds its files beyond max-connections
		   (account.c gives its slot back while it waits). */
		if (a->protocol == PROTOCOL_IMAP && a->idle != IDLE_NO)
			n += (rlim_t)a->nfolders * FDS_SESSION;
		f = a->folder_subdirs ? 2 * (rlim_t)a->nfolders : 0;
		if (f > folders)
			folders = f;
	}
	return (n + (rlim_t)conf->max_connections * (FDS_SESSION + folders));
}

/*
 * Raise the soft limit of open files to what conf needs (never lower it);
 * if the hard limit does not allow that, raise it as far as it goes and
 * say so, with what to do.
 */
void
limits_raise(const struct config *conf)
{
	struct rlimit	rl;
	rlim_t		need = limits_needed(conf), want;

	if (getrlimit(RLIMIT_NOFILE, &rl) == -1) {
		log_warn("getrlimit(RLIMIT_NOFILE)");
		return;
	}
	if (rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= need)
		return;
	want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need :
	    rl.rlim_max;
	if (want > rl.rlim_cur) {
		log_debug("raising the limit of open files from %llu to %llu",
		    (unsigned long long)rl.rlim_cur, (unsigned long long)want);
		rl.rlim_cur = want;
		if (setrlimit(RLIMIT_NOFILE, &rl) == -1)
			log_warnx("cannot raise the limit of open files to "
			    "%llu: %s", (unsigned long long)want,
			    strerror(errno));
	}
	if (want < need)
		log_warnx("%zu account%s with max-connections = %d may need "
		    "%llu open files, but the hard limit is %llu: raise it "
		    "(LimitNOFILE= in the systemd unit, or ulimit -Hn), or "
		    "lower max-connections; until then a session that runs "
		    "out fails with \"Too many open files\"", conf->naccounts,
		    conf->naccounts == 1 ? "" : "s", conf->max_connections,
		    (unsigned long long)need,
		    (unsigned long long)rl.rlim_max);
}
