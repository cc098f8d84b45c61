/*
 * test_state.c: unit tests for src/state.c, the per-account state file:
 * escaping, save/load round trips, rejection of corrupt files with a
 * "path:line:" cause, the account lock, recovery of interrupted
 * deliveries (PENDING records) and the lookup index.
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
#include <ftw.h>
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

/* ---------------------------------------------------------------------- */
/* Helpers */

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

static int
is_dir(const char *path)
{
	struct stat	sb;

	return (lstat(path, &sb) == 0 && S_ISDIR(sb.st_mode));
}

/* Open the state at path with a lock next to it; NULL on failure. */
static struct state *
open_state(const char *path, const char *mailbox, const char *maildir,
    int *code, char **cause)
{
	char		*lock;
	struct state	*st;

	xasprintf(&lock, "%s.lock", path);
	*cause = NULL;
	*code = -1;
	st = state_open(path, lock, mailbox, maildir, code, cause);
	free(lock);
	return (st);
}

/*
 * An empty state (its file does not exist) to load files into with
 * state_load_file(), which does no reconciliation.
 */
static struct state *
empty_state(const char *dir)
{
	char		*path, *cause;
	struct state	*st;
	int		 code;

	path = join(dir, "empty.state");
	unlink(path);
	st = open_state(path, "nobody@nowhere", "/nonexistent", &code, &cause);
	if (st == NULL) {
		diag("empty_state: %s", cause);
		exit(99);
	}
	free(path);
	return (st);
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
/* Save and load */

static void
check_entry(struct state *st, const char *uidl, size_t len, uint32_t ord,
    int64_t first, enum state_kind kind, const char *file, const char *what)
{
	struct state_entry	*e;

	e = state_find(st, uidl, len, ord);
	if (!ok(e != NULL, tap_fmt("%s: found", what)))
		return;
	ok(e->uidl_len == len && memcmp(e->uidl, uidl, len) == 0 &&
	    e->uidl[len] == '\0' && e->ordinal == ord && e->first == first &&
	    e->kind == kind, tap_fmt("%s: fields", what));
	is_str(e->file, file, tap_fmt("%s: file", what));
}

static void
test_roundtrip(void)
{
	char			*dir, *path, *cause = NULL, *text;
	struct state		*st, *st2;
	struct stat		 sb;
	int			 code;
	const char		*pf = "1700000000.M000001P42Q1A0000abcd.host,S=42";

	dir = subdir("roundtrip");
	path = join(dir, "acct.state");

	st = open_state(path, "user@pop.example.com", "/home/u/Mail", &code,
	    &cause);
	if (!ok(st != NULL, "state_open: no file yet is an empty state")) {
		diag("%s", cause);
		return;
	}
	is_int(st->nentries, 0, "state_open: empty state has no entries");
	is_str(st->mailbox, "user@pop.example.com", "state_open: mailbox set");
	is_str(st->maildir, "/home/u/Mail", "state_open: maildir set");
	ok(st->dirty, "state_open: a new state is dirty (needs writing)");
	ok(exists(path) == 0, "state_open: does not create the state file");

	state_add(st, S("uid1"), 1, 1000, NULL);
	state_add(st, S("uid1"), 2, 1001, NULL);
	state_add(st, S("uid1"), 3, 1002, NULL);
	state_add(st, S("weird uid\x01%\xff"), 1, 0, NULL);
	state_add(st, S("nul\0inside"), 1, 5, NULL);
	state_add(st, S("pend"), 1, 4102444800LL, pf);
	state_add(st, S("pend"), 2, 7, pf);
	is_int(st->nentries, 7, "state_add: 7 entries");
	check_entry(st, S("pend"), 1, 4102444800LL, STATE_PENDING, pf,
	    "state_add with a file name is PENDING");

	if (!is_int(state_save(st, &cause), 0, "state_save: succeeds"))
		diag("%s", cause);
	ok(!st->dirty, "state_save: clears dirty");
	ok(stat(path, &sb) == 0 && (sb.st_mode & 077) == 0,
	    "state_save: the file is not readable by others");
	is_int(count_dir(dir), 2, "state_save: leaves only the state file "
	    "and the lock in the directory");

	text = read_file(path, NULL);
	like(text, "\nmaild-state 1\n", "saved file: version line");
	like(text, "\nmailbox user@pop.example.com\n", "saved file: mailbox");
	like(text, "\nmaildir /home/u/Mail\n", "saved file: maildir");
	like(text, "\nD 1000 1 uid1\nD 1001 2 uid1\nD 1002 3 uid1\n",
	    "saved file: D records with ordinals");
	like(text, "\nD 0 1 weird%20uid%01%25%FF\n",
	    "saved file: UIDL escaped");
	like(text, "\nD 5 1 nul%00inside\n", "saved file: NUL escaped");
	like(text, tap_fmt("\nP 4102444800 1 pend %s\n", pf),
	    "saved file: P record with its file");
	free(text);

	/* Load it raw (no reconciliation) into another state. */
	st2 = empty_state(dir);
	if (!is_int(state_load_file(st2, path, &cause), 0,
	    "state_load_file: reads the saved file")) {
		diag("%s", cause);
		state_close(st);
		state_close(st2);
		return;
	}
	is_int(st2->nentries, 7, "state_load_file: 7 entries");
	ok(!st2->dirty, "state_load_file: not dirty after loading");
	is_str(st2->mailbox, "user@pop.example.com", "loaded: mailbox");
	is_str(st2->maildir, "/home/u/Mail", "loaded: maildir");
	check_entry(st2, S("uid1"), 1, 1000, STATE_DELIVERED, NULL,
	    "loaded uid1/1");
	check_entry(st2, S("uid1"), 2, 1001, STATE_DELIVERED, NULL,
	    "loaded uid1/2");
	check_entry(st2, S("uid1"), 3, 1002, STATE_DELIVERED, NULL,
	    "loaded uid1/3");
	check_entry(st2, S("weird uid\x01%\xff"), 1, 0, STATE_DELIVERED, NULL,
	    "loaded escaped UIDL");
	check_entry(st2, S("nul\0inside"), 1, 5, STATE_DELIVERED, NULL,
	    "loaded UIDL with a NUL");
	check_entry(st2, S("pend"), 1, 4102444800LL, STATE_PENDING, pf,
	    "loaded PENDING 1");
	check_entry(st2, S("pend"), 2, 7, STATE_PENDING, pf,
	    "loaded PENDING 2");
	ok(state_find(st2, S("uid1"), 4) == NULL, "state_find: absent ordinal");
	ok(state_find(st2, S("uid"), 1) == NULL, "state_find: prefix of a UIDL");
	ok(state_find(st2, S("uid12"), 1) == NULL, "state_find: longer UIDL");
	ok(state_find(st2, S("nul"), 1) == NULL,
	    "state_find: UIDL up to its NUL is not the UIDL");
	ok(state_find(st2, S("UID1"), 1) == NULL, "state_find: case matters");
	state_close(st2);
	state_close(st);

	/* Reopening a clean file changes nothing: no needless rewrite. */
	unlink(path);
	st = open_state(path, "u@h", "/m", &code, &cause);
	state_add(st, S("a"), 1, 1, NULL);
	state_save(st, &cause);
	state_close(st);
	st = open_state(path, "u@h", "/m", &code, &cause);
	if (ok(st != NULL, "state_open: reopen a saved state")) {
		ok(!st->dirty, "state_open: same mailbox and maildir, nothing "
		    "pending: not dirty");
		ok(state_find(st, S("a"), 1) != NULL, "state_open: entry back");
		state_close(st);
	}

	/* Saving where it cannot write. */
	{
		char	*bad = join(dir, "no/such/dir/x.state");
		char	*lock = join(dir, "x.lock");

		st = state_open(bad, lock, "u@h", "/m", &code, &cause);
		if (ok(st != NULL, "state_open: missing directory of the state "
		    "file is an empty state")) {
			ok(state_save(st, &cause) == -1 && cause != NULL &&
			    strstr(cause, "no/such/dir/x.state") != NULL,
			    "state_save: fails with the path in the cause");
			diag("cause: %s", cause ? cause : "(null)");
			free(cause);
			state_close(st);
		}
		free(bad);
		free(lock);
	}
	free(path);
	free(dir);
}

/* ---------------------------------------------------------------------- */
/* Corrupt files */

static void
corrupt(const char *name, const char *data, size_t len, int line,
    const char *phrase)
{
	char		*dir, *path, *cause = NULL, *prefix;
	struct state	*st;
	int		 code = 0;

	dir = subdir("corrupt");
	path = join(dir, "acct.state");
	write_file(path, data, len);
	st = open_state(path, "u@h", "/m", &code, &cause);
	if (line > 0)
		xasprintf(&prefix, "%s:%d: ", path, line);
	else
		xasprintf(&prefix, "%s: ", path);
	if (!ok(st == NULL, tap_fmt("corrupt %s: state_open fails", name))) {
		state_close(st);
	} else {
		is_int(code, EXIT_DATAERR, tap_fmt("corrupt %s: EXIT_DATAERR",
		    name));
		has_prefix(cause, prefix, tap_fmt("corrupt %s: cause starts "
		    "with \"path:%d: \"", name, line));
		like(cause, phrase, tap_fmt("corrupt %s: cause says \"%s\"",
		    name, phrase));
	}
	free(cause);
	free(prefix);
	free(path);
	rm_rf(dir);
	free(dir);
}

static void
loads(const char *name, const char *data, size_t len, size_t nentries)
{
	char		*dir, *path, *cause = NULL;
	struct state	*st;
	int		 code = 0;

	dir = subdir("corrupt");
	path = join(dir, "acct.state");
	write_file(path, data, len);
	st = open_state(path, "u@h", "/m", &code, &cause);
	if (ok(st != NULL, tap_fmt("acceptable %s: loads", name))) {
		is_int(st->nentries, nentries, tap_fmt("acceptable %s: "
		    "entries", name));
		state_close(st);
	} else
		diag("%s", cause);
	free(cause);
	free(path);
	rm_rf(dir);
	free(dir);
}

#define HDR	"maild-state 1\nmailbox u@h\nmaildir /m\n"

static void
test_corrupt(void)
{
	char	*big;
	size_t	 n;

	loads("empty file", S(""), 0);
	loads("header only", S("maild-state 1\n"), 0);
	loads("comments and blank lines first", S("# x\n\n#\nmaild-state 1\n"
	    "D 1 1 a\n"), 1);
	loads("same UIDL, other ordinals", S(HDR "D 1 1 a\nD 1 2 a\n"
	    "D 1 3 a\n"), 3);
	loads("largest ordinal", S(HDR "D 1 1000000 a\n"), 1);
	loads("first 0", S(HDR "D 0 1 a\n"), 1);

	corrupt("bad header", S("maild-stat 1\n"), 1, "not a maild state "
	    "file");
	corrupt("header after a comment", S("# hi\nmaild-state x\n"), 2,
	    "not a maild state file");
	corrupt("no header", S("mailbox u@h\nD 1 1 a\n"), 1,
	    "not a maild state file");
	corrupt("record before the header", S("D 1 1 a\nmaild-state 1\n"), 1,
	    "not a maild state file");
	corrupt("header with extra field", S("maild-state 1 2\n"), 1,
	    "not a maild state file");
	corrupt("version 0", S("maild-state 0\n"), 1, "not a maild state "
	    "file");
	corrupt("unknown version", S("maild-state 2\nD 1 1 a\n"), 1,
	    "version 2 is not supported");
	corrupt("huge version", S("maild-state 99999999999999999999\n"), 1,
	    "not a maild state file");
	corrupt("only comments", S("# nothing\n"), 0, "not a maild state file");
	corrupt("another program's file", S("\x89PNG\r\n\x1a\n"), 1,
	    "not a maild state file");

	corrupt("bad record kind", S(HDR "X 1 1 a\n"), 4, "corrupt record");
	corrupt("lower-case kind", S(HDR "d 1 1 a\n"), 4, "corrupt record");
	corrupt("two-letter kind", S(HDR "DD 1 1 a\n"), 4, "corrupt record");
	corrupt("D with a file", S(HDR "D 1 1 a f\n"), 4, "corrupt record");
	corrupt("P without a file", S(HDR "P 1 1 a\n"), 4, "corrupt record");
	corrupt("too many fields", S(HDR "P 1 1 a f g\n"), 4, "corrupt "
	    "record");
	corrupt("too few fields", S(HDR "D 1 1\n"), 4, "corrupt record");
	corrupt("two spaces", S(HDR "D 1  1 a\n"), 4, "corrupt record");
	corrupt("first not a number", S(HDR "D x 1 a\n"), 4, "corrupt record");
	corrupt("negative first", S(HDR "D -1 1 a\n"), 4, "corrupt record");
	corrupt("first with +", S(HDR "D +1 1 a\n"), 4, "corrupt record");
	corrupt("first overflows", S(HDR "D 99999999999999999999 1 a\n"), 4,
	    "corrupt record");
	corrupt("first with garbage", S(HDR "D 12x 1 a\n"), 4,
	    "corrupt record");
	corrupt("ordinal 0", S(HDR "D 1 0 a\n"), 4, "corrupt record");
	corrupt("negative ordinal", S(HDR "D 1 -1 a\n"), 4, "corrupt record");
	corrupt("ordinal too big", S(HDR "D 1 1000001 a\n"), 4,
	    "corrupt record");
	corrupt("ordinal 2^32+1", S(HDR "D 1 4294967297 a\n"), 4,
	    "corrupt record");
	corrupt("bad escape in UIDL", S(HDR "D 1 1 a%zz\n"), 4,
	    "corrupt record");
	corrupt("lone % in UIDL", S(HDR "D 1 1 a%\n"), 4, "corrupt record");
	corrupt("control byte in UIDL", S(HDR "D 1 1 a\x01z\n"), 4,
	    "corrupt record");
	corrupt("bad mailbox escape", S("maild-state 1\nmailbox u%@h\n"), 2,
	    "corrupt record");
	corrupt("mailbox with NUL", S("maild-state 1\nmailbox u%00h\n"), 2,
	    "corrupt record");
	corrupt("empty mailbox", S("maild-state 1\nmailbox \n"), 2,
	    "corrupt record");
	corrupt("line numbers count comments", S(HDR "# c\n\nD 1 1 a\n"
	    "D 1 1 a b c d\n"), 7, "corrupt record");

	corrupt("truncated last line", S(HDR "D 1 1 a\nD 2 1 b"), 5,
	    "truncated");
	corrupt("NUL byte in a line", S(HDR "D 1 1 a\0b\n"), 4, "truncated");
	corrupt("duplicate record", S(HDR "D 1 1 a\nD 2 1 b\nD 3 1 a\n"), 6,
	    "listed twice");
	corrupt("duplicate D and P", S(HDR "D 1 1 a\n"
	    "P 2 1 a 1700000000.M000001P1Q1A0000abcd.host,S=1\n"), 5,
	    "listed twice");
	corrupt("duplicate, escaped differently", S(HDR "D 1 1 A\n"
	    "D 1 1 %41\n"), 5, "listed twice");

	corrupt("P file with /", S(HDR "P 1 1 a new/x,S=1\n"), 4,
	    "corrupt record");
	corrupt("P file ../x", S(HDR "P 1 1 a ../x\n"), 4, "corrupt record");
	corrupt("P file with leading dot", S(HDR "P 1 1 a .x,S=1\n"), 4,
	    "corrupt record");
	corrupt("P file ..", S(HDR "P 1 1 a ..\n"), 4, "corrupt record");
	big = xmalloc(8192);
	n = snprintf(big, 8192, HDR "P 1 1 a ");
	memset(big + n, 'f', 256);
	n += 256;
	big[n++] = '\n';
	corrupt("P file of 256 bytes", big, n, 4, "corrupt record");

	/* Line length: 4096 bytes before the LF are fine, 4097 are not. */
	n = snprintf(big, 8192, HDR "D 1 1 ");
	memset(big + n, 'u', 4096 - 6);
	n += 4096 - 6;
	big[n++] = '\n';
	loads("line of 4096 bytes", big, n, 1);
	n = snprintf(big, 8192, HDR "D 1 1 ");
	memset(big + n, 'u', 4097 - 6);
	n += 4097 - 6;
	big[n++] = '\n';
	corrupt("line of 4097 bytes", big, n, 4, "too long");
	n = snprintf(big, 8192, HDR "D 1 1 a\n");
	memset(big + n, 'x', 6000);
	n += 6000;
	big[n++] = '\n';
	corrupt("line of 6000 bytes", big, n, 5, "too long");
	free(big);
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
	    "state_lock: the cause names the holder's pid");
	like(cause, lock, "state_lock: the cause names the lock file");
	free(cause);
	cause = NULL;

	st = state_open(path, lock, "u@h", "/m", &code, &cause);
	ok(st == NULL, "state_open: fails while the lock is held");
	is_int(code, EXIT_TEMPFAIL, "state_open: locked is EXIT_TEMPFAIL");
	like(cause, tap_fmt("%ld", (long)pid), "state_open: the cause "
	    "names the holder's pid");
	free(cause);
	cause = NULL;
	state_close(st);

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

/* ---------------------------------------------------------------------- */
/* Reconciliation of PENDING entries in state_open */

static char *
make_maildir(const char *dir, const char *name, int withnew)
{
	char	*md = join(dir, name), *p;

	mkdir(md, 0700);
	p = join(md, "tmp");
	mkdir(p, 0700);
	free(p);
	p = join(md, "cur");
	mkdir(p, 0700);
	free(p);
	if (withnew) {
		p = join(md, "new");
		mkdir(p, 0700);
		free(p);
	}
	return (md);
}

static void
test_reconcile(void)
{
	char		*dir, *md, *path, *cause = NULL, *text, *p, *q, *data;
	struct state	*st;
	struct state_entry *e;
	size_t		 len;
	int		 code;
	const char	*b1 = "1700000000.M1P1Q1A01234567.host";
	const char	*b2 = "1700000000.M1P1Q2A01234567.host";
	const char	*b3 = "1700000000.M1P1Q3A01234567.host";

	dir = subdir("reconcile");
	md = make_maildir(dir, "Maildir", 1);
	path = join(dir, "acct.state");

	/* b1: still in tmp/.  b2: already in new/.  b3: gone altogether. */
	p = xmalloc(PATH_MAX);
	snprintf(p, PATH_MAX, "%s/tmp/%s", md, b1);
	write_file(p, "hello", 5);
	snprintf(p, PATH_MAX, "%s/new/%s,S=3", md, b2);
	write_file(p, "abc", 3);
	xasprintf(&data, "maild-state 1\nmailbox u@h\nmaildir %s\n"
	    "D 50 1 old\n"
	    "P 100 1 one %s,S=5\n"
	    "P 101 1 two %s,S=3\n"
	    "P 102 1 three %s,S=9\n", md, b1, b2, b3);
	write_file(path, data, strlen(data));
	free(data);

	st = open_state(path, "u@h", md, &code, &cause);
	if (!ok(st != NULL, "reconcile: state_open succeeds")) {
		diag("%s", cause);
		goto out;
	}
	snprintf(p, PATH_MAX, "%s/new/%s,S=5", md, b1);
	text = read_file(p, &len);
	is_mem(text, text ? len : 0, "hello", 5, "reconcile: the file left in "
	    "tmp/ is now new/<name>,S=5 with its content");
	free(text);
	snprintf(p, PATH_MAX, "%s/tmp/%s", md, b1);
	ok(!exists(p), "reconcile: ... and is gone from tmp/");
	snprintf(p, PATH_MAX, "%s/new/%s,S=3", md, b2);
	ok(exists(p), "reconcile: a file already in new/ stays there");
	snprintf(p, PATH_MAX, "%s/new", md);
	is_int(count_dir(p), 2, "reconcile: new/ has exactly the two "
	    "messages");
	snprintf(p, PATH_MAX, "%s/tmp", md);
	is_int(count_dir(p), 0, "reconcile: tmp/ is empty");

	is_int(st->nentries, 4, "reconcile: all entries kept");
	e = state_find(st, S("one"), 1);
	ok(e != NULL && e->kind == STATE_DELIVERED && e->file == NULL,
	    "reconcile: moved entry is DELIVERED, no file");
	e = state_find(st, S("two"), 1);
	ok(e != NULL && e->kind == STATE_DELIVERED && e->file == NULL,
	    "reconcile: entry whose tmp file is gone is DELIVERED");
	e = state_find(st, S("three"), 1);
	ok(e != NULL && e->kind == STATE_DELIVERED && e->first == 102,
	    "reconcile: entry whose file is nowhere is DELIVERED too");
	ok(st->dirty, "reconcile: state is dirty after reconciling");
	if (!ok(state_save(st, &cause) == 0, "reconcile: save"))
		diag("%s", cause);
	text = read_file(path, NULL);
	ok(text != NULL && strstr(text, "\nP ") == NULL &&
	    strstr(text, "\nD 100 1 one\n") != NULL,
	    "reconcile: saved file has D records only");
	free(text);
	state_close(st);

	/*
	 * A P record whose name has nothing before the comma must not make
	 * state_open rename "<maildir>/tmp/" itself into new/.
	 */
	rm_rf(md);
	free(md);
	md = make_maildir(dir, "Maildir", 1);
	snprintf(p, PATH_MAX, "%s/tmp/partial", md);
	write_file(p, "x", 1);
	xasprintf(&data, "maild-state 1\nmailbox u@h\nmaildir %s\n"
	    "P 100 1 one ,S=5\n", md);
	write_file(path, data, strlen(data));
	free(data);
	st = open_state(path, "u@h", md, &code, &cause);
	snprintf(p, PATH_MAX, "%s/tmp", md);
	ok(is_dir(p), "P record named \",S=5\": <maildir>/tmp/ is still "
	    "there");
	snprintf(p, PATH_MAX, "%s/new/,S=5", md);
	ok(!exists(p), "P record named \",S=5\": nothing moved to "
	    "new/,S=5");
	if (st != NULL)
		state_close(st);
	else
		diag("state_open refused it: %s", cause);
	free(cause);
	cause = NULL;

	/*
	 * new/ missing: the rename fails with ENOENT although the message
	 * is still in tmp/.  It must not be taken as delivered (maild would
	 * then remove it from tmp/ as a leftover, and delete it on the
	 * server): state_open must fail, or get the file into new/.
	 */
	rm_rf(md);
	free(md);
	md = make_maildir(dir, "Maildir", 0);
	snprintf(p, PATH_MAX, "%s/tmp/%s", md, b1);
	write_file(p, "hello", 5);
	xasprintf(&data, "maild-state 1\nmailbox u@h\nmaildir %s\n"
	    "P 100 1 one %s,S=5\n", md, b1);
	write_file(path, data, strlen(data));
	free(data);
	st = open_state(path, "u@h", md, &code, &cause);
	snprintf(p, PATH_MAX, "%s/new/%s,S=5", md, b1);
	q = xmalloc(PATH_MAX);
	snprintf(q, PATH_MAX, "%s/tmp/%s", md, b1);
	e = st != NULL ? state_find(st, S("one"), 1) : NULL;
	ok(st == NULL || exists(p) || (e != NULL && e->kind == STATE_PENDING),
	    "reconcile with new/ missing: the message still in tmp/ is not "
	    "marked delivered");
	if (st != NULL)
		diag("state_open succeeded; entry kind %d, in tmp/: %s, in "
		    "new/: %s", e ? (int)e->kind : -1, exists(q) ? "yes" : "no",
		    exists(p) ? "yes" : "no");
	else
		diag("state_open failed (code %d): %s", code, cause);
	free(q);
	state_close(st);
	free(cause);
	cause = NULL;

	/* Mailbox mismatch: start afresh, but finish the delivery first. */
	rm_rf(md);
	free(md);
	md = make_maildir(dir, "Maildir", 1);
	snprintf(p, PATH_MAX, "%s/tmp/%s", md, b1);
	write_file(p, "hello", 5);
	xasprintf(&data, "maild-state 1\nmailbox other@h\nmaildir %s\n"
	    "D 1 1 x\nD 1 1 y\nP 100 1 one %s,S=5\n", md, b1);
	write_file(path, data, strlen(data));
	free(data);
	st = open_state(path, "u@h", md, &code, &cause);
	if (ok(st != NULL, "mailbox mismatch: state_open succeeds")) {
		is_int(st->nentries, 0, "mailbox mismatch: entries dropped");
		is_str(st->mailbox, "u@h", "mailbox mismatch: new mailbox");
		ok(st->dirty, "mailbox mismatch: dirty");
		ok(state_find(st, S("x"), 1) == NULL,
		    "mailbox mismatch: old UIDL not found");
		state_add(st, S("x"), 1, 1, NULL);
		ok(state_find(st, S("x"), 1) != NULL,
		    "mailbox mismatch: index works afterwards");
		state_close(st);
	} else
		diag("%s", cause);
	snprintf(p, PATH_MAX, "%s/new/%s,S=5", md, b1);
	ok(exists(p), "mailbox mismatch: pending delivery still finished");

	/* Maildir changed: entries kept, maildir updated. */
	xasprintf(&data, "maild-state 1\nmailbox u@h\nmaildir /old/Maildir\n"
	    "D 1 1 x\n");
	write_file(path, data, strlen(data));
	free(data);
	st = open_state(path, "u@h", md, &code, &cause);
	if (ok(st != NULL, "maildir changed: state_open succeeds")) {
		is_int(st->nentries, 1, "maildir changed: entries kept");
		is_str(st->maildir, md, "maildir changed: new maildir");
		ok(st->dirty, "maildir changed: dirty");
		state_close(st);
	}

	/* No maildir line: pending entries just become delivered. */
	xasprintf(&data, "maild-state 1\nmailbox u@h\nP 1 1 x %s,S=1\n", b3);
	write_file(path, data, strlen(data));
	free(data);
	st = open_state(path, "u@h", md, &code, &cause);
	if (ok(st != NULL, "no maildir record: state_open succeeds")) {
		e = state_find(st, S("x"), 1);
		ok(e != NULL && e->kind == STATE_DELIVERED,
		    "no maildir record: PENDING becomes DELIVERED");
		state_close(st);
	}
out:
	free(p);
	free(cause);
	free(path);
	free(md);
	free(dir);
}

/* ---------------------------------------------------------------------- */
/* state_forget_unlisted */

static void
test_forget(void)
{
	char		*dir, *path, *cause = NULL, *data;
	struct state	*st;
	struct state_entry *e;
	size_t		 i;
	int		 code;

	dir = subdir("forget");
	path = join(dir, "acct.state");

	/* Flags set by hand. */
	st = open_state(path, "u@h", "/m", &code, &cause);
	state_add(st, S("keep"), 1, 1, NULL);
	state_add(st, S("drop"), 1, 1, NULL);
	state_add(st, S("pend"), 1, 1, "f,S=1");
	state_add(st, S("drop2"), 1, 1, NULL);
	state_add(st, S("keep"), 2, 1, NULL);
	for (i = 0; i < st->nentries; i++)
		st->entries[i]->listed = 0;
	state_find(st, S("keep"), 1)->listed = 1;
	state_find(st, S("keep"), 2)->listed = 1;
	st->dirty = 0;
	state_forget_unlisted(st);
	is_int(st->nentries, 3, "forget: 3 entries left");
	ok(state_find(st, S("keep"), 1) != NULL &&
	    state_find(st, S("keep"), 2) != NULL, "forget: listed entries "
	    "kept and still found");
	e = state_find(st, S("pend"), 1);
	ok(e != NULL && e->kind == STATE_PENDING && strcmp(e->file, "f,S=1")
	    == 0, "forget: unlisted PENDING entry kept");
	ok(state_find(st, S("drop"), 1) == NULL &&
	    state_find(st, S("drop2"), 1) == NULL,
	    "forget: unlisted entries gone");
	ok(st->dirty, "forget: dirty when something was dropped");
	st->dirty = 0;
	state_forget_unlisted(st);
	ok(!st->dirty && st->nentries == 3, "forget: nothing to drop, not "
	    "dirty");
	state_close(st);

	/*
	 * What a session does (pop3_plan): load the state, mark each entry
	 * the server lists (state_find, listed = 1), then forget the rest.
	 * Entries loaded from the file must therefore start unlisted, or
	 * nothing is ever forgotten.
	 */
	xasprintf(&data, HDR "D 1 1 on-server\nD 1 1 deleted-on-server\n");
	write_file(path, data, strlen(data));
	free(data);
	st = open_state(path, "u@h", "/m", &code, &cause);
	if (ok(st != NULL, "forget after load: state_open")) {
		e = state_find(st, S("on-server"), 1);
		if (e != NULL)
			e->listed = 1;
		state_forget_unlisted(st);
		ok(state_find(st, S("deleted-on-server"), 1) == NULL,
		    "forget after load: a loaded entry the listing did not "
		    "mention is forgotten");
		ok(state_find(st, S("on-server"), 1) != NULL,
		    "forget after load: the listed entry is kept");
		for (i = 0; i < st->nentries; i++)
			if (st->entries[i] != e && st->entries[i]->listed)
				diag("entry \"%s\" loaded from the file has "
				    "listed = 1", st->entries[i]->uidl);
		state_close(st);
	} else
		diag("%s", cause);
	free(cause);
	free(path);
	free(dir);
}

/* ---------------------------------------------------------------------- */
/* Many entries */

static void
test_many(void)
{
	char		*dir, *path, *cause = NULL, id[32];
	struct state	*st;
	double		 t0, t;
	size_t		 i, n = 100000, missing = 0;
	int		 code, len;

	dir = subdir("many");
	path = join(dir, "acct.state");
	st = open_state(path, "u@h", "/m", &code, &cause);

	t0 = now_mono();
	for (i = 0; i < n; i++) {
		len = snprintf(id, sizeof id, "%zx-uid", i * 2654435761u);
		state_add(st, id, len, 1, (int64_t)i, NULL);
	}
	/* And one UIDL the server repeats 20000 times. */
	for (i = 1; i <= 20000; i++)
		state_add(st, S("dup"), (uint32_t)i, 1, NULL);
	for (i = 0; i < n; i++) {
		len = snprintf(id, sizeof id, "%zx-uid", i * 2654435761u);
		if (state_find(st, id, len, 1) == NULL)
			missing++;
		len = snprintf(id, sizeof id, "%zx-nope", i);
		if (state_find(st, id, len, 1) != NULL)
			missing++;
	}
	for (i = 1; i <= 20000; i++)
		if (state_find(st, S("dup"), (uint32_t)i) == NULL)
			missing++;
	t = now_mono() - t0;
	is_int(missing, 0, "many: 120000 entries all found, absent ones not");
	ok(t < 5.0, tap_fmt("many: adding and finding 120000 entries took "
	    "%.2fs (< 5s)", t));

	t0 = now_mono();
	ok(state_save(st, &cause) == 0, "many: save");
	state_close(st);
	st = open_state(path, "u@h", "/m", &code, &cause);
	t = now_mono() - t0;
	ok(st != NULL && st->nentries == n + 20000, "many: reloaded");
	ok(t < 5.0, tap_fmt("many: save and reload took %.2fs (< 5s)", t));
	if (st != NULL) {
		t0 = now_mono();
		for (i = 0; i < st->nentries; i++)
			st->entries[i]->listed = i % 2;
		state_forget_unlisted(st);
		t = now_mono() - t0;
		is_int(st->nentries, (n + 20000) / 2, "many: forget half");
		ok(t < 5.0, tap_fmt("many: forgetting took %.2fs (< 5s)", t));
		state_close(st);
	}
	free(cause);
	free(path);
	free(dir);
}

int
main(void)
{
	topdir = mkscratch("state");
	test_escape();
	test_roundtrip();
	test_corrupt();
	test_lock();
	test_reconcile();
	test_forget();
	test_many();
	rm_rf(topdir);
	free(topdir);
	return (done());
}
