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
 * parse.c: pure parsers for everything a POP3 server sends, and for the
 * values of maild.conf (durations, sizes, fingerprints).  Nothing here
 * allocates, logs or trusts its input, and nothing calls the rest of
 * maild: each function range-checks every number and reports failure
 * instead of guessing.  The fuzzers in tests/fuzz drive these functions
 * directly.
 */

#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "maild.h"

/* Parse a decimal number of at most max; no sign, no overflow. */
static int
parse_number(const char **pp, const char *end, uint64_t max, uint64_t *out)
{
	const char	*p = *pp;
	uint64_t	 v = 0;

	if (p == end || *p < '0' || *p > '9')
		return (-1);
	for (; p < end && *p >= '0' && *p <= '9'; p++) {
		if (v > (max - (uint64_t)(*p - '0')) / 10)
			return (-1);
		v = v * 10 + (uint64_t)(*p - '0');
	}
	*pp = p;
	*out = v;
	return (0);
}

static const char *
skip_spaces(const char *p, const char *end)
{
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	return (p);
}

/*
 * Classify a status line (CRLF already removed).  On +OK and -ERR, *text
 * points at what follows the status word.
 */
enum reply_status
parse_status(const char *line, size_t len, const char **text, size_t *textlen)
{
	enum reply_status	st;
	size_t			skip;

	if (len >= 3 && strncasecmp(line, "+OK", 3) == 0) {
		st = REPLY_OK;
		skip = 3;
	} else if (len >= 4 && strncasecmp(line, "-ERR", 4) == 0) {
		st = REPLY_ERR;
		skip = 4;
	} else
		return (REPLY_BAD);
	/* "+OKAY" is not "+OK". */
	if (skip < len && line[skip] != ' ' && line[skip] != '\t')
		return (REPLY_BAD);
	if (skip < len)
		skip++;
	*text = line + skip;
	*textlen = len - skip;
	return (st);
}

/*
 * Find the RFC 2449 response code at the start of a status text.  Codes
 * are hierarchical ("SYS/TEMP/QUOTA"): a code we know followed by finer
 * detail we do not is still that code.
 */
int
parse_resp_code(const char *text, size_t len)
{
	static const struct {
		const char	*name;
		int		 flag;
	} codes[] = {
		{ "LOGIN-DELAY", RESP_LOGIN_DELAY },
		{ "IN-USE", RESP_IN_USE },
		{ "SYS/TEMP", RESP_SYS_TEMP },
		{ "SYS/PERM", RESP_SYS_PERM },
		{ "AUTH", RESP_AUTH },
	};
	const char	*end;
	size_t		 i, n;

	if (len < 2 || text[0] != '[')
		return (0);
	if ((end = memchr(text, ']', len)) == NULL)
		return (0);
	n = end - text - 1;
	for (i = 0; i < sizeof codes / sizeof codes[0]; i++) {
		size_t	l = strlen(codes[i].name);

		if (l <= n && strncasecmp(text + 1, codes[i].name, l) == 0 &&
		    (l == n || text[1 + l] == '/'))
			return (codes[i].flag);
	}
	return (0);
}

/*
 * Parse one line of a UIDL listing: "msg-number SP unique-id".  The id is
 * everything after the separating white space, less trailing white space;
 * it is returned as is (possibly outside RFC 1939's alphabet), and the
 * caller decides what to do with it.  An empty id is an error.
 */
