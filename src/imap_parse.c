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
 * imap_parse.c: pure parsers for what an IMAP server sends (RFC 3501,
 * 9051), and the few pure encoders maild needs to speak to one (quoted
 * strings, modified UTF-7 folder names, their Maildir++ names).  Like
 * parse.c, nothing here allocates, logs or calls the rest of maild: a
 * response is parsed into nodes of a caller's array, each pointing into
 * the response's bytes, and every number, depth and count is bounded.
 * tests/fuzz/fuzz_imap.c drives these functions directly.
 *
 * A response reaches imap_parse() whole: its lines with CRLF, and its
 * literals inline ("{n}" CRLF and n bytes).  The session streams a
 * message's body literal to disk instead of keeping it, and leaves "{0}"
 * in its place.  imap_literal_marker() tells it whether a line ends in
 * a literal at all, imap_literal_is_body() whether that literal is such
 * a body, before the literal arrives.
 */

#include "config.h"

#include <string.h>
#include <strings.h>

#include "maild.h"

/* How deep parenthesised lists may nest; real responses need 3. */
#define IMAP_DEPTH_MAX		16

struct imap_lexer {
	const char	*p, *end;
	struct imap_node *nodes;
	size_t		 n, max;
};

/* RFC 3501 atom-specials, less "]" (handled by the callers) */
static int
imap_atom_char(int c)
{
	return (c > 0x20 && c < 0x7f && strchr("(){%*\"\\]", c) == NULL);
}

/* A decimal number of at most max; -1 if it is not one or too big. */
int
imap_number(const char *p, size_t len, uint64_t max, uint64_t *out)
{
	uint64_t	v = 0;
	size_t		i;

	if (len == 0 || len > 20)
		return (-1);
	for (i = 0; i < len; i++) {
		if (p[i] < '0' || p[i] > '9')
			return (-1);
		/* v * 10 + digit <= max, without overflow (max may be < 9) */
		if ((uint64_t)(p[i] - '0') > max ||
		    v > (max - (uint64_t)(p[i] - '0')) / 10)
			return (-1);
		v = v * 10 + (uint64_t)(p[i] - '0');
	}
	*out = v;
	return (0);
}

static struct imap_node *
imap_new_node(struct imap_lexer *lx, enum imap_type type, const char *p,
    size_t len)
{
	struct imap_node	*n;

	if (lx->n >= lx->max)
		return (NULL);
	n = &lx->nodes[lx->n++];
	memset(n, 0, sizeof *n);
	n->type = type;
	n->p = p;
	n->len = len;
	n->next = IMAP_NONE;
	n->child = IMAP_NONE;
	return (n);
}

/*
 * A literal: "{n}" CRLF and n bytes, at lx->p.  A literal8 ("~{n}") is
 * taken like one.
 */
static int
imap_lex_literal(struct imap_lexer *lx, struct imap_node **out)
{
	const char	*p = lx->p, *close;
	uint64_t	 n;

	if (*p == '~')
		p++;
	if (p >= lx->end || *p != '{')
		return (-1);
	p++;
	if ((close = memchr(p, '}', lx->end - p)) == NULL)
		return (-1);
	if (imap_number(p, close - p, IMAP_LITERAL_LEN_MAX, &n) == -1)
		return (-1);
	p = close + 1;
	if (lx->end - p < 2 || p[0] != '\r' || p[1] != '\n')
		return (-1);
	p += 2;
	if ((uint64_t)(lx->end - p) < n)
		return (-1);
	if ((*out = imap_new_node(lx, IMAP_STRING, p, n)) == NULL)
		return (-1);
	(*out)->literal = 1;
	lx->p = p + n;
	return (0);
}

/* A quoted string, at lx->p; the node keeps the escapes. */
static int
imap_lex_quoted(struct imap_lexer *lx, struct imap_node **out)
{
	const char	*p = lx->p + 1, *start = p;

	for (; p < lx->end; p++) {
		if (*p == '\\') {
			if (++p >= lx->end || (*p != '\\' && *p != '"'))
				return (-1);
			continue;
		}
		if (*p == '"')
			break;
		if (*p == '\r' || *p == '\n' || *p == '\0')
			return (-1);
	}
	if (p >= lx->end)
		return (-1);
	if ((*out = imap_new_node(lx, IMAP_STRING, start, p - start)) == NULL)
		return (-1);
	(*out)->quoted = 1;
	lx->p = p + 1;
	return (0);
}

