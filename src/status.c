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
 * status.c: what maild tells a human about its accounts.  The status file
 * <state-dir>/maild.status (one key=value line per account, rewritten
 * after every poll; its format is in maild(8)) with the one-line summary
 * for systemd, "maild --status", which reads that file back, and the
 * report of "maild --check".  account.c decides when; this file says
 * what and how.
 */

#include "config.h"

#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "maild.h"

/* A line of the status file, and one value of it, as --status reads them. */
#define STATUS_LINE_MAX		4096
#define STATUS_VALUE_MAX	512
/* "2026-01-31T23:59:59Z" and its NUL, with room to spare. */
#define STATUS_TIME_MAX		32

/* Times in the status file: UTC, ISO 8601; "-" for never. */
static const char *
status_time(time_t t, char *buf, size_t size)
{
	struct tm	tm;

	if (t == 0)
		return ("-");
	gmtime_r(&t, &tm);
	strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
	return (buf);
}

/* Is the status file at path the one of a daemon that still runs? */
static int
status_of_running_daemon(const char *path)
{
	FILE	*f;
	char	 line[STATUS_LINE_MAX];
	long	 pid;
	int	 r = 0;

	if ((f = fopen(path, "re")) == NULL)
		return (0);
	while (fgets(line, sizeof line, f) != NULL) {
		if (strncmp(line, "pid=", 4) != 0)
			continue;
		pid = strtol(line + 4, NULL, 10);
		r = strstr(line, " mode=daemon ") != NULL && pid > 0 &&
		    pid != (long)getpid() && kill((pid_t)pid, 0) == 0;
		break;
	}
	fclose(f);
	return (r);
}

/* Tell systemd a one-line summary (systemctl status shows it). */
static void
status_notify(const struct status_account *sa, size_t n)
{
	char	t[STATUS_TIME_MAX];
	time_t	last = 0;
	size_t	i;
	int	failing = 0;

	for (i = 0; i < n; i++) {
		if (sa[i].failing)
			failing++;
		if (sa[i].last_poll > last)
			last = sa[i].last_poll;
	}
	sdnotify("STATUS=%zu account%s, last poll %s, %d failing", n,
	    n == 1 ? "" : "s", status_time(last, t, sizeof t), failing);
}

/* One account's line of the status file. */
static void
status_print_account(FILE *f, const struct status_account *a)
{
	char	t1[STATUS_TIME_MAX], t2[STATUS_TIME_MAX], t3[STATUS_TIME_MAX];
	char	esc[LOG_ESCAPE_MAX];

	fprintf(f, "account=%s state=%s last-poll=%s last-success=%s "
	    "next-poll=%s fetched=%u fetched-total=%llu failures=%d",
	    a->name, a->state, status_time(a->last_poll, t1, sizeof t1),
	    status_time(a->last_success, t2, sizeof t2),
	    status_time(a->next_poll, t3, sizeof t3), a->fetched,
	    a->fetched_total, a->failures);
	fputs(a->token, f);
	if (a->error != NULL)
		fprintf(f, " error=\"%s\"", log_escape(esc, sizeof esc,
		    a->error, strlen(a->error)));
	fputc('\n', f);
}

/*
 * Rewrite <state-dir>/maild.status (atomically) and tell systemd a
 * one-line summary: what "maild --status" shows.  mode is ACCOUNTS_DAEMON
 * or ACCOUNTS_ONCE; a --once run leaves alone the file of a daemon that
 * is running.  Failing to write it is not worth a word: the status file
 * is a convenience, and the log says everything it says.
 */
void
status_write(const char *state_dir, int mode, const struct status_account *sa,
    size_t n)
{
	char	 path[PATH_MAX], tmp[PATH_MAX], t[STATUS_TIME_MAX];
	FILE	*f;
	size_t	 i;
	int	 fd;

	status_notify(sa, n);
	if ((size_t)snprintf(path, sizeof path, "%s/maild.status",
	    state_dir) >= sizeof path - 8)
		return;
	snprintf(tmp, sizeof tmp, "%.*s.XXXXXX", (int)(sizeof tmp - 8), path);
	if (mode == ACCOUNTS_ONCE && status_of_running_daemon(path))
		return;
	if (mkdir_p(state_dir, 0700) == -1 || (fd = mkstemp(tmp)) == -1)
		return;
	if ((f = fdopen(fd, "w")) == NULL) {
		close(fd);
		unlink(tmp);
		return;
	}
	fprintf(f, "# maild status, see maild(8); times are UTC\n"
	    "pid=%ld mode=%s written=%s\n", (long)getpid(),
	    mode == ACCOUNTS_DAEMON ? "daemon" : "once",
	    status_time(time(NULL), t, sizeof t));
	for (i = 0; i < n; i++)
		status_print_account(f, &sa[i]);
	if (fflush(f) == EOF || ferror(f)) {
		fclose(f);
		unlink(tmp);
		return;
	}
	fclose(f);
	if (rename(tmp, path) == -1)
		unlink(tmp);
}

