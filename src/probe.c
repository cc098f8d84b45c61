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
 * probe.c: "maild --check" looks at where mail goes when it does not go
 * into a Maildir, before any message is fetched: the LMTP server is asked
 * whether it would take mail for the recipient (LHLO, MAIL FROM:<>, RCPT
 * TO, then QUIT: no message is sent), and an mda's program is looked for.
 * A wrong socket path, a socket maild may not use (Dovecot's is often
 * 0600 for its own user) or a recipient the server does not know would
 * otherwise show only after the first fetch, as refused deliveries.
 *
 * This runs before the event loop starts and blocks, within a deadline:
 * --check is a command for a human, and nothing else is going on yet.
 */

#include "config.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "maild.h"

struct probe {
	int	 fd;
	double	 deadline;		/* now_mono() */
	char	 buf[LMTP_LINE_MAX + 2];
	size_t	 len;
	char	 last[LMTP_LINE_MAX + 1];	/* a reply's last line */
};

/* Wait until fd is ready for events; -1 (errno ETIMEDOUT) at the deadline. */
static int
probe_wait(struct probe *p, short events)
{
	struct pollfd	pfd;
	double		left;
	int		n;

	for (;;) {
		if ((left = p->deadline - now_mono()) <= 0) {
			errno = ETIMEDOUT;
			return (-1);
		}
		pfd.fd = p->fd;
		pfd.events = events;
		n = poll(&pfd, 1, (int)(left * 1000) + 1);
		if (n > 0)
			return (0);
		if (n == -1 && errno != EINTR)
			return (-1);
	}
}

static int
probe_send(struct probe *p, const char *line)
{
	size_t	 len = strlen(line), off = 0;
	ssize_t	 n;

	while (off < len) {
		if (probe_wait(p, POLLOUT) == -1)
			return (-1);
		n = send(p->fd, line + off, len - off, MSG_NOSIGNAL);
		if (n == -1 && errno != EINTR && errno != EAGAIN)
			return (-1);
		if (n > 0)
			off += (size_t)n;
	}
	return (0);
}

/* One line into p->last, CRLF removed; -1 with *why set on failure. */
static int
probe_line(struct probe *p, const char **why)
{
	char	*nl;
	size_t	 n;
	ssize_t	 r;

	while ((nl = memchr(p->buf, '\n', p->len)) == NULL) {
		if (p->len > LMTP_LINE_MAX) {
			*why = "a reply line longer than 1000 bytes";
			return (-1);
		}
		if (probe_wait(p, POLLIN) == -1) {
			*why = errno == ETIMEDOUT ? "no answer in time" :
			    strerror(errno);
			return (-1);
		}
		r = recv(p->fd, p->buf + p->len, sizeof p->buf - p->len, 0);
		if (r == 0) {
			*why = "the server closed the connection";
			return (-1);
		}
		if (r == -1 && errno != EINTR && errno != EAGAIN) {
			*why = strerror(errno);
			return (-1);
		}
		if (r > 0)
			p->len += (size_t)r;
	}
	n = (size_t)(nl - p->buf);
	if (n > 0 && p->buf[n - 1] == '\r')
		n--;
	if (n > LMTP_LINE_MAX)
		n = LMTP_LINE_MAX;
	memcpy(p->last, p->buf, n);
	p->last[n] = '\0';
	p->len -= (size_t)(nl + 1 - p->buf);
	memmove(p->buf, nl + 1, p->len);
	return (0);
}

/*
 * One reply (several lines "250-..." up to "250 ..."): its code, or -1
 * with *why set.  Its last line stays in p->last for the messages.
 */
static int
probe_reply(struct probe *p, const char **why)
{
	int	i, code, more;

	for (i = 0; i < LMTP_REPLY_LINES_MAX; i++) {
		if (probe_line(p, why) == -1)
			return (-1);
		code = lmtp_reply_code(p->last, strlen(p->last), &more);
		if (code == -1) {
			*why = "this is not an LMTP server (a reply without "
			    "a reply code)";
			return (-1);
		}
		if (!more)
			return (code);
	}
	*why = "a reply of more than 100 lines";
	return (-1);
}

