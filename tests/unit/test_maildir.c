/*
 * test_maildir.c: unit tests for src/maildir.c: creating a Maildir,
 * unique file names and the account tag in them, the tmp/ -> new/
 * delivery steps and the clean-up of an account's leftovers in tmp/.
 */

#include "config.h"

#include <sys/stat.h>
#include <sys/wait.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "maild.h"
#include "tap.h"
#include "files.h"

static char	*topdir;

/* ---------------------------------------------------------------------- */
/* Helpers */

static char *
pathf(const char *fmt, ...) __attribute__((__format__(__printf__, 1, 2)));
static char *
pathf(const char *fmt, ...)
{
	static char	 buf[4][PATH_MAX];
	static int	 i;
	va_list		 ap;
	char		*p = buf[i++ % 4];

	va_start(ap, fmt);
	vsnprintf(p, PATH_MAX, fmt, ap);
	va_end(ap);
	return (p);
}

static int
mode_of(const char *path)
{
	struct stat	sb;

	if (lstat(path, &sb) == -1)
		return (-1);
	return ((int)(sb.st_mode & 07777));
}

static int
cmpstr(const void *a, const void *b)
{
	return (strcmp(*(char *const *)a, *(char *const *)b));
}

/* ---------------------------------------------------------------------- */
/* maildir_open */

static void
test_open(void)
{
	struct maildir	 md;
	char		*cause = NULL, *path;
	int		 r;

	path = xstrdup(pathf("%s/a/b/Maildir", topdir));
	r = maildir_open(&md, path, 0x1234, "test", &cause);
	if (!is_int(r, 0, "maildir_open: creates a Maildir and its parents")) {
		diag("%s", cause);
		free(path);
		return;
	}
	is_int(mode_of(pathf("%s/cur", path)), 0700, "maildir_open: cur/ 0700");
	is_int(mode_of(pathf("%s/new", path)), 0700, "maildir_open: new/ 0700");
	is_int(mode_of(pathf("%s/tmp", path)), 0700, "maildir_open: tmp/ 0700");
	is_int(mode_of(path), 0700, "maildir_open: the Maildir itself 0700");
	is_int(mode_of(pathf("%s/a", topdir)), 0700,
	    "maildir_open: missing parents 0700");
	is_str(md.path, path, "maildir_open: path kept");
	ok(md.tmpfd >= 0 && md.newfd >= 0, "maildir_open: directory fds");
	is_int(md.tag, 0x1234, "maildir_open: tag kept");
	maildir_close(&md);
	ok(md.tmpfd == -1 && md.newfd == -1 && md.path == NULL,
	    "maildir_close: resets the struct");
	maildir_close(&md);
	ok(1, "maildir_close: twice is harmless");

	/* Opening an existing Maildir leaves it alone. */
	chmod(pathf("%s/new", path), 0750);
	r = maildir_open(&md, path, 1, "test", &cause);
	ok(r == 0 && mode_of(pathf("%s/new", path)) == 0750,
	    "maildir_open: existing Maildir opened, modes unchanged");
	if (r == 0)
		maildir_close(&md);

	/* Existing Maildir with new/ missing: it is created. */
	rmdir(pathf("%s/new", path));
	r = maildir_open(&md, path, 1, "test", &cause);
	ok(r == 0 && mode_of(pathf("%s/new", path)) == 0700,
	    "maildir_open: a missing new/ is created");
	if (r == 0)
		maildir_close(&md);

	/* The Maildir path is a file. */
	free(path);
	path = xstrdup(pathf("%s/file", topdir));
	write_file(path, "x", 1);
	cause = NULL;
	r = maildir_open(&md, path, 1, "test", &cause);
	ok(r == -1, "maildir_open: a file where the Maildir should be fails");
	like(cause, path, "maildir_open: ... and the cause names it");
	free(cause);

	/* tmp/ is a file: the cause must name tmp/, not new/. */
	free(path);
	path = xstrdup(pathf("%s/badtmp", topdir));
	mkdir(path, 0700);
	mkdir(pathf("%s/new", path), 0700);
	mkdir(pathf("%s/cur", path), 0700);
	write_file(pathf("%s/tmp", path), "x", 1);
	cause = NULL;
	r = maildir_open(&md, path, 1, "test", &cause);
	ok(r == -1, "maildir_open: tmp/ being a file fails");
	like(cause, pathf("%s/tmp", path), "maildir_open: ... and the cause "
	    "names tmp/");
	diag("cause: %s", cause ? cause : "(null)");
	free(cause);

	/* new/ is a file. */
	free(path);
	path = xstrdup(pathf("%s/badnew", topdir));
	mkdir(path, 0700);
	mkdir(pathf("%s/tmp", path), 0700);
	mkdir(pathf("%s/cur", path), 0700);
	write_file(pathf("%s/new", path), "x", 1);
	cause = NULL;
	r = maildir_open(&md, path, 1, "test", &cause);
	ok(r == -1, "maildir_open: new/ being a file fails");
	like(cause, pathf("%s/new", path), "maildir_open: ... and the cause "
	    "names new/");
	free(cause);
	free(path);
}

