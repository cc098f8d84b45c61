/*
 * test_config.c: unit tests for src/config.c: durations, path expansion
 * and config_load() on good and bad files, checking that every error
 * comes as "file:line: message" with the right line.
 *
 * Each bad config is checked three ways: it is refused, the message says
 * what is wrong, and the line number is that of the offending option (or,
 * for errors about a whole account section, of its "account" line).  The
 * line is a separate check so that a wrong line shows up on its own.
 * Syntax mistakes that libconfuse would misreport (confuse_compat.c) are
 * checked for the exact message a user sees.
 */

#include "config.h"

#include <sys/stat.h>

#include <ctype.h>
#include <errno.h>
#include <ftw.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "maild.h"
#include "tap.h"
#include "files.h"

static char	*topdir;
static int	 nconf;

/* ---------------------------------------------------------------------- */
/* Helpers */

/* Write a config file with the given mode; returns its path. */
static char *
write_conf(const char *text, mode_t mode)
{
	char	*path;
	FILE	*f;

	xasprintf(&path, "%s/c%03d.conf", topdir, ++nconf);
	if ((f = fopen(path, "w")) == NULL || fputs(text, f) == EOF ||
	    fclose(f) == EOF || chmod(path, mode) == -1) {
		perror(path);
		exit(99);
	}
	return (path);
}

/* Load text as a config; NULL with *cause on failure. */
static struct config *
load(const char *text, mode_t mode, char **pathp, char **cause)
{
	struct config	*conf;
	char		*path = write_conf(text, mode);

	*cause = NULL;
	conf = config_load(path, cause);
	if (pathp != NULL)
		*pathp = path;
	else
		free(path);
	return (conf);
}

static int
good(const char *what, const char *text, mode_t mode)
{
	struct config	*conf;
	char		*cause;
	int		 r;

	conf = load(text, mode, NULL, &cause);
	r = ok(conf != NULL, tap_fmt("good config %s: loads", what));
	if (conf == NULL)
		diag("%s", cause);
	config_free(conf);
	free(cause);
	return (r);
}

/*
 * A config that must be refused with "path:line: " and a phrase.  line 0
 * means the message has no line: "path: "; -1 that any line will do.
 */
static void
bad(const char *what, const char *text, mode_t mode, int line,
    const char *phrase)
{
	struct config	*conf;
	char		*path, *cause, *end;
	size_t		 plen;
	long		 got = -1;

	conf = load(text, mode, &path, &cause);
	if (!ok(conf == NULL, tap_fmt("bad config %s: refused", what))) {
		config_free(conf);
		free(path);
		return;
	}
	plen = strlen(path);
	if (!ok(cause != NULL && strncmp(cause, path, plen) == 0 &&
	    cause[plen] == ':', tap_fmt("bad config %s: message starts with "
	    "the file name", what))) {
		diag("message: %s", cause ? cause : "(null)");
		free(path);
		free(cause);
		return;
	}
	like(cause, phrase, tap_fmt("bad config %s: says \"%s\"", what,
	    phrase));
	if (line < 0)
		;	/* any line, or none */
	else if (line == 0)
		ok(cause[plen + 1] == ' ', tap_fmt("bad config %s: \"file: \" "
		    "with no line", what));
	else {
		errno = 0;
		got = strtol(cause + plen + 1, &end, 10);
		if (end == cause + plen + 1 || strncmp(end, ": ", 2) != 0)
			got = -1;
		if (!is_int(got, line, tap_fmt("bad config %s: reported at "
		    "line %d", what, line)))
			diag("message: %s", cause);
	}
	free(path);
	free(cause);
}

/* A config that must be refused with exactly "path:line: msg". */
static void
bad_exact(const char *what, const char *text, int line, const char *msg)
{
	struct config	*conf;
	char		*path, *cause, *want;

	conf = load(text, 0600, &path, &cause);
	ok(conf == NULL, tap_fmt("bad config %s: refused", what));
	xasprintf(&want, "%s:%d: %s", path, line, msg);
	is_str(cause, want, tap_fmt("bad config %s: the message", what));
	config_free(conf);
	free(want);
	free(path);
	free(cause);
}

/* ---------------------------------------------------------------------- */
/* parse_duration, parse_size (parse.c, for maild.conf) */

/* The durations of poll-interval and timeout: at most 30 days. */
static int
duration(const char *s, long *v)
{
	return (parse_duration(s, PARSE_DURATION_MAX, v));
}

struct scaled {
	const char	*s;
	long		 v;
};

/* Shows s with control characters escaped, for a TAP line. */
static const char *
shown(const char *s)
{
	static char	buf[64];
	size_t		k, o = 0;

	for (k = 0; s[k] != '\0' && o + 5 < sizeof buf; k++) {
		if (iscntrl((unsigned char)s[k]))
			o += snprintf(buf + o, sizeof buf - o, "\\x%02x",
			    (unsigned char)s[k]);
		else
			buf[o++] = s[k];
	}
	buf[o] = '\0';
	return (buf);
}

static void
check_scaled(const char *what, int (*fn)(const char *, long *),
    const struct scaled *goods, size_t ngoods, const char *const *bads,
    size_t nbads)
{
	size_t	i;
	long	v;

	for (i = 0; i < ngoods; i++) {
		v = -12345;
		ok(fn(goods[i].s, &v) == 0 && v == goods[i].v,
		    tap_fmt("%s \"%s\" is %ld", what, goods[i].s, goods[i].v));
	}
	for (i = 0; i < nbads; i++)
		ok(fn(bads[i], &v) == -1, tap_fmt("%s \"%s\" is refused",
		    what, shown(bads[i])));
}

static void
test_duration(void)
{
	static const struct scaled goods[] = {
		{ "90", 90 }, { "0", 0 }, { "30s", 30 }, { "5m", 300 },
		{ "2h", 7200 }, { "1d", 86400 }, { "30d", 2592000 },
		{ "2592000", 2592000 }, { "2592000s", 2592000 },
		{ "43200m", 2592000 }, { "720h", 2592000 }, { "007", 7 },
		{ "0d", 0 },
	};
	static const char *const bads[] = {
		"31d", "2592001", "2592001s", "43201m", "721h", "-5", "-0",
		"", "5x", "m", "s", "5ms", "5mm", "5 m", " 5", "5 ", "5M",
		"5D", "5S", "+5", "0x10", "1.5h", "1e3",
		"99999999999999999999", "9223372036854775807",
		"9223372036854775807d", "18446744073709551617s", "5\n",
		"5\tm",
	};

	check_scaled("duration", duration, goods,
	    sizeof goods / sizeof goods[0], bads, sizeof bads / sizeof bads[0]);
}

static void
test_size(void)
{
	static const struct scaled goods[] = {
		{ "0", 0 }, { "512", 512 }, { "1k", 1024 }, { "1K", 1024 },
		{ "1kB", 1024 }, { "1KB", 1024 }, { "16M", 16L << 20 },
		{ "16MB", 16L << 20 }, { "2G", 2L << 30 }, { "2GB", 2L << 30 },
		{ "1024G", 1L << 40 }, { "1099511627776", 1L << 40 },
		{ "0M", 0 },
	};
	static const char *const bads[] = {
		"1025G", "1099511627777", "1048577M", "", "k", "M", "MB",
		"-1", "+1", " 1", "1 ", "1 M", "1m", "1g", "1T", "1b", "1B",
		"1MBB", "1Mb", "1BM", "0x10", "1.5M", "1e3",
		"99999999999999999999", "9223372036854775807k", "1M\n",
	};

	check_scaled("size", parse_size, goods,
	    sizeof goods / sizeof goods[0], bads, sizeof bads / sizeof bads[0]);
}

