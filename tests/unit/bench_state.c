/*
 * bench_state.c: what saving a batch of the state costs, at 1,000 and at
 * 100,000 records (issue 15: the time per batch at 100,000 records within
 * 1.5x of that at 1,000).  Not a test: make check builds it, nobody runs
 * it but tests/bench/fleet and people.
 *
 *	bench_state [batches-per-size] [records-per-batch]
 *
 * For each size N it makes a state of N records (one snapshot, no
 * journal), then adds batches of records (100 by default), each saved
 * with state_sync() as deliver.c does after a batch, until the state has
 * gone through one compaction (a new snapshot) and at least the given
 * number of batches (default 200): so the mean includes the snapshot
 * rewrite its share of batches pays for.  It prints, per size, the
 * batches, the compactions, the median and the mean time per batch, and
 * at the end the ratio of the means; exit status 0 if it is at most 1.5.
 * The scratch directory is $TMPDIR (or /tmp): on tmpfs the figures are
 * the CPU's, on a disk fdatasync() dominates both sizes alike.
 */

#include "config.h"

#include <sys/stat.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "maild.h"
#include "tap.h"
#include "files.h"

struct result {
	unsigned	 batches;
	unsigned	 compactions;
	double		 median_ms;
	double		 mean_ms;
};

static double
now(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ((double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
}

static int
dbl_cmp(const void *a, const void *b)
{
	double	x = *(const double *)a, y = *(const double *)b;

	return (x < y ? -1 : x > y);
}

/* Put record number i (a UIDL-like key, as Dovecot's) into st. */
static void
put(struct state *st, unsigned i)
{
	char	key[64];

	snprintf(key, sizeof key, "%u.M%06uP4242.mail.example.org,S=%u",
	    1700000000 + i, i % 1000000, 2000 + i % 5000);
	state_put(st, key, strlen(key), 1, 1700000000 + i, 2000 + i % 5000,
	    NULL, NULL);
}

static void
sync_or_die(struct state *st)
{
	char	*cause = NULL;

	if (state_sync(st, &cause) == -1) {
		fprintf(stderr, "bench_state: %s\n", cause);
		exit(1);
	}
}

static ino_t
inode(const char *path)
{
	struct stat	sb;

	return (stat(path, &sb) == 0 ? sb.st_ino : 0);
}

static struct result
bench(const char *top, unsigned n, unsigned min_batches, unsigned per_batch)
{
	struct result	 r;
	struct state	*st;
	char		*dir, *snap, *cause = NULL;
	double		*t, t0, total = 0;
	unsigned	 i, b, next = n, cap = min_batches * 100 + 100000;
	int		 code;
	ino_t		 ino;

	memset(&r, 0, sizeof r);
	xasprintf(&dir, "%s/n%u", top, n);
	xasprintf(&snap, "%s/acct.state", dir);
	if (mkdir(dir, 0700) == -1 ||
	    (st = state_open(dir, "acct", &code, &cause)) == NULL) {
		fprintf(stderr, "bench_state: %s: %s\n", dir,
		    cause != NULL ? cause : "mkdir failed");
		exit(1);
	}
	for (i = 0; i < n; i++)
		put(st, i);
	sync_or_die(st);
	state_close(st);
	/* Start from a snapshot alone, as after a compaction. */
	if ((st = state_open(dir, "acct", &code, &cause)) == NULL) {
		fprintf(stderr, "bench_state: %s\n", cause);
		exit(1);
	}
	sync_or_die(st);
	t = xcalloc(cap, sizeof *t);
	ino = inode(snap);
	for (b = 0; b < cap; b++) {
		for (i = 0; i < per_batch; i++)
			put(st, next++);
		t0 = now();
		sync_or_die(st);
		t[b] = now() - t0;
		total += t[b];
		if (inode(snap) != ino) {
			ino = inode(snap);
			r.compactions++;
		}
		if (r.compactions > 0 && b + 1 >= min_batches)
			break;
	}
	r.batches = b < cap ? b + 1 : cap;
	r.mean_ms = total / r.batches * 1000;
	qsort(t, r.batches, sizeof *t, dbl_cmp);
	r.median_ms = t[r.batches / 2] * 1000;
	state_close(st);
	free(t);
	free(snap);
	free(dir);
	return (r);
}

int
main(int argc, char **argv)
{
	static const unsigned	 sizes[] = { 1000, 100000 };
	struct result		 r[2];
	char			*top;
	unsigned		 min_batches = 200, per_batch = 100, i;
	double			 ratio;

	if (argc > 1)
		min_batches = (unsigned)strtoul(argv[1], NULL, 10);
	if (argc > 2)
		per_batch = (unsigned)strtoul(argv[2], NULL, 10);
	if (min_batches == 0 || per_batch == 0) {
		fprintf(stderr, "usage: bench_state [batches] [records]\n");
		return (64);
	}
	top = mkscratch("bench-state");
	for (i = 0; i < 2; i++) {
		r[i] = bench(top, sizes[i], min_batches, per_batch);
		printf("%6u records: %u batches of %u, %u compaction%s: "
		    "median %.3f ms, mean %.3f ms per batch\n", sizes[i],
		    r[i].batches, per_batch, r[i].compactions,
		    r[i].compactions == 1 ? "" : "s", r[i].median_ms,
		    r[i].mean_ms);
	}
	rm_rf(top);
	free(top);
	ratio = r[1].mean_ms / r[0].mean_ms;
	printf("mean at 100000 / mean at 1000: %.2fx (target: at most 1.5x): "
	    "%s\n", ratio, ratio <= 1.5 ? "PASS" : "FAIL");
	return (ratio <= 1.5 ? 0 : 1);
}
