/*
 * test_deliver.c: unit tests for src/deliver.c, the delivery core: the
 * commit of a batch, the recovery of deliveries a crash interrupted, what
 * a record says about a message the server lists (delivered, reused id,
 * removed), the forget rule, and content digests.
 *
 * Everything happens in a fresh directory under $TMPDIR (or /tmp), which
 * is removed at the end.
 */

#include "config.h"

#include <sys/stat.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "maild.h"
#include "tap.h"
#include "files.h"

#define S(lit)	(lit), (sizeof(lit) - 1)

static char			*topdir;
static struct account_conf	 ac;
static char			 statedir[PATH_MAX - 64], maildir[PATH_MAX - 64];
static void			*committed[64];
static int			 ncommitted;

static void
committed_cb(void *cookie, uint64_t size, void *arg)
{
	if (ncommitted < 64)
		committed[ncommitted++] = cookie;
}

/* A fresh account in <topdir>/<name>: state dir and Maildir. */
static void
fresh(const char *name)
{
	char	*dir;

	xasprintf(&dir, "%s/%s", topdir, name);
	rm_rf(dir);
	mkdir(dir, 0700);
	snprintf(statedir, sizeof statedir, "%s/state", dir);
	snprintf(maildir, sizeof maildir, "%s/Maildir", dir);
	free(dir);
	memset(&ac, 0, sizeof ac);
	ac.name = (char *)"acct";
	ac.host = (char *)"pop.example.com";
	ac.user = (char *)"user";
	ac.maildir = maildir;
	ac.exact_sizes = 1;
	ncommitted = 0;
}

static struct deliver *
open_dl(const char *mailbox)
{
	struct deliver	*d;
	char		*cause = NULL;
	int		 code;

	d = deliver_open(&ac, statedir, mailbox, NULL, 0, committed_cb, NULL,
	    &code, &cause);
	if (d == NULL) {
		diag("deliver_open: %s", cause);
		exit(99);
	}
	return (d);
}

static void
close_dl(struct deliver *d)
{
	char	*cause = NULL;

	if (deliver_sync(d, &cause) == -1) {
		diag("deliver_sync: %s", cause);
		exit(99);
	}
	deliver_close(d);
}

/* Receive one message with this key and content; 0 or what end says. */
static int
receive(struct deliver *d, const char *key, uint32_t ord, uint64_t listed,
    const char *body, void *cookie)
{
	struct deliver_msg	 m;
	char			*cause = NULL;
	int			 r;

	if (deliver_begin(d, &m, NULL, NULL, 0, &cause) == -1 ||
	    deliver_write(d, &m, body, strlen(body)) == -1) {
		diag("receive: %s", cause);
		exit(99);
	}
	r = deliver_end(d, &m, key, key != NULL ? strlen(key) : 0, ord, listed,
	    NULL, cookie, &cause);
	if (r == -1) {
		diag("deliver_end: %s", cause);
		exit(99);
	}
	return (r);
}

static void
commit(struct deliver *d)
{
	char	*cause = NULL;

	if (deliver_commit(d, &cause) == -1) {
		diag("deliver_commit: %s", cause);
		exit(99);
	}
}

static int
count_sub(const char *sub)
{
	char	path[PATH_MAX];

	snprintf(path, sizeof path, "%s/%s", maildir, sub);
	return (count_dir(path));
}

/* The name of the only file in a Maildir subdirectory. */
static char *
only_file(const char *sub)
{
	char		 path[PATH_MAX];
	DIR		*dir;
	struct dirent	*de;
	char		*name = NULL;

	snprintf(path, sizeof path, "%s/%s", maildir, sub);
	if ((dir = opendir(path)) == NULL)
		return (NULL);
	while ((de = readdir(dir)) != NULL) {
		if (de->d_name[0] != '.')
			name = xstrdup(de->d_name);
	}
	closedir(dir);
	return (name);
}

static int
listed(struct deliver *d, const char *key, uint32_t ord, uint64_t size)
{
	return (deliver_listed(d, key, strlen(key), ord, size, NULL));
}

/* ---------------------------------------------------------------------- */