struct hint {
	const char	*in;
	const char	*out;	/* NULL: no hint */
};

static void
test_hints(void)
{
	static const struct hint durations[] = {
		{ "5 min", "5m" }, { "10 minutes", "10m" }, { "5min", "5m" },
		{ "5 MIN", "5m" }, { "5M", "5m" }, { "2 hours", "2h" },
		{ "1 hr", "1h" }, { "1 day", "1d" }, { "30 days", "30d" },
		{ "30 sec", "30s" }, { "90 seconds", "90s" }, { "5\tm", "5m" },
		{ "31 days", NULL }, { "5", NULL }, { "5m", NULL },
		{ "five min", NULL }, { "1.5 h", NULL }, { "5 mon", NULL },
		{ "min", NULL }, { "", NULL }, { "-5 min", NULL },
		{ "99999999999999999999999 s", NULL },
	};
	static const struct hint sizes[] = {
		{ "20 MB", "20M" }, { "20mb", "20M" }, { "20 m", "20M" },
		{ "800 kB", "800k" }, { "800 KiB", "800k" }, { "1 GiB", "1G" },
		{ "500 bytes", "500" }, { "2 TB", NULL }, { "1025 GB", NULL },
		{ "20M", NULL }, { "twenty MB", NULL },
	};
	char	buf[32];
	size_t	i;
	int	r;

	for (i = 0; i < sizeof durations / sizeof durations[0]; i++) {
		r = parse_duration_hint(durations[i].in, PARSE_DURATION_MAX,
		    buf, sizeof buf);
		if (durations[i].out == NULL)
			ok(r == -1, tap_fmt("duration hint: none for \"%s\"",
			    shown(durations[i].in)));
		else
			is_str(r == 0 ? buf : NULL, durations[i].out,
			    tap_fmt("duration hint: \"%s\" is %s",
			    shown(durations[i].in), durations[i].out));
	}
	ok(parse_duration_hint("45 days", PARSE_LONG_DURATION_MAX, buf,
	    sizeof buf) == 0 && strcmp(buf, "45d") == 0,
	    "duration hint: \"45 days\" is 45d where 3650d are allowed");
	ok(parse_duration_hint("5 min", PARSE_DURATION_MAX, buf, 2) == -1,
	    "duration hint: none if it does not fit the buffer");
	for (i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
		r = parse_size_hint(sizes[i].in, buf, sizeof buf);
		if (sizes[i].out == NULL)
			ok(r == -1, tap_fmt("size hint: none for \"%s\"",
			    sizes[i].in));
		else
			is_str(r == 0 ? buf : NULL, sizes[i].out,
			    tap_fmt("size hint: \"%s\" is %s", sizes[i].in,
			    sizes[i].out));
	}
}

static void
test_edit_distance(void)
{
	static const struct {
		const char	*a, *b;
		size_t		 d;
	} cases[] = {
		{ "kep", "keep", 1 }, { "hsot", "host", 1 },
		{ "host", "host", 0 }, { "", "abc", 3 }, { "abc", "", 3 },
		{ "kitten", "sitting", 3 }, { "ca", "ac", 1 },
		{ "Host", "host", 1 }, { "pasword", "password", 1 },
		{ "colour", "tls", 5 },
	};
	size_t	i;

	for (i = 0; i < sizeof cases / sizeof cases[0]; i++)
		is_int(edit_distance(cases[i].a, cases[i].b), cases[i].d,
		    tap_fmt("edit distance \"%s\" \"%s\"", cases[i].a,
		    cases[i].b));
}

/* ---------------------------------------------------------------------- */
/* config_expand_path */

static void
expand_is(const char *in, const char *want)
{
	char	*cause = NULL, *out;

	out = config_expand_path(in, &cause);
	is_str(out, want, tap_fmt("expand \"%s\"", in));
	if (out == NULL)
		diag("%s", cause);
	free(out);
	free(cause);
}

static void
expand_fails(const char *in, const char *phrase, const char *what)
{
	char	*cause = NULL, *out;

	out = config_expand_path(in, &cause);
	ok(out == NULL, tap_fmt("expand %s: fails", what));
	like(cause, phrase, tap_fmt("expand %s: says \"%s\"", what, phrase));
	free(out);
	free(cause);
}

static void
test_expand(void)
{
	char		*big, *want, *out, *cause = NULL;
	struct passwd	*pw;
	size_t		 n;

	setenv("HOME", "/home/tester", 1);
	setenv("MAILD_T_VAR", "value", 1);
	setenv("MAILD_T_EMPTY", "", 1);
	unsetenv("MAILD_T_UNSET");

	expand_is("~", "/home/tester");
	expand_is("~/x", "/home/tester/x");
	expand_is("~/", "/home/tester/");
	expand_is("$HOME", "/home/tester");
	expand_is("$HOME/Mail", "/home/tester/Mail");
	expand_is("${HOME}/x", "/home/tester/x");
	expand_is("${HOME}x", "/home/testerx");
	expand_is("/a/$MAILD_T_VAR/b", "/a/value/b");
	expand_is("/a/$MAILD_T_VAR-b", "/a/value-b");
	expand_is("/a/$MAILD_T_VAR.b", "/a/value.b");
	expand_is("$HOME$HOME", "/home/tester/home/tester");
	expand_is("/plain/path", "/plain/path");
	expand_is("relative/path", "relative/path");
	expand_is("", "");
	expand_is("~user/x", "~user/x");
	expand_is("/a/~/b", "/a/~/b");

	expand_fails("$MAILD_T_UNSET/x", "$MAILD_T_UNSET is not set",
	    "unset $VAR");
	expand_fails("${MAILD_T_UNSET}/x", "$MAILD_T_UNSET is not set",
	    "unset ${VAR}");
	expand_fails("$MAILD_T_EMPTY/x", "is not set", "empty $VAR");
	expand_fails("${HOME", "unterminated", "${ without }");
	expand_fails("/a/${}", "bad variable name", "${}");
	expand_fails("/a/$", "bad variable name", "trailing $");
	expand_fails("/a/$/b", "bad variable name", "$/");

	/* Length limits: PATH_MAX - 1 bytes fit, PATH_MAX do not. */
	big = xmalloc(PATH_MAX + 10);
	big[0] = '/';
	memset(big + 1, 'a', PATH_MAX - 2);
	big[PATH_MAX - 1] = '\0';
	out = config_expand_path(big, &cause);
	ok(out != NULL && strlen(out) == PATH_MAX - 1,
	    "expand: a path of PATH_MAX - 1 bytes is fine");
	free(out);
	big[PATH_MAX - 1] = 'a';
	big[PATH_MAX] = '\0';
	expand_fails(big, "path too long", "path of PATH_MAX bytes");
	memset(big, 'b', PATH_MAX - 100);
	big[PATH_MAX - 100] = '\0';
	setenv("MAILD_T_BIG", big, 1);
	expand_fails("$MAILD_T_BIG/$MAILD_T_BIG", "path too long",
	    "variables too long together");
	expand_fails("~/$MAILD_T_BIG/$MAILD_T_BIG", "path too long",
	    "~ and variables too long together");
	setenv("HOME", big, 1);
	n = strlen(big);
	xasprintf(&want, "%s/x", big);
	expand_is("~/x", want);
	free(want);
	big[n] = 'c';
	memset(big + n, 'c', PATH_MAX + 5 - n);
	big[PATH_MAX + 5] = '\0';
	setenv("HOME", big, 1);
	expand_fails("~", "path too long", "~ with an overlong $HOME");
	free(big);

	/* No $HOME: ~ is the password database's home. */
	unsetenv("HOME");
	if ((pw = getpwuid(getuid())) != NULL) {
		xasprintf(&want, "%s/x", pw->pw_dir);
		expand_is("~/x", want);
		free(want);
	}
	setenv("HOME", "", 1);
	if (pw != NULL) {
		xasprintf(&want, "%s/x", pw->pw_dir);
		expand_is("~/x", want);
		free(want);
	}
	free(cause);
}

