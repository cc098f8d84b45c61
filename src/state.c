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
 * state.c: the per-account state, which remembers every message maild has
 * delivered so that none is delivered twice.  It is a set of records, each
 * naming a message by a key the caller chose (a POP3 UIDL, say) and an
 * ordinal (the nth message with that key), plus a few named values (meta).
 * What the records mean is deliver.c's business; this file stores them,
 * finds them fast, and keeps them on disk so that a crash at any moment
 * leaves either the old or the new version of every change.
 *
 * On disk, <name>.state is a snapshot and <name>.journal the changes made
 * since, both text:
 *
 *	maild-state 2				maild-journal 2 <generation>
 *	generation <g>				<record or meta lines>
 *	meta <name> <value>			C <lines> <checksum>
 *	D <first> <n> <size> <missed> <absent> <key> <tag>	(delivered)
 *	P <first> <n> <size> <missed> <absent> <key> <tag> <file>  (moving)
 *	F <n> <key>				(journal: forget)
 *	end <lines> <checksum>
 *
 * <first> is when the message was delivered (unix time), <size> its size
 * as the server listed it (0: unknown), <missed> and <absent> how many
 * listings in a row did not have it and since when, <tag> what else the
 * caller knows of the message ("-" if nothing; a Message-ID digest, say),
 * <file> its name in new/, or "<.Folder>/<name>" in a Maildir++ folder.  Keys, values and
 * file names are escaped: bytes outside 0x21-0x7e and '%' become %XX.
 * The checksum (64-bit FNV-1a, in hex) covers every byte of the file (or
 * block) before its end line, so a truncated or damaged file is refused
 * instead of being read as a shorter one: that would deliver again every
 * message the lost records named.
 *
 * Changes are appended to the journal as one block per state_sync(),
 * which is fdatasync()ed: the cost of a commit does not grow with the
 * number of records.  A block whose end line is missing or wrong at the
 * end of the journal was being written when maild died; it was never
 * acknowledged, so it is ignored (see deliver.c for why that is safe).
 * When the journal outgrows the snapshot, a new snapshot with the next
 * generation replaces both (temporary file, fsync, rename, fsync of the
 * directory); a journal of an older generation than the snapshot is what
 * a crash in the middle of that left, and is ignored.  maild 0.1's
 * version 1 files are read too, and rewritten as version 2.
 *
 * <name>.lock keeps a second maild (or a second session of the same maild)
 * away: an open-file-description lock, which conflicts within one process
 * too, held for as long as the state is open; the holder writes its pid
 * into the file for the message the other one gives.
 */

#include "config.h"

#include <sys/stat.h>
#include <sys/uio.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "maild.h"

#define STATE_LINE_MAX		8192
/* A journal smaller than this is never worth compacting. */
#define JOURNAL_MIN_COMPACT	(256U << 10)
/* The arena (keys and file names) and the records have hard limits. */
#define ARENA_MAX		(1U << 31)
#define RECORDS_MAX		(1U << 26)

struct state {
	char		*path;		/* <name>.state */
	char		*journal_path;	/* <name>.journal */
	char		*lock_path;
	char		*dir;
	int		 lock_fd;
	int		 journal_fd;
	uint64_t	 generation;
	off_t		 journal_size;
	off_t		 snapshot_size;
	int		 compact;	/* write a snapshot at the next sync */
	uint64_t	 epoch;		/* bumped when record ids change */

	struct state_rec *recs;
	uint32_t	 nrecs, caprecs, nlive;
	char		*arena;		/* keys and file names */
	size_t		 arenalen, arenacap;
	uint32_t	*index;		/* open addressing: record id + 1 */
	size_t		 indexsize;
	size_t		 nindexed;	/* slots in use, forgotten ones too */
	int		 have_snapshot;
	uint8_t		 key[16];	/* for the index's hash */

	struct meta {
		char	*name;
		char	*value;
	}		*meta;
	size_t		 nmeta;

	char		*pending;	/* journal lines not written yet */
	size_t		 pendlen, pendcap;
	unsigned	 pendlines;
};

static void	state_index_rebuild(struct state *);
static uint64_t	state_hash(struct state *, const void *, size_t, uint32_t);
static uint32_t	state_store(struct state *, const void *, size_t);
static void	state_log_rec(struct state *, uint32_t);
static void	state_append(struct state *, const char *, ...)
		    PRINTFLIKE(2, 3);
static int	state_write_snapshot(struct state *, char **);
static int	state_append_journal(struct state *, char **);

/* 64-bit FNV-1a, continued from h: the checksum of the files. */
static uint64_t
fnv1a(uint64_t h, const void *data, size_t len)
{
	const unsigned char	*p = data;

	while (len-- > 0) {
		h ^= *p++;
		h *= 0x100000001b3ULL;
	}
	return (h);
}
#define FNV_INIT	0xcbf29ce484222325ULL

/* Escape bytes for the state file: %XX outside 0x21-0x7e and for '%'. */
char *
state_escape(const char *s, size_t len)
{
	static const char	 hex[] = "0123456789ABCDEF";
	char			*out, *o;
	size_t			 i;

	o = out = xreallocarray(NULL, len + 1, 3);
	for (i = 0; i < len; i++) {
		unsigned char	c = s[i];

		if (c > 0x20 && c < 0x7f && c != '%')
			*o++ = c;
		else {
			*o++ = '%';
			*o++ = hex[c >> 4];
			*o++ = hex[c & 15];
		}
	}
	*o = '\0';
	return (out);
}

