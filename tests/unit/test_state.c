/*
 * test_state.c: unit tests for src/state.c, the per-account state:
 * escaping, records and their index, the snapshot and the journal (round
 * trips, compaction, a torn journal block, truncated or damaged files
 * refused with a clear cause, version 1 files), named values, and the
 * account lock.
 *
 * Everything happens in a fresh directory under $TMPDIR (or /tmp), which
 * is removed at the end.
 */

#include "config.h"

#include <sys/stat.h>
#include <sys/wait.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "maild.h"
#include "tap.h"
#include "files.h"

#define S(lit)	(lit), (sizeof(lit) - 1)

static char	*topdir;	/* the test's scratch directory */

/* A new empty directory under the scratch directory. */
static char *
subdir(const char *name)
{
	char	*p;

	xasprintf(&p, "%s/%s", topdir, name);
	rm_rf(p);
	if (mkdir(p, 0700) == -1) {
		perror(p);
		exit(99);
	}
	return (p);
}

static char *
join(const char *dir, const char *name)
{
	char	*p;

	xasprintf(&p, "%s/%s", dir, name);
	return (p);
}

/* Open <dir>/acct.state; NULL (and a diagnostic) on failure. */
static struct state *
open_acct(const char *dir, int *code, char **cause)
{
	*cause = NULL;
	*code = -1;
	return (state_open(dir, "acct", code, cause));
}

/* Open, and fail the test run if that fails. */
static struct state *
must_open(const char *dir)
{
	struct state	*st;
	char		*cause;
	int		 code;

	if ((st = open_acct(dir, &code, &cause)) == NULL) {
		diag("state_open %s: %s", dir, cause);
		exit(99);
	}
	return (st);
}

static void
must_sync(struct state *st, const char *what)
{
	char	*cause = NULL;

	if (!ok(state_sync(st, &cause) == 0, what))
		diag("%s", cause);
	free(cause);
}

/* The live record with this key and ordinal, or NULL. */
static const struct state_rec *
rec(struct state *st, const char *key, size_t len, uint32_t ord)
{
	uint32_t	id = state_find(st, key, len, ord);

	return (id == STATE_NONE ? NULL : state_rec(st, id));
}

/* ---------------------------------------------------------------------- */
/* state_escape / state_unescape */

static uint64_t	rng_state = 0x2545f4914f6cdd1dULL;

static uint32_t
rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return ((uint32_t)(rng_state >> 16));
}

static int
unescape_ok(const char *s, size_t len, const char *want, size_t wantlen,
    const char *what)
{
	char	*out = NULL;
	size_t	 outlen = 0;
	int	 r;

	r = state_unescape(s, len, &out, &outlen);
	if (!is_int(r, 0, tap_fmt("unescape %s: accepted", what)))
		return (0);
	is_mem(out, outlen, want, wantlen, tap_fmt("unescape %s: bytes", what));
	ok(out[outlen] == '\0', tap_fmt("unescape %s: NUL-terminated", what));
	free(out);
	return (1);
}

static void
unescape_bad(const char *s, size_t len, const char *what)
{
	char	*out = NULL;
	size_t	 outlen = 0;

	is_int(state_unescape(s, len, &out, &outlen), -1,
	    tap_fmt("unescape %s: rejected", what));
}

