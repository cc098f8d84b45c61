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
 * secret.c: get an account's password (or OAuth token) when a session
 * needs it: from the config, from the first line of a file, or from the
 * first line a command prints; or, with built-in OAuth2, an access token
 * from oauth2.c.  The command runs without blocking the event loop, with
 * bounded time and output, and its exit status is checked.  Buffers that
 * held a secret are wiped.
 */

#include "config.h"

#include <sys/stat.h>
#include <sys/wait.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "maild.h"

#define SECRET_MAX	16384	/* OAuth2 access tokens run to a few KiB */

struct secret_job {
	struct event_base		*base;
	const struct account_conf	*ac;
	struct event			*ev;		/* pipe or deferred start */
	struct event			*timer;
	struct oauth2_job		*oauth2;
	int				 timeout;
	pid_t				 pid;
	int				 fd;
	int				 eof;
	char				 buf[SECRET_MAX + 2];
	size_t				 len;
	double				 deadline;
	secret_cb			 cb;
	void				*arg;
};

static void	secret_start_cb(evutil_socket_t, short, void *);
static void	secret_read_cb(evutil_socket_t, short, void *);
static void	secret_wait_cb(evutil_socket_t, short, void *);
static void	secret_finish(struct secret_job *, const char *, int);
static int	secret_run(struct secret_job *, char **);
static int	secret_read_file(struct secret_job *, const char *, int,
		    char **);

/*
 * Start getting an account's secret; cb runs once, from the event loop,
 * with the secret or an error.  timeout bounds a password-command.
 */
struct secret_job *
secret_get(struct event_base *base, const struct account_conf *ac, int timeout,
    secret_cb cb, void *arg)
{
	struct secret_job	*job;

	job = xcalloc(1, sizeof *job);
	job->base = base;
	job->ac = ac;
	job->pid = -1;
	job->fd = -1;
	job->cb = cb;
	job->arg = arg;
	job->timeout = timeout;
	job->deadline = now_mono() + timeout;
	job->ev = event_new(base, -1, 0, secret_start_cb, job);
	event_active(job->ev, EV_TIMEOUT, 0);
	return (job);
}

/* Forget a job; a running command is killed. */
void
secret_cancel(struct secret_job *job)
{
	if (job == NULL)
		return;
	if (job->ev != NULL)
		event_free(job->ev);
	if (job->timer != NULL)
		event_free(job->timer);
	oauth2_cancel(job->oauth2);
	if (job->fd != -1)
		close(job->fd);
	if (job->pid != -1) {
		/* The command and whatever it started: its process group. */
		if (kill(-job->pid, SIGKILL) == -1)
			kill(job->pid, SIGKILL);
		waitpid(job->pid, NULL, 0);
	}
	wipe(job->buf, sizeof job->buf);
	free(job);
}

/* oauth2.c's answer is the job's. */
static void
secret_oauth2_cb(char *token, size_t len, const char *error, int code,
    void *arg)
{
	struct secret_job	*job = arg;
	secret_cb		 cb = job->cb;
	void			*cbarg = job->arg;

	job->oauth2 = NULL;
	secret_cancel(job);
	cb(token, len, error, code, cbarg);
}

