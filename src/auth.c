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
 * auth.c: the pieces of POP3 authentication that do not talk to the
 * network: choosing a method, APOP's digest, and the SASL responses of
 * PLAIN, LOGIN, CRAM-MD5, XOAUTH2 and OAUTHBEARER.  Every string returned
 * holds a secret or something derived from one: the caller wipes it
 * (freezero_str) after sending it.
 */

#include "config.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "maild.h"

/* Base64 of len bytes; an allocated string. */
char *
auth_b64(const void *data, size_t len)
{
	char	*out;

	if (len > (SIZE_MAX / 4) - 4)
		fatalx("auth_b64: too long");
	out = xmalloc(((len + 2) / 3) * 4 + 1);
	EVP_EncodeBlock((unsigned char *)out, data, (int)len);
	return (out);
}

/*
 * Decode base64 (as servers send challenges).  Returns an allocated,
 * NUL-terminated buffer and its length, or NULL if the input is not
 * base64.
 */
unsigned char *
auth_unb64(const char *in, size_t len, size_t *outlen)
{
	unsigned char	*out;
	int		 n;
	size_t		 pad = 0, i;

	if (len % 4 != 0 || len > 65536)
		return (NULL);
	for (i = 0; i < len; i++) {
		unsigned char	c = in[i];

		if (!isalnum(c) && c != '+' && c != '/' &&
		    !(c == '=' && i >= len - 2))
			return (NULL);
	}
	if (len > 0 && in[len - 1] == '=')
		pad++;
	if (len > 1 && in[len - 2] == '=')
		pad++;
	out = xmalloc(len / 4 * 3 + 1);
	n = EVP_DecodeBlock(out, (const unsigned char *)in, (int)len);
	if (n < 0 || (size_t)n < pad) {
		free(out);
		return (NULL);
	}
	*outlen = (size_t)n - pad;
	out[*outlen] = '\0';
	return (out);
}

/*
 * Find the APOP timestamp in a greeting: "<...>" holding an '@' and only
 * printable characters (RFC 1939 section 7).  Returns its length, or 0.
 */
size_t
auth_apop_timestamp(const char *text, size_t len, char *out, size_t size)
{
	const char	*lt, *gt, *p;
	size_t		 n;
	int		 at = 0;

	if ((lt = memchr(text, '<', len)) == NULL)
		return (0);
	if ((gt = memchr(lt, '>', len - (lt - text))) == NULL)
		return (0);
	n = gt - lt + 1;
	if (n < 5 || n >= size || n > 255)
		return (0);
	for (p = lt + 1; p < gt; p++) {
		if (*p < 0x21 || *p > 0x7e || *p == '<')
			return (0);
		if (*p == '@')
			at = 1;
	}
	if (!at)
		return (0);
	memcpy(out, lt, n);
	out[n] = '\0';
	return (n);
}

/* "APOP user <md5 hex of timestamp + password>" for RFC 1939 APOP. */
char *
auth_apop(const char *user, const char *timestamp, const char *secret,
    size_t secretlen)
{
	EVP_MD_CTX	*md;
	unsigned char	 digest[EVP_MAX_MD_SIZE];
	unsigned int	 n, i;
	char		 hex[2 * EVP_MAX_MD_SIZE + 1], *out;

	if ((md = EVP_MD_CTX_new()) == NULL ||
	    EVP_DigestInit_ex(md, EVP_md5(), NULL) != 1 ||
	    EVP_DigestUpdate(md, timestamp, strlen(timestamp)) != 1 ||
	    EVP_DigestUpdate(md, secret, secretlen) != 1 ||
	    EVP_DigestFinal_ex(md, digest, &n) != 1)
		fatalx("auth_apop: MD5 unavailable");
	EVP_MD_CTX_free(md);
	for (i = 0; i < n; i++)
		snprintf(hex + 2 * (size_t)i, 3, "%02x", digest[i]);
	xasprintf(&out, "APOP %s %s", user, hex);
	wipe(hex, sizeof hex);
	wipe(digest, sizeof digest);
	return (out);
}

