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
 * deliver.c: the one delivery core every protocol session uses.  It owns
 * an account's state (state.c) and Maildir (maildir.c) while a session
 * runs, decides what the records say about a message the server lists,
 * streams each message into tmp/, commits messages in batches, and tells
 * the session which messages it may now remove from the server.  No
 * session touches a state record or a Maildir path itself.
 *
 * THE COMMIT PROTOCOL.  Every message must land in the Maildir exactly
 * once, whatever happens and whenever maild is killed.  For each batch:
 *
 *  1. Each message is streamed into its own file in tmp/.  When it is
 *     complete the file is closed and its write-back started; at commit
 *     time every file of the batch is fdatasync()ed.
 *  2. tmp/ is fsync()ed, so the files' names are durable too.
 *  3. The batch is recorded in the state as PENDING records naming each
 *     file, and that is made durable (state_sync(): a journal block,
 *     fdatasync()ed).
 *  4. Each file is renamed from tmp/ into new/.
 *  5. new/ is fsync()ed.  The batch is delivered, and the session is told
 *     that each of its messages may be removed from the server (POP3:
 *     DELE, which takes effect at QUIT).
 *
 * Restarting after a crash, deliver_open() first finishes what a PENDING
 * record describes: the file was complete and durable (1, 2 happened
 * before 3), so if it is still in tmp/ it is moved to new/ now; if it is
 * in new/ or cur/ (a mail reader may have moved it, adding flags), step 4
 * happened; either way the message is delivered.  If it is nowhere, the
 * record is dropped and the message fetched again: it cannot have been
 * removed from the server, since that only follows step 5.  Files in tmp/
 * without a record are partial downloads from before step 3: they are
 * removed and fetched again.  A journal block cut short by a crash was
 * never acknowledged, so its PENDING records never reached step 4 and
 * their files are still in tmp/ without a record: the same case.
 *
 * If any step fails (disk full, read-only Maildir, state directory not
 * writable), the session ends at once and nothing more is written to the
 * state: whatever reached the disk is resolved by the rule above at the
 * next start.
 *
 * What a record means later.  A message the server lists under a key that
 * has a record is delivered, and in delete mode is removed again.  Three
 * things keep a record from claiming a message it does not describe:
 *  - when the server confirms the removal (POP3: +OK to QUIT after +OK to
 *    DELE), the record is forgotten at once, so that a server reusing the
 *    key for a new message does not get that one removed undelivered;
 *  - a message listed with a size other than the one recorded (both known,
 *    exact-sizes) is a different message under a reused key: it is new
 *    (not for keys a session declares stable, deliver_stable_keys():
 *    IMAP never reuses a UID under one UIDVALIDITY);
 *  - records of messages the listings no longer show are forgotten only
 *    after FORGET_LISTINGS complete listings in a row and FORGET_SECONDS
 *    without them, so that one empty or partial listing (a server glitch)
 *    does not make every message new again.
 *
 * Sessions of one account share its state (deliver_open() of an account
 * already open in this process takes another reference): an IMAP account
 * may hold one connection per folder.  Each session has its own batch.
 * Messages of an IMAP folder may go to a Maildir++ folder (".Name") of
 * the account's Maildir; a PENDING record then names "<.Name>/<file>".
 *
 * A POP3 server without UIDL gives no key: then (delete mode only) the key
 * is the SHA-256 of the message's content, known once it is received.
 * Such a record only serves the next session, to recognise messages that
 * a session delivered and could not remove (it died before QUIT).  Before
 * QUIT is sent, "digest-quit" is recorded durably; a session that finds it
 * set does not trust the digests, since the server may have removed those
 * messages and a byte-identical new one would be removed undelivered: it
 * would rather deliver one twice.  QUIT's +OK forgets them all.
 */

#include "config.h"

#include <sys/queue.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "maild.h"

/* Commit a batch after this many messages, bytes or seconds. */
#define BATCH_MAX_MSGS		256
#define BATCH_MAX_BYTES		(64U << 20)
#define BATCH_MAX_SECONDS	2.0
/* Forget a record missing from this many listings and for this long. */
#define FORGET_LISTINGS		3
#define FORGET_SECONDS		((time_t)7 * 86400)
/* The flags deliver.c keeps on records (state_set_flags). */
#define REC_LISTED		0x01	/* in this session's listing */
#define REC_REMOVED		0x02	/* the server acknowledged removal */
/* The paths of new files kept for the hook, at most (bytes). */
#define NEWFILES_MAX		(16U << 20)
/* Maildir++ folders an account may deliver to at once. */
#define SUBDIRS_MAX		256

/* A Maildir of the account: the main one (name NULL) or a ".Folder". */
struct dir {
	char		*name;
	struct maildir	 md;
};

/* What the sessions of one account share: its state and its Maildirs. */
struct store {
	LIST_ENTRY(store)	 entry;
	char			*id;		/* <state-dir>/<account> */
	char			*mailbox;
	char			*maildir;
	char			*account;	/* for logs */
	int			 refs;
	struct state		*st;
	uint32_t		 tmptag;	/* marks the account's tmp/ files */
	struct dir		*dirs;		/* [0]: the main Maildir */
	size_t			 ndirs;
	int			 suspect;	/* a commit failed */
	int			 digests;	/* keys are content digests */
	struct state		*tags;		/* tag -> record, on demand */
	uint64_t		 tags_epoch;	/* of the record ids in it */
};
static LIST_HEAD(, store) stores = LIST_HEAD_INITIALIZER(stores);

/* A message received and durable in tmp/, waiting for its commit. */
struct batch_item {
	size_t		 dir;		/* in the store's dirs */
	char		 final[MAILDIR_NAME_MAX];	/* its name in new/ */
	char		*key;
	size_t		 keylen;
	uint32_t	 ordinal;
	char		*tag;
	uint64_t	 listed;	/* the size the server listed */
	uint64_t	 size;		/* the size of the file */
	void		*cookie;
	char		*dedupe;	/* its key in the dedupe index */
	/* Handed to a destination other than the Maildir: */
	struct deliver	*d;
	int		 status;	/* DEST_* */
	char		*reply;		/* what the destination said */
};

/* One session's handle on its account's store, with its own batch. */
struct deliver {
	const struct account_conf *ac;
	struct store		*s;
	struct state		*seen;		/* digests of this session */
	EVP_MD_CTX		*mdctx;
	int			 hash;		/* digest every message */
	int			 stable_keys;	/* a key names one message */
	char			*reident;	/* folder prefix: match digests */
	size_t			 reidentlen;
	char			*current;	/* ... not under this prefix */
	size_t			 currentlen;
	deliver_committed_cb	 committed;
	void			*arg;

	struct batch_item	*batch;		/* being filled */
	size_t			 nbatch, batchcap;
	uint64_t		 batch_bytes;
	double			 batch_started;

	/* deliver = lmtp or mda: the batch handed to the destination. */
	struct dest		*dest;
	struct batch_item	*cbatch;
	size_t			 ncbatch, cbatchcap, cwaiting;
	int			 commit_wanted;
	deliver_ready_cb	 ready;
	void			*ready_arg;
	unsigned		 refused;	/* by the destination */
	int			 refused_perm;
	char			*refused_reply;
	struct dedupe		*dedupe;
	/* The files delivered since the last deliver_new_files(). */
	char			*newfiles;
	size_t			 newlen, newcap;
};

static int	store_recover(struct store *, char **);
static void	store_close(struct store *);
static void	deliver_clear_batch(struct deliver *);
static void	deliver_clear_items(struct deliver *, struct batch_item *,
		    size_t);
static int	deliver_dest_commit(struct deliver *, char **);
static int	deliver_maildir_commit(struct deliver *, char **);
static void	deliver_scan_headers(struct deliver_msg *, const char *,
		    size_t);
static void	deliver_note_file(struct deliver *, const char *,
		    const char *);

/*
 * Open (or create) a Maildir of the store: NULL the main one, else a
 * Maildir++ folder ".Name".  Returns its index in dirs (which may move
 * when another is added), or -1.
 */
