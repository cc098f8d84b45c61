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
 * http.c: the little HTTP maild speaks, all of it through libevent's
 * evhttp on the daemon's own event loop: an HTTPS POST of a form to an
 * OAuth2 endpoint (the reply's status and body, bounded in size and
 * time), and for maild --authorize a one-shot HTTP listener on 127.0.0.1
 * for the browser's redirect (RFC 8252).
 *
 * TLS is tls.c's, as for the mail servers: the system trust store or the
 * account's ca-file, the host name checked, and a failure explained.  No
 * client certificate and no pins: those are the mail server's.
 */

#include "config.h"

#include <sys/socket.h>

#include <netinet/in.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "maild.h"
#include "http.h"

struct http_req {
	struct event_base	*base;
	struct evhttp_connection *conn;
	struct account_conf	 tac;		/* for tls.c: host, ca-file */
	SSL_CTX			*ctx;
	struct event		*deadline_ev;
	struct event		*done_ev;
	http_cb			 cb;
	void			*arg;
	char			 where[300];	/* "host:port", for messages */
	int			 timeout;
	int			 req_error;	/* enum evhttp_request_error + 1 */
	int			 finished;
	int			 status;
	char			*body;
	size_t			 len;
	char			*error;
	int			 code;
};

struct http_listener {
	struct evhttp		*http;
	http_listen_cb		 cb;
	void			*arg;
	int			 done;
	char			*query;		/* until the page is sent */
};

static void	http_done(struct http_req *);

/*
 * Is url an absolute https:// URL (or, with loopback, an http:// one on
 * 127.0.0.1 or ::1) without user information or fragment?  0, or -1 with
 * why.
 */
int
http_url_check(const char *url, int loopback, char *why, size_t size)
{
	struct evhttp_uri	*u;
	const char		*scheme, *host;
	int			 r = -1;

	if ((u = evhttp_uri_parse_with_flags(url, 0)) == NULL) {
		snprintf(why, size, "'%s' is not a URL", url);
		return (-1);
	}
	scheme = evhttp_uri_get_scheme(u);
	host = evhttp_uri_get_host(u);
	if (scheme == NULL || host == NULL || *host == '\0')
		snprintf(why, size, "'%s' is not an absolute URL (like "
		    "https://login.example.com/token)", url);
	else if (strcasecmp(scheme, "https") != 0 && !(loopback &&
	    strcasecmp(scheme, "http") == 0 && (strcmp(host, "127.0.0.1") ==
	    0 || strcmp(host, "[::1]") == 0)))
		snprintf(why, size, "'%s' is not an https:// URL", url);
	else if (evhttp_uri_get_userinfo(u) != NULL ||
	    evhttp_uri_get_fragment(u) != NULL)
		snprintf(why, size, "'%s' may not have user information or a "
		    "#fragment", url);
	else
		r = 0;
	evhttp_uri_free(u);
	return (r);
}

static void
http_free(struct http_req *r)
{
	if (r->conn != NULL)
		evhttp_connection_free(r->conn);
	if (r->deadline_ev != NULL)
		event_free(r->deadline_ev);
	if (r->done_ev != NULL)
		event_free(r->done_ev);
	SSL_CTX_free(r->ctx);
	free(r->tac.host);
	free(r->tac.ca_file);
	if (r->body != NULL) {
		wipe(r->body, r->len);
		free(r->body);
	}
	free(r->error);
	free(r);
}

/* Forget a request; its callback will not run. */
void
http_cancel(struct http_req *r)
{
	if (r != NULL)
		http_free(r);
}

static void
http_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_req		*r = arg;
	struct http_reply	 reply;

	memset(&reply, 0, sizeof reply);
	reply.status = r->status;
	reply.body = r->body != NULL ? r->body : "";
	reply.len = r->len;
	reply.error = r->error;
	reply.code = r->code;
	r->cb(&reply, r->arg);
	http_free(r);
}

/* Report from a fresh event: evhttp may be deep in a callback. */
static void
http_done(struct http_req *r)
{
	if (r->finished)
		return;
	r->finished = 1;
	evtimer_del(r->deadline_ev);
	event_active(r->done_ev, EV_TIMEOUT, 0);
}

