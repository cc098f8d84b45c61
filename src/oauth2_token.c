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
 * oauth2_token.c: the parts of OAuth2 that need no event loop, shared by
 * the daemon (oauth2.c) and maild --authorize (authorize.c): the
 * providers' presets, the token file (<state-dir>/<account>.oauth2, mode
 * 0600, replaced durably), the forms sent to a provider and what its JSON
 * replies mean (RFC 6749 5.1, 5.2).  JSON is jansson's, with an allocator
 * that wipes what it frees (oauth2_json_init()): the replies hold tokens.
 */

#include "config.h"

#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/http.h>

#include <jansson.h>

#include "maild.h"
#include "oauth2.h"

/* The token file: a few tokens and comments. */
#define OAUTH2_FILE_MAX		65536
/* A token lives at most this long, whatever expires_in says. */
#define OAUTH2_EXPIRES_MAX	(366L * 86400)

/*
 * jansson's buffers hold tokens: wipe them before they are freed.
 * (glibc's malloc_usable_size() says how much there is to wipe.)
 */
static void *
oauth2_json_malloc(size_t size)
{
	return (malloc(size));
}

static void
oauth2_json_free(void *p)
{
	if (p != NULL) {
		wipe(p, malloc_usable_size(p));
		free(p);
	}
}

void
oauth2_json_init(void)
{
	json_set_alloc_funcs(oauth2_json_malloc, oauth2_json_free);
}

const char *
oauth2_provider_name(enum oauth2_provider p)
{
	switch (p) {
	case OAUTH2_GOOGLE:
		return ("google");
	case OAUTH2_MICROSOFT:
		return ("microsoft");
	case OAUTH2_CUSTOM:
		return ("custom");
	default:
		return ("none");
	}
}

/*
 * The endpoints and scope of a provider, for the mail service (POP3 or
 * IMAP; Microsoft wants a scope per protocol).  tenant: Microsoft's
 * (NULL: "common").  Returns 0; custom and none preset nothing.
 */
int
oauth2_preset(enum oauth2_provider p, const char *tenant, int service,
    struct oauth2_endpoints *e)
{
	memset(e, 0, sizeof *e);
	switch (p) {
	case OAUTH2_GOOGLE:
		/* Google refuses the device grant for the mail scope. */
		e->auth_url = xstrdup("https://accounts.google.com/o/oauth2/"
		    "v2/auth");
		e->token_url = xstrdup("https://oauth2.googleapis.com/token");
		e->scope = xstrdup("https://mail.google.com/");
		break;
	case OAUTH2_MICROSOFT:
		if (tenant == NULL)
			tenant = "common";
		xasprintf(&e->auth_url, "https://login.microsoftonline.com/%s/"
		    "oauth2/v2.0/authorize", tenant);
		xasprintf(&e->token_url, "https://login.microsoftonline.com/%s/"
		    "oauth2/v2.0/token", tenant);
		xasprintf(&e->device_url, "https://login.microsoftonline.com/"
		    "%s/oauth2/v2.0/devicecode", tenant);
		xasprintf(&e->scope, "https://outlook.office.com/%s."
		    "AccessAsUser.All offline_access",
		    service == OAUTH2_SERVICE_IMAP ? "IMAP" : "POP");
		break;
	default:
		break;
	}
	return (0);
}

/* The token file */

void
oauth2_tokens_clear(struct oauth2_tokens *t)
{
	freezero_str(t->refresh);
	freezero_str(t->access);
	memset(t, 0, sizeof *t);
}

/* A token as RFC 6749 allows it (VSCHAR, here without the space). */
static int
oauth2_token_ok(const char *s, size_t len)
{
	size_t	i;

	if (len == 0 || len > OAUTH2_TOKEN_MAX)
		return (0);
	for (i = 0; i < len; i++) {
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
			return (0);
	}
	return (1);
}

