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
 * config.c: read maild.conf into a struct config and check every value.
 * Every mistake is reported as "file:line: message"; nothing is
 * half-applied, the caller gets a complete configuration or none.  How
 * libconfuse 3.3 is made to read the file right is confuse_compat.c's
 * business.
 */

#include "config.h"

#include <sys/stat.h>
#include <sys/un.h>

#include <arpa/inet.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pwd.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "maild.h"
#include "confuse_compat.h"
#include "http.h"
#include "oauth2.h"

#define DEFAULT_POLL_INTERVAL	300
#define DEFAULT_TIMEOUT		60
#define DEFAULT_SESSION_TIMEOUT	3600
#define DEFAULT_MAX_CONNECTIONS	32
/*
 * Sessions to one server (host and port) at once.  Providers limit the
 * connections of one login: Gmail to 15 (IMAP), Microsoft to 16 or 20,
 * Dovecot to 10 per user and address (mail_max_userip_connections); an
 * IMAP account waiting in IDLE holds one per folder, and the user's own
 * mail programs need some too.  10 stays under all of them.
 */
#define DEFAULT_MAX_PER_HOST	10
/* At most this many accounts, and files in include-dir. */
#define ACCOUNTS_MAX		100000
#define INCLUDE_FILES_MAX	10000
#define ACCOUNT_NAME_MAX	64
#define CONF_SIZE_MAX		(1 << 20)
/* RFC 2449: a POP3 command is at most 255 octets with its CRLF. */
#define POP3_COMMAND_MAX	255
/* A user name for the SASL methods: longer than any mail address. */
#define USER_MAX		255
/* A DNS name: 253 characters, labels of 1 to 63. */
#define HOST_NAME_MAX_LEN	253
#define HOST_LABEL_MAX		63

/* The load in progress, for error messages. */
struct conf_parse {
	char		*error;		/* first error, "file:line: msg" */
	const char	*file;
	cfg_t		*cfg;		/* the top level */
	struct compat	*compat;	/* where each option was written */
	unsigned int	 account;	/* the account section being read */
};

static struct conf_parse *cp;	/* the load in progress: config.c is not
				   reentrant, and neither is libconfuse */

static void	conf_errorx(int, const char *, ...) PRINTFLIKE(2, 3);
static void	conf_account_error(cfg_t *, const char *, const char *, ...)
		    PRINTFLIKE(3, 4);
static int	conf_number_cb(cfg_t *, cfg_opt_t *, const char *, void *);
static int	conf_value_problem(const char *, const char *, char *,
		    size_t);
static int	conf_section_line(cfg_t *);
static int	conf_line(cfg_t *, const char *);
static int	conf_account(cfg_t *, struct config *, struct account_conf *);
static struct config *conf_load(const char *, int, char **);
static char	*conf_read(const char *, int, char **);
static int	conf_keyword(cfg_t *, const char *, const char *const *);
static int	conf_account_secret(cfg_t *, struct account_conf *);
static int	conf_account_tls(cfg_t *, struct account_conf *);
static int	conf_account_protocol(cfg_t *, struct account_conf *);
static int	conf_account_delivery(cfg_t *, struct config *,
		    struct account_conf *);
static int	conf_account_policy(cfg_t *, struct config *,
		    struct account_conf *);
static int	conf_account_wire(cfg_t *, const struct account_conf *);
static int	conf_account_oauth2(cfg_t *, struct config *,
		    struct account_conf *);
static int	conf_path(cfg_t *, const char *, char **);
static int	conf_string(cfg_t *, const char *, int, char **);

static cfg_opt_t account_opts[] = {
	CFG_STR("host", NULL, CFGF_NODEFAULT),
	CFG_INT("port", 0, CFGF_NODEFAULT),
	CFG_STR("user", NULL, CFGF_NODEFAULT),
	CFG_STR("password", NULL, CFGF_NODEFAULT),
	CFG_STR("password-file", NULL, CFGF_NODEFAULT),
	CFG_STR("password-command", NULL, CFGF_NODEFAULT),
	CFG_STR("password-credential", NULL, CFGF_NODEFAULT),
	CFG_STR("maildir", NULL, CFGF_NODEFAULT),
	CFG_BOOL("keep", cfg_false, CFGF_NONE),
	CFG_INT_CB("delete-after", 0, CFGF_NODEFAULT, conf_number_cb),
	CFG_INT_CB("max-size", 0, CFGF_NODEFAULT, conf_number_cb),
	CFG_BOOL("exact-sizes", cfg_true, CFGF_NONE),
	CFG_STR_LIST("add-headers", (char *)"{\"received\"}", CFGF_NONE),
	CFG_STR("ca-file", NULL, CFGF_NODEFAULT),
	CFG_STR("tls", "implicit", CFGF_NONE),
	CFG_BOOL("allow-plaintext", cfg_false, CFGF_NONE),
	CFG_STR_LIST("tls-fingerprint", NULL, CFGF_NODEFAULT),
	CFG_BOOL("tls-verify", cfg_true, CFGF_NODEFAULT),
	CFG_STR("tls-cert-file", NULL, CFGF_NODEFAULT),
	CFG_STR("tls-key-file", NULL, CFGF_NODEFAULT),
	CFG_STR("tls-min-version", "1.2", CFGF_NONE),
	CFG_STR("auth", "auto", CFGF_NONE),
	CFG_STR("pipelining", "auto", CFGF_NONE),
	CFG_INT_CB("poll-interval", 0, CFGF_NODEFAULT, conf_number_cb),
	CFG_STR("protocol", "pop3", CFGF_NONE),
	CFG_STR_LIST("folders", NULL, CFGF_NODEFAULT),
	CFG_BOOL("folder-subdirs", cfg_false, CFGF_NODEFAULT),
	CFG_STR("move-to", NULL, CFGF_NODEFAULT),
	CFG_BOOL("mark-seen", cfg_false, CFGF_NODEFAULT),
	CFG_STR("idle", NULL, CFGF_NODEFAULT),
	CFG_INT_CB("idle-refresh", 0, CFGF_NODEFAULT, conf_number_cb),
	CFG_STR("deliver", "maildir", CFGF_NONE),
	CFG_STR("lmtp", NULL, CFGF_NODEFAULT),
	CFG_STR("lmtp-recipient", NULL, CFGF_NODEFAULT),
	CFG_STR("mda", NULL, CFGF_NODEFAULT),
	CFG_STR("on-new-mail", NULL, CFGF_NODEFAULT),
	CFG_STR("dedupe", "no", CFGF_NONE),
	CFG_INT_CB("dedupe-days", 0, CFGF_NODEFAULT, conf_number_cb),
	CFG_STR("oauth2-provider", NULL, CFGF_NODEFAULT),
	CFG_STR("oauth2-client-id", NULL, CFGF_NODEFAULT),
	CFG_STR("oauth2-client-secret", NULL, CFGF_NODEFAULT),
	CFG_STR("oauth2-client-secret-file", NULL, CFGF_NODEFAULT),
	CFG_STR("oauth2-client-secret-command", NULL, CFGF_NODEFAULT),
	CFG_STR("oauth2-auth-url", NULL, CFGF_NODEFAULT),
	CFG_STR("oauth2-token-url", NULL, CFGF_NODEFAULT),
	CFG_STR("oauth2-device-url", NULL, CFGF_NODEFAULT),
	CFG_STR("oauth2-scope", NULL, CFGF_NODEFAULT),
	CFG_STR("oauth2-tenant", NULL, CFGF_NODEFAULT),
	CFG_END()
};

static cfg_opt_t global_opts[] = {
	CFG_INT_CB("poll-interval", DEFAULT_POLL_INTERVAL, CFGF_NONE,
	    conf_number_cb),
	CFG_STR("state-dir", NULL, CFGF_NODEFAULT),
	CFG_INT_CB("timeout", DEFAULT_TIMEOUT, CFGF_NONE, conf_number_cb),
	CFG_INT_CB("session-timeout", DEFAULT_SESSION_TIMEOUT, CFGF_NONE,
	    conf_number_cb),
	CFG_INT("max-connections", DEFAULT_MAX_CONNECTIONS, CFGF_NONE),
	CFG_INT("max-connections-per-host", DEFAULT_MAX_PER_HOST, CFGF_NONE),
	CFG_STR("on-new-mail", NULL, CFGF_NODEFAULT),
	CFG_STR("include-dir", NULL, CFGF_NODEFAULT),
	CFG_STR("metrics-listen", NULL, CFGF_NODEFAULT),
	CFG_STR("metrics-file", NULL, CFGF_NODEFAULT),
	CFG_SEC("account", account_opts,
	    CFGF_MULTI | CFGF_TITLE | CFGF_NO_TITLE_DUPES),
	CFG_END()
};

/* The options holding a duration or a size, and what they allow. */
static const struct conf_number {
	const char	*opt;
	int		 size;		/* a size, else a duration */
	long		 max;
	const char	*like;
} conf_numbers[] = {
	{ "poll-interval", 0, PARSE_DURATION_MAX,
	    "like 90, 30s, 5m, 2h or 1d; at most 30d" },
	{ "timeout", 0, PARSE_DURATION_MAX,
	    "like 90, 30s, 5m, 2h or 1d; at most 30d" },
	{ "session-timeout", 0, PARSE_DURATION_MAX,
	    "like 90, 30s, 5m, 2h or 1d; at most 30d" },
	{ "delete-after", 0, PARSE_LONG_DURATION_MAX,
	    "like 12h, 30d; at most 3650d" },
	{ "max-size", 1, PARSE_SIZE_MAX, "like 500000, 800k, 20M, 1G" },
	{ "idle-refresh", 0, PARSE_DURATION_MAX,
	    "like 25m, 600s; between 10s and 29m" },
	{ "dedupe-days", 0, PARSE_LONG_DURATION_MAX,
	    "a number of days, like 30 or 30d" },
};

