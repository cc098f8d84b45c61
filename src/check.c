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
 * check.c: what the command line checks beyond a valid maild.conf, for a
 * human at a terminal: "maild -n" (can the Maildirs, the state directory
 * and the files the configuration names be used; settings that are valid
 * but probably wrong), the local lines of the "maild --check" table, and
 * whether the daemon can deliver anything at all before it starts.
 *
 * Whether a directory can be written is found out the only reliable way:
 * by creating a file in it and removing it again (access(2) knows nothing
 * of read-only bind mounts, systemd's sandbox or a full inode table, and
 * says yes to root).  Nothing else is left behind: a Maildir that does not
 * exist yet is tried where maild would create it.
 */

#include "config.h"

#include <sys/socket.h>
#include <sys/stat.h>

#include <netinet/in.h>
#include <arpa/inet.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netdb.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "maild.h"

/* The most addresses of one host compared (-n, two accounts, one box). */
#define CHECK_ADDRS_MAX	32
/* How long --check waits for an LMTP server's answers. */
#define CHECK_PROBE_SECONDS	10
/* What check_hint() says to do. */
#define CHECK_HINT_MAX	128

/* A host's addresses, without ports. */
struct check_addrs {
	int		 resolved;	/* tried */
	size_t		 n;
	struct {
		int	 family;
		uint8_t	 addr[16];
	}		 a[CHECK_ADDRS_MAX];
};

static void	check_problem(const struct config *, int, const char *, ...)
		    PRINTFLIKE(3, 4);
static void	check_account_problem(const struct account_conf *, int,
		    const char *, ...) PRINTFLIKE(3, 4);

/* "maild: file:line: message" on stderr (no line if line is 0). */
static void
check_vproblem(const char *file, int line, const char *fmt, va_list ap)
{
	if (line > 0)
		fprintf(stderr, "maild: %s:%d: ", file, line);
	else
		fprintf(stderr, "maild: %s: ", file);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

/* A problem of the configuration file itself. */
static void
check_problem(const struct config *conf, int line, const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	check_vproblem(conf->path, line, fmt, ap);
	va_end(ap);
}

/* A problem of an account, in the file it is in (include-dir). */
static void
check_account_problem(const struct account_conf *a, int line,
    const char *fmt, ...)
{
	va_list	ap;

	va_start(ap, fmt);
	check_vproblem(a->file, line, fmt, ap);
	va_end(ap);
}

/* What to do about errno when a directory cannot be written. */
static const char *
check_hint(int error, char *buf, size_t size)
{
	struct passwd	*pw;

	switch (error) {
	case EROFS:
		return ("; for the system service, list it in ReadWritePaths= "
		    "(systemctl edit maild)");
	case EACCES:
	case EPERM:
		if ((pw = getpwuid(geteuid())) != NULL)
			snprintf(buf, size, "; maild runs as %s (uid %ld), "
			    "which may not write there", pw->pw_name,
			    (long)geteuid());
		else
			snprintf(buf, size, "; maild runs as uid %ld, which "
			    "may not write there", (long)geteuid());
		return (buf);
	case ENOSPC:
	case EDQUOT:
		return ("; the file system is full");
	default:
		return ("");
	}
}

/* A unique name for a probe file in dir; -1 if it does not fit. */
static int
check_probe_name(char *buf, size_t size, const char *dir)
{
	uint32_t	r;
	int		n;

	random_bytes(&r, sizeof r);
	n = snprintf(buf, size, "%s/.maild-check.%ld.%08x", dir,
	    (long)getpid(), (unsigned)r);
	if (n < 0 || (size_t)n >= size) {
		errno = ENAMETOOLONG;
		return (-1);
	}
	return (0);
}

/* Create a file in dir and remove it; NULL, or why it failed. */
static char *
check_create(const char *dir)
{
	char	 path[PATH_MAX], hint[CHECK_HINT_MAX], *why = NULL;
	int	 fd, error;

	if (check_probe_name(path, sizeof path, dir) == -1 ||
	    (fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC |
	    O_NOFOLLOW, 0600)) == -1) {
		error = errno;
		xasprintf(&why, "cannot create a file in %s: %s%s", dir,
		    strerror(error), check_hint(error, hint, sizeof hint));
		return (why);
	}
	close(fd);
	if (unlink(path) == -1)
		xasprintf(&why, "cannot remove %s: %s", path, strerror(errno));
	return (why);
}