static void
http_fail(struct http_req *r, int code, const char *fmt, ...)
{
	va_list	ap;

	if (r->finished)
		return;
	free(r->error);
	va_start(ap, fmt);
	if (vasprintf(&r->error, fmt, ap) == -1)
		r->error = NULL;
	va_end(ap);
	if (r->error == NULL)
		r->error = xstrdup("out of memory");
	r->code = code;
	http_done(r);
}

static void
http_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	struct http_req	*r = arg;

	http_fail(r, EXIT_TEMPFAIL, "no complete reply from %s within %d "
	    "seconds", r->where, r->timeout);
}

static void
http_error_cb(enum evhttp_request_error err, void *arg)
{
	struct http_req	*r = arg;

	r->req_error = (int)err + 1;
}

/* No reply: say why, as precisely as TLS, DNS and evhttp let us. */
static void
http_no_reply(struct http_req *r)
{
	struct bufferevent	*bev = evhttp_connection_get_bufferevent(r->conn);
	SSL			*ssl = NULL;
	unsigned long		 sslerr = 0;
	char			*msg;
	int			 verify, dnserr = 0;

	if (bev != NULL) {
		ssl = bufferevent_openssl_get_ssl(bev);
		sslerr = bufferevent_get_openssl_error(bev);
		dnserr = bufferevent_socket_get_dns_error(bev);
	}
	if (ssl != NULL && (sslerr != 0 ||
	    SSL_get_verify_result(ssl) != X509_V_OK)) {
		msg = tls_explain_failure(ssl, r->tac.host, sslerr, &verify);
		http_fail(r, verify ? EXIT_NOPERM : EXIT_PROTOCOL, "%s", msg);
		free(msg);
		return;
	}
	if (dnserr != 0) {
		http_fail(r, EXIT_UNAVAIL, "cannot resolve %s: %s", r->tac.host,
		    evutil_gai_strerror(dnserr));
		return;
	}
	switch (r->req_error - 1) {
	case EVREQ_HTTP_TIMEOUT:
		http_fail(r, EXIT_TEMPFAIL, "%s timed out after %d seconds "
		    "without progress", r->where, r->timeout);
		break;
	case EVREQ_HTTP_INVALID_HEADER:
		http_fail(r, EXIT_PROTOCOL, "%s sent a reply that is not HTTP, "
		    "or headers over %d bytes", r->where, HTTP_HEADERS_MAX);
		break;
	case EVREQ_HTTP_DATA_TOO_LONG:
		http_fail(r, EXIT_PROTOCOL, "%s sent a reply over %d bytes",
		    r->where, HTTP_BODY_MAX);
		break;
	case EVREQ_HTTP_EOF:
		http_fail(r, EXIT_TEMPFAIL, "%s closed the connection before "
		    "its reply was complete", r->where);
		break;
	default:
		http_fail(r, EXIT_UNAVAIL, "cannot connect to %s, or the "
		    "connection failed before a reply", r->where);
		break;
	}
}

static void
http_request_cb(struct evhttp_request *req, void *arg)
{
	struct http_req	*r = arg;
	struct evbuffer	*in;
	size_t		 len;

	if (r->finished)
		return;
	if (req == NULL || evhttp_request_get_response_code(req) == 0) {
		http_no_reply(r);
		return;
	}
	in = evhttp_request_get_input_buffer(req);
	len = evbuffer_get_length(in);
	if (len > HTTP_BODY_MAX) {
		http_fail(r, EXIT_PROTOCOL, "%s sent a reply over %d bytes",
		    r->where, HTTP_BODY_MAX);
		return;
	}
	r->status = evhttp_request_get_response_code(req);
	r->body = xmalloc(len + 1);
	evbuffer_remove(in, r->body, len);
	r->body[len] = '\0';
	r->len = len;
	if (memchr(r->body, '\0', len) != NULL) {
		http_fail(r, EXIT_PROTOCOL, "%s sent a reply with a NUL byte",
		    r->where);
		return;
	}
	http_done(r);
}