/* Record the first error; later ones are usually consequences of it. */
static void
conf_errorx(int line, const char *fmt, ...)
{
	char	msg[COMPAT_MSG_MAX];
	va_list	ap;

	if (cp->error != NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	xasprintf(&cp->error, "%s:%d: %s", cp->file, line, msg);
}

/*
 * An error about option opt of section sec (NULL: about the section as a
 * whole), at its line, naming the account if sec is one.
 */
static void
conf_account_error(cfg_t *sec, const char *opt, const char *fmt, ...)
{
	char	msg[COMPAT_MSG_MAX];
	va_list	ap;
	int	line;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	line = opt != NULL ? conf_line(sec, opt) : conf_section_line(sec);
	if (sec == cp->cfg)
		conf_errorx(line, "%s", msg);
	else
		conf_errorx(line, "account \"%s\": %s", cfg_title(sec), msg);
}

/*
 * Parse the value of a duration or size option; on a mistake, say what
 * was wrong and what to write instead.
 */
static int
conf_number(const char *opt, const char *value, long *v, char *why,
    size_t size)
{
	const struct conf_number	*n = NULL;
	char				 hint[32];
	size_t				 i;
	int				 r, h;

	for (i = 0; i < sizeof conf_numbers / sizeof conf_numbers[0]; i++) {
		if (strcmp(conf_numbers[i].opt, opt) == 0)
			n = &conf_numbers[i];
	}
	if (n == NULL)
		return (0);
	if (n->size) {
		r = parse_size(value, v);
		h = parse_size_hint(value, hint, sizeof hint);
	} else {
		r = parse_duration(value, n->max, v);
		h = parse_duration_hint(value, n->max, hint, sizeof hint);
	}
	if (r == 0)
		return (0);
	if (h == 0)
		snprintf(why, size, "'%s' is not a %s (write %s)", value,
		    n->size ? "size" : "duration", hint);
	else
		snprintf(why, size, "'%s' is not a %s (%s)", value,
		    n->size ? "size" : "duration", n->like);
	return (-1);
}

/* The same, as confuse_compat.c wants it: is this value wrong? */
static int
conf_value_problem(const char *opt, const char *value, char *why,
    size_t size)
{
	long	v;

	return (conf_number(opt, value, &v, why, size));
}

/* The libconfuse value callback of the duration and size options. */
static int
conf_number_cb(cfg_t *cfg, cfg_opt_t *opt, const char *value, void *result)
{
	char	why[COMPAT_WHY_MAX];
	long	v = 0;

	if (conf_number(cfg_opt_name(opt), value, &v, why, sizeof why) == -1) {
		cfg_error(cfg, "%s: %s", cfg_opt_name(opt), why);
		return (-1);
	}
	*(long *)result = v;
	return (0);
}

/* Which account section sec is (-1: the top level). */
static int
conf_section_index(cfg_t *sec)
{
	unsigned int	i, n = cfg_size(cp->cfg, "account");

	if (sec == cp->cfg)
		return (-1);
	if (cp->account < n && cfg_getnsec(cp->cfg, "account", cp->account) ==
	    sec)
		return ((int)cp->account);
	for (i = 0; i < n; i++) {
		if (cfg_getnsec(cp->cfg, "account", i) == sec)
			return ((int)i);
	}
	return (-1);
}

/* The line where an account section starts, for errors about all of it. */
static int
conf_section_line(cfg_t *sec)
{
	int	line;

	if ((line = compat_section_line(cp->compat,
	    conf_section_index(sec))) > 0)
		return (line);
	return (sec->line);
}

/* The line where opt was set in sec (the section's line if nowhere). */
static int
conf_line(cfg_t *sec, const char *opt)
{
	int	line;

	if ((line = compat_line(cp->compat, conf_section_index(sec), opt)) > 0)
		return (line);
	return (sec == cp->cfg ? 1 : conf_section_line(sec));
}

/*
 * Expand "~", "~/..." and "$VAR" or "${VAR}" in a path.  Returns an
 * allocated string, or NULL with *cause set.
 */
char *
config_expand_path(const char *in, char **cause)
{
	char		 out[PATH_MAX], name[256];
	const char	*p = in, *val;
	size_t		 o = 0, n, vlen;
	struct passwd	*pw;

	if (p[0] == '~' && (p[1] == '/' || p[1] == '\0')) {
		if ((val = getenv("HOME")) == NULL || *val == '\0') {
			if ((pw = getpwuid(getuid())) == NULL) {
				xasprintf(cause, "cannot expand ~: no home "
				    "directory");
				return (NULL);
			}
			val = pw->pw_dir;
		}
		if ((vlen = strlen(val)) >= sizeof out)
			goto toolong;
		memcpy(out, val, vlen);
		o = vlen;
		p++;
	}
	while (*p != '\0') {
		if (*p != '$') {
			if (o + 1 >= sizeof out)
				goto toolong;
			out[o++] = *p++;
			continue;
		}
		p++;
		if (*p == '{') {
			const char	*close = strchr(p, '}');

			if (close == NULL) {
				xasprintf(cause, "unterminated ${ in '%s'", in);
				return (NULL);
			}
			n = close - p - 1;
			if (n == 0 || n >= sizeof name)
				goto badvar;
			memcpy(name, p + 1, n);
			p = close + 1;
		} else {
			for (n = 0; isalnum((unsigned char)p[n]) || p[n] == '_';
			    n++)
				;
			if (n == 0 || n >= sizeof name)
				goto badvar;
			memcpy(name, p, n);
			p += n;
		}
		name[n] = '\0';
		if ((val = getenv(name)) == NULL || *val == '\0') {
			xasprintf(cause, "$%s is not set (in '%s')", name, in);
			return (NULL);
		}
		vlen = strlen(val);
		if (o + vlen >= sizeof out)
			goto toolong;
		memcpy(out + o, val, vlen);
		o += vlen;
	}
	out[o] = '\0';
	return (xstrdup(out));

toolong:
	xasprintf(cause, "path too long: '%s'", in);
	return (NULL);
badvar:
	xasprintf(cause, "bad variable name in '%s'", in);
	return (NULL);
}

/* Fetch and expand a path option; it must end up absolute. */
static int
conf_path(cfg_t *sec, const char *opt, char **out)
{
	const char	*raw;
	char		*cause = NULL, *path;

	*out = NULL;
	if (cfg_size(sec, opt) == 0)
		return (0);
	raw = cfg_getstr(sec, opt);
	if ((path = config_expand_path(raw, &cause)) == NULL) {
		conf_account_error(sec, opt, "%s: %s", opt, cause);
		free(cause);
		return (-1);
	}
	if (path[0] != '/') {
		conf_account_error(sec, opt, "%s: '%s' is not an absolute path "
		    "(start it with /, ~ or $HOME)", opt, raw);
		free(path);
		return (-1);
	}
	*out = path;
	return (0);
}

/*
 * The protocol, and the options only IMAP has: folders (default INBOX),
 * folder-subdirs, move-to, mark-seen, idle and idle-refresh.
 */
/*
 * Do two IMAP folder names name one folder?  INBOX in any case is INBOX
 * (RFC 3501 5.1); any other name is compared exactly, as servers do.
 */
static int
conf_same_folder(const char *a, const char *b)
{
	if (strcasecmp(a, "INBOX") == 0)
		return (strcasecmp(b, "INBOX") == 0);
	return (strcmp(a, b) == 0);
}

static int
conf_account_protocol(cfg_t *sec, struct account_conf *a)
{
	static const char *const protocols[] = { "pop3", "imap", NULL };
	static const char *const idles[] = { "no", "yes", "auto", NULL };
	static const char *const imap_only[] = { "folders", "folder-subdirs",
	    "move-to", "mark-seen", "idle", "idle-refresh", NULL };
	const char	*f;
	size_t		 i, n, j;
	int		 r;

	if ((r = conf_keyword(sec, "protocol", protocols)) == -1)
		return (-1);
	a->protocol = (enum protocol)r;
	if (a->protocol != PROTOCOL_IMAP) {
		for (i = 0; imap_only[i] != NULL; i++) {
			if (cfg_size(sec, imap_only[i]) > 0) {
				conf_account_error(sec, imap_only[i], "%s is "
				    "for IMAP accounts (protocol = imap)",
				    imap_only[i]);
				return (-1);
			}
		}
		return (0);
	}
	n = cfg_size(sec, "folders");
	a->folders = xcalloc(n + 2, sizeof *a->folders);
	for (i = 0; i < n; i++) {
		f = cfg_getnstr(sec, "folders", i);
		if (f == NULL || *f == '\0' || strlen(f) > 512) {
			conf_account_error(sec, "folders", "a folder name must "
			    "be 1 to 512 bytes");
			return (-1);
		}
		for (j = 0; f[j] != '\0'; j++) {
			if ((unsigned char)f[j] < 0x20 || f[j] == 0x7f) {
				conf_account_error(sec, "folders", "folder "
				    "\"%s\" holds a control character", f);
				return (-1);
			}
		}
		for (j = 0; j < i; j++) {
			if (conf_same_folder(a->folders[j], f)) {
				conf_account_error(sec, "folders", "folder "
				    "\"%s\" is listed twice (as \"%s\" too)",
				    f, a->folders[j]);
				return (-1);
			}
		}
		a->folders[i] = xstrdup(f);
	}
	if (n == 0)
		a->folders[n++] = xstrdup("INBOX");
	a->nfolders = n;
	if (cfg_size(sec, "folder-subdirs") > 0)
		a->folder_subdirs = cfg_getbool(sec, "folder-subdirs");
	if (cfg_size(sec, "move-to") > 0) {
		f = cfg_getstr(sec, "move-to");
		if (f == NULL || *f == '\0' || strlen(f) > 512 ||
		    strpbrk(f, "\r\n") != NULL) {
			conf_account_error(sec, "move-to", "move-to must name a "
			    "folder");
			return (-1);
		}
		for (j = 0; j < n; j++) {
			if (conf_same_folder(a->folders[j], f)) {
				/* Fetched again, moved again, every poll. */
				conf_account_error(sec, "move-to", "move-to "
				    "\"%s\" is one of the folders fetched; "
				    "move to a folder that is not fetched", f);
				return (-1);
			}
		}
		a->move_to = xstrdup(f);
	}
	if (cfg_size(sec, "mark-seen") > 0)
		a->mark_seen = cfg_getbool(sec, "mark-seen");
	a->idle = IDLE_AUTO;
	if (cfg_size(sec, "idle") > 0) {
		if ((r = conf_keyword(sec, "idle", idles)) == -1)
			return (-1);
		a->idle = r;
	}
	a->idle_refresh = 25 * 60;
	if (cfg_size(sec, "idle-refresh") > 0) {
		a->idle_refresh = (int)cfg_getint(sec, "idle-refresh");
		if (a->idle_refresh < 10 || a->idle_refresh > 29 * 60) {
			conf_account_error(sec, "idle-refresh", "idle-refresh "
			    "must be between 10s and 29m (RFC 2177: servers may "
			    "drop an IDLE after 30 minutes)");
			return (-1);
		}
	}
	return (0);
}

/*
 * Fetch a string option that ends up on the wire or in a command: it may
 * not be empty or hold control characters (a CR LF in a user name would be
 * a second POP3 command).
 */
static int
conf_string(cfg_t *sec, const char *opt, int required, char **out)
{
	const char	*v;
	size_t		 i;

	*out = NULL;
	if (cfg_size(sec, opt) == 0) {
		if (required) {
			conf_account_error(sec, NULL, "'%s' is required", opt);
			return (-1);
		}
		return (0);
	}
	v = cfg_getstr(sec, opt);
	if (v == NULL || *v == '\0') {
		conf_account_error(sec, opt, "'%s' is empty", opt);
		return (-1);
	}
	for (i = 0; v[i] != '\0'; i++) {
		if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f) {
			conf_account_error(sec, opt, "'%s' contains a control "
			    "character", opt);
			return (-1);
		}
	}
	*out = xstrdup(v);
	return (0);
}