/* Undo state_escape(); refuses malformed escapes and raw odd bytes. */
int
state_unescape(const char *s, size_t len, char **out, size_t *outlen)
{
	char	*buf, *o;
	size_t	 i;
	int	 hi, lo;

	o = buf = xmalloc(len + 1);
	for (i = 0; i < len; i++) {
		unsigned char	c = s[i];

		if (c == '%') {
			if (i + 2 >= len)
				goto bad;
			if ((hi = parse_hexdigit(s[i + 1])) == -1 ||
			    (lo = parse_hexdigit(s[i + 2])) == -1)
				goto bad;
			*o++ = (char)(hi << 4 | lo);
			i += 2;
		} else if (c > 0x20 && c < 0x7f)
			*o++ = c;
		else
			goto bad;
	}
	*o = '\0';
	*out = buf;
	*outlen = o - buf;
	return (0);
bad:
	free(buf);
	return (-1);
}

static uint64_t
state_hash(struct state *st, const void *key, size_t len, uint32_t ordinal)
{
	return (siphash24(st->key, key, len) ^
	    ((uint64_t)ordinal * 0x9e3779b97f4a7c15ULL));
}

/* Size the index for the live records (load at most 1/2) and refill it. */
static void
state_index_rebuild(struct state *st)
{
	size_t		size = 64, mask, slot;
	uint32_t	i;

	while (size < (size_t)st->nlive * 2 + 2)
		size *= 2;
	free(st->index);
	st->index = xcalloc(size, sizeof *st->index);
	st->indexsize = size;
	st->nindexed = 0;
	mask = size - 1;
	for (i = 0; i < st->nrecs; i++) {
		if (st->recs[i].kind == 0)
			continue;
		for (slot = st->recs[i].hash & mask; st->index[slot] != 0;
		    slot = (slot + 1) & mask)
			;
		st->index[slot] = i + 1;
		st->nindexed++;
	}
}

/* An empty state in memory, not tied to any file. */
struct state *
state_new(void)
{
	struct state	*st;

	st = xcalloc(1, sizeof *st);
	st->lock_fd = -1;
	st->journal_fd = -1;
	random_bytes(st->key, sizeof st->key);
	/* Offset 0 of the arena means "no string". */
	st->arenacap = 4096;
	st->arena = xmalloc(st->arenacap);
	st->arena[0] = '\0';
	st->arenalen = 1;
	state_index_rebuild(st);
	return (st);
}

/* Copy bytes into the arena (NUL-terminated); returns their offset. */
static uint32_t
state_store(struct state *st, const void *data, size_t len)
{
	size_t	off = st->arenalen;

	if (len >= ARENA_MAX || st->arenalen + len + 1 > ARENA_MAX)
		fatalx("state: more than 2 GiB of keys");
	if (st->arenalen + len + 1 > st->arenacap) {
		while (st->arenalen + len + 1 > st->arenacap)
			st->arenacap *= 2;
		st->arena = xreallocarray(st->arena, st->arenacap, 1);
	}
	memcpy(st->arena + off, data, len);
	st->arena[off + len] = '\0';
	st->arenalen += len + 1;
	return ((uint32_t)off);
}

/* Find a live record by key and ordinal; STATE_NONE if there is none. */
uint32_t
state_find(struct state *st, const void *key, size_t len, uint32_t ordinal)
{
	uint64_t		 h = state_hash(st, key, len, ordinal);
	size_t			 mask = st->indexsize - 1, slot = h & mask;
	const struct state_rec	*r;

	for (; st->index[slot] != 0; slot = (slot + 1) & mask) {
		r = &st->recs[st->index[slot] - 1];
		if (r->hash == h && r->kind != 0 && r->ordinal == ordinal &&
		    r->keylen == len &&
		    memcmp(st->arena + r->key, key, len) == 0)
			return (st->index[slot] - 1);
	}
	return (STATE_NONE);
}

const struct state_rec *
state_rec(const struct state *st, uint32_t id)
{
	return (&st->recs[id]);
}

/* The key of a record; it is NUL-terminated, but may hold NULs too. */
const char *
state_rec_key(const struct state *st, const struct state_rec *r, size_t *len)
{
	if (len != NULL)
		*len = r->keylen;
	return (st->arena + r->key);
}

/* A pending record's file name, or NULL. */
const char *
state_rec_file(const struct state *st, const struct state_rec *r)
{
	return (r->file != 0 ? st->arena + r->file : NULL);
}

/* A record's tag, or NULL. */
const char *
state_rec_tag(const struct state *st, const struct state_rec *r)
{
	return (r->tag != 0 ? st->arena + r->tag : NULL);
}

/* Iterate over the live records: *it starts at 0; NULL at the end. */
const struct state_rec *
state_next(const struct state *st, uint32_t *it)
{
	while (*it < st->nrecs) {
		const struct state_rec	*r = &st->recs[(*it)++];

		if (r->kind != 0)
			return (r);
	}
	return (NULL);
}

uint32_t
state_count(const struct state *st)
{
	return (st->nlive);
}

/* The id of a record, from a pointer state_next() or state_rec() gave. */
uint32_t
state_rec_id(const struct state *st, const struct state_rec *r)
{
	return ((uint32_t)(r - st->recs));
}

/* Queue a line for the journal. */
static void
state_append(struct state *st, const char *fmt, ...)
{
	va_list	ap;
	int	n;

	/* A state in memory only (tests, sets) keeps no journal. */
	if (st->path == NULL)
		return;
	/* Never offset a null pointer, even by zero (UBSan says why). */
	if (st->pending == NULL) {
		st->pendcap = 65536;
		st->pending = xreallocarray(NULL, st->pendcap, 1);
	}
	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(st->pending + st->pendlen, st->pendcap -
		    st->pendlen, fmt, ap);
		va_end(ap);
		if (n < 0)
			fatalx("state: vsnprintf");
		if ((size_t)n < st->pendcap - st->pendlen)
			break;
		st->pendcap *= 2;
		while ((size_t)n >= st->pendcap - st->pendlen)
			st->pendcap *= 2;
		st->pending = xreallocarray(st->pending, st->pendcap, 1);
	}
	st->pendlen += n;
	st->pendlines++;
}

