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
 *    exact-sizes) is a different message under a reused key: it is new;
 *  - records of messages the listings no longer show are forgotten only
 *    after FORGET_LISTINGS complete listings in a row and FORGET_SECONDS
 *    without them, so that one empty or partial listing (a server glitch)
 *    does not make every message new again.
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

#include <errno.h>
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
#define FORGET_SECONDS		(7 * 86400)
/* The flags deliver.c keeps on records (state_set_flags). */
#define REC_LISTED		0x01	/* in this session's listing */
#define REC_REMOVED		0x02	/* the server acknowledged removal */

/* A message received and durable in tmp/, waiting for its commit. */
struct batch_item {
	char		 final[MAILDIR_NAME_MAX];	/* its name in new/ */
	char		*key;
	size_t		 keylen;
	uint32_t	 ordinal;
	uint64_t	 listed;	/* the size the server listed */
	uint64_t	 size;		/* the size of the file */
	void		*cookie;
};

struct deliver {
	const struct account_conf *ac;
	struct state		*st;
	struct maildir		 md;
	int			 md_open;
	int			 suspect;	/* a commit failed */
	int			 digests;	/* keys are content digests */
	struct state		*seen;		/* digests of this session */
	EVP_MD_CTX		*mdctx;
	deliver_committed_cb	 committed;
	void			*arg;

	struct batch_item	*batch;
	size_t			 nbatch;
	uint64_t		 batch_bytes;
	double			 batch_started;
};

static int	deliver_recover(struct deliver *, char **);
static void	deliver_clear_batch(struct deliver *);

/*
 * Open an account's delivery: lock and load its state, open its Maildir,
 * finish what a crash interrupted and remove partial files.  mailbox
 * names what the state's keys belong to ("user@host"): a state kept for
 * another mailbox is not used.  committed is called for each message of
 * a batch once it is delivered.  On failure, *code is the exit status.
 */
struct deliver *
deliver_open(const struct account_conf *ac, const char *state_dir,
    const char *mailbox, deliver_committed_cb committed, void *arg, int *code,
    char **cause)
{
	struct deliver	*d;
	const char	*old;
	char		 path[PATH_MAX];
	uint32_t	 tag;
	int		 n;

	d = xcalloc(1, sizeof *d);
	d->ac = ac;
	d->committed = committed;
	d->arg = arg;
	if (mkdir_p(state_dir, 0700) == -1) {
		xasprintf(cause, "state-dir %s: %s", state_dir,
		    strerror(errno));
		*code = EXIT_IOERR;
		goto fail;
	}
	if ((d->st = state_open(state_dir, ac->name, code, cause)) == NULL)
		goto fail;
	/* Partial files in tmp/ carry a tag that says whose they are. */
	snprintf(path, sizeof path, "%s/%s.state", state_dir, ac->name);
	tag = (uint32_t)siphash24((const uint8_t *)"maild tmp tag 01", path,
	    strlen(path));
	*code = EXIT_IOERR;
	if (maildir_open(&d->md, ac->maildir, tag, ac->name, cause) == -1)
		goto fail;
	d->md_open = 1;

	old = state_meta(d->st, "mailbox");
	if (old != NULL && strcmp(old, mailbox) != 0) {
		log_warnx("account=%s the state file was kept for mailbox %s, "
		    "but the account is now %s: starting afresh", ac->name,
		    old, mailbox);
		/* Recovery first: a pending delivery is still a delivery. */
		if (deliver_recover(d, cause) == -1)
			goto fail;
		state_forget_all(d->st);
	}
	state_set_meta(d->st, "mailbox", mailbox);
	if (deliver_recover(d, cause) == -1)
		goto fail;
	state_set_meta(d->st, "maildir", ac->maildir);
	if ((n = maildir_cleanup_tmp(&d->md)) > 0)
		log_info("account=%s removed %d partial file%s an interrupted "
		    "fetch left in %s/tmp", ac->name, n, n == 1 ? "" : "s",
		    ac->maildir);
	if (state_meta(d->st, "digest-quit") != NULL) {
		if (state_count(d->st) > 0)
			log_info("account=%s the last session said QUIT without "
			    "hearing back: the messages it recognised by their "
			    "content may be gone from the server, so their "
			    "digests are not used", ac->name);
		state_forget_all(d->st);
		state_set_meta(d->st, "digest-quit", NULL);
	}
	d->digests = state_meta(d->st, "records") != NULL &&
	    strcmp(state_meta(d->st, "records"), "digests") == 0;
	if (state_dirty(d->st) && state_sync(d->st, cause) == -1)
		goto fail;
	return (d);

fail:
	deliver_close(d);
	return (NULL);
}

/*
 * Finish the deliveries a crash interrupted (see the top of this file).
 * The maildir recorded is the one the files are in.
 */