/* ---------------------------------------------------------------------- */
/* config_load: good configs */

static void
test_good(void)
{
	struct config		*conf;
	struct account_conf	*a;
	char			*cause, *path, *want;
	const char		*text;

	setenv("HOME", topdir, 1);
	unsetenv("XDG_STATE_HOME");
	unsetenv("XDG_CONFIG_HOME");

	conf = load(
	    "state-dir = \"/var/tmp/maild-st\"\n"
	    "account main {\n"
	    "  host = \"pop.example.com\"\n"
	    "  user = \"me\"\n"
	    "  password = \"secret\"\n"
	    "  maildir = \"~/Maildir\"\n"
	    "}\n", 0600, &path, &cause);
	if (!ok(conf != NULL, "minimal config loads")) {
		diag("%s", cause);
		free(cause);
		free(path);
		return;
	}
	is_str(conf->path, path, "minimal: path");
	is_int(conf->naccounts, 1, "minimal: one account");
	is_int(conf->poll_interval, 300, "minimal: poll-interval 300");
	is_int(conf->timeout, 60, "minimal: timeout 60");
	is_int(conf->session_timeout, 3600, "minimal: session-timeout 3600");
	is_int(conf->max_connections, 32, "minimal: max-connections 32");
	is_str(conf->state_dir, "/var/tmp/maild-st", "minimal: state-dir");
	a = &conf->accounts[0];
	is_str(a->name, "main", "minimal: account name");
	is_str(a->host, "pop.example.com", "minimal: host");
	is_int(a->port, 995, "minimal: port 995");
	is_str(a->user, "me", "minimal: user");
	is_int(a->secret_source, SECRET_PASSWORD, "minimal: password inline");
	is_str(a->secret, "secret", "minimal: password");
	xasprintf(&want, "%s/Maildir", topdir);
	is_str(a->maildir, want, "minimal: maildir expanded from ~");
	free(want);
	ok(a->ca_file == NULL, "minimal: no ca-file");
	is_int(a->keep, 0, "minimal: keep false");
	is_int(a->poll_interval, 300, "minimal: account poll-interval 300");
	config_free(conf);
	free(path);

	/* The default state directory. */
	conf = load(
	    "account main {\n"
	    "  host = \"pop.example.com\"\n"
	    "  user = \"me\"\n"
	    "  password = \"secret\"\n"
	    "  maildir = \"/m\"\n"
	    "}\n", 0600, NULL, &cause);
	if (ok(conf != NULL, "config without state-dir loads")) {
		if (getuid() == 0)
			xasprintf(&want, "%s/lib/maild", LOCALSTATEDIR);
		else
			xasprintf(&want, "%s/.local/state/maild", topdir);
		is_str(conf->state_dir, want, "default state-dir");
		free(want);
	} else
		diag("%s", cause);
	config_free(conf);
	free(cause);

	/* Everything set. */
	setenv("MAILD_T_CA", "/etc/ssl/ca.pem", 1);
	text =
	    "# maild test config\n"
	    "poll-interval = 5m\n"
	    "timeout = 30s\n"
	    "session-timeout = 1h\n"
	    "max-connections = 4\n"
	    "state-dir = \"$HOME/state\"\n"
	    "account work {\n"
	    "  host = \"POP.example.com\"\n"
	    "  port = 1995\n"
	    "  user = \"me@example.com\"\n"
	    "  password-file = \"~/pw\"\n"
	    "  maildir = \"${HOME}/Mail/work\"\n"
	    "  keep = true\n"
	    "  ca-file = \"$MAILD_T_CA\"\n"
	    "  poll-interval = 2h\n"
	    "}\n"
	    "account 'me@home.example_1.x+y-z' {\n"
	    "  host = \"pop.example.com\"\n"
	    "  user = \"me@example.com\"\n"
	    "  password-command = \"pass show mail\"\n"
	    "  maildir = \"/var/mail/me\"\n"
	    "}\n";
	conf = load(text, 0644, NULL, &cause);
	if (ok(conf != NULL, "full config loads (0644: no inline password)")) {
		is_int(conf->poll_interval, 300, "full: poll-interval 5m");
		is_int(conf->timeout, 30, "full: timeout 30s");
		is_int(conf->session_timeout, 3600, "full: session-timeout 1h");
		is_int(conf->max_connections, 4, "full: max-connections");
		xasprintf(&want, "%s/state", topdir);
		is_str(conf->state_dir, want, "full: state-dir expanded");
		free(want);
		is_int(conf->naccounts, 2, "full: two accounts");
		a = &conf->accounts[0];
		is_int(a->port, 1995, "full: port");
		is_int(a->keep, 1, "full: keep");
		is_int(a->poll_interval, 7200, "full: account poll-interval");
		is_int(a->secret_source, SECRET_FILE, "full: password-file");
		xasprintf(&want, "%s/pw", topdir);
		is_str(a->secret, want, "full: password-file expanded");
		free(want);
		xasprintf(&want, "%s/Mail/work", topdir);
		is_str(a->maildir, want, "full: maildir expanded from ${HOME}");
		free(want);
		is_str(a->ca_file, "/etc/ssl/ca.pem", "full: ca-file expanded");
		a = &conf->accounts[1];
		is_str(a->name, "me@home.example_1.x+y-z",
		    "full: account name with all allowed punctuation");
		is_int(a->secret_source, SECRET_COMMAND,
		    "full: password-command");
		is_str(a->secret, "pass show mail", "full: the command");
		is_int(a->poll_interval, 300, "full: poll-interval inherited");
		is_int(a->port, 995, "full: second account port 995");
	} else
		diag("%s", cause);
	config_free(conf);
	free(cause);

	/* Limits that are just inside. */
	good("port 1 and 65535",
	    "state-dir = \"/s\"\n"
	    "account a {\n  host = \"h\"\n  port = 1\n  user = \"u\"\n"
	    "  password = \"p\"\n  maildir = \"/m\"\n}\n"
	    "account b {\n  host = \"h\"\n  port = 65535\n  user = \"u\"\n"
	    "  password = \"p\"\n  maildir = \"/m\"\n}\n", 0600);
	good("same host and user, other port",
	    "state-dir = \"/s\"\n"
	    "account a {\n  host = \"h\"\n  user = \"u\"\n"
	    "  password = \"p\"\n  maildir = \"/m\"\n}\n"
	    "account b {\n  host = \"h\"\n  port = 110\n  user = \"u\"\n"
	    "  password = \"p\"\n  maildir = \"/m\"\n}\n", 0600);
	good("same host, user differing in case",
	    "state-dir = \"/s\"\n"
	    "account a {\n  host = \"h\"\n  user = \"u\"\n"
	    "  password = \"p\"\n  maildir = \"/m\"\n}\n"
	    "account b {\n  host = \"h\"\n  user = \"U\"\n"
	    "  password = \"p\"\n  maildir = \"/m\"\n}\n", 0600);
	good("poll-interval 10s, max-connections 1 and 1000",
	    "poll-interval = 10s\nmax-connections = 1000\n"
	    "state-dir = \"/s\"\n"
	    "account a {\n  host = \"h\"\n  user = \"u\"\n"
	    "  password = \"p\"\n  maildir = \"/m\"\n  poll-interval = 10\n"
	    "}\n", 0600);
	good("max-connections 1",
	    "max-connections = 1\nstate-dir = \"/s\"\n"
	    "account a {\n  host = \"h\"\n  user = \"u\"\n"
	    "  password = \"p\"\n  maildir = \"/m\"\n}\n", 0600);
	good("account name of 64 characters",
	    "state-dir = \"/s\"\n"
	    "account aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	    " {\n  host = \"h\"\n  user = \"u\"\n"
	    "  password = \"p\"\n  maildir = \"/m\"\n}\n", 0600);
	good("inline password, mode 0400",
	    "state-dir = \"/s\"\n"
	    "account a {\n  host = \"h\"\n  user = \"u\"\n"
	    "  password = \"p\"\n  maildir = \"/m\"\n}\n", 0400);
	good("password-file, mode 0644",
	    "state-dir = \"/s\"\n"
	    "account a {\n  host = \"h\"\n  user = \"u\"\n"
	    "  password-file = \"/nonexistent/pw\"\n  maildir = \"/m\"\n}\n",
	    0644);
	good("password-command, mode 0644",
	    "state-dir = \"/s\"\n"
	    "account a {\n  host = \"h\"\n  user = \"u\"\n"
	    "  password-command = \"echo x\"\n  maildir = \"/m\"\n}\n", 0644);
}

/* ---------------------------------------------------------------------- */
/* config_load: bad configs */

/* An account section with one line replaced or added. */
#define HEAD	"state-dir = \"/s\"\n"		/* line 1 */ \
		"account a {\n"			/* line 2 */
#define HOST	"  host = \"h\"\n"		/* line 3 */
#define USER	"  user = \"u\"\n"		/* line 4 */
#define PASS	"  password = \"p\"\n"
#define MDIR	"  maildir = \"/m\"\n"
#define TAIL	"}\n"

static void
test_bad(void)
{
	char	*nofile;

	setenv("HOME", topdir, 1);
	unsetenv("MAILD_T_UNSET");

	/* Parse errors found by libconfuse or the callbacks. */
	bad("unknown option",
	    HEAD HOST USER "  bogus = 1\n" PASS MDIR TAIL, 0600, 5,
	    "no such option 'bogus'");
	bad("unknown global option",
	    "state-dir = \"/s\"\nfrobnicate = 1\n"
	    "account a {\n" HOST USER PASS MDIR TAIL, 0600, 2,
	    "no such option 'frobnicate'");
	bad("option set twice in a section",
	    HEAD HOST USER "  user = \"v\"\n" PASS MDIR TAIL, 0600, 5,
	    "'user' is set twice");
	bad("option set twice, apart",
	    HEAD HOST USER PASS MDIR "  user = \"v\"\n" TAIL, 0600, 7,
	    "'user' is set twice");
	bad("global option set twice",
	    "timeout = 30\nstate-dir = \"/s\"\ntimeout = 40\n"
	    "account a {\n" HOST USER PASS MDIR TAIL, 0600, 3,
	    "'timeout' is set twice");
	bad("bad duration in an account",
	    HEAD HOST USER "  poll-interval = 5x\n" PASS MDIR TAIL, 0600, 5,
	    "is not a duration");
	bad("bad global duration",
	    "state-dir = \"/s\"\ntimeout = 31d\n"
	    "account a {\n" HOST USER PASS MDIR TAIL, 0600, 2,
	    "'31d' is not a duration");
	bad("duplicate account title",
	    HEAD HOST USER PASS MDIR TAIL
	    "account a {\n" HOST "  user = \"other\"\n" PASS MDIR TAIL, 0600, 8,
	    "account \"a\" is defined twice (lines 2 and 8)");
	bad("port not a number",
	    HEAD HOST "  port = pop3s\n" USER PASS MDIR TAIL, 0600, 4,
	    "port");
	bad("keep not a boolean",
	    HEAD HOST "  keep = maybe\n" USER PASS MDIR TAIL, 0600, 4,
	    "keep");
	bad("stray closing brace",
	    HEAD HOST USER PASS MDIR TAIL TAIL, 0600, 8,
	    "unexpected '}': no account block is open here");
	bad("missing equal sign",
	    HEAD HOST USER "  password \"p\"\n" MDIR TAIL, 0600, 5,
	    "missing equal sign");

	/* Errors about a whole account: reported at its "account" line. */
	bad("missing host",
	    HEAD USER PASS MDIR TAIL, 0600, 2, "'host' is required");
	bad("missing user",
	    HEAD HOST PASS MDIR TAIL, 0600, 2, "'user' is required");
	bad("missing maildir",
	    HEAD HOST USER PASS TAIL, 0600, 2, "'maildir' is required");
	bad("no password option",
	    HEAD HOST USER MDIR TAIL, 0600, 2, "give exactly one of password");
	bad("password and password-file",
	    HEAD HOST USER PASS "  password-file = \"/pw\"\n" MDIR TAIL, 0600,
	    2, "give exactly one of password");
	bad("password-file and password-command",
	    HEAD HOST USER "  password-file = \"/pw\"\n"
	    "  password-command = \"x\"\n" MDIR TAIL, 0600, 2,
	    "give exactly one of password");
	bad("two accounts for one mailbox",
	    HEAD HOST USER PASS MDIR TAIL
	    "account b {\n" "  host = \"H\"\n" USER PASS
	    "  maildir = \"/other\"\n" TAIL, 0600, 8,
	    "account \"b\" fetches the same mailbox as account \"a\" (line 2)");
	bad("no account", "state-dir = \"/s\"\ntimeout = 30\n", 0600, 0,
	    "no account is configured");

	/* The secrecy of inline passwords. */
	bad("inline password, group-readable",
	    HEAD HOST USER PASS MDIR TAIL, 0640, 2,
	    "readable by others (mode 0640)");
	bad("inline password, world-readable",
	    HEAD HOST USER PASS MDIR TAIL, 0644, 2, "chmod 600");
	bad("inline password, other-writable only",
	    HEAD HOST USER PASS MDIR TAIL, 0602, -1, "writable by others");
	/*
	 * A config others can write to can name any password-command (run
	 * as maild's user, root for the system instance) or redirect the
	 * mail; like fetchmail and ssh, refuse it whatever holds the secret.
	 */
	bad("password-command, world-writable file",
	    HEAD HOST USER "  password-command = \"echo x\"\n" MDIR TAIL, 0666,
	    -1, "writable");
	bad("password-command, group-writable file",
	    HEAD HOST USER "  password-command = \"echo x\"\n" MDIR TAIL, 0620,
	    -1, "writable");
	bad("inline password in the second account, 0644",
	    HEAD HOST USER "  password-file = \"/pw\"\n" MDIR TAIL
	    "account b {\n" "  host = \"h2\"\n" USER PASS MDIR TAIL, 0644, 8,
	    "account \"b\" has a password");

	/* Values of account options, checked after parsing. */
	bad("port 0",
	    HEAD HOST USER "  port = 0\n" PASS MDIR TAIL, 0600, 5,
	    "port 0 is out of range");
	bad("port 70000",
	    HEAD HOST USER "  port = 70000\n" PASS MDIR TAIL, 0600, 5,
	    "port 70000 is out of range");
	bad("port -1",
	    HEAD HOST USER "  port = -1\n" PASS MDIR TAIL, 0600, 5,
	    "out of range");
	bad("empty host",
	    HEAD USER "  host = \"\"\n" PASS MDIR TAIL, 0600, 4,
	    "'host' is empty");
	bad("host with a space",
	    HEAD USER "  host = \"pop example.com\"\n" PASS MDIR TAIL, 0600, 4,
	    "is not a host name");
	bad("user with CR LF",
	    HEAD HOST PASS "  user = \"me\\r\\nDELE 1\"\n" MDIR TAIL, 0600, 5,
	    "'user' contains a control character");
	bad("user with a tab",
	    HEAD HOST PASS "  user = \"me\\tyou\"\n" MDIR TAIL, 0600, 5,
	    "control character");
	bad("user with DEL",
	    HEAD HOST PASS "  user = \"me\\x7f\"\n" MDIR TAIL, 0600, 5,
	    "control character");
	bad("host with an escape",
	    HEAD USER "  host = \"h\\eost\"\n" PASS MDIR TAIL, 0600, 4,
	    "control character");
	bad("password with LF",
	    HEAD HOST USER MDIR "  password = \"a\\nb\"\n" TAIL, 0600, 6,
	    "'password' contains a control character");
	bad("empty password",
	    HEAD HOST USER MDIR "  password = \"\"\n" TAIL, 0600, 6,
	    "'password' is empty");
	bad("relative maildir",
	    HEAD HOST USER PASS "  maildir = \"Mail\"\n" TAIL, 0600, 6,
	    "'Mail' is not an absolute path");
	bad("maildir with an unset variable",
	    HEAD HOST USER PASS "  maildir = \"$MAILD_T_UNSET/Mail\"\n" TAIL,
	    0600, 6, "$MAILD_T_UNSET is not set");
	bad("relative password-file",
	    HEAD HOST USER "  password-file = \"pw\"\n" MDIR TAIL, 0600, 5,
	    "is not an absolute path");
	bad("relative ca-file",
	    HEAD HOST USER PASS MDIR "  ca-file = \"ca.pem\"\n" TAIL, 0600, 7,
	    "is not an absolute path");
	bad("account poll-interval of 0",
	    HEAD HOST USER "  poll-interval = 0s\n" PASS MDIR TAIL, 0600, 5,
	    "poll-interval must be at least 1s");

	/* Account names. */
	bad("account name with a space",
	    "state-dir = \"/s\"\naccount 'a b' {\n" HOST USER PASS MDIR TAIL,
	    0600, 2, "account name \"a b\" must be");
	bad("account name with a slash",
	    "state-dir = \"/s\"\naccount 'a/b' {\n" HOST USER PASS MDIR TAIL,
	    0600, 2, "must be 1 to 64");
	bad("account name ..x/",
	    "state-dir = \"/s\"\naccount '../x' {\n" HOST USER PASS MDIR TAIL,
	    0600, 2, "must be 1 to 64");
	bad("empty account name",
	    "state-dir = \"/s\"\naccount '' {\n" HOST USER PASS MDIR TAIL,
	    0600, 2, "must be 1 to 64");
	bad("account name of 65 characters",
	    "state-dir = \"/s\"\naccount "
	    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	    " {\n" HOST USER PASS MDIR TAIL, 0600, 2, "must be 1 to 64");
	bad("account name with a control character",
	    "state-dir = \"/s\"\naccount \"a\\tb\" {\n" HOST USER PASS MDIR
	    TAIL, 0600, 2, "must be 1 to 64");

	/* Global values, checked after parsing. */
	bad("max-connections 0",
	    "state-dir = \"/s\"\nmax-connections = 0\ntimeout = 30\n"
	    "account a {\n" HOST USER PASS MDIR TAIL, 0600, 2,
	    "max-connections must be between 1 and 1000");
	bad("max-connections 1001",
	    "state-dir = \"/s\"\nmax-connections = 1001\ntimeout = 30\n"
	    "account a {\n" HOST USER PASS MDIR TAIL, 0600, 2,
	    "max-connections must be between 1 and 1000");
	bad("global poll-interval of 0",
	    "state-dir = \"/s\"\npoll-interval = 0\ntimeout = 30\n"
	    "account a {\n" HOST USER PASS MDIR TAIL, 0600, 2,
	    "poll-interval must be at least 1s");
	bad("timeout 0",
	    "state-dir = \"/s\"\ntimeout = 0\nmax-connections = 3\n"
	    "account a {\n" HOST USER PASS MDIR TAIL, 0600, 2,
	    "timeout must be at least 1s");
	bad("session-timeout shorter than timeout",
	    "state-dir = \"/s\"\ntimeout = 2m\nsession-timeout = 1m\n"
	    "max-connections = 3\n"
	    "account a {\n" HOST USER PASS MDIR TAIL, 0600, 3,
	    "session-timeout must not be shorter than timeout");
	bad("relative state-dir",
	    "timeout = 30\nstate-dir = \"state\"\nmax-connections = 3\n"
	    "account a {\n" HOST USER PASS MDIR TAIL, 0600, 2,
	    "is not an absolute path");

	/*
	 * Comments must not throw the line numbers off: the unknown option
	 * is on line 6 (libconfuse 3.3 counts each '#' or '//' comment line
	 * twice).
	 */
	bad("line numbers after comments",
	    "# maild.conf\n"
	    "// another comment\n"
	    "state-dir = \"/s\"   # trailing comment\n"
	    "account a {\n"
	    HOST
	    "  bogus = 1\n"
	    USER PASS MDIR TAIL, 0600, 6, "no such option 'bogus'");
	bad("line numbers after a C comment",
	    "/* maild.conf\n"
	    " */\n"
	    "state-dir = \"/s\"\n"
	    "account a {\n"
	    HOST
	    "  bogus = 1\n"
	    USER PASS MDIR TAIL, 0600, 6, "no such option 'bogus'");

	/* A missing file. */
	{
		struct config	*conf;
		char		*cause = NULL;

		xasprintf(&nofile, "%s/does-not-exist.conf", topdir);
		conf = config_load(nofile, &cause);
		ok(conf == NULL, "missing config file: refused");
		has_prefix(cause, tap_fmt("%s: ", nofile),
		    "missing config file: message starts with \"file: \"");
		like(cause, strerror(ENOENT), "missing config file: says why");
		free(cause);
		free(nofile);
	}
}

/* ---------------------------------------------------------------------- */
/* Syntax mistakes libconfuse misreports (confuse_compat.c) */

#define ACCT(name, host)						\
	"account \"" name "\" {\n"					\
	"    host = \"" host "\"\n"					\
	"    user = \"u\"\n"						\
	"    password = \"p\"\n"					\
	"    maildir = \"/m\"\n"

static void
test_syntax(void)
{
	setenv("HOME", topdir, 1);

	bad_exact("missing '}' before the next account",
	    "state-dir = \"/s\"\n"			/* 1 */
	    "\n"					/* 2 */
	    ACCT("home", "h1")				/* 3-7 */
	    "\n"					/* 8 */
	    ACCT("work", "h2")				/* 9-13 */
	    "}\n", 9,
	    "missing '}' for account \"home\" opened at line 3");
	bad_exact("missing final '}'",
	    "state-dir = \"/s\"\n"
	    ACCT("home", "h1"), 6,
	    "missing '}' for account \"home\" opened at line 2");
	bad_exact("missing final '}', comments and blank lines after",
	    "state-dir = \"/s\"\n"
	    ACCT("home", "h1")
	    "\n# the end\n\n", 6,
	    "missing '}' for account \"home\" opened at line 2");
	bad_exact("unterminated string",
	    "state-dir = \"/s\"\n"
	    "account \"home\" {\n"
	    "    host = \"h\"\n"
	    "    user = \"u\"\n"
	    "    password-file = \"/path/to/pass\n"
	    "    maildir = \"/m\"\n"
	    "}\n", 5, "account \"home\": unterminated string: the \" opened "
	    "on this line is not closed before the end of the line");
	bad_exact("unterminated single-quoted string",
	    "state-dir = '/s\n"
	    ACCT("home", "h1") "}\n", 1, "unterminated string: the ' opened "
	    "on this line is not closed before the end of the line");
	bad_exact("unterminated string at the end of the file",
	    "state-dir = \"/s\"\n"
	    ACCT("home", "h1") "}\nmax-connections = \"3", 8,
	    "unterminated string: the \" opened on this line is not closed "
	    "before the end of the line");
	bad_exact("poll-interval = 5 min",
	    "state-dir = \"/s\"\n"
	    "poll-interval = 5 min\n"
	    ACCT("a", "h") "}\n", 2,
	    "poll-interval: '5 min' is not a duration (write 5m)");
	bad_exact("poll-interval = \"5 min\" (quoted)",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    poll-interval = \"5 min\"\n"
	    "}\n", 7, "account \"a\": poll-interval: '5 min' is not a "
	    "duration (write 5m)");
	bad_exact("timeout = 10 minutes, last in the file",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h") "}\n"
	    "timeout = 10 minutes\n", 8,
	    "timeout: '10 minutes' is not a duration (write 10m)");
	bad_exact("poll-interval = 45 days (too long for a hint)",
	    "state-dir = \"/s\"\n"
	    "poll-interval = 45 days\n"
	    ACCT("a", "h") "}\n", 2,
	    "poll-interval: '45 days' is not a duration (like 90, 30s, 5m, "
	    "2h or 1d; at most 30d)");
	bad_exact("max-size = 20 MB",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    max-size = 20 MB\n"
	    "}\n", 7, "account \"a\": max-size: '20 MB' is not a size "
	    "(write 20M)");
	bad_exact("delete-after = 30 days",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    keep = yes\n"
	    "    delete-after = 30 days\n"
	    "}\n", 8, "account \"a\": delete-after: '30 days' is not a "
	    "duration (write 30d)");
	bad_exact("an unquoted command",
	    "state-dir = \"/s\"\n"
	    "account \"a\" {\n"
	    "    host = \"h\"\n"
	    "    user = \"u\"\n"
	    "    password-command = pass show mail/home\n"
	    "    maildir = \"/m\"\n"
	    "}\n", 5, "account \"a\": password-command: put the value in "
	    "quotes: password-command = \"pass show mail/home\"");
	bad_exact("${HOME}/Mail unquoted",
	    "state-dir = \"/s\"\n"
	    "account \"a\" {\n"
	    "    host = \"h\"\n"
	    "    user = \"u\"\n"
	    "    password = \"p\"\n"
	    "    maildir = ${HOME}/Mail\n"
	    "}\n", 6, "account \"a\": maildir: put the value in quotes: "
	    "maildir = \"${HOME}/Mail\"");
	bad_exact("a boolean with a second word",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    keep = yes please\n"
	    "}\n", 7, "account \"a\": keep: unexpected 'please' after the "
	    "value");
	bad_exact("a word after a quoted value",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    ca-file = \"/etc/ca.pem\" /etc/other.pem\n"
	    "}\n", 7, "account \"a\": ca-file: unexpected '/etc/other.pem' "
	    "after the value");
	bad_exact("host outside any account",
	    "state-dir = \"/s\"\n"
	    "host = \"h\"\n"
	    "account \"a\" {\n"
	    "    user = \"u\"\n"
	    "    password = \"p\"\n"
	    "    maildir = \"/m\"\n"
	    "}\n", 2, "host belongs inside an account block");
	bad_exact("an option after the account's '}'",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "}\n"
	    "    keep = yes\n", 8, "keep belongs inside an account block");
	bad_exact("a global option inside an account",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    timeout = 30\n"
	    "}\n", 7, "account \"a\": timeout is a global option: move it "
	    "out of the account block");
	bad_exact("account defined twice",
	    "state-dir = \"/s\"\n"
	    "\n"
	    ACCT("a", "h1") "}\n"
	    "\n"
	    ACCT("a", "h2") "}\n", 10,
	    "account \"a\" is defined twice (lines 3 and 10)");
	bad_exact("account defined twice, quoted and not",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h1") "}\n"
	    "account a {\n host = \"h2\"\n}\n", 8,
	    "account \"a\" is defined twice (lines 2 and 8)");
	bad_exact("typo: kep",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    kep = yes\n"
	    "}\n", 7, "account \"a\": no such option 'kep'; did you mean "
	    "'keep'?");
	bad_exact("typo: hsot",
	    "state-dir = \"/s\"\n"
	    "account \"a\" {\n"
	    "    hsot = \"h\"\n"
	    "}\n", 3, "account \"a\": no such option 'hsot'; did you mean "
	    "'host'?");
	bad_exact("typo: Host",
	    "state-dir = \"/s\"\n"
	    "account \"a\" {\n"
	    "    Host = \"h\"\n"
	    "}\n", 3, "account \"a\": no such option 'Host'; did you mean "
	    "'host'?");
	bad_exact("typo: acount",
	    "state-dir = \"/s\"\n"
	    "acount \"a\" {\n"
	    "}\n", 2, "no such option 'acount'; did you mean 'account'?");
	bad_exact("typo of a global option: stat-dir",
	    "stat-dir = \"/s\"\n", 1,
	    "no such option 'stat-dir'; did you mean 'state-dir'?");
	bad_exact("no suggestion when nothing is close",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    colour = \"blue\"\n"
	    "}\n", 7, "account \"a\": no such option 'colour'");
	bad_exact("no suggestion for a short word",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    ab = 1\n"
	    "}\n", 7, "account \"a\": no such option 'ab'");
	bad_exact("option set twice",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    user = \"v\"\n"
	    "}\n", 7, "account \"a\": 'user' is set twice (lines 4 and 7)");
	bad_exact("an error before a structural one is reported first",
	    "state-dir = \"/s\"\n"
	    "timeout = 31d\n"
	    ACCT("a", "h"), 2, "timeout: '31d' is not a duration (like 90, "
	    "30s, 5m, 2h or 1d; at most 30d)");
	bad_exact("a structural mistake before a value error",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    ACCT("b", "h2")
	    "    poll-interval = 5x\n"
	    "}\n", 7, "missing '}' for account \"a\" opened at line 2");

	/* What is fine. */
	good("two options on one line",
	    "state-dir = \"/s\" timeout = 30\n"
	    "account \"a\" { host = \"h\" user = \"u\"\n"
	    "password = \"p\" maildir = \"/m\" }\n", 0600);
	good("lists, += and an empty list",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    add-headers = {\"received\", \"delivered-to\"}\n"
	    "    add-headers += {\"x-original-to\"}\n"
	    "    tls-fingerprint = {}\n"
	    "}\n", 0600);
	good("a list over several lines",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    add-headers = {\n"
	    "        \"received\",\n"
	    "        \"delivered-to\"\n"
	    "    }\n"
	    "}\n", 0600);
	good("'#', '//' and '{' inside quotes; braces on their own lines",
	    "state-dir = \"/s\"\n"
	    "account \"a\"\n"
	    "{\n"
	    "    host = \"h\"\n"
	    "    user = \"u#1//x{\"\n"
	    "    password = 'p#}'\n"
	    "    maildir = \"/m\"   // comment with a \" quote\n"
	    "}\n", 0600);
	good("a string continued on the next line",
	    "state-dir = \"/s\"\n"
	    "account \"a\" {\n"
	    "    host = \"h\"\n"
	    "    user = \"u\"\n"
	    "    password-command = \"echo \\\n"
	    "secret\"\n"
	    "    maildir = \"/m\"\n"
	    "}\n", 0600);
	bad("line numbers after a continued string",
	    "state-dir = \"/s\"\n"
	    "account \"a\" {\n"
	    "    host = \"h\"\n"
	    "    user = \"u\"\n"
	    "    password-command = \"echo \\\n"
	    "secret\"\n"
	    "    maildir = \"/m\"\n"
	    "    bogus = 1\n"
	    "}\n", 0600, 8, "no such option 'bogus'");
	good("unquoted words and ${VAR}",
	    "state-dir = /s\n"
	    "account a {\n"
	    "    host = pop.example.com\n"
	    "    user = me@example.com\n"
	    "    password = p\n"
	    "    maildir = ${HOME}\n"
	    "    poll-interval = 5m\n"
	    "}\n", 0600);
}

/* ---------------------------------------------------------------------- */
/* What goes on the wire (config.c: conf_account_wire) */

/* An account with this user, auth and host; 0 = the default. */
static char *
wire_conf(const char *user, size_t userlen, const char *auth,
    const char *host)
{
	char	*text, *u;

	u = xmalloc(userlen + 1);
	memset(u, user[0], userlen);
	memcpy(u, user, strlen(user) < userlen ? strlen(user) : userlen);
	u[userlen] = '\0';
	xasprintf(&text, "state-dir = \"/s\"\n"
	    "account \"a\" {\n"
	    "    host = \"%s\"\n"
	    "    user = \"%s\"\n"
	    "    password = \"p\"\n"
	    "    maildir = \"/m\"\n"
	    "%s%s%s"
	    "}\n", host, u, auth != NULL ? "    auth = " : "",
	    auth != NULL ? auth : "", auth != NULL ? "\n" : "");
	free(u);
	return (text);
}

/* Loads if msg is NULL, else is refused with msg at line. */
static void
wire_case(const char *what, size_t userlen, const char *auth,
    const char *host, int line, const char *msg)
{
	char	*text = wire_conf("u", userlen, auth, host);

	if (msg == NULL)
		good(what, text, 0600);
	else
		bad_exact(what, text, line, msg);
	free(text);
}

#define wire_good(what, userlen, auth, host)				\
	wire_case((what), (userlen), (auth), (host), 0, NULL)
#define wire_bad(what, userlen, auth, host, line, msg)			\
	wire_case((what), (userlen), (auth), (host), (line), (msg))

#define A64	"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" \
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

/* IMAP folder names: INBOX in any case is one folder, others exact. */
static void
test_imap_folders(void)
{
	bad_exact("INBOX twice, in two cases",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    protocol = imap\n"
	    "    folders = {\"INBOX\", \"Work\", \"inbox\"}\n"
	    "}\n", 8, "account \"a\": folder \"inbox\" is listed twice (as "
	    "\"INBOX\" too)");
	bad_exact("move-to a folder also fetched",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    protocol = imap\n"
	    "    folders = {\"INBOX\", \"Archive\"}\n"
	    "    move-to = \"Archive\"\n"
	    "}\n", 9, "account \"a\": move-to \"Archive\" is one of the "
	    "folders fetched; move to a folder that is not fetched");
	bad_exact("move-to Inbox, INBOX fetched by default",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    protocol = imap\n"
	    "    move-to = \"Inbox\"\n"
	    "}\n", 8, "account \"a\": move-to \"Inbox\" is one of the "
	    "folders fetched; move to a folder that is not fetched");
	good("two folders differing in case only (not INBOX)",
	    "state-dir = \"/s\"\n"
	    ACCT("a", "h")
	    "    protocol = imap\n"
	    "    folders = {\"Work\", \"work\", \"INBOX.work\"}\n"
	    "    move-to = \"WORK\"\n"
	    "}\n", 0600);
}

static void
test_wire(void)
{
	char	host[300], *msg;
	size_t	i;

	wire_good("auth = user, a user of 248 bytes", 248, "user", "h");
	wire_bad("auth = user, a user of 249 bytes", 249, "user", "h", 4,
	    "account \"a\": user is 249 bytes long, too long for POP3: "
	    "\"USER <user>\" must fit in 255 octets (RFC 2449), which leaves "
	    "248 for the name");
	wire_good("auth = apop, a user of 215 bytes", 215, "apop", "h");
	wire_bad("auth = apop, a user of 216 bytes", 216, "apop", "h", 4,
	    "account \"a\": user is 216 bytes long, too long for POP3: "
	    "\"APOP <user> <digest>\" must fit in 255 octets (RFC 2449), "
	    "which leaves 215 for the name");
	wire_good("auth = auto, a user of 215 bytes", 215, NULL, "h");
	wire_bad("auth = auto, a user of 216 bytes", 216, NULL, "h", 4,
	    "account \"a\": user is 216 bytes long, too long for POP3: "
	    "\"APOP <user> <digest>\" must fit in 255 octets (RFC 2449), "
	    "which leaves 215 for the name (auth = auto may log in with "
	    "APOP; name a SASL method with auth for a longer one)");
	wire_good("auth = plain, a user of 255 bytes", 255, "plain", "h");
	wire_good("auth = oauthbearer, a user of 255 bytes", 255,
	    "oauthbearer", "h");
	wire_bad("auth = xoauth2, a user of 256 bytes", 256, "xoauth2", "h", 4,
	    "account \"a\": user is 256 bytes long; at most 255 are allowed");

	wire_good("host: an IPv6 address", 1, NULL, "::1");
	wire_good("host: an IPv6 address with a zone", 1, NULL, "fe80::1%eth0");
	wire_good("host: a name with a final dot", 1, NULL, "pop.example.com.");
	wire_good("host: a name with '_' and digits", 1, NULL, "my_pop-3.lan");
	wire_bad("host: an empty label", 1, NULL, "pop..example.com", 3,
	    "account \"a\": host 'pop..example.com' is not a host name or "
	    "address: it has an empty part between dots");
	wire_bad("host: a leading dot", 1, NULL, ".example.com", 3,
	    "account \"a\": host '.example.com' is not a host name or "
	    "address: it has an empty part between dots");
	wire_bad("host: an address in brackets", 1, NULL, "[::1]", 3,
	    "account \"a\": host '[::1]' is not a host name or address: a "
	    "host name has only letters, digits, '-', '_' and dots");
	wire_bad("host: a URL", 1, NULL, "pop3s://pop.example.com", 3,
	    "account \"a\": host 'pop3s://pop.example.com' is not a host "
	    "name or address: a host name has only letters, digits, '-', "
	    "'_' and dots");
	snprintf(host, sizeof host, "%.64s.example.com", A64);
	xasprintf(&msg, "account \"a\": host '%s' is not a host name or "
	    "address: a part between dots is at most 63 characters", host);
	wire_bad("host: a label of 64", 1, NULL, host, 3, msg);
	free(msg);
	snprintf(host, sizeof host, "%.63s.example.com", A64);
	wire_good("host: a label of 63", 1, NULL, host);
	memset(host, 'a', sizeof host);
	for (i = 50; i < 254; i += 50)
		host[i] = '.';
	host[253] = '\0';
	wire_good("host: a name of 253 characters", 1, NULL, host);
	host[253] = 'a';
	host[254] = '\0';
	xasprintf(&msg, "account \"a\": host '%s' is not a host name or "
	    "address: a host name is at most 253 characters", host);
	wire_bad("host: a name of 254 characters", 1, NULL, host, 3, msg);
	free(msg);
}

/* ---------------------------------------------------------------------- */
/* config_account_equal: every setting counts, where it is written not */

#define FP_A	"sha256:" FP_HALF FP_HALF
#define FP_B	"sha256:" FP_HALF "CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:CD:" \
		"CD:CD"
#define FP_HALF	"AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:"

#define EQ_BASE_GLOBAL	"state-dir = \"/s\"\ntimeout = 30\n" \
			"session-timeout = 1h\n"
#define EQ_BASE_ACCOUNT \
	"account \"a\" {\n"						\
	"    host = \"h\"\n"						\
	"    user = \"u\"\n"						\
	"    password = \"p\"\n"					\
	"    maildir = \"/m\"\n"

static int
accounts_equal(const char *ta, const char *tb)
{
	struct config	*a, *b;
	char		*cause;
	int		 r = -1;

	a = load(ta, 0600, NULL, &cause);
	if (a == NULL)
		diag("%s", cause);
	free(cause);
	b = load(tb, 0600, NULL, &cause);
	if (b == NULL)
		diag("%s", cause);
	free(cause);
	if (a != NULL && b != NULL)
		r = config_account_equal(a, &a->accounts[0], b,
		    &b->accounts[0]);
	config_free(a);
	config_free(b);
	return (r);
}

static void
test_account_equal(void)
{
	static const char *const changes[] = {
		"    port = 1995\n", "    keep = yes\n",
		"    keep = yes\n    delete-after = 2d\n",
		"    max-size = 1M\n", "    exact-sizes = no\n",
		"    add-headers = {\"delivered-to\"}\n",
		"    tls = starttls\n",
		"    tls = none\n    allow-plaintext = yes\n",
		"    ca-file = \"/ca.pem\"\n",
		"    tls-fingerprint = \"" FP_A "\"\n",
		"    tls-fingerprint = \"" FP_A "\"\n    tls-verify = yes\n",
		"    tls-cert-file = \"/c.pem\"\n"
		"    tls-key-file = \"/k.pem\"\n",
		"    tls-min-version = 1.3\n", "    auth = plain\n",
		"    pipelining = no\n", "    poll-interval = 1m\n",
	};
	const char	*base = EQ_BASE_GLOBAL EQ_BASE_ACCOUNT "}\n";
	char		*text;
	size_t		 i;

	is_int(accounts_equal(base, base), 1, "account equal: to itself");
	is_int(accounts_equal(base, "\n# moved down\n" EQ_BASE_GLOBAL
	    EQ_BASE_ACCOUNT "\n\n}\n"), 1,
	    "account equal: other line numbers do not count");
	for (i = 0; i < sizeof changes / sizeof changes[0]; i++) {
		xasprintf(&text, "%s%s}\n", EQ_BASE_GLOBAL EQ_BASE_ACCOUNT,
		    changes[i]);
		is_int(accounts_equal(base, text), 0, tap_fmt("account "
		    "equal: not with %s", shown(changes[i])));
		free(text);
	}
	is_int(accounts_equal(
	    EQ_BASE_GLOBAL EQ_BASE_ACCOUNT
	    "tls-fingerprint = \"" FP_A "\"\n}\n",
	    EQ_BASE_GLOBAL EQ_BASE_ACCOUNT
	    "tls-fingerprint = \"" FP_B "\"\n}\n"),
	    0, "account equal: not with another pin");
	is_int(accounts_equal(base, EQ_BASE_GLOBAL
	    "account \"a\" {\n    host = \"h2\"\n    user = \"u\"\n"
	    "    password = \"p\"\n    maildir = \"/m\"\n}\n"), 0,
	    "account equal: not with another host");
	is_int(accounts_equal(base, EQ_BASE_GLOBAL
	    "account \"a\" {\n    host = \"h\"\n    user = \"u2\"\n"
	    "    password = \"p\"\n    maildir = \"/m\"\n}\n"), 0,
	    "account equal: not with another user");
	is_int(accounts_equal(base, EQ_BASE_GLOBAL
	    "account \"a\" {\n    host = \"h\"\n    user = \"u\"\n"
	    "    password = \"p2\"\n    maildir = \"/m\"\n}\n"), 0,
	    "account equal: not with another password");
	is_int(accounts_equal(base, EQ_BASE_GLOBAL
	    "account \"a\" {\n    host = \"h\"\n    user = \"u\"\n"
	    "    password-command = \"p\"\n    maildir = \"/m\"\n}\n"), 0,
	    "account equal: not with another password source");
	is_int(accounts_equal(base, EQ_BASE_GLOBAL
	    "account \"a\" {\n    host = \"h\"\n    user = \"u\"\n"
	    "    password = \"p\"\n    maildir = \"/m2\"\n}\n"), 0,
	    "account equal: not with another maildir");
	is_int(accounts_equal(base, "state-dir = \"/s2\"\ntimeout = 30\n"
	    "session-timeout = 1h\n" EQ_BASE_ACCOUNT "}\n"), 0,
	    "account equal: not with another state-dir");
	is_int(accounts_equal(base, "state-dir = \"/s\"\ntimeout = 31\n"
	    "session-timeout = 1h\n" EQ_BASE_ACCOUNT "}\n"), 0,
	    "account equal: not with another timeout");
	is_int(accounts_equal(base, "state-dir = \"/s\"\ntimeout = 30\n"
	    "session-timeout = 2h\n" EQ_BASE_ACCOUNT "}\n"), 0,
	    "account equal: not with another session-timeout");
}

/* ---------------------------------------------------------------------- */
/* config_default_path */

static void
test_default_path(void)
{
	char	*home, *path, *cause = NULL, *want, *dir;

	if (access(SYSCONFDIR "/maild.conf", F_OK) == 0) {
		ok(1, "default path # SKIP " SYSCONFDIR "/maild.conf exists");
		return;
	}
	xasprintf(&home, "%s/home", topdir);
	setenv("HOME", home, 1);
	unsetenv("XDG_CONFIG_HOME");
	path = config_default_path(&cause);
	ok(path == NULL, "default path: none without a file");
	if (getuid() == 0)
		xasprintf(&want, "no configuration file: %s does not exist.\n"
		    "To begin, copy the example %s to it, fill in your account "
		    "and see maild.conf(5)", SYSCONFDIR "/maild.conf",
		    DOCDIR "/examples/maild.conf");
	else
		xasprintf(&want, "no configuration file: neither "
		    "%s/.config/maild/maild.conf nor %s exists.\nTo begin, "
		    "copy the example %s to %s/.config/maild/maild.conf, fill "
		    "in your account and see maild.conf(5)", home,
		    SYSCONFDIR "/maild.conf", DOCDIR "/examples/maild.conf",
		    home);
	is_str(cause, want, "default path: says where it looked and what to "
	    "do");
	free(want);
	free(cause);
	free(path);

	if (getuid() != 0) {
		xasprintf(&dir, "%s/.config/maild", home);
		mkdir_p(dir, 0700);
		xasprintf(&want, "%s/maild.conf", dir);
		write_file(want, "x\n", 2);
		path = config_default_path(&cause);
		is_str(path, want, "default path: ~/.config/maild/maild.conf");
		free(path);
		setenv("XDG_CONFIG_HOME", dir, 1);
		path = config_default_path(&cause);
		ok(path == NULL, "default path: "
		    "$XDG_CONFIG_HOME/maild/maild.conf is looked for, not "
		    "~/.config");
		like(cause, tap_fmt("neither %s/maild/maild.conf nor", dir),
		    "default path: names $XDG_CONFIG_HOME's file");
		free(cause);
		free(path);
		unsetenv("XDG_CONFIG_HOME");
		free(want);
		free(dir);
	}
	free(home);
}

int
main(void)
{
	int	r;

	topdir = mkscratch("config");
	test_duration();
	test_size();
	test_expand();
	test_hints();
	test_edit_distance();
	test_good();
	test_bad();
	test_syntax();
	test_imap_folders();
	test_wire();
	test_account_equal();
	test_default_path();
	r = done();
	rm_rf(topdir);
	free(topdir);
	return (r);
}