/* Base64 of the buffer made of parts, wiped afterwards. */
static char *
auth_b64_parts(const char *const *parts, const size_t *lens, size_t n)
{
	char	*buf, *out;
	size_t	 len = 0, o = 0, i;

	for (i = 0; i < n; i++)
		len += lens[i];
	buf = xmalloc(len + 1);
	for (i = 0; i < n; i++) {
		memcpy(buf + o, parts[i], lens[i]);
		o += lens[i];
	}
	out = auth_b64(buf, len);
	wipe(buf, len);
	free(buf);
	return (out);
}

/* SASL PLAIN (RFC 4616): base64 of "\0user\0password". */
char *
auth_plain(const char *user, const char *secret, size_t secretlen)
{
	const char	*parts[] = { "", user, "", secret };
	size_t		 lens[] = { 1, strlen(user), 1, secretlen };

	return (auth_b64_parts(parts, lens, 4));
}

/*
 * SASL CRAM-MD5 (RFC 2195): base64 of "user hex(HMAC-MD5(password,
 * challenge))", challenge being the base64 the server sent.  NULL if the
 * challenge is not base64.
 */
char *
auth_cram_md5(const char *user, const char *secret, size_t secretlen,
    const char *challenge, size_t challen)
{
	unsigned char	*chal, mac[EVP_MAX_MD_SIZE];
	unsigned int	 maclen, i;
	size_t		 len;
	char		 hex[2 * EVP_MAX_MD_SIZE + 1], *out;
	const char	*parts[3];
	size_t		 lens[3];

	if ((chal = auth_unb64(challenge, challen, &len)) == NULL)
		return (NULL);
	if (HMAC(EVP_md5(), secret, (int)secretlen, chal, len, mac,
	    &maclen) == NULL)
		fatalx("auth_cram_md5: HMAC-MD5 unavailable");
	free(chal);
	for (i = 0; i < maclen; i++)
		snprintf(hex + 2 * (size_t)i, 3, "%02x", mac[i]);
	parts[0] = user;
	lens[0] = strlen(user);
	parts[1] = " ";
	lens[1] = 1;
	parts[2] = hex;
	lens[2] = 2 * (size_t)maclen;
	out = auth_b64_parts(parts, lens, 3);
	wipe(hex, sizeof hex);
	wipe(mac, sizeof mac);
	return (out);
}

/* Google's XOAUTH2: "user=U\1auth=Bearer T\1\1". */
char *
auth_xoauth2(const char *user, const char *token, size_t tokenlen)
{
	const char	*parts[] = { "user=", user, "\001auth=Bearer ", token,
			    "\001\001" };
	size_t		 lens[] = { 5, strlen(user), 13, tokenlen, 2 };

	return (auth_b64_parts(parts, lens, 5));
}

/* RFC 7628 OAUTHBEARER: "n,a=U,\1host=H\1port=P\1auth=Bearer T\1\1". */
char *
auth_oauthbearer(const char *user, const char *host, int port,
    const char *token, size_t tokenlen)
{
	char		*head, *out;
	const char	*parts[3];
	size_t		 lens[3], size, n = 0;

	/* ',' and '=' in the authzid are escaped as =2C and =3D. */
	size = strlen("n,a=") + 3 * strlen(user) + strlen(host) + 64;
	head = xmalloc(size);
	memcpy(head, "n,a=", 4);
	n = 4;
	for (; *user != '\0'; user++) {
		if (*user == ',' || *user == '=') {
			memcpy(head + n, *user == ',' ? "=2C" : "=3D", 3);
			n += 3;
		} else
			head[n++] = *user;
	}
	n += (size_t)snprintf(head + n, size - n,
	    ",\001host=%s\001port=%d\001auth=Bearer ", host, port);
	parts[0] = head;
	lens[0] = n;
	parts[1] = token;
	lens[1] = tokenlen;
	parts[2] = "\001\001";
	lens[2] = 2;
	out = auth_b64_parts(parts, lens, 3);
	free(head);
	return (out);
}

/* The SASL name of a method, or NULL for USER and APOP. */
const char *
auth_sasl_name(enum auth_method m)
{
	switch (m) {
	case AUTH_PLAIN:
		return ("PLAIN");
	case AUTH_LOGIN:
		return ("LOGIN");
	case AUTH_CRAM_MD5:
		return ("CRAM-MD5");
	case AUTH_XOAUTH2:
		return ("XOAUTH2");
	case AUTH_OAUTHBEARER:
		return ("OAUTHBEARER");
	default:
		return (NULL);
	}
}