/* Set up the connection and send the request; -1 with r failed. */
static int
http_send(struct http_req *r, struct evdns_base *dns, const char *url,
    const char *form)
{
	struct evhttp_uri	*u;
	struct evhttp_request	*req;
	struct evkeyvalq	*hdr;
	struct bufferevent	*bev;
	SSL			*ssl;
	const char		*host, *path, *query;
	char			*cause = NULL, *target, why[256], hostport[300];
	int			 port;

	if (http_url_check(url, 0, why, sizeof why) == -1 ||
	    (u = evhttp_uri_parse_with_flags(url, 0)) == NULL) {
		http_fail(r, EXIT_CONFIG, "%s", why);
		return (-1);
	}
	host = evhttp_uri_get_host(u);
	port = evhttp_uri_get_port(u) > 0 ? evhttp_uri_get_port(u) : 443;
	snprintf(hostport, sizeof hostport, "%s:%d", host, port);
	snprintf(r->where, sizeof r->where, "%s", hostport);
	/* An IPv6 literal goes to the resolver and tls.c without []. */
	if (host[0] == '[')
		r->tac.host = xstrndup(host + 1, strcspn(host + 1, "]"));
	else
		r->tac.host = xstrdup(host);
	path = evhttp_uri_get_path(u);
	query = evhttp_uri_get_query(u);
	xasprintf(&target, "%s%s%s", path != NULL && *path != '\0' ? path :
	    "/", query != NULL ? "?" : "", query != NULL ? query : "");
	evhttp_uri_free(u);

	if ((r->ctx = tls_ctx_new(&r->tac, &cause)) == NULL) {
		http_fail(r, EXIT_CONFIG, "%s", cause);
		free(cause);
		free(target);
		return (-1);
	}
	if ((ssl = tls_ssl_new(r->ctx, &r->tac)) == NULL ||
	    (bev = bufferevent_openssl_socket_new(r->base, -1, ssl,
	    BUFFEREVENT_SSL_CONNECTING, BEV_OPT_CLOSE_ON_FREE |
	    BEV_OPT_DEFER_CALLBACKS)) == NULL) {
		SSL_free(ssl);
		http_fail(r, EXIT_SOFTWARE, "cannot set up TLS for %s",
		    r->where);
		free(target);
		return (-1);
	}
	/* The reply is framed by HTTP; a missing close_notify cuts nothing. */
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	r->conn = evhttp_connection_base_bufferevent_new(r->base, dns, bev,
	    r->tac.host, (unsigned short)port);
	if (r->conn == NULL) {
		bufferevent_free(bev);
		http_fail(r, EXIT_SOFTWARE, "cannot set up HTTP for %s",
		    r->where);
		free(target);
		return (-1);
	}
	evhttp_connection_set_timeout(r->conn, r->timeout);
	evhttp_connection_set_retries(r->conn, 0);
	evhttp_connection_set_max_body_size(r->conn, HTTP_BODY_MAX);
	evhttp_connection_set_max_headers_size(r->conn, HTTP_HEADERS_MAX);

	req = evhttp_request_new(http_request_cb, r);
	evhttp_request_set_error_cb(req, http_error_cb);
	hdr = evhttp_request_get_output_headers(req);
	evhttp_add_header(hdr, "Host", port == 443 ? host : hostport);
	evhttp_add_header(hdr, "Content-Type",
	    "application/x-www-form-urlencoded");
	evhttp_add_header(hdr, "Accept", "application/json");
	evhttp_add_header(hdr, "User-Agent", "maild/" PACKAGE_VERSION);
	evhttp_add_header(hdr, "Connection", "close");
	evbuffer_add(evhttp_request_get_output_buffer(req), form, strlen(form));
	if (evhttp_make_request(r->conn, req, EVHTTP_REQ_POST, target) == -1) {
		/* evhttp has freed req */
		http_fail(r, EXIT_SOFTWARE, "cannot send a request to %s",
		    r->where);
		free(target);
		return (-1);
	}
	free(target);
	return (0);
}

/*
 * POST form (application/x-www-form-urlencoded) to url, verifying the
 * server against ca_file (NULL: the system trust store).  cb runs once,
 * later, from the event loop, with the reply or why there is none; after
 * that the request is gone.  timeout bounds the whole exchange.
 */
