/*
 * test_auth.c: unit tests for the SASL messages of src/auth.c that carry
 * the configured user name and host, at the lengths config.c lets
 * through: nothing is cut short, whatever the name holds.
 */

#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "maild.h"
#include "tap.h"

/* The decoded message, as a string (these hold no NUL but the GS2 ones). */
static char *
decoded(char *b64, size_t *len)
{
	unsigned char	*raw;

	raw = auth_unb64(b64, strlen(b64), len);
	free(b64);
	return ((char *)raw);
}

static void
oauthbearer_is(const char *user, const char *host, int port,
    const char *want_user, const char *what)
{
	char	*got, *want;
	size_t	 len;

	got = decoded(auth_oauthbearer(user, host, port, "tok", 3), &len);
	xasprintf(&want, "n,a=%s,\001host=%s\001port=%d\001auth=Bearer tok"
	    "\001\001", want_user, host, port);
	is_mem(got, got != NULL ? len : 0, want, strlen(want),
	    tap_fmt("oauthbearer: %s", what));
	free(got);
	free(want);
}

static void
test_oauthbearer(void)
{
	char	user[256], escaped[3 * 255 + 1], host[254];
	size_t	i;

	oauthbearer_is("me@example.com", "pop.example.com", 995,
	    "me@example.com", "plain name");
	oauthbearer_is("a,b=c", "h", 110, "a=2Cb=3Dc", "',' and '=' escaped");

	/* The longest user name config.c allows, all of it escaped, with
	   the longest host name: all of it goes out. */
	for (i = 0; i < 255; i++) {
		user[i] = i % 2 ? ',' : '=';
		memcpy(escaped + 3 * i, i % 2 ? "=2C" : "=3D", 3);
	}
	user[255] = '\0';
	escaped[3 * 255] = '\0';
	memset(host, 'h', 253);
	for (i = 60; i < 253; i += 60)
		host[i] = '.';
	host[253] = '\0';
	oauthbearer_is(user, host, 65535, escaped,
	    "255 escaped bytes and a 253-byte host, nothing cut");
}

static void
test_plain_xoauth2(void)
{
	char	 user[256], *got, *want;
	size_t	 len;

	memset(user, 'u', 255);
	user[255] = '\0';
	got = decoded(auth_plain(user, "pw", 2), &len);
	xasprintf(&want, "%c%s%cpw", 0, user, 0);
	is_mem(got, got != NULL ? len : 0, want, 255 + 4,
	    "plain: a 255-byte user, whole");
	free(got);
	free(want);
	got = decoded(auth_xoauth2(user, "tok", 3), &len);
	xasprintf(&want, "user=%s\001auth=Bearer tok\001\001", user);
	is_mem(got, got != NULL ? len : 0, want, strlen(want),
	    "xoauth2: a 255-byte user, whole");
	free(got);
	free(want);
}

int
main(void)
{
	test_oauthbearer();
	test_plain_xoauth2();
	return (done());
}