/* ---------------------------------------------------------------------- */
/* Names */

/* Is name "<sec>.M<usec:6>P<pid>Q<seq>A<tag:8 lower hex>.<host>"? */
static int
well_formed(const char *name, uint32_t tag)
{
	const char	*p = name;
	char		 hex[9];
	int		 n;

	for (n = 0; isdigit((unsigned char)*p); p++, n++)
		;
	if (n == 0 || *p++ != '.' || *p++ != 'M')
		return (0);
	for (n = 0; isdigit((unsigned char)*p); p++, n++)
		;
	if (n != 6 || *p++ != 'P')
		return (0);
	for (n = 0; isdigit((unsigned char)*p); p++, n++)
		;
	if (n == 0 || *p++ != 'Q')
		return (0);
	for (n = 0; isdigit((unsigned char)*p); p++, n++)
		;
	if (n == 0 || *p++ != 'A')
		return (0);
	snprintf(hex, sizeof hex, "%08x", tag);
	if (strncmp(p, hex, 8) != 0)
		return (0);
	p += 8;
	if (*p++ != '.' || *p == '\0')
		return (0);
	return (strpbrk(p, "/:,") == NULL);
}

static void
test_names(void)
{
	static const uint32_t	 tags[] = { 0, 1, 0x0123abcd, 0xdeadbeef,
				    0xffffffff };
	char			 buf[256], **names, small[16];
	size_t			 i, n = 10000, dups = 0, badtag = 0, badform = 0;
	uint32_t		 tag;
	int			 fds[2];
	pid_t			 pid;

	names = xcalloc(n + 1000, sizeof *names);
	for (i = 0; i < n; i++) {
		uint32_t	want = tags[i % 5];

		if (maildir_make_name(buf, sizeof buf, want) == -1) {
			badform++;
			continue;
		}
		names[i] = xstrdup(buf);
		if (maildir_name_tag(buf, &tag) == -1 || tag != want)
			badtag++;
		if (!well_formed(buf, want) && badform++ < 3)
			diag("odd name: %s", buf);
	}
	diag("a name: %s", names[0]);
	is_int(badform, 0, "maildir_make_name: 10000 well-formed names");
	is_int(badtag, 0, "maildir_name_tag: each gives back its tag");

	/* A child process makes names too: no clash with ours. */
	if (pipe(fds) == -1) {
		perror("pipe");
		exit(99);
	}
	fflush(stdout);
	if ((pid = fork()) == 0) {
		FILE	*f = fdopen(fds[1], "w");

		close(fds[0]);
		for (i = 0; i < 1000; i++) {
			maildir_make_name(buf, sizeof buf, tags[i % 5]);
			fprintf(f, "%s\n", buf);
		}
		fclose(f);
		_exit(0);
	} else {
		FILE	*f;

		close(fds[1]);
		f = fdopen(fds[0], "r");
		for (i = n; i < n + 1000 && fgets(buf, sizeof buf, f) != NULL;
		    i++) {
			buf[strcspn(buf, "\n")] = '\0';
			names[i] = xstrdup(buf);
		}
		fclose(f);
		waitpid(pid, NULL, 0);
		is_int(i, n + 1000, "maildir_make_name: child made 1000 names");
		n = i;
	}
	qsort(names, n, sizeof *names, cmpstr);
	for (i = 1; i < n; i++) {
		if (names[i - 1] && names[i] && strcmp(names[i - 1],
		    names[i]) == 0)
			dups++;
	}
	is_int(dups, 0, tap_fmt("maildir_make_name: %zu names from two "
	    "processes, all different", n));
	for (i = 0; i < n; i++)
		free(names[i]);
	free(names);

	ok(maildir_make_name(small, sizeof small, 1) == -1,
	    "maildir_make_name: too small a buffer fails");

	/* With new/ suffixes the tag still reads. */
	ok(maildir_name_tag("1700000000.M000001P1Q1A0a0b0c0d.host,S=12", &tag)
	    == 0 && tag == 0x0a0b0c0d, "maildir_name_tag: with ,S= suffix");
	ok(maildir_name_tag("1700000000.M000001P1Q1A0a0b0c0d.host,S=12:2,S",
	    &tag) == 0 && tag == 0x0a0b0c0d, "maildir_name_tag: with flags");
	ok(maildir_name_tag("1700000000.M000001P1Q1A0a0b0c0d.mail.example.com",
	    &tag) == 0 && tag == 0x0a0b0c0d,
	    "maildir_name_tag: host with dots");

	{
		static const char *const foreign[] = {
			"1035478339.V303I17f3M18843.hostname",
			"1700000000.M123456P1234Q1.host",
			"1700000000.M123456P1234V0000000000000801I0000000000a1b2c3.host",
			"1700000000.12345_1.host",
			"1700000000.P1234Q1M123456.host",
			"1700000000.M123456P1234Q1Aabcdef0.host",
			"1700000000.M123456P1234Q1AABCDEF01.host",
			"1700000000.M123456P1234Q1A0123456g.host",
			"1700000000.M123456P1234Q1A-1234567.host",
			"1700000000.M123456P1234Q1A 1234567.host",
			"1700000000.M123456P1234Q1A01234567",
			"1700000000.M123456P1234Q1X01234567.host",
			"1700000000.M123456P1234Q1A012345678.host",
			"1700000000M123456P1234Q1A01234567.host",
			"noname", "", ".", "..", "a.b", "a.b.c",
			".M.A01234567.",
			"1.M23456789.h",
		};
		size_t	k;

		for (k = 0; k < sizeof foreign / sizeof foreign[0]; k++) {
			tag = 0x5a5a5a5a;
			ok(maildir_name_tag(foreign[k], &tag) == -1 &&
			    tag == 0x5a5a5a5a, tap_fmt("maildir_name_tag "
			    "rejects \"%s\"", foreign[k]));
		}
	}
}