static void
test_commit(void)
{
	struct deliver	*d;
	char		*name, *path, *text;

	fresh("commit");
	d = open_dl("user@pop.example.com");
	ok(count_sub("new") == 0 && count_sub("cur") == 0 &&
	    count_sub("tmp") == 0, "deliver_open makes an empty Maildir");
	is_int(receive(d, "k1", 1, 6, "hello\n", (void *)1), 0,
	    "a message ends into the batch");
	is_int((int)deliver_batched(d), 1, "... one in the batch");
	is_int(count_sub("new"), 0, "... and not in new/ yet");
	is_int(ncommitted, 0, "... not committed");
	commit(d);
	is_int(count_sub("new"), 1, "commit: the message is in new/");
	is_int(count_sub("tmp"), 0, "commit: tmp/ is empty");
	ok(ncommitted == 1 && committed[0] == (void *)1, "commit: the "
	    "committed callback got its cookie");
	name = only_file("new");
	like(name, ",S=6", "the name in new/ ends with its size");
	xasprintf(&path, "%s/new/%s", maildir, name);
	text = read_file(path, NULL);
	is_str(text, "hello\n", "the content is what was written");
	free(text);
	free(path);
	free(name);
	is_int(listed(d, "k1", 1, 6), DELIVER_DONE, "the message is "
	    "recorded as delivered");
	close_dl(d);
	d = open_dl("user@pop.example.com");
	is_int(listed(d, "k1", 1, 6), DELIVER_DONE, "... also after a reopen");
	is_int(listed(d, "k1", 2, 6), DELIVER_NEW, "another ordinal is new");
	is_int(listed(d, "k2", 1, 6), DELIVER_NEW, "another key is new");
	close_dl(d);
}

/* Write a state with a PENDING record for file (and k2 delivered). */
static void
pending_state(const char *file)
{
	struct state	*st;
	char		*cause = NULL;
	int		 code;

	mkdir_p(statedir, 0700);
	st = state_open(statedir, "acct", &code, &cause);
	if (st == NULL) {
		diag("%s", cause);
		exit(99);
	}
	state_set_meta(st, "mailbox", "user@pop.example.com");
	state_set_meta(st, "maildir", maildir);
	state_put(st, S("k1"), 1, 100, 5, NULL, file);
	state_put(st, S("k2"), 1, 100, 5, NULL, NULL);
	if (state_sync(st, &cause) == -1) {
		diag("%s", cause);
		exit(99);
	}
	state_close(st);
}

static void
put_file(const char *sub, const char *name)
{
	char	*path;

	xasprintf(&path, "%s/%s/%s", maildir, sub, name);
	write_file(path, "data\n", 5);
	free(path);
}

static void
test_recover(void)
{
	const char	*base = "1.M1P1Q1A0000abcd.host";
	const char	*final = "1.M1P1Q1A0000abcd.host,S=5";
	struct deliver	*d;
	char		 name[300];
	int		 i;

	/* Make the Maildir once so the files can be put in place. */
	for (i = 0; i < 4; i++) {
		fresh(tap_fmt("recover%d", i));
		deliver_close(open_dl("user@pop.example.com"));
		pending_state(final);
		switch (i) {
		case 0:
			put_file("tmp", base);
			break;
		case 1:
			put_file("new", final);
			break;
		case 2:
			snprintf(name, sizeof name, "%s:2,RS", final);
			put_file("cur", name);
			break;
		}
		d = open_dl("user@pop.example.com");
		switch (i) {
		case 0:
			ok(count_sub("new") == 1 && count_sub("tmp") == 0,
			    "recover: a PENDING file still in tmp/ is moved to "
			    "new/");
			is_int(listed(d, "k1", 1, 5), DELIVER_DONE,
			    "... and recorded as delivered");
			break;
		case 1:
			is_int(listed(d, "k1", 1, 5), DELIVER_DONE,
			    "recover: a PENDING file already in new/ counts as "
			    "delivered");
			break;
		case 2:
			is_int(listed(d, "k1", 1, 5), DELIVER_DONE,
			    "recover: a PENDING file a mail reader moved to cur/ "
			    "with flags counts as delivered");
			break;
		case 3:
			is_int(listed(d, "k1", 1, 5), DELIVER_NEW,
			    "recover: a PENDING file that is nowhere is "
			    "forgotten: fetched again, never assumed delivered");
			is_int(listed(d, "k2", 1, 5), DELIVER_DONE,
			    "... the other records stay");
			break;
		}
		close_dl(d);
	}

	/* Partial files: ours go, others stay. */
	fresh("partial");
	d = open_dl("user@pop.example.com");
	{
		struct deliver_msg	 m;
		char			*cause = NULL;

		deliver_begin(d, &m, NULL, NULL, 0, &cause);
		deliver_write(d, &m, "half", 4);
		/* No end, no discard: as if killed here. */
		close(m.file.fd);
	}
	deliver_close(d);
	put_file("tmp", "1234.foreign.host");
	is_int(count_sub("tmp"), 2, "a partial file of ours and a foreign one "
	    "in tmp/");
	d = open_dl("user@pop.example.com");
	is_int(count_sub("tmp"), 1, "deliver_open removes our partial file "
	    "and keeps the foreign one");
	close_dl(d);
}