static void
test_escape(void)
{
	char		 all[256], *e, *u, want[4];
	size_t		 ulen, i, k, bad, bad_alpha;
	unsigned	 c;

	/* Every byte value alone. */
	bad = bad_alpha = 0;
	for (c = 0; c < 256; c++) {
		char	b = (char)c;

		e = state_escape(&b, 1);
		if (c > 0x20 && c < 0x7f && c != '%')
			snprintf(want, sizeof want, "%c", c);
		else
			snprintf(want, sizeof want, "%%%02X", c);
		if (strcmp(e, want) != 0) {
			if (bad++ < 3)
				diag("escape of 0x%02x: \"%s\", want \"%s\"",
				    c, e, want);
		}
		if (state_unescape(e, strlen(e), &u, &ulen) != 0 ||
		    ulen != 1 || (unsigned char)u[0] != c) {
			if (bad_alpha++ < 3)
				diag("round trip of 0x%02x failed", c);
		} else
			free(u);
		free(e);
	}
	is_int(bad, 0, "state_escape: each of the 256 byte values escaped "
	    "as expected (%XX upper case outside 0x21-0x7e and for '%')");
	is_int(bad_alpha, 0, "state_unescape: each of the 256 byte values "
	    "round-trips");

	/* All 256 together; the result is safe in a space-separated line. */
	for (i = 0; i < 256; i++)
		all[i] = (char)i;
	e = state_escape(all, 256);
	for (i = 0; e[i] != '\0'; i++) {
		if ((unsigned char)e[i] <= 0x20 || (unsigned char)e[i] >= 0x7f)
			break;
	}
	ok(e[i] == '\0', "state_escape: output is all in 0x21-0x7e");
	if (state_unescape(e, strlen(e), &u, &ulen) == 0) {
		is_mem(u, ulen, all, 256, "state_unescape: 256-byte string "
		    "round-trips");
		free(u);
	} else
		ok(0, "state_unescape: 256-byte string round-trips");
	free(e);

	/* Random strings. */
	bad = 0;
	for (i = 0; i < 2000; i++) {
		char	s[200];
		size_t	len = rng() % sizeof s;

		for (k = 0; k < len; k++)
			s[k] = i % 2 ? (char)rng() : "% \x01a\xff"[rng() % 5];
		e = state_escape(s, len);
		if (state_unescape(e, strlen(e), &u, &ulen) != 0 ||
		    ulen != len || memcmp(u, s, len) != 0) {
			if (bad++ < 3)
				diag("random round trip %zu failed: %s", i, e);
		} else
			free(u);
		free(e);
	}
	is_int(bad, 0, "escape/unescape: 2000 random strings round-trip");

	e = state_escape("", 0);
	is_str(e, "", "state_escape: empty string");
	free(e);
	unescape_ok(S(""), S(""), "empty string");
	unescape_ok(S("abc"), S("abc"), "plain");
	unescape_ok(S("%25%20%00x"), S("% \0x"), "%25 %20 %00");
	unescape_ok(S("%FF%fe"), S("\xff\xfe"), "hex digits of either case");

	/* The length is respected. */
	unescape_ok("ab%41", 2, S("ab"), "cut before an escape");
	unescape_bad("ab%41", 4, "cut inside an escape");

	unescape_bad(S("%"), "lone %");
	unescape_bad(S("a%"), "trailing %");
	unescape_bad(S("%4"), "% and one digit");
	unescape_bad(S("a%4"), "trailing % and one digit");
	unescape_bad(S("%G1"), "%G1");
	unescape_bad(S("%1G"), "%1G");
	unescape_bad(S("%%"), "%%");
	unescape_bad(S("%%41"), "%%41");
	unescape_bad(S("% 1"), "% and a space");
	unescape_bad(S("%-1"), "%-1");
	unescape_bad(S("%+1"), "%+1");
	unescape_bad(S("a b"), "raw space");
	unescape_bad(S("a\tb"), "raw tab");
	unescape_bad(S("a\nb"), "raw LF");
	unescape_bad(S("a\rb"), "raw CR");
	unescape_bad(S("\x01"), "raw control byte");
	unescape_bad(S("a\0b"), "raw NUL");
	unescape_bad(S("\x7f"), "raw DEL");
	unescape_bad(S("\x80"), "raw 0x80");
	unescape_bad(S("\xff"), "raw 0xff");
}


/* ---------------------------------------------------------------------- */
/* Records, the snapshot and the journal */

