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
 * test_oauth2.c: the parts of oauth2.c that need no network: what a
 * token endpoint's reply means, the token file (written, read back, its
 * mode, a damaged one), the form encoding, the presets' scopes and the
 * hints for the errors providers send.
 */

#include "config.h"

#include <sys/stat.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "maild.h"
#include "oauth2.h"
#include "tap.h"
#include "files.h"

#define S(s)	(s), strlen(s)

static void
test_replies(void)
{
	struct oauth2_tokens	t;
	struct oauth2_error	e;
	time_t			now = time(NULL);

	is_int(oauth2_token_reply(200, S("{\"access_token\":\"at-1\","
	    "\"token_type\":\"Bearer\",\"expires_in\":3599,"
	    "\"refresh_token\":\"rt-2\"}"), &t, &e), OAUTH2_REPLY_OK,
	    "a reply with a rotated refresh token");
	is_str(t.access, "at-1", "its access token");
	is_str(t.refresh, "rt-2", "its refresh token");
	ok(t.expires >= now + 3599 && t.expires <= now + 3601,
	    "expires_in counts from now");
	oauth2_tokens_clear(&t);

	is_int(oauth2_token_reply(200, S("{\"access_token\":\"at-1\","
	    "\"token_type\":\"bearer\",\"expires_in\":\"60\"}"), &t, &e),
	    OAUTH2_REPLY_OK, "expires_in as a string; no refresh token");
	ok(t.refresh == NULL, "no refresh token: NULL");
	ok(t.expires >= now + 60 && t.expires <= now + 62, "60 s");
	oauth2_tokens_clear(&t);

	is_int(oauth2_token_reply(200, S("{\"token_type\":\"Bearer\"}"), &t,
	    &e), OAUTH2_REPLY_BAD, "no access_token");
	like(e.desc, "access_token", "says so");
	is_int(oauth2_token_reply(200, S("{\"access_token\":\"a\","
	    "\"access_token\":\"b\"}"), &t, &e), OAUTH2_REPLY_BAD,
	    "two access_token members");
	is_int(oauth2_token_reply(200, S("{\"access_token\":\"a b\"}"), &t,
	    &e), OAUTH2_REPLY_BAD, "a token with a space");
	is_int(oauth2_token_reply(200, S("{\"access_token\":\"a\","
	    "\"token_type\":\"mac\"}"), &t, &e), OAUTH2_REPLY_BAD,
	    "a token that is not Bearer");
	is_int(oauth2_token_reply(200, S("{\"access_token\":\"a\","
	    "\"expires_in\":-5}"), &t, &e), OAUTH2_REPLY_BAD,
	    "a negative expires_in");
	is_int(oauth2_token_reply(200, S("[1,2]"), &t, &e), OAUTH2_REPLY_BAD,
	    "not an object");
	is_int(oauth2_token_reply(200, S("<html>"), &t, &e), OAUTH2_REPLY_BAD,
	    "not JSON");

	is_int(oauth2_token_reply(400, S("{\"error\":\"invalid_grant\","
	    "\"error_description\":\"AADSTS70000: expired\\n\"}"), &t, &e),
	    OAUTH2_REPLY_REFUSED, "an OAuth2 error");
	is_str(e.error, "invalid_grant", "its code");
	ok(strstr(e.desc, "AADSTS70000") != NULL &&
	    strchr(e.desc, '\n') == NULL, "its description, escaped");
	is_int(oauth2_token_reply(502, S("<html>bad gateway</html>"), &t, &e),
	    OAUTH2_REPLY_BAD, "an HTTP error without JSON");
	like(e.desc, "502", "names the status");
}

static void
test_hints(void)
{
	struct oauth2_error	e;

	memset(&e, 0, sizeof e);
	snprintf(e.error, sizeof e.error, "invalid_client");
	snprintf(e.desc, sizeof e.desc, "AADSTS700025: Client is public");
	like(oauth2_error_hint(&e), "remove oauth2-client-secret",
	    "AADSTS700025: remove the secret");
	snprintf(e.desc, sizeof e.desc, "AADSTS7000218: needs a secret");
	like(oauth2_error_hint(&e), "allow public client flows",
	    "AADSTS7000218: public client flows");
	snprintf(e.error, sizeof e.error, "invalid_scope");
	like(oauth2_error_hint(&e), "oauth2-device-url",
	    "invalid_scope: Google and the device grant");
	snprintf(e.error, sizeof e.error, "server_error");
	is_str(oauth2_error_hint(&e), "", "no hint for the rest");
}