/*
 * Read a token file.  Returns 0, or -1 with *cause (errno ENOENT if there
 * is no file).
 */
int
oauth2_file_read(const char *path, struct oauth2_tokens *t, char **cause)
{
	char		*buf, *line, *next, *val;
	ssize_t		 n;
	size_t		 len = 0;
	int		 fd, saved;
	uint64_t	 exp;

	memset(t, 0, sizeof *t);
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) == -1) {
		saved = errno;
		xasprintf(cause, "%s: %s", path, strerror(errno));
		errno = saved;
		return (-1);
	}
	if (private_file(fd, "token file", path, cause) == -1) {
		close(fd);
		errno = EPERM;
		return (-1);
	}
	buf = xmalloc(OAUTH2_FILE_MAX + 1);
	while (len < OAUTH2_FILE_MAX) {
		n = read(fd, buf + len, OAUTH2_FILE_MAX - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += n;
	}
	close(fd);
	buf[len] = '\0';
	for (line = buf; line != NULL && *line != '\0'; line = next) {
		if ((next = strchr(line, '\n')) != NULL)
			*next++ = '\0';
		if (*line == '#' || *line == '\0')
			continue;
		if ((val = strchr(line, ' ')) == NULL)
			goto bad;
		*val++ = '\0';
		if (strcmp(line, "refresh-token") == 0 && t->refresh == NULL &&
		    oauth2_token_ok(val, strlen(val)))
			t->refresh = xstrdup(val);
		else if (strcmp(line, "access-token") == 0 &&
		    t->access == NULL && oauth2_token_ok(val, strlen(val)))
			t->access = xstrdup(val);
		else if (strcmp(line, "access-expires") == 0 &&
		    parse_u64(val, INT64_MAX, &exp) == 0)
			t->expires = (time_t)exp;
		else if (strcmp(line, "refresh-token") == 0 ||
		    strcmp(line, "access-token") == 0)
			goto bad;
		/* Other keys: from a later maild; ignored. */
	}
	wipe(buf, len);
	free(buf);
	if (t->refresh == NULL) {
		oauth2_tokens_clear(t);
		xasprintf(cause, "%s holds no refresh-token", path);
		errno = EINVAL;
		return (-1);
	}
	return (0);
bad:
	wipe(buf, len);
	free(buf);
	oauth2_tokens_clear(t);
	xasprintf(cause, "%s is damaged (not what maild writes)", path);
	errno = EINVAL;
	return (-1);
}

/*
 * Replace a token file, durably: a temporary file beside it, written and
 * fsynced, renamed over it, the directory fsynced.  A crash leaves the
 * old file or the new one, never half of one.
 */
int
oauth2_file_write(const char *path, const char *account,
    const struct oauth2_tokens *t, char **cause)
{
	char		*text, *tmp, *dir, *slash;
	int		 fd, len;

	xasprintf(&tmp, "%s.XXXXXX", path);
	if ((fd = mkstemp(tmp)) == -1) {
		xasprintf(cause, "cannot create a file beside %s: %s", path,
		    strerror(errno));
		free(tmp);
		return (-1);
	}
	len = xasprintf(&text, "# maild OAuth2 tokens of account \"%s\": "
	    "secret, keep it so; see maild(8)\nrefresh-token %s\n"
	    "%s%s%saccess-expires %lld\n", account, t->refresh,
	    t->access != NULL ? "access-token " : "",
	    t->access != NULL ? t->access : "", t->access != NULL ? "\n" : "",
	    (long long)(t->access != NULL ? t->expires : 0));
	if (fchmod(fd, 0600) == -1 || write_full(fd, text, len) == -1 ||
	    fsync(fd) == -1) {
		xasprintf(cause, "cannot write %s: %s", tmp, strerror(errno));
		wipe(text, len);
		free(text);
		close(fd);
		unlink(tmp);
		free(tmp);
		return (-1);
	}
	wipe(text, len);
	free(text);
	if (close(fd) == -1 || rename(tmp, path) == -1) {
		xasprintf(cause, "cannot replace %s: %s", path, strerror(errno));
		unlink(tmp);
		free(tmp);
		return (-1);
	}
	free(tmp);
	dir = xstrdup(path);
	if ((slash = strrchr(dir, '/')) != NULL)
		*(slash == dir ? slash + 1 : slash) = '\0';
	if (fsync_dir(slash != NULL ? dir : ".") == -1) {
		xasprintf(cause, "cannot make %s durable (fsync of its "
		    "directory): %s", path, strerror(errno));
		free(dir);
		return (-1);
	}
	free(dir);
	return (0);
}