/* One record as a line of the file ("D ..." or "P ..."), into the queue. */
static void
state_log_rec(struct state *st, uint32_t id)
{
	const struct state_rec	*r = &st->recs[id];
	char			*k;

	char			*t;

	if (st->path == NULL)
		return;
	k = state_escape(st->arena + r->key, r->keylen);
	t = r->tag != 0 ? state_escape(st->arena + r->tag,
	    strlen(st->arena + r->tag)) : xstrdup("-");
	if (r->kind == STATE_PENDING)
		state_append(st, "P %lld %u %llu %u %lld %s %s %s\n",
		    (long long)r->first, r->ordinal,
		    (unsigned long long)r->size, r->missed,
		    (long long)r->absent, k, t, st->arena + r->file);
	else
		state_append(st, "D %lld %u %llu %u %lld %s %s\n",
		    (long long)r->first, r->ordinal,
		    (unsigned long long)r->size, r->missed,
		    (long long)r->absent, k, t);
	free(t);
	free(k);
}

/* Make a new record, or return the live one with this key. */
static uint32_t
state_slot(struct state *st, const void *key, size_t len, uint32_t ordinal)
{
	struct state_rec	*r;
	uint32_t		 id;
	size_t			 mask, slot;

	if ((id = state_find(st, key, len, ordinal)) != STATE_NONE)
		return (id);
	if (st->nrecs >= RECORDS_MAX)
		fatalx("state: too many records");
	if (st->nrecs == st->caprecs) {
		st->caprecs = st->caprecs ? st->caprecs * 2 : 256;
		st->recs = xreallocarray(st->recs, st->caprecs,
		    sizeof *st->recs);
	}
	id = st->nrecs++;
	r = &st->recs[id];
	memset(r, 0, sizeof *r);
	r->hash = state_hash(st, key, len, ordinal);
	r->key = state_store(st, key, len);
	r->keylen = (uint32_t)len;
	r->ordinal = ordinal;
	r->kind = STATE_DELIVERED;
	st->nlive++;
	if ((st->nindexed + 1) * 2 + 2 > st->indexsize)
		state_index_rebuild(st);
	else {
		mask = st->indexsize - 1;
		for (slot = r->hash & mask; st->index[slot] != 0;
		    slot = (slot + 1) & mask)
			;
		st->index[slot] = id + 1;
		st->nindexed++;
	}
	return (id);
}

/*
 * Record a message: delivered, or (with a file name) PENDING, that is
 * durable in tmp/ and about to be moved into new/ under that name.  A
 * record with the same key and ordinal is replaced.
 */
uint32_t
state_put(struct state *st, const void *key, size_t len, uint32_t ordinal,
    int64_t first, uint64_t size, const char *tag, const char *file)
{
	struct state_rec	*r;
	uint32_t		 id;

	id = state_slot(st, key, len, ordinal);
	r = &st->recs[id];
	r->kind = file != NULL ? STATE_PENDING : STATE_DELIVERED;
	r->first = first;
	r->size = size;
	r->missed = 0;
	r->absent = 0;
	r->file = file != NULL ? state_store(st, file, strlen(file)) : 0;
	r->tag = tag != NULL && *tag != '\0' ? state_store(st, tag,
	    strlen(tag)) : 0;
	state_log_rec(st, id);
	return (id);
}

/* A pending delivery finished: the record says delivered now. */
void
state_delivered(struct state *st, uint32_t id)
{
	struct state_rec	*r = &st->recs[id];

	if (r->kind == STATE_DELIVERED)
		return;
	r->kind = STATE_DELIVERED;
	r->file = 0;
	state_log_rec(st, id);
}

/* Note how many listings in a row missed a record, and since when. */
void
state_set_absence(struct state *st, uint32_t id, unsigned missed,
    int64_t absent)
{
	struct state_rec	*r = &st->recs[id];

	if (missed > 255)
		missed = 255;
	if (r->missed == missed && r->absent == absent)
		return;
	r->missed = (uint8_t)missed;
	r->absent = absent;
	state_log_rec(st, id);
}

/* Set or clear the caller's flags (not stored on disk). */
void
state_set_flags(struct state *st, uint32_t id, uint8_t set, uint8_t clear)
{
	st->recs[id].flags = (st->recs[id].flags & ~clear) | set;
}

/* Forget a record. */
void
state_forget(struct state *st, uint32_t id)
{
	struct state_rec	*r = &st->recs[id];
	char			*k;

	if (r->kind == 0)
		return;
	k = state_escape(st->arena + r->key, r->keylen);
	state_append(st, "F %u %s\n", r->ordinal, k);
	free(k);
	r->kind = 0;
	st->nlive--;
	/* The slot stays in the index, dead, until the next rebuild. */
}

/* Forget every record. */
void
state_forget_all(struct state *st)
{
	uint32_t	i;

	if (st->nlive == 0)
		return;
	for (i = 0; i < st->nrecs; i++)
		st->recs[i].kind = 0;
	st->nlive = 0;
	st->nrecs = 0;
	st->epoch++;
	st->arenalen = 1;
	state_index_rebuild(st);
	/* Cheaper as a new snapshot than as a forget line for each. */
	st->compact = 1;
}