static long
store_dir(struct store *s, const char *name, char **cause)
{
	struct dir	*dir;
	char		*path;
	size_t		 i;

	if (name == NULL)
		return (0);
	for (i = 1; i < s->ndirs; i++) {
		if (strcmp(s->dirs[i].name, name) == 0)
			return ((long)i);
	}
	if (s->ndirs > SUBDIRS_MAX) {
		xasprintf(cause, "maildir %s: more than %d folders", s->maildir,
		    SUBDIRS_MAX);
		return (-1);
	}
	xasprintf(&path, "%s/%s", s->maildir, name);
	s->dirs = xreallocarray(s->dirs, s->ndirs + 1, sizeof *s->dirs);
	dir = &s->dirs[s->ndirs];
	if (maildir_open(&dir->md, path, s->tmptag, s->account, cause) == -1) {
		free(path);
		return (-1);
	}
	free(path);
	if (maildir_mark_folder(&dir->md, cause) == -1) {
		maildir_close(&dir->md);
		return (-1);
	}
	dir->name = xstrdup(name);
	return ((long)s->ndirs++);
}

/*
 * Remove the account's partial files from tmp/ of its Maildir and of the
 * Maildir++ folders in it (whichever a session may have written to).
 */
static void
store_cleanup(struct store *s)
{
	DIR		*d;
	struct dirent	*de;
	struct maildir	 md;
	char		*path, *cause = NULL;
	int		 n, total;

	total = maildir_cleanup_tmp(&s->dirs[0].md);
	if ((d = opendir(s->maildir)) != NULL) {
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] != '.' || strcmp(de->d_name, ".") == 0 ||
			    strcmp(de->d_name, "..") == 0)
				continue;
			xasprintf(&path, "%s/%s/tmp", s->maildir, de->d_name);
			n = access(path, F_OK);
			free(path);
			if (n == -1)
				continue;
			xasprintf(&path, "%s/%s", s->maildir, de->d_name);
			if (maildir_open(&md, path, s->tmptag, s->account,
			    &cause) == 0) {
				if ((n = maildir_cleanup_tmp(&md)) > 0)
					total += n;
				maildir_close(&md);
			}
			free(cause);
			cause = NULL;
			free(path);
		}
		closedir(d);
	}
	if (total > 0)
		log_info("account=%s removed %d partial file%s an interrupted "
		    "fetch left in %s", s->account, total, total == 1 ? "" :
		    "s", s->maildir);
}

/* Open an account's store: lock and load the state, recover, clean up. */
static struct store *
store_open(const struct account_conf *ac, const char *state_dir,
    const char *id, const char *mailbox, int *code, char **cause)
{
	struct store	*s;
	const char	*old;
	char		 path[PATH_MAX];

	s = xcalloc(1, sizeof *s);
	s->id = xstrdup(id);
	s->mailbox = xstrdup(mailbox);
	s->maildir = xstrdup(ac->maildir);
	s->account = xstrdup(ac->name);
	s->refs = 1;
	if (mkdir_p(state_dir, 0700) == -1) {
		xasprintf(cause, "state-dir %s: %s", state_dir,
		    strerror(errno));
		*code = EXIT_IOERR;
		goto fail;
	}
	if ((s->st = state_open(state_dir, ac->name, code, cause)) == NULL)
		goto fail;
	/* Partial files in tmp/ carry a tag that says whose they are. */
	snprintf(path, sizeof path, "%s/%s.state", state_dir, ac->name);
	s->tmptag = (uint32_t)siphash24((const uint8_t *)"maild tmp tag 01",
	    path, strlen(path));
	*code = EXIT_IOERR;
	s->dirs = xcalloc(1, sizeof *s->dirs);
	if (maildir_open(&s->dirs[0].md, ac->maildir, s->tmptag, s->account,
	    cause) == -1) {
		free(s->dirs);
		s->dirs = NULL;
		goto fail;
	}
	s->ndirs = 1;

	old = state_meta(s->st, "mailbox");
	if (old != NULL && strcmp(old, mailbox) != 0) {
		log_warnx("account=%s the state file was kept for mailbox %s, "
		    "but the account is now %s: starting afresh", ac->name,
		    old, mailbox);
		/* Recovery first: a pending delivery is still a delivery. */
		if (store_recover(s, cause) == -1)
			goto fail;
		state_forget_all(s->st);
	}
	state_set_meta(s->st, "mailbox", mailbox);
	if (store_recover(s, cause) == -1)
		goto fail;
	state_set_meta(s->st, "maildir", ac->maildir);
	store_cleanup(s);
	if (state_meta(s->st, "digest-quit") != NULL) {
		if (state_count(s->st) > 0)
			log_info("account=%s the last session said QUIT without "
			    "hearing back: the messages it recognised by their "
			    "content may be gone from the server, so their "
			    "digests are not used", ac->name);
		state_forget_all(s->st);
		state_set_meta(s->st, "digest-quit", NULL);
	}
	s->digests = state_meta(s->st, "records") != NULL &&
	    strcmp(state_meta(s->st, "records"), "digests") == 0;
	if (state_dirty(s->st) && state_sync(s->st, cause) == -1)
		goto fail;
	LIST_INSERT_HEAD(&stores, s, entry);
	return (s);

fail:
	store_close(s);
	return (NULL);
}

/* Free a store (out of the list of open ones). */
static void
store_close(struct store *s)
{
	size_t	i;

	for (i = 0; s->dirs != NULL && i < s->ndirs; i++) {
		maildir_close(&s->dirs[i].md);
		free(s->dirs[i].name);
	}
	free(s->dirs);
	state_close(s->st);
	state_close(s->tags);
	free(s->id);
	free(s->mailbox);
	free(s->maildir);
	free(s->account);
	free(s);
}

/*
 * The dedupe index of a destination (dedupe = message-id): the
 * Message-IDs (with sizes) delivered there in the last dedupe-days, one
 * state file "dedupe-<hash>" in the state directory that every account
 * delivering to the destination shares.
 */
struct dedupe {
	LIST_ENTRY(dedupe)	 entry;
	char			*name;
	int			 refs;
	long			 keep;		/* seconds a record counts */
	struct state		*st;
};
static LIST_HEAD(, dedupe) dedupes = LIST_HEAD_INITIALIZER(dedupes);

static struct dedupe *
dedupe_open(const struct account_conf *ac, const char *state_dir, int *code,
    char **cause)
{
	static const uint8_t	 key[16] = "maild dedupe 01";
	const struct state_rec	*r;
	struct dedupe		*x;
	char			*dest, name[64];
	uint32_t		 it = 0;
	time_t			 now = time(NULL);

	if (ac->deliver == DELIVER_LMTP)
		xasprintf(&dest, "lmtp:%s %s", ac->lmtp, ac->lmtp_recipient);
	else if (ac->deliver == DELIVER_MDA)
		xasprintf(&dest, "mda:%s", ac->mda);
	else
		xasprintf(&dest, "maildir:%s", ac->maildir);
	snprintf(name, sizeof name, "dedupe-%016llx", (unsigned long long)
	    siphash24(key, dest, strlen(dest)));
	free(dest);
	LIST_FOREACH(x, &dedupes, entry) {
		if (strcmp(x->name, name) == 0) {
			x->refs++;
			return (x);
		}
	}
	x = xcalloc(1, sizeof *x);
	x->name = xstrdup(name);
	x->refs = 1;
	x->keep = (long)ac->dedupe_days * 86400;
	if ((x->st = state_open(state_dir, name, code, cause)) == NULL) {
		free(x->name);
		free(x);
		return (NULL);
	}
	/* What is older than dedupe-days no longer counts. */
	while ((r = state_next(x->st, &it)) != NULL) {
		if (now - r->first > x->keep)
			state_forget(x->st, state_rec_id(x->st, r));
	}
	if (state_dirty(x->st) && state_sync(x->st, cause) == -1) {
		*code = EXIT_IOERR;
		state_close(x->st);
		free(x->name);
		free(x);
		return (NULL);
	}
	LIST_INSERT_HEAD(&dedupes, x, entry);
	return (x);
}

static void
dedupe_close(struct dedupe *x)
{
	if (x == NULL || --x->refs > 0)
		return;
	LIST_REMOVE(x, entry);
	state_close(x->st);
	free(x->name);
	free(x);
}

/* The dedupe key of a message: its Message-ID and its size. */
static char *
dedupe_key(const struct deliver_msg *m, size_t *len)
{
	char	*k;

	if (m->msgidlen == 0)
		return (NULL);	/* never suppressed */
	xasprintf(&k, "%.*s%c%llu", (int)m->msgidlen, m->msgid, '\0',
	    (unsigned long long)m->body);
	*len = m->msgidlen + 1 + strlen(k + m->msgidlen + 1);
	return (k);
}