static void
test_mailbox_change(void)
{
	struct deliver	*d;

	fresh("mailbox");
	d = open_dl("user@pop.example.com");
	receive(d, "k1", 1, 5, "abcd\n", NULL);
	commit(d);
	close_dl(d);
	d = open_dl("other@pop.example.com");
	is_int(listed(d, "k1", 1, 5), DELIVER_NEW, "a state kept for another "
	    "mailbox is not used");
	close_dl(d);
}

static void
test_reused_ids(void)
{
	struct deliver	*d;

	fresh("reused");
	d = open_dl("user@pop.example.com");
	receive(d, "X", 1, 100, "first\n", NULL);
	receive(d, "Y", 1, 0, "size unknown\n", NULL);
	commit(d);
	is_int(listed(d, "X", 1, 100), DELIVER_DONE, "same key, same size: "
	    "delivered");
	is_int(listed(d, "X", 1, 0), DELIVER_DONE, "same key, size not "
	    "listed: delivered");
	is_int(listed(d, "X", 1, 200), DELIVER_NEW, "same key, another size: "
	    "a new message under a reused id");
	is_int(listed(d, "Y", 1, 200), DELIVER_DONE, "a record without a "
	    "size cannot tell: delivered");
	ac.exact_sizes = 0;
	is_int(listed(d, "X", 1, 200), DELIVER_DONE, "exact-sizes = no: the "
	    "size is not compared");
	ac.exact_sizes = 1;

	/* The server removes X (DELE +OK, QUIT +OK): its record goes. */
	deliver_listing_start(d, "", 0);
	listed(d, "X", 1, 100);
	listed(d, "Y", 1, 0);
	deliver_removal_acked(d, S("X"), 1);
	deliver_removed(d);
	is_int(listed(d, "X", 1, 100), DELIVER_NEW, "after a confirmed "
	    "removal, a message reusing the id is new");
	is_int(listed(d, "Y", 1, 0), DELIVER_DONE, "... a record not removed "
	    "stays");
	close_dl(d);
	d = open_dl("user@pop.example.com");
	is_int(listed(d, "X", 1, 100), DELIVER_NEW, "... also after a reopen");
	/* Removal acknowledged, but no confirmation (QUIT lost). */
	deliver_removal_acked(d, S("Y"), 1);
	close_dl(d);
	d = open_dl("user@pop.example.com");
	is_int(listed(d, "Y", 1, 0), DELIVER_DONE, "without QUIT's +OK the "
	    "record stays");
	close_dl(d);
}

/* Write a state whose record "old" has missed and absent as given. */
static void
absent_state(unsigned missed, int64_t absent)
{
	struct state	*st;
	char		*cause = NULL;
	int		 code;

	mkdir_p(statedir, 0700);
	st = state_open(statedir, "acct", &code, &cause);
	state_set_meta(st, "mailbox", "user@pop.example.com");
	state_put(st, S("old"), 1, 100, 5, NULL, NULL);
	state_put(st, S("here"), 1, 100, 5, NULL, NULL);
	state_set_absence(st, state_find(st, S("old"), 1), missed, absent);
	if (state_sync(st, &cause) == -1) {
		diag("%s", cause);
		exit(99);
	}
	state_close(st);
}

/* One complete listing holding only "here". */
static void
poll_here(void)
{
	struct deliver	*d = open_dl("user@pop.example.com");

	deliver_listing_start(d, "", 0);
	listed(d, "here", 1, 5);
	deliver_listing_end(d, "", 0);
	close_dl(d);
}

