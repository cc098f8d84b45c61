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
 * confuse_compat.h: the boundary between config.c and libconfuse 3.3;
 * confuse_compat.c says what it works around.
 */

#ifndef CONFUSE_COMPAT_H
#define CONFUSE_COMPAT_H

#include <confuse.h>

/*
 * Why value is not right for the option (a message without "file:line: ",
 * in a buffer of COMPAT_WHY_MAX) and -1; 0 if it is, or if the option
 * takes any string.
 */
typedef int (*compat_value_cb)(const char *, const char *, char *, size_t);
#define COMPAT_WHY_MAX	256
/* A message about a mistake in the file, before "file:line: ". */
#define COMPAT_MSG_MAX	512

struct compat;

struct compat	*compat_parse(cfg_t *, const cfg_opt_t *, const char *, char *,
		     compat_value_cb, char **);
int		 compat_line(const struct compat *, int, const char *);
int		 compat_section_line(const struct compat *, int);
void		 compat_free(struct compat *);

#endif /* CONFUSE_COMPAT_H */