/*
 * An atom, number or NIL; "BODY[...]"-like sections (brackets balanced,
 * with lists inside, on one line, no NUL) and a partial "<n>" (atom
 * characters) are part of the atom.
 */
static int
imap_lex_atom(struct imap_lexer *lx, struct imap_node **out)
{
	const char	*p = lx->p, *start = p;
	int		 depth = 0;
	uint64_t	 v;

	/* A system flag ("\\Seen") or "\\*". */
	if (p < lx->end && *p == '\\') {
		p++;
		if (p < lx->end && *p == '*')
			p++;
	}
	while (p < lx->end) {
		if (depth > 0) {
			if (*p == '\r' || *p == '\n' || *p == '\0')
				return (-1);
			if (*p == '[')
				depth++;
			else if (*p == ']')
				depth--;
			p++;
			continue;
		}
		if (*p == '[') {
			depth++;
			p++;
			continue;
		}
		if (!imap_atom_char((unsigned char)*p))
			break;
		p++;
	}
	if (depth != 0 || p == start)
		return (-1);
	if ((*out = imap_new_node(lx, IMAP_ATOM, start, p - start)) == NULL)
		return (-1);
	if (imap_number(start, p - start, UINT64_MAX, &v) == 0) {
		(*out)->type = IMAP_NUMBER;
		(*out)->num = v;
	} else if (p - start == 3 && strncasecmp(start, "NIL", 3) == 0)
		(*out)->type = IMAP_NIL;
	lx->p = p;
	return (0);
}

/*
 * Values up to the end of the line or (depth > 0) the closing ")",
 * as siblings; returns the index of the first, or IMAP_NONE.
 */
static int
imap_lex_values(struct imap_lexer *lx, int depth, size_t *first)
{
	struct imap_node	*node;
	size_t			 prev = IMAP_NONE, idx;

	*first = IMAP_NONE;
	if (depth > IMAP_DEPTH_MAX)
		return (-1);
	for (;;) {
		while (lx->p < lx->end && *lx->p == ' ')
			lx->p++;
		if (lx->p >= lx->end)
			return (depth == 0 ? 0 : -1);
		if (*lx->p == '\r') {
			if (depth > 0 || lx->end - lx->p != 2 ||
			    lx->p[1] != '\n')
				return (-1);
			return (0);
		}
		if (*lx->p == ')') {
			if (depth == 0)
				return (-1);
			lx->p++;
			return (0);
		}
		idx = lx->n;
		if (*lx->p == '(') {
			lx->p++;
			if ((node = imap_new_node(lx, IMAP_LIST, lx->p - 1,
			    0)) == NULL)
				return (-1);
			if (imap_lex_values(lx, depth + 1, &node->child) == -1)
				return (-1);
			/* node may have moved? no: nodes never move */
			lx->nodes[idx].len = lx->p - lx->nodes[idx].p;
		} else if (*lx->p == '"') {
			if (imap_lex_quoted(lx, &node) == -1)
				return (-1);
		} else if (*lx->p == '{' || *lx->p == '~') {
			if (imap_lex_literal(lx, &node) == -1)
				return (-1);
		} else if (imap_lex_atom(lx, &node) == -1)
			return (-1);
		if (prev == IMAP_NONE)
			*first = idx;
		else
			lx->nodes[prev].next = idx;
		prev = idx;
		/* After a value: a space, ")" or the end of the line. */
		if (lx->p < lx->end && *lx->p != ' ' && *lx->p != ')' &&
		    *lx->p != '\r')
			return (-1);
	}
}

/* The condition word of a status response, or IMAP_COND_NONE. */
static enum imap_cond
imap_cond(const char *p, size_t len)
{
	static const struct {
		const char	*name;
		enum imap_cond	 cond;
	} conds[] = {
		{ "OK", IMAP_COND_OK }, { "NO", IMAP_COND_NO },
		{ "BAD", IMAP_COND_BAD }, { "BYE", IMAP_COND_BYE },
		{ "PREAUTH", IMAP_COND_PREAUTH },
	};
	size_t	i;

	for (i = 0; i < sizeof conds / sizeof conds[0]; i++) {
		if (strlen(conds[i].name) == len &&
		    strncasecmp(p, conds[i].name, len) == 0)
			return (conds[i].cond);
	}
	return (IMAP_COND_NONE);
}

/*
 * The rest of a status response: "[CODE args] text" or "text".  It is
 * one line: no CR, LF or NUL before its CRLF (so no literal either).
 */