static int
old_known(void)
{
	struct deliver	*d = open_dl("user@pop.example.com");
	int		 r = listed(d, "old", 1, 5);

	deliver_close(d);
	return (r);
}

static void
test_forget(void)
{
	time_t	now = time(NULL);

	fresh("forget1");
	absent_state(0, 0);
	poll_here();
	poll_here();
	is_int(old_known(), DELIVER_DONE, "missing from 2 listings: still "
	    "known (one empty listing does not erase the state)");
	fresh("forget2");
	absent_state(0, 0);
	poll_here();
	poll_here();
	poll_here();
	poll_here();
	is_int(old_known(), DELIVER_DONE, "missing from 4 listings in a few "
	    "seconds: still known (not long enough)");
	fresh("forget3");
	absent_state(5, now - 30 * 86400);
	is_int(old_known(), DELIVER_DONE, "missing for 30 days but not listed "
	    "since: still known");
	poll_here();
	is_int(old_known(), DELIVER_NEW, "missing from 3+ listings and for 7+ "
	    "days: forgotten");
	fresh("forget4");
	absent_state(2, now - 30 * 86400);
	{
		struct deliver	*d = open_dl("user@pop.example.com");

		deliver_listing_start(d, "", 0);
		listed(d, "here", 1, 5);
		listed(d, "old", 1, 5);
		deliver_listing_end(d, "", 0);
		close_dl(d);
	}
	poll_here();
	poll_here();
	is_int(old_known(), DELIVER_DONE, "listed again: the count starts "
	    "over");
}

static void
test_digests(void)
{
	struct deliver	*d;

	fresh("digests");
	d = open_dl("user@pop.example.com");
	receive(d, "k", 1, 5, "abcd\n", NULL);
	commit(d);
	is_int(deliver_use_digests(d), -1, "digests refused while records of "
	    "ids exist");
	close_dl(d);

	fresh("digests2");
	d = open_dl("user@pop.example.com");
	is_int(deliver_use_digests(d), 0, "digests on an empty state");
	is_int(receive(d, NULL, 0, 0, "same\n", (void *)1), 0, "a message "
	    "by content");
	is_int(receive(d, NULL, 0, 0, "same\n", (void *)2), 0, "the same "
	    "content again in one session is another message");
	commit(d);
	is_int(count_sub("new"), 2, "both delivered");
	close_dl(d);
	/* The session died before QUIT: the next one recognises both. */
	d = open_dl("user@pop.example.com");
	is_int(deliver_use_digests(d), 0, "digests again");
	is_int(receive(d, NULL, 0, 0, "same\n", NULL), DELIVER_DONE,
	    "after a session that did not QUIT: recognised");
	is_int(receive(d, NULL, 0, 0, "same\n", NULL), DELIVER_DONE,
	    "... the second copy too");
	is_int(receive(d, NULL, 0, 0, "same\n", NULL), 0, "... a third is new");
	commit(d);
	is_int(count_sub("new"), 3, "three in new/");
	/* QUIT is sent: from then on the digests are not trusted. */
	{
		char	*cause = NULL;

		is_int(deliver_removing(d, &cause), 0, "deliver_removing");
	}
	deliver_close(d);	/* and the +OK never came */
	d = open_dl("user@pop.example.com");
	deliver_use_digests(d);
	is_int(receive(d, NULL, 0, 0, "same\n", NULL), 0, "after QUIT without "
	    "an answer, a message with a known digest is delivered");
	commit(d);
	deliver_removed(d);
	close_dl(d);
	d = open_dl("user@pop.example.com");
	deliver_use_digests(d);
	is_int(receive(d, NULL, 0, 0, "same\n", NULL), 0, "after QUIT's +OK "
	    "the digests are forgotten");
	commit(d);
	deliver_use_keys(d);
	is_int(listed(d, "k", 1, 5), DELIVER_NEW, "back to ids: the digests "
	    "are gone");
	close_dl(d);
}

static void
test_too_big(void)
{
	struct deliver	*d;

	fresh("toobig");
	d = open_dl("user@pop.example.com");
	is_int((int)deliver_too_big(d, 3), 0, "too-big: none before");
	close_dl(d);
	d = open_dl("user@pop.example.com");
	is_int((int)deliver_too_big(d, 4), 3, "too-big: 3 at the poll before");
	is_int((int)deliver_too_big(d, 0), 4, "too-big: 4 at the poll before");
	close_dl(d);
}