/* A named value; NULL if it is not set. */
const char *
state_meta(const struct state *st, const char *name)
{
	size_t	i;

	for (i = 0; i < st->nmeta; i++) {
		if (strcmp(st->meta[i].name, name) == 0)
			return (st->meta[i].value);
	}
	return (NULL);
}

/* Set a named value (NULL: unset).  Names are words, values any string. */
void
state_set_meta(struct state *st, const char *name, const char *value)
{
	size_t	 i;
	char	*v;

	for (i = 0; i < st->nmeta; i++) {
		if (strcmp(st->meta[i].name, name) == 0)
			break;
	}
	if (i < st->nmeta && value != NULL &&
	    strcmp(st->meta[i].value, value) == 0)
		return;
	if (i == st->nmeta && value == NULL)
		return;
	if (i == st->nmeta) {
		st->meta = xreallocarray(st->meta, st->nmeta + 1,
		    sizeof *st->meta);
		st->meta[i].name = xstrdup(name);
		st->meta[i].value = NULL;
		st->nmeta++;
	}
	free(st->meta[i].value);
	if (value == NULL) {
		free(st->meta[i].name);
		st->meta[i] = st->meta[--st->nmeta];
		state_append(st, "meta %s\n", name);
		return;
	}
	st->meta[i].value = xstrdup(value);
	v = state_escape(value, strlen(value));
	state_append(st, "meta %s %s\n", name, v);
	free(v);
}

/* Are there changes not made durable yet? */
int
state_dirty(const struct state *st)
{
	return (st->pendlines > 0 || st->compact);
}

/* Split a line into at most max space-separated fields. */
static size_t
split_fields(char *line, char **f, size_t max)
{
	size_t	n = 0;
	char	*p = line;

	while (*p != '\0' && n < max) {
		f[n++] = p;
		while (*p != '\0' && *p != ' ')
			p++;
		if (*p == ' ')
			*p++ = '\0';
	}
	return (*p == '\0' ? n : max + 1);
}

static int
state_number(const char *s, int64_t min, int64_t max, int64_t *out)
{
	uint64_t	v;

	if (*s == '-') {
		if (min >= 0 || parse_u64(s + 1, (uint64_t)INT64_MAX, &v) == -1)
			return (-1);
		*out = -(int64_t)v;
		return (*out < min ? -1 : 0);
	}
	if (parse_u64(s, (uint64_t)max, &v) == -1 || (int64_t)v < min)
		return (-1);
	*out = (int64_t)v;
	return (0);
}

/*
 * Is name one maild would have written into new/: its own tmp/ name (see
 * maildir.c) followed by ",S=<size>"?  Anything else in a P record is
 * damage or tampering, and must not reach rename().
 */
static int
state_valid_file(const char *name)
{
	const char	*comma, *slash;
	char		 base[MAILDIR_TMP_NAME_MAX];
	uint32_t	 tag;
	size_t		 i;

	/* A Maildir++ folder first: ".Name/", nothing that climbs. */
	if ((slash = strchr(name, '/')) != NULL) {
		if (name[0] != '.' || slash - name < 2 ||
		    (slash - name == 2 && name[1] == '.'))
			return (0);
		for (i = 0; name + i < slash; i++) {
			if ((unsigned char)name[i] <= 0x20 ||
			    (unsigned char)name[i] >= 0x7f)
				return (0);
		}
		name = slash + 1;
	}
	if (name[0] == '\0' || name[0] == '.' || strlen(name) > 255 ||
	    strchr(name, '/') != NULL)
		return (0);
	if ((comma = strstr(name, ",S=")) == NULL || comma == name ||
	    (size_t)(comma - name) >= sizeof base)
		return (0);
	memcpy(base, name, comma - name);
	base[comma - name] = '\0';
	return (maildir_name_tag(base, &tag) == 0);
}

/* Apply one record, forget or meta line (fields split); -1 if bad. */
static int
state_apply(struct state *st, char **f, size_t n, int version)
{
	int64_t		 first, ord, size = 0, missed = 0, absent = 0;
	char		*key, *val, *tag = NULL;
	size_t		 keylen, vlen, kf;
	uint32_t	 id;
	int		 kind;

	if (strcmp(f[0], "meta") == 0 && (n == 2 || n == 3)) {
		if (strlen(f[1]) > 64)
			return (-1);
		if (n == 2) {
			state_set_meta(st, f[1], NULL);
			return (0);
		}
		if (state_unescape(f[2], strlen(f[2]), &val, &vlen) == -1)
			return (-1);
		if (vlen == 0 || strlen(val) != vlen) {
			free(val);
			return (-1);
		}
		state_set_meta(st, f[1], val);
		free(val);
		return (0);
	}
	if (strcmp(f[0], "F") == 0 && n == 3 && version >= 2) {
		if (state_number(f[1], 1, UINT32_MAX - 1, &ord) == -1 ||
		    state_unescape(f[2], strlen(f[2]), &key, &keylen) == -1)
			return (-1);
		if ((id = state_find(st, key, keylen, (uint32_t)ord)) !=
		    STATE_NONE)
			state_forget(st, id);
		free(key);
		return (0);
	}
	if (strlen(f[0]) != 1)
		return (-1);
	kind = (unsigned char)f[0][0];
	if (version == 1) {
		/* D <first> <n> <uidl>, P ... <file>, S (skipped: dropped) */
		if (kind == 'S' && n == 4)
			return (0);
		if (!((kind == 'D' && n == 4) || (kind == 'P' && n == 5)))
			return (-1);
		kf = 3;
	} else {
		if (!((kind == 'D' && n == 8) || (kind == 'P' && n == 9)))
			return (-1);
		kf = 8;		/* the file, after key and tag */
		if (state_number(f[3], 0, INT64_MAX, &size) == -1 ||
		    state_number(f[4], 0, 255, &missed) == -1 ||
		    state_number(f[5], 0, INT64_MAX / 2, &absent) == -1)
			return (-1);
	}
	if (version == 1)
		kf++;		/* v1: the file right after the key */
	if (kind == 'P' && !state_valid_file(f[kf]))
		return (-1);
	if (state_number(f[1], 0, INT64_MAX / 2, &first) == -1 ||
	    state_number(f[2], 1, UINT32_MAX - 1, &ord) == -1)
		return (-1);
	if (version >= 2 && strcmp(f[7], "-") != 0) {
		if (state_unescape(f[7], strlen(f[7]), &tag, &vlen) == -1)
			return (-1);
		if (vlen == 0 || strlen(tag) != vlen) {
			free(tag);
			return (-1);
		}
	}
	if (state_unescape(f[version == 1 ? 3 : 6], strlen(f[version == 1 ?
	    3 : 6]), &key, &keylen) == -1) {
		free(tag);
		return (-1);
	}
	if (keylen == 0) {
		free(key);
		free(tag);
		return (-1);
	}
	id = state_put(st, key, keylen, (uint32_t)ord, first, (uint64_t)size,
	    tag, kind == 'P' ? f[kf] : NULL);
	st->recs[id].missed = (uint8_t)missed;
	st->recs[id].absent = absent;
	free(key);
	free(tag);
	return (0);
}