int
parse_uidl_line(const char *line, size_t len, uint32_t *num, const char **uidl,
    size_t *uidllen)
{
	const char	*p = line, *end = line + len, *start;
	uint64_t	 n;

	if (parse_number(&p, end, LISTING_MAX, &n) == -1 || n == 0)
		return (-1);
	if (p == end || (*p != ' ' && *p != '\t'))
		return (-1);
	p = skip_spaces(p, end);
	start = p;
	while (end > start && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	if (end == start)
		return (-1);
	*num = (uint32_t)n;
	*uidl = start;
	*uidllen = end - start;
	return (0);
}

/* Largest message size believed from LIST: 1 TiB. */
#define LIST_SIZE_MAX	(1ULL << 40)

/* Parse one line of a LIST listing: "msg-number SP size [...]". */
int
parse_list_line(const char *line, size_t len, uint32_t *num, uint64_t *size)
{
	const char	*p = line, *end = line + len;
	uint64_t	 n, sz;

	if (parse_number(&p, end, LISTING_MAX, &n) == -1 || n == 0)
		return (-1);
	if (p == end || (*p != ' ' && *p != '\t'))
		return (-1);
	p = skip_spaces(p, end);
	if (parse_number(&p, end, LIST_SIZE_MAX, &sz) == -1)
		return (-1);
	if (p != end && *p != ' ' && *p != '\t')
		return (-1);
	*num = (uint32_t)n;
	*size = sz;
	return (0);
}

/* Parse the text of a +OK to STAT: "count octets [...]". */
int
parse_stat(const char *text, size_t len, uint64_t *count, uint64_t *octets)
{
	const char	*p = text, *end = text + len;

	if (parse_number(&p, end, LISTING_MAX, count) == -1)
		return (-1);
	if (p == end || (*p != ' ' && *p != '\t'))
		return (-1);
	p = skip_spaces(p, end);
	if (parse_number(&p, end, UINT64_MAX, octets) == -1)
		return (-1);
	if (p != end && *p != ' ' && *p != '\t')
		return (-1);
	return (0);
}

/*
 * Parse the text of a +OK to RETR when it gives the size, as many servers
 * do: "<n> octets [...]".  Returns -1 for any other text.
 */
int
parse_retr_octets(const char *text, size_t len, uint64_t *octets)
{
	const char	*p = text, *end = text + len;

	if (parse_number(&p, end, UINT64_MAX, octets) == -1)
		return (-1);
	if (p == end || (*p != ' ' && *p != '\t'))
		return (-1);
	p = skip_spaces(p, end);
	if ((size_t)(end - p) < 6 || strncasecmp(p, "octets", 6) != 0)
		return (-1);
	p += 6;
	if (p != end && *p != ' ' && *p != '\t')
		return (-1);
	return (0);
}

/* A whole string of decimal digits, at most max. */
int
parse_u64(const char *s, uint64_t max, uint64_t *out)
{
	const char	*p = s, *end = s + strlen(s);

	if (parse_number(&p, end, max, out) == -1 || p != end)
		return (-1);
	return (0);
}

/* Note what one line of a CAPA response announces. */
void
parse_capa_line(struct pop3_capa *capa, const char *line, size_t len)
{
	static const struct {
		const char	*name;
		unsigned	 flag;
	} names[] = {
		{ "PIPELINING", CAPA_PIPELINING },
		{ "UIDL", CAPA_UIDL },
		{ "TOP", CAPA_TOP },
		{ "USER", CAPA_USER },
		{ "STLS", CAPA_STLS },
		{ "SASL", CAPA_SASL },
		{ "RESP-CODES", CAPA_RESP_CODES },
		{ "AUTH-RESP-CODE", CAPA_AUTH_RESP_CODE },
		{ "LOGIN-DELAY", CAPA_LOGIN_DELAY },
	};
	const char	*end = line + len, *p, *word = line;
	size_t		 i, n;
	uint64_t	 v;

	word = skip_spaces(line, end);
	for (p = word; p < end && *p != ' ' && *p != '\t'; p++)
		;
	n = p - word;
	for (i = 0; i < sizeof names / sizeof names[0]; i++) {
		if (strlen(names[i].name) == n &&
		    strncasecmp(word, names[i].name, n) == 0)
			break;
	}
	if (i == sizeof names / sizeof names[0])
		return;			/* unknown capabilities are fine */
	capa->flags |= names[i].flag;
	p = skip_spaces(p, end);
	switch (names[i].flag) {
	case CAPA_SASL:
		n = end - p;
		if (n >= sizeof capa->sasl)
			n = sizeof capa->sasl - 1;
		memcpy(capa->sasl, p, n);
		capa->sasl[n] = '\0';
		for (i = 0; i < n; i++) {
			unsigned char	c = capa->sasl[i];

			if (c == '\t')
				capa->sasl[i] = ' ';
			else if (c < 0x20 || c > 0x7e)
				capa->sasl[i] = '?';
		}
		break;
	case CAPA_LOGIN_DELAY:
		/* "LOGIN-DELAY 900" or, after USER, "LOGIN-DELAY 900 USER". */
		if (parse_number(&p, end, 86400ULL * 30, &v) == 0)
			capa->login_delay = (long)v;
		else
			capa->flags &= ~CAPA_LOGIN_DELAY;
		break;
	}
}

/*
 * The multi-line body decoder.  States, in terms of where we are on the
 * current line of POP3 data:
 */
enum {
	BD_BOL,		/* at the start of a line */
	BD_DOT,		/* the line started with '.', which we dropped */
	BD_DOTCR,	/* the line is ".\r" so far */
	BD_MID,		/* inside a line */
	BD_CR		/* inside a line, holding back a '\r' */
};

void
body_decoder_init(struct body_decoder *d)
{
	d->state = BD_BOL;
	d->done = 0;
	d->crs = 0;
	d->lines = 0;
}

/*
 * Decode up to len bytes of dot-stuffed CRLF data into out, which must
 * have room for len + 1 bytes (a '\r' held back from the previous call may
 * come out now).  Returns how many input bytes were consumed: all of them,
 * or fewer when the terminating ".\r\n" was reached (then d->done is set
 * and the rest belongs to the next response).  A bare LF ends a line too,
 * so ".\n" also terminates.
 */
size_t
body_decode(struct body_decoder *d, const char *in, size_t len, char *out,
    size_t *outlen)
{
	const char	*p = in, *end = in + len, *nl;
	char		*o = out;
	size_t		 n;

	while (p < end && !d->done) {
		switch (d->state) {
		case BD_BOL:
			if (*p == '.') {
				p++;
				d->state = BD_DOT;
			} else
				d->state = BD_MID;
			break;
		case BD_DOT:
			if (*p == '\r') {
				p++;
				d->state = BD_DOTCR;
			} else if (*p == '\n') {
				p++;
				d->done = 1;
			} else
				d->state = BD_MID;
			break;
		case BD_DOTCR:
			if (*p == '\n') {
				p++;
				d->done = 1;
			} else {
				/* The line is ".\r<more>": keep the '\r'. */
				*o++ = '\r';
				d->state = BD_MID;
			}
			break;
		case BD_CR:
			if (*p == '\n') {
				p++;
				*o++ = '\n';
				d->crs++;
				d->lines++;
				d->state = BD_BOL;
			} else {
				*o++ = '\r';
				d->state = BD_MID;
			}
			break;
		case BD_MID:
			nl = memchr(p, '\n', end - p);
			if (nl == NULL) {
				n = end - p;
				if (end[-1] == '\r') {
					n--;
					d->state = BD_CR;
				}
				memcpy(o, p, n);
				o += n;
				p = end;
				break;
			}
			n = nl - p;
			if (n > 0 && nl[-1] == '\r') {
				n--;
				d->crs++;
			}
			memcpy(o, p, n);
			o += n;
			*o++ = '\n';
			d->lines++;
			p = nl + 1;
			d->state = BD_BOL;
			break;
		}
	}
	*outlen = o - out;
	return (p - in);
}

/* ---------------------------------------------------------------------- */
/* maild.conf values */

/* A number's unit suffix and what it multiplies by. */
struct unit {
	const char	*suffix;
	long		 mult;
};

static const struct unit duration_units[] = {
	{ "s", 1 }, { "m", 60 }, { "h", 3600 }, { "d", 86400 }, { NULL, 0 }
};

static const struct unit size_units[] = {
	{ "k", 1L << 10 }, { "K", 1L << 10 }, { "M", 1L << 20 },
	{ "G", 1L << 30 }, { "kB", 1L << 10 }, { "KB", 1L << 10 },
	{ "MB", 1L << 20 }, { "GB", 1L << 30 }, { NULL, 0 }
};

/* Parse digits with an optional unit suffix; the result is at most max. */
static int
parse_scaled(const char *s, const struct unit *units, long max, long *out)
{
	char	*end;
	long	 v, mult = 1;

	if (!isdigit((unsigned char)*s))
		return (-1);
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno != 0)
		return (-1);
	if (*end != '\0') {
		for (; units->suffix != NULL; units++)
			if (strcmp(end, units->suffix) == 0)
				break;
		if (units->suffix == NULL)
			return (-1);
		mult = units->mult;
	}
	if (v > max / mult)
		return (-1);
	*out = v * mult;
	return (0);
}