/* IMAP's needs: folders, tags, scoped listings, a shared store. */
static void
test_folders_tags(void)
{
	struct deliver		*d, *d2;
	struct deliver_msg	 m;
	char			*cause = NULL, key[64], path[PATH_MAX];
	size_t			 klen;

	fresh("folders");
	d = open_dl("user@pop.example.com");
	d2 = open_dl("user@pop.example.com");
	ok(d2 != NULL, "a second session of the account shares the store");
	deliver_want_digests(d);
	if (deliver_begin(d, &m, ".Work", NULL, 0, &cause) == -1) {
		diag("%s", cause);
		exit(99);
	}
	deliver_write(d, &m, "work\n", 5);
	is_int(deliver_end(d, &m, "Work\0001\0007", 9, 1, 5, "", NULL,
	    &cause), 0, "a message for a Maildir++ folder");
	is_int(receive(d2, "INBOX\0001\0003", 1, 5, "inbx\n", NULL), 0,
	    "... and one of another session for the main Maildir");
	commit(d);
	commit(d2);
	snprintf(path, sizeof path, "%s/.Work/new", maildir);
	is_int(count_dir(path), 1, "the folder's message is in .Work/new");
	is_int(count_sub("new"), 1, "the other in new/");
	ok(deliver_find_tag(d, "sha256:f8b0a1d4d3de8ce7c3d4d67f76da3b1b7af"
	    "5cc5b17b1ab0dc42fb6dd0e7e3b7c", "", 0, NULL, NULL) == 0,
	    "find_tag: an unknown digest");
	deliver_record(d, "Work\0002\0001", 9, 1, 5, "mid:abc");
	klen = sizeof key;
	ok(deliver_find_tag(d, "mid:abc", "Work\0002", 6, key, &klen) == 1 &&
	    klen == 9 && memcmp(key, "Work\0002\0001", 9) == 0,
	    "find_tag: a recorded tag, with its key");
	ok(deliver_find_tag(d, "mid:abc", "Other", 5, NULL, NULL) == 0,
	    "find_tag: not under another prefix");
	/* A listing of the Work folder does not touch INBOX's records. */
	deliver_listing_start(d, "Work\0", 5);
	deliver_listing_end(d, "Work\0", 5);
	close_dl(d2);
	deliver_forget(d, "Work\0002\0001", 9, 1);
	ok(deliver_find_tag(d, "mid:abc", "", 0, NULL, NULL) == 0,
	    "forget: the tag is gone with its record");
	close_dl(d);
	d = open_dl("user@pop.example.com");
	is_int(listed(d, "INBOX\0001\0003", 1, 5), DELIVER_DONE, "after a "
	    "reopen: the main Maildir's record");
	ok(deliver_find_tag(d, "sha256:", "Work", 4, NULL, NULL) == 0,
	    "a partial tag finds nothing");
	close_dl(d);
	/* A pending delivery into a folder is recovered from the folder. */
	fresh("folders2");
	deliver_close(open_dl("user@pop.example.com"));
	{
		char	sub[PATH_MAX];

		snprintf(sub, sizeof sub, "%s/.F", maildir);
		mkdir(sub, 0700);
		snprintf(sub, sizeof sub, "%s/.F/tmp", maildir);
		mkdir(sub, 0700);
		snprintf(sub, sizeof sub, "%s/.F/new", maildir);
		mkdir(sub, 0700);
		snprintf(sub, sizeof sub, "%s/.F/cur", maildir);
		mkdir(sub, 0700);
		pending_state(".F/1.M1P1Q1A0000abcd.host,S=5");
		put_file(".F/tmp", "1.M1P1Q1A0000abcd.host");
		d = open_dl("user@pop.example.com");
		snprintf(sub, sizeof sub, "%s/.F/new", maildir);
		is_int(count_dir(sub), 1, "recover: a PENDING file of a folder "
		    "is moved into the folder's new/");
		close_dl(d);
	}
}

int
main(void)
{
	log_init(1, -2);
	topdir = mkscratch("deliver");
	test_commit();
	test_recover();
	test_mailbox_change();
	test_reused_ids();
	test_forget();
	test_digests();
	test_too_big();
	test_folders_tags();
	rm_rf(topdir);
	free(topdir);
	return (done());
}
