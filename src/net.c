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
 * net.c: from a host name to a connected TCP socket, without blocking.
 * The name is resolved with evdns (which also reads /etc/hosts and accepts
 * address literals) and every address it returns, IPv6 and IPv4, is tried
 * in turn until one accepts; the errors of all attempts are reported.
 */

#include "config.h"

#include <sys/socket.h>

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>
#include <event2/util.h>

#include "maild.h"
#include "net.h"

struct net_connect {
	struct event_base		*base;
	struct evdns_getaddrinfo_request *req;
	struct evutil_addrinfo		*ai;	/* all addresses */
	struct evutil_addrinfo		*cur;	/* the one being tried */
	struct event			*ev;
	int				 fd;
	int				 timeout;
	int				 resolving;
	char				*host;
	char				*label;		/* for logs */
	int				 port;
	char				 errors[512];	/* "addr: why; ..." */
	int				 tried;		/* addresses */
	int				 lasterr;	/* errno of the last */
	char				 addr[64];	/* "[::1]:995" */
	char				 host_addr[64];	/* "[::1]" */
	net_connect_cb			 cb;
	void				*arg;
};

static void	net_resolved_cb(int, struct evutil_addrinfo *, void *);
static void	net_resolve_error(struct net_connect *, int);
static void	net_try_next(struct net_connect *);
static void	net_failed(struct net_connect *, int);
static void	net_give_up(struct net_connect *);
static void	net_connect_ev_cb(evutil_socket_t, short, void *);
static void	net_done(struct net_connect *, int, const char *);

/* "[::1]" or "127.0.0.1"; returns the port. */
static int
net_addr_host(const struct sockaddr *sa, char *buf, size_t size)
{
	char	host[INET6_ADDRSTRLEN];

	host[0] = '\0';
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const void *)sa;

		evutil_inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
		snprintf(buf, size, "[%s]", host);
		return (ntohs(s6->sin6_port));
	}
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const void *)sa;

		evutil_inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
		snprintf(buf, size, "%s", host);
		return (ntohs(s4->sin_port));
	}
	snprintf(buf, size, "?");
	return (0);
}

/* "[::1]:995" or "127.0.0.1:995". */
static void
net_addr_string(const struct sockaddr *sa, char *buf, size_t size)
{
	char	host[INET6_ADDRSTRLEN + 2];
	int	port;

	port = net_addr_host(sa, host, sizeof host);
	snprintf(buf, size, "%s:%d", host, port);
}

/*
 * Start connecting.  cb runs exactly once, later, with a connected
 * non-blocking socket or -1 and an error.
 */
struct net_connect *
net_connect(struct event_base *base, struct evdns_base *dns, const char *label,
    const char *host, int port, int timeout, net_connect_cb cb, void *arg)
{
	struct net_connect		*nc;
	struct evutil_addrinfo		 hints;
	struct evdns_getaddrinfo_request *req;
	char				 service[16];

	nc = xcalloc(1, sizeof *nc);
	nc->base = base;
	nc->fd = -1;
	nc->timeout = timeout;
	nc->host = xstrdup(host);
	nc->label = xstrdup(label);
	nc->port = port;
	nc->cb = cb;
	nc->arg = arg;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;
	snprintf(service, sizeof service, "%d", port);
	nc->resolving = 1;
	/* The callback may run before this returns (literals, /etc/hosts). */
	req = evdns_getaddrinfo(dns, host, service, &hints, net_resolved_cb, nc);
	if (nc->resolving)
		nc->req = req;
	return (nc);
}

/* Stop, closing any socket; cb is not called. */
void
net_connect_cancel(struct net_connect *nc)
{
	if (nc == NULL)
		return;
	if (nc->resolving && nc->req != NULL) {
		/* The callback runs with EVUTIL_EAI_CANCEL and frees nc. */
		nc->cb = NULL;
		evdns_getaddrinfo_cancel(nc->req);
		return;
	}
	if (nc->ev != NULL)
		event_free(nc->ev);
	if (nc->fd != -1)
		close(nc->fd);
	if (nc->ai != NULL)
		evutil_freeaddrinfo(nc->ai);
	free(nc->host);
	free(nc->label);
	free(nc);
}

static void
net_resolved_cb(int result, struct evutil_addrinfo *ai, void *arg)
{
	struct net_connect	*nc = arg;

	nc->resolving = 0;
	nc->req = NULL;
	if (nc->cb == NULL) {		/* cancelled */
		if (ai != NULL)
			evutil_freeaddrinfo(ai);
		free(nc->host);
		free(nc->label);
		free(nc);
		return;
	}
	if (result != 0 || ai == NULL) {
		if (ai != NULL)
			evutil_freeaddrinfo(ai);
		net_resolve_error(nc, result);
		/* Report from a fresh callback: we may be inside net_connect. */
		nc->ai = NULL;
		nc->cur = NULL;
		nc->ev = event_new(nc->base, -1, 0, net_connect_ev_cb, nc);
		event_active(nc->ev, EV_TIMEOUT, 0);
		return;
	}
	nc->ai = ai;
	nc->cur = NULL;
	/* Start from a fresh callback too, for the same reason. */
	nc->ev = event_new(nc->base, -1, 0, net_connect_ev_cb, nc);
	event_active(nc->ev, EV_READ, 0);
}

