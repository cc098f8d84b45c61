/*
 * fuzz_oauth2.c: what maild makes of an OAuth2 provider's replies
 * (oauth2_token.c): the token endpoint's JSON, success or error (RFC 6749
 * 5.1, 5.2), and the members of a device authorization reply (RFC 8628
 * 3.2) that maild --authorize reads.  The provider is on the network,
 * so its bytes are as untrusted as a mail server's.
 *
 * The first input byte picks the HTTP status (200 or an error status);
 * the rest is the body.  The promises checked: tokens only with
 * OAUTH2_REPLY_OK, and then an access token that oauth2_token_ok() would
 * accept (it goes into AUTHENTICATE lines and the token file) and an
 * expiry within a year; the error and description NUL-terminated within
 * their arrays and printable ASCII (they are logged); a hint for every error;
 * the device reply's strings shorter than their buffers, its numbers -1
 * or within a year.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "maild.h"
#include "oauth2.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static const int statuses[] = { 200, 400, 401, 403, 500, 302 };

/* Logged text: NUL-terminated inside its array, no control bytes. */
static void
check_text(const char *s, size_t size)
{
	const char	*nul = memchr(s, '\0', size);
	const char	*p;

	if (nul == NULL)
		abort();
	for (p = s; p < nul; p++) {
		if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
			abort();
	}
}

static void
check_token(const char *s)
{
	const char	*p;

	if (s == NULL || *s == '\0')
		abort();
	for (p = s; *p != '\0'; p++) {
		if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
			abort();
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int		 init;
	struct oauth2_tokens	 t;
	struct oauth2_error	 e;
	const char		*body, *s;
	const char		*keys[] = { "device_code", "user_code",
				    "verification_uri", "verification_url",
				    "verification_uri_complete" };
	char			 buf[512];
	time_t			 now;
	size_t			 len, i;
	long			 n;
	int			 status, r;

	if (!init) {
		oauth2_json_init();
		init = 1;
	}
	if (size < 1)
		return (0);
	status = statuses[data[0] % (sizeof statuses / sizeof statuses[0])];
	body = (const char *)data + 1;
	len = size - 1;

	now = time(NULL);
	r = oauth2_token_reply(status, body, len, &t, &e);
	check_text(e.error, sizeof e.error);
	check_text(e.desc, sizeof e.desc);
	if (oauth2_error_hint(&e) == NULL)
		abort();
	if (r == OAUTH2_REPLY_OK) {
		if (status != 200)
			abort();
		check_token(t.access);
		if (t.refresh != NULL)
			check_token(t.refresh);
		if (t.expires < now || t.expires > now + 367L * 86400 + 60)
			abort();
	} else {
		if ((r != OAUTH2_REPLY_REFUSED && r != OAUTH2_REPLY_BAD) ||
		    t.access != NULL || t.refresh != NULL)
			abort();
	}
	oauth2_tokens_clear(&t);

	for (i = 0; i < sizeof keys / sizeof keys[0]; i++) {
		s = oauth2_json_string(body, len, keys[i], buf,
		    i % 2 == 0 ? sizeof buf : 16);
		if (s != NULL && (s != buf || strlen(s) >= (i % 2 == 0 ?
		    sizeof buf : 16)))
			abort();
	}
	n = oauth2_json_integer(body, len, "interval");
	if (n < -1 || n > 366L * 86400)
		abort();
	n = oauth2_json_integer(body, len, "expires_in");
	if (n < -1 || n > 366L * 86400)
		abort();
	return (0);
}
