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
 * http.h: HTTPS POST requests for the OAuth2 token endpoints (http.c), and
 * the one-shot loopback HTTP listener of maild --authorize.
 */

#ifndef HTTP_H
#define HTTP_H

struct event_base;
struct evdns_base;

/* Bounds on what an endpoint may send: token replies are a few KiB. */
#define HTTP_BODY_MAX		65536
#define HTTP_HEADERS_MAX	16384

struct http_reply {
	int		 status;	/* the HTTP status; 0: no reply */
	const char	*body;		/* NUL-terminated (no NUL inside) */
	size_t		 len;
	const char	*error;		/* no reply: why */
	int		 code;		/* no reply: an EXIT_* code */
};
typedef void (*http_cb)(const struct http_reply *, void *);

struct http_req;
struct http_req	*http_post(struct event_base *, struct evdns_base *,
		    const char *, const char *, const char *, int, http_cb,
		    void *);
void		 http_cancel(struct http_req *);
int		 http_url_check(const char *, int, char *, size_t);

/* A GET to http://127.0.0.1:port/: its query, or NULL at the deadline. */
typedef void (*http_listen_cb)(const char *, void *);
struct http_listener;
struct http_listener *http_listen(struct event_base *, int *, http_listen_cb,
		    void *, char **);
void		 http_listen_close(struct http_listener *);

#endif