/*
 * Which message of which account a dedupe note is for: the digest of the
 * account and the message's key (also what X-Maild-Id says).
 */
static void
deliver_msg_id(const struct deliver *d, const char *key, size_t keylen,
    uint32_t ordinal, char *out, size_t size)
{
	static const uint8_t	 idkey[16] = "maild X-Maild-Id";
	char			*buf;
	uint64_t		 h1, h2;
	size_t			 n;

	/* account NUL key NUL ordinal, digested */
	n = strlen(d->ac->name) + 1 + keylen + 12;
	buf = xmalloc(n);
	n = (size_t)snprintf(buf, n, "%s", d->ac->name) + 1;
	memcpy(buf + n, key, keylen);
	n += keylen;
	n += (size_t)snprintf(buf + n, 12, "%c%u", '\0', ordinal);
	h1 = siphash24(idkey, buf, n);
	buf[0] ^= 1;
	h2 = siphash24(idkey, buf, n);
	free(buf);
	snprintf(out, size, "%016llx%016llx", (unsigned long long)h1,
	    (unsigned long long)h2);
}

/*
 * The tag of a note for a delivery under way: "p:<run>:<message>", run
 * naming this process, message what deliver_msg_id() says.  A delivered
 * message's note has no tag.
 */
static void
dedupe_pending_tag(const struct deliver *d, const char *key, size_t keylen,
    uint32_t ordinal, char *out, size_t size)
{
	static char	run[17];
	char		id[40];

	if (run[0] == '\0')
		snprintf(run, sizeof run, "%08lx%08lx", (unsigned long)getpid(),
		    (unsigned long)time(NULL));
	deliver_msg_id(d, key, keylen, ordinal, id, sizeof id);
	snprintf(out, size, "p:%s:%s", run, id);
}

static void
dedupe_sync(struct deliver *d)
{
	char	*cause = NULL;

	if (!state_dirty(d->dedupe->st) ||
	    state_sync(d->dedupe->st, &cause) == 0)
		return;
	/* A lost note costs a copy at worst, never a message. */
	log_warnx("account=%s cannot write the dedupe index: %s", d->ac->name,
	    cause);
	free(cause);
}

/*
 * What the index says of a message about to be delivered (see
 * dedupe_check()), on its own note: DELIVER_NEW if it is this message's
 * (an attempt that did not finish), DELIVER_DONE if another account
 * delivered the message (or began to, in an earlier run, and finishes
 * it itself after that run's crash), DELIVER_LATER if another delivery
 * of it is under way in this run.
 */
static int
dedupe_verdict(const char *tag, const char *mine)
{
	const char	*run = mine + 2, *id = strchr(run, ':');

	if (tag == NULL || strncmp(tag, "p:", 2) != 0)
		return (DELIVER_DONE);
	if (strcmp(strrchr(tag, ':'), id) == 0)
		return (DELIVER_NEW);
	if (strncmp(tag, mine, (size_t)(id - mine)) == 0)
		return (DELIVER_LATER);
	return (DELIVER_DONE);
}

/*
 * dedupe = message-id: was the message delivered to this destination
 * before, through any account?  If not, it is noted in the index as
 * under way, so that another account meeting it now waits (DELIVER_LATER:
 * it stays on that server for the next poll), and the note is written
 * before the message is committed (dedupe_before_commit()), so that a
 * crash cannot let another account deliver it again.  *dkey is set to
 * its key in the index (NULL: it has no Message-ID, never suppressed).
 */
static int
dedupe_check(struct deliver *d, const struct deliver_msg *m, const char *key,
    size_t len, uint32_t ordinal, char **dkey)
{
	struct state		*st = d->dedupe->st;
	const struct state_rec	*r;
	char			 mine[80];
	size_t			 dlen = 0;
	uint32_t		 id;
	int			 v;
	time_t			 now = time(NULL);

	if ((*dkey = dedupe_key(m, &dlen)) == NULL)
		return (DELIVER_NEW);
	dedupe_pending_tag(d, key, len, ordinal, mine, sizeof mine);
	id = state_find(st, *dkey, dlen, 1);
	if (id != STATE_NONE) {
		r = state_rec(st, id);
		v = now - r->first > d->dedupe->keep ? DELIVER_NEW :
		    dedupe_verdict(state_rec_tag(st, r), mine);
		if (v != DELIVER_NEW) {
			free(*dkey);
			*dkey = NULL;
			return (v);
		}
	}
	state_put(st, *dkey, dlen, 1, now, m->file.size, mine, NULL);
	return (DELIVER_NEW);
}

/*
 * A batch item's note, once its fate is known: delivered (the note stays,
 * without a tag), or not (it goes, if it is still this message's).
 */
static void
dedupe_settle(struct deliver *d, struct batch_item *b, int delivered)
{
	struct state		*st;
	char			 mine[80];
	const char		*tag;
	size_t			 len;
	uint32_t		 id;

	if (d->dedupe == NULL || b->dedupe == NULL)
		return;
	st = d->dedupe->st;
	len = strlen(b->dedupe);
	len += 1 + strlen(b->dedupe + len + 1);
	if ((id = state_find(st, b->dedupe, len, 1)) == STATE_NONE)
		return;
	dedupe_pending_tag(d, b->key, b->keylen, b->ordinal, mine,
	    sizeof mine);
	tag = state_rec_tag(st, state_rec(st, id));
	if (tag == NULL || strcmp(tag, mine) != 0)
		return;
	if (delivered)
		state_put(st, b->dedupe, len, 1, time(NULL), b->size, NULL,
		    NULL);
	else
		state_forget(st, id);
}

/*
 * The items' notes are settled: delivered or not.  Items whose fate is
 * unknown (a commit failed half way) keep their notes: to this run they
 * are under way, to the next one delivered (see dedupe_verdict()).
 */
static void
dedupe_settle_all(struct deliver *d, struct batch_item *items, size_t n,
    int delivered)
{
	size_t	i;

	if (d->dedupe == NULL)
		return;
	for (i = 0; i < n; i++)
		dedupe_settle(d, &items[i], delivered &&
		    items[i].status == DEST_OK);
	dedupe_sync(d);
}

/*
 * Open a session's delivery for an account: its store is opened (state
 * locked and loaded, Maildir opened, interrupted deliveries finished,
 * partial files removed), or shared with the account's other sessions.
 * mailbox names what the state's keys belong to ("user@host"): a state
 * kept for another mailbox is not used.  committed is called for each
 * message of this session's batches once it is delivered.  On failure,
 * *code is the exit status.
 */
struct deliver *
deliver_open(const struct account_conf *ac, const char *state_dir,
    const char *mailbox, const struct session_env *env, int timeout,
    deliver_committed_cb committed, void *arg, int *code, char **cause)
{
	struct deliver	*d;
	struct store	*s;
	char		*id;

	xasprintf(&id, "%s/%s", state_dir, ac->name);
	LIST_FOREACH(s, &stores, entry) {
		if (strcmp(s->id, id) == 0)
			break;
	}
	if (s != NULL) {
		if (strcmp(s->mailbox, mailbox) != 0 ||
		    strcmp(s->maildir, ac->maildir) != 0) {
			xasprintf(cause, "the account's state is in use by a "
			    "session with other settings; it will be tried "
			    "again when that has ended");
			*code = EXIT_TEMPFAIL;
			free(id);
			return (NULL);
		}
		s->refs++;
	} else if ((s = store_open(ac, state_dir, id, mailbox, code,
	    cause)) == NULL) {
		free(id);
		return (NULL);
	}
	free(id);
	d = xcalloc(1, sizeof *d);
	d->ac = ac;
	d->s = s;
	d->committed = committed;
	d->arg = arg;
	if (ac->dedupe && (d->dedupe = dedupe_open(ac, state_dir, code,
	    cause)) == NULL) {
		deliver_close(d);
		return (NULL);
	}
	if (ac->deliver != DELIVER_MAILDIR && env != NULL &&
	    (d->dest = dest_open(env, ac, timeout, cause)) == NULL) {
		*code = EXIT_CONFIG;
		deliver_close(d);
		return (NULL);
	}
	return (d);
}

/*
 * Finish the deliveries a crash interrupted (see the top of this file).
 * The maildir recorded is the one the files are in.
 */
