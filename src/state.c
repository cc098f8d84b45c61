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
 * state.c: the per-account state file, which remembers every message
 * (UIDL) maild has delivered, so that none is delivered twice.
 *
 * The file is text, one record per line:
 *
 *	maild-state 1
 *	mailbox <user@host>
 *	maildir <path>
 *	records digests			(only for a server without UIDL)
 *	D <first> <n> <uidl>		delivered
 *	P <first> <n> <uidl> <file>	delivered, move to new/ unconfirmed
 *	S <first> <n> <uidl>		not fetched: larger than max-size
 *
 * <first> is when maild first delivered (or skipped) the message, as unix
 * time; <uidl> is the server's UIDL, or with "records digests" the
 * SHA-256 of the message (see fetch.c); <n> tells
 * apart messages a broken server lists with the same UIDL (1 for the
 * first, 2 for the second...).  UIDLs, paths and the mailbox are escaped:
 * bytes outside 0x21-0x7e and '%' become %XX.  The file is replaced
 * atomically (temporary file, fsync, rename, fsync of the directory) and
 * never edited in place; a lock file next to it keeps a second maild away.
 * The commit protocol that uses P records is described in pop3.c.
 */

#include "config.h"

#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "maild.h"

#define STATE_LINE_MAX	4096

static int	state_index_insert(struct state *, size_t);
static void	state_index_rebuild(struct state *);
static uint64_t	state_hash(struct state *, const char *, size_t, uint32_t);
static struct state_entry *state_new_entry(struct state *, const char *,
		    size_t, uint32_t, int64_t, enum state_kind, const char *);
static int	state_reconcile(struct state *, char **);

