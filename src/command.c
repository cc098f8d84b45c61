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
 * command.c: run a user's command ("/bin/sh -c ...") without blocking the
 * event loop: an MDA with a message on its standard input, the
 * on-new-mail hook with a list of files.  Its input is written as it
 * drains, its output (standard output and error together) kept up to a
 * bound for the log, its time limited (then its whole process group is
 * killed), its exit status reported once, from the event loop.  It gets
 * stdin, stdout, stderr and nothing else of maild's.
 *
 * It has ended when it has exited, not when its output has: a child it
 * left in the background ("notify-send ... &") may hold that open for
 * long.  So its exit is looked for every COMMAND_POLL_MS while it runs
 * (at once when its output ends), and what it printed until then is
 * what is reported.
 */

#include "config.h"

#include <sys/wait.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "maild.h"

/* Output kept for the log; the rest is read and dropped. */
#define COMMAND_OUTPUT_MAX	4096
#define COMMAND_CHUNK		(64U << 10)
/* How often to look for its exit while its output is open, and after. */
#define COMMAND_POLL_MS		50
#define COMMAND_POLL_EOF_MS	10

struct command {
	struct event_base	*base;
	pid_t			 pid;
	int			 in, out;	/* our ends of the pipes */
	int			 infile;	/* what goes in after inbuf */
	struct evbuffer		*inbuf;
	struct event		*inev, *outev, *timer, *waitev;
	int			 eof;		/* its output has ended */
	char			 output[COMMAND_OUTPUT_MAX + 1];
	size_t			 outlen;
	command_done_cb		 cb;
	void			*arg;
};

static void	command_write_cb(evutil_socket_t, short, void *);
static void	command_read_cb(evutil_socket_t, short, void *);
static void	command_timer_cb(evutil_socket_t, short, void *);
static void	command_wait_cb(evutil_socket_t, short, void *);
static void	command_end(struct command *, int);
static void	command_wait_later(struct command *);

/*
 * Start "sh -c cmd" with env (NULL-terminated "NAME=value" strings added
 * to maild's environment).  Its input: the bytes of inbuf (may be NULL),
 * then the rest of the file infd (-1: none), which it takes over.  cb
 * runs once, later, with the exit status (as waitpid gives it, or -1 if
 * it was killed for taking longer than timeout seconds) and its output.
 * NULL and *cause if it cannot be started (infd is closed then).
 */
struct command *
command_run(struct event_base *base, const char *cmd, char *const *env,
    const void *inbuf, size_t inlen, int infd, int timeout,
    command_done_cb cb, void *arg, char **cause)
{
	struct command	*c;
	struct timeval	 tv = { timeout, 0 };
	int		 pin[2] = { -1, -1 }, pout[2] = { -1, -1 }, devnull;
	pid_t		 pid;
	sigset_t	 set;
	size_t		 i;

	if (pipe2(pin, O_CLOEXEC) == -1 || pipe2(pout, O_CLOEXEC) == -1) {
		xasprintf(cause, "pipe: %s", strerror(errno));
		goto fail;
	}
	if ((pid = fork()) == -1) {
		xasprintf(cause, "fork: %s", strerror(errno));
		goto fail;
	}
	if (pid == 0) {
		setpgid(0, 0);
		signal(SIGPIPE, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGUSR1, SIG_DFL);
		sigemptyset(&set);
		sigprocmask(SIG_SETMASK, &set, NULL);
		if (pin[0] != -1)
			dup2(pin[0], STDIN_FILENO);
		else if ((devnull = open("/dev/null", O_RDONLY)) != -1)
			dup2(devnull, STDIN_FILENO);
		dup2(pout[1], STDOUT_FILENO);
		dup2(pout[1], STDERR_FILENO);
		/* Nothing of maild's but the three standard descriptors. */
		closefrom(STDERR_FILENO + 1);
		for (i = 0; env != NULL && env[i] != NULL; i++)
			putenv(env[i]);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	setpgid(pid, pid);	/* as the child does: whoever runs first */
	close(pin[0]);
	close(pout[1]);
	c = xcalloc(1, sizeof *c);
	c->base = base;
	c->pid = pid;
	c->in = pin[1];
	c->out = pout[0];
	c->infile = infd;
	c->cb = cb;
	c->arg = arg;
	c->inbuf = evbuffer_new();
	if (inlen > 0)
		evbuffer_add(c->inbuf, inbuf, inlen);
	evutil_make_socket_nonblocking(c->in);
	evutil_make_socket_nonblocking(c->out);
	c->inev = event_new(base, c->in, EV_WRITE | EV_PERSIST,
	    command_write_cb, c);
	c->outev = event_new(base, c->out, EV_READ | EV_PERSIST,
	    command_read_cb, c);
	c->timer = evtimer_new(base, command_timer_cb, c);
	c->waitev = evtimer_new(base, command_wait_cb, c);
	event_add(c->inev, NULL);
	event_add(c->outev, NULL);
	evtimer_add(c->timer, &tv);
	command_wait_later(c);
	return (c);

fail:
	for (i = 0; i < 2; i++) {
		if (pin[i] != -1)
			close(pin[i]);
		if (pout[i] != -1)
			close(pout[i]);
	}
	if (infd != -1)
		close(infd);
	return (NULL);
}

/* Stop feeding it: it has all, or it stopped reading. */
static void
command_close_in(struct command *c)
{
	if (c->inev != NULL) {
		event_free(c->inev);
		c->inev = NULL;
	}
	if (c->in != -1)
		close(c->in);
	c->in = -1;
	if (c->infile != -1)
		close(c->infile);
	c->infile = -1;
}

static void
command_write_cb(evutil_socket_t fd, short what, void *arg)
{
	struct command	*c = arg;
	ssize_t		 n;

	for (;;) {
		if (evbuffer_get_length(c->inbuf) == 0) {
			if (c->infile == -1) {
				command_close_in(c);
				return;
			}
			n = evbuffer_read(c->inbuf, c->infile, COMMAND_CHUNK);
			if (n <= 0) {
				command_close_in(c);	/* end of file */
				return;
			}
		}
		n = evbuffer_write(c->inbuf, fd);
		if (n == -1) {
			if (errno == EAGAIN || errno == EINTR)
				return;
			/* EPIPE: it does not want the rest; its status says. */
			command_close_in(c);
			return;
		}
	}
}

/* Read what it printed so far; 1 at the end of its output. */
static int
command_drain(struct command *c)
{
	char		 buf[4096];
	ssize_t		 n;
	size_t		 k;

	if (c->out == -1)
		return (1);
	for (;;) {
		n = read(c->out, buf, sizeof buf);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			return (0);
		if (n <= 0)
			return (1);
		k = (size_t)n;
		if (k > COMMAND_OUTPUT_MAX - c->outlen)
			k = COMMAND_OUTPUT_MAX - c->outlen;
		memcpy(c->output + c->outlen, buf, k);
		c->outlen += k;
	}
}

static void
command_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct command	*c = arg;

	if (!command_drain(c))
		return;
	/* End of its output: its exit status follows, soon. */
	event_free(c->outev);
	c->outev = NULL;
	close(c->out);
	c->out = -1;
	c->eof = 1;
	command_wait_cb(-1, 0, c);
}