static int
store_recover(struct store *s, char **cause)
{
	const struct state_rec	*r;
	struct maildir		 md;
	const char		*dir, *file, *slash;
	char			*path, *sub;
	uint32_t		 it = 0, id;
	unsigned		 done = 0, moved = 0;
	int			 x;

	dir = state_meta(s->st, "maildir");
	if (dir == NULL)
		dir = s->maildir;
	while ((r = state_next(s->st, &it)) != NULL) {
		if (r->kind != STATE_PENDING)
			continue;
		id = state_rec_id(s->st, r);
		file = state_rec_file(s->st, r);
		/* A Maildir++ folder: "<.Folder>/<name>". */
		if ((slash = strchr(file, '/')) != NULL) {
			sub = xstrndup(file, slash - file);
			xasprintf(&path, "%s/%s", dir, sub);
			free(sub);
			file = slash + 1;
		} else
			path = xstrdup(dir);
		if (access(path, F_OK) == -1)
			x = MAILDIR_MISSING;
		else if (maildir_open(&md, path, s->tmptag, s->account,
		    cause) == -1) {
			free(path);
			return (-1);
		} else {
			x = maildir_recover(&md, file, cause);
			/* The moves before the crash may not be durable. */
			if (x != -1 && x != MAILDIR_MISSING &&
			    maildir_sync_new(&md, cause) == -1)
				x = -1;
			maildir_close(&md);
		}
		if (x == -1) {
			free(path);
			return (-1);
		}
		if (x == MAILDIR_MISSING) {
			log_warnx("account=%s the message of an interrupted "
			    "delivery (%s) is in neither tmp/, new/ nor cur/ "
			    "of %s: it will be fetched again", s->account,
			    file, path);
			state_forget(s->st, id);
		} else {
			if (x == MAILDIR_MOVED)
				moved++;
			state_delivered(s->st, id);
			done++;
		}
		free(path);
	}
	if (done > 0)
		log_info("account=%s finished %u deliver%s a crash had "
		    "interrupted (%u moved into new/ now)", s->account, done,
		    done == 1 ? "y" : "ies", moved);
	return (0);
}

/* Close; unsynced changes to the state are dropped (deliver_sync first). */
void
deliver_close(struct deliver *d)
{
	if (d == NULL)
		return;
	dedupe_settle_all(d, d->batch, d->nbatch, 0);
	deliver_clear_batch(d);
	free(d->batch);
	/* A commit still in flight (the session did not wait: maild is
	   stopping) is dropped: its spool files go with the rest at the next
	   start; what the destination took first may come twice. */
	dest_close(d->dest);
	deliver_clear_items(d, d->cbatch, d->ncbatch);
	free(d->cbatch);
	free(d->refused_reply);
	free(d->newfiles);
	dedupe_close(d->dedupe);
	if (--d->s->refs == 0) {
		LIST_REMOVE(d->s, entry);
		store_close(d->s);
	}
	state_close(d->seen);
	EVP_MD_CTX_free(d->mdctx);
	free(d->reident);
	free(d->current);
	free(d);
}

/* Make the changes to the state durable (unless a commit failed). */
int
deliver_sync(struct deliver *d, char **cause)
{
	if (d->s->suspect || !state_dirty(d->s->st))
		return (0);
	return (state_sync(d->s->st, cause));
}

/*
 * The server has no UIDL: the keys are content digests.  Records of UIDLs
 * cannot recognise a message without one, so with those maild refuses.
 */
int
deliver_use_digests(struct deliver *d)
{
	if (d->s->digests)
		return (0);
	if (state_count(d->s->st) > 0)
		return (-1);
	d->s->digests = 1;
	state_set_meta(d->s->st, "records", "digests");
	return (0);
}

/* The server has UIDL (again): digests mean nothing now. */
void
deliver_use_keys(struct deliver *d)
{
	if (!d->s->digests)
		return;
	d->s->digests = 0;
	state_forget_all(d->s->st);
	state_set_meta(d->s->st, "records", NULL);
}

/*
 * This session's keys are never given to another message (IMAP:
 * UIDVALIDITY and UID): a message listed with a size other than the
 * recorded one is still the one delivered, not a new one.
 */
void
deliver_stable_keys(struct deliver *d)
{
	d->stable_keys = 1;
}

/* Does a record's key start with prefix? */
static int
rec_in(struct state *st, const struct state_rec *r, const char *prefix,
    size_t plen)
{
	size_t		 len;
	const char	*key = state_rec_key(st, r, &len);

	return (len >= plen && memcmp(key, prefix, plen) == 0);
}

/*
 * A listing of the records whose key starts with prefix (all of them
 * with "", 0; an IMAP folder's otherwise) starts: none is listed yet.
 */
void
deliver_listing_start(struct deliver *d, const char *prefix, size_t plen)
{
	const struct state_rec	*r;
	uint32_t		 it = 0;

	while ((r = state_next(d->s->st, &it)) != NULL) {
		if (rec_in(d->s->st, r, prefix, plen))
			state_set_flags(d->s->st, state_rec_id(d->s->st, r), 0,
			    REC_LISTED);
	}
}

/*
 * The server lists a message under key/ordinal with this size (0 if
 * unknown).  Returns DELIVER_DONE (and when, in *first) if it was
 * delivered, DELIVER_NEW if it is to be fetched.
 */
int
deliver_listed(struct deliver *d, const char *key, size_t len,
    uint32_t ordinal, uint64_t size, int64_t *first)
{
	struct state		*st = d->s->st;
	const struct state_rec	*r;
	uint32_t		 id;
	char			 esc[LOG_ESCAPE_MAX];

	if ((id = state_find(st, key, len, ordinal)) == STATE_NONE)
		return (DELIVER_NEW);
	r = state_rec(st, id);
	if (!d->stable_keys && d->ac->exact_sizes && size != 0 &&
	    r->size != 0 && size != r->size) {
		/* Not listed: the old record goes if it stays unlisted. */
		log_warnx("account=%s the server lists \"%s\" with %llu bytes, "
		    "but the message maild delivered under that id had %llu: "
		    "the server reused the id for a new message, which is "
		    "fetched", d->ac->name, log_escape(esc, sizeof esc, key,
		    len), (unsigned long long)size,
		    (unsigned long long)r->size);
		return (DELIVER_NEW);
	}
	state_set_flags(st, id, REC_LISTED, 0);
	if (r->missed != 0 || r->absent != 0)
		state_set_absence(st, id, 0, 0);
	if (first != NULL)
		*first = r->first;
	return (DELIVER_DONE);
}

/*
 * The listing (of the records under prefix) was complete: count a miss
 * for every record it did not mention, and forget those missing long
 * enough (see the top).
 */
void
deliver_listing_end(struct deliver *d, const char *prefix, size_t plen)
{
	struct state		*st = d->s->st;
	const struct state_rec	*r;
	uint32_t		 it = 0, id;
	time_t			 now = time(NULL);
	unsigned		 forgot = 0, missing = 0;

	while ((r = state_next(st, &it)) != NULL) {
		if ((r->flags & REC_LISTED) || r->kind != STATE_DELIVERED ||
		    !rec_in(st, r, prefix, plen))
			continue;
		id = state_rec_id(st, r);
		state_set_absence(st, id, r->missed + 1,
		    r->absent != 0 ? r->absent : now);
		if (r->missed >= FORGET_LISTINGS &&
		    now - r->absent >= FORGET_SECONDS) {
			state_forget(st, id);
			forgot++;
		} else
			missing++;
	}
	if (forgot > 0 || missing > 0)
		log_debug("account=%s %u records of messages no longer on the "
		    "server forgotten, %u kept for now", d->ac->name, forgot,
		    missing);
}

/*
 * Call fn for every record whose key starts with prefix, with its key,
 * ordinal and tag (NULL if none): to find the records of an IMAP folder
 * under another UIDVALIDITY, say.
 */
void
deliver_scan(struct deliver *d, const char *prefix, size_t plen,
    void (*fn)(const char *, size_t, uint32_t, const char *, void *),
    void *arg)
{
	struct state		*st = d->s->st;
	const struct state_rec	*r;
	const char		*key;
	size_t			 len;
	uint32_t		 it = 0;

	while ((r = state_next(st, &it)) != NULL) {
		if (!rec_in(st, r, prefix, plen) || r->kind != STATE_DELIVERED)
			continue;
		key = state_rec_key(st, r, &len);
		fn(key, len, r->ordinal, state_rec_tag(st, r), arg);
	}
}