/* ---------------------------------------------------------------------- */
/* Delivery */

static void
test_deliver(void)
{
	struct maildir		 md;
	struct maildir_file	 f, g;
	char			*cause = NULL, *path, *data, *got, want[300];
	size_t			 len, i;
	struct stat		 sb;

	path = xstrdup(pathf("%s/deliver", topdir));
	if (maildir_open(&md, path, 0xabcdef01, "test", &cause) == -1) {
		ok(0, "deliver: maildir_open");
		diag("%s", cause);
		return;
	}

	ok(maildir_create(&md, &f, &cause) == 0 && f.fd >= 0,
	    "maildir_create: a file in tmp/");
	ok(stat(pathf("%s/tmp/%s", path, f.name), &sb) == 0 &&
	    S_ISREG(sb.st_mode) && (sb.st_mode & 0777) == 0600 &&
	    sb.st_size == 0, "maildir_create: tmp/<name> exists, 0600, empty");
	{
		uint32_t	tag;

		ok(maildir_name_tag(f.name, &tag) == 0 && tag == 0xabcdef01,
		    "maildir_create: name carries the Maildir's tag");
	}

	data = xmalloc(100000);
	for (i = 0; i < 100000; i++)
		data[i] = (char)(i * 7 + i / 251);
	ok(maildir_write(&f, "Subject: hi\n\n", 13) == 0 &&
	    maildir_write(&f, data, 100000) == 0 &&
	    maildir_write(&f, "", 0) == 0, "maildir_write: three writes");
	ok(f.size == 100013, "maildir_write: size counts the bytes");
	if (!ok(maildir_finish(&f, &cause) == 0, "maildir_finish: succeeds"))
		diag("%s", cause);
	snprintf(want, sizeof want, ",S=%d", 100013);
	ok(strncmp(f.final, f.name, strlen(f.name)) == 0 &&
	    strcmp(f.final + strlen(f.name), want) == 0,
	    "maildir_finish: final name is <name>,S=<size>");
	is_int(f.fd, -1, "maildir_finish: file closed");
	ok(exists(pathf("%s/tmp/%s", path, f.name)),
	    "maildir_finish: file still in tmp/");
	ok(maildir_sync_tmp(&md, &cause) == 0, "maildir_sync_tmp");
	if (!ok(maildir_move(&md, f.final, &cause) == 0, "maildir_move"))
		diag("%s", cause);
	ok(!exists(pathf("%s/tmp/%s", path, f.name)),
	    "maildir_move: gone from tmp/");
	got = read_file(pathf("%s/new/%s", path, f.final), &len);
	ok(got != NULL && len == 100013 && memcmp(got, "Subject: hi\n\n", 13)
	    == 0 && memcmp(got + 13, data, 100000) == 0,
	    "maildir_move: new/<name>,S=<size> has the exact content");
	free(got);
	ok(stat(pathf("%s/new/%s", path, f.final), &sb) == 0 &&
	    (uint64_t)sb.st_size == f.size, "maildir: S= matches the file size");
	ok(maildir_sync_new(&md, &cause) == 0, "maildir_sync_new");
	free(data);

	/* An empty message. */
	ok(maildir_create(&md, &g, &cause) == 0 &&
	    maildir_finish(&g, &cause) == 0 &&
	    maildir_move(&md, g.final, &cause) == 0,
	    "maildir: empty message delivered");
	ok(strstr(g.final, ",S=0") != NULL && strlen(strstr(g.final, ",S="))
	    == 4 && exists(pathf("%s/new/%s", path, g.final)),
	    "maildir: empty message is new/<name>,S=0");
	ok(strcmp(f.name, g.name) != 0, "maildir_create: two different names");

	/* Moving what is not there. */
	cause = NULL;
	ok(maildir_move(&md, "1.M000001P1Q1Aabcdef01.h,S=1", &cause) == -1,
	    "maildir_move: a missing file fails");
	like(cause, "1.M000001P1Q1Aabcdef01.h", "maildir_move: cause names it");
	free(cause);

	/* Abort: before and after finishing. */
	ok(maildir_create(&md, &f, &cause) == 0, "abort: create");
	maildir_write(&f, "partial", 7);
	snprintf(want, sizeof want, "%s", f.name);
	maildir_abort(&md, &f);
	ok(!exists(pathf("%s/tmp/%s", path, want)),
	    "maildir_abort: removes the tmp file");
	ok(f.fd == -1 && f.name[0] == '\0', "maildir_abort: resets the file");
	maildir_abort(&md, &f);
	ok(1, "maildir_abort: twice is harmless");
	ok(maildir_create(&md, &f, &cause) == 0, "abort after finish: create");
	maildir_write(&f, "whole", 5);
	maildir_finish(&f, &cause);
	snprintf(want, sizeof want, "%s", f.name);
	maildir_abort(&md, &f);
	ok(!exists(pathf("%s/tmp/%s", path, want)),
	    "maildir_abort: removes a finished tmp file");
	is_int(count_dir(pathf("%s/tmp", path)), 0, "maildir: tmp/ is empty");
	is_int(count_dir(pathf("%s/new", path)), 2, "maildir: new/ has the two "
	    "messages");

	maildir_close(&md);
	free(path);
}

