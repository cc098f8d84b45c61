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
 * check.c: what "maild -n" checks beyond a valid maild.conf: can the
 * Maildirs, the state directory and the files the configuration names be
 * used.
 */

#include "config.h"

#include <sys/stat.h>

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "maild.h"

/* Is path a writable directory, or could one be created there? */
static int
check_dir(const char *what, const char *name, const char *path)
{
	char		 buf[PATH_MAX], *slash;
	struct stat	 sb;

	if (strlen(path) >= sizeof buf)
		return (-1);
	snprintf(buf, sizeof buf, "%s", path);
	for (;;) {
		if (stat(buf, &sb) == 0) {
			if (!S_ISDIR(sb.st_mode)) {
				fprintf(stderr, "maild: %s%s%s: %s: %s is not a "
				    "directory\n", name ? "account \"" : "",
				    name ? name : "", name ? "\"" : "", what, buf);
				return (-1);
			}
			if (access(buf, W_OK | X_OK) == -1) {
				fprintf(stderr, "maild: %s%s%s: %s: %s is not "
				    "writable: %s\n", name ? "account \"" : "",
				    name ? name : "", name ? "\"" : "", what, buf,
				    strerror(errno));
				return (-1);
			}
			return (0);
		}
		if ((slash = strrchr(buf, '/')) == NULL || slash == buf)
			return (0);
		*slash = '\0';
	}
}

/*
 * The offline part of "maild -n": can the files the config names be used?
 * Prints each problem to stderr; returns -1 if there was one.
 */
int
check_config(const struct config *conf)
{
	struct stat	 sb;
	char		 sub[PATH_MAX], *cause = NULL;
	size_t		 i;
	int		 bad = 0;
	const char	*dirs[] = { "cur", "new", "tmp" };

	if (check_dir("state-dir", NULL, conf->state_dir) == -1)
		bad = 1;
	for (i = 0; i < conf->naccounts; i++) {
		const struct account_conf	*a = &conf->accounts[i];
		size_t				 d;

		if (check_dir("maildir", a->name, a->maildir) == -1)
			bad = 1;
		for (d = 0; d < 3; d++) {
			snprintf(sub, sizeof sub, "%s/%s", a->maildir, dirs[d]);
			if (stat(sub, &sb) == 0 &&
			    check_dir("maildir", a->name, sub) == -1)
				bad = 1;
		}
		if (a->ca_file != NULL && access(a->ca_file, R_OK) == -1) {
			fprintf(stderr, "maild: account \"%s\": ca-file %s: "
			    "%s\n", a->name, a->ca_file, strerror(errno));
			bad = 1;
		}
		if (a->secret_source == SECRET_FILE &&
		    private_path("password-file", a->secret, &cause) == -1) {
			fprintf(stderr, "maild: account \"%s\": %s\n", a->name,
			    cause);
			free(cause);
			bad = 1;
		}
		if (a->tls_key_file != NULL &&
		    private_path("tls-key-file", a->tls_key_file,
		    &cause) == -1) {
			fprintf(stderr, "maild: account \"%s\": %s\n", a->name,
			    cause);
			free(cause);
			bad = 1;
		}
	}
	return (bad ? -1 : 0);
}