/* The tag index, built when first asked for. */
static struct state *
store_tags(struct store *s)
{
	const struct state_rec	*r;
	const char		*tag;
	uint32_t		 it = 0, n;

	/* Record ids change when the state is compacted. */
	if (s->tags != NULL && s->tags_epoch == state_epoch(s->st))
		return (s->tags);
	state_close(s->tags);
	s->tags = state_new();
	s->tags_epoch = state_epoch(s->st);
	while ((r = state_next(s->st, &it)) != NULL) {
		if ((tag = state_rec_tag(s->st, r)) == NULL)
			continue;
		for (n = 1; state_find(s->tags, tag, strlen(tag), n) !=
		    STATE_NONE; n++)
			;
		state_put(s->tags, tag, strlen(tag), n,
		    state_rec_id(s->st, r), 0, NULL, NULL);
	}
	return (s->tags);
}

/*
 * Is there a delivered message with this tag whose key starts with
 * prefix?  (A Gmail X-GM-MSGID in any folder; a Message-ID digest under
 * a folder's old UIDVALIDITY.)  With key non-NULL, the first such
 * record's key is copied there (at most *keylen bytes; *keylen set).
 */
int
deliver_find_tag(struct deliver *d, const char *tag, const char *prefix,
    size_t plen, char *key, size_t *keylen)
{
	struct state		*tags = store_tags(d->s), *st = d->s->st;
	const struct state_rec	*t, *r;
	const char		*rt, *k;
	uint32_t		 n, id;
	size_t			 len;

	for (n = 1; (id = state_find(tags, tag, strlen(tag), n)) !=
	    STATE_NONE; n++) {
		t = state_rec(tags, id);
		if ((uint64_t)t->first >= UINT32_MAX)
			continue;
		r = state_rec(st, (uint32_t)t->first);
		/* The index may hold records forgotten since. */
		if (r->kind != STATE_DELIVERED ||
		    (rt = state_rec_tag(st, r)) == NULL ||
		    strcmp(rt, tag) != 0 || !rec_in(st, r, prefix, plen))
			continue;
		if (key != NULL) {
			k = state_rec_key(st, r, &len);
			if (len > *keylen)
				continue;
			memcpy(key, k, len);
			*keylen = len;
		}
		return (1);
	}
	return (0);
}

/*
 * A folder's UIDVALIDITY changed (see imap.c): from now on a message
 * whose content digest is the tag of a record under prefix (the folder)
 * but not under current (the new UIDVALIDITY) is the same message; it is
 * recorded under its new key and not delivered again (deliver_end()
 * returns DELIVER_DONE), and the old record goes.
 */
void
deliver_reident(struct deliver *d, const char *prefix, size_t plen,
    const char *current, size_t clen)
{
	free(d->reident);
	free(d->current);
	d->reident = xmalloc(plen + 1);
	memcpy(d->reident, prefix, plen);
	d->reidentlen = plen;
	d->current = xmalloc(clen + 1);
	memcpy(d->current, current, clen);
	d->currentlen = clen;
}

/*
 * Every message of the folder was looked at: the records of the old
 * UIDVALIDITY that matched nothing are of messages no longer there.
 */
void
deliver_reident_done(struct deliver *d)
{
	struct state		*st = d->s->st;
	const struct state_rec	*r;
	uint32_t		 it = 0;

	if (d->reident == NULL)
		return;
	while ((r = state_next(st, &it)) != NULL) {
		if (rec_in(st, r, d->reident, d->reidentlen) &&
		    !rec_in(st, r, d->current, d->currentlen))
			state_forget(st, state_rec_id(st, r));
	}
	free(d->reident);
	free(d->current);
	d->reident = d->current = NULL;
}

/* A record under the re-identified folder's old UIDVALIDITY, by tag. */
static uint32_t
deliver_reident_find(struct deliver *d, const char *tag)
{
	struct state		*tags = store_tags(d->s), *st = d->s->st;
	const struct state_rec	*t, *r;
	const char		*rt;
	uint32_t		 n, id;

	for (n = 1; (id = state_find(tags, tag, strlen(tag), n)) !=
	    STATE_NONE; n++) {
		t = state_rec(tags, id);
		if ((uint64_t)t->first >= UINT32_MAX)
			continue;
		r = state_rec(st, (uint32_t)t->first);
		if (r->kind == STATE_DELIVERED &&
		    (rt = state_rec_tag(st, r)) != NULL &&
		    strcmp(rt, tag) == 0 &&
		    rec_in(st, r, d->reident, d->reidentlen) &&
		    !rec_in(st, r, d->current, d->currentlen))
			return ((uint32_t)t->first);
	}
	return (STATE_NONE);
}

/* Put a record's tag into the index, if it is built. */
static void
store_index_tag(struct store *s, uint32_t id, const char *tag)
{
	uint32_t	n;

	if (s->tags == NULL || tag == NULL ||
	    s->tags_epoch != state_epoch(s->st))
		return;
	for (n = 1; state_find(s->tags, tag, strlen(tag), n) != STATE_NONE;
	    n++)
		;
	state_put(s->tags, tag, strlen(tag), n, id, 0, NULL, NULL);
}

/*
 * Record a message as delivered without delivering anything: it is the
 * same as one delivered before (under an old UIDVALIDITY, or in another
 * Gmail label).
 */
void
deliver_record(struct deliver *d, const char *key, size_t len,
    uint32_t ordinal, uint64_t size, const char *tag)
{
	uint32_t	id;

	id = state_put(d->s->st, key, len, ordinal, time(NULL), size, tag,
	    NULL);
	state_set_flags(d->s->st, id, REC_LISTED, 0);
	store_index_tag(d->s, id, tag);
}

/* Forget a record: its message is gone from the server for good. */
void
deliver_forget(struct deliver *d, const char *key, size_t len,
    uint32_t ordinal)
{
	uint32_t	id;

	if ((id = state_find(d->s->st, key, len, ordinal)) != STATE_NONE)
		state_forget(d->s->st, id);
}

/*
 * Note how many messages the server keeps for their size (max-size);
 * returns how many it kept at the poll before, so that a warning is only
 * given when there are more.
 */
unsigned
deliver_too_big(struct deliver *d, unsigned n)
{
	const char	*v = state_meta(d->s->st, "too-big");
	uint64_t	 before = 0;
	char		 buf[16];

	if (v != NULL && parse_u64(v, UINT32_MAX, &before) == -1)
		before = 0;
	snprintf(buf, sizeof buf, "%u", n);
	state_set_meta(d->s->st, "too-big", n > 0 ? buf : NULL);
	return ((unsigned)before);
}

/*
 * Start receiving a message, into the main Maildir (folder NULL) or a
 * Maildir++ folder (".Name"); prefix (trace headers) goes first.
 */
int
deliver_begin(struct deliver *d, struct deliver_msg *m, const char *folder,
    const char *prefix, size_t prefixlen, char **cause)
{
	struct dir	*dir;
	long		 i;

	memset(m, 0, sizeof *m);
	m->file.fd = -1;
	if ((i = store_dir(d->s, folder, cause)) == -1)
		return (-1);
	dir = &d->s->dirs[i];
	if (maildir_create(&dir->md, &m->file, cause) == -1) {
		m->file.fd = -1;
		return (-1);
	}
	m->dir = (size_t)i;
	m->open = 1;
	if (prefixlen > 0 && maildir_write(&m->file, prefix, prefixlen) == -1) {
		xasprintf(cause, "cannot write to %s/tmp: %s", dir->md.path,
		    strerror(errno));
		deliver_discard(d, m);
		return (-1);
	}
	if (d->s->digests || d->hash) {
		if (d->mdctx == NULL && (d->mdctx = EVP_MD_CTX_new()) == NULL)
			fatalx("EVP_MD_CTX_new");
		if (EVP_DigestInit_ex(d->mdctx, EVP_sha256(), NULL) != 1)
			fatalx("SHA-256 unavailable");
	}
	return (0);
}

/* Digest every message (deliver_end() with tag "" uses it). */
void
deliver_want_digests(struct deliver *d)
{
	d->hash = 1;
}