/*
 * Can a directory be made at path, or written if it exists?  The first
 * existing directory on the way up is tried.
 */
static char *
check_dir(const char *path)
{
	char		 buf[PATH_MAX], *slash, *why = NULL;
	struct stat	 sb;

	if (strlen(path) >= sizeof buf) {
		xasprintf(&why, "%s: %s", path, strerror(ENAMETOOLONG));
		return (why);
	}
	snprintf(buf, sizeof buf, "%s", path);
	while (stat(buf, &sb) == -1) {
		if (errno != ENOENT) {
			xasprintf(&why, "%s: %s", buf, strerror(errno));
			return (why);
		}
		if ((slash = strrchr(buf, '/')) == NULL || buf[1] == '\0')
			return (NULL);
		if (slash == buf)
			slash++;
		*slash = '\0';
	}
	if (!S_ISDIR(sb.st_mode)) {
		xasprintf(&why, "%s is not a directory", buf);
		return (why);
	}
	return (check_create(buf));
}

/*
 * Can maild deliver into the Maildir at path?  A file is created in tmp/,
 * moved into new/ and removed, as a delivery does (a name starting with a
 * dot, which mail readers skip).  If tmp/, new/ or cur/ is missing, maild
 * creates it: the Maildir itself must then be writable.
 */
static char *
check_maildir(const char *path)
{
	const char	*subs[] = { "tmp", "new", "cur" };
	char		 dir[3][PATH_MAX], from[PATH_MAX], to[PATH_MAX];
	char		 hint[CHECK_HINT_MAX], *why = NULL;
	struct stat	 sb;
	size_t		 i;
	int		 missing = 0, fd, n, error;

	if (stat(path, &sb) == -1 && errno == ENOENT)
		return (check_dir(path));
	if (stat(path, &sb) == -1 || !S_ISDIR(sb.st_mode)) {
		xasprintf(&why, "%s is not a directory", path);
		return (why);
	}
	for (i = 0; i < 3; i++) {
		n = snprintf(dir[i], sizeof dir[i], "%s/%s", path, subs[i]);
		if (n < 0 || (size_t)n >= sizeof dir[i]) {
			xasprintf(&why, "%s: %s", path, strerror(ENAMETOOLONG));
			return (why);
		}
		if (stat(dir[i], &sb) == -1)
			missing = 1;
		else if (!S_ISDIR(sb.st_mode)) {
			xasprintf(&why, "%s is not a directory", dir[i]);
			return (why);
		}
	}
	if (missing && (why = check_create(path)) != NULL)
		return (why);
	if (stat(dir[0], &sb) == -1 || stat(dir[1], &sb) == -1)
		return (NULL);

	if (check_probe_name(from, sizeof from, dir[0]) == -1 ||
	    (n = snprintf(to, sizeof to, "%s/%s", dir[1], strrchr(from, '/') +
	    1)) < 0 || (size_t)n >= sizeof to) {
		xasprintf(&why, "%s: %s", path, strerror(ENAMETOOLONG));
		return (why);
	}
	if ((fd = open(from, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC |
	    O_NOFOLLOW, 0600)) == -1) {
		error = errno;
		xasprintf(&why, "cannot create a file in %s: %s%s", dir[0],
		    strerror(error), check_hint(error, hint, sizeof hint));
		return (why);
	}
	close(fd);
	if (rename(from, to) == -1) {
		error = errno;
		xasprintf(&why, "cannot move a file from %s to %s: %s%s",
		    dir[0], dir[1], strerror(error), check_hint(error, hint,
		    sizeof hint));
		unlink(from);
		return (why);
	}
	if (unlink(to) == -1)
		xasprintf(&why, "cannot remove %s: %s", to, strerror(errno));
	return (why);
}

/*
 * --check: whether each account's LMTP server or mda can take mail, found
 * out (probe.c) before the sessions start, for check_account_report().
 */
static struct check_dest {
	int	 failed;
	char	*msg;
}		*check_dests;
static size_t	 check_ndests;