/* ---------------------------------------------------------------------- */
/* maildir_cleanup_tmp */

static void
test_cleanup(void)
{
	struct maildir		 md;
	struct maildir_file	 a, b;
	char			*cause = NULL, *path, other[256], name[256];
	char			 own_new[256];
	int			 n;

	path = xstrdup(pathf("%s/cleanup", topdir));
	if (maildir_open(&md, path, 0x11111111, "test", &cause) == -1) {
		ok(0, "cleanup: maildir_open");
		return;
	}
	/* Two partial files of ours, one left open. */
	maildir_create(&md, &a, &cause);
	maildir_write(&a, "x", 1);
	close(a.fd);
	maildir_create(&md, &b, &cause);
	/* Another account's file, in the same Maildir. */
	maildir_make_name(other, sizeof other, 0x22222222);
	write_file(pathf("%s/tmp/%s", path, other), "o", 1);
	/* Foreign files, and things that look like ours but are not files
	   or are hidden. */
	write_file(pathf("%s/tmp/1035478339.V303I17f3M18843.host", path), "d",
	    1);
	write_file(pathf("%s/tmp/courier.tmp", path), "c", 1);
	maildir_make_name(name, sizeof name, 0x11111111);
	write_file(pathf("%s/tmp/.%s", path, name), "h", 1);
	maildir_make_name(name, sizeof name, 0x11111111);
	mkdir(pathf("%s/tmp/%s", path, name), 0700);
	/* Our own message in new/ is not touched either. */
	maildir_make_name(own_new, sizeof own_new, 0x11111111);
	write_file(pathf("%s/new/%s,S=1", path, own_new), "n", 1);

	n = maildir_cleanup_tmp(&md);
	is_int(n, 2, "maildir_cleanup_tmp: removed our two files");
	ok(!exists(pathf("%s/tmp/%s", path, a.name)) &&
	    !exists(pathf("%s/tmp/%s", path, b.name)),
	    "maildir_cleanup_tmp: our files are gone");
	ok(exists(pathf("%s/tmp/%s", path, other)),
	    "maildir_cleanup_tmp: another tag's file stays");
	ok(exists(pathf("%s/tmp/1035478339.V303I17f3M18843.host", path)) &&
	    exists(pathf("%s/tmp/courier.tmp", path)),
	    "maildir_cleanup_tmp: foreign files stay");
	ok(exists(pathf("%s/tmp/%s", path, name)),
	    "maildir_cleanup_tmp: a directory with our tag stays");
	is_int(count_dir(pathf("%s/tmp", path)), 5,
	    "maildir_cleanup_tmp: 5 entries left in tmp/");
	ok(exists(pathf("%s/new/%s,S=1", path, own_new)),
	    "maildir_cleanup_tmp: new/ untouched");
	is_int(maildir_cleanup_tmp(&md), 0,
	    "maildir_cleanup_tmp: nothing left to remove");
	close(b.fd);
	maildir_close(&md);
	free(path);
}

int
main(void)
{
	umask(022);
	topdir = mkscratch("maildir");
	test_open();
	test_names();
	test_deliver();
	test_cleanup();
	rm_rf(topdir);
	free(topdir);
	return (done());
}