/* A non-blocking connect to one address, finished within the deadline. */
static int
probe_connect_addr(struct probe *p, const struct addrinfo *ai)
{
	int		err = 0;
	socklen_t	len = sizeof err;

	p->fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC |
	    SOCK_NONBLOCK, ai->ai_protocol);
	if (p->fd == -1)
		return (-1);
	if (connect(p->fd, ai->ai_addr, ai->ai_addrlen) == 0)
		return (0);
	if (errno != EINPROGRESS || probe_wait(p, POLLOUT) == -1 ||
	    getsockopt(p->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
		err = errno;
	if (err == 0)
		return (0);
	close(p->fd);
	p->fd = -1;
	errno = err;
	return (-1);
}

/* Connect to lmtp = "unix:/path" or "host:port"; -1 with *msg set. */
static int
probe_connect(struct probe *p, const char *server, char **msg)
{
	struct sockaddr_un	 sun;
	struct addrinfo		 hints, *res, *ai;
	struct passwd		*pw;
	char			 host[256], port_s[8];
	int			 port, r;

	if (strncmp(server, "unix:", 5) == 0) {
		memset(&sun, 0, sizeof sun);
		sun.sun_family = AF_UNIX;
		if (strlen(server + 5) >= sizeof sun.sun_path) {
			xasprintf(msg, "the socket path is too long");
			return (-1);
		}
		memcpy(sun.sun_path, server + 5, strlen(server + 5));
		/* Non-blocking: a full backlog is EAGAIN, not a wait. */
		p->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC |
		    SOCK_NONBLOCK, 0);
		if (p->fd != -1 && connect(p->fd, (struct sockaddr *)&sun,
		    sizeof sun) == 0)
			return (0);
		r = errno;
		if (p->fd != -1)
			close(p->fd);
		p->fd = -1;
		if (r == EACCES && (pw = getpwuid(geteuid())) != NULL)
			xasprintf(msg, "cannot connect to %s: %s; maild runs as "
			    "%s, which may not use that socket (Dovecot: see "
			    "unix_listener lmtp's mode, user and group)",
			    server + 5, strerror(r), pw->pw_name);
		else
			xasprintf(msg, "cannot connect to %s: %s%s", server + 5,
			    strerror(r), r == ENOENT || r == ECONNREFUSED ?
			    "; is the LMTP server running, and is this its "
			    "socket?" : "");
		return (-1);
	}
	if (lmtp_host_port(server, host, sizeof host, &port) == -1) {
		xasprintf(msg, "\"%s\" is not host:port", server);
		return (-1);
	}
	snprintf(port_s, sizeof port_s, "%d", port);
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	if ((r = getaddrinfo(host, port_s, &hints, &res)) != 0) {
		xasprintf(msg, "cannot resolve %s: %s", host, gai_strerror(r));
		return (-1);
	}
	r = ETIMEDOUT;
	for (ai = res; ai != NULL; ai = ai->ai_next) {
		if (probe_connect_addr(p, ai) == 0)
			break;
		r = errno;
	}
	freeaddrinfo(res);
	if (p->fd == -1) {
		xasprintf(msg, "cannot connect to %s: %s", server, strerror(r));
		return (-1);
	}
	return (0);
}

/* One command and its reply; -1 with *msg set unless the code is want. */
static int
probe_step(struct probe *p, const char *cmd, int want, const char *what,
    char **msg)
{
	char		 esc[LOG_ESCAPE_MAX];
	const char	*why = NULL;
	int		 code;

	if (cmd != NULL && probe_send(p, cmd) == -1) {
		xasprintf(msg, "%s: %s", what, strerror(errno));
		return (-1);
	}
	if ((code = probe_reply(p, &why)) == -1) {
		xasprintf(msg, "%s: %s", what, why);
		return (-1);
	}
	if (code != want) {
		xasprintf(msg, "%s: %s", what, log_escape(esc, sizeof esc,
		    p->last, strlen(p->last)));
		return (-1);
	}
	return (0);
}