/* Pick a keyword from a list; -1 and an error if it is none of them. */
static int
conf_keyword(cfg_t *sec, const char *opt, const char *const *words)
{
	const char	*v = cfg_getstr(sec, opt);
	char		 list[256];
	size_t		 i, o = 0;

	for (i = 0; words[i] != NULL; i++) {
		if (strcasecmp(v, words[i]) == 0)
			return ((int)i);
		o += snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "",
		    words[i]);
		if (o >= sizeof list)
			o = sizeof list - 1;
	}
	conf_account_error(sec, opt, "%s: '%s' is not one of %s", opt, v, list);
	return (-1);
}

/* Exactly one place to get the password (or token) from. */
static int
conf_account_secret(cfg_t *sec, struct account_conf *a)
{
	static const struct {
		const char		*opt;
		enum secret_source	 source;
		int			 path;
	} sources[] = {
		{ "password", SECRET_PASSWORD, 0 },
		{ "password-file", SECRET_FILE, 1 },
		{ "password-command", SECRET_COMMAND, 0 },
		{ "password-credential", SECRET_CREDENTIAL, 0 },
	};
	size_t		 i, n = 0;
	int		 r;

	if (cfg_size(sec, "oauth2-provider") > 0) {
		for (i = 0; i < sizeof sources / sizeof sources[0]; i++) {
			if (cfg_size(sec, sources[i].opt) == 0)
				continue;
			conf_account_error(sec, sources[i].opt, "%s and "
			    "oauth2-provider exclude each other: with "
			    "oauth2-provider maild gets the token itself (remove "
			    "%s), or a command of yours does (remove the "
			    "oauth2-* options)", sources[i].opt,
			    sources[i].opt);
			return (-1);
		}
		a->secret_source = SECRET_OAUTH2;
		return (0);
	}
	for (i = 0; i < sizeof sources / sizeof sources[0]; i++) {
		if (cfg_size(sec, sources[i].opt) == 0)
			continue;
		if (n++ > 0)
			break;
		a->secret_source = sources[i].source;
		if (sources[i].path)
			r = conf_path(sec, sources[i].opt, &a->secret);
		else
			r = conf_string(sec, sources[i].opt, 1, &a->secret);
		if (r == -1)
			return (-1);
	}
	if (n != 1) {
		conf_account_error(sec, NULL, "give exactly one of password, "
		    "password-file, password-command and password-credential "
		    "(or oauth2-provider)");
		return (-1);
	}
	if (a->secret_source == SECRET_CREDENTIAL &&
	    (strchr(a->secret, '/') != NULL || a->secret[0] == '.')) {
		conf_account_error(sec, "password-credential", "password-"
		    "credential is a credential's name, not a path");
		return (-1);
	}
	return (0);
}

static int
conf_account_tls(cfg_t *sec, struct account_conf *a)
{
	static const char *const modes[] = { "implicit", "starttls", "none",
	    NULL };
	static const char *const versions[] = { "1.2", "1.3", NULL };
	int		 r;
	size_t		 i;

	if ((r = conf_keyword(sec, "tls", modes)) == -1)
		return (-1);
	a->tls = (enum tls_mode)r;
	a->allow_plaintext = cfg_getbool(sec, "allow-plaintext");
	if (a->tls == TLS_NONE && !a->allow_plaintext) {
		conf_account_error(sec, "tls", "tls = none sends the password "
		    "and all mail in clear text; set allow-plaintext = yes if "
		    "you really mean it");
		return (-1);
	}
	if ((r = conf_keyword(sec, "tls-min-version", versions)) == -1)
		return (-1);
	a->tls_min_version = r == 0 ? 12 : 13;
	a->npins = cfg_size(sec, "tls-fingerprint");
	if (a->npins > 0) {
		a->pins = xcalloc(a->npins, sizeof *a->pins);
		for (i = 0; i < a->npins; i++) {
			const char	*fp = cfg_getnstr(sec, "tls-fingerprint",
					    i);

			if (parse_fingerprint(fp, a->pins[i]) == -1) {
				conf_account_error(sec, "tls-fingerprint",
				    "tls-fingerprint '%s' is not a SHA-256 "
				    "fingerprint (sha256:AB:CD:... with 32 "
				    "bytes)", fp);
				return (-1);
			}
		}
	}
	/* A pin proves who the server is; chain checks are then optional. */
	if (cfg_size(sec, "tls-verify") > 0)
		a->tls_verify = cfg_getbool(sec, "tls-verify");
	else
		a->tls_verify = a->npins == 0;
	if (!a->tls_verify && a->npins == 0) {
		conf_account_error(sec, "tls-verify", "tls-verify = no is only "
		    "allowed with a tls-fingerprint: maild never trusts an "
		    "unverified server");
		return (-1);
	}
	if (a->tls == TLS_NONE && (a->npins > 0 || cfg_size(sec, "ca-file") ||
	    cfg_size(sec, "tls-cert-file"))) {
		conf_account_error(sec, "tls", "TLS options make no sense with "
		    "tls = none");
		return (-1);
	}
	if (conf_path(sec, "ca-file", &a->ca_file) == -1 ||
	    conf_path(sec, "tls-cert-file", &a->tls_cert_file) == -1 ||
	    conf_path(sec, "tls-key-file", &a->tls_key_file) == -1)
		return (-1);
	if ((a->tls_cert_file == NULL) != (a->tls_key_file == NULL)) {
		conf_account_error(sec, a->tls_cert_file != NULL ?
		    "tls-cert-file" : "tls-key-file", "tls-cert-file and "
		    "tls-key-file go together");
		return (-1);
	}
	return (0);
}