static void
test_roundtrip(void)
{
	char			*dir, *path, *jpath, *cause = NULL;
	const char		*pf = "1.M1P1Q1A0000abcd.host,S=10";
	struct state		*st, *st2;
	const struct state_rec	*r;
	const char		*k;
	size_t			 klen;
	struct stat		 sb;
	uint32_t		 id, it;
	int			 n;

	dir = subdir("roundtrip");
	path = join(dir, "acct.state");
	jpath = join(dir, "acct.journal");
	st = must_open(dir);
	is_int((int)state_count(st), 0, "state_open: no file yet is an empty "
	    "state");
	ok(!exists(path), "state_open: does not create the state file");
	ok(state_find(st, S("x"), 1) == STATE_NONE, "state_find: nothing in "
	    "an empty state");

	state_put(st, S("uid1"), 1, 1000, 11, NULL, NULL);
	state_put(st, S("uid1"), 2, 1001, 12, NULL, NULL);
	state_put(st, S("weird uid\x01%\xff"), 1, 0, 0, NULL, NULL);
	state_put(st, S("nul\0inside"), 1, 5, 99, NULL, NULL);
	id = state_put(st, S("pend"), 1, 4102444800LL, 10, NULL, pf);
	state_set_meta(st, "mailbox", "u@h");
	state_set_meta(st, "odd", "with space\nand newline");
	is_int((int)state_count(st), 5, "state_put: 5 records");
	ok(state_rec(st, id)->kind == STATE_PENDING, "state_put with a file "
	    "is PENDING");
	is_str(state_rec_file(st, state_rec(st, id)), pf, "state_rec_file");
	ok(state_dirty(st), "changes make the state dirty");
	must_sync(st, "state_sync: the first sync succeeds");
	ok(!state_dirty(st), "state_sync: nothing left to write");
	ok(exists(path), "the first sync writes a snapshot");
	ok(!exists(jpath), "... and no journal");
	ok(stat(path, &sb) == 0 && (sb.st_mode & 077) == 0,
	    "the state file is not readable by others");
	is_int(count_dir(dir), 2, "only the state file and the lock in the "
	    "directory");

	/* More changes go to the journal. */
	state_put(st, S("later"), 1, 2000, 0, NULL, NULL);
	state_forget(st, state_find(st, S("uid1"), 2));
	state_delivered(st, id);
	state_set_absence(st, state_find(st, S("uid1"), 1), 2, 1234);
	state_set_meta(st, "odd", NULL);
	must_sync(st, "state_sync: a second sync succeeds");
	ok(exists(jpath), "the second sync appends to the journal");
	state_close(st);

	st2 = must_open(dir);
	is_int((int)state_count(st2), 5, "reopened: snapshot + journal give 5 "
	    "records");
	r = rec(st2, S("uid1"), 1);
	ok(r != NULL && r->first == 1000 && r->size == 11 && r->missed == 2 &&
	    r->absent == 1234 && r->kind == STATE_DELIVERED,
	    "uid1/1: all fields back, the absence from the journal");
	ok(rec(st2, S("uid1"), 2) == NULL, "uid1/2: forgotten in the journal");
	r = rec(st2, S("pend"), 1);
	ok(r != NULL && r->kind == STATE_DELIVERED && r->first == 4102444800LL
	    && state_rec_file(st2, r) == NULL, "pend: delivered now, no file");
	r = rec(st2, S("weird uid\x01%\xff"), 1);
	ok(r != NULL && r->first == 0, "a key with odd bytes is back");
	r = rec(st2, S("nul\0inside"), 1);
	if (ok(r != NULL, "a key with a NUL is back")) {
		k = state_rec_key(st2, r, &klen);
		is_mem(k, klen, "nul\0inside", 10, "... byte for byte");
	}
	ok(rec(st2, S("nul"), 1) == NULL, "the key up to its NUL is not the "
	    "key");
	ok(rec(st2, S("uid"), 1) == NULL && rec(st2, S("uid12"), 1) == NULL &&
	    rec(st2, S("UID1"), 1) == NULL && rec(st2, S("uid1"), 3) == NULL,
	    "no match for a prefix, a longer key, another case, an absent "
	    "ordinal");
	ok(rec(st2, S("later"), 1) != NULL, "later: from the journal");
	is_str(state_meta(st2, "mailbox"), "u@h", "meta from the snapshot");
	ok(state_meta(st2, "odd") == NULL, "meta unset in the journal");
	ok(!state_dirty(st2), "a loaded state is not dirty");
	it = 0;
	n = 0;
	while (state_next(st2, &it) != NULL)
		n++;
	is_int(n, 5, "state_next: visits the 5 live records");

	/* state_put over an existing record replaces it. */
	state_put(st2, S("later"), 1, 3000, 77, NULL, NULL);
	is_int((int)state_count(st2), 5, "state_put on a live key: no new "
	    "record");
	ok(rec(st2, S("later"), 1)->first == 3000 &&
	    rec(st2, S("later"), 1)->size == 77, "... the fields replaced");
	must_sync(st2, "sync after a replacement");
	state_close(st2);
	st2 = must_open(dir);
	ok(rec(st2, S("later"), 1) != NULL &&
	    rec(st2, S("later"), 1)->first == 3000, "the replacement survives "
	    "a reload");
	state_forget_all(st2);
	is_int((int)state_count(st2), 0, "state_forget_all");
	must_sync(st2, "sync after forget_all (a snapshot)");
	ok(!exists(jpath), "the snapshot replaced the journal");
	state_close(st2);
	st2 = must_open(dir);
	is_int((int)state_count(st2), 0, "... empty after a reload");
	is_str(state_meta(st2, "mailbox"), "u@h", "... the meta stays");
	state_close(st2);
	free(cause);
	free(path);
	free(jpath);
	free(dir);
}