static int
imap_status_text(const char *p, const char *end, struct imap_resp *r)
{
	const char	*close, *q;

	if (end - p < 2 || end[-2] != '\r' || end[-1] != '\n')
		return (-1);
	end -= 2;
	for (q = p; q < end; q++) {
		if (*q == '\r' || *q == '\n' || *q == '\0')
			return (-1);
	}
	while (p < end && *p == ' ')
		p++;
	if (p < end && *p == '[') {
		if ((close = memchr(p, ']', end - p)) == NULL)
			return (-1);
		for (q = p + 1; q < close && *q != ' '; q++) {
			if (!imap_atom_char((unsigned char)*q))
				return (-1);
		}
		r->code = p + 1;
		r->codelen = q - (p + 1);
		if (q < close) {
			r->codeargs = q + 1;
			r->codeargslen = close - (q + 1);
		}
		if (r->codelen == 0)
			return (-1);
		p = close + 1;
		while (p < end && *p == ' ')
			p++;
	}
	r->text = p;
	r->textlen = end - p;
	return (0);
}

/* The end of a word of atom characters at p, followed by " " or CRLF. */
static const char *
imap_word(const char *p, const char *end)
{
	const char	*w;

	for (w = p; w < end && imap_atom_char((unsigned char)*w); w++)
		;
	if (w == p || w >= end || (*w != ' ' && *w != '\r'))
		return (NULL);
	return (w);
}

static int
imap_all_digits(const char *p, size_t len)
{
	size_t	i;

	for (i = 0; i < len; i++) {
		if (p[i] < '0' || p[i] > '9')
			return (0);
	}
	return (len > 0);
}

/*
 * Parse one whole response into r, its values into nodes (at most max).
 * Returns 0, or -1 if it is not a response maild can read.
 */
int
imap_parse(const char *buf, size_t len, struct imap_node *nodes, size_t max,
    struct imap_resp *r)
{
	struct imap_lexer	 lx;
	const char		*p = buf, *end = buf + len, *w;
	uint64_t		 v;

	memset(r, 0, sizeof *r);
	r->data = IMAP_NONE;
	r->nodes = nodes;
	if (len < 3 || buf[len - 2] != '\r' || buf[len - 1] != '\n')
		return (-1);
	if (p[0] == '+' && (p[1] == ' ' || p[1] == '\r')) {
		r->kind = IMAP_CONTINUATION;
		r->text = p + (p[1] == ' ' ? 2 : 1);
		r->textlen = end - 2 - r->text;
		if (r->textlen > (size_t)(end - p))
			r->textlen = 0;
		if (memchr(r->text, '\r', r->textlen) != NULL ||
		    memchr(r->text, '\n', r->textlen) != NULL)
			return (-1);
		return (0);
	}
	if (p[0] == '*' && p[1] == ' ') {
		r->kind = IMAP_UNTAGGED;
		p += 2;
	} else {
		r->kind = IMAP_TAGGED;
		for (w = p; w < end && imap_atom_char((unsigned char)*w) &&
		    *w != '+'; w++)
			;
		if (w == p || w >= end || *w != ' ' || w - p > IMAP_TAG_MAX)
			return (-1);
		r->tag = p;
		r->taglen = w - p;
		p = w + 1;
	}
	/*
	 * The first word: a number (for "* n EXISTS") or a keyword, of atom
	 * characters; digits are a number that fits in 32 bits, or nothing.
	 */
	if ((w = imap_word(p, end)) == NULL)
		return (-1);
	if (r->kind == IMAP_UNTAGGED && imap_all_digits(p, w - p)) {
		if (imap_number(p, w - p, UINT32_MAX, &v) == -1)
			return (-1);
		r->num = (uint32_t)v;
		r->has_num = 1;
		if (*w != ' ')
			return (-1);
		p = w + 1;
		if ((w = imap_word(p, end)) == NULL)
			return (-1);
	}
	if ((size_t)(w - p) >= sizeof r->name)
		return (-1);
	memcpy(r->name, p, w - p);
	r->name[w - p] = '\0';
	r->cond = r->has_num ? IMAP_COND_NONE : imap_cond(p, w - p);
	if (r->kind == IMAP_TAGGED && r->cond == IMAP_COND_NONE)
		return (-1);
	if (r->cond != IMAP_COND_NONE)
		return (imap_status_text(w, end, r));
	/* Data: the values after the keyword. */
	memset(&lx, 0, sizeof lx);
	lx.p = w;
	lx.end = end;
	lx.nodes = nodes;
	lx.max = max;
	if (imap_lex_values(&lx, 0, &r->data) == -1)
		return (-1);
	r->nnodes = lx.n;
	return (0);
}