/* What to fetch, keep, delete and add, and how to log in. */
static int
conf_account_policy(cfg_t *sec, struct config *conf, struct account_conf *a)
{
	static const char *const auths[] = { "auto", "user", "apop", "plain",
	    "login", "cram-md5", "xoauth2", "oauthbearer", NULL };
	static const char *const pipes[] = { "auto", "no", NULL };
	int		 r;
	size_t		 i;

	if ((r = conf_keyword(sec, "auth", auths)) == -1)
		return (-1);
	a->auth = (enum auth_method)r;
	if ((r = conf_keyword(sec, "pipelining", pipes)) == -1)
		return (-1);
	a->pipelining = r == 0;

	a->keep = cfg_getbool(sec, "keep");
	if (cfg_size(sec, "delete-after") > 0) {
		a->delete_after = cfg_getint(sec, "delete-after");
		if (!a->keep) {
			conf_account_error(sec, "delete-after", "delete-after "
			    "needs keep = yes (without it, messages are "
			    "deleted at once)");
			return (-1);
		}
		if (a->delete_after < 1) {
			conf_account_error(sec, "delete-after", "delete-after "
			    "must be at least 1s");
			return (-1);
		}
	}
	if (cfg_size(sec, "max-size") > 0)
		a->max_size = (uint64_t)cfg_getint(sec, "max-size");
	a->exact_sizes = cfg_getbool(sec, "exact-sizes");

	for (i = 0; i < cfg_size(sec, "add-headers"); i++) {
		const char	*h = cfg_getnstr(sec, "add-headers", i);

		if (strcasecmp(h, "yes") == 0 || strcasecmp(h, "all") == 0)
			a->add_headers |= HDR_RECEIVED | HDR_DELIVERED_TO |
			    HDR_X_ORIGINAL_TO;
		else if (strcasecmp(h, "no") == 0 || strcasecmp(h, "none") == 0)
			continue;
		else if (strcasecmp(h, "received") == 0)
			a->add_headers |= HDR_RECEIVED;
		else if (strcasecmp(h, "delivered-to") == 0)
			a->add_headers |= HDR_DELIVERED_TO;
		else if (strcasecmp(h, "x-original-to") == 0)
			a->add_headers |= HDR_X_ORIGINAL_TO;
		else {
			conf_account_error(sec, "add-headers", "add-headers: "
			    "'%s' is not yes, no, received, delivered-to or "
			    "x-original-to", h);
			return (-1);
		}
	}

	if (conf_account_delivery(sec, conf, a) == -1)
		return (-1);
	a->poll_interval = conf->poll_interval;
	if (cfg_size(sec, "poll-interval") > 0)
		a->poll_interval = (int)cfg_getint(sec, "poll-interval");
	if (a->poll_interval < 1) {
		conf_account_error(sec, "poll-interval", "poll-interval must "
		    "be at least 1s");
		return (-1);
	}
	return (0);
}

/* A command or address option: not empty, no control characters. */
static int
conf_command(cfg_t *sec, const char *opt, char **out)
{
	const char	*v = cfg_getstr(sec, opt);
	size_t		 i;

	if (v == NULL || *v == '\0' || strlen(v) > 4096) {
		conf_account_error(sec, opt, "%s must not be empty (nor over "
		    "4096 bytes)", opt);
		return (-1);
	}
	for (i = 0; v[i] != '\0'; i++) {
		if ((unsigned char)v[i] < 0x20 || v[i] == 0x7f) {
			conf_account_error(sec, opt, "%s holds a control "
			    "character", opt);
			return (-1);
		}
	}
	*out = xstrdup(v);
	return (0);
}

/*
 * lmtp = "unix:/absolute/path" (short enough for a socket address) or
 * "host:port" ("[v6 address]:port" too).
 */
static int
conf_lmtp(cfg_t *sec, const char *v)
{
	struct sockaddr_un	 sun;
	const char		*colon;
	uint64_t		 port;

	if (strncmp(v, "unix:", 5) == 0) {
		if (v[5] != '/') {
			conf_account_error(sec, "lmtp", "the LMTP socket must be "
			    "an absolute path, like \"unix:/run/dovecot/lmtp\"");
			return (-1);
		}
		if (strlen(v + 5) >= sizeof sun.sun_path) {
			conf_account_error(sec, "lmtp", "the LMTP socket path is "
			    "longer than %zu bytes", sizeof sun.sun_path - 1);
			return (-1);
		}
		return (0);
	}
	colon = strrchr(v, ':');
	if (colon == NULL || colon == v || (v[0] == '[' && colon[-1] != ']') ||
	    (v[0] != '[' && strchr(v, ':') != colon) ||
	    (size_t)(colon - v) > 255) {
		conf_account_error(sec, "lmtp", "lmtp must be "
		    "\"unix:/path/to/socket\" or \"host:port\" (\"[::1]:24\" "
		    "for an IPv6 address)");
		return (-1);
	}
	if (parse_u64(colon + 1, 65535, &port) == -1 || port == 0) {
		conf_account_error(sec, "lmtp", "lmtp: the port must be a "
		    "number from 1 to 65535 (LMTP's is usually 24)");
		return (-1);
	}
	return (0);
}

/*
 * Where the mail goes: deliver = maildir (maildir required), lmtp (lmtp
 * required, lmtp-recipient defaulting to the user) or mda (mda
 * required); for the last two, messages are spooled in the state
 * directory ("<account>.spool", which a.maildir names then).  Also
 * on-new-mail and dedupe.
 */
static int
conf_account_delivery(cfg_t *sec, struct config *conf, struct account_conf *a)
{
	static const char *const delivers[] = { "maildir", "lmtp", "mda",
	    NULL };
	static const char *const dedupes[] = { "no", "message-id", NULL };
	const char	*v;
	int		 r;

	if ((r = conf_keyword(sec, "deliver", delivers)) == -1)
		return (-1);
	a->deliver = r;
	if (a->deliver == DELIVER_MAILDIR) {
		if (cfg_size(sec, "lmtp") > 0 || cfg_size(sec, "mda") > 0 ||
		    cfg_size(sec, "lmtp-recipient") > 0) {
			conf_account_error(sec, cfg_size(sec, "mda") > 0 ?
			    "mda" : "lmtp", "lmtp and mda need deliver = lmtp "
			    "or deliver = mda");
			return (-1);
		}
		if (cfg_size(sec, "maildir") == 0) {
			conf_account_error(sec, NULL, "'maildir' is required "
			    "(or deliver = lmtp or mda)");
			return (-1);
		}
		if (conf_path(sec, "maildir", &a->maildir) == -1)
			return (-1);
		a->maildir_line = conf_line(sec, "maildir");
	} else {
		if (cfg_size(sec, "maildir") > 0) {
			conf_account_error(sec, "maildir", "maildir is for "
			    "deliver = maildir; with deliver = %s, %s says "
			    "where mail goes", delivers[a->deliver],
			    delivers[a->deliver]);
			return (-1);
		}
		v = a->deliver == DELIVER_LMTP ? "lmtp" : "mda";
		if (cfg_size(sec, v) == 0) {
			conf_account_error(sec, "deliver", "deliver = %s needs "
			    "%s", v, v);
			return (-1);
		}
		if (conf_command(sec, v, a->deliver == DELIVER_LMTP ?
		    &a->lmtp : &a->mda) == -1)
			return (-1);
		if (a->deliver == DELIVER_LMTP && conf_lmtp(sec, a->lmtp) == -1)
			return (-1);
		if (a->deliver != DELIVER_MAILDIR && a->folder_subdirs) {
			conf_account_error(sec, "folder-subdirs", "folder-subdirs "
			    "is for deliver = maildir; with deliver = %s, %s "
			    "files the mail", delivers[a->deliver],
			    a->deliver == DELIVER_LMTP ? "the LMTP server (Sieve)" :
			    "the mda");
			return (-1);
		}
		if (cfg_size(sec, "lmtp-recipient") > 0) {
			if (a->deliver != DELIVER_LMTP) {
				conf_account_error(sec, "lmtp-recipient",
				    "lmtp-recipient is for deliver = lmtp");
				return (-1);
			}
			if (conf_command(sec, "lmtp-recipient",
			    &a->lmtp_recipient) == -1)
				return (-1);
			if (strlen(a->lmtp_recipient) > LMTP_RECIPIENT_MAX) {
				conf_account_error(sec, "lmtp-recipient",
				    "lmtp-recipient is longer than %d bytes",
				    LMTP_RECIPIENT_MAX);
				return (-1);
			}
			if (strpbrk(a->lmtp_recipient, "<> ") != NULL) {
				conf_account_error(sec, "lmtp-recipient",
				    "lmtp-recipient is an address, without <> "
				    "or spaces");
				return (-1);
			}
		} else if (a->deliver == DELIVER_LMTP) {
			if (strlen(a->user) > LMTP_RECIPIENT_MAX ||
			    strpbrk(a->user, "<> ") != NULL) {
				conf_account_error(sec, "deliver", "the user "
				    "name is no LMTP recipient: set "
				    "lmtp-recipient");
				return (-1);
			}
			a->lmtp_recipient = xstrdup(a->user);
		}
		xasprintf(&a->maildir, "%s/%s.spool", conf->state_dir,
		    a->name);
	}
	if (cfg_size(sec, "on-new-mail") > 0) {
		if (conf_command(sec, "on-new-mail", &a->on_new_mail) == -1)
			return (-1);
	} else if (conf->on_new_mail != NULL)
		a->on_new_mail = xstrdup(conf->on_new_mail);
	if ((r = conf_keyword(sec, "dedupe", dedupes)) == -1)
		return (-1);
	a->dedupe = r;
	a->dedupe_days = 30;
	if (cfg_size(sec, "dedupe-days") > 0) {
		long	days = cfg_getint(sec, "dedupe-days");

		/* A bare number is days here; "30d" was read as seconds. */
		if (days % 86400 == 0 && days >= 86400)
			days /= 86400;
		if (days < 1 || days > 3650) {
			conf_account_error(sec, "dedupe-days", "dedupe-days must "
			    "be 1 to 3650 days");
			return (-1);
		}
		a->dedupe_days = (int)days;
	}
	return (0);
}

