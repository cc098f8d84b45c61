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
 * log.c: the one logging API.  Lines go to syslog (facility LOG_MAIL, ident
 * "maild") in daemon mode and to stderr with -d.  Anything that came from a
 * server goes through log_escape() first, so a hostile server cannot forge
 * log lines or smuggle terminal escapes.
 */

#include "config.h"

#include <sys/stat.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "maild.h"

static int	log_foreground = 1;
static int	log_verbose;
static int	log_journal;	/* stderr is systemd's journal */

static void	log_vwrite(int, const char *, va_list) PRINTFLIKE(2, 0);
static void	log_fatal_line(const char *, ...) PRINTFLIKE(1, 2);
static void	log_libevent_cb(int, const char *);

/* Start logging: to stderr if foreground, else to syslog. */
void
log_init(int foreground, int verbose)
{
	const char	*js;
	char		*end;
	struct stat	 sb;
	unsigned long	 dev, ino;

	log_foreground = foreground;
	log_verbose = verbose;
	if (!foreground)
		openlog("maild", LOG_PID | LOG_NDELAY, LOG_MAIL);
	/*
	 * Under systemd, stderr may be the journal: then give each line its
	 * priority (sd-daemon(3) prefixes) and leave the time stamp to it.
	 */
	if (foreground && (js = getenv("JOURNAL_STREAM")) != NULL) {
		dev = strtoul(js, &end, 10);
		if (*end == ':') {
			ino = strtoul(end + 1, &end, 10);
			if (*end == '\0' && fstat(STDERR_FILENO, &sb) == 0 &&
			    (unsigned long)sb.st_dev == dev &&
			    (unsigned long)sb.st_ino == ino)
				log_journal = 1;
		}
	}
	event_set_log_callback(log_libevent_cb);
}

/* Do log lines go to standard error (rather than syslog)? */
int
log_to_stderr(void)
{
	return (log_foreground);
}

void
log_setverbose(int verbose)
{
	log_verbose = verbose;
}

static void
log_vwrite(int pri, const char *fmt, va_list ap)
{
	char		 line[2048];
	int		 saved = errno;

	vsnprintf(line, sizeof line, fmt, ap);
	if (log_journal) {
		fprintf(stderr, "<%d>%s\n", pri, line);
		fflush(stderr);
	} else if (log_foreground) {
		struct timespec	ts;
		struct tm	tm;
		char		stamp[32];

		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
		fprintf(stderr, "%s.%03ld maild: %s\n", stamp,
		    ts.tv_nsec / 1000000, line);
		fflush(stderr);
	} else
		syslog(pri, "%s", line);
	errno = saved;
}

/* Log a warning with the text for errno appended. */
void
log_warn(const char *fmt, ...)
{
	char		 buf[1024];
	va_list		 ap;
	int		 saved = errno;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	log_warnx("%s: %s", buf, strerror(saved));
	errno = saved;
}

/* Something is wrong; silent only at verbosity -2 (fuzzers). */
void
log_warnx(const char *fmt, ...)
{
	va_list	ap;

	if (log_verbose < -1)
		return;
	va_start(ap, fmt);
	log_vwrite(LOG_WARNING, fmt, ap);
	va_end(ap);
}

/* Routine news; quiet (verbosity -1) for --check, which prints a report. */
void
log_info(const char *fmt, ...)
{
	va_list	ap;

	if (log_verbose < 0)
		return;
	va_start(ap, fmt);
	log_vwrite(LOG_INFO, fmt, ap);
	va_end(ap);
}

/* Detail for -v. */
void
log_debug(const char *fmt, ...)
{
	va_list	ap;

	if (log_verbose < 1)
		return;
	va_start(ap, fmt);
	log_vwrite(LOG_DEBUG, fmt, ap);
	va_end(ap);
}

/* Protocol traces for -vv. */
void
log_trace(const char *fmt, ...)
{
	va_list	ap;

	if (log_verbose < 2)
		return;
	va_start(ap, fmt);
	log_vwrite(LOG_DEBUG, fmt, ap);
	va_end(ap);
}

/* The last words before exiting: never silenced. */
static void
log_fatal_line(const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	log_vwrite(LOG_CRIT, fmt, ap);
	va_end(ap);
}

/* Log and exit: only for broken invariants and exhausted memory. */
void
fatal(const char *fmt, ...)
{
	char		 buf[1024];
	va_list		 ap;
	int		 saved = errno;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	log_fatal_line("fatal: %s: %s", buf, strerror(saved));
	exit(EXIT_SOFTWARE);
}

void
fatalx(const char *fmt, ...)
{
	char		 buf[1024];
	va_list		 ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	log_fatal_line("fatal: %s", buf);
	exit(EXIT_SOFTWARE);
}

static void
log_libevent_cb(int severity, const char *msg)
{
	if (severity >= EVENT_LOG_WARN)
		log_warnx("libevent: %s", msg);
	else
		log_trace("libevent: %s", msg);
}

/*
 * Make untrusted bytes safe to log: printable ASCII stays, backslash and
 * double quote are escaped, everything else becomes \xNN.  The result is
 * truncated with "..." to fit buf.  Returns buf.
 */
const char *
log_escape(char *buf, size_t size, const void *data, size_t len)
{
	static const char	 hex[] = "0123456789abcdef";
	const unsigned char	*p = data;
	size_t			 i, o = 0;

	if (size < 4) {
		if (size > 0)
			buf[0] = '\0';
		return (buf);
	}
	for (i = 0; i < len; i++) {
		unsigned char	c = p[i];
		size_t		need = (c >= 0x20 && c < 0x7f) ?
				    (c == '\\' || c == '"' ? 2 : 1) : 4;

		if (o + need + 4 > size) {
			memcpy(buf + o, "...", 3);
			o += 3;
			break;
		}
		if (need == 1)
			buf[o++] = c;
		else if (need == 2) {
			buf[o++] = '\\';
			buf[o++] = c;
		} else {
			buf[o++] = '\\';
			buf[o++] = 'x';
			buf[o++] = hex[c >> 4];
			buf[o++] = hex[c & 15];
		}
	}
	buf[o] = '\0';
	return (buf);
}
