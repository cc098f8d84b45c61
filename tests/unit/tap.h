/*
 * tap.h: a tiny TAP producer for the C unit tests.  Each check prints
 * "ok N - what" or "not ok N - what"; done() returns the exit status.
 */

#ifndef TAP_H
#define TAP_H

#include <stdio.h>
#include <string.h>

static int	tap_n, tap_failed;

static int
ok_(int cond, const char *file, int line, const char *what)
{
	tap_n++;
	printf("%sok %d - %s\n", cond ? "" : "not ", tap_n, what);
	if (!cond) {
		printf("#   failed at %s:%d\n", file, line);
		tap_failed++;
	}
	fflush(stdout);
	return (cond);
}
#define ok(cond, what)	ok_((cond), __FILE__, __LINE__, (what))

/* Print the plan (at the end, as TAP allows) and return the status. */
static int
done(void)
{
	printf("1..%d\n", tap_n);
	return (tap_failed ? 1 : 0);
}

#endif