/*
 * Which mail service an account's OAuth2 token is for: Microsoft grants
 * POP3 and IMAP with different scopes.  conf_account_protocol() has set
 * the protocol by then.
 */
static int
conf_oauth2_service(const struct account_conf *a)
{
	return (a->protocol == PROTOCOL_IMAP ? OAUTH2_SERVICE_IMAP :
	    OAUTH2_SERVICE_POP3);
}

/* oauth2-client-secret, -file or -command: at most one. */
static int
conf_oauth2_secret(cfg_t *sec, struct account_conf *a)
{
	static const struct {
		const char		*opt;
		enum secret_source	 source;
		int			 path;
	} sources[] = {
		{ "oauth2-client-secret", SECRET_PASSWORD, 0 },
		{ "oauth2-client-secret-file", SECRET_FILE, 1 },
		{ "oauth2-client-secret-command", SECRET_COMMAND, 0 },
	};
	size_t	i, n = 0;
	int	r;

	for (i = 0; i < sizeof sources / sizeof sources[0]; i++) {
		if (cfg_size(sec, sources[i].opt) == 0)
			continue;
		if (n++ > 0) {
			conf_account_error(sec, sources[i].opt, "give at most "
			    "one of oauth2-client-secret, "
			    "oauth2-client-secret-file and "
			    "oauth2-client-secret-command");
			return (-1);
		}
		a->oauth2_secret_source = sources[i].source;
		if (sources[i].path)
			r = conf_path(sec, sources[i].opt,
			    &a->oauth2_client_secret);
		else
			r = conf_string(sec, sources[i].opt, 1,
			    &a->oauth2_client_secret);
		if (r == -1)
			return (-1);
	}
	return (0);
}

/* An endpoint option: replaces the preset's URL if given. */
static int
conf_oauth2_url(cfg_t *sec, const char *opt, char **url)
{
	char	*v, why[512];

	if (cfg_size(sec, opt) == 0)
		return (0);
	if (conf_string(sec, opt, 1, &v) == -1)
		return (-1);
	if (http_url_check(v, 0, why, sizeof why) == -1) {
		conf_account_error(sec, opt, "%s: %s", opt, why);
		free(v);
		return (-1);
	}
	free(*url);
	*url = v;
	return (0);
}

/*
 * Built-in OAuth2: the provider's preset, what the options change in it,
 * the client, and the token file in the state directory.
 */
static int
conf_account_oauth2(cfg_t *sec, struct config *conf, struct account_conf *a)
{
	static const char *const providers[] = { "google", "microsoft",
	    "custom", NULL };
	static const char *const opts[] = { "oauth2-client-id",
	    "oauth2-client-secret", "oauth2-client-secret-file",
	    "oauth2-client-secret-command", "oauth2-auth-url",
	    "oauth2-token-url", "oauth2-device-url", "oauth2-scope",
	    "oauth2-tenant", NULL };
	struct oauth2_endpoints	 e;
	size_t			 i;
	int			 r;

	if (cfg_size(sec, "oauth2-provider") == 0) {
		for (i = 0; opts[i] != NULL; i++) {
			if (cfg_size(sec, opts[i]) > 0) {
				conf_account_error(sec, opts[i], "%s needs "
				    "oauth2-provider (google, microsoft or "
				    "custom)", opts[i]);
				return (-1);
			}
		}
		return (0);
	}
	if ((r = conf_keyword(sec, "oauth2-provider", providers)) == -1)
		return (-1);
	a->oauth2_provider = (enum oauth2_provider)(r + 1);
	if (conf_string(sec, "oauth2-client-id", 1, &a->oauth2_client_id) ==
	    -1 || conf_oauth2_secret(sec, a) == -1 ||
	    conf_string(sec, "oauth2-tenant", 0, &a->oauth2_tenant) == -1)
		return (-1);
	if (a->oauth2_tenant != NULL && (a->oauth2_provider !=
	    OAUTH2_MICROSOFT || strspn(a->oauth2_tenant, "abcdefghijklmnopq"
	    "rstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") !=
	    strlen(a->oauth2_tenant))) {
		conf_account_error(sec, "oauth2-tenant", a->oauth2_provider ==
		    OAUTH2_MICROSOFT ? "oauth2-tenant is a tenant's ID or "
		    "domain name, or common, organizations or consumers" :
		    "oauth2-tenant is for oauth2-provider = microsoft");
		return (-1);
	}
	oauth2_preset(a->oauth2_provider, a->oauth2_tenant,
	    conf_oauth2_service(a), &e);
	a->oauth2_auth_url = e.auth_url;
	a->oauth2_token_url = e.token_url;
	a->oauth2_device_url = e.device_url;
	a->oauth2_scope = e.scope;
	if (conf_oauth2_url(sec, "oauth2-auth-url", &a->oauth2_auth_url) ==
	    -1 || conf_oauth2_url(sec, "oauth2-token-url",
	    &a->oauth2_token_url) == -1 || conf_oauth2_url(sec,
	    "oauth2-device-url", &a->oauth2_device_url) == -1)
		return (-1);
	if (cfg_size(sec, "oauth2-scope") > 0) {
		free(a->oauth2_scope);
		if (conf_string(sec, "oauth2-scope", 1, &a->oauth2_scope) == -1)
			return (-1);
	}
	if (a->oauth2_token_url == NULL) {
		conf_account_error(sec, "oauth2-provider", "oauth2-provider = "
		    "custom needs oauth2-token-url");
		return (-1);
	}
	if (a->oauth2_auth_url == NULL && a->oauth2_device_url == NULL) {
		conf_account_error(sec, "oauth2-provider", "oauth2-provider = "
		    "custom needs oauth2-device-url (for the device grant) or "
		    "oauth2-auth-url (for the authorization code grant)");
		return (-1);
	}
	if (a->auth == AUTH_AUTO)
		a->auth = AUTH_XOAUTH2;
	else if (a->auth != AUTH_XOAUTH2 && a->auth != AUTH_OAUTHBEARER) {
		conf_account_error(sec, "auth", "with oauth2-provider, auth is "
		    "xoauth2 or oauthbearer (an OAuth2 token is no password)");
		return (-1);
	}
	xasprintf(&a->oauth2_file, "%s/%s.oauth2", conf->state_dir, a->name);
	return (0);
}

/*
 * Is host a host name or an address maild can connect to, give as TLS
 * SNI and put in an OAUTHBEARER message?  NULL if so, else why not.
 */
static const char *
conf_host_problem(const char *host)
{
	unsigned char	 addr[16];
	const char	*p, *zone;
	char		 buf[64];
	size_t		 label = 0;

	if (inet_pton(AF_INET, host, addr) == 1 ||
	    inet_pton(AF_INET6, host, addr) == 1)
		return (NULL);
	/* A link-local IPv6 address with its zone: fe80::1%eth0 */
	if ((zone = strchr(host, '%')) != NULL && zone[1] != '\0' &&
	    (size_t)(zone - host) < sizeof buf &&
	    strspn(zone + 1, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW"
	    "XYZ0123456789._-") == strlen(zone + 1)) {
		memcpy(buf, host, zone - host);
		buf[zone - host] = '\0';
		if (inet_pton(AF_INET6, buf, addr) == 1)
			return (NULL);
	}
	if (strlen(host) > HOST_NAME_MAX_LEN)
		return ("a host name is at most 253 characters");
	for (p = host; *p != '\0'; p++) {
		if (*p == '.') {
			if (label == 0 && !(p[1] == '\0' && p > host))
				return ("it has an empty part between dots");
			label = 0;
		} else if (isalnum((unsigned char)*p) || *p == '-' ||
		    *p == '_') {
			if (++label > HOST_LABEL_MAX)
				return ("a part between dots is at most 63 "
				    "characters");
		} else
			return ("a host name has only letters, digits, '-', "
			    "'_' and dots");
	}
	return (NULL);
}

/*
 * What goes on the wire must fit it.  "USER <user>" and "APOP <user>
 * <digest>" are POP3 commands, at most 255 octets with CRLF (RFC 2449):
 * 248 bytes for the name with USER, 215 with APOP (auth = auto may end
 * up with either).  The SASL methods send the name in base64 on a line of
 * its own, where no such limit applies (RFC 5034: an initial response
 * that would not fit goes there); USER_MAX is longer than any mail
 * address.  The host goes out in the TLS SNI and in OAUTHBEARER.
 */
