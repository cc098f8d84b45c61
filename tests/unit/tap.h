/*
 * tap.h: a tiny TAP producer for the C unit tests.  Each check prints
 * "ok N - what" or "not ok N - what"; done() returns the exit status.
 *
 * Besides ok(), there are helpers that show what they got on failure:
 * is_int(), is_str(), is_mem(), like() (substring) and has_prefix(); and
 * okf(), which takes a printf-style description.  A failing check prints
 * its diagnostics as TAP comments ("# ...").
 */

#ifndef TAP_H
#define TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* Not every test uses every helper. */
#define TAP_FN	static __attribute__((__unused__))

static int	tap_n, tap_failed;

TAP_FN int
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

/* Print bytes as a C string literal, escaping what is not printable. */
TAP_FN void
tap_dump(const char *label, const void *p, size_t len)
{
	const unsigned char	*s = p;
	size_t			 i, max = 300;

	printf("#   %s", label);
	if (p == NULL) {
		printf("NULL\n");
		return;
	}
	printf("(%zu) \"", len);
	for (i = 0; i < len && i < max; i++) {
		if (s[i] == '\\' || s[i] == '"')
			printf("\\%c", s[i]);
		else if (s[i] >= 0x20 && s[i] < 0x7f)
			putchar(s[i]);
		else if (s[i] == '\n')
			printf("\\n");
		else if (s[i] == '\r')
			printf("\\r");
		else
			printf("\\x%02x", s[i]);
	}
	printf("\"%s\n", len > max ? "..." : "");
}

TAP_FN int
is_mem_(const void *got, size_t gotlen, const void *exp, size_t explen,
    const char *file, int line, const char *what)
{
	int	cond;

	cond = got != NULL && gotlen == explen &&
	    (explen == 0 || memcmp(got, exp, explen) == 0);
	ok_(cond, file, line, what);
	if (!cond) {
		tap_dump("     got: ", got, gotlen);
		tap_dump("expected: ", exp, explen);
	}
	return (cond);
}
#define is_mem(g, gl, e, el, what) \
	is_mem_((g), (gl), (e), (el), __FILE__, __LINE__, (what))

TAP_FN int
is_str_(const char *got, const char *exp, const char *file, int line,
    const char *what)
{
	int	cond;

	if (got == NULL || exp == NULL)
		cond = got == exp;
	else
		cond = strcmp(got, exp) == 0;
	ok_(cond, file, line, what);
	if (!cond) {
		tap_dump("     got: ", got, got ? strlen(got) : 0);
		tap_dump("expected: ", exp, exp ? strlen(exp) : 0);
	}
	return (cond);
}
#define is_str(g, e, what)	is_str_((g), (e), __FILE__, __LINE__, (what))

TAP_FN int
is_int_(long long got, long long exp, const char *file, int line,
    const char *what)
{
	int	cond = got == exp;

	ok_(cond, file, line, what);
	if (!cond)
		printf("#          got: %lld\n#     expected: %lld\n", got, exp);
	return (cond);
}
#define is_int(g, e, what) \
	is_int_((long long)(g), (long long)(e), __FILE__, __LINE__, (what))

/* Does s contain sub? */
TAP_FN int
like_(const char *s, const char *sub, const char *file, int line,
    const char *what)
{
	int	cond = s != NULL && strstr(s, sub) != NULL;

	ok_(cond, file, line, what);
	if (!cond) {
		tap_dump("          got: ", s, s ? strlen(s) : 0);
		tap_dump("expected part: ", sub, strlen(sub));
	}
	return (cond);
}
#define like(s, sub, what)	like_((s), (sub), __FILE__, __LINE__, (what))

/* Does s start with prefix? */
TAP_FN int
has_prefix_(const char *s, const char *prefix, const char *file, int line,
    const char *what)
{
	int	cond = s != NULL && strncmp(s, prefix, strlen(prefix)) == 0;

	ok_(cond, file, line, what);
	if (!cond) {
		tap_dump("            got: ", s, s ? strlen(s) : 0);
		tap_dump("expected prefix: ", prefix, strlen(prefix));
	}
	return (cond);
}
#define has_prefix(s, p, what) \
	has_prefix_((s), (p), __FILE__, __LINE__, (what))

/* A check whose description is a printf format. */
TAP_FN const char *tap_fmt(const char *, ...)
    __attribute__((__format__(__printf__, 1, 2)));
TAP_FN const char *
tap_fmt(const char *fmt, ...)
{
	static char	buf[512];
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	return (buf);
}

/* A comment line in the TAP stream. */
TAP_FN void diag(const char *, ...) __attribute__((__format__(__printf__, 1, 2)));
TAP_FN void
diag(const char *fmt, ...)
{
	va_list	ap;

	printf("# ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

/* Print the plan (at the end, as TAP allows) and return the status. */
TAP_FN int
done(void)
{
	printf("1..%d\n", tap_n);
	return (tap_failed ? 1 : 0);
}

#endif
