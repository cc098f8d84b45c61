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
 * confuse_compat.c: everything maild does because of how libconfuse 3.3
 * reads a file.  config.c hands the file's text and an initialised cfg_t
 * to compat_parse() and gets back the parsed cfg_t, the line where each
 * option was written, and the first mistake as "file:line: message".
 * What libconfuse does, and what this file does about it:
 *
 *  - It counts every line of a '#' or '//' comment twice (its lexer takes
 *    the comment and then the line end, and counts both), so every error
 *    after a comment names the wrong line.  strip_comments() blanks the
 *    comments out before libconfuse sees the text, keeping the line ends.
 *
 *  - It accepts a file that ends inside a section (a missing final '}')
 *    as if the section were closed, and it lets a quoted string run over
 *    line ends, so a missing quote surfaces lines later.  Its messages
 *    name the symptom, not the mistake: after a missing '}' the next
 *    section is "no such option 'account'", a value with a space in it
 *    is "no such option '<second word>'", an option outside its section
 *    or with a typo "no such option", a repeated section "found duplicate
 *    title".  scan() reads the text first, the way libconfuse's lexer
 *    and parser do, and names these mistakes for what they are.
 *
 *  - It keeps the last of an option given twice without a word, records
 *    no line for an option, and leaves a section's cfg->line at its
 *    closing brace.  scan() refuses an option given twice and remembers
 *    where every option and section was written (compat_line()).
 *
 *  - Its callbacks get no user pointer, so the parse in progress is a
 *    static (libconfuse's own lexer is not reentrant either).
 *
 * Where scan() meets something it does not model, it stops without a
 * word and leaves the file to libconfuse.  Of the two first errors, the
 * one on the earlier line is reported (scan()'s on a tie): libconfuse
 * stops at its first error too, so an earlier one of its errors is never
 * a consequence of a later mistake scan() found.
 */

#include "config.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "maild.h"
#include "confuse_compat.h"

/* Characters that end an unquoted word (libconfuse's lexer.l). */
#define WORD_END	" #\"'\t\n\r={}()+,*"
/* Suggest an option name at most this many edits away from a typo. */
#define SUGGEST_DISTANCE	2

enum tok {
	TOK_EOF,
	TOK_STR,		/* a word, a quoted string or ${VAR} */
	TOK_LBRACE,
	TOK_RBRACE,
	TOK_EQUAL,
	TOK_APPEND,		/* += */
	TOK_COMMA,
	TOK_OTHER,		/* ( ) */
	TOK_UNTERMINATED	/* a quoted string without its closing quote */
};

struct token {
	enum tok	 type;
	const char	*start;		/* raw text, quotes included */
	size_t		 len;
	int		 quoted;
	int		 line;		/* where it starts */
	int		 endline;	/* where it ends */
};

struct lexer {
	const char	*p;
	int		 line;
};

/* A section (an account block) as written. */
struct section {
	char		*title;		/* as written, without quotes */
	int		 line;		/* of its name */
	int		*lines;		/* per suboption: where set, or 0 */
};

struct compat {
	const char		*file;
	const cfg_opt_t		*opts;		/* the top-level options */
	compat_value_cb		 value_cb;
	int			*lines;		/* per top-level option */
	struct section		*secs;
	size_t			 nsecs;
	struct section		*cur;		/* the open section, if any */
	char			*scan_error;	/* scan()'s first mistake */
	int			 scan_line;
	char			*lib_error;	/* libconfuse's first */
	int			 lib_line;
};

static struct compat	*parsing;	/* for the libconfuse callback */

static void	strip_comments(char *);
static void	compat_error_cb(cfg_t *, const char *, va_list)
		    PRINTFLIKE(2, 0);
static void	scan_error(struct compat *, const struct section *, int,
		    const char *, ...) PRINTFLIKE(4, 5);

/*
 * Is p the start of a "//" comment as libconfuse's lexer sees one: two or
 * more slashes at the start of a word, and nothing after them that would
 * make them part of a longer word?
 */
static int
slash_comment(const char *buf, const char *p)
{
	const char	*q;

	if (p[0] != '/' || p[1] != '/')
		return (0);
	if (p > buf && strchr(" \t\r\n{}()=+,", p[-1]) == NULL)
		return (0);
	for (q = p; *q == '/'; q++)
		;
	return (*q == '\0' || strchr(" \t\r\n#\"'={}()+,", *q) != NULL);
}

/*
 * Blank out comments, keeping the line breaks: from "#" (outside quoted
 * strings; it cannot be part of an unquoted word) or from a "//" comment to
 * the end of the line, and C comments.
 */
static void
strip_comments(char *buf)
{
	char	*p, quote = 0;

	for (p = buf; *p != '\0'; p++) {
		if (quote != 0) {
			if (*p == '\\' && p[1] != '\0')
				p++;
			else if (*p == quote || *p == '\n')
				quote = 0;
			continue;
		}
		if (*p == '"' || *p == '\'')
			quote = *p;
		else if (p[0] == '/' && p[1] == '*' && (p == buf ||
		    strchr(" \t\r\n{}()=+,", p[-1]) != NULL)) {
			/* A C comment, at the start of a word. */
			while (*p != '\0' && !(p[0] == '*' && p[1] == '/')) {
				if (*p != '\n')
					*p = ' ';
				p++;
			}
			if (*p == '\0')
				break;
			p[0] = p[1] = ' ';
			p++;
		} else if (*p == '#' || slash_comment(buf, p)) {
			while (*p != '\0' && *p != '\n')
				*p++ = ' ';
			if (*p == '\0')
				break;
		}
	}
}

/* ---------------------------------------------------------------------- */
/* The lexer: libconfuse's tokens, on text without comments. */

/* A quoted string; one that reaches the end of its line is unterminated. */
static void
lex_quoted(struct lexer *lx, struct token *t)
{
	const char	*p = lx->p;
	char		 quote = *p++;

	t->quoted = 1;
	for (;;) {
		if (*p == '\0' || *p == '\n') {
			t->type = TOK_UNTERMINATED;
			break;
		}
		if (p[0] == '\\' && p[1] == '\n') {
			/* libconfuse's line continuation */
			lx->line++;
			p += 2;
		} else if (p[0] == '\\' && p[1] != '\0')
			p += 2;
		else if (*p++ == quote) {
			t->type = TOK_STR;
			break;
		}
	}
	t->len = p - t->start;
	lx->p = p;
}

static void
lex(struct lexer *lx, struct token *t)
{
	const char	*p = lx->p, *q;

	/* Blanks, and what libconfuse's lexer eats: a lone '+' or '*'. */
	for (;; p++) {
		if (*p == '\n')
			lx->line++;
		else if (!(strchr(" \t\r*", *p) != NULL && *p != '\0') &&
		    !(*p == '+' && p[1] != '='))
			break;
	}
	memset(t, 0, sizeof *t);
	t->start = lx->p = p;
	t->line = lx->line;
	t->len = 1;
	switch (*p) {
	case '\0':
		t->type = TOK_EOF;
		t->len = 0;
		break;
	case '{':
		t->type = TOK_LBRACE;
		break;
	case '}':
		t->type = TOK_RBRACE;
		break;
	case '=':
		t->type = TOK_EQUAL;
		break;
	case '+':
		t->type = TOK_APPEND;
		t->len = 2;
		break;
	case ',':
		t->type = TOK_COMMA;
		break;
	case '(':
	case ')':
	case '#':	/* not after strip_comments(); a word to be safe */
		t->type = TOK_OTHER;
		break;
	case '"':
	case '\'':
		lex_quoted(lx, t);
		t->endline = lx->line;
		return;
	default:
		t->type = TOK_STR;
		if (p[0] == '$' && p[1] == '{' &&
		    (q = strchr(p, '}')) != NULL) {
			/* ${VAR}: libconfuse puts in the variable's value */
			for (t->len = q + 1 - p; p <= q; p++)
				if (*p == '\n')
					lx->line++;
		} else
			t->len = strcspn(p, WORD_END);
		break;
	}
	lx->p = t->start + t->len;
	t->endline = lx->line;
}

/* The token's text, without quotes; allocated. */
static char *
token_text(const struct token *t)
{
	if (t->quoted)
		return (xstrndup(t->start + 1, t->len - 2));
	return (xstrndup(t->start, t->len));
}

/* ---------------------------------------------------------------------- */
/* The option tables */

static const cfg_opt_t *
find_opt(const cfg_opt_t *opts, const char *name, size_t *index)
{
	size_t	i;

	for (i = 0; opts != NULL && opts[i].type != CFGT_NONE; i++) {
		if (strcmp(opts[i].name, name) == 0) {
			if (index != NULL)
				*index = i;
			return (&opts[i]);
		}
	}
	return (NULL);
}

static size_t
count_opts(const cfg_opt_t *opts)
{
	size_t	n = 0;

	while (opts != NULL && opts[n].type != CFGT_NONE)
		n++;
	return (n);
}

/* The section option (account): maild.conf has exactly one. */
static const cfg_opt_t *
section_opt(const struct compat *c)
{
	size_t	i;

	for (i = 0; c->opts[i].type != CFGT_NONE; i++) {
		if (c->opts[i].type == CFGT_SEC)
			return (&c->opts[i]);
	}
	return (NULL);
}

/* The option name closest to a typo, if it is close enough. */
static const char *
closest_opt(const cfg_opt_t *const *tables, size_t ntables, const char *typo)
{
	const char	*best = NULL;
	size_t		 t, i, d, bestd = SIZE_MAX;

	for (t = 0; t < ntables; t++) {
		for (i = 0; tables[t][i].type != CFGT_NONE; i++) {
			d = edit_distance(typo, tables[t][i].name);
			if (d < bestd) {
				bestd = d;
				best = tables[t][i].name;
			}
		}
	}
	/* "kep" is "keep"; "mail" is not "tls" */
	if (bestd > SUGGEST_DISTANCE || bestd * 3 > strlen(typo))
		return (NULL);
	return (best);
}

/* ---------------------------------------------------------------------- */
/* scan(): what libconfuse would misreport */

/*
 * Record the first mistake scan() finds (without "file:line: "), naming
 * the section it is in, if any.
 */
static void
scan_error(struct compat *c, const struct section *in, int line,
    const char *fmt, ...)
{
	va_list	ap;
	char	msg[COMPAT_MSG_MAX];

	if (c->scan_error != NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (in != NULL)
		xasprintf(&c->scan_error, "%s \"%s\": %s",
		    section_opt(c)->name, in->title, msg);
	else
		c->scan_error = xstrdup(msg);
	c->scan_line = line;
}

static void
scan_unterminated(struct compat *c, const struct token *t)
{
	scan_error(c, c->cur, t->line, "unterminated string: the %c opened on "
	    "this line is not closed before the end of the line", *t->start);
}

/* An option name that is not one here: say what it is instead. */
static void
scan_unknown(struct compat *c, const char *name, int line, int insec)
{
	const cfg_opt_t	*sec = section_opt(c), *tables[2];
	const char	*guess;

	if (!insec && sec != NULL && find_opt(sec->subopts, name, NULL)) {
		scan_error(c, NULL, line, "%s belongs inside an %s block", name,
		    sec->name);
		return;
	}
	if (insec && find_opt(c->opts, name, NULL)) {
		scan_error(c, c->cur, line, "%s is a global option: move it "
		    "out of the %s block", name, sec->name);
		return;
	}
	tables[0] = c->opts;
	tables[1] = sec != NULL ? sec->subopts : c->opts;
	if ((guess = closest_opt(tables, 2, name)) != NULL)
		scan_error(c, c->cur, line, "no such option '%s'; did you "
		    "mean '%s'?", name, guess);
	else
		scan_error(c, c->cur, line, "no such option '%s'", name);
}

/*
 * After an option's value, more words on the same line that do not start
 * the next option: "poll-interval = 5 min" or "password-command = pass
 * show mail", which libconfuse reads as an option named "min".  Returns
 * 1 (and records the mistake) if there are any.
 */
static int
scan_extra_words(struct compat *c, struct lexer *lx, const cfg_opt_t *opt,
    const struct token *value)
{
	struct lexer	 save, peek;
	struct token	 w, after;
	const char	*end = value->start + value->len;
	char		*all, why[COMPAT_WHY_MAX];
	int		 quoted = value->quoted;

	for (;;) {
		save = *lx;
		lex(lx, &w);
		if (w.type != TOK_STR || w.line != value->endline) {
			*lx = save;
			break;
		}
		peek = *lx;
		lex(&peek, &after);
		if (after.type == TOK_EQUAL || after.type == TOK_APPEND ||
		    (after.type == TOK_STR && section_opt(c) != NULL &&
		    w.len == strlen(section_opt(c)->name) &&
		    strncmp(w.start, section_opt(c)->name, w.len) == 0)) {
			*lx = save;	/* the next option, on the same line */
			break;
		}
		quoted |= w.quoted;
		end = w.start + w.len;
	}
	if (end == value->start + value->len)
		return (0);

	all = xstrndup(value->start, end - value->start);
	if (!quoted && c->value_cb(opt->name, all, why, sizeof why) == -1)
		scan_error(c, c->cur, value->line, "%s: %s", opt->name, why);
	else if (!quoted && opt->type == CFGT_STR)
		scan_error(c, c->cur, value->line, "%s: put the value in "
		    "quotes: %s = \"%s\"", opt->name, opt->name, all);
	else
		scan_error(c, c->cur, value->line, "%s: unexpected '%s' after "
		    "the "
		    "value", opt->name, all + value->len + strspn(all +
		    value->len, " \t"));
	free(all);
	return (1);
}

/* The next token; -1 if it is an unterminated string (a mistake). */
static int
scan_lex(struct compat *c, struct lexer *lx, struct token *t)
{
	lex(lx, t);
	if (t->type != TOK_UNTERMINATED)
		return (0);
	scan_unterminated(c, t);
	return (-1);
}

/*
 * The value of opt, after its '=' or '+='.  Returns 0 if it was what
 * libconfuse expects, -1 if not (then scan() stops: libconfuse reports
 * it, or scan_error() has).
 */
static int
scan_value(struct compat *c, struct lexer *lx, const cfg_opt_t *opt)
{
	struct token	t;

	if (scan_lex(c, lx, &t) == -1)
		return (-1);
	if (t.type == TOK_STR)
		return (scan_extra_words(c, lx, opt, &t) ? -1 : 0);
	if (t.type != TOK_LBRACE || !(opt->flags & CFGF_LIST))
		return (-1);
	/* A list: { } or { "a", "b" } */
	for (;;) {
		if (scan_lex(c, lx, &t) == -1)
			return (-1);
		if (t.type == TOK_RBRACE)
			return (0);
		if (t.type != TOK_STR || scan_lex(c, lx, &t) == -1)
			return (-1);
		if (t.type == TOK_RBRACE)
			return (0);
		if (t.type != TOK_COMMA)
			return (-1);
	}
}

/*
 * Where an option is set: refuse it a second time (a list may be given in
 * parts with +=, after its default).
 */
static int
scan_option_line(struct compat *c, int *lines, size_t index,
    const cfg_opt_t *opt, int line)
{
	if (lines[index] != 0 && !(opt->flags & CFGF_LIST)) {
		scan_error(c, c->cur, line, "'%s' is set twice (lines %d and "
		    "%d)", opt->name, lines[index], line);
		return (-1);
	}
	lines[index] = line;
	return (0);
}

/* "account <title> {": open a section. */
static int
scan_section(struct compat *c, struct lexer *lx, const cfg_opt_t *opt,
    int line)
{
	struct token	 t;
	struct section	*s;
	char		*title;
	size_t		 i;

	if (scan_lex(c, lx, &t) == -1 || t.type != TOK_STR)
		return (-1);
	title = token_text(&t);
	lex(lx, &t);
	if (t.type != TOK_LBRACE) {
		free(title);
		return (-1);
	}
	for (i = 0; i < c->nsecs; i++) {
		if (strcmp(c->secs[i].title, title) == 0) {
			scan_error(c, NULL, line, "%s \"%s\" is defined twice "
			    "(lines %d and %d)", opt->name, title,
			    c->secs[i].line, line);
			free(title);
			return (-1);
		}
	}
	c->secs = xreallocarray(c->secs, c->nsecs + 1, sizeof *c->secs);
	s = &c->secs[c->nsecs++];
	s->title = title;
	s->line = line;
	s->lines = xcalloc(count_opts(opt->subopts) + 1, sizeof *s->lines);
	return (0);
}

/*
 * Read the text as libconfuse will, for mistakes it would misreport and
 * for where everything is.  Stops at the first mistake, or quietly at
 * anything it does not model (libconfuse will report that).
 */
static void
scan(struct compat *c, const char *text)
{
	struct lexer		 lx = { text, 1 };
	struct token		 t;
	const cfg_opt_t		*sec = section_opt(c), *opt;
	char			*name;
	size_t			 index;
	int			 last = 1, r;

	if (sec == NULL)
		return;		/* maild.conf has its account sections */
	for (;; last = t.endline) {
		if (scan_lex(c, &lx, &t) == -1)
			return;
		if (t.type == TOK_EOF) {
			if (c->cur != NULL)
				scan_error(c, NULL, last, "missing '}' for %s "
				    "\"%s\" opened at line %d", sec->name,
				    c->cur->title, c->cur->line);
			return;
		}
		if (t.type == TOK_RBRACE && c->cur != NULL) {
			c->cur = NULL;
			continue;
		}
		if (t.type == TOK_RBRACE) {
			scan_error(c, NULL, t.line, "unexpected '}': no %s "
			    "block is open here", sec->name);
			return;
		}
		if (t.type != TOK_STR)
			return;

		name = token_text(&t);
		opt = NULL;
		if (strcmp(name, sec->name) == 0) {
			if (c->cur != NULL)
				scan_error(c, NULL, t.line, "missing '}' for "
				    "%s \"%s\" opened at line %d", sec->name,
				    c->cur->title, c->cur->line);
			else if (scan_section(c, &lx, sec, t.line) == 0)
				c->cur = &c->secs[c->nsecs - 1];
			free(name);
			if (c->cur == NULL || c->scan_error != NULL)
				return;
			continue;
		}
		if ((opt = find_opt(c->cur != NULL ? sec->subopts : c->opts,
		    name, &index)) == NULL || opt->type == CFGT_SEC) {
			scan_unknown(c, name, t.line, c->cur != NULL);
			free(name);
			return;
		}
		free(name);
		r = scan_option_line(c, c->cur != NULL ? c->cur->lines :
		    c->lines, index, opt, t.line);
		lex(&lx, &t);
		if (r == -1 || (t.type != TOK_EQUAL && t.type != TOK_APPEND))
			return;
		if (scan_value(c, &lx, opt) == -1)
			return;
		t.endline = lx.line;
	}
}

/* ---------------------------------------------------------------------- */
/* The parse */

/* libconfuse's messages: keep the first (later ones are its echoes). */
static void
compat_error_cb(cfg_t *cfg, const char *fmt, va_list ap)
{
	char	msg[COMPAT_MSG_MAX];

	if (parsing == NULL || parsing->lib_error != NULL)
		return;
	vsnprintf(msg, sizeof msg, fmt, ap);
	if (cfg->title != NULL)
		xasprintf(&parsing->lib_error, "%s \"%s\": %s", cfg->name,
		    cfg->title, msg);
	else
		parsing->lib_error = xstrdup(msg);
	parsing->lib_line = cfg->line;
}

/*
 * Parse text (which loses its comments) into cfg, whose top-level options
 * are opts.  Returns what is needed for compat_line(); on a mistake,
 * *error is "file:line: message".
 */
struct compat *
compat_parse(cfg_t *cfg, const cfg_opt_t *opts, const char *file, char *text,
    compat_value_cb value_cb, char **error)
{
	struct compat	*c;
	int		 r;

	*error = NULL;
	c = xcalloc(1, sizeof *c);
	c->file = file;
	c->opts = opts;
	c->value_cb = value_cb;
	c->lines = xcalloc(count_opts(opts) + 1, sizeof *c->lines);

	strip_comments(text);
	scan(c, text);

	parsing = c;
	cfg_set_error_function(cfg, compat_error_cb);
	r = cfg_parse_buf(cfg, text);
	parsing = NULL;

	if (c->scan_error != NULL && (c->lib_error == NULL ||
	    c->scan_line <= c->lib_line))
		xasprintf(error, "%s:%d: %s", file, c->scan_line,
		    c->scan_error);
	else if (c->lib_error != NULL)
		xasprintf(error, "%s:%d: %s", file, c->lib_line, c->lib_error);
	else if (r != CFG_SUCCESS)
		xasprintf(error, "%s: parse error", file);
	return (c);
}

/*
 * The line where opt was set in section sec (-1: outside sections), or
 * 0 if it is not known (not set, or after a mistake).
 */
int
compat_line(const struct compat *c, int sec, const char *opt)
{
	const cfg_opt_t	*table = c->opts, *s;
	size_t		 index;

	if (sec >= 0) {
		if ((size_t)sec >= c->nsecs || (s = section_opt(c)) == NULL)
			return (0);
		table = s->subopts;
	}
	if (find_opt(table, opt, &index) == NULL)
		return (0);
	return (sec >= 0 ? c->secs[sec].lines[index] : c->lines[index]);
}

/* The line of the sec'th section's name, or 0. */
int
compat_section_line(const struct compat *c, int sec)
{
	if (sec < 0 || (size_t)sec >= c->nsecs)
		return (0);
	return (c->secs[sec].line);
}

void
compat_free(struct compat *c)
{
	size_t	i;

	if (c == NULL)
		return;
	for (i = 0; i < c->nsecs; i++) {
		free(c->secs[i].title);
		free(c->secs[i].lines);
	}
	free(c->secs);
	free(c->lines);
	free(c->scan_error);
	free(c->lib_error);
	free(c);
}