static int
conf_account_wire(cfg_t *sec, const struct account_conf *a)
{
	const char	*why;
	size_t		 len = strlen(a->user), max = USER_MAX;
	const char	*cmd = NULL;

	if ((why = conf_host_problem(a->host)) != NULL) {
		conf_account_error(sec, "host", "host '%s' is not a host name "
		    "or address: %s", a->host, why);
		return (-1);
	}
	if (a->protocol == PROTOCOL_IMAP)
		max = USER_MAX;
	else if (a->auth == AUTH_USER) {
		cmd = "USER <user>";
		max = POP3_COMMAND_MAX - strlen("USER ") - 2;
	} else if (a->protocol == PROTOCOL_POP3 && (a->auth == AUTH_APOP ||
	    a->auth == AUTH_AUTO)) {
		cmd = "APOP <user> <digest>";
		max = POP3_COMMAND_MAX - strlen("APOP  ") - 32 - 2;
	}
	if (len <= max)
		return (0);
	if (cmd == NULL)
		conf_account_error(sec, "user", "user is %zu bytes long; at "
		    "most %zu are allowed", len, max);
	else
		conf_account_error(sec, "user", "user is %zu bytes long, too "
		    "long for POP3: \"%s\" must fit in 255 octets (RFC 2449), "
		    "which leaves %zu for the name%s", len, cmd, max,
		    a->auth == AUTH_AUTO ? " (auth = auto may log in with "
		    "APOP; name a SASL method with auth for a longer one)" :
		    "");
	return (-1);
}

static int
conf_account(cfg_t *sec, struct config *conf, struct account_conf *a)
{
	const char	*title = cfg_title(sec);
	size_t		 i;

	a->line = conf_section_line(sec);
	a->name = xstrdup(title);
	if (*title == '\0' || strlen(title) > ACCOUNT_NAME_MAX)
		goto badname;
	for (i = 0; title[i] != '\0'; i++) {
		if (!isalnum((unsigned char)title[i]) &&
		    strchr("._@+-", title[i]) == NULL)
			goto badname;
	}

	if (conf_string(sec, "host", 1, &a->host) == -1 ||
	    conf_string(sec, "user", 1, &a->user) == -1)
		return (-1);
	if (cfg_size(sec, "port") > 0) {
		long	port = cfg_getint(sec, "port");

		if (port < 1 || port > 65535) {
			conf_account_error(sec, "port", "port %ld is out of "
			    "range (1-65535)", port);
			return (-1);
		}
		a->port = (int)port;
		a->port_line = conf_line(sec, "port");
	}

	if (conf_account_protocol(sec, a) == -1 ||
	    conf_account_secret(sec, a) == -1 ||
	    conf_account_tls(sec, a) == -1 ||
	    conf_account_policy(sec, conf, a) == -1 ||
	    conf_account_oauth2(sec, conf, a) == -1 ||
	    conf_account_wire(sec, a) == -1)
		return (-1);
	if (a->move_to != NULL && a->keep) {
		conf_account_error(sec, "move-to", "move-to moves fetched "
		    "messages away, which keep = yes says not to do");
		return (-1);
	}
	if (a->mark_seen && !a->keep) {
		conf_account_error(sec, "mark-seen", "mark-seen is for keep = "
		    "yes (otherwise the messages are deleted or moved)");
		return (-1);
	}
	if (cfg_size(sec, "port") == 0) {
		if (a->protocol == PROTOCOL_IMAP)
			a->port = a->tls == TLS_IMPLICIT ? 993 : 143;
		else
			a->port = a->tls == TLS_IMPLICIT ? 995 : 110;
	}
	return (0);

badname:
	conf_errorx(a->line, "account name \"%s\" must be 1 to %d letters, "
	    "digits or ._@+-", title, ACCOUNT_NAME_MAX);
	return (-1);
}

/* The state directory when the config does not name one. */
static char *
conf_default_state_dir(const char *conf_path)
{
	const char	*home, *xdg, *sd;
	char		*path;

	/* systemd's StateDirectory= says where (first of a ':' list). */
	if ((sd = getenv("STATE_DIRECTORY")) != NULL && sd[0] == '/')
		return (xstrndup(sd, strcspn(sd, ":")));
	/* The system configuration goes with the system's state directory,
	   whoever reads it (the service's user, or root for --status). */
	if (getuid() == 0 || strcmp(conf_path, SYSCONFDIR "/maild.conf") == 0)
		return (xstrdup(LOCALSTATEDIR "/lib/maild"));
	if ((xdg = getenv("XDG_STATE_HOME")) != NULL && xdg[0] == '/')
		xasprintf(&path, "%s/maild", xdg);
	else if ((home = getenv("HOME")) != NULL && home[0] == '/')
		xasprintf(&path, "%s/.local/state/maild", home);
	else
		return (NULL);
	return (path);
}

/*
 * The config file to use without -f: for a normal user their own
 * ${XDG_CONFIG_HOME:-~/.config}/maild/maild.conf if it exists, else the
 * system one.  If neither exists, NULL and *cause says where maild looked
 * and how to begin.
 */
char *
config_default_path(char **cause)
{
	const char	*home, *xdg;
	char		*path = NULL;

	if (getuid() != 0) {
		if ((xdg = getenv("XDG_CONFIG_HOME")) != NULL && xdg[0] == '/')
			xasprintf(&path, "%s/maild/maild.conf", xdg);
		else if ((home = getenv("HOME")) != NULL && home[0] == '/')
			xasprintf(&path, "%s/.config/maild/maild.conf", home);
		if (path != NULL && access(path, F_OK) == 0)
			return (path);
	}
	if (access(SYSCONFDIR "/maild.conf", F_OK) == 0 || errno != ENOENT) {
		free(path);
		return (xstrdup(SYSCONFDIR "/maild.conf"));
	}
	if (path != NULL)
		xasprintf(cause, "no configuration file: neither %s nor %s "
		    "exists.\nTo begin, copy the example %s to %s, fill in "
		    "your account and see maild.conf(5)", path,
		    SYSCONFDIR "/maild.conf", DOCDIR "/examples/maild.conf",
		    path);
	else
		xasprintf(cause, "no configuration file: %s does not exist.\n"
		    "To begin, copy the example %s to it, fill in your account "
		    "and see maild.conf(5)", SYSCONFDIR "/maild.conf",
		    DOCDIR "/examples/maild.conf");
	free(path);
	return (NULL);
}

/*
 * Read the configuration file.  It must be a regular file of sensible
 * size, owned by root or by us (unless any_owner) and writable by nobody
 * else: whoever can write it can make maild run a password-command.
 */