/*
 * The response so far (lines, and the literals before) ends with a
 * literal marker "{n}" CRLF: is that literal the body of a message, the
 * value of BODY[] (or BINARY[], RFC822) in a FETCH?  Then the session
 * streams it instead of keeping it.  *n is its length.  Returns 1 if
 * so, 0 if it is another literal, -1 if the marker is bad.
 */
int
imap_literal_is_body(const char *buf, size_t len, uint64_t *n)
{
	const char	*end = buf + len, *open, *p, *att;
	size_t		 alen;

	if (len < 5 || end[-2] != '\r' || end[-1] != '\n' || end[-3] != '}')
		return (-1);
	/* Back over the digits (at most 20) to the "{". */
	for (open = end - 3; open > buf && open[-1] >= '0' &&
	    open[-1] <= '9' && end - 3 - open < 21; open--)
		;
	if (open == buf || open[-1] != '{')
		return (-1);
	if (imap_number(open, end - 3 - open, IMAP_LITERAL_LEN_MAX, n) == -1)
		return (-1);
	/* The attribute name before " {n}" (or " ~{n}"). */
	p = open - 1;
	if (p > buf && p[-1] == '~')
		p--;
	if (p <= buf || p[-1] != ' ')
		return (0);
	p--;
	for (att = p; att > buf && att[-1] != ' ' && att[-1] != '(';
	    att--)
		;
	alen = p - att;
	if (len < 2 || buf[0] != '*')
		return (0);
	if ((alen == 6 && strncasecmp(att, "BODY[]", 6) == 0) ||
	    (alen == 8 && strncasecmp(att, "BINARY[]", 8) == 0) ||
	    (alen == 6 && strncasecmp(att, "RFC822", 6) == 0))
		return (1);
	return (0);
}

/*
 * Does the response so far (its lines, and the literals before) end with
 * a literal marker, "{n}" or "{n+}" CRLF, where a literal may stand?
 * Only data responses hold literals: the text of a status response
 * (OK, NO, BAD, BYE, PREAUTH) or of a continuation may end in "}" like
 * any text ("* OK IMAP server {v2.3}"), and a literal is a value, after
 * a space or "(" (or "~" for literal8).  Returns 1 if it is a marker
 * (imap_literal_is_body() then reads its length, and refuses a bad
 * one), 0 if the line is only a line.
 */
int
imap_literal_marker(const char *buf, size_t len)
{
	const char	*end = buf + len, *p, *w;
	size_t		 digits = 0;

	if (len < 5 || end[-2] != '\r' || end[-1] != '\n' || end[-3] != '}')
		return (0);
	/* A continuation, or a status response: text, no literal. */
	if (buf[0] == '+')
		return (0);
	for (p = buf; p < end && *p != ' ' && *p != '\r'; p++)
		;
	if (p >= end || *p != ' ')
		return (0);
	p++;
	for (w = p; w < end && imap_atom_char((unsigned char)*w); w++)
		;
	if (imap_cond(p, w - p) != IMAP_COND_NONE)
		return (0);
	/* Back over "+" and the digits (a bounded walk) to the "{". */
	p = end - 3;
	if (p > buf && p[-1] == '+')
		p--;
	while (p > buf && p[-1] >= '0' && p[-1] <= '9' && digits <= 24) {
		p--;
		digits++;
	}
	if (digits == 0 || p == buf || p[-1] != '{')
		return (0);
	p--;
	if (p > buf && p[-1] == '~')
		p--;
	if (p == buf || (p[-1] != ' ' && p[-1] != '('))
		return (0);
	return (1);
}

/*
 * The RFC822.SIZE of a FETCH response, when it comes before the body
 * literal the response so far ends with ("* 3 FETCH (UID 7 RFC822.SIZE
 * 2000 BODY[] {2000}"): the bound for what may follow.  Only the first
 * line is looked at.  Returns 0 with *size set, -1 if it is not there.
 */