const char *
auth_method_name(enum auth_method m)
{
	static const char *const names[] = { "auto", "user", "apop", "plain",
	    "login", "cram-md5", "xoauth2", "oauthbearer" };

	return ((size_t)m < sizeof names / sizeof names[0] ? names[m] : "?");
}

/* Does the CAPA SASL line list mech? */
static int
auth_offered(const struct pop3_capa *capa, const char *mech)
{
	const char	*p = capa->sasl;
	size_t		 n = strlen(mech);

	while (*p != '\0') {
		while (*p == ' ')
			p++;
		if (strncasecmp(p, mech, n) == 0 && (p[n] == ' ' ||
		    p[n] == '\0'))
			return (1);
		while (*p != ' ' && *p != '\0')
			p++;
	}
	return (0);
}

/*
 * "the server does not offer CRAM-MD5 (it offers: USER, PLAIN, LOGIN)":
 * what the user asked for and what they can ask for instead, the login
 * methods of the CAPA reply (USER, the SASL list) and the greeting (APOP).
 */
static void
auth_not_offered(const char *mech, const struct pop3_capa *capa,
    int apop_ts, char *buf, size_t size)
{
	char		 list[POP3_LINE_MAX + 32];
	const char	*p = capa->sasl;
	size_t		 o = 0, n;

	list[0] = '\0';
	if (capa->flags & CAPA_USER)
		o += snprintf(list + o, sizeof list - o, "USER");
	if (apop_ts)
		o += snprintf(list + o, sizeof list - o, "%sAPOP",
		    o ? ", " : "");
	while (o < sizeof list) {
		p += strspn(p, " ");
		if ((n = strcspn(p, " ")) == 0)
			break;
		o += snprintf(list + o, sizeof list - o, "%s%.*s",
		    o ? ", " : "", (int)n, p);
		p += n;
	}
	if (list[0] == '\0')
		snprintf(buf, size, "the server does not offer %s, nor any "
		    "other login method in its CAPA reply", mech);
	else
		snprintf(buf, size, "the server does not offer %s (it offers: "
		    "%s); set auth to one of them, or remove auth to let "
		    "maild choose", mech, list);
}

/*
 * Pick the login method.  With "auto", the strongest the server offers;
 * on an unencrypted connection only methods that do not reveal the
 * password.  An explicit method is used as told, unless the server's CAPA
 * says it does not have it.  have_capa: the server answered CAPA;
 * apop_ts: the greeting had a valid APOP timestamp.  Returns the method
 * or -1 with *why set (to a static buffer, valid until the next call).
 */
int
auth_choose(enum auth_method conf, const struct pop3_capa *capa,
    int have_capa, int apop_ts, int encrypted, const char **why)
{
	static char	 why_buf[POP3_LINE_MAX + 256];
	const char	*sasl;

	if (conf != AUTH_AUTO) {
		if (conf == AUTH_APOP && !apop_ts) {
			*why = "auth = apop, but the server's greeting has no "
			    "APOP timestamp";
			return (-1);
		}
		sasl = auth_sasl_name(conf);
		if (sasl != NULL && have_capa && !auth_offered(capa, sasl)) {
			auth_not_offered(sasl, capa, apop_ts, why_buf,
			    sizeof why_buf);
			*why = why_buf;
			return (-1);
		}
		return (conf);
	}
	if (auth_offered(capa, "CRAM-MD5"))
		return (AUTH_CRAM_MD5);
	if (encrypted) {
		if (auth_offered(capa, "PLAIN"))
			return (AUTH_PLAIN);
		if (auth_offered(capa, "LOGIN"))
			return (AUTH_LOGIN);
		if (!have_capa || (capa->flags & CAPA_USER) ||
		    !(capa->flags & CAPA_SASL))
			return (AUTH_USER);
	}
	if (apop_ts)
		return (AUTH_APOP);
	if (!encrypted)
		*why = "no login method the server offers keeps the password "
		    "secret on an unencrypted connection; use TLS, or set "
		    "auth explicitly";
	else
		*why = "the server offers no login method maild knows";
	return (-1);
}