static int
deliver_recover(struct deliver *d, char **cause)
{
	const struct state_rec	*r;
	struct maildir		 other, *md = &d->md;
	const char		*dir, *file;
	uint32_t		 it = 0, id;
	unsigned		 done = 0, lost = 0, moved = 0;
	int			 x;

	dir = state_meta(d->st, "maildir");
	if (dir != NULL && strcmp(dir, d->ac->maildir) != 0) {
		/* Still the Maildir the pending files went to. */
		if (maildir_open(&other, dir, d->md.tag, d->ac->name,
		    cause) == -1)
			return (-1);
		md = &other;
	}
	while ((r = state_next(d->st, &it)) != NULL) {
		if (r->kind != STATE_PENDING)
			continue;
		id = state_rec_id(d->st, r);
		file = state_rec_file(d->st, r);
		if ((x = maildir_recover(md, file, cause)) == -1)
			goto fail;
		if (x == MAILDIR_MISSING) {
			log_warnx("account=%s the message of an interrupted "
			    "delivery (%s) is in neither tmp/, new/ nor cur/ "
			    "of %s: it will be fetched again", d->ac->name,
			    file, md->path);
			state_forget(d->st, id);
			lost++;
			continue;
		}
		if (x == MAILDIR_MOVED)
			moved++;
		state_delivered(d->st, id);
		done++;
	}
	/* The moves before the crash may not have reached the disk. */
	if (done > 0 && maildir_sync_new(md, cause) == -1)
		goto fail;
	if (done > 0)
		log_info("account=%s finished %u deliver%s a crash had "
		    "interrupted (%u moved into new/ now)", d->ac->name, done,
		    done == 1 ? "y" : "ies", moved);
	if (md != &d->md)
		maildir_close(&other);
	return (0);
fail:
	if (md != &d->md)
		maildir_close(&other);
	return (-1);
}

/* Close; unsynced changes to the state are dropped (deliver_sync first). */
void
deliver_close(struct deliver *d)
{
	if (d == NULL)
		return;
	deliver_clear_batch(d);
	free(d->batch);
	if (d->md_open)
		maildir_close(&d->md);
	state_close(d->st);
	state_close(d->seen);
	EVP_MD_CTX_free(d->mdctx);
	free(d);
}

/* Make the changes to the state durable (unless a commit failed). */
int
deliver_sync(struct deliver *d, char **cause)
{
	if (d->suspect || !state_dirty(d->st))
		return (0);
	return (state_sync(d->st, cause));
}

/*
 * The server has no UIDL: the keys are content digests.  Records of UIDLs
 * cannot recognise a message without one, so with those maild refuses.
 */
int
deliver_use_digests(struct deliver *d)
{
	if (d->digests)
		return (0);
	if (state_count(d->st) > 0)
		return (-1);
	d->digests = 1;
	state_set_meta(d->st, "records", "digests");
	return (0);
}

/* The server has UIDL (again): digests mean nothing now. */
void
deliver_use_keys(struct deliver *d)
{
	if (!d->digests)
		return;
	d->digests = 0;
	state_forget_all(d->st);
	state_set_meta(d->st, "records", NULL);
}

/* A listing starts: no record is listed yet. */
void
deliver_listing_start(struct deliver *d)
{
	const struct state_rec	*r;
	uint32_t		 it = 0;

	while ((r = state_next(d->st, &it)) != NULL)
		state_set_flags(d->st, state_rec_id(d->st, r), 0, REC_LISTED);
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
	const struct state_rec	*r;
	uint32_t		 id;
	char			 esc[LOG_ESCAPE_MAX];

	if ((id = state_find(d->st, key, len, ordinal)) == STATE_NONE)
		return (DELIVER_NEW);
	r = state_rec(d->st, id);
	if (d->ac->exact_sizes && size != 0 && r->size != 0 &&
	    size != r->size) {
		/* Not listed: the old record goes if it stays unlisted. */
		log_warnx("account=%s the server lists \"%s\" with %llu bytes, "
		    "but the message maild delivered under that id had %llu: "
		    "the server reused the id for a new message, which is "
		    "fetched", d->ac->name, log_escape(esc, sizeof esc, key,
		    len), (unsigned long long)size,
		    (unsigned long long)r->size);
		return (DELIVER_NEW);
	}
	state_set_flags(d->st, id, REC_LISTED, 0);
	if (r->missed != 0 || r->absent != 0)
		state_set_absence(d->st, id, 0, 0);
	if (first != NULL)
		*first = r->first;
	return (DELIVER_DONE);
}

/*
 * The listing was complete: count a miss for every record it did not
 * mention, and forget those missing long enough (see the top).
 */