static char *
conf_read(const char *path, int any_owner, char **cause)
{
	struct stat	 sb;
	char		*buf;
	ssize_t		 n;
	size_t		 len = 0;
	int		 fd;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) == -1) {
		xasprintf(cause, "%s: %s", path, strerror(errno));
		return (NULL);
	}
	if (fstat(fd, &sb) == -1 || !S_ISREG(sb.st_mode) ||
	    sb.st_size > CONF_SIZE_MAX) {
		xasprintf(cause, "%s: not a regular file of at most %d bytes",
		    path, CONF_SIZE_MAX);
		close(fd);
		return (NULL);
	}
	if (!any_owner && sb.st_uid != 0 && sb.st_uid != getuid()) {
		xasprintf(cause, "%s: owned by uid %ld, neither root nor you "
		    "(uid %ld): refusing it", path, (long)sb.st_uid,
		    (long)getuid());
		close(fd);
		return (NULL);
	}
	if ((sb.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
		xasprintf(cause, "%s: writable by others (mode %04o): "
		    "refusing it; run 'chmod go-w %s'", path,
		    (unsigned)(sb.st_mode & 07777), path);
		close(fd);
		return (NULL);
	}
	buf = xmalloc((size_t)sb.st_size + 2);
	while (len < (size_t)sb.st_size) {
		n = read(fd, buf + len, (size_t)sb.st_size - len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		len += n;
	}
	close(fd);
	if (memchr(buf, '\0', len) != NULL) {
		xasprintf(cause, "%s: contains a NUL byte", path);
		free(buf);
		return (NULL);
	}
	if (len > 0 && buf[len - 1] != '\n')
		buf[len++] = '\n';
	buf[len] = '\0';
	return (buf);
}

/*
 * Refuse a file holding a password that others can read: each account's
 * own file (maild.conf or one of include-dir).
 */
static int
conf_check_secrecy(const struct config *conf)
{
	const struct account_conf	*a;
	struct stat			 sb;
	const char			*what;
	size_t				 i;

	for (i = 0; i < conf->naccounts; i++) {
		a = &conf->accounts[i];
		if (a->secret_source != SECRET_PASSWORD &&
		    a->oauth2_secret_source != SECRET_PASSWORD)
			continue;
		if (stat(a->file, &sb) == -1)
			continue;	/* parsed already; nothing to add */
		if ((sb.st_mode & (S_IRWXG | S_IRWXO)) == 0)
			continue;
		what = a->secret_source == SECRET_PASSWORD ? "password" :
		    "oauth2-client-secret";
		cp->file = a->file;
		conf_errorx(a->line, "account \"%s\" has a %s, but the file is "
		    "readable by others (mode %04o); run 'chmod 600 %s' or use "
		    "%s-file", a->name, what, (unsigned)(sb.st_mode & 07777),
		    a->file, what);
		return (-1);
	}
	return (0);
}

/* Where account b is, as seen from an error about account a. */
static const char *
conf_where(const struct account_conf *a, const struct account_conf *b,
    char *buf, size_t size)
{
	if (strcmp(a->file, b->file) == 0)
		snprintf(buf, size, "line %d", b->line);
	else
		snprintf(buf, size, "%s:%d", b->file, b->line);
	return (buf);
}

/*
 * Across all the files: account names are unique (within one file
 * confuse_compat.c has said so already), and two accounts filling one
 * mailbox from one server would race.
 */
static int
conf_check_accounts(struct config *conf)
{
	struct account_conf	*a, *b;
	char			 where[PATH_MAX + 32];
	size_t			 i, j;

	for (i = 0; i < conf->naccounts; i++) {
		a = &conf->accounts[i];
		for (j = 0; j < i; j++) {
			b = &conf->accounts[j];
			cp->file = a->file;
			if (strcmp(a->name, b->name) == 0) {
				conf_errorx(a->line, "account \"%s\" is defined "
				    "twice: here and in %s", a->name,
				    conf_where(a, b, where, sizeof where));
				return (-1);
			}
			if (strcasecmp(a->host, b->host) == 0 &&
			    a->port == b->port && strcmp(a->user, b->user) == 0) {
				conf_errorx(a->line, "account \"%s\" fetches the "
				    "same mailbox as account \"%s\" (%s)",
				    a->name, b->name, conf_where(a, b, where,
				    sizeof where));
				return (-1);
			}
		}
	}
	return (0);
}

/*
 * Load and validate a configuration.  Returns NULL and sets *cause to a
 * "file:line: message" string on any error.
 */
struct config *
config_load(const char *path, char **cause)
{
	return (conf_load(path, 0, cause));
}

/*
 * The same, for what only reads the configuration and never runs a
 * password-command from it (-n, --status): the file may belong to
 * another user, such as the one the system service runs as.
 */
struct config *
config_load_readonly(const char *path, char **cause)
{
	return (conf_load(path, 1, cause));
}

/*
 * metrics-listen = "port", "address:port" or "[IPv6 address]:port": a
 * port alone is on loopback (127.0.0.1), any other address must be
 * written out.  Numeric addresses only: a name could resolve elsewhere
 * tomorrow, and resolving it would block.  metrics-file: a path.
 */
static int
conf_metrics(cfg_t *cfg, struct config *conf)
{
	const char	*v, *port, *close;
	char		 addr[INET6_ADDRSTRLEN];
	unsigned char	 bin[16];
	uint64_t	 n;
	size_t		 len;
	int		 v6 = 0;

	if (conf_path(cfg, "metrics-file", &conf->metrics_file) == -1)
		return (-1);
	if (cfg_size(cfg, "metrics-listen") == 0)
		return (0);
	v = cfg_getstr(cfg, "metrics-listen");
	if (v[0] != '\0' && strspn(v, "0123456789") == strlen(v)) {
		snprintf(addr, sizeof addr, "127.0.0.1");
		port = v;
	} else if (v[0] == '[') {
		if ((close = strchr(v, ']')) == NULL || close[1] != ':')
			goto bad;
		len = close - v - 1;
		port = close + 2;
		v6 = 1;
		if (len >= sizeof addr)
			goto bad;
		memcpy(addr, v + 1, len);
		addr[len] = '\0';
	} else {
		if ((port = strchr(v, ':')) == NULL || strchr(port + 1, ':') !=
		    NULL || (size_t)(port - v) >= sizeof addr)
			goto bad;
		memcpy(addr, v, port - v);
		addr[port - v] = '\0';
		port++;
	}
	if (inet_pton(v6 ? AF_INET6 : AF_INET, addr, bin) != 1)
		goto bad;
	if (parse_u64(port, 65535, &n) == -1 || n == 0) {
		conf_account_error(cfg, "metrics-listen", "metrics-listen: the "
		    "port must be a number from 1 to 65535");
		return (-1);
	}
	conf->metrics_listen = xstrdup(v);
	conf->metrics_addr = xstrdup(addr);
	conf->metrics_port = (int)n;
	return (0);

bad:
	conf_account_error(cfg, "metrics-listen", "metrics-listen: '%s' is not "
	    "a port or an IP address and port: write 9849 (on loopback), "
	    "127.0.0.1:9849 or [::1]:9849, or 0.0.0.0:9849 to serve other "
	    "hosts too", v);
	return (-1);
}

/* The global options. */
static int
conf_globals(cfg_t *cfg, struct config *conf)
{
	long		 v;
	const char	*v2;

	conf->poll_interval = (int)cfg_getint(cfg, "poll-interval");
	conf->timeout = (int)cfg_getint(cfg, "timeout");
	conf->session_timeout = (int)cfg_getint(cfg, "session-timeout");
	v = cfg_getint(cfg, "max-connections");
	if (conf->poll_interval < 1) {
		conf_account_error(cfg, "poll-interval", "poll-interval must "
		    "be at least 1s");
		return (-1);
	}
	if (conf->timeout < 1) {
		conf_account_error(cfg, "timeout", "timeout must be at least "
		    "1s");
		return (-1);
	}
	if (conf->session_timeout < conf->timeout) {
		conf_account_error(cfg, "session-timeout", "session-timeout "
		    "must not be shorter than timeout");
		return (-1);
	}
	if (v < 1 || v > 1000) {
		conf_account_error(cfg, "max-connections", "max-connections "
		    "must be between 1 and 1000");
		return (-1);
	}
	conf->max_connections = (int)v;
	v = cfg_getint(cfg, "max-connections-per-host");
	if (v < 1 || v > 1000) {
		conf_account_error(cfg, "max-connections-per-host",
		    "max-connections-per-host must be between 1 and 1000");
		return (-1);
	}
	conf->max_connections_per_host = (int)v;
	if (conf_metrics(cfg, conf) == -1)
		return (-1);
	if (cfg_size(cfg, "include-dir") > 0 &&
	    conf_path(cfg, "include-dir", &conf->include_dir) == -1)
		return (-1);
	if (cfg_size(cfg, "state-dir") > 0) {
		if (conf_path(cfg, "state-dir", &conf->state_dir) == -1)
			return (-1);
		conf->state_dir_line = conf_line(cfg, "state-dir");
	} else if ((conf->state_dir = conf_default_state_dir(cp->file)) ==
	    NULL) {
		xasprintf(&cp->error, "%s: no state-dir given and $HOME is "
		    "not set", cp->file);
		return (-1);
	}
	if (cfg_size(cfg, "on-new-mail") > 0) {
		v2 = cfg_getstr(cfg, "on-new-mail");
		if (v2 == NULL || *v2 == '\0' || strpbrk(v2, "\r\n") != NULL) {
			conf_errorx(conf_line(cfg, "on-new-mail"), "on-new-mail "
			    "must be a command on one line");
			return (-1);
		}
		conf->on_new_mail = xstrdup(v2);
	}
	return (0);
}

static int
conf_strcmp(const void *a, const void *b)
{
	return (strcmp(*(char *const *)a, *(char *const *)b));
}

/* The account sections of cfg, read from file, join conf's accounts. */
static int
conf_accounts(cfg_t *cfg, struct config *conf, const char *file)
{
	size_t	i, n = cfg_size(cfg, "account"), base = conf->naccounts;

	if (n == 0)
		return (0);
	if (n > ACCOUNTS_MAX - base) {
		conf_errorx(1, "more than %d accounts", ACCOUNTS_MAX);
		return (-1);
	}
	conf->accounts = xreallocarray(conf->accounts, base + n,
	    sizeof *conf->accounts);
	memset(&conf->accounts[base], 0, n * sizeof *conf->accounts);
	conf->naccounts = base + n;
	for (i = 0; i < n; i++) {
		cp->account = i;
		conf->accounts[base + i].file = file;
		if (conf_account(cfg_getnsec(cfg, "account", i), conf,
		    &conf->accounts[base + i]) == -1)
			return (-1);
	}
	return (0);
}

/*
 * The *.conf files of include-dir, sorted (so that their order, and that
 * of their accounts, does not depend on the directory's).  Like the file
 * that names it, the directory must not be writable by others: a file
 * dropped there could run a password-command.
 */
static char **
conf_include_names(struct config *conf, int any_owner, size_t *np)
{
	const char	*dir = conf->include_dir;
	struct dirent	*de;
	struct stat	 sb;
	DIR		*d;
	char		**names = NULL;
	size_t		 n = 0, len;
	int		 fd, line = conf_line(cp->cfg, "include-dir");

	*np = 0;
	if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1) {
		conf_errorx(line, "include-dir %s: %s", dir, strerror(errno));
		return (NULL);
	}
	if (fstat(fd, &sb) == -1) {
		conf_errorx(line, "include-dir %s: %s", dir, strerror(errno));
		close(fd);
		return (NULL);
	}
	if (!any_owner && sb.st_uid != 0 && sb.st_uid != getuid()) {
		conf_errorx(line, "include-dir %s: owned by uid %ld, neither "
		    "root nor you (uid %ld): refusing it", dir,
		    (long)sb.st_uid, (long)getuid());
		close(fd);
		return (NULL);
	}
	if ((sb.st_mode & (S_IWGRP | S_IWOTH)) != 0) {
		conf_errorx(line, "include-dir %s: writable by others (mode "
		    "%04o): refusing it; run 'chmod go-w %s'", dir,
		    (unsigned)(sb.st_mode & 07777), dir);
		close(fd);
		return (NULL);
	}
	if ((d = fdopendir(fd)) == NULL) {
		conf_errorx(line, "include-dir %s: %s", dir, strerror(errno));
		close(fd);
		return (NULL);
	}
	while ((de = readdir(d)) != NULL) {
		len = strlen(de->d_name);
		/* Editors' and package managers' leftovers are not *.conf. */
		if (de->d_name[0] == '.' || len <= 5 ||
		    strcmp(de->d_name + len - 5, ".conf") != 0)
			continue;
		if (n == INCLUDE_FILES_MAX) {
			conf_errorx(line, "include-dir %s: more than %d *.conf "
			    "files", dir, INCLUDE_FILES_MAX);
			break;
		}
		names = xreallocarray(names, n + 1, sizeof *names);
		names[n++] = xstrdup(de->d_name);
	}
	closedir(d);
	if (cp->error != NULL) {
		while (n > 0)
			free(names[--n]);
		free(names);
		return (NULL);
	}
	if (n > 0)
		qsort(names, n, sizeof *names, conf_strcmp);
	*np = n;
	return (names);
}