static void
test_file(void)
{
	char			*dir = mkscratch("oauth2"), *path, *cause = NULL;
	char			*text;
	struct oauth2_tokens	 t = { 0 }, r;
	struct stat		 sb;
	size_t			 len;

	xasprintf(&path, "%s/acct.oauth2", dir);
	errno = 0;
	ok(oauth2_file_read(path, &r, &cause) == -1 && errno == ENOENT,
	    "no file: -1 with ENOENT");
	free(cause);
	cause = NULL;

	t.refresh = xstrdup("rt-1");
	t.access = xstrdup("at-1");
	t.expires = 1900000000;
	ok(oauth2_file_write(path, "acct", &t, &cause) == 0, "written");
	ok(stat(path, &sb) == 0 && (sb.st_mode & 0777) == 0600, "mode 0600");
	ok(oauth2_file_read(path, &r, &cause) == 0, "read back");
	is_str(r.refresh, "rt-1", "the refresh token");
	is_str(r.access, "at-1", "the access token");
	is_int(r.expires, 1900000000, "its expiry");
	oauth2_tokens_clear(&r);

	free(t.access);
	t.access = NULL;
	ok(oauth2_file_write(path, "acct", &t, &cause) == 0,
	    "written without an access token");
	ok(oauth2_file_read(path, &r, &cause) == 0 && r.access == NULL &&
	    strcmp(r.refresh, "rt-1") == 0, "read back: refresh token only");
	oauth2_tokens_clear(&r);
	text = read_file(path, &len);
	like(text, "secret", "the file says it is secret");
	free(text);

	write_file(path, S("refresh-token rt 2\n"));
	ok(oauth2_file_read(path, &r, &cause) == -1, "a damaged file");
	like(cause, "damaged", "says so");
	free(cause);
	cause = NULL;
	write_file(path, S("# only a comment\n"));
	ok(oauth2_file_read(path, &r, &cause) == -1, "no refresh token");
	like(cause, "no refresh-token", "says so");
	free(cause);
	cause = NULL;
	write_file(path, S("refresh-token rt-1\n"));
	chmod(path, 0644);
	ok(oauth2_file_read(path, &r, &cause) == -1, "readable by others");
	like(cause, "chmod 600", "says what to do");
	free(cause);

	oauth2_tokens_clear(&t);
	free(path);
	rm_rf(dir);
	free(dir);
}

static void
test_form_presets(void)
{
	struct oauth2_endpoints	e;
	char			*f;

	f = oauth2_form("grant_type", "refresh_token", "refresh_token",
	    "a+b/c=d&e f", "client_secret", (char *)NULL, "scope",
	    "https://mail.google.com/", (char *)NULL);
	is_str(f, "grant_type=refresh_token&refresh_token=a%2Bb%2Fc%3Dd%26e+f"
	    "&scope=https%3A%2F%2Fmail.google.com%2F",
	    "form: encoded, a NULL value left out");
	free(f);

	oauth2_preset(OAUTH2_MICROSOFT, NULL, OAUTH2_SERVICE_POP3, &e);
	is_str(e.token_url, "https://login.microsoftonline.com/common/oauth2/"
	    "v2.0/token", "microsoft: tenant common by default");
	is_str(e.scope, "https://outlook.office.com/POP.AccessAsUser.All "
	    "offline_access", "microsoft: the POP3 scope");
	ok(e.device_url != NULL, "microsoft: the device grant");
	free(e.auth_url);
	free(e.token_url);
	free(e.device_url);
	free(e.scope);
	oauth2_preset(OAUTH2_MICROSOFT, "example.com", OAUTH2_SERVICE_IMAP,
	    &e);
	like(e.auth_url, "/example.com/oauth2/v2.0/authorize",
	    "microsoft: the tenant in the URLs");
	like(e.scope, "IMAP.AccessAsUser.All", "microsoft: the IMAP scope");
	free(e.auth_url);
	free(e.token_url);
	free(e.device_url);
	free(e.scope);
	oauth2_preset(OAUTH2_GOOGLE, NULL, OAUTH2_SERVICE_IMAP, &e);
	is_str(e.scope, "https://mail.google.com/", "google: the mail scope");
	ok(e.device_url == NULL, "google: no device grant");
	free(e.auth_url);
	free(e.token_url);
	free(e.scope);
}

int
main(void)
{
	test_replies();
	test_hints();
	test_file();
	test_form_presets();
	return (done());
}