/* Compaction: the journal never grows much beyond the snapshot. */
static void
test_compaction(void)
{
	char		*dir, *path, *jpath, key[32];
	struct state	*st;
	struct stat	 a, b;
	int		 i, gen_changes = 0, bad = 0;
	off_t		 last = 0;

	dir = subdir("compact");
	path = join(dir, "acct.state");
	jpath = join(dir, "acct.journal");
	st = must_open(dir);
	for (i = 0; i < 20000; i++) {
		snprintf(key, sizeof key, "message-%06d", i);
		state_put(st, key, strlen(key), 1, 1000 + i, i, NULL, NULL);
		if (i % 100 == 99) {
			char	*cause = NULL;

			if (state_sync(st, &cause) == -1) {
				diag("%s", cause);
				bad++;
				free(cause);
			}
			if (stat(path, &a) == 0 && a.st_ino != (ino_t)last) {
				last = (off_t)a.st_ino;
				gen_changes++;
			}
			if (stat(jpath, &b) == 0 && stat(path, &a) == 0 &&
			    b.st_size > a.st_size + (512 << 10))
				bad++;
		}
	}
	is_int(bad, 0, "200 syncs of 100 records: all succeed, the journal "
	    "stays near the snapshot's size");
	ok(gen_changes >= 2 && gen_changes < 40, "the snapshot was rewritten "
	    "a few times, not at every sync");
	/* Forget most: the dead ones leave at the next snapshot. */
	for (i = 0; i < 20000; i += 2) {
		snprintf(key, sizeof key, "message-%06d", i);
		state_forget(st, state_find(st, key, strlen(key), 1));
	}
	must_sync(st, "sync after forgetting half");
	state_close(st);
	st = must_open(dir);
	is_int((int)state_count(st), 10000, "10000 records after a reload");
	snprintf(key, sizeof key, "message-%06d", 19999);
	ok(rec(st, key, strlen(key), 1) != NULL &&
	    rec(st, key, strlen(key), 1)->size == 19999, "the last one is "
	    "there");
	snprintf(key, sizeof key, "message-%06d", 19998);
	ok(rec(st, key, strlen(key), 1) == NULL, "a forgotten one is not");
	state_close(st);
	free(path);
	free(jpath);
	free(dir);
}