void
check_dests_probe(const struct config *conf)
{
	const struct account_conf	*a;
	struct check_dest		*d;
	size_t				 i;

	check_dests_free();
	check_dests = xcalloc(conf->naccounts, sizeof *check_dests);
	check_ndests = conf->naccounts;
	for (i = 0; i < conf->naccounts; i++) {
		a = &conf->accounts[i];
		d = &check_dests[i];
		if (a->deliver == DELIVER_LMTP) {
			if (probe_lmtp(a->lmtp, a->lmtp_recipient,
			    CHECK_PROBE_SECONDS, &d->msg) == -1)
				d->failed = 1;
			else
				xasprintf(&d->msg, "%s takes mail for %s",
				    a->lmtp, a->lmtp_recipient);
		} else if (a->deliver == DELIVER_MDA) {
			if (probe_mda(a->mda, &d->msg) == -1)
				d->failed = 1;
			else
				d->msg = xstrdup(a->mda);
		}
	}
}

void
check_dests_free(void)
{
	size_t	i;

	for (i = 0; i < check_ndests; i++)
		free(check_dests[i].msg);
	free(check_dests);
	check_dests = NULL;
	check_ndests = 0;
}

/*
 * The local lines of the "maild --check" table: can this account's
 * Maildir (or spool) and state be written, and will its LMTP server or
 * mda take mail?  -1 if not.
 */
int
check_account_report(const struct config *conf, const struct account_conf *a)
{
	const char		*what[2] = { "maildir", "state-dir" };
	const char		*path[2] = { a->maildir, conf->state_dir };
	const struct check_dest	*d = NULL;
	size_t			 idx = (size_t)(a - conf->accounts);
	char			*why;
	int			 i, r = 0;

	if (a->deliver != DELIVER_MAILDIR)
		what[0] = "spool";
	for (i = 0; i < 2; i++) {
		why = i == 0 ? check_maildir(path[i]) : check_dir(path[i]);
		if (why != NULL) {
			printf("  %-13s FAILED  %s\n", what[i], why);
			r = -1;
		} else
			printf("  %-13s ok      %s\n", what[i], path[i]);
		free(why);
	}
	if (a >= conf->accounts && idx < check_ndests)
		d = &check_dests[idx];
	if (d != NULL && d->msg != NULL) {
		printf("  %-13s %-7s %s\n", a->deliver == DELIVER_LMTP ?
		    "lmtp" : "mda", d->failed ? "FAILED" : "ok", d->msg);
		if (d->failed)
			r = -1;
	}
	return (r);
}

/*
 * Before the daemon starts: say which Maildirs cannot be written, and
 * refuse to start (-1) if nothing can be delivered at all, that is if
 * the state directory or every Maildir cannot be written.  One broken
 * account does not stop the others.
 */
int
check_start(const struct config *conf)
{
	char	*why;
	size_t	 i, bad = 0;

	if ((why = check_dir(conf->state_dir)) != NULL) {
		check_problem(conf, conf->state_dir_line, "state-dir %s: %s; "
		    "not starting", conf->state_dir, why);
		free(why);
		return (-1);
	}
	for (i = 0; i < conf->naccounts; i++) {
		const struct account_conf	*a = &conf->accounts[i];

		if ((why = check_maildir(a->maildir)) == NULL)
			continue;
		bad++;
		check_account_problem(a, a->maildir_line, "account \"%s\": maildir "
		    "%s: %s", a->name, a->maildir, why);
		free(why);
	}
	if (bad > 0 && bad == conf->naccounts) {
		fprintf(stderr, "maild: not starting: no account can deliver "
		    "its mail\n");
		return (-1);
	}
	if (bad > 0)
		fprintf(stderr, "maild: starting anyway for the other "
		    "account%s\n", conf->naccounts - bad == 1 ? "" : "s");
	return (0);
}