/* One value of a status line: "key=value" or key="quoted value". */
static const char *
status_field(const char *line, const char *key, char *buf, size_t size)
{
	const char	*p = line, *end;
	size_t		 klen = strlen(key), n;

	while ((p = strstr(p, key)) != NULL) {
		if ((p == line || p[-1] == ' ') && p[klen] == '=')
			break;
		p += klen;
	}
	if (p == NULL)
		return ("-");
	p += klen + 1;
	if (*p == '"') {
		for (end = ++p; *end != '\0' && *end != '"'; end++) {
			if (*end == '\\' && end[1] != '\0')
				end++;
		}
	} else
		end = p + strcspn(p, " \n");
	n = (size_t)(end - p) < size - 1 ? (size_t)(end - p) : size - 1;
	memcpy(buf, p, n);
	buf[n] = '\0';
	return (buf);
}

/* --status: show what the last maild wrote in the status file. */
int
status_show(const struct config *conf)
{
	char	 path[PATH_MAX], line[STATUS_LINE_MAX];
	char	 v[6][STATUS_VALUE_MAX];
	FILE	*f;
	long	 pid;

#define FIELD(key, i)	status_field(line, (key), v[i], sizeof v[i])
	snprintf(path, sizeof path, "%s/maild.status", conf->state_dir);
	if ((f = fopen(path, "re")) == NULL) {
		printf("maild: no status in %s yet: maild has not polled with "
		    "this configuration\n", path);
		return (errno == ENOENT ? 0 : EXIT_IOERR);
	}
	while (fgets(line, sizeof line, f) != NULL) {
		if (line[0] == '#')
			continue;
		if (strncmp(line, "pid=", 4) == 0) {
			pid = strtol(FIELD("pid", 0), NULL, 10);
			printf("status written %s by maild pid %ld (%s), which "
			    "is %s\n", FIELD("written", 1), pid,
			    FIELD("mode", 2), pid > 0 &&
			    kill((pid_t)pid, 0) == 0 ? "running" :
			    "not running");
			continue;
		}
		printf("\naccount %s: %s\n", FIELD("account", 0),
		    FIELD("state", 1));
		printf("  last poll       %s\n", FIELD("last-poll", 2));
		printf("  last success    %s\n", FIELD("last-success", 3));
		printf("  next poll       %s\n", FIELD("next-poll", 4));
		printf("  fetched         %s at the last poll, %s since maild "
		    "started\n", FIELD("fetched", 5),
		    FIELD("fetched-total", 0));
		printf("  failures        %s in a row\n", FIELD("failures", 1));
		printf("  last error      %s\n", FIELD("error", 2));
		if (strcmp(FIELD("token-expires", 3), "-") != 0)
			printf("  token expires   %s\n", v[3]);
		if (strcmp(FIELD("state", 5), "needs-authorization") == 0)
			printf("  to do           run maild --authorize %s\n",
			    FIELD("account", 4));
	}
#undef FIELD
	fclose(f);
	return (0);
}

/*
 * --check: what worked and what did not for one account, for a human,
 * then the checks of its files (check.c).  -1 if one of those failed.
 */
int
status_report_check(const struct config *conf, const struct account_conf *ac,
    const struct session_result *r)
{
	const char	*stage = r->stage != NULL ? r->stage : "?";
	int		 ret;

	printf("account \"%s\": %s@%s port %d\n", ac->name, ac->user,
	    ac->host, ac->port);
	if (r->peer[0] != '\0')
		printf("  connect       ok      %s\n", r->peer);
	if (r->tls[0] != '\0')
		printf("  tls           ok      %s, certificate %s\n", r->tls,
		    ac->npins > 0 ? "matches tls-fingerprint" : "verified");
	else if (ac->tls == TLS_NONE && r->peer[0] != '\0')
		printf("  tls           NONE    (tls = none: not encrypted)\n");
	if (r->capa[0] != '\0')
		printf("  capabilities          %s\n", r->capa);
	if (r->login != NULL)
		printf("  login         ok      %s\n", r->login);
	if (r->exitcode == 0)
		printf("  mailbox       ok      %llu message%s, %llu bytes\n",
		    (unsigned long long)r->messages, r->messages == 1 ? "" :
		    "s", (unsigned long long)r->octets);
	else
		printf("  %-13s FAILED  %s\n", stage, r->error != NULL ?
		    r->error : "?");
	ret = check_account_report(conf, ac);
	fflush(stdout);
	return (ret);
}