static void
command_wait_later(struct command *c)
{
	struct timeval	 tv = { 0, (suseconds_t)1000 * (c->eof ?
			    COMMAND_POLL_EOF_MS : COMMAND_POLL_MS) };

	evtimer_add(c->waitev, &tv);
}

/* Has it exited?  Then it has ended, whatever holds its output open. */
static void
command_wait_cb(evutil_socket_t fd, short what, void *arg)
{
	struct command	*c = arg;
	int		 status;
	pid_t		 r;

	r = waitpid(c->pid, &status, WNOHANG);
	if (r == 0) {
		command_wait_later(c);
		return;
	}
	c->pid = -1;
	/* What it wrote before it exited is in the pipe. */
	command_drain(c);
	command_end(c, r == -1 ? -1 : status);
}

static void
command_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct command	*c = arg;

	command_end(c, -1);
}

/* Report and free (a process still running is killed, with its group). */
static void
command_end(struct command *c, int status)
{
	command_done_cb	 cb = c->cb;
	void		*arg = c->arg;
	char		 output[COMMAND_OUTPUT_MAX + 1];
	size_t		 len = c->outlen;

	memcpy(output, c->output, len);
	output[len] = '\0';
	command_cancel(c);
	cb(status, output, arg);
}

/* Forget a command; one still running is killed with its group. */
void
command_cancel(struct command *c)
{
	if (c == NULL)
		return;
	command_close_in(c);
	if (c->outev != NULL)
		event_free(c->outev);
	if (c->out != -1)
		close(c->out);
	if (c->timer != NULL)
		event_free(c->timer);
	if (c->waitev != NULL)
		event_free(c->waitev);
	if (c->pid != -1) {
		if (kill(-c->pid, SIGKILL) == -1)
			kill(c->pid, SIGKILL);
		waitpid(c->pid, NULL, 0);
	}
	evbuffer_free(c->inbuf);
	free(c);
}

/* A status as command_run's callback gives it, in words. */
const char *
command_status(int status, char *buf, size_t size)
{
	if (status == -1)
		snprintf(buf, size, "took too long and was killed");
	else if (WIFEXITED(status))
		snprintf(buf, size, "exited with status %d%s",
		    WEXITSTATUS(status), WEXITSTATUS(status) == 127 ?
		    " (command not found)" : "");
	else if (WIFSIGNALED(status))
		snprintf(buf, size, "was killed by signal %d",
		    WTERMSIG(status));
	else
		snprintf(buf, size, "ended oddly (status %d)", status);
	return (buf);
}