static void
secret_start_cb(evutil_socket_t fd, short what, void *arg)
{
	struct secret_job	*job = arg;
	char			*cause = NULL, *path;
	const char		*dir;

	event_free(job->ev);
	job->ev = NULL;
	switch (job->ac->secret_source) {
	case SECRET_PASSWORD:
		job->len = strlen(job->ac->secret);
		if (job->len > SECRET_MAX)
			job->len = SECRET_MAX;
		memcpy(job->buf, job->ac->secret, job->len);
		secret_finish(job, NULL, 0);
		return;
	case SECRET_FILE:
		if (secret_read_file(job, job->ac->secret, 1, &cause) == -1) {
			secret_finish(job, cause, EXIT_CONFIG);
			free(cause);
			return;
		}
		secret_finish(job, NULL, 0);
		return;
	case SECRET_CREDENTIAL:
		/* systemd guards its credentials directory itself. */
		if ((dir = getenv("CREDENTIALS_DIRECTORY")) == NULL ||
		    dir[0] != '/') {
			secret_finish(job, "password-credential: "
			    "$CREDENTIALS_DIRECTORY is not set (is maild run "
			    "by systemd with LoadCredential=?)", EXIT_CONFIG);
			return;
		}
		xasprintf(&path, "%s/%s", dir, job->ac->secret);
		if (secret_read_file(job, path, 0, &cause) == -1) {
			free(path);
			secret_finish(job, cause, EXIT_CONFIG);
			free(cause);
			return;
		}
		free(path);
		secret_finish(job, NULL, 0);
		return;
	case SECRET_COMMAND:
		if (secret_run(job, &cause) == -1) {
			secret_finish(job, cause, EXIT_OSERR);
			free(cause);
		}
		return;
	case SECRET_OAUTH2:
		job->oauth2 = oauth2_get(job->ac, job->timeout,
		    secret_oauth2_cb, job);
		return;
	default:
		secret_finish(job, "no password configured", EXIT_CONFIG);
		return;
	}
}

/* Keep only the first line; refuse what cannot be sent in a command. */
static const char *
secret_first_line(struct secret_job *job)
{
	char	*nl;
	size_t	 i;

	if ((nl = memchr(job->buf, '\n', job->len)) != NULL)
		job->len = nl - job->buf;
	if (job->len > 0 && job->buf[job->len - 1] == '\r')
		job->len--;
	if (job->len == 0)
		return ("the password is empty");
	if (job->len > SECRET_MAX)
		return ("the password is too long");
	for (i = 0; i < job->len; i++) {
		if ((unsigned char)job->buf[i] < 0x20 &&
		    job->buf[i] != '\t')
			return ("the password contains a control character");
	}
	return (NULL);
}

static int
secret_read_file(struct secret_job *job, const char *path, int check_mode,
    char **cause)
{
	struct stat	 sb;
	ssize_t		 n;
	int		 fd;
	const char	*bad;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) == -1) {
		xasprintf(cause, "password-file %s: %s", path, strerror(errno));
		return (-1);
	}
	if (check_mode) {
		if (private_file(fd, "password-file", path, cause) == -1) {
			close(fd);
			return (-1);
		}
	} else if (fstat(fd, &sb) == -1 || !S_ISREG(sb.st_mode)) {
		xasprintf(cause, "%s: not a regular file", path);
		close(fd);
		return (-1);
	}
	while (job->len < SECRET_MAX + 1) {
		n = read(fd, job->buf + job->len, SECRET_MAX + 1 - job->len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			xasprintf(cause, "password-file %s: %s", path,
			    strerror(errno));
			close(fd);
			return (-1);
		}
		if (n == 0)
			break;
		job->len += n;
		if (memchr(job->buf, '\n', job->len) != NULL)
			break;
	}
	close(fd);
	if ((bad = secret_first_line(job)) != NULL) {
		xasprintf(cause, "password-file %s: %s", path, bad);
		return (-1);
	}
	return (0);
}