/*
 * Look for the Message-ID in the header as it streams by (dedupe): one
 * line at a time, up to the blank line that ends the header.  A folded
 * or overlong Message-ID is not taken: the message is then never
 * suppressed.
 */
static void
deliver_scan_headers(struct deliver_msg *m, const char *buf, size_t len)
{
	const char	*v;
	size_t		 i, n;

	for (i = 0; i < len && !m->hdrdone; i++) {
		if (buf[i] != '\n') {
			if (m->hdrlen < sizeof m->hdr)
				m->hdr[m->hdrlen] = buf[i];
			m->hdrlen++;
			continue;
		}
		if (m->hdrlen == 0 || (m->hdrlen == 1 && m->hdr[0] == '\r')) {
			m->hdrdone = 1;
			break;
		}
		n = m->hdrlen;
		if (n <= sizeof m->hdr && n > 11 &&
		    strncasecmp(m->hdr, "Message-ID:", 11) == 0) {
			v = m->hdr + 11;
			n -= 11;
			while (n > 0 && (*v == ' ' || *v == '\t')) {
				v++;
				n--;
			}
			while (n > 0 && (v[n - 1] == '\r' || v[n - 1] == ' ' ||
			    v[n - 1] == '\t'))
				n--;
			if (n > 0 && n < sizeof m->msgid &&
			    memchr(v, '\0', n) == NULL) {
				memcpy(m->msgid, v, n);
				m->msgidlen = n;
			}
		}
		m->hdrlen = 0;
	}
}

/* Append to the message; -1 with errno on failure. */
int
deliver_write(struct deliver *d, struct deliver_msg *m, const void *buf,
    size_t len)
{
	if (len == 0)
		return (0);
	if (maildir_write(&m->file, buf, len) == -1)
		return (-1);
	if (d->mdctx != NULL)
		EVP_DigestUpdate(d->mdctx, buf, len);
	if (d->dedupe != NULL && !m->hdrdone)
		deliver_scan_headers(m, buf, len);
	m->body += len;
	return (0);
}

/* Throw away a message being received (or received but not wanted). */
void
deliver_discard(struct deliver *d, struct deliver_msg *m)
{
	if (m->open)
		maildir_abort(&d->s->dirs[m->dir].md, &m->file);
	m->open = 0;
}

/* Is a message being received (or received and not ended)? */
int
deliver_receiving(const struct deliver_msg *m)
{
	return (m->open);
}

/* The SHA-256 of what was written, "sha256:<hex>"; returns its length. */
static size_t
deliver_digest(struct deliver *d, char *key, size_t size)
{
	unsigned char	md[EVP_MAX_MD_SIZE];
	unsigned int	mdlen, i;
	size_t		o;

	if (EVP_DigestFinal_ex(d->mdctx, md, &mdlen) != 1)
		fatalx("SHA-256 failed");
	o = snprintf(key, size, "sha256:");
	for (i = 0; i < mdlen && o + 3 <= size; i++)
		o += snprintf(key + o, size - o, "%02x", md[i]);
	return (o);
}

/* Without UIDL: the content's digest, numbered among this session's. */
static size_t
deliver_digest_key(struct deliver *d, char *key, size_t size,
    uint32_t *ordinal)
{
	size_t		o = deliver_digest(d, key, size);
	uint32_t	n = 1;

	if (d->seen == NULL)
		d->seen = state_new();
	while (state_find(d->seen, key, o, n) != STATE_NONE)
		n++;
	state_put(d->seen, key, o, n, 0, 0, NULL, NULL);
	*ordinal = n;
	return (o);
}

/*
 * The message is complete and good: add it to the batch, and commit the
 * batch if it is full or old.  key/ordinal name it (NULL with digests:
 * the content does), listed is the size the server gave (0 if none), tag
 * what else identifies it (NULL: none; "" with IMAP: its content digest),
 * cookie comes back in the committed callback.  Returns 0, or
 * DELIVER_DONE (no UIDL: delivered before, by a session that died before
 * QUIT; the file is dropped and the message may be removed), or -1 with
 * *cause, after which the session must end.
 */
int
deliver_end(struct deliver *d, struct deliver_msg *m, const char *key,
    size_t len, uint32_t ordinal, uint64_t listed, const char *tag,
    void *cookie, char **cause)
{
	struct batch_item	*b;
	char			 digest[80], *dkey = NULL;
	uint32_t		 old;
	int			 x;

	if (maildir_finish(&m->file, cause) == -1) {
		deliver_discard(d, m);
		return (-1);
	}
	if (d->s->digests) {
		len = deliver_digest_key(d, digest, sizeof digest, &ordinal);
		key = digest;
		if (state_find(d->s->st, key, len, ordinal) != STATE_NONE) {
			deliver_discard(d, m);
			return (DELIVER_DONE);
		}
	} else if (tag != NULL && *tag == '\0' && d->mdctx != NULL) {
		deliver_digest(d, digest, sizeof digest);
		tag = digest;
		if (d->reident != NULL &&
		    (old = deliver_reident_find(d, tag)) != STATE_NONE) {
			/* Delivered before, under the old UIDVALIDITY. */
			deliver_discard(d, m);
			state_forget(d->s->st, old);
			deliver_record(d, key, len, ordinal, listed, tag);
			return (DELIVER_DONE);
		}
	}
	if (d->dedupe != NULL && (x = dedupe_check(d, m, key, len, ordinal,
	    &dkey)) != DELIVER_NEW) {
		deliver_discard(d, m);
		if (x == DELIVER_LATER) {
			log_info("account=%s message %.*s is being delivered "
			    "through another account (dedupe = message-id): "
			    "it stays on the server until the next poll",
			    d->ac->name, (int)(m->msgidlen > 200 ? 200 :
			    m->msgidlen), m->msgid);
			return (DELIVER_LATER);
		}
		/* Delivered there already, through another account. */
		log_info("account=%s message %.*s was delivered before "
		    "(dedupe = message-id): not again", d->ac->name,
		    (int)(m->msgidlen > 200 ? 200 : m->msgidlen), m->msgid);
		deliver_record(d, key, len, ordinal, listed, tag);
		return (DELIVER_DONE);
	}
	if (d->nbatch == 0)
		d->batch_started = now_mono();
	/*
	 * A batch outgrows BATCH_MAX_MSGS only while the one before it is
	 * still with the destination; the messages wait in the spool, and
	 * here only their names.
	 */
	if (d->nbatch == d->batchcap) {
		d->batchcap = d->batchcap ? d->batchcap * 2 : BATCH_MAX_MSGS;
		d->batch = xreallocarray(d->batch, d->batchcap,
		    sizeof *d->batch);
		memset(d->batch + d->nbatch, 0, (d->batchcap - d->nbatch) *
		    sizeof *d->batch);
	}
	b = &d->batch[d->nbatch++];
	b->dir = m->dir;
	snprintf(b->final, sizeof b->final, "%s", m->file.final);
	b->key = xmalloc(len + 1);
	memcpy(b->key, key, len);
	b->key[len] = '\0';
	b->keylen = len;
	b->ordinal = ordinal;
	b->tag = tag != NULL && *tag != '\0' ? xstrdup(tag) : NULL;
	b->listed = listed;
	b->size = m->file.size;
	b->cookie = cookie;
	b->dedupe = dkey;
	b->status = DEST_OK;
	d->batch_bytes += m->file.size;
	m->open = 0;
	if (d->nbatch >= BATCH_MAX_MSGS || d->batch_bytes >= BATCH_MAX_BYTES ||
	    now_mono() - d->batch_started >= BATCH_MAX_SECONDS)
		return (deliver_commit(d, cause));
	return (0);
}

/* Messages received and not committed yet. */
size_t
deliver_batched(const struct deliver *d)
{
	return (d->nbatch + d->ncbatch);
}

static void
deliver_clear_items(struct deliver *d, struct batch_item *items, size_t n)
{
	size_t	i;

	for (i = 0; i < n; i++) {
		free(items[i].key);
		free(items[i].tag);
		free(items[i].dedupe);
		free(items[i].reply);
		items[i].key = items[i].tag = items[i].dedupe = NULL;
		items[i].reply = NULL;
	}
}

static void
deliver_clear_batch(struct deliver *d)
{
	deliver_clear_items(d, d->batch, d->nbatch);
	d->nbatch = 0;
	d->batch_bytes = 0;
}