/* Escape bytes for the state file: %XX outside 0x21-0x7e and for '%'. */
char *
state_escape(const char *s, size_t len)
{
	static const char	 hex[] = "0123456789ABCDEF";
	char			*out, *o;
	size_t			 i;

	o = out = xmalloc(len * 3 + 1);
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

static int
hexval(int c)
{
	if (c >= '0' && c <= '9')
		return (c - '0');
	if (c >= 'A' && c <= 'F')
		return (c - 'A' + 10);
	if (c >= 'a' && c <= 'f')
		return (c - 'a' + 10);
	return (-1);
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
			if ((hi = hexval(s[i + 1])) == -1 ||
			    (lo = hexval(s[i + 2])) == -1)
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
state_hash(struct state *st, const char *uidl, size_t len, uint32_t ordinal)
{
	return (siphash24(st->key, uidl, len) ^ ((uint64_t)ordinal * 0x9e3779b97f4a7c15ULL));
}

/* Put entry i into the index; the index always has a free slot. */
static int
state_index_insert(struct state *st, size_t i)
{
	size_t	mask = st->indexsize - 1;
	size_t	slot = st->entries[i]->hash & mask;

	while (st->index[slot] != 0)
		slot = (slot + 1) & mask;
	st->index[slot] = (uint32_t)(i + 1);
	return (0);
}

/* Size the index for the entries (load at most 1/2) and refill it. */
static void
state_index_rebuild(struct state *st)
{
	size_t	size = 64, i;

	while (size < st->nentries * 2 + 2)
		size *= 2;
	if (size != st->indexsize) {
		free(st->index);
		st->index = xcalloc(size, sizeof *st->index);
		st->indexsize = size;
	} else
		memset(st->index, 0, size * sizeof *st->index);
	for (i = 0; i < st->nentries; i++)
		state_index_insert(st, i);
}

struct state_entry *
state_find(struct state *st, const char *uidl, size_t len, uint32_t ordinal)
{
	uint64_t		 h = state_hash(st, uidl, len, ordinal);
	size_t			 mask = st->indexsize - 1, slot = h & mask;
	struct state_entry	*e;

	while (st->index[slot] != 0) {
		e = st->entries[st->index[slot] - 1];
		if (e->hash == h && e->ordinal == ordinal &&
		    e->uidl_len == len && memcmp(e->uidl, uidl, len) == 0)
			return (e);
		slot = (slot + 1) & mask;
	}
	return (NULL);
}

static struct state_entry *
state_new_entry(struct state *st, const char *uidl, size_t len,
    uint32_t ordinal, int64_t first, enum state_kind kind, const char *file)
{
	struct state_entry	*e;

	if (st->nentries >= UINT32_MAX - 1)
		fatalx("state: too many entries");
	e = xcalloc(1, sizeof *e);
	e->uidl = xstrndup(uidl, len);
	e->uidl_len = len;
	e->ordinal = ordinal;
	e->first = first;
	e->kind = kind;
	e->file = file != NULL ? xstrdup(file) : NULL;
	e->hash = state_hash(st, uidl, len, ordinal);
	e->listed = 1;
	if (st->nentries == st->capentries) {
		st->capentries = st->capentries ? st->capentries * 2 : 256;
		st->entries = xreallocarray(st->entries, st->capentries,
		    sizeof(struct state_entry *));
	}
	st->entries[st->nentries++] = e;
	if (st->nentries * 2 + 2 > st->indexsize)
		state_index_rebuild(st);
	else
		state_index_insert(st, st->nentries - 1);
	st->dirty = 1;
	return (e);
}

/*
 * Record a message as delivered.  With a file name the record is PENDING:
 * the file is durable in tmp/ and about to be moved to new/ under that name.
 * A record of a message skipped earlier becomes a delivery.
 */
struct state_entry *
state_add(struct state *st, const char *uidl, size_t len, uint32_t ordinal,
    int64_t first, const char *file)
{
	struct state_entry	*e;

	if ((e = state_find(st, uidl, len, ordinal)) != NULL) {
		e->kind = file != NULL ? STATE_PENDING : STATE_DELIVERED;
		e->first = first;
		free(e->file);
		e->file = file != NULL ? xstrdup(file) : NULL;
		e->listed = 1;
		st->dirty = 1;
		return (e);
	}
	return (state_new_entry(st, uidl, len, ordinal, first,
	    file != NULL ? STATE_PENDING : STATE_DELIVERED, file));
}

/* Record that a message was left on the server for its size. */
struct state_entry *
state_add_skipped(struct state *st, const char *uidl, size_t len,
    uint32_t ordinal, int64_t when)
{
	return (state_new_entry(st, uidl, len, ordinal, when, STATE_SKIPPED,
	    NULL));
}

/* Forget every record (the mailbox they described is empty now). */
void
state_clear(struct state *st)
{
	size_t	i;

	for (i = 0; i < st->nentries; i++) {
		if (st->entries[i]->kind != STATE_PENDING)
			st->entries[i]->listed = 0;
	}
	state_forget_unlisted(st);
}

static void
state_entry_free(struct state_entry *e)
{
	free(e->uidl);
	free(e->file);
	free(e);
}

/* Drop the entries the last complete listing did not mention. */
void
state_forget_unlisted(struct state *st)
{
	size_t	i, o = 0;

	for (i = 0; i < st->nentries; i++) {
		if (st->entries[i]->listed || st->entries[i]->kind ==
		    STATE_PENDING)
			st->entries[o++] = st->entries[i];
		else {
			state_entry_free(st->entries[i]);
			st->dirty = 1;
		}
	}
	st->nentries = o;
	state_index_rebuild(st);
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
parse_i64(const char *s, int64_t min, int64_t max, int64_t *out)
{
	char		*end;
	long long	 v;

	if (*s == '\0' || (*s != '-' && (*s < '0' || *s > '9')))
		return (-1);
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0' || v < min || v > max)
		return (-1);
	*out = v;
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
	const char	*comma;
	char		 base[256];
	uint32_t	 tag;
	size_t		 i;

	if (name[0] == '\0' || name[0] == '.' || strlen(name) > 255)
		return (0);
	for (i = 0; name[i] != '\0'; i++) {
		if (name[i] == '/')
			return (0);
	}
	if ((comma = strstr(name, ",S=")) == NULL || comma == name ||
	    (size_t)(comma - name) >= sizeof base)
		return (0);
	memcpy(base, name, comma - name);
	base[comma - name] = '\0';
	return (maildir_name_tag(base, &tag) == 0);
}

/* Load a state file into st.  A missing file is an empty state. */
int
state_load_file(struct state *st, const char *path, char **cause)
{
	FILE		*f;
	char		 line[STATE_LINE_MAX + 2], *fld[6], *uidl, *s;
	size_t		 len, n, uidl_len, slen;
	int64_t		 first, ord;
	int		 lineno = 0, version = 0;
	enum state_kind	 kind;
	struct state_entry *e;

	if ((f = fopen(path, "re")) == NULL) {
		if (errno == ENOENT)
			return (0);
		xasprintf(cause, "%s: %s", path, strerror(errno));
		return (-1);
	}
	while (fgets(line, sizeof line, f) != NULL) {
		lineno++;
		len = strlen(line);
		if (len == 0 || line[len - 1] != '\n') {
			xasprintf(cause, "%s:%d: line too long or truncated",
			    path, lineno);
			goto fail;
		}
		line[--len] = '\0';
		if (line[0] == '#' || line[0] == '\0')
			continue;
		n = split_fields(line, fld, 5);
		if (n > 5)
			goto bad;
		if (version == 0) {
			int64_t	v;

			if (n != 2 || strcmp(fld[0], "maild-state") != 0 ||
			    parse_i64(fld[1], 1, 1000000, &v) == -1) {
				xasprintf(cause, "%s:%d: not a maild state file",
				    path, lineno);
				goto fail;
			}
			if (v != STATE_VERSION) {
				xasprintf(cause, "%s:%d: state file version "
				    "%lld is not supported by this maild "
				    "(version %d); was it written by a newer "
				    "one?", path, lineno, (long long)v,
				    STATE_VERSION);
				goto fail;
			}
			version = (int)v;
			continue;
		}
		if (n == 2 && strcmp(fld[0], "records") == 0) {
			if (strcmp(fld[1], "digests") == 0)
				st->digests = 1;
			else if (strcmp(fld[1], "uidls") == 0)
				st->digests = 0;
			else
				goto bad;
			continue;
		}
		if (n == 2 && (strcmp(fld[0], "mailbox") == 0 ||
		    strcmp(fld[0], "maildir") == 0)) {
			if (state_unescape(fld[1], strlen(fld[1]), &s,
			    &slen) == -1)
				goto bad;
			if (slen == 0 || strlen(s) != slen) {
				free(s);
				goto bad;
			}
			if (fld[0][4] == 'b') {
				free(st->mailbox);
				st->mailbox = s;
			} else {
				free(st->maildir);
				st->maildir = s;
			}
			continue;
		}
		if (n < 4 || strlen(fld[0]) != 1)
			goto bad;
		if (fld[0][0] == 'D' && n == 4)
			kind = STATE_DELIVERED;
		else if (fld[0][0] == 'S' && n == 4)
			kind = STATE_SKIPPED;
		else if (fld[0][0] == 'P' && n == 5 &&
		    state_valid_file(fld[4]))
			kind = STATE_PENDING;
		else
			goto bad;
		if (parse_i64(fld[1], 0, INT64_MAX / 2, &first) == -1 ||
		    parse_i64(fld[2], 1, POP3_MAX_MESSAGES, &ord) == -1)
			goto bad;
		if (state_unescape(fld[3], strlen(fld[3]), &uidl,
		    &uidl_len) == -1)
			goto bad;
		if (uidl_len == 0) {
			free(uidl);
			goto bad;
		}
		if (state_find(st, uidl, uidl_len, (uint32_t)ord) != NULL) {
			free(uidl);
			xasprintf(cause, "%s:%d: the same message is listed "
			    "twice", path, lineno);
			goto fail;
		}
		e = state_new_entry(st, uidl, uidl_len, (uint32_t)ord, first,
		    kind, kind == STATE_PENDING ? fld[4] : NULL);
		/* Until this session's listing mentions it. */
		e->listed = 0;
		free(uidl);
	}
	if (ferror(f)) {
		xasprintf(cause, "%s: %s", path, strerror(errno));
		goto fail;
	}
	if (version == 0 && lineno > 0) {
		xasprintf(cause, "%s: not a maild state file", path);
		goto fail;
	}
	fclose(f);
	st->dirty = 0;
	return (0);

bad:
	xasprintf(cause, "%s:%d: corrupt record; fix or move the file away "
	    "(without it, messages still on the server are fetched again)",
	    path, lineno);
fail:
	fclose(f);
	return (-1);
}

/*
 * Take the account's lock: an fcntl lock on <state>.lock, held for as long
 * as the fd stays open.  Returns 0, or -1 if another process has it (and
 * says which), or -2 if the lock file cannot be made.
 */
int
state_lock(const char *path, int *fdp, char **cause)
{
	struct flock	fl;
	int		fd;

	if ((fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) == -1) {
		xasprintf(cause, "cannot create the lock file %s: %s", path,
		    strerror(errno));
		return (-2);
	}
	memset(&fl, 0, sizeof fl);
	fl.l_type = F_WRLCK;
	fl.l_whence = SEEK_SET;
	if (fcntl(fd, F_SETLK, &fl) == 0) {
		*fdp = fd;
		return (0);
	}
	if (errno == EACCES || errno == EAGAIN) {
		memset(&fl, 0, sizeof fl);
		fl.l_type = F_WRLCK;
		fl.l_whence = SEEK_SET;
		if (fcntl(fd, F_GETLK, &fl) == 0 && fl.l_type != F_UNLCK)
			xasprintf(cause, "%s is locked by process %ld: another "
			    "maild is working on this account", path,
			    (long)fl.l_pid);
		else
			xasprintf(cause, "%s is locked by another process",
			    path);
	} else
		xasprintf(cause, "%s: cannot lock: %s", path, strerror(errno));
	close(fd);
	return (-1);
}

/*
 * Finish deliveries a crash interrupted.  A PENDING record means the file
 * was complete and durable in tmp/ before the record was written; if it is
 * still there, the move to new/ did not happen (or was not durable), so do
 * it now.  If it is gone, the move happened.  Either way the message is
 * delivered.
 */
static int
state_reconcile(struct state *st, char **cause)
{
	char	 from[PATH_MAX], to[PATH_MAX], tmpname[256];
	size_t	 i;
	int	 pending = 0;

	for (i = 0; i < st->nentries; i++) {
		struct state_entry	*e = st->entries[i];

		if (e->kind != STATE_PENDING)
			continue;
		if (st->maildir != NULL) {
			snprintf(from, sizeof from, "%s/tmp/%s", st->maildir,
			    maildir_tmp_name(e->file, tmpname, sizeof tmpname));
			snprintf(to, sizeof to, "%s/new/%s", st->maildir,
			    e->file);
			if (rename(from, to) == 0)
				st->finished++;
			else if (errno != ENOENT) {
				xasprintf(cause, "cannot finish the delivery of "
				    "%s: rename to %s: %s", from, to,
				    strerror(errno));
				return (-1);
			}
		}
		e->kind = STATE_DELIVERED;
		free(e->file);
		e->file = NULL;
		st->dirty = 1;
		pending = 1;
	}
	/* Whether or not we moved anything, the earlier moves may not have
	   reached the disk (the crash may have come before step 5). */
	if (pending && st->maildir != NULL) {
		snprintf(to, sizeof to, "%s/new", st->maildir);
		if (fsync_dir(to) == -1) {
			xasprintf(cause, "%s: fsync: %s", to, strerror(errno));
			return (-1);
		}
	}
	return (0);
}

/* An empty state, not tied to any file: for tests and fuzzing. */
struct state *
state_new(void)
{
	struct state	*st;

	st = xcalloc(1, sizeof *st);
	st->lock_fd = -1;
	random_bytes(st->key, sizeof st->key);
	state_index_rebuild(st);
	return (st);
}

/*
 * Lock and load the state of one account, finishing interrupted
 * deliveries.  mailbox ("user@host") and maildir are what the account is
 * configured with now; a state file that belongs to another mailbox is not
 * used, because its UIDLs mean nothing on this one.  On failure, *code is
 * the exit status that fits.
 */
struct state *
state_open(const char *path, const char *lock_path, const char *mailbox,
    const char *maildir, int *code, char **cause)
{
	struct state	*st;

	st = state_new();
	st->path = xstrdup(path);
	st->lock_path = xstrdup(lock_path);
	switch (state_lock(lock_path, &st->lock_fd, cause)) {
	case -1:
		*code = EXIT_TEMPFAIL;		/* another maild has it */
		goto fail;
	case -2:
		*code = EXIT_IOERR;
		goto fail;
	}
	*code = EXIT_DATAERR;
	if (state_load_file(st, path, cause) == -1)
		goto fail;
	*code = EXIT_IOERR;
	if (state_reconcile(st, cause) == -1)
		goto fail;
	if (st->mailbox != NULL && strcmp(st->mailbox, mailbox) != 0) {
		size_t	i;

		st->old_mailbox = xstrdup(st->mailbox);
		for (i = 0; i < st->nentries; i++)
			state_entry_free(st->entries[i]);
		st->nentries = 0;
		state_index_rebuild(st);
		st->dirty = 1;
	}
	if (st->mailbox == NULL || strcmp(st->mailbox, mailbox) != 0) {
		free(st->mailbox);
		st->mailbox = xstrdup(mailbox);
		st->dirty = 1;
	}
	if (st->maildir == NULL || strcmp(st->maildir, maildir) != 0) {
		free(st->maildir);
		st->maildir = xstrdup(maildir);
		st->dirty = 1;
	}
	return (st);
fail:
	state_close(st);
	return (NULL);
}

/* Release the lock and free the state. */
void
state_close(struct state *st)
{
	size_t	i;

	if (st == NULL)
		return;
	for (i = 0; i < st->nentries; i++)
		state_entry_free(st->entries[i]);
	free(st->entries);
	free(st->index);
	if (st->lock_fd != -1)
		close(st->lock_fd);
	free(st->mailbox);
	free(st->old_mailbox);
	free(st->maildir);
	free(st->path);
	free(st->lock_path);
	free(st);
}

/* Write the state atomically: temporary file, fsync, rename, fsync dir. */
int
state_save(struct state *st, char **cause)
{
	char	 tmp[PATH_MAX], dir[PATH_MAX], *slash, *e1, *e2;
	FILE	*f = NULL;
	size_t	 i;
	int	 fd;

	if ((size_t)snprintf(tmp, sizeof tmp, "%s.XXXXXX", st->path) >=
	    sizeof tmp) {
		xasprintf(cause, "%s: path too long", st->path);
		return (-1);
	}
	if ((fd = mkstemp(tmp)) == -1) {
		xasprintf(cause, "%s: cannot create: %s", tmp, strerror(errno));
		return (-1);
	}
	if ((f = fdopen(fd, "w")) == NULL) {
		close(fd);
		goto fail;
	}
	setvbuf(f, NULL, _IOFBF, 65536);
	e1 = state_escape(st->mailbox, strlen(st->mailbox));
	e2 = state_escape(st->maildir, strlen(st->maildir));
	fprintf(f, "# maild state: the messages this account has delivered.\n"
	    "# Written by maild; do not edit while it runs.  See maild(8).\n"
	    "maild-state %d\nmailbox %s\nmaildir %s\n%s", STATE_VERSION, e1, e2,
	    st->digests ? "records digests\n" : "");
	free(e1);
	free(e2);
	for (i = 0; i < st->nentries; i++) {
		struct state_entry	*e = st->entries[i];

		e1 = state_escape(e->uidl, e->uidl_len);
		if (e->kind == STATE_PENDING)
			fprintf(f, "P %lld %u %s %s\n", (long long)e->first,
			    e->ordinal, e1, e->file);
		else
			fprintf(f, "%c %lld %u %s\n", e->kind == STATE_SKIPPED ?
			    'S' : 'D', (long long)e->first, e->ordinal, e1);
		free(e1);
	}
	if (fflush(f) == EOF || ferror(f) || fsync(fileno(f)) == -1)
		goto fail;
	if (fclose(f) == EOF) {
		f = NULL;
		goto fail;
	}
	f = NULL;
	if (rename(tmp, st->path) == -1)
		goto fail;
	snprintf(dir, sizeof dir, "%s", st->path);
	if ((slash = strrchr(dir, '/')) != NULL && slash != dir)
		*slash = '\0';
	if (fsync_dir(dir) == -1) {
		xasprintf(cause, "%s: fsync: %s", dir, strerror(errno));
		return (-1);
	}
	st->dirty = 0;
	return (0);

fail:
	xasprintf(cause, "cannot write %s: %s", st->path, strerror(errno));
	if (f != NULL)
		fclose(f);
	unlink(tmp);
	return (-1);
}