/*
 * Read a file line by line; for each complete line, call fn.  Lines are
 * at most STATE_LINE_MAX bytes; *sum is the checksum of the bytes before
 * the line being handed over.  Returns -1 with *cause on a read error.
 */
struct reader {
	FILE		*f;
	const char	*path;
	int		 lineno;
	uint64_t	 sum;		/* of the lines before this one */
	uint64_t	 next;
	char		 line[STATE_LINE_MAX + 2];
	size_t		 len;
	int		 partial;	/* the last line had no newline */
	off_t		 offset;	/* of the line being handed over */
	off_t		 next_offset;
};

/* The next line (without its newline) or NULL at the end. */
static char *
reader_line(struct reader *rd)
{
	size_t	len;

	rd->sum = rd->next;
	rd->offset = rd->next_offset;
	if (fgets(rd->line, sizeof rd->line, rd->f) == NULL)
		return (NULL);
	rd->lineno++;
	len = strlen(rd->line);
	rd->next = fnv1a(rd->next, rd->line, len);
	rd->next_offset += len;
	if (len == 0 || rd->line[len - 1] != '\n') {
		rd->partial = 1;
		rd->len = len;
		return (rd->line);
	}
	rd->line[--len] = '\0';
	rd->len = len;
	rd->partial = 0;
	return (rd->line);
}

/* Load the snapshot.  Returns 0, or -1 with *cause. */
static int
state_load_snapshot(struct state *st, const char *path, char **cause)
{
	struct reader	 rd;
	char		*line, *f[10];
	size_t		 n;
	int64_t		 v, count, lines = 0;
	uint64_t	 sum;
	int		 version = 0, ended = 0;
	struct stat	 sb;

	memset(&rd, 0, sizeof rd);
	rd.path = path;
	rd.next = FNV_INIT;
	if ((rd.f = fopen(path, "re")) == NULL) {
		if (errno == ENOENT)
			return (0);
		xasprintf(cause, "cannot read the state file %s: %s", path,
		    strerror(errno));
		return (-1);
	}
	st->have_snapshot = 1;
	if (fstat(fileno(rd.f), &sb) == 0)
		st->snapshot_size = sb.st_size;
	while ((line = reader_line(&rd)) != NULL) {
		if (rd.partial || ended) {
			/* A line without its newline, or bytes after end. */
			goto truncated;
		}
		if (line[0] == '#' || line[0] == '\0') {
			lines++;
			continue;
		}
		n = split_fields(line, f, 9);
		if (n > 9)
			goto bad;
		if (version == 0) {
			if (n != 2 || strcmp(f[0], "maild-state") != 0 ||
			    state_number(f[1], 1, 1000000, &v) == -1) {
				xasprintf(cause, "%s:%d: not a maild state file "
				    "(is state-dir right?)%s", path, rd.lineno,
				    STATE_FIX_HINT);
				goto fail;
			}
			if (v > STATE_VERSION) {
				xasprintf(cause, "%s:%d: state file version %lld "
				    "is not supported by this maild (version "
				    "%d); was it written by a newer one?", path,
				    rd.lineno, (long long)v, STATE_VERSION);
				goto fail;
			}
			version = (int)v;
			lines++;
			continue;
		}
		if (version == 2 && strcmp(f[0], "end") == 0) {
			sum = rd.sum;
			if (n != 3 || state_number(f[1], 0, INT64_MAX, &count) ==
			    -1 || count != lines || strlen(f[2]) != 16 ||
			    strtoull(f[2], NULL, 16) != sum)
				goto damaged;
			ended = 1;
			continue;
		}
		lines++;
		if (version == 2 && strcmp(f[0], "generation") == 0 && n == 2) {
			if (state_number(f[1], 0, INT64_MAX, &v) == -1)
				goto bad;
			st->generation = (uint64_t)v;
			continue;
		}
		if (version == 1 && n == 2 && (strcmp(f[0], "mailbox") == 0 ||
		    strcmp(f[0], "maildir") == 0 || strcmp(f[0],
		    "records") == 0)) {
			/* Version 1 had these three as bare names. */
			f[2] = f[1];
			f[1] = f[0];
			f[0] = (char *)"meta";
			n = 3;
		}
		if (state_apply(st, f, n, version) == -1)
			goto bad;
	}
	if (ferror(rd.f)) {
		xasprintf(cause, "cannot read the state file %s: %s", path,
		    strerror(errno));
		goto fail;
	}
	if (version == 0) {
		xasprintf(cause, "the state file %s is empty: it was damaged "
		    "(a crash on a file system that lost its data?)%s", path,
		    STATE_FIX_HINT);
		goto fail;
	}
	if (version == 2 && !ended)
		goto truncated;
	fclose(rd.f);
	/* Version 1 becomes 2 at the next sync. */
	if (version == 1)
		st->compact = 1;
	st->pendlen = 0;
	st->pendlines = 0;
	return (0);

truncated:
	xasprintf(cause, "the state file %s is truncated (line %d): it was "
	    "damaged%s", path, rd.lineno, STATE_FIX_HINT);
	goto fail;
damaged:
	xasprintf(cause, "the state file %s is damaged: its checksum does not "
	    "match (line %d)%s", path, rd.lineno, STATE_FIX_HINT);
	goto fail;
bad:
	xasprintf(cause, "%s:%d: corrupt record%s", path, rd.lineno,
	    STATE_FIX_HINT);
fail:
	fclose(rd.f);
	return (-1);
}