/*
 * Would the LMTP server take mail for rcpt?  0 if it accepted the
 * recipient (nothing is delivered: the transaction ends before DATA),
 * else -1 with *msg saying what failed, in the server's words if it
 * answered.
 */
int
probe_lmtp(const char *server, const char *rcpt, int timeout, char **msg)
{
	struct probe	 p;
	char		 cmd[600];
	int		 r = -1;

	memset(&p, 0, sizeof p);
	p.fd = -1;
	p.deadline = now_mono() + timeout;
	*msg = NULL;
	if (probe_connect(&p, server, msg) == -1)
		return (-1);
	if (probe_step(&p, NULL, 220, "its greeting", msg) == -1 ||
	    probe_step(&p, "LHLO localhost\r\n", 250, "LHLO", msg) == -1 ||
	    probe_step(&p, "MAIL FROM:<>\r\n", 250, "MAIL FROM", msg) == -1)
		goto out;
	snprintf(cmd, sizeof cmd, "RCPT TO:<%s>\r\n", rcpt);
	if (probe_step(&p, cmd, 250, "the recipient", msg) == -1)
		goto out;
	r = 0;
	(void)probe_send(&p, "QUIT\r\n");
out:
	close(p.fd);
	return (r);
}

/*
 * Can the mda's program be run?  Only a command line that starts with a
 * plain word (no shell syntax, no variable assignment) is looked at: its
 * program must be an executable file, by path or in $PATH as sh would
 * search it.  0 if so or if it cannot be told; -1 with *msg if not.
 */
int
probe_mda(const char *cmd, char **msg)
{
	const char	*path, *home, *dir, *end;
	char		 word[PATH_MAX], file[PATH_MAX];
	/* Words sh runs itself, whatever $PATH holds. */
	static const char *const builtins[] = { ".", "alias", "case", "cd",
	    "command", "echo", "eval", "exec", "exit", "export", "false",
	    "for", "getopts", "hash", "if", "kill", "local", "printf", "pwd",
	    "read", "readonly", "return", "set", "shift", "test", "times",
	    "trap", "true", "type", "ulimit", "umask", "unalias", "unset",
	    "until", "wait", "while" };
	size_t		 i, n, dlen;
	struct stat	 sb;

	*msg = NULL;
	cmd += strspn(cmd, " \t");
	n = strcspn(cmd, " \t\n");
	if (n == 0 || n >= sizeof word ||
	    strspn(cmd, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	    "0123456789/._+-~,@%") < n || memchr(cmd, '=', n) != NULL)
		return (0);
	memcpy(word, cmd, n);
	word[n] = '\0';
	for (i = 0; i < sizeof builtins / sizeof builtins[0]; i++) {
		if (strcmp(word, builtins[i]) == 0)
			return (0);
	}
	if (strncmp(word, "~/", 2) == 0 && (home = getenv("HOME")) != NULL) {
		if ((size_t)snprintf(file, sizeof file, "%s%s", home,
		    word + 1) >= sizeof file)
			return (0);
		memcpy(word, file, sizeof word);
	}
	if (strchr(word, '/') != NULL) {
		if (stat(word, &sb) == -1) {
			xasprintf(msg, "%s: %s", word, strerror(errno));
			return (-1);
		}
		if (!S_ISREG(sb.st_mode) || access(word, X_OK) == -1) {
			xasprintf(msg, "%s: not an executable file", word);
			return (-1);
		}
		return (0);
	}
	if ((path = getenv("PATH")) == NULL || *path == '\0')
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:"
		    "/usr/bin:/sbin:/bin";	/* sh's own */
	for (dir = path; dir != NULL; dir = *end != '\0' ? end + 1 : NULL) {
		end = dir + strcspn(dir, ":");
		dlen = (size_t)(end - dir);
		if (snprintf(file, sizeof file, "%.*s/%s", (int)(dlen > 0 ?
		    dlen : 1), dlen > 0 ? dir : ".", word) >= (int)sizeof file)
			continue;
		if (stat(file, &sb) == 0 && S_ISREG(sb.st_mode) &&
		    access(file, X_OK) == 0)
			return (0);
	}
	xasprintf(msg, "%s: not found in PATH (%s)", word, path);
	return (-1);
}