/*
 * Why a name did not resolve, in words a user can act on.  libevent's own
 * texts are BSD's ("nodename nor servname provided, or not known").  Only
 * NXDOMAIN is EAI_NONAME; evdns reports everything else (no answer,
 * SERVFAIL, an answer without addresses) as EAI_FAIL, "non-recoverable",
 * though most of it passes: maild tries again at the next poll anyway.
 */
static void
net_resolve_error(struct net_connect *nc, int result)
{
	const char	*why;

	switch (result) {
	case 0:
		why = "the name has no IPv4 or IPv6 address";
		break;
	case EVUTIL_EAI_NONAME:
		why = "no such host; check the host name";
		break;
	case EVUTIL_EAI_AGAIN:
		why = "temporary failure in name resolution; maild tries "
		    "again at the next poll";
		break;
	case EVUTIL_EAI_FAIL:
		why = "the name servers gave no address (no answer, a "
		    "failure, or the name has none); maild tries again at the "
		    "next poll";
		break;
	default:
		why = evutil_gai_strerror(result);
		break;
	}
	snprintf(nc->errors, sizeof nc->errors, "cannot resolve %s: %s",
	    nc->host, why);
}

/* Try the next address, or give up. */
static void
net_try_next(struct net_connect *nc)
{
	struct timeval	 tv = { nc->timeout, 0 };
	struct evutil_addrinfo *ai;
	int		 fd, err;

	ai = nc->cur == NULL ? nc->ai : nc->cur->ai_next;
	nc->cur = ai;
	if (ai == NULL) {
		net_give_up(nc);
		return;
	}
	net_addr_string(ai->ai_addr, nc->addr, sizeof nc->addr);
	net_addr_host(ai->ai_addr, nc->host_addr, sizeof nc->host_addr);
	fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    IPPROTO_TCP);
	if (fd == -1) {
		net_failed(nc, errno);
		return;
	}
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) == -1 &&
	    errno != EINPROGRESS) {
		err = errno;
		close(fd);
		net_failed(nc, err);
		return;
	}
	nc->fd = fd;
	nc->ev = event_new(nc->base, fd, EV_WRITE, net_connect_ev_cb, nc);
	event_add(nc->ev, &tv);
	log_debug("%s connecting to %s (%s)", nc->label, nc->host, nc->addr);
}

/* The address being tried failed with errno err: note why, go on. */
static void
net_failed(struct net_connect *nc, int err)
{
	size_t	o = strlen(nc->errors);

	snprintf(nc->errors + o, sizeof nc->errors - o, "%s%s: %s",
	    o ? "; " : "", nc->host_addr, strerror(err));
	nc->tried++;
	nc->lasterr = err;
	net_try_next(nc);
}

/*
 * Every address failed.  Name the host and port once, then why: with one
 * address "cannot connect to localhost (127.0.0.1) port 1: Connection
 * refused", or without the address when the host is one; with several,
 * each address and its error.
 */
static void
net_give_up(struct net_connect *nc)
{
	char		msg[700];
	unsigned char	buf[sizeof(struct in6_addr)];

	if (nc->tried != 1)
		snprintf(msg, sizeof msg, "cannot connect to %s port %d: %s",
		    nc->host, nc->port, nc->errors);
	else if (evutil_inet_pton(AF_INET, nc->host, buf) == 1 ||
	    evutil_inet_pton(AF_INET6, nc->host, buf) == 1)
		snprintf(msg, sizeof msg, "cannot connect to %s port %d: %s",
		    nc->host, nc->port, strerror(nc->lasterr));
	else
		snprintf(msg, sizeof msg, "cannot connect to %s (%s) port %d: "
		    "%s", nc->host, nc->host_addr, nc->port,
		    strerror(nc->lasterr));
	net_done(nc, -1, msg);
}

static void
net_connect_ev_cb(evutil_socket_t fd, short what, void *arg)
{
	struct net_connect	*nc = arg;
	int			 err = 0, one = 1;
	socklen_t		 len = sizeof err;

	event_free(nc->ev);
	nc->ev = NULL;
	if (fd == -1) {
		if (what & EV_TIMEOUT)		/* resolution failed */
			net_done(nc, -1, nc->errors);
		else
			net_try_next(nc);	/* resolution worked */
		return;
	}
	if (what & EV_TIMEOUT)
		err = ETIMEDOUT;
	else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
		err = errno;
	if (err == 0) {
		/* Commands are small and sent in bursts; do not delay them. */
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		nc->fd = -1;
		log_debug("%s connected to %s (%s)", nc->label, nc->host,
		    nc->addr);
		net_done(nc, fd, nc->addr);
		return;
	}
	close(fd);
	nc->fd = -1;
	net_failed(nc, err);
}

static void
net_done(struct net_connect *nc, int fd, const char *msg)
{
	net_connect_cb	 cb = nc->cb;
	void		*arg = nc->arg;
	char		 copy[700];

	snprintf(copy, sizeof copy, "%s", msg);
	nc->cb = NULL;
	net_connect_cancel(nc);
	cb(fd, copy, arg);
}