/*
 * One file of include-dir: accounts only (global options belong to the
 * file that names the directory), checked as that file is, with errors
 * naming this file and its lines.
 */
static int
conf_include_file(struct config *conf, const char *path, int any_owner)
{
	struct conf_parse	 saved = *cp;
	const cfg_opt_t		*o;
	char			*buf;
	int			 r = -1, line;

	cp->file = path;
	cp->cfg = cfg_init(global_opts, CFGF_NONE);
	cp->compat = NULL;
	cp->account = 0;
	if ((buf = conf_read(path, any_owner, &cp->error)) == NULL)
		goto out;
	cp->compat = compat_parse(cp->cfg, global_opts, path, buf,
	    conf_value_problem, &cp->error);
	freezero_str(buf);
	if (cp->error != NULL)
		goto out;
	for (o = global_opts; o->type != CFGT_NONE; o++) {
		if (o->type == CFGT_SEC ||
		    (line = compat_line(cp->compat, -1, o->name)) == 0)
			continue;
		conf_errorx(line, "%s is a global option, which only %s may "
		    "set: a file of include-dir holds accounts only", o->name,
		    conf->files[0]);
		goto out;
	}
	r = conf_accounts(cp->cfg, conf, path);
out:
	cfg_free(cp->cfg);
	compat_free(cp->compat);
	saved.error = cp->error;
	*cp = saved;
	return (r);
}

/* include-dir: every *.conf file there adds its accounts. */
static int
conf_include(struct config *conf, int any_owner)
{
	char	**names, *path;
	size_t	  i, n;
	int	  r = 0;

	/* NULL: an error, or no file there. */
	if ((names = conf_include_names(conf, any_owner, &n)) == NULL)
		return (cp->error != NULL ? -1 : 0);
	conf->files = xreallocarray(conf->files, conf->nfiles + n,
	    sizeof *conf->files);
	for (i = 0; i < n; i++) {
		if (r == 0) {
			xasprintf(&path, "%s/%s", conf->include_dir, names[i]);
			conf->files[conf->nfiles++] = path;
			r = conf_include_file(conf, path, any_owner);
		}
		free(names[i]);
	}
	free(names);
	return (r);
}

static struct config *
conf_load(const char *path, int any_owner, char **cause)
{
	struct conf_parse	 parse;
	struct config		*conf;
	cfg_t			*cfg;
	char			*buf;

	memset(&parse, 0, sizeof parse);
	parse.file = path;
	cp = &parse;
	conf = xcalloc(1, sizeof *conf);
	conf->refs = 1;
	conf->path = xstrdup(path);
	conf->files = xcalloc(1, sizeof *conf->files);
	conf->files[conf->nfiles++] = xstrdup(path);

	cfg = parse.cfg = cfg_init(global_opts, CFGF_NONE);
	if ((buf = conf_read(path, any_owner, &parse.error)) == NULL)
		goto fail;
	parse.compat = compat_parse(cfg, global_opts, path, buf,
	    conf_value_problem, &parse.error);
	freezero_str(buf);
	if (parse.error != NULL || conf_globals(cfg, conf) == -1 ||
	    conf_accounts(cfg, conf, conf->files[0]) == -1)
		goto fail;
	if (conf->include_dir != NULL && conf_include(conf, any_owner) == -1)
		goto fail;
	/* With include-dir, the accounts may all be still to come. */
	if (conf->naccounts == 0 && conf->include_dir == NULL) {
		xasprintf(&parse.error, "%s: no account is configured", path);
		goto fail;
	}
	if (conf_check_accounts(conf) == -1 || conf_check_secrecy(conf) == -1)
		goto fail;

	cfg_free(cfg);
	compat_free(parse.compat);
	cp = NULL;
	return (conf);

fail:
	cfg_free(cfg);
	compat_free(parse.compat);
	*cause = parse.error;
	cp = NULL;
	config_free(conf);
	return (NULL);
}

static void
conf_account_free(struct account_conf *a)
{
	free(a->name);
	free(a->host);
	free(a->user);
	if (a->secret_source == SECRET_PASSWORD)
		freezero_str(a->secret);
	else
		free(a->secret);
	free(a->maildir);
	free(a->ca_file);
	free(a->tls_cert_file);
	free(a->tls_key_file);
	free(a->pins);
	free(a->move_to);
	free(a->lmtp);
	free(a->lmtp_recipient);
	free(a->mda);
	free(a->on_new_mail);
	if (a->folders != NULL) {
		char	**f;

		for (f = a->folders; *f != NULL; f++)
			free(*f);
		free(a->folders);
	}
	free(a->oauth2_client_id);
	if (a->oauth2_secret_source == SECRET_PASSWORD)
		freezero_str(a->oauth2_client_secret);
	else
		free(a->oauth2_client_secret);
	free(a->oauth2_auth_url);
	free(a->oauth2_token_url);
	free(a->oauth2_device_url);
	free(a->oauth2_scope);
	free(a->oauth2_tenant);
	free(a->oauth2_file);
}

/* Keep only the named account (maild --check name); -1 if there is none. */
int
config_keep_account(struct config *conf, const char *name)
{
	size_t	i, keep = conf->naccounts;

	for (i = 0; i < conf->naccounts; i++) {
		if (strcmp(conf->accounts[i].name, name) == 0)
			keep = i;
	}
	if (keep == conf->naccounts)
		return (-1);
	for (i = 0; i < conf->naccounts; i++) {
		if (i != keep)
			conf_account_free(&conf->accounts[i]);
	}
	conf->accounts[0] = conf->accounts[keep];
	conf->naccounts = 1;
	return (0);
}

/* Take a reference: sessions keep the configuration they started with. */
struct config *
config_ref(struct config *conf)
{
	conf->refs++;
	return (conf);
}

/* Drop a reference; the last one frees. */
void
config_free(struct config *conf)
{
	size_t	i;

	if (conf == NULL || --conf->refs > 0)
		return;
	for (i = 0; i < conf->naccounts; i++)
		conf_account_free(&conf->accounts[i]);
	free(conf->accounts);
	for (i = 0; i < conf->nfiles; i++)
		free(conf->files[i]);
	free(conf->files);
	free(conf->include_dir);
	free(conf->metrics_listen);
	free(conf->metrics_addr);
	free(conf->metrics_file);
	free(conf->state_dir);
	free(conf->on_new_mail);
	free(conf->path);
	free(conf);
}

static int
str_equal(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return (a == b);
	return (strcmp(a, b) == 0);
}

/* Every field of struct account_conf and how it compares (maild.h). */
static const struct account_field {
	size_t			offset;
	size_t			size;
	enum account_field_cmp	cmp;
} account_fields[] = {
#define ACCOUNT_CONF_FIELD(type, field, how)				\
	{ offsetof(struct account_conf, field), sizeof(type), how },
	ACCOUNT_CONF_FIELDS(ACCOUNT_CONF_FIELD)
#undef ACCOUNT_CONF_FIELD
};

/* Two NULL-terminated lists of strings (or NULLs) alike? */
static int
strv_equal(char *const *a, char *const *b)
{
	if (a == NULL || b == NULL)
		return (a == b);
	for (; *a != NULL && *b != NULL; a++, b++) {
		if (strcmp(*a, *b) != 0)
			return (0);
	}
	return (*a == *b);
}

/*
 * Would two account configurations poll the same way?  A reload keeps
 * the schedule and the running session of an account that did not change.
 */
int
config_account_equal(const struct config *ca, const struct account_conf *a,
    const struct config *cb, const struct account_conf *b)
{
	const struct account_field	*f;
	const char			*pa, *pb;
	size_t				 i;

	if (!str_equal(ca->state_dir, cb->state_dir) ||
	    ca->timeout != cb->timeout ||
	    ca->session_timeout != cb->session_timeout)
		return (0);
	for (i = 0; i < sizeof account_fields / sizeof account_fields[0];
	    i++) {
		f = &account_fields[i];
		pa = (const char *)a + f->offset;
		pb = (const char *)b + f->offset;
		switch (f->cmp) {
		case ACF_STR:
			if (!str_equal(*(char *const *)pa, *(char *const *)pb))
				return (0);
			break;
		case ACF_VALUE:
			if (memcmp(pa, pb, f->size) != 0)
				return (0);
			break;
		case ACF_PINS:
			if (a->npins != b->npins || (a->npins > 0 &&
			    memcmp(a->pins, b->pins, a->npins *
			    sizeof *a->pins) != 0))
				return (0);
			break;
		case ACF_STRV:
			if (!strv_equal(*(char **const *)pa,
			    *(char **const *)pb))
				return (0);
			break;
		case ACF_NONE:
			break;
		}
	}
	return (1);
}