/*
 * Parse a duration: a number of seconds, or a number with one of the
 * suffixes s, m, h, d.  At most max seconds.
 */
int
parse_duration(const char *s, long max, long *out)
{
	return (parse_scaled(s, duration_units, max, out));
}

/*
 * Parse a size: a number of bytes, or a number with one of the suffixes
 * k, M, G (powers of 1024, optionally followed by B).  At most 1 TiB.
 */
int
parse_size(const char *s, long *out)
{
	return (parse_scaled(s, size_units, PARSE_SIZE_MAX, out));
}

/* A unit as people write it in words, and maild's suffix for it. */
struct unit_word {
	const char	*word;
	const char	*suffix;
};

static const struct unit_word duration_words[] = {
	{ "s", "s" }, { "sec", "s" }, { "secs", "s" }, { "second", "s" },
	{ "seconds", "s" }, { "m", "m" }, { "min", "m" }, { "mins", "m" },
	{ "minute", "m" }, { "minutes", "m" }, { "h", "h" }, { "hr", "h" },
	{ "hrs", "h" }, { "hour", "h" }, { "hours", "h" }, { "d", "d" },
	{ "day", "d" }, { "days", "d" }, { NULL, NULL }
};

static const struct unit_word size_words[] = {
	{ "b", "" }, { "byte", "" }, { "bytes", "" }, { "k", "k" },
	{ "kb", "k" }, { "kib", "k" }, { "m", "M" }, { "mb", "M" },
	{ "mib", "M" }, { "g", "G" }, { "gb", "G" }, { "gib", "G" },
	{ NULL, NULL }
};