/* Write a state file and a journal, and open them. */
static struct state *
open_files(const char *name, const char *state, const char *journal,
    int *code, char **cause)
{
	char	*dir, *p;
	struct state *st;

	dir = subdir(name);
	if (state != NULL) {
		p = join(dir, "acct.state");
		write_file(p, state, strlen(state));
		free(p);
	}
	if (journal != NULL) {
		p = join(dir, "acct.journal");
		write_file(p, journal, strlen(journal));
		free(p);
	}
	st = open_acct(dir, code, cause);
	free(dir);
	return (st);
}

/* A good snapshot of generation 3 with one record, made by state.c. */
static char *
good_snapshot(void)
{
	char		*dir, *p, *text;
	struct state	*st;
	uint32_t	 i;

	dir = subdir("goodsnap");
	st = must_open(dir);
	state_put(st, S("one"), 1, 100, 5, NULL, NULL);
	for (i = 0; i < 3; i++) {
		state_forget_all(st);	/* each sync a new generation */
		state_put(st, S("one"), 1, 100, 5, NULL, NULL);
		must_sync(st, "good_snapshot: sync");
	}
	state_close(st);
	p = join(dir, "acct.state");
	text = read_file(p, NULL);
	free(p);
	free(dir);
	return (text);
}

/* The sum of a journal block of lines, as state.c writes it. */
static char *
block(const char *lines)
{
	uint64_t	 h = 0xcbf29ce484222325ULL;
	const char	*p;
	char		*out;
	int		 n = 0;

	for (p = lines; *p != '\0'; p++) {
		h ^= (unsigned char)*p;
		h *= 0x100000001b3ULL;
		if (*p == '\n')
			n++;
	}
	xasprintf(&out, "%sC %d %016llx\n", lines, n, (unsigned long long)h);
	return (out);
}

static void
refused(const char *name, const char *state, const char *journal, int want,
    const char *needle)
{
	struct state	*st;
	char		*cause = NULL;
	int		 code;

	st = open_files(name, state, journal, &code, &cause);
	if (!ok(st == NULL, tap_fmt("%s: refused", name))) {
		state_close(st);
		return;
	}
	is_int(code, want, tap_fmt("%s: exit code", name));
	like(cause, needle, tap_fmt("%s: the cause says \"%s\"", name,
	    needle));
	if (strcmp(needle, "newer") != 0)
		like(cause, "move it and its .journal away", tap_fmt("%s: and what to do",
		    name));
	free(cause);
}