void
deliver_listing_end(struct deliver *d)
{
	const struct state_rec	*r;
	uint32_t		 it = 0, id;
	time_t			 now = time(NULL);
	unsigned		 forgot = 0, missing = 0;

	while ((r = state_next(d->st, &it)) != NULL) {
		if ((r->flags & REC_LISTED) || r->kind != STATE_DELIVERED)
			continue;
		id = state_rec_id(d->st, r);
		state_set_absence(d->st, id, r->missed + 1,
		    r->absent != 0 ? r->absent : now);
		if (r->missed >= FORGET_LISTINGS &&
		    now - r->absent >= FORGET_SECONDS) {
			state_forget(d->st, id);
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
 * Note how many messages the server keeps for their size (max-size);
 * returns how many it kept at the poll before, so that a warning is only
 * given when there are more.
 */
unsigned
deliver_too_big(struct deliver *d, unsigned n)
{
	const char	*v = state_meta(d->st, "too-big");
	uint64_t	 before = 0;
	char		 buf[16];

	if (v != NULL && parse_u64(v, UINT32_MAX, &before) == -1)
		before = 0;
	snprintf(buf, sizeof buf, "%u", n);
	state_set_meta(d->st, "too-big", n > 0 ? buf : NULL);
	return ((unsigned)before);
}

/* Start receiving a message; prefix (trace headers) goes first. */
int
deliver_begin(struct deliver *d, struct deliver_msg *m, const char *prefix,
    size_t prefixlen, char **cause)
{
	memset(m, 0, sizeof *m);
	if (maildir_create(&d->md, &m->file, cause) == -1) {
		m->file.fd = -1;
		return (-1);
	}
	m->open = 1;
	if (prefixlen > 0 && maildir_write(&m->file, prefix, prefixlen) == -1) {
		xasprintf(cause, "cannot write to %s/tmp: %s", d->md.path,
		    strerror(errno));
		deliver_discard(d, m);
		return (-1);
	}
	if (d->digests) {
		if (d->mdctx == NULL && (d->mdctx = EVP_MD_CTX_new()) == NULL)
			fatalx("EVP_MD_CTX_new");
		if (EVP_DigestInit_ex(d->mdctx, EVP_sha256(), NULL) != 1)
			fatalx("SHA-256 unavailable");
	}
	return (0);
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
	if (d->digests)
		EVP_DigestUpdate(d->mdctx, buf, len);
	m->body += len;
	return (0);
}

/* Throw away a message being received (or received but not wanted). */
void
deliver_discard(struct deliver *d, struct deliver_msg *m)
{
	if (m->open)
		maildir_abort(&d->md, &m->file);
	m->open = 0;
}

/* Is a message being received (or received and not ended)? */
int
deliver_receiving(const struct deliver_msg *m)
{
	return (m->open);
}

/* Without UIDL: the content's digest, numbered among this session's. */
static size_t
deliver_digest_key(struct deliver *d, char *key, size_t size,
    uint32_t *ordinal)
{
	unsigned char	md[EVP_MAX_MD_SIZE];
	unsigned int	mdlen, i;
	size_t		o;
	uint32_t	n = 1;

	if (EVP_DigestFinal_ex(d->mdctx, md, &mdlen) != 1)
		fatalx("SHA-256 failed");
	o = snprintf(key, size, "sha256:");
	for (i = 0; i < mdlen && o + 3 <= size; i++)
		o += snprintf(key + o, size - o, "%02x", md[i]);
	if (d->seen == NULL)
		d->seen = state_new();
	while (state_find(d->seen, key, o, n) != STATE_NONE)
		n++;
	state_put(d->seen, key, o, n, 0, 0, NULL);
	*ordinal = n;
	return (o);
}

/*
 * The message is complete and good: add it to the batch, and commit the
 * batch if it is full or old.  key/ordinal name it (NULL with digests:
 * the content does), listed is the size the server gave (0 if none),
 * cookie comes back in the committed callback.  Returns 0, or
 * DELIVER_DONE (no UIDL: delivered before, by a session that died before
 * QUIT; the file is dropped and the message may be removed), or -1 with
 * *cause, after which the session must end.
 */
int
deliver_end(struct deliver *d, struct deliver_msg *m, const char *key,
    size_t len, uint32_t ordinal, uint64_t listed, void *cookie,
    char **cause)
{
	struct batch_item	*b;
	char			 digest[80];

	if (maildir_finish(&m->file, cause) == -1) {
		deliver_discard(d, m);
		return (-1);
	}
	if (d->digests) {
		len = deliver_digest_key(d, digest, sizeof digest, &ordinal);
		key = digest;
		if (state_find(d->st, key, len, ordinal) != STATE_NONE) {
			deliver_discard(d, m);
			return (DELIVER_DONE);
		}
	}
	if (d->nbatch == 0) {
		if (d->batch == NULL)
			d->batch = xcalloc(BATCH_MAX_MSGS, sizeof *d->batch);
		d->batch_started = now_mono();
	}
	b = &d->batch[d->nbatch++];
	snprintf(b->final, sizeof b->final, "%s", m->file.final);
	b->key = xmalloc(len + 1);
	memcpy(b->key, key, len);
	b->key[len] = '\0';
	b->keylen = len;
	b->ordinal = ordinal;
	b->listed = listed;
	b->size = m->file.size;
	b->cookie = cookie;
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
	return (d->nbatch);
}

static void
deliver_clear_batch(struct deliver *d)
{
	size_t	i;

	for (i = 0; i < d->nbatch; i++)
		free(d->batch[i].key);
	d->nbatch = 0;
	d->batch_bytes = 0;
}

/*
 * Steps 1 to 5 of the commit protocol (see the top of this file) for the
 * batch.  On failure the session must end.
 */
int
deliver_commit(struct deliver *d, char **cause)
{
	struct batch_item	*b;
	uint32_t		*ids;
	time_t			 now = time(NULL);
	size_t			 i;

	if (d->nbatch == 0)
		return (0);
	if (d->suspect) {
		xasprintf(cause, "an earlier commit failed");
		goto discard;
	}
	for (i = 0; i < d->nbatch; i++) {
		if (maildir_sync_file(&d->md, d->batch[i].final, cause) == -1)
			goto discard;
	}
	if (maildir_sync_tmp(&d->md, cause) == -1)
		goto discard;
	ids = xcalloc(d->nbatch, sizeof *ids);
	for (i = 0; i < d->nbatch; i++) {
		b = &d->batch[i];
		ids[i] = state_put(d->st, b->key, b->keylen, b->ordinal, now,
		    b->listed, b->final);
	}
	/* From here on, a failure may have left records on disk. */
	if (state_sync(d->st, cause) == -1) {
		free(ids);
		goto fail;
	}
	for (i = 0; i < d->nbatch; i++) {
		if (maildir_move(&d->md, d->batch[i].final, cause) == -1) {
			free(ids);
			goto fail;
		}
	}
	if (maildir_sync_new(&d->md, cause) == -1) {
		free(ids);
		goto fail;
	}
	/* Delivered: the records say so at the next sync. */
	for (i = 0; i < d->nbatch; i++) {
		state_delivered(d->st, ids[i]);
		state_set_flags(d->st, ids[i], REC_LISTED, 0);
	}
	free(ids);
	log_debug("account=%s committed %zu messages", d->ac->name, d->nbatch);
	for (i = 0; i < d->nbatch; i++)
		d->committed(d->batch[i].cookie, d->batch[i].size, d->arg);
	deliver_clear_batch(d);
	return (0);

discard:
	/* Nothing about this batch was recorded: it will be fetched again. */
	for (i = 0; i < d->nbatch; i++)
		maildir_unlink(&d->md, d->batch[i].final);
fail:
	/*
	 * Otherwise leave the batch's files where they are: whether they
	 * count as delivered depends on whether the state got their records,
	 * which only the next deliver_open() can tell for sure.
	 */
	deliver_clear_batch(d);
	d->suspect = 1;
	return (-1);
}

/* The server acknowledged the removal of a message (POP3: DELE +OK). */
void
deliver_removal_acked(struct deliver *d, const char *key, size_t len,
    uint32_t ordinal)
{
	uint32_t	id;

	if (!d->digests &&
	    (id = state_find(d->st, key, len, ordinal)) != STATE_NONE)
		state_set_flags(d->st, id, REC_REMOVED, 0);
}

/*
 * The removals are about to take effect (POP3: QUIT is sent next).  With
 * digests, say so durably first (see the top of this file).
 */
int
deliver_removing(struct deliver *d, char **cause)
{
	if (!d->digests || state_count(d->st) == 0 || d->suspect)
		return (0);
	state_set_meta(d->st, "digest-quit", "1");
	return (state_sync(d->st, cause));
}

/*
 * The server confirmed the removals (POP3: +OK to QUIT): their records
 * are forgotten, so that a new message under a reused key is new.
 */
void
deliver_removed(struct deliver *d)
{
	const struct state_rec	*r;
	uint32_t		 it = 0;
	unsigned		 n = 0;

	if (d->digests) {
		state_forget_all(d->st);
		state_set_meta(d->st, "digest-quit", NULL);
		return;
	}
	while ((r = state_next(d->st, &it)) != NULL) {
		if (r->flags & REC_REMOVED) {
			state_forget(d->st, state_rec_id(d->st, r));
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
	return (d->md.path);
}