struct http_req *
http_post(struct event_base *base, struct evdns_base *dns, const char *url,
    const char *ca_file, const char *form, int timeout, http_cb cb, void *arg)
{
	struct http_req	*r;
	struct timeval	 tv = { timeout, 0 };

	r = xcalloc(1, sizeof *r);
	r->base = base;
	r->cb = cb;
	r->arg = arg;
	r->timeout = timeout;
	r->tac.tls_verify = 1;
	r->tac.tls_min_version = 12;
	r->tac.ca_file = ca_file != NULL ? xstrdup(ca_file) : NULL;
	snprintf(r->where, sizeof r->where, "%s", url);
	r->done_ev = event_new(base, -1, 0, http_done_cb, r);
	r->deadline_ev = evtimer_new(base, http_deadline_cb, r);
	evtimer_add(r->deadline_ev, &tv);
	http_send(r, dns, url, form);
	return (r);
}

/* The page went out: now the caller may act (and even exit). */
static void
http_listen_sent_cb(struct evhttp_request *req, void *arg)
{
	struct http_listener	*l = arg;
	char			*query = l->query;

	l->query = NULL;
	if (query != NULL) {
		l->cb(query, l->arg);
		freezero_str(query);
	}
}

static void
http_listen_gencb(struct evhttp_request *req, void *arg)
{
	struct http_listener	*l = arg;
	struct evhttp_uri	*u;
	struct evbuffer		*out;
	const char		*path, *query;

	u = evhttp_uri_parse_with_flags(evhttp_request_get_uri(req), 0);
	path = u != NULL ? evhttp_uri_get_path(u) : NULL;
	query = u != NULL ? evhttp_uri_get_query(u) : NULL;
	if (l->done || path == NULL || strcmp(path, "/") != 0 ||
	    query == NULL) {
		evhttp_send_error(req, HTTP_NOTFOUND, NULL);
		if (u != NULL)
			evhttp_uri_free(u);
		return;
	}
	out = evbuffer_new();
	evbuffer_add_printf(out, "<!DOCTYPE html>\n<html><head><title>maild"
	    "</title></head><body><p>maild got the answer: go back to the "
	    "terminal where maild --authorize runs, it says what "
	    "follows.</p></body></html>\n");
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "text/html; charset=utf-8");
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Connection", "close");
	l->done = 1;
	l->query = xstrdup(query);
	evhttp_uri_free(u);
	evhttp_request_set_on_complete_cb(req, http_listen_sent_cb, l);
	evhttp_send_reply(req, HTTP_OK, "OK", out);
	evbuffer_free(out);
}

/*
 * Listen on 127.0.0.1 on a free port (*port), for one GET to / with a
 * query: cb gets the query.  Everything else is answered 404.
 */
struct http_listener *
http_listen(struct event_base *base, int *port, http_listen_cb cb, void *arg,
    char **cause)
{
	struct http_listener		*l;
	struct evhttp_bound_socket	*bound;
	struct sockaddr_in		 sin;
	socklen_t			 slen = sizeof sin;

	memset(&sin, 0, sizeof sin);
	l = xcalloc(1, sizeof *l);
	l->cb = cb;
	l->arg = arg;
	if ((l->http = evhttp_new(base)) == NULL) {
		free(l);
		xasprintf(cause, "cannot set up an HTTP listener");
		return (NULL);
	}
	evhttp_set_allowed_methods(l->http, EVHTTP_REQ_GET);
	evhttp_set_max_headers_size(l->http, HTTP_HEADERS_MAX);
	evhttp_set_max_body_size(l->http, 0);
	evhttp_set_timeout(l->http, 30);
	evhttp_set_gencb(l->http, http_listen_gencb, l);
	if ((bound = evhttp_bind_socket_with_handle(l->http, "127.0.0.1",
	    0)) == NULL || getsockname(evhttp_bound_socket_get_fd(bound),
	    (struct sockaddr *)&sin, &slen) == -1) {
		xasprintf(cause, "cannot listen on 127.0.0.1: %s",
		    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
		evhttp_free(l->http);
		free(l);
		return (NULL);
	}
	*port = ntohs(sin.sin_port);
	return (l);
}

void
http_listen_close(struct http_listener *l)
{
	if (l == NULL)
		return;
	freezero_str(l->query);
	evhttp_free(l->http);
	free(l);
}