/* Each Maildir the batch touches, once: fsync its tmp/ or its new/. */
static int
deliver_sync_dirs(struct deliver *d, int new, char **cause)
{
	struct maildir	*md;
	size_t		 i, j;

	for (i = 0; i < d->nbatch; i++) {
		for (j = 0; j < i; j++) {
			if (d->batch[j].dir == d->batch[i].dir)
				break;
		}
		if (j < i)
			continue;
		md = &d->s->dirs[d->batch[i].dir].md;
		if ((new ? maildir_sync_new(md, cause) :
		    maildir_sync_tmp(md, cause)) == -1)
			return (-1);
	}
	return (0);
}

/* Remember a delivered file's path (for the on-new-mail hook). */
static void
deliver_note_file(struct deliver *d, const char *dir, const char *final)
{
	size_t	n = strlen(dir) + strlen(final) + sizeof "/new/\n";

	if (d->ac->on_new_mail == NULL || d->newlen + n > NEWFILES_MAX)
		return;
	if (d->newlen + n > d->newcap) {
		while (d->newlen + n > d->newcap)
			d->newcap = d->newcap ? d->newcap * 2 : 4096;
		d->newfiles = xreallocarray(d->newfiles, d->newcap, 1);
	}
	d->newlen += (size_t)snprintf(d->newfiles + d->newlen, n,
	    "%s/new/%s\n", dir, final);
}

/* The paths delivered since the last call, one a line (allocated). */
char *
deliver_new_files(struct deliver *d, size_t *len)
{
	char	*p = d->newfiles;

	*len = d->newlen;
	d->newfiles = NULL;
	d->newlen = d->newcap = 0;
	return (p);
}

/*
 * Commit the batch: into the Maildir at once, or handed to the
 * destination (deliver = lmtp or mda), which answers later.  On failure
 * the session must end.
 */
int
deliver_commit(struct deliver *d, char **cause)
{
	if (d->dest != NULL)
		return (deliver_dest_commit(d, cause));
	return (deliver_maildir_commit(d, cause));
}

/*
 * Steps 1 to 5 of the commit protocol (see the top of this file) for the
 * batch.  On failure the session must end.
 */
static int
deliver_maildir_commit(struct deliver *d, char **cause)
{
	struct state		*st = d->s->st;
	struct batch_item	*b;
	uint32_t		*ids;
	time_t			 now = time(NULL);
	size_t			 i;
	char			*file;

	if (d->nbatch == 0)
		return (0);
	if (d->s->suspect) {
		xasprintf(cause, "an earlier commit failed");
		goto discard;
	}
	for (i = 0; i < d->nbatch; i++) {
		b = &d->batch[i];
		if (maildir_sync_file(&d->s->dirs[b->dir].md, b->final,
		    cause) == -1)
			goto discard;
	}
	if (deliver_sync_dirs(d, 0, cause) == -1)
		goto discard;
	if (d->dedupe != NULL)
		dedupe_sync(d);		/* the notes before the records */
	ids = xcalloc(d->nbatch, sizeof *ids);
	for (i = 0; i < d->nbatch; i++) {
		b = &d->batch[i];
		if (d->s->dirs[b->dir].name != NULL)
			xasprintf(&file, "%s/%s", d->s->dirs[b->dir].name,
			    b->final);
		else
			file = xstrdup(b->final);
		ids[i] = state_put(st, b->key, b->keylen, b->ordinal, now,
		    b->listed, b->tag, file);
		free(file);
	}
	/* From here on, a failure may have left records on disk. */
	if (state_sync(st, cause) == -1) {
		free(ids);
		goto fail;
	}
	for (i = 0; i < d->nbatch; i++) {
		b = &d->batch[i];
		if (maildir_move(&d->s->dirs[b->dir].md, b->final,
		    cause) == -1) {
			free(ids);
			goto fail;
		}
	}
	if (deliver_sync_dirs(d, 1, cause) == -1) {
		free(ids);
		goto fail;
	}
	/* Delivered: the records say so at the next sync. */
	for (i = 0; i < d->nbatch; i++) {
		state_delivered(st, ids[i]);
		state_set_flags(st, ids[i], REC_LISTED, 0);
		store_index_tag(d->s, ids[i], d->batch[i].tag);
	}
	free(ids);
	log_debug("account=%s committed %zu messages", d->ac->name, d->nbatch);
	for (i = 0; i < d->nbatch; i++)
		deliver_note_file(d, d->s->dirs[d->batch[i].dir].md.path,
		    d->batch[i].final);
	dedupe_settle_all(d, d->batch, d->nbatch, 1);
	for (i = 0; i < d->nbatch; i++)
		d->committed(d->batch[i].cookie, d->batch[i].size, d->arg);
	deliver_clear_batch(d);
	return (0);

discard:
	/* Nothing about this batch was recorded: it will be fetched again. */
	for (i = 0; i < d->nbatch; i++)
		maildir_unlink(&d->s->dirs[d->batch[i].dir].md,
		    d->batch[i].final);
	dedupe_settle_all(d, d->batch, d->nbatch, 0);
fail:
	/*
	 * Otherwise leave the batch's files where they are: whether they
	 * count as delivered depends on whether the state got their records,
	 * which only the next deliver_open() can tell for sure.
	 */
	deliver_clear_batch(d);
	d->s->suspect = 1;
	return (-1);
}

/*
 * THE COMMIT TO A DESTINATION (deliver = lmtp or mda).  The spool file
 * needs no fsync: until the destination has taken the message, nothing
 * is recorded and nothing removed from the server, so a crash only means
 * fetching it again.  Then:
 *
 *  1. each message of the batch is handed to the destination, with an
 *     "X-Maild-Id:" header (a digest of the account and the message's
 *     key) on top;
 *  2. once every answer is in, the messages taken (LMTP 250, MDA exit 0)
 *     are recorded as delivered and that is made durable (state_sync());
 *  3. only then may they be removed from the server.
 *
 * A crash between 1 and 2 delivers those messages again at the next
 * poll: no LMTP server or MDA can say "I have that one already".  With
 * X-Maild-Id and Sieve's duplicate test (see maild.conf(5)) the second
 * copy is dropped there.  A message refused for now (LMTP 4xx, MDA exit
 * 75) or for good (5xx, another exit status) is not recorded: it stays on
 * the server, and the error is logged and reported.
 *
 * While a batch is with the destination, the next one fills; it is
 * handed over when the first is done.
 */
static void
deliver_dest_done(int status, const char *reply, void *arg)
{
	struct batch_item	*b = arg;
	struct deliver		*d = b->d;
	struct state		*st = d->s->st;
	char			*cause = NULL, esc[LOG_ESCAPE_MAX];
	time_t			 now = time(NULL);
	size_t			 i, ok = 0;
	uint32_t		 id;

	b->status = status;
	if (reply != b->reply) {
		free(b->reply);
		b->reply = reply != NULL ? xstrdup(reply) : NULL;
	}
	if (--d->cwaiting > 0)
		return;
	for (i = 0; i < d->ncbatch; i++) {
		b = &d->cbatch[i];
		maildir_unlink(&d->s->dirs[b->dir].md, b->final);
		if (b->status == DEST_OK) {
			id = state_put(st, b->key, b->keylen, b->ordinal, now,
			    b->listed, b->tag, NULL);
			store_index_tag(d->s, id, b->tag);
			ok++;
			continue;
		}
		d->refused++;
		if (b->status == DEST_PERM)
			d->refused_perm = 1;
		log_warnx("account=%s the %s refused a message%s (it stays on "
		    "the server): %s", d->ac->name, d->ac->deliver ==
		    DELIVER_LMTP ? "LMTP server" : "mda", b->status ==
		    DEST_TEMP ? " for now" : "", b->reply != NULL ?
		    log_escape(esc, sizeof esc, b->reply, strlen(b->reply)) :
		    "no reason given");
		if (d->refused_reply == NULL && b->reply != NULL)
			d->refused_reply = xstrdup(log_escape(esc, sizeof esc,
			    b->reply, strlen(b->reply)));
	}
	if (ok > 0 && !d->s->suspect && state_sync(st, &cause) == -1) {
		d->s->suspect = 1;
		deliver_clear_items(d, d->cbatch, d->ncbatch);
		d->ncbatch = 0;
		d->ready(d->ready_arg, cause);
		free(cause);
		return;
	}
	log_debug("account=%s delivered %zu messages to the %s", d->ac->name,
	    ok, d->ac->deliver == DELIVER_LMTP ? "LMTP server" : "mda");
	dedupe_settle_all(d, d->cbatch, d->ncbatch, 1);
	for (i = 0; i < d->ncbatch; i++) {
		if (d->cbatch[i].status == DEST_OK)
			d->committed(d->cbatch[i].cookie, d->cbatch[i].size,
			    d->arg);
	}
	deliver_clear_items(d, d->cbatch, d->ncbatch);
	d->ncbatch = 0;
	/* The next batch, if it is due or was asked for meanwhile. */
	if (d->nbatch > 0 && (d->commit_wanted || d->nbatch >= BATCH_MAX_MSGS ||
	    d->batch_bytes >= BATCH_MAX_BYTES || now_mono() -
	    d->batch_started >= BATCH_MAX_SECONDS)) {
		d->commit_wanted = 0;
		if (deliver_dest_commit(d, &cause) == -1) {
			d->ready(d->ready_arg, cause);
			free(cause);
			return;
		}
	}
	d->ready(d->ready_arg, NULL);
}