/*
 * Replay the journal over the snapshot.  A last block without its end
 * line, or with a wrong one, was being written when maild stopped: it is
 * cut off.  A bad block before a good one is damage.
 */
static int
state_load_journal(struct state *st, const char *path, char **cause)
{
	struct reader	 rd;
	char		*line, *f[10];
	size_t		 n;
	int64_t		 v, count;
	uint64_t	 blocksum = FNV_INIT;
	unsigned	 blocklines = 0;
	off_t		 good = 0;
	int		 torn = 0;

	memset(&rd, 0, sizeof rd);
	rd.path = path;
	rd.next = FNV_INIT;
	if ((rd.f = fopen(path, "re")) == NULL) {
		if (errno == ENOENT)
			return (0);
		xasprintf(cause, "cannot read %s: %s", path, strerror(errno));
		return (-1);
	}
	line = reader_line(&rd);
	if (line == NULL || rd.partial) {
		fclose(rd.f);
		return (0);	/* died while creating it: nothing in it */
	}
	n = split_fields(line, f, 3);
	if (n != 3 || strcmp(f[0], "maild-journal") != 0 ||
	    strcmp(f[1], "2") != 0 || state_number(f[2], 0, INT64_MAX, &v) ==
	    -1) {
		xasprintf(cause, "%s:1: not a maild journal%s", path,
		    STATE_FIX_HINT);
		goto fail;
	}
	if ((uint64_t)v < st->generation) {
		/* Left over from before the last snapshot: all in it. */
		fclose(rd.f);
		unlink(path);
		return (0);
	}
	if ((uint64_t)v > st->generation) {
		xasprintf(cause, "%s: the journal is newer than the state file "
		    "%s: one of them was damaged or replaced%s", path, st->path,
		    STATE_FIX_HINT);
		goto fail;
	}
	good = rd.next_offset;
	/*
	 * First find where the last block that ends well ends; only what
	 * comes before is applied.
	 */
	while ((line = reader_line(&rd)) != NULL) {
		if (rd.partial) {
			torn = 1;
			break;
		}
		if (strncmp(line, "C ", 2) == 0) {
			n = split_fields(line, f, 3);
			if (n != 3 || state_number(f[1], 0, INT64_MAX, &count) ==
			    -1 || count != blocklines || strlen(f[2]) != 16 ||
			    strtoull(f[2], NULL, 16) != blocksum) {
				torn = 1;
				break;
			}
			good = rd.next_offset;
			blocksum = FNV_INIT;
			blocklines = 0;
			continue;
		}
		blocksum = fnv1a(blocksum, line, rd.len);
		blocksum = fnv1a(blocksum, "\n", 1);
		blocklines++;
	}
	if (ferror(rd.f)) {
		xasprintf(cause, "cannot read %s: %s", path, strerror(errno));
		goto fail;
	}
	if (torn) {
		/* Whatever follows a torn block must be nothing at all. */
		while (reader_line(&rd) != NULL) {
			if (!rd.partial && strncmp(rd.line, "C ", 2) == 0) {
				xasprintf(cause, "%s:%d: the journal is damaged "
				    "in the middle%s", path, rd.lineno,
				    STATE_FIX_HINT);
				goto fail;
			}
		}
	}
	/* Now apply everything up to the last good block. */
	rewind(rd.f);
	rd.next_offset = 0;
	rd.lineno = 0;
	reader_line(&rd);
	while (rd.next_offset < good && (line = reader_line(&rd)) != NULL) {
		if (strncmp(line, "C ", 2) == 0)
			continue;
		n = split_fields(line, f, 9);
		if (n > 9 || state_apply(st, f, n, 2) == -1) {
			xasprintf(cause, "%s:%d: corrupt record%s", path,
			    rd.lineno, STATE_FIX_HINT);
			goto fail;
		}
	}
	fclose(rd.f);
	st->journal_size = good;
	if (torn) {
		/* Cut the torn block off before anything is appended. */
		if (truncate(path, good) == -1) {
			xasprintf(cause, "%s: cannot cut off an unfinished "
			    "block: %s", path, strerror(errno));
			return (-1);
		}
	}
	return (0);

fail:
	fclose(rd.f);
	return (-1);
}

/*
 * Load the snapshot and the journal into st: for state_open(), and for
 * the tests and fuzzers, which pass files of their own.
 */