int
imap_fetch_size_before(const char *buf, size_t len, uint64_t *size)
{
	static const char	 att[] = "RFC822.SIZE ";
	const char		*end, *p, *q;

	if ((end = memchr(buf, '\n', len)) == NULL)
		return (-1);
	for (p = buf + 1; p + sizeof att - 1 < end; p++) {
		if ((p[-1] != ' ' && p[-1] != '(') ||
		    strncasecmp(p, att, sizeof att - 1) != 0)
			continue;
		p += sizeof att - 1;
		for (q = p; q < end && *q >= '0' && *q <= '9'; q++)
			;
		if (q == end || (*q != ' ' && *q != ')'))
			return (-1);
		return (imap_number(p, q - p, IMAP_LITERAL_LEN_MAX, size));
	}
	return (-1);
}

/*
 * The Maildir++ folder (".Name") for an IMAP folder (in modified UTF-7,
 * as Dovecot names its folders on disk) into buf: "INBOX" is the Maildir
 * itself (returns 0); the "INBOX<sep>" prefix of servers that nest
 * folders under INBOX is dropped; the server's hierarchy separator
 * becomes "."; a "." or "/" within a name, and a control character,
 * becomes "_"; spaces stay ("Sent Items" -> ".Sent Items").  A name with
 * an empty level (the folder "/" with separator "/", "a//b", ".a") has
 * no safe name ("..", "..a"): -1, as for one that does not fit.
 */
ssize_t
imap_maildir_folder(const char *utf7, size_t len, char delim, char *buf,
    size_t size)
{
	size_t	i, o = 0, level = 0;
	char	c;

	if (len == 5 && strncasecmp(utf7, "INBOX", 5) == 0)
		return (0);
	if (delim != '\0' && len > 6 && strncasecmp(utf7, "INBOX", 5) == 0 &&
	    utf7[5] == delim) {
		utf7 += 6;
		len -= 6;
	}
	if (len == 0 || size < 2)
		return (-1);
	buf[o++] = '.';
	for (i = 0; i < len; i++) {
		c = utf7[i];
		if (c == '\0')
			return (-1);
		if (delim != '\0' && c == delim) {
			if (level == 0)
				return (-1);	/* an empty level */
			c = '.';
			level = 0;
		} else {
			if (c == '/' || c == '.' || (unsigned char)c < 0x20 ||
			    c == 0x7f)
				c = '_';
			level++;
		}
		if (o + 1 >= size)
			return (-1);
		buf[o++] = c;
	}
	if (level == 0)
		return (-1);		/* ends in the separator */
	buf[o] = '\0';
	return ((ssize_t)o);
}

/* The value of a FETCH attribute (name as sent: "UID", "BODY[]"). */
size_t
imap_fetch_att(const struct imap_resp *r, const char *name)
{
	const struct imap_node	*list, *n;
	size_t			 i, len = strlen(name);

	if (r->data == IMAP_NONE || strcasecmp(r->name, "FETCH") != 0)
		return (IMAP_NONE);
	list = &r->nodes[r->data];
	if (list->type != IMAP_LIST || list->next != IMAP_NONE)
		return (IMAP_NONE);
	/* name value name value ... */
	for (i = list->child; i != IMAP_NONE; i = r->nodes[n->next].next) {
		n = &r->nodes[i];
		if (n->next == IMAP_NONE)
			return (IMAP_NONE);
		if (n->type == IMAP_ATOM && n->len == len &&
		    strncasecmp(n->p, name, len) == 0)
			return (n->next);
	}
	return (IMAP_NONE);
}

/* A node's value as a number of at most max; -1 if it is not one. */
int
imap_node_number(const struct imap_resp *r, size_t i, uint64_t max,
    uint64_t *out)
{
	if (i == IMAP_NONE || r->nodes[i].type != IMAP_NUMBER ||
	    r->nodes[i].num > max)
		return (-1);
	*out = r->nodes[i].num;
	return (0);
}

/*
 * A string node's (quoted, literal or atom) bytes into buf, escapes
 * undone; returns the length, or -1 if it is not a string or does not
 * fit.  NIL is the empty string.
 */
ssize_t
imap_node_string(const struct imap_resp *r, size_t i, char *buf, size_t size)
{
	const struct imap_node	*n;
	size_t			 o = 0, k;

	if (i == IMAP_NONE)
		return (-1);
	n = &r->nodes[i];
	if (n->type == IMAP_NIL)
		return (0);
	if (n->type == IMAP_LIST)
		return (-1);
	for (k = 0; k < n->len; k++) {
		if (n->quoted && n->p[k] == '\\')
			k++;
		if (o >= size)
			return (-1);
		buf[o++] = n->p[k];
	}
	return ((ssize_t)o);
}