/* Hand the batch to the destination (step 1 above). */
static int
deliver_dest_commit(struct deliver *d, char **cause)
{
	struct batch_item	*b, *tmp;
	struct maildir		*md;
	char			 header[128], name[256], id[40];
	size_t			 i, cap;
	int			 fd;

	if (d->nbatch == 0)
		return (0);
	if (d->s->suspect) {
		xasprintf(cause, "an earlier commit failed");
		return (-1);
	}
	if (d->ncbatch > 0) {
		d->commit_wanted = 1;	/* when the one in flight is done */
		return (0);
	}
	/* The filled batch becomes the one in flight. */
	tmp = d->cbatch;
	d->cbatch = d->batch;
	d->ncbatch = d->nbatch;
	d->batch = tmp;
	d->nbatch = 0;
	cap = d->cbatchcap;
	d->cbatchcap = d->batchcap;
	d->batchcap = cap;
	d->batch_bytes = 0;
	d->cwaiting = d->ncbatch;
	if (d->dedupe != NULL)
		dedupe_sync(d);		/* the notes before the handing over */
	for (i = 0; i < d->ncbatch; i++) {
		b = &d->cbatch[i];
		b->d = d;
		md = &d->s->dirs[b->dir].md;
		deliver_msg_id(d, b->key, b->keylen, b->ordinal, id, sizeof id);
		snprintf(header, sizeof header, "X-Maild-Id: %s\n", id);
		maildir_tmp_name(b->final, name, sizeof name);
		fd = openat(md->tmpfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
		if (fd == -1) {
			b->status = DEST_TEMP;
			b->reply = NULL;
			xasprintf(&b->reply, "cannot read the spooled message "
			    "%s/tmp/%s: %s", md->path, name, strerror(errno));
			/* Answered at once, but from a fresh event. */
			dest_answer_later(d->dest, deliver_dest_done, b,
			    DEST_TEMP, b->reply);
			continue;
		}
		dest_send(d->dest, fd, header, deliver_dest_done, b);
	}
	return (0);
}

/*
 * The session is failing: keep what is complete if that is quick and
 * certain (into the Maildir); what would go to a destination is dropped
 * instead, to be fetched again (its spool files go now).
 */
int
deliver_abort(struct deliver *d, char **cause)
{
	size_t	i;

	if (d->dest == NULL)
		return (deliver_commit(d, cause));
	for (i = 0; i < d->nbatch; i++)
		maildir_unlink(&d->s->dirs[d->batch[i].dir].md,
		    d->batch[i].final);
	dedupe_settle_all(d, d->batch, d->nbatch, 0);
	deliver_clear_batch(d);
	return (0);
}

/*
 * Is a batch with the destination?  A session that ends waits for its
 * answers (deliver_set_ready()): dropping them would deliver again what
 * the destination took.
 */
int
deliver_in_flight(const struct deliver *d)
{
	return (d != NULL && d->cwaiting > 0);
}

/*
 * Set the function told when a commit to the destination has ended
 * (cause non-NULL: it failed, and the session must end).
 */
void
deliver_set_ready(struct deliver *d, deliver_ready_cb fn, void *arg)
{
	d->ready = fn;
	d->ready_arg = arg;
}

/*
 * How many messages the destination refused in this session; with
 * *perm whether any for good, and *reply the first of its reasons.
 */
unsigned
deliver_refused(const struct deliver *d, int *perm, const char **reply)
{
	*perm = d->refused_perm;
	*reply = d->refused_reply;
	return (d->refused);
}

/* The server acknowledged the removal of a message (POP3: DELE +OK). */
void
deliver_removal_acked(struct deliver *d, const char *key, size_t len,
    uint32_t ordinal)
{
	uint32_t	id;

	if (!d->s->digests &&
	    (id = state_find(d->s->st, key, len, ordinal)) != STATE_NONE)
		state_set_flags(d->s->st, id, REC_REMOVED, 0);
}

/*
 * The removals are about to take effect (POP3: QUIT is sent next).  With
 * digests, say so durably first (see the top of this file).
 */
int
deliver_removing(struct deliver *d, char **cause)
{
	if (!d->s->digests || state_count(d->s->st) == 0 || d->s->suspect)
		return (0);
	state_set_meta(d->s->st, "digest-quit", "1");
	return (state_sync(d->s->st, cause));
}

/*
 * The server confirmed the removals (POP3: +OK to QUIT): their records
 * are forgotten, so that a new message under a reused key is new.
 */
void
deliver_removed(struct deliver *d)
{
	struct state		*st = d->s->st;
	const struct state_rec	*r;
	uint32_t		 it = 0;
	unsigned		 n = 0;

	if (d->s->digests) {
		state_forget_all(st);
		state_set_meta(st, "digest-quit", NULL);
		return;
	}
	while ((r = state_next(st, &it)) != NULL) {
		if (r->flags & REC_REMOVED) {
			state_forget(st, state_rec_id(st, r));
			n++;
		}
	}
	if (n > 0)
		log_debug("account=%s forgot %u records of messages the server "
		    "removed", d->ac->name, n);
}

/*
 * "Received:" and friends, as add-headers asks, into buf; returns their
 * length.  proto is the protocol's name ("POP3"); with TLS it gets an S.
 */
size_t
deliver_trace_headers(const struct account_conf *ac, const char *proto,
    const char *peer, const char *tls, char *buf, size_t size)
{
	char		 date[64], addr[512], local[256];
	struct tm	 tm;
	time_t		 now = time(NULL);
	size_t		 o = 0;
	int		 n;

	if (ac->add_headers == 0)
		return (0);
	if (strchr(ac->user, '@') != NULL)
		snprintf(addr, sizeof addr, "%s", ac->user);
	else
		snprintf(addr, sizeof addr, "%s@%s", ac->user, ac->host);
	if (ac->add_headers & HDR_DELIVERED_TO) {
		n = snprintf(buf + o, size - o, "Delivered-To: %s\n", addr);
		if (n > 0 && (size_t)n < size - o)
			o += n;
	}
	if (ac->add_headers & HDR_X_ORIGINAL_TO) {
		n = snprintf(buf + o, size - o, "X-Original-To: %s\n", addr);
		if (n > 0 && (size_t)n < size - o)
			o += n;
	}
	if (ac->add_headers & HDR_RECEIVED) {
		gmtime_r(&now, &tm);
		strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
		if (gethostname(local, sizeof local) == -1)
			snprintf(local, sizeof local, "localhost");
		local[sizeof local - 1] = '\0';
		n = snprintf(buf + o, size - o, "Received: from %s (%s)\n"
		    "\tby %s (maild %s) with %s%s%s%s%s\n\tfor <%s>; %s\n",
		    ac->host, peer, local, PACKAGE_VERSION, proto,
		    ac->tls == TLS_NONE ? "" : "S", tls[0] ? " (" : "", tls,
		    tls[0] ? ")" : "", addr, date);
		if (n > 0 && (size_t)n < size - o)
			o += n;
	}
	return (o);
}

/* The Maildir's path, for messages. */
const char *
deliver_maildir(const struct deliver *d)
{
	return (d->s->maildir);
}

/* How many messages the account's state remembers (the metrics). */
uint32_t
deliver_records(const struct deliver *d)
{
	return (state_count(d->s->st));
}