static void
test_integrity(void)
{
	char		*snap, *cut, *j1, *j2, *jj, *bad, *cause = NULL;
	struct state	*st;
	size_t		 len;
	int		 code;

	snap = good_snapshot();
	len = strlen(snap);
	st = open_files("intact", snap, NULL, &code, &cause);
	if (ok(st != NULL, "a snapshot state.c wrote loads")) {
		ok(rec(st, S("one"), 1) != NULL, "... with its record");
		state_close(st);
	} else
		diag("%s", cause);

	refused("0-byte state file", "", NULL, EXIT_DATAERR, "empty");
	/* Cut at every few bytes: always refused, never a shorter state. */
	cut = xstrdup(snap);
	{
		size_t	i, bad_cuts = 0;

		for (i = 1; i < len; i += 7) {
			char	*c = xstrndup(snap, i);

			free(cause);
			cause = NULL;
			st = open_files("cut", c, NULL, &code, &cause);
			if (st != NULL) {
				if (bad_cuts++ < 3)
					diag("cut at %zu accepted", i);
				state_close(st);
			}
			free(c);
		}
		is_int((int)bad_cuts, 0, "a snapshot cut anywhere is refused");
	}
	free(cut);
	refused("truncated snapshot", tap_fmt("%.*s", (int)(len - 10), snap),
	    NULL, EXIT_DATAERR, "truncated");
	bad = xstrdup(snap);
	*strstr(bad, "one") = 'x';
	refused("a changed byte", bad, NULL, EXIT_DATAERR, "checksum");
	free(bad);
	xasprintf(&bad, "%sD 1 1 0 0 0 extra -\n", snap);
	refused("a line after end", bad, NULL, EXIT_DATAERR, "truncated");
	free(bad);
	refused("not a state file", "hello\n", NULL, EXIT_DATAERR,
	    "not a maild state file");
	refused("a newer version", "maild-state 9\n", NULL, EXIT_DATAERR,
	    "newer");

	/* The journal: good blocks apply, a torn last one is cut off. */
	j1 = block("D 7 1 3 0 0 two -\n");
	j2 = block("F 1 one\nD 8 1 4 0 0 three -\n");
	xasprintf(&jj, "maild-journal 2 3\n%s%s", j1, j2);
	free(cause);
	cause = NULL;
	st = open_files("journal", snap, jj, &code, &cause);
	if (ok(st != NULL, "a journal of two blocks replays")) {
		ok(rec(st, S("one"), 1) == NULL && rec(st, S("two"), 1) != NULL &&
		    rec(st, S("three"), 1) != NULL, "... both blocks applied");
		state_close(st);
	} else
		diag("%s", cause);
	free(jj);
	xasprintf(&jj, "maild-journal 2 3\n%sF 1 one\nD 8 1 4 0 0 thr", j1);
	free(cause);
	cause = NULL;
	st = open_files("torn", snap, jj, &code, &cause);
	if (ok(st != NULL, "a torn last block is not an error")) {
		ok(rec(st, S("one"), 1) != NULL && rec(st, S("two"), 1) != NULL &&
		    rec(st, S("three"), 1) == NULL, "... it is ignored, the "
		    "block before applies");
		state_put(st, S("four"), 1, 9, 9, NULL, NULL);
		must_sync(st, "... and a sync after it");
		state_close(st);
		{
			char	*d;

			xasprintf(&d, "%s/torn", topdir);
			st = open_acct(d, &code, &cause);
			free(d);
		}
		ok(st != NULL && rec(st, S("four"), 1) != NULL &&
		    rec(st, S("three"), 1) == NULL, "... which is read back");
		if (st != NULL)
			state_close(st);
	} else
		diag("%s", cause);
	free(jj);
	{
		/* The block with a wrong sum, then a good one: damage. */
		char	*wrong = xstrdup(j1);

		wrong[strlen(wrong) - 2] ^= 1;
		xasprintf(&jj, "maild-journal 2 3\n%s%s", wrong, j2);
		refused("a bad block before a good one", snap, jj,
		    EXIT_DATAERR, "damaged");
		free(jj);
		free(wrong);
	}
	xasprintf(&jj, "maild-journal 2 2\n%s", j1);
	free(cause);
	cause = NULL;
	st = open_files("stale journal", snap, jj, &code, &cause);
	if (ok(st != NULL, "a journal of an older generation is ignored")) {
		ok(rec(st, S("two"), 1) == NULL, "... nothing of it applied");
		state_close(st);
	}
	free(jj);
	xasprintf(&jj, "maild-journal 2 4\n%s", j1);
	refused("a newer journal", snap, jj, EXIT_DATAERR, "newer");
	free(jj);
	xasprintf(&jj, "maild-journal 2 0\n%s", j1);
	refused("a journal without a state file", NULL, jj, EXIT_DATAERR,
	    "does not");
	free(jj);
	free(j1);
	free(j2);

	/* Corrupt records in an otherwise good file. */
	{
		const char *recs[] = {
			"D 1 1 0 0 0 -\n", "D x 1 0 0 0 k -\n",
			"D 1 0 0 0 0 k -\n", "D 1 1 0 256 0 k -\n",
			"D 1 1 0 0 0 a%zz -\n", "D 1 1 0 0 0 k - extra\n",
			"P 1 1 0 0 0 k - ../../etc\n",
			"P 1 1 0 0 0 k - notours,S=1\n",
			"P 1 1 0 0 0 k - ../1.M1P1Q1A0000abcd.host,S=1\n",
			"P 1 1 0 0 0 k - ./1.M1P1Q1A0000abcd.host,S=1\n",
			"Q 1 1 0 0 0 k -\n", "D -1 1 0 0 0 k -\n",
			"D 1 4294967296 0 0 0 k -\n", "D 1 1 0 0 0 k %zz\n",
		};
		size_t	i;

		for (i = 0; i < sizeof recs / sizeof recs[0]; i++) {
			j1 = block(recs[i]);
			xasprintf(&jj, "maild-journal 2 3\n%s", j1);
			refused(tap_fmt("corrupt record %zu", i), snap, jj,
			    EXIT_DATAERR, "corrupt record");
			free(jj);
			free(j1);
		}
	}
	free(cause);
	free(snap);
}