/* The files an account names: can they be used? */
static int
check_account_paths(const struct config *conf, const struct account_conf *a)
{
	char	*why = NULL;
	int	 r = 0;

	if ((why = check_maildir(a->maildir)) != NULL) {
		check_account_problem(a, a->maildir_line, "account \"%s\": maildir "
		    "%s: %s", a->name, a->maildir, why);
		free(why);
		r = -1;
	}
	if (a->ca_file != NULL && access(a->ca_file, R_OK) == -1) {
		check_account_problem(a, a->line, "account \"%s\": ca-file %s: %s",
		    a->name, a->ca_file, strerror(errno));
		r = -1;
	}
	if (a->secret_source == SECRET_FILE &&
	    private_path("password-file", a->secret, &why) == -1) {
		check_account_problem(a, a->line, "account \"%s\": %s", a->name,
		    why);
		free(why);
		r = -1;
	}
	if (a->oauth2_secret_source == SECRET_FILE &&
	    private_path("oauth2-client-secret-file", a->oauth2_client_secret,
	    &why) == -1) {
		check_account_problem(a, a->line, "account \"%s\": %s", a->name,
		    why);
		free(why);
		r = -1;
	}
	if (a->tls_key_file != NULL &&
	    private_path("tls-key-file", a->tls_key_file, &why) == -1) {
		check_account_problem(a, a->line, "account \"%s\": %s", a->name,
		    why);
		free(why);
		r = -1;
	}
	return (r);
}

/* Built-in OAuth2 without a token yet: say what to run. */
static void
check_oauth2_token(const struct config *conf, const struct account_conf *a)
{
	if (a->oauth2_provider == OAUTH2_NONE ||
	    access(a->oauth2_file, F_OK) == 0 || errno != ENOENT)
		return;
	check_account_problem(a, a->line, "warning: account \"%s\" has no OAuth2 "
	    "token yet (%s): run maild --authorize %s", a->name,
	    a->oauth2_file, a->name);
}

/* A port that says one thing and a tls setting that says another. */
static void
check_port_tls(const struct config *conf, const struct account_conf *a)
{
	int		 line = a->port_line > 0 ? a->port_line : a->line;
	int		 imap = a->protocol == PROTOCOL_IMAP;
	int		 tlsport = imap ? 993 : 995, plainport = imap ? 143 : 110;
	const char	*tlsname = imap ? "IMAPS" : "POP3S";
	const char	*plainname = imap ? "IMAP" : "POP3";

	if (a->port == tlsport && a->tls != TLS_IMPLICIT)
		check_account_problem(a, line, "warning: account \"%s\": port %d "
		    "is %s, where TLS starts at once, but tls = %s speaks "
		    "plain %s first: set tls = implicit (or use port %d for "
		    "%s)", a->name, tlsport, tlsname,
		    a->tls == TLS_STARTTLS ? "starttls" : "none", plainname,
		    plainport, a->tls == TLS_STARTTLS ? "STARTTLS" : plainname);
	else if (a->port == plainport && a->tls == TLS_IMPLICIT)
		check_account_problem(a, line, "warning: account \"%s\": port %d "
		    "is plain %s, but tls = implicit (the default) starts "
		    "TLS at once: set tls = starttls (or use port %d for "
		    "%s)", a->name, plainport, plainname, tlsport, tlsname);
	else if ((a->port == 993 || a->port == 143) && !imap)
		check_account_problem(a, line, "warning: account \"%s\": port %d "
		    "is IMAP's, but the account speaks POP3: set protocol = "
		    "imap, or use port 995", a->name, a->port);
	else if ((a->port == 995 || a->port == 110) && imap)
		check_account_problem(a, line, "warning: account \"%s\": port %d "
		    "is POP3's, but the account speaks IMAP (protocol = imap): "
		    "use port 993", a->name, a->port);
}

/* Resolve a host once (only "maild -n" does: the daemon never blocks). */
static void
check_resolve(const char *host, struct check_addrs *out)
{
	struct addrinfo	 hints, *res, *ai;
	const uint8_t	*p;
	size_t		 len;

	if (out->resolved)
		return;
	out->resolved = 1;
	memset(&hints, 0, sizeof hints);
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	if (getaddrinfo(host, NULL, &hints, &res) != 0)
		return;
	for (ai = res; ai != NULL && out->n < CHECK_ADDRS_MAX;
	    ai = ai->ai_next) {
		if (ai->ai_family == AF_INET) {
			p = (const uint8_t *)&((struct sockaddr_in *)
			    (void *)ai->ai_addr)->sin_addr;
			len = 4;
		} else if (ai->ai_family == AF_INET6) {
			p = (const uint8_t *)&((struct sockaddr_in6 *)
			    (void *)ai->ai_addr)->sin6_addr;
			len = 16;
		} else
			continue;
		memset(out->a[out->n].addr, 0, sizeof out->a[out->n].addr);
		memcpy(out->a[out->n].addr, p, len);
		out->a[out->n].family = ai->ai_family;
		out->n++;
	}
	freeaddrinfo(res);
}