int
state_load(struct state *st, const char *path, const char *journal,
    char **cause)
{
	if (state_load_snapshot(st, path, cause) == -1)
		return (-1);
	if (journal != NULL && !st->have_snapshot &&
	    access(journal, F_OK) == 0) {
		xasprintf(cause, "%s exists but %s does not: the state file "
		    "was removed or damaged%s", journal, path, STATE_FIX_HINT);
		return (-1);
	}
	if (journal != NULL && state_load_journal(st, journal, cause) == -1)
		return (-1);
	st->pendlen = 0;
	st->pendlines = 0;
	/* A journal needs a snapshot of its generation to go with it. */
	if (!st->have_snapshot)
		st->compact = 1;
	return (0);
}

/*
 * Take the account's lock: an open-file-description lock on path, held
 * while the fd is open.  Returns 0, or -1 if another maild (or another
 * session in this one) has it, saying which, or -2 if the lock file
 * cannot be made.
 */
int
state_lock(const char *path, int *fdp, char **cause)
{
	long	pid;

	switch (lock_file(path, fdp, &pid)) {
	case 0:
		return (0);
	case -2:
		xasprintf(cause, "cannot lock %s: %s", path, strerror(errno));
		return (-2);
	}
	if (pid == (long)getpid())
		xasprintf(cause, "%s is locked by this maild: a session of an "
		    "account of that name is still running", path);
	else if (pid > 0)
		xasprintf(cause, "%s is locked by process %ld: another maild is "
		    "working on this account", path, pid);
	else
		xasprintf(cause, "%s is locked by another process", path);
	return (-1);
}

/*
 * Lock and load <dir>/<name>.state.  On failure, *code is the exit status
 * that fits: EXIT_TEMPFAIL when another maild has it, EXIT_DATAERR when
 * it is damaged, EXIT_IOERR otherwise.
 */
struct state *
state_open(const char *dir, const char *name, int *code, char **cause)
{
	struct state	*st;

	st = state_new();
	st->dir = xstrdup(dir);
	xasprintf(&st->path, "%s/%s.state", dir, name);
	xasprintf(&st->journal_path, "%s/%s.journal", dir, name);
	xasprintf(&st->lock_path, "%s/%s.lock", dir, name);
	switch (state_lock(st->lock_path, &st->lock_fd, cause)) {
	case -1:
		*code = EXIT_TEMPFAIL;
		goto fail;
	case -2:
		*code = EXIT_IOERR;
		goto fail;
	}
	*code = EXIT_DATAERR;
	if (state_load(st, st->path, st->journal_path, cause) == -1)
		goto fail;
	return (st);
fail:
	state_close(st);
	return (NULL);
}

/* Release the lock and free the state; unsaved changes are lost. */
void
state_close(struct state *st)
{
	size_t	i;

	if (st == NULL)
		return;
	if (st->journal_fd != -1)
		close(st->journal_fd);
	if (st->lock_fd != -1)
		close(st->lock_fd);
	for (i = 0; i < st->nmeta; i++) {
		free(st->meta[i].name);
		free(st->meta[i].value);
	}
	free(st->meta);
	free(st->recs);
	free(st->arena);
	free(st->index);
	free(st->pending);
	free(st->path);
	free(st->journal_path);
	free(st->lock_path);
	free(st->dir);
	free(st);
}

/* Write out the queued lines, adding them to the checksum and the count. */
static void
snap_flush(struct state *st, FILE *f, uint64_t *sum, unsigned *lines)
{
	fwrite(st->pending, 1, st->pendlen, f);
	*sum = fnv1a(*sum, st->pending, st->pendlen);
	*lines += st->pendlines;
	st->pendlen = 0;
	st->pendlines = 0;
}

/*
 * Write a new snapshot of everything, with the next generation, and drop
 * the journal: temporary file, fsync, rename, fsync of the directory.
 * The records are compacted on the way (forgotten ones dropped).
 */