/* maild 0.1's files are read, and rewritten as version 2. */
static void
test_version1(void)
{
	const char	*v1 = "# maild state\nmaild-state 1\nmailbox u%40h\n"
	    "maildir /m\nD 100 1 a\nS 100 1 skipped\nD 101 2 a\n"
	    "P 102 1 b 1.M1P1Q1A0000abcd.host,S=10\n";
	char		*cause = NULL, *dir, *p, *text;
	struct state	*st;
	int		 code;

	st = open_files("v1", v1, NULL, &code, &cause);
	if (!ok(st != NULL, "a version 1 file loads")) {
		diag("%s", cause);
		return;
	}
	ok(rec(st, S("a"), 1) != NULL && rec(st, S("a"), 2) != NULL &&
	    rec(st, S("a"), 2)->first == 101, "its D records");
	ok(rec(st, S("skipped"), 1) == NULL, "its S records are dropped");
	ok(rec(st, S("b"), 1) != NULL &&
	    rec(st, S("b"), 1)->kind == STATE_PENDING, "its P record");
	is_str(state_meta(st, "mailbox"), "u@h", "mailbox as meta");
	is_str(state_meta(st, "maildir"), "/m", "maildir as meta");
	ok(state_dirty(st), "it is to be rewritten");
	must_sync(st, "the rewrite");
	state_close(st);
	dir = join(topdir, "v1");
	p = join(dir, "acct.state");
	text = read_file(p, NULL);
	like(text, "maild-state 2", "... as version 2");
	free(text);
	free(p);
	free(dir);
	refused("v1 truncated mid-line", "maild-state 1\nD 100 1 a", NULL,
	    EXIT_DATAERR, "truncated");
}

/* A state in memory only (for sets) writes nothing anywhere. */
static void
test_memory(void)
{
	struct state	*st = state_new();
	char		 key[16];
	int		 i, bad = 0;

	for (i = 0; i < 100000; i++) {
		snprintf(key, sizeof key, "k%d", i);
		state_put(st, key, strlen(key), 1 + i % 3, i, 0, NULL, NULL);
	}
	for (i = 0; i < 100000; i++) {
		snprintf(key, sizeof key, "k%d", i);
		if (rec(st, key, strlen(key), 1 + i % 3) == NULL ||
		    rec(st, key, strlen(key), 1 + i % 3)->first != i)
			bad++;
	}
	is_int(bad, 0, "100000 records: each found by key and ordinal");
	for (i = 0; i < 100000; i += 3) {
		snprintf(key, sizeof key, "k%d", i);
		state_forget(st, state_find(st, key, strlen(key), 1));
	}
	bad = 0;
	for (i = 0; i < 100000; i++) {
		snprintf(key, sizeof key, "k%d", i);
		if ((rec(st, key, strlen(key), 1 + i % 3) == NULL) != (i % 3 == 0))
			bad++;
	}
	is_int(bad, 0, "forgetting every third: exactly those are gone");
	state_close(st);
}

/* ---------------------------------------------------------------------- */
/* The lock */

