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
	char				 errors[512];
	char				 addr[64];
	net_connect_cb			 cb;
	void				*arg;
};

static void	net_resolved_cb(int, struct evutil_addrinfo *, void *);
static void	net_try_next(struct net_connect *);
static void	net_connect_ev_cb(evutil_socket_t, short, void *);
static void	net_done(struct net_connect *, int, const char *);

/* "[::1]:995" or "127.0.0.1:995". */
void
net_addr_string(const struct sockaddr *sa, char *buf, size_t size)
{
	char	host[64];
	int	port = 0;

	host[0] = '\0';
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const void *)sa;

		evutil_inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
		port = ntohs(s6->sin6_port);
		snprintf(buf, size, "[%s]:%d", host, port);
	} else if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *s4 = (const void *)sa;

		evutil_inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
		port = ntohs(s4->sin_port);
		snprintf(buf, size, "%s:%d", host, port);
	} else
		snprintf(buf, size, "?");
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
	char			 msg[256];

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
		snprintf(msg, sizeof msg, "cannot resolve %s: %s", nc->host,
		    result != 0 ? evutil_gai_strerror(result) :
		    "no addresses");
		/* Report from a fresh callback: we may be inside net_connect. */
		nc->ai = NULL;
		snprintf(nc->errors, sizeof nc->errors, "%s", msg);
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

/* Try the next address, or give up. */
static void
net_try_next(struct net_connect *nc)
{
	struct timeval	 tv = { nc->timeout, 0 };
	struct evutil_addrinfo *ai;
	int		 fd;
	size_t		 o;

	for (;;) {
		ai = nc->cur == NULL ? nc->ai : nc->cur->ai_next;
		nc->cur = ai;
		if (ai == NULL) {
			char	msg[700];

			snprintf(msg, sizeof msg, "cannot connect to %s port %d: "
			    "%s", nc->host, nc->port, nc->errors);
			net_done(nc, -1, msg);
			return;
		}
		net_addr_string(ai->ai_addr, nc->addr, sizeof nc->addr);
		fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK |
		    SOCK_CLOEXEC, IPPROTO_TCP);
		if (fd != -1) {
			if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 ||
			    errno == EINPROGRESS) {
				nc->fd = fd;
				nc->ev = event_new(nc->base, fd, EV_WRITE,
				    net_connect_ev_cb, nc);
				event_add(nc->ev, &tv);
				log_debug("%s connecting to %s (%s)",
				    nc->label, nc->host, nc->addr);
				return;
			}
			close(fd);
		}
		o = strlen(nc->errors);
		snprintf(nc->errors + o, sizeof nc->errors - o, "%s%s: %s",
		    o ? "; " : "", nc->addr, strerror(errno));
	}
}

static void
net_connect_ev_cb(evutil_socket_t fd, short what, void *arg)
{
	struct net_connect	*nc = arg;
	int			 err = 0, one = 1;
	socklen_t		 len = sizeof err;
	size_t			 o;

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
	o = strlen(nc->errors);
	snprintf(nc->errors + o, sizeof nc->errors - o, "%s%s: %s",
	    o ? "; " : "", nc->addr, strerror(err));
	net_try_next(nc);
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