static int
state_write_snapshot(struct state *st, char **cause)
{
	char		 tmp[PATH_MAX], *v;
	FILE		*f = NULL;
	uint64_t	 sum = FNV_INIT;
	unsigned	 lines = 0;
	uint32_t	 i, o;
	size_t		 m;
	int		 fd;

	if ((size_t)snprintf(tmp, sizeof tmp, "%s.XXXXXX", st->path) >=
	    sizeof tmp) {
		xasprintf(cause, "%s: path too long", st->path);
		return (-1);
	}
	if ((fd = mkstemp(tmp)) == -1) {
		xasprintf(cause, "cannot create %s: %s", tmp, strerror(errno));
		return (-1);
	}
	if ((f = fdopen(fd, "w")) == NULL) {
		close(fd);
		goto fail;
	}
	setvbuf(f, NULL, _IOFBF, 65536);
	/* The queue is reused as the write buffer: it is all in here. */
	st->pendlen = 0;
	st->pendlines = 0;
	state_append(st, "maild-state %d\n", STATE_VERSION);
	state_append(st, "# maild state: the messages this account has "
	    "delivered.\n");
	state_append(st, "# Written by maild; do not edit.  See maild(8).\n");
	state_append(st, "generation %llu\n",
	    (unsigned long long)st->generation + 1);
	for (m = 0; m < st->nmeta; m++) {
		v = state_escape(st->meta[m].value, strlen(st->meta[m].value));
		state_append(st, "meta %s %s\n", st->meta[m].name, v);
		free(v);
	}
	for (i = 0; i < st->nrecs; i++) {
		if (st->recs[i].kind == 0)
			continue;
		state_log_rec(st, i);
		if (st->pendlen >= 60000)
			snap_flush(st, f, &sum, &lines);
	}
	snap_flush(st, f, &sum, &lines);
	fprintf(f, "end %u %016llx\n", lines, (unsigned long long)sum);
	if (fflush(f) == EOF || ferror(f) || fsync(fileno(f)) == -1)
		goto fail;
	st->snapshot_size = ftello(f);
	if (fclose(f) == EOF) {
		f = NULL;
		goto fail;
	}
	f = NULL;
	if (rename(tmp, st->path) == -1)
		goto fail;
	if (fsync_dir(st->dir) == -1) {
		xasprintf(cause, "%s: fsync: %s", st->dir, strerror(errno));
		return (-1);
	}
	/* The snapshot has it all: the journal is stale from now on. */
	st->generation++;
	if (st->journal_fd != -1) {
		close(st->journal_fd);
		st->journal_fd = -1;
	}
	unlink(st->journal_path);
	st->journal_size = 0;
	st->compact = 0;
	st->have_snapshot = 1;

	/* Drop the forgotten records from memory too. */
	st->epoch++;
	for (i = o = 0; i < st->nrecs; i++) {
		if (st->recs[i].kind != 0)
			st->recs[o++] = st->recs[i];
	}
	st->nrecs = o;
	if (st->arenalen > 2 * (size_t)st->nlive * 64 + 4096) {
		char	*old = st->arena;

		st->arenacap = 4096;
		st->arena = xmalloc(st->arenacap);
		st->arenalen = 1;
		for (i = 0; i < st->nrecs; i++) {
			struct state_rec	*r = &st->recs[i];

			r->key = state_store(st, old + r->key, r->keylen);
			if (r->file != 0)
				r->file = state_store(st, old + r->file,
				    strlen(old + r->file));
			if (r->tag != 0)
				r->tag = state_store(st, old + r->tag,
				    strlen(old + r->tag));
		}
		free(old);
	}
	state_index_rebuild(st);
	return (0);

fail:
	xasprintf(cause, "cannot write %s: %s", st->path, strerror(errno));
	if (f != NULL)
		fclose(f);
	unlink(tmp);
	/* Whatever was queued must be written by the next attempt. */
	st->compact = 1;
	return (-1);
}

/* Append the queued lines to the journal as one block, and sync it. */
static int
state_append_journal(struct state *st, char **cause)
{
	char		 head[64], tail[64];
	uint64_t	 sum;
	int		 created = 0, n, m;
	struct iovec	 iov[3];
	ssize_t		 w;
	size_t		 total, done;

	if (st->journal_fd == -1) {
		st->journal_fd = open(st->journal_path, O_WRONLY | O_APPEND |
		    O_CREAT | O_CLOEXEC, 0600);
		if (st->journal_fd == -1) {
			xasprintf(cause, "cannot open %s: %s",
			    st->journal_path, strerror(errno));
			return (-1);
		}
		if (lseek(st->journal_fd, 0, SEEK_END) == 0)
			created = 1;
	}
	n = 0;
	if (created || st->journal_size == 0)
		n = snprintf(head, sizeof head, "maild-journal 2 %llu\n",
		    (unsigned long long)st->generation);
	sum = fnv1a(FNV_INIT, st->pending, st->pendlen);
	m = snprintf(tail, sizeof tail, "C %u %016llx\n", st->pendlines,
	    (unsigned long long)sum);
	iov[0].iov_base = head;
	iov[0].iov_len = n;
	iov[1].iov_base = st->pending;
	iov[1].iov_len = st->pendlen;
	iov[2].iov_base = tail;
	iov[2].iov_len = m;
	total = n + st->pendlen + m;
	/* A short write is finished by plain writes; O_APPEND keeps order. */
	w = writev(st->journal_fd, iov, 3);
	done = w > 0 ? (size_t)w : 0;
	if (w == -1)
		goto fail;
	while (done < total) {
		size_t	skip = done, i;

		/* done < total: what is left is in iov[2] at the latest */
		for (i = 0; i < 2 && skip >= iov[i].iov_len; i++)
			skip -= iov[i].iov_len;
		if (write_full(st->journal_fd, (char *)iov[i].iov_base + skip,
		    iov[i].iov_len - skip) == -1)
			goto fail;
		done += iov[i].iov_len - skip;
	}
	if (fdatasync(st->journal_fd) == -1)
		goto fail;
	if (created && fsync_dir(st->dir) == -1)
		goto fail;
	st->journal_size += total;
	st->pendlen = 0;
	st->pendlines = 0;
	return (0);
fail:
	xasprintf(cause, "cannot write %s: %s", st->journal_path,
	    strerror(errno));
	/*
	 * The block may be partly on disk, without a valid end: the next
	 * load cuts it off.  Whatever follows must not land after it, so
	 * the next sync writes a snapshot instead.
	 */
	close(st->journal_fd);
	st->journal_fd = -1;
	st->compact = 1;
	return (-1);
}

/*
 * Make every change so far durable: append them to the journal, or write
 * a new snapshot when the journal has grown larger than it.
 */
int
state_sync(struct state *st, char **cause)
{
	if (st->path == NULL)
		fatalx("state_sync: state without a file");
	if (!st->compact && st->pendlines == 0)
		return (0);
	if (st->compact || (st->journal_size > JOURNAL_MIN_COMPACT &&
	    st->journal_size + (off_t)st->pendlen > st->snapshot_size))
		return (state_write_snapshot(st, cause));
	return (state_append_journal(st, cause));
}

/* Changes whenever record ids change (compaction): ids kept elsewhere
   are stale then. */
uint64_t
state_epoch(const struct state *st)
{
	return (st->epoch);
}