/*
 * "k1=v1&k2=v2..." from pairs of strings ending with NULL; a NULL value
 * leaves its key out.  Allocated; wipe it (it holds secrets).
 */
char *
oauth2_form(const char *key, ...)
{
	va_list		 ap;
	const char	*k, *v;
	char		*out = NULL, *enc, *next;
	size_t		 outlen = 0;

	va_start(ap, key);
	for (k = key; k != NULL; k = va_arg(ap, const char *)) {
		v = va_arg(ap, const char *);
		if (v == NULL)
			continue;
		if ((enc = evhttp_uriencode(v, -1, 1)) == NULL)
			fatalx("evhttp_uriencode failed");
		xasprintf(&next, "%s%s%s=%s", out != NULL ? out : "",
		    out != NULL ? "&" : "", k, enc);
		wipe(enc, strlen(enc));
		free(enc);
		if (out != NULL) {
			wipe(out, outlen);
			free(out);
		}
		out = next;
		outlen = strlen(out);
	}
	va_end(ap);
	return (out != NULL ? out : xstrdup(""));
}

/* Forms and JSON */

static json_t *
oauth2_json_load(const char *body, size_t len)
{
	json_error_t	 err;
	json_t		*j;

	j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &err);
	if (j != NULL && !json_is_object(j)) {
		json_decref(j);
		return (NULL);
	}
	return (j);
}

/* A string member of a JSON object, copied into buf; NULL if none. */
const char *
oauth2_json_string(const char *body, size_t len, const char *key, char *buf,
    size_t size)
{
	json_t		*j, *v;
	const char	*s = NULL;

	if ((j = oauth2_json_load(body, len)) == NULL)
		return (NULL);
	v = json_object_get(j, key);
	if (json_is_string(v) && json_string_length(v) < size &&
	    memchr(json_string_value(v), '\0', json_string_length(v)) ==
	    NULL) {
		memcpy(buf, json_string_value(v), json_string_length(v) + 1);
		s = buf;
	}
	json_decref(j);
	return (s);
}

/* A whole number member (or a string of digits: some providers); -1. */
static long
oauth2_json_number(json_t *v)
{
	uint64_t	 n;

	if (json_is_integer(v))
		return (json_integer_value(v) >= 0 &&
		    json_integer_value(v) <= OAUTH2_EXPIRES_MAX ?
		    (long)json_integer_value(v) : -1);
	if (json_is_string(v) &&
	    parse_u64(json_string_value(v), OAUTH2_EXPIRES_MAX, &n) == 0)
		return ((long)n);
	return (-1);
}

/* ------------------------------------------------------------------ */
long
oauth2_json_integer(const char *body, size_t len, const char *key)
{
	json_t	*j;
	long	 n;

	if ((j = oauth2_json_load(body, len)) == NULL)
		return (-1);
	n = oauth2_json_number(json_object_get(j, key));
	json_decref(j);
	return (n);
}

/* An OAuth2 error reply (RFC 6749 5.2): error and error_description. */
static int
oauth2_error_of(json_t *j, struct oauth2_error *e)
{
	json_t		*err = json_object_get(j, "error");
	json_t		*desc = json_object_get(j, "error_description");

	if (!json_is_string(err))
		return (-1);
	log_escape(e->error, sizeof e->error, json_string_value(err),
	    json_string_length(err));
	if (json_is_string(desc))
		log_escape(e->desc, sizeof e->desc, json_string_value(desc),
		    json_string_length(desc));
	return (0);
}