/*
 * "5 min" or "20 mb": digits, optional blanks, a unit in words.  Writes
 * the same in maild's notation ("5m", "20M") to buf, if that is valid.
 */
static int
parse_hint(const char *s, const struct unit_word *words, char *buf,
    size_t size)
{
	const char	*unit;
	size_t		 digits, n;

	for (digits = 0; isdigit((unsigned char)s[digits]); digits++)
		;
	if (digits == 0 || digits > 20)
		return (-1);
	for (unit = s + digits; *unit == ' ' || *unit == '\t'; unit++)
		;
	for (; words->word != NULL; words++) {
		if (strcasecmp(unit, words->word) == 0)
			break;
	}
	if (words->word == NULL)
		return (-1);
	n = (size_t)snprintf(buf, size, "%.*s%s", (int)digits, s,
	    words->suffix);
	return (n < size && strcmp(buf, s) != 0 ? 0 : -1);
}

/*
 * What someone who wrote "5 min" or "10 minutes" meant, as a duration maild
 * reads ("5m"), if there is one and it is at most max; else -1.
 */
int
parse_duration_hint(const char *s, long max, char *buf, size_t size)
{
	long	v;

	if (parse_hint(s, duration_words, buf, size) == -1 ||
	    parse_duration(buf, max, &v) == -1)
		return (-1);
	return (0);
}

/* The same for sizes: "20 MB" is "20M". */
int
parse_size_hint(const char *s, char *buf, size_t size)
{
	long	v;

	if (parse_hint(s, size_words, buf, size) == -1 ||
	    parse_size(buf, &v) == -1)
		return (-1);
	return (0);
}

/* The value of a hexadecimal digit, or -1. */
int
parse_hexdigit(int c)
{
	if (c >= '0' && c <= '9')
		return (c - '0');
	if (c >= 'a' && c <= 'f')
		return (c - 'a' + 10);
	if (c >= 'A' && c <= 'F')
		return (c - 'A' + 10);
	return (-1);
}

/* Parse "sha256:AB:CD:..." (or plain hex) into 32 bytes. */
int
parse_fingerprint(const char *s, uint8_t out[32])
{
	size_t	n = 0;
	int	hi = -1, v;

	if (strncasecmp(s, "sha256:", 7) == 0 ||
	    strncasecmp(s, "sha256/", 7) == 0)
		s += 7;
	for (; *s != '\0'; s++) {
		if (*s == ':' && hi == -1)
			continue;
		if ((v = parse_hexdigit((unsigned char)*s)) == -1)
			return (-1);
		if (hi == -1)
			hi = v;
		else {
			if (n == 32)
				return (-1);
			out[n++] = (uint8_t)(hi << 4 | v);
			hi = -1;
		}
	}
	return (n == 32 && hi == -1 ? 0 : -1);
}