/* Fork and exec "/bin/sh -c command" with stdout on a pipe. */
static int
secret_run(struct secret_job *job, char **cause)
{
	int		 p[2], devnull;
	pid_t		 pid;
	struct timeval	 tv = { 0, 0 };

	if (pipe2(p, O_CLOEXEC) == -1) {
		xasprintf(cause, "password-command: pipe: %s", strerror(errno));
		return (-1);
	}
	if ((pid = fork()) == -1) {
		xasprintf(cause, "password-command: fork: %s", strerror(errno));
		close(p[0]);
		close(p[1]);
		return (-1);
	}
	if (pid == 0) {
		sigset_t	set;

		setpgid(0, 0);
		signal(SIGPIPE, SIG_DFL);
		signal(SIGHUP, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGUSR1, SIG_DFL);
		sigemptyset(&set);
		sigprocmask(SIG_SETMASK, &set, NULL);
		if ((devnull = open("/dev/null", O_RDONLY)) != -1)
			dup2(devnull, STDIN_FILENO);
		dup2(p[1], STDOUT_FILENO);
		/* Nothing of maild's but the three standard descriptors. */
		closefrom(STDERR_FILENO + 1);
		execl("/bin/sh", "sh", "-c", job->ac->secret, (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	setpgid(pid, pid);	/* as the child does: whoever runs first */
	job->pid = pid;
	job->fd = p[0];
	evutil_make_socket_nonblocking(job->fd);
	job->ev = event_new(job->base, job->fd, EV_READ | EV_PERSIST,
	    secret_read_cb, job);
	tv.tv_sec = (long)(job->deadline - now_mono()) + 1;
	event_add(job->ev, &tv);
	return (0);
}

static void
secret_read_cb(evutil_socket_t fd, short what, void *arg)
{
	struct secret_job	*job = arg;
	ssize_t			 n;

	/* EV_PERSIST restarts the timeout at every read: check the clock. */
	if ((what & EV_TIMEOUT) || now_mono() > job->deadline) {
		secret_finish(job, "password-command timed out",
		    EXIT_TEMPFAIL);
		return;
	}
	for (;;) {
		n = read(fd, job->buf + job->len, SECRET_MAX + 1 - job->len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1 && errno == EAGAIN)
			return;
		if (n <= 0)
			break;
		job->len += n;
		if (job->len > SECRET_MAX) {
			secret_finish(job, "password-command printed more than "
			    "16 KiB", EXIT_CONFIG);
			return;
		}
	}
	/* End of output: collect the exit status. */
	event_free(job->ev);
	job->ev = NULL;
	close(job->fd);
	job->fd = -1;
	secret_wait_cb(-1, 0, job);
}

/* Poll for the command's exit, briefly: its output has ended already. */
static void
secret_wait_cb(evutil_socket_t fd, short what, void *arg)
{
	struct secret_job	*job = arg;
	struct timeval		 tv = { 0, 10000 };
	const char		*bad;
	char			 msg[128];
	int			 status;
	pid_t			 r;

	r = waitpid(job->pid, &status, WNOHANG);
	if (r == 0) {
		if (now_mono() > job->deadline) {
			secret_finish(job, "password-command timed out",
			    EXIT_TEMPFAIL);
			return;
		}
		if (job->timer == NULL)
			job->timer = evtimer_new(job->base, secret_wait_cb, job);
		evtimer_add(job->timer, &tv);
		return;
	}
	job->pid = -1;
	if (r == -1) {
		secret_finish(job, "password-command: waitpid failed",
		    EXIT_OSERR);
		return;
	}
	/*
	 * 126 and 127: the shell could not run it, a configuration problem.
	 * Other failures may pass (a token helper without network).
	 */
	if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
		snprintf(msg, sizeof msg, "password-command exited with status "
		    "%d%s", WEXITSTATUS(status), WEXITSTATUS(status) == 127 ?
		    " (command not found)" : "");
		secret_finish(job, msg, WEXITSTATUS(status) >= 126 ?
		    EXIT_CONFIG : EXIT_TEMPFAIL);
		return;
	}
	if (WIFSIGNALED(status)) {
		snprintf(msg, sizeof msg, "password-command was killed by "
		    "signal %d", WTERMSIG(status));
		secret_finish(job, msg, EXIT_TEMPFAIL);
		return;
	}
	if ((bad = secret_first_line(job)) != NULL) {
		snprintf(msg, sizeof msg, "password-command: %s", bad);
		secret_finish(job, msg, EXIT_CONFIG);
		return;
	}
	secret_finish(job, NULL, 0);
}

/* Hand the result over and free the job, wiping the buffer. */
static void
secret_finish(struct secret_job *job, const char *error, int code)
{
	secret_cb	 cb = job->cb;
	void		*arg = job->arg;
	char		*copy = NULL;
	size_t		 len = 0;

	if (error == NULL) {
		copy = xmalloc(job->len + 1);
		memcpy(copy, job->buf, job->len);
		copy[job->len] = '\0';
		len = job->len;
	}
	secret_cancel(job);
	cb(copy, len, error, code, arg);
}