/* Is word (case-insensitive) one of the space-separated words of list? */
int
imap_has_word(const char *list, size_t len, const char *word)
{
	const char	*p = list, *end = list + len, *w;
	size_t		 wl = strlen(word);

	while (p < end) {
		while (p < end && *p == ' ')
			p++;
		for (w = p; w < end && *w != ' '; w++)
			;
		if ((size_t)(w - p) == wl && strncasecmp(p, word, wl) == 0)
			return (1);
		p = w;
	}
	return (0);
}

/*
 * Can s be sent as a quoted string?  Returns its length quoted (into
 * buf, quotes included) or -1 if it needs a literal (CR, LF, NUL, 8-bit)
 * or does not fit.
 */
ssize_t
imap_quote(const char *s, size_t len, char *buf, size_t size)
{
	size_t	i, o = 0;

	if (size < 2)
		return (-1);
	buf[o++] = '"';
	for (i = 0; i < len; i++) {
		unsigned char	c = s[i];

		if (c == '\0' || c == '\r' || c == '\n' || c >= 0x80)
			return (-1);
		if (c == '"' || c == '\\') {
			if (o + 1 >= size)
				return (-1);
			buf[o++] = '\\';
		}
		if (o >= size)
			return (-1);
		buf[o++] = c;
	}
	if (o >= size)
		return (-1);
	buf[o++] = '"';
	return ((ssize_t)o);
}

static const char b64mod[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

/*
 * A folder name in UTF-8 as IMAP's modified UTF-7 (RFC 3501 5.1.3) into
 * buf; returns its length, or -1 if it is not valid UTF-8 or does not
 * fit.
 */
ssize_t
imap_utf7_encode(const char *in, size_t len, char *buf, size_t size)
{
	size_t		 i = 0, o = 0;
	uint32_t	 bits = 0, cp;
	int		 nbits = 0, inb64 = 0, extra;
	uint16_t	 units[2];
	int		 nu, u;

#define PUT(c)	do { if (o >= size) return (-1); buf[o++] = (c); } while (0)
	while (i < len) {
		unsigned char	c = in[i];

		if (c >= 0x20 && c < 0x7f) {
			if (inb64) {
				if (nbits > 0)
					PUT(b64mod[(bits << (6 - nbits)) & 63]);
				PUT('-');
				inb64 = 0;
				nbits = 0;
				bits = 0;
			}
			PUT(c);
			if (c == '&')
				PUT('-');
			i++;
			continue;
		}
		/* One UTF-8 sequence. */
		if (c < 0x80)
			return (-1);	/* a control character */
		if ((c & 0xe0) == 0xc0) {
			cp = c & 0x1f;
			extra = 1;
		} else if ((c & 0xf0) == 0xe0) {
			cp = c & 0x0f;
			extra = 2;
		} else if ((c & 0xf8) == 0xf0) {
			cp = c & 0x07;
			extra = 3;
		} else
			return (-1);
		if ((size_t)extra > len - i - 1)
			return (-1);
		for (u = 1; u <= extra; u++) {
			if (((unsigned char)in[i + u] & 0xc0) != 0x80)
				return (-1);
			cp = (cp << 6) | ((unsigned char)in[i + u] & 0x3f);
		}
		if ((extra == 1 && cp < 0x80) || (extra == 2 && cp < 0x800) ||
		    (extra == 3 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp < 0xe000))
			return (-1);
		i += extra + 1;
		if (cp >= 0x10000) {
			cp -= 0x10000;
			units[0] = 0xd800 | (cp >> 10);
			units[1] = 0xdc00 | (cp & 0x3ff);
			nu = 2;
		} else {
			units[0] = (uint16_t)cp;
			nu = 1;
		}
		if (!inb64) {
			PUT('&');
			inb64 = 1;
		}
		for (u = 0; u < nu; u++) {
			bits = (bits << 16) | units[u];
			nbits += 16;
			while (nbits >= 6) {
				nbits -= 6;
				PUT(b64mod[(bits >> nbits) & 63]);
			}
			bits &= (1U << nbits) - 1;
		}
	}
	if (inb64) {
		if (nbits > 0)
			PUT(b64mod[(bits << (6 - nbits)) & 63]);
		PUT('-');
	}
#undef PUT
	return ((ssize_t)o);
}