/* An address two hosts share, as text in buf; -1 if none. */
static int
check_shared_addr(const struct check_addrs *x, const struct check_addrs *y,
    char *buf, size_t size)
{
	size_t	i, j;

	for (i = 0; i < x->n; i++) {
		for (j = 0; j < y->n; j++) {
			if (x->a[i].family != y->a[j].family ||
			    memcmp(x->a[i].addr, y->a[j].addr,
			    sizeof x->a[i].addr) != 0)
				continue;
			if (inet_ntop(x->a[i].family, x->a[i].addr, buf,
			    (socklen_t)size) == NULL)
				snprintf(buf, size, "?");
			return (0);
		}
	}
	return (-1);
}

/* Do a and b (b is earlier in the file) log in to one mailbox? */
static void
check_pair(const struct config *conf, const struct account_conf *a,
    const struct account_conf *b, struct check_addrs *aa,
    struct check_addrs *ba)
{
	char	shared[64], where[PATH_MAX + 32];

	if (strcasecmp(a->user, b->user) != 0)
		return;
	if (strcmp(a->file, b->file) == 0)
		snprintf(where, sizeof where, "line %d", b->line);
	else
		snprintf(where, sizeof where, "%s:%d", b->file, b->line);
	if (strcasecmp(a->host, b->host) == 0) {
		check_account_problem(a, a->line, "warning: accounts \"%s\" and "
		    "\"%s\" (%s) both log in as \"%s\" to %s (ports %d "
		    "and %d): they fetch the same mailbox and race each other; "
		    "keep one of them", a->name, b->name, where, a->user,
		    a->host, a->port, b->port);
		return;
	}
	check_resolve(a->host, aa);
	check_resolve(b->host, ba);
	if (check_shared_addr(aa, ba, shared, sizeof shared) == 0)
		check_account_problem(a, a->line, "warning: accounts \"%s\" and "
		    "\"%s\" (%s) both log in as \"%s\" to the same server "
		    "(%s and %s are both %s): they fetch the same mailbox and "
		    "race each other; keep one of them", a->name, b->name,
		    where, a->user, a->host, b->host, shared);
}

/*
 * Two accounts that log in as the same user to the same server fetch one
 * mailbox and race each other for it.  config.c refuses the same host,
 * port and user; this finds the same server reached by another port or
 * by another name (host names are resolved, here only).
 */
static void
check_same_mailbox(const struct config *conf)
{
	struct check_addrs	*addrs;
	size_t			 i, j;

	addrs = xcalloc(conf->naccounts, sizeof *addrs);
	for (i = 0; i < conf->naccounts; i++) {
		for (j = 0; j < i; j++)
			check_pair(conf, &conf->accounts[i],
			    &conf->accounts[j], &addrs[i], &addrs[j]);
	}
	free(addrs);
}

/*
 * "maild -n", after the configuration loaded: print every problem and
 * warning to stderr; -1 if there was a problem (warnings do not count).
 */
int
check_config(const struct config *conf)
{
	char	*why;
	size_t	 i;
	int	 r = 0;

	if ((why = check_dir(conf->state_dir)) != NULL) {
		check_problem(conf, conf->state_dir_line, "state-dir %s: %s",
		    conf->state_dir, why);
		free(why);
		r = -1;
	}
	for (i = 0; i < conf->naccounts; i++) {
		if (check_account_paths(conf, &conf->accounts[i]) == -1)
			r = -1;
		check_port_tls(conf, &conf->accounts[i]);
		check_oauth2_token(conf, &conf->accounts[i]);
	}
	check_same_mailbox(conf);
	return (r);
}
