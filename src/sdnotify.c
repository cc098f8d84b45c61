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
 * sdnotify.c: tell systemd how maild is doing (sd_notify(3)): READY=1,
 * STATUS=, RELOADING=1, STOPPING=1.  Without $NOTIFY_SOCKET, nothing
 * happens.  If configure found libsystemd, its sd_notify() does the work,
 * but the library is only loaded (dlopen) when $NOTIFY_SOCKET says systemd
 * is listening: linked in for good, it and what it pulls in (libgcrypt,
 * three compression libraries) would cost maild a megabyte of memory on
 * every run, a quarter of what a fetch needs.  Without libsystemd, the
 * same datagram goes to $NOTIFY_SOCKET directly, as the protocol is
 * documented to be stable.
 */

#include "config.h"

#include <sys/socket.h>
#include <sys/un.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef HAVE_LIBSYSTEMD
#include <dlfcn.h>
#include <systemd/sd-daemon.h>
#endif

#include "maild.h"

/* Send one datagram to $NOTIFY_SOCKET ("@name" is an abstract socket). */
static int
sdnotify_send(const char *msg)
{
	const char		*path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un	 sun;
	socklen_t		 len;
	size_t			 plen;
	ssize_t			 n;
	int			 fd;

	if (path == NULL || (path[0] != '/' && path[0] != '@'))
		return (0);
	plen = strlen(path);
	if (plen >= sizeof sun.sun_path)
		return (-1);
	memset(&sun, 0, sizeof sun);
	sun.sun_family = AF_UNIX;
	memcpy(sun.sun_path, path, plen);
	if (path[0] == '@')
		sun.sun_path[0] = '\0';
	len = offsetof(struct sockaddr_un, sun_path) + plen;
	if ((fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)) == -1)
		return (-1);
	n = sendto(fd, msg, strlen(msg), MSG_NOSIGNAL, (struct sockaddr *)&sun,
	    len);
	close(fd);
	return (n == -1 ? -1 : 0);
}

#ifdef HAVE_LIBSYSTEMD
/* libsystemd's sd_notify, loaded on first use; NULL if it cannot be. */
static __typeof__(sd_notify) *
sdnotify_libsystemd(void)
{
	static __typeof__(sd_notify)	*fn;
	static int			 tried;
	void				*h;

	if (!tried) {
		tried = 1;
		if ((h = dlopen("libsystemd.so.0", RTLD_NOW | RTLD_LOCAL)) !=
		    NULL)
			*(void **)&fn = dlsym(h, "sd_notify");
		if (fn == NULL)
			log_debug("libsystemd not loaded; notifying systemd "
			    "directly");
	}
	return (fn);
}
#endif

/* Send a notification, printf-style; errors are logged at debug level. */
void
sdnotify(const char *fmt, ...)
{
	char	msg[512];
	va_list	ap;
	int	r;

	if (getenv("NOTIFY_SOCKET") == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
#ifdef HAVE_LIBSYSTEMD
	if (sdnotify_libsystemd() != NULL) {
		r = sdnotify_libsystemd()(0, msg);
		if (r < 0)
			errno = -r;
	} else
		r = sdnotify_send(msg);
#else
	r = sdnotify_send(msg);
#endif
	if (r < 0)
		log_debug("sd_notify(\"%s\"): %s", msg, strerror(errno));
}

/* RELOADING=1 with the monotonic time systemd wants alongside it. */
void
sdnotify_reloading(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	sdnotify("RELOADING=1\nMONOTONIC_USEC=%llu",
	    (unsigned long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
}