static void
test_lock(void)
{
	char		*dir, *lock, *path, *cause = NULL, c;
	int		 tochild[2], toparent[2], fd = -1, code;
	pid_t		 pid;
	struct stat	 sb;
	struct state	*st;

	dir = subdir("lock");
	lock = join(dir, "acct.lock");
	path = join(dir, "acct.state");

	if (pipe(tochild) == -1 || pipe(toparent) == -1) {
		perror("pipe");
		exit(99);
	}
	fflush(stdout);
	if ((pid = fork()) == -1) {
		perror("fork");
		exit(99);
	}
	if (pid == 0) {
		int	cfd;
		char	*ccause;

		close(tochild[1]);
		close(toparent[0]);
		if (state_lock(lock, &cfd, &ccause) == -1)
			_exit(1);
		if (write(toparent[1], "L", 1) != 1)
			_exit(1);
		/* Hold the lock until the parent says so (or dies). */
		if (read(tochild[0], &c, 1) < 0)
			_exit(1);
		_exit(0);
	}
	close(tochild[0]);
	close(toparent[1]);
	if (read(toparent[0], &c, 1) != 1) {
		ok(0, "lock: child took the lock");
		goto out;
	}
	ok(stat(lock, &sb) == 0 && (sb.st_mode & 077) == 0,
	    "lock: lock file created, not accessible to others");

	ok(state_lock(lock, &fd, &cause) == -1, "state_lock: fails while "
	    "another process holds the lock");
	like(cause, tap_fmt("locked by process %ld", (long)pid),
	    "state_lock: the cause names the holder's pid (written into the "
	    "lock file)");
	like(cause, lock, "state_lock: the cause names the lock file");
	free(cause);
	cause = NULL;

	st = state_open(dir, "acct", &code, &cause);
	ok(st == NULL, "state_open: fails while the lock is held");
	is_int(code, EXIT_TEMPFAIL, "state_open: locked is EXIT_TEMPFAIL");
	like(cause, tap_fmt("%ld", (long)pid), "state_open: the cause "
	    "names the holder's pid");
	free(cause);
	cause = NULL;
	state_close(st);

	/* An open-file-description lock: a second open in this process
	   conflicts too, and says it is this maild. */
	close(tochild[1]);
	tochild[1] = -1;
	waitpid(pid, NULL, 0);
	pid = -1;
	if (ok(state_lock(lock, &fd, &cause) == 0, "state_lock: free once "
	    "the holder is gone")) {
		int	fd2 = -1;

		free(cause);
		cause = NULL;
		ok(state_lock(lock, &fd2, &cause) == -1, "state_lock: a second "
		    "lock in the same process fails");
		like(cause, "this maild", "state_lock: ... and says it is held "
		    "by this maild");
		if (fd2 != -1)
			close(fd2);
		close(fd);
	} else
		diag("%s", cause);
	free(cause);
	cause = NULL;

	/* Let the child go; then the lock is free. */
	close(tochild[1]);
	tochild[1] = -1;
	waitpid(pid, NULL, 0);
	pid = -1;
	if (ok(state_lock(lock, &fd, &cause) == 0, "state_lock: free once "
	    "the holder is gone"))
		close(fd);
	else
		diag("%s", cause);

	/* A lock in a directory that does not exist. */
	{
		char	*nolock = join(dir, "nonexistent/acct.lock");

		free(cause);
		cause = NULL;
		ok(state_lock(nolock, &fd, &cause) == -2 && cause != NULL &&
		    strstr(cause, nolock) != NULL,
		    "state_lock: missing directory fails (-2, not locked by "
		    "another) with the path");
		free(nolock);
	}
out:
	if (pid > 0) {
		kill(pid, SIGTERM);
		waitpid(pid, NULL, 0);
	}
	if (tochild[1] != -1)
		close(tochild[1]);
	close(toparent[0]);
	free(cause);
	free(lock);
	free(path);
	free(dir);
}


int
main(void)
{
	topdir = mkscratch("state");
	test_escape();
	test_roundtrip();
	test_compaction();
	test_integrity();
	test_version1();
	test_memory();
	test_lock();
	rm_rf(topdir);
	free(topdir);
	return (done());
}