/*
 * Understand a token endpoint's reply (RFC 6749 5.1 and 5.2): the tokens
 * (refresh: NULL if it sent none), or the error it sent, or why the reply
 * is neither.
 */
int
oauth2_token_reply(int status, const char *body, size_t len,
    struct oauth2_tokens *t, struct oauth2_error *e)
{
	json_t		*j, *at, *rt, *type;
	long		 exp;

	memset(t, 0, sizeof *t);
	memset(e, 0, sizeof *e);
	j = oauth2_json_load(body, len);
	if (status != 200) {
		if (j != NULL && oauth2_error_of(j, e) == 0) {
			json_decref(j);
			return (OAUTH2_REPLY_REFUSED);
		}
		json_decref(j);
		snprintf(e->desc, sizeof e->desc, "HTTP status %d without an "
		    "OAuth2 error", status);
		return (OAUTH2_REPLY_BAD);
	}
	if (j == NULL) {
		snprintf(e->desc, sizeof e->desc, "a reply that is not a JSON "
		    "object");
		return (OAUTH2_REPLY_BAD);
	}
	at = json_object_get(j, "access_token");
	rt = json_object_get(j, "refresh_token");
	type = json_object_get(j, "token_type");
	if (!json_is_string(at) || !oauth2_token_ok(json_string_value(at),
	    json_string_length(at))) {
		snprintf(e->desc, sizeof e->desc, "a reply without a valid "
		    "access_token");
		goto bad;
	}
	if (type != NULL && (!json_is_string(type) ||
	    strcasecmp(json_string_value(type), "bearer") != 0)) {
		snprintf(e->desc, sizeof e->desc, "a token_type that is not "
		    "Bearer");
		goto bad;
	}
	if (rt != NULL && (!json_is_string(rt) ||
	    !oauth2_token_ok(json_string_value(rt), json_string_length(rt)))) {
		snprintf(e->desc, sizeof e->desc, "an invalid refresh_token");
		goto bad;
	}
	if (json_object_get(j, "expires_in") == NULL)
		exp = 3600;	/* RFC 6749 5.1: RECOMMENDED; an hour is usual */
	else if ((exp = oauth2_json_number(json_object_get(j,
	    "expires_in"))) == -1) {
		snprintf(e->desc, sizeof e->desc, "an invalid expires_in");
		goto bad;
	}
	t->access = xstrdup(json_string_value(at));
	t->refresh = rt != NULL ? xstrdup(json_string_value(rt)) : NULL;
	t->expires = time(NULL) + exp;
	json_decref(j);
	return (OAUTH2_REPLY_OK);
bad:
	json_decref(j);
	return (OAUTH2_REPLY_BAD);
}

/* What to do about an error the provider sent, or "". */
const char *
oauth2_error_hint(const struct oauth2_error *e)
{
	if (strcmp(e->error, "invalid_client") == 0 ||
	    strcmp(e->error, "unauthorized_client") == 0) {
		if (strstr(e->desc, "AADSTS700025") != NULL)
			return ("; this client is public: remove "
			    "oauth2-client-secret");
		if (strstr(e->desc, "AADSTS7000218") != NULL)
			return ("; this client is confidential: give its "
			    "oauth2-client-secret, or allow public client "
			    "flows in its registration");
		return ("; check oauth2-client-id and oauth2-client-secret "
		    "against the client's registration");
	}
	if (strcmp(e->error, "invalid_scope") == 0)
		return ("; the provider does not grant this scope to this "
		    "client (Google allows the mail scope only with the "
		    "authorization code grant: no oauth2-device-url)");
	return ("");
}
