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
 * oauth2.h: oauth2_token.c, the parts of OAuth2 without an event loop
 * (the providers' presets, the token file, the token endpoint's
 * replies), for config.c, oauth2.c and authorize.c.
 */

#ifndef OAUTH2_H
#define OAUTH2_H

#include <time.h>

/* Which mail service the token is for: Microsoft's scopes differ. */
#define OAUTH2_SERVICE_POP3	0
#define OAUTH2_SERVICE_IMAP	1

/* Longest token maild accepts: access tokens run to a few KiB. */
#define OAUTH2_TOKEN_MAX	16384

/* A provider's endpoints and scope; allocated strings (NULL: none). */
struct oauth2_endpoints {
	char		*auth_url;
	char		*token_url;
	char		*device_url;	/* NULL: no device grant */
	char		*scope;
};
int		 oauth2_preset(enum oauth2_provider, const char *, int,
		     struct oauth2_endpoints *);
const char	*oauth2_provider_name(enum oauth2_provider);

/* What the token file holds. */
struct oauth2_tokens {
	char		*refresh;	/* NULL: none */
	char		*access;	/* NULL: none */
	time_t		 expires;	/* of access (unix time) */
};
int		 oauth2_file_read(const char *, struct oauth2_tokens *,
		     char **);
int		 oauth2_file_write(const char *, const char *,
		     const struct oauth2_tokens *, char **);
void		 oauth2_tokens_clear(struct oauth2_tokens *);

/* A token endpoint's reply: 0 with tokens, or -1 and what it said. */
#define OAUTH2_REPLY_OK		0
#define OAUTH2_REPLY_REFUSED	-1	/* an OAuth2 error (error, desc) */
#define OAUTH2_REPLY_BAD	-2	/* not what RFC 6749 says (desc) */
struct oauth2_error {
	char		 error[64];	/* "invalid_grant" */
	char		 desc[256];	/* error_description, escaped */
};
int		 oauth2_token_reply(int, const char *, size_t,
		     struct oauth2_tokens *, struct oauth2_error *);
const char	*oauth2_error_hint(const struct oauth2_error *);
char		*oauth2_form(const char *, ...);
void		 oauth2_json_init(void);
const char	*oauth2_json_string(const char *, size_t, const char *,
		     char *, size_t);
long		 oauth2_json_integer(const char *, size_t, const char *);

#endif
