/*
 * test_parse.c: unit tests for src/parse.c, the parsers of what a POP3
 * server sends: status lines, response codes, UIDL/LIST/CAPA lines and the
 * streaming multi-line body decoder.
 *
 * Lines are passed with explicit lengths, usually inside larger buffers,
 * so that a parser reading past its length shows up as a wrong result.
 */

#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "maild.h"
#include "tap.h"

/* A string literal and its length, without the NUL. */
#define S(lit)	(lit), (sizeof(lit) - 1)

/* ---------------------------------------------------------------------- */
/* parse_status */

static void
check_status(const char *line, size_t len, enum reply_status want,
    const char *wanttext, size_t wantlen, const char *what)
{
	const char		*text = NULL;
	size_t			 textlen = 12345;
	enum reply_status	 st;

	st = parse_status(line, len, &text, &textlen);
	if (!is_int(st, want, tap_fmt("parse_status %s: status", what)))
		return;
	if (want == REPLY_BAD)
		return;
	ok(text >= line && text <= line + len,
	    tap_fmt("parse_status %s: text points into the line", what));
	if (text >= line && text <= line + len)
		is_mem(text, textlen, wanttext, wantlen,
		    tap_fmt("parse_status %s: text", what));
}

static void
test_status(void)
{
	char	buf[64];

	check_status(S("+OK"), REPLY_OK, S(""), "+OK alone");
	check_status(S("+OK "), REPLY_OK, S(""), "+OK and a space");
	check_status(S("+OK hello world"), REPLY_OK, S("hello world"),
	    "+OK with text");
	check_status(S("+OK  two spaces"), REPLY_OK, S(" two spaces"),
	    "+OK eats only one space");
	check_status(S("-ERR"), REPLY_ERR, S(""), "-ERR alone");
	check_status(S("-ERR no such message"), REPLY_ERR,
	    S("no such message"), "-ERR with text");
	check_status(S("-ERR [IN-USE] locked"), REPLY_ERR,
	    S("[IN-USE] locked"), "-ERR with a response code");
	check_status(S("+ok fine"), REPLY_OK, S("fine"), "lower-case +ok");
	check_status(S("-Err bad"), REPLY_ERR, S("bad"), "mixed-case -Err");

	check_status(S(""), REPLY_BAD, NULL, 0, "empty line");
	check_status(S("+"), REPLY_BAD, NULL, 0, "lone +");
	check_status(S("+O"), REPLY_BAD, NULL, 0, "+O");
	check_status(S("-"), REPLY_BAD, NULL, 0, "lone -");
	check_status(S("-ER"), REPLY_BAD, NULL, 0, "-ER");
	check_status(S("OK"), REPLY_BAD, NULL, 0, "OK without +");
	check_status(S("ERR"), REPLY_BAD, NULL, 0, "ERR without -");
	check_status(S(" +OK"), REPLY_BAD, NULL, 0, "leading space");
	check_status(S("*OK"), REPLY_BAD, NULL, 0, "*OK");
	check_status(S("+NO"), REPLY_BAD, NULL, 0, "+NO");
	check_status(S("-OK"), REPLY_BAD, NULL, 0, "-OK");
	check_status(S("+ERR"), REPLY_BAD, NULL, 0, "+ERR");
	check_status(S("220 smtp.example.com ESMTP"), REPLY_BAD, NULL, 0,
	    "an SMTP greeting");
	check_status(S("\0OK"), REPLY_BAD, NULL, 0, "NUL byte");

	/* The length is respected: "+OK" cut to "+O" is not +OK. */
	memcpy(buf, "+OK", 3);
	check_status(buf, 2, REPLY_BAD, NULL, 0, "+OK cut to 2 bytes");
	memcpy(buf, "-ERRx", 5);
	check_status(buf, 3, REPLY_BAD, NULL, 0, "-ERR cut to 3 bytes");
	memcpy(buf, "+OK hello", 9);
	check_status(buf, 3, REPLY_OK, S(""), "+OK hello cut to 3 bytes");
	check_status(buf, 6, REPLY_OK, S("he"), "+OK hello cut to 6 bytes");
}

/* ---------------------------------------------------------------------- */
/* parse_resp_code */

static void
test_resp_code(void)
{
	char	buf[64];

	is_int(parse_resp_code(S("[IN-USE] mailbox locked")), RESP_IN_USE,
	    "[IN-USE]");
	is_int(parse_resp_code(S("[SYS/TEMP] try later")), RESP_SYS_TEMP,
	    "[SYS/TEMP]");
	is_int(parse_resp_code(S("[SYS/PERM] go away")), RESP_SYS_PERM,
	    "[SYS/PERM]");
	is_int(parse_resp_code(S("[AUTH] bad password")), RESP_AUTH,
	    "[AUTH]");
	is_int(parse_resp_code(S("[LOGIN-DELAY] wait")), RESP_LOGIN_DELAY,
	    "[LOGIN-DELAY]");
	is_int(parse_resp_code(S("[IN-USE]")), RESP_IN_USE,
	    "[IN-USE] with no text");
	is_int(parse_resp_code(S("[in-use] locked")), RESP_IN_USE,
	    "lower-case [in-use]");
	is_int(parse_resp_code(S("[Sys/Temp] x")), RESP_SYS_TEMP,
	    "mixed-case [Sys/Temp]");

	is_int(parse_resp_code(S("[FOO] x")), 0, "unknown code");
	is_int(parse_resp_code(S("[IN-USE locked")), 0, "unterminated [");
	is_int(parse_resp_code(S("IN-USE] locked")), 0, "no [");
	is_int(parse_resp_code(S(" [IN-USE] locked")), 0,
	    "code not at the start");
	is_int(parse_resp_code(S("[]")), 0, "empty code");
	is_int(parse_resp_code(S("[")), 0, "lone [");
	is_int(parse_resp_code(S("")), 0, "empty text");
	is_int(parse_resp_code(S("[IN-USER] x")), 0, "[IN-USER]");
	is_int(parse_resp_code(S("[IN-US] x")), 0, "[IN-US]");
	is_int(parse_resp_code(S("[SYS] x")), 0, "[SYS] alone");
	is_int(parse_resp_code(S("[SYS/TEMPX] x")), 0, "[SYS/TEMPX]");
	is_int(parse_resp_code(S("[IN-USE x] y")), 0, "[IN-USE x]");
	is_int(parse_resp_code(S("mailbox [IN-USE]")), 0,
	    "code later in the text");

	/* The ']' must be inside the given length. */
	memcpy(buf, "[IN-USE]", 8);
	is_int(parse_resp_code(buf, 7), 0, "']' beyond the length");
	is_int(parse_resp_code(buf, 8), RESP_IN_USE, "']' at the length");

	/*
	 * RFC 2449 section 8: response codes are hierarchical, "/"
	 * separating levels of detail, and clients must ignore hierarchical
	 * detail they do not know.  "[SYS/TEMP/QUOTA]" is a SYS/TEMP and
	 * "[IN-USE/LOCKED]" an IN-USE.
	 */
	is_int(parse_resp_code(S("[SYS/TEMP/QUOTA] over quota")),
	    RESP_SYS_TEMP, "[SYS/TEMP/QUOTA] is a SYS/TEMP (RFC 2449 s.8)");
	is_int(parse_resp_code(S("[IN-USE/LOCKED] busy")), RESP_IN_USE,
	    "[IN-USE/LOCKED] is an IN-USE (RFC 2449 s.8)");
	is_int(parse_resp_code(S("[AUTH/EXPIRED] x")), RESP_AUTH,
	    "[AUTH/EXPIRED] is an AUTH (RFC 2449 s.8)");
	is_int(parse_resp_code(S("[SYS/FOO] x")), 0,
	    "[SYS/FOO] is neither TEMP nor PERM");
}

/* ---------------------------------------------------------------------- */
/* parse_uidl_line */

static void
uidl_ok(const char *line, size_t len, uint32_t wantnum, const char *wantid,
    size_t wantidlen, const char *what)
{
	uint32_t	 num = 0;
	const char	*id = NULL;
	size_t		 idlen = 0;
	int		 r;

	r = parse_uidl_line(line, len, &num, &id, &idlen);
	if (!is_int(r, 0, tap_fmt("uidl %s: accepted", what)))
		return;
	is_int(num, wantnum, tap_fmt("uidl %s: number", what));
	ok(id >= line && id + idlen <= line + len,
	    tap_fmt("uidl %s: id points into the line", what));
	is_mem(id, idlen, wantid, wantidlen, tap_fmt("uidl %s: id", what));
}

static void
uidl_bad(const char *line, size_t len, const char *what)
{
	uint32_t	 num = 0;
	const char	*id = NULL;
	size_t		 idlen = 0;

	is_int(parse_uidl_line(line, len, &num, &id, &idlen), -1,
	    tap_fmt("uidl %s: rejected", what));
}

static void
test_uidl(void)
{
	char	buf[1024];

	uidl_ok(S("1 abc"), 1, S("abc"), "simple");
	uidl_ok(S("42 whqtswO00WBw418f9t5JxYwZ"), 42,
	    S("whqtswO00WBw418f9t5JxYwZ"), "RFC 1939 example");
	uidl_ok(S("1000000 x"), 1000000, S("x"), "LISTING_MAX");
	uidl_ok(S("1\tabc"), 1, S("abc"), "tab separator");
	uidl_ok(S("1   abc"), 1, S("abc"), "several spaces");
	uidl_ok(S("1 \t abc"), 1, S("abc"), "mixed white space");
	uidl_ok(S("1 abc   "), 1, S("abc"), "trailing spaces");
	uidl_ok(S("1 abc\t \t"), 1, S("abc"), "trailing tabs");
	uidl_ok(S("1 a b  c"), 1, S("a b  c"), "spaces inside the id");
	uidl_ok(S("007 abc"), 7, S("abc"), "leading zeros");
	uidl_ok(S("1 \xff\x01z"), 1, S("\xff\x01z"),
	    "bytes outside the RFC alphabet kept as they are");
	uidl_ok(S("1 a\0b"), 1, S("a\0b"), "NUL byte inside the id");
	uidl_ok(S("1 +"), 1, S("+"), "id '+'");
	uidl_ok(S("3 -1"), 3, S("-1"), "id '-1'");

	/* A 70-byte id (RFC maximum) and a much longer one come back whole. */
	memcpy(buf, "9 ", 2);
	memset(buf + 2, 'u', 70);
	uidl_ok(buf, 72, 9, buf + 2, 70, "70-byte id");
	memset(buf + 2, 'v', 500);
	uidl_ok(buf, 502, 9, buf + 2, 500, "500-byte id");

	/* The length is respected. */
	memcpy(buf, "12 abcdef", 9);
	uidl_ok(buf, 6, 12, S("abc"), "line cut short");
	uidl_bad(buf, 3, "line cut before the id");
	uidl_bad(buf, 2, "line cut after the number");

	uidl_bad(S(""), "empty line");
	uidl_bad(S("1"), "number only");
	uidl_bad(S("1 "), "empty id");
	uidl_bad(S("1 \t  "), "id of white space only");
	uidl_bad(S("1abc"), "no separator");
	uidl_bad(S("0 abc"), "message number 0");
	uidl_bad(S("00 abc"), "message number 00");
	uidl_bad(S("1000001 abc"), "number above LISTING_MAX");
	uidl_bad(S("+1 abc"), "leading +");
	uidl_bad(S("-1 abc"), "leading -");
	uidl_bad(S(" 1 abc"), "leading space");
	uidl_bad(S("abc def"), "no number");
	uidl_bad(S("99999999999999999999 abc"), "20-digit number");
	uidl_bad(S("18446744073709551617 abc"), "2^64+1 (wraps to 1)");
	uidl_bad(S("4294967297 abc"), "2^32+1 (truncates to 1)");
	uidl_bad(S("1,abc"), "comma separator");
	uidl_bad(S("1\rabc"), "CR separator");
	uidl_bad(S("0x1 abc"), "hex number");
}

/* ---------------------------------------------------------------------- */
/* parse_list_line */

static void
list_ok(const char *line, size_t len, uint32_t wantnum, uint64_t wantsize,
    const char *what)
{
	uint32_t	num = 0;
	uint64_t	size = 0;

	if (!is_int(parse_list_line(line, len, &num, &size), 0,
	    tap_fmt("list %s: accepted", what)))
		return;
	is_int(num, wantnum, tap_fmt("list %s: number", what));
	ok(size == wantsize, tap_fmt("list %s: size", what));
}

static void
list_bad(const char *line, size_t len, const char *what)
{
	uint32_t	num = 0;
	uint64_t	size = 0;

	is_int(parse_list_line(line, len, &num, &size), -1,
	    tap_fmt("list %s: rejected", what));
}

static void
test_list(void)
{
	char	buf[64];

	list_ok(S("1 120"), 1, 120, "simple");
	list_ok(S("2 0"), 2, 0, "size 0");
	list_ok(S("1000000 5"), 1000000, 5, "LISTING_MAX");
	list_ok(S("1\t120"), 1, 120, "tab separator");
	list_ok(S("1   120"), 1, 120, "several spaces");
	list_ok(S("1 120 "), 1, 120, "trailing space");
	list_ok(S("1 120\t"), 1, 120, "trailing tab");
	list_ok(S("1 120 extra info"), 1, 120,
	    "more after the size (RFC 1939 allows it)");
	list_ok(S("1 1099511627776"), 1, 1ULL << 40, "size of exactly 1 TiB");

	memcpy(buf, "3 12345", 7);
	list_ok(buf, 4, 3, 12, "line cut short");
	list_bad(buf, 2, "line cut before the size");

	list_bad(S(""), "empty line");
	list_bad(S("1"), "number only");
	list_bad(S("1 "), "no size");
	list_bad(S("15"), "no separator");
	list_bad(S("0 120"), "message number 0");
	list_bad(S("1000001 120"), "number above LISTING_MAX");
	list_bad(S("+1 120"), "leading + on the number");
	list_bad(S("-1 120"), "leading - on the number");
	list_bad(S("1 +120"), "leading + on the size");
	list_bad(S("1 -120"), "negative size");
	list_bad(S(" 1 120"), "leading space");
	list_bad(S("1 1099511627777"), "size of 1 TiB + 1");
	list_bad(S("1 99999999999999999999"), "20-digit size");
	list_bad(S("1 18446744073709551616"), "size 2^64 (wraps to 0)");
	list_bad(S("1 18446744073709551617"), "size 2^64+1 (wraps to 1)");
	list_bad(S("99999999999999999999 1"), "20-digit number");
	list_bad(S("4294967297 1"), "number 2^32+1 (truncates to 1)");
	list_bad(S("1 120x"), "garbage glued to the size");
	list_bad(S("1 0x10"), "hex size");
	list_bad(S("1x 120"), "garbage glued to the number");
	list_bad(S("1 abc"), "size not a number");
	list_bad(S("1 120\r"), "stray CR after the size");
	list_bad(S("1 12,0"), "comma in the size");
}

/* ---------------------------------------------------------------------- */
/* parse_retr_octets */

static void
octets_is(const char *text, size_t len, int want, uint64_t wantn,
    const char *what)
{
	uint64_t	n = 0;

	if (is_int(parse_retr_octets(text, len, &n), want,
	    tap_fmt("retr octets %s: %s", what, want == 0 ? "accepted" :
	    "rejected")) && want == 0)
		ok(n == wantn, tap_fmt("retr octets %s: value", what));
}

static void
test_retr_octets(void)
{
	octets_is(S("120 octets"), 0, 120, "Dovecot's form");
	octets_is(S("0 octets"), 0, 0, "empty message");
	octets_is(S("120 OCTETS"), 0, 120, "upper case");
	octets_is(S("120\toctets follow"), 0, 120, "tab, more text after");
	octets_is(S("18446744073709551615 octets"), 0, UINT64_MAX,
	    "2^64-1");
	octets_is(S("18446744073709551616 octets"), -1, 0, "2^64 (wraps)");
	octets_is(S(""), -1, 0, "empty");
	octets_is(S("message follows"), -1, 0, "no number");
	octets_is(S("120"), -1, 0, "number only");
	octets_is(S("120 bytes"), -1, 0, "another unit");
	octets_is(S("120 octet"), -1, 0, "unit cut short");
	octets_is(S("120 octetsx"), -1, 0, "garbage glued to the unit");
	octets_is(S("120octets"), -1, 0, "no space");
	octets_is(S("-120 octets"), -1, 0, "negative");
	octets_is(S(" 120 octets"), -1, 0, "leading space");
}

/* ---------------------------------------------------------------------- */
/* parse_capa_line */

static struct pop3_capa *
capa_new(void)
{
	static struct pop3_capa	capa;

	memset(&capa, 0, sizeof capa);
	return (&capa);
}

static void
test_capa(void)
{
	static const struct {
		const char	*line;
		unsigned	 flag;
	} simple[] = {
		{ "PIPELINING", CAPA_PIPELINING },
		{ "UIDL", CAPA_UIDL },
		{ "TOP", CAPA_TOP },
		{ "USER", CAPA_USER },
		{ "STLS", CAPA_STLS },
		{ "RESP-CODES", CAPA_RESP_CODES },
		{ "AUTH-RESP-CODE", CAPA_AUTH_RESP_CODE },
		{ "pipelining", CAPA_PIPELINING },
		{ "Uidl", CAPA_UIDL },
		{ "PIPELINING ", CAPA_PIPELINING },
		{ " UIDL", CAPA_UIDL },
		{ "TOP extra words", CAPA_TOP },
		{ "UIDL\t", CAPA_UIDL },
	};
	static const char *const unknown[] = {
		"X-FOO", "IMPLEMENTATION Dovecot", "EXPIRE 30", "EXPIRE NEVER",
		"UIDLX", "UID", "PIPELINIG", "PIPE LINING", "", "   ",
		"SASLX PLAIN", "LOGIN-DELAYS 5", "-UIDL", "U\x01IDL",
	};
	struct pop3_capa	*c;
	char			 buf[4096];
	size_t			 i;

	for (i = 0; i < sizeof simple / sizeof simple[0]; i++) {
		c = capa_new();
		parse_capa_line(c, simple[i].line, strlen(simple[i].line));
		is_int(c->flags, simple[i].flag,
		    tap_fmt("capa \"%s\"", simple[i].line));
	}
	for (i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
		c = capa_new();
		parse_capa_line(c, unknown[i], strlen(unknown[i]));
		ok(c->flags == 0 && c->sasl[0] == '\0' && c->login_delay == 0,
		    tap_fmt("capa \"%s\" is ignored", unknown[i]));
	}

	/* Flags accumulate over lines. */
	c = capa_new();
	parse_capa_line(c, S("UIDL"));
	parse_capa_line(c, S("X-UNKNOWN 1 2 3"));
	parse_capa_line(c, S("PIPELINING"));
	is_int(c->flags, CAPA_UIDL | CAPA_PIPELINING,
	    "capa flags accumulate, unknown lines change nothing");

	/* The length is respected. */
	c = capa_new();
	memcpy(buf, "UIDLX", 5);
	parse_capa_line(c, buf, 4);
	is_int(c->flags, CAPA_UIDL, "capa \"UIDLX\" cut to 4 bytes is UIDL");
	c = capa_new();
	parse_capa_line(c, buf, 3);
	is_int(c->flags, 0, "capa \"UIDLX\" cut to 3 bytes is nothing");
	c = capa_new();
	memcpy(buf, "UIDL\0", 5);
	parse_capa_line(c, buf, 5);
	is_int(c->flags, 0, "capa \"UIDL\\0\" (NUL inside the word) ignored");

	/* SASL */
	c = capa_new();
	parse_capa_line(c, S("SASL PLAIN LOGIN CRAM-MD5"));
	is_int(c->flags, CAPA_SASL, "SASL: flag");
	is_str(c->sasl, "PLAIN LOGIN CRAM-MD5", "SASL: mechanism list");
	c = capa_new();
	parse_capa_line(c, S("sasl\tPLAIN\tXOAUTH2"));
	is_str(c->sasl, "PLAIN XOAUTH2", "SASL: tabs become spaces");
	c = capa_new();
	parse_capa_line(c, S("SASL"));
	ok(c->flags == CAPA_SASL && c->sasl[0] == '\0',
	    "SASL without mechanisms: flag, empty list");
	c = capa_new();
	parse_capa_line(c, S("SASL   PLAIN"));
	is_str(c->sasl, "PLAIN", "SASL: leading white space dropped");
	c = capa_new();
	parse_capa_line(c, S("SASL PLAIN\x01\x1b[31m\x7f\xff\xc3\xa9X"));
	is_str(c->sasl, "PLAIN??[31m????X",
	    "SASL: control and non-ASCII bytes become '?'");
	c = capa_new();
	parse_capa_line(c, S("SASL A\0B"));
	is_mem(c->sasl, 4, "A?B", 4, "SASL: NUL byte becomes '?'");
	c = capa_new();
	memcpy(buf, "SASL ", 5);
	memset(buf + 5, 'M', 3000);
	memset(c->sasl, 'Z', sizeof c->sasl);
	parse_capa_line(c, buf, 5 + 3000);
	is_int(strnlen(c->sasl, sizeof c->sasl), sizeof c->sasl - 1,
	    "SASL: overlong list truncated and NUL-terminated");
	ok(strspn(c->sasl, "M") == sizeof c->sasl - 1,
	    "SASL: truncated list holds the first bytes");
	c = capa_new();
	memset(buf + 5, 'N', sizeof c->sasl - 1);
	parse_capa_line(c, buf, 5 + sizeof c->sasl - 1);
	is_int(strlen(c->sasl), sizeof c->sasl - 1,
	    "SASL: list of exactly sizeof - 1 bytes kept whole");
	c = capa_new();
	parse_capa_line(c, S("SASL PLAIN"));
	parse_capa_line(c, S("SASL LOGIN"));
	is_str(c->sasl, "LOGIN", "SASL: a second line replaces the list");

	/* LOGIN-DELAY */
	c = capa_new();
	parse_capa_line(c, S("LOGIN-DELAY 900"));
	ok(c->flags == CAPA_LOGIN_DELAY && c->login_delay == 900,
	    "LOGIN-DELAY 900");
	c = capa_new();
	parse_capa_line(c, S("LOGIN-DELAY 900 USER"));
	ok(c->flags == CAPA_LOGIN_DELAY && c->login_delay == 900,
	    "LOGIN-DELAY 900 USER");
	c = capa_new();
	parse_capa_line(c, S("LOGIN-DELAY\t0"));
	ok(c->flags == CAPA_LOGIN_DELAY && c->login_delay == 0,
	    "LOGIN-DELAY 0 (tab separated)");
	c = capa_new();
	parse_capa_line(c, S("LOGIN-DELAY 2592000"));
	ok(c->flags == CAPA_LOGIN_DELAY && c->login_delay == 2592000,
	    "LOGIN-DELAY of 30 days");
	{
		static const char *const bad[] = {
			"LOGIN-DELAY", "LOGIN-DELAY ", "LOGIN-DELAY x",
			"LOGIN-DELAY -5", "LOGIN-DELAY +5",
			"LOGIN-DELAY 2592001",
			"LOGIN-DELAY 99999999999999999999",
			"LOGIN-DELAY 18446744073709551617",
		};

		for (i = 0; i < sizeof bad / sizeof bad[0]; i++) {
			c = capa_new();
			c->login_delay = 77;
			parse_capa_line(c, bad[i], strlen(bad[i]));
			ok(!(c->flags & CAPA_LOGIN_DELAY) &&
			    c->login_delay == 77,
			    tap_fmt("capa \"%s\": no LOGIN-DELAY", bad[i]));
		}
	}
}

/* ---------------------------------------------------------------------- */
/* body_decode */

/*
 * The reference: decode a whole input at once, line by line, the obvious
 * way.  A line is everything up to and including '\n' (a bare LF ends a
 * line too).  A leading '.' is dropped; a line that was "." alone (before
 * CRLF or LF) is the terminator.  A CR right before the LF goes.  An
 * unfinished last line is output as far as it goes, less a trailing CR
 * (which may be half of a CRLF).
 */
static void
ref_decode(const char *in, size_t len, char *out, size_t *outlen,
    size_t *consumed, int *done)
{
	size_t		 i = 0, o = 0, lend, ll, content;
	const char	*l, *nl;
	int		 dot;

	*done = 0;
	while (i < len) {
		nl = memchr(in + i, '\n', len - i);
		lend = nl != NULL ? (size_t)(nl - in) + 1 : len;
		l = in + i;
		ll = lend - i;
		dot = 0;
		if (l[0] == '.') {
			dot = 1;
			l++;
			ll--;
		}
		if (nl != NULL) {
			content = ll - 1;
			if (content > 0 && l[content - 1] == '\r')
				content--;
			if (dot && content == 0) {
				*done = 1;
				i = lend;
				break;
			}
			memcpy(out + o, l, content);
			o += content;
			out[o++] = '\n';
		} else {
			content = ll;
			if (content > 0 && l[content - 1] == '\r')
				content--;
			memcpy(out + o, l, content);
			o += content;
		}
		i = lend;
	}
	*outlen = o;
	*consumed = i;
}

/*
 * Feed in to the decoder in chunks ending at the given cut points
 * (ascending, each <= len).  Every call gets an output buffer of exactly
 * chunk + 1 bytes (so ASan sees an overflow) and is checked against the
 * bound.  Returns 0, or -1 with a description in err.
 */
static int
run_decoder(const char *in, size_t len, const size_t *cuts, size_t ncuts,
    char *out, size_t *outlen, size_t *consumed, int *done, char *err,
    size_t errsize)
{
	struct body_decoder	 d;
	size_t			 pos = 0, o = 0, total = 0, c, n, olen, k;
	char			*buf;
	int			 was_done;

	body_decoder_init(&d);
	for (k = 0; k <= ncuts; k++) {
		size_t	end = k < ncuts ? cuts[k] : len;

		n = end - pos;
		buf = malloc(n + 1);
		memset(buf, 0x5a, n + 1);
		olen = 99999;
		was_done = d.done;
		c = body_decode(&d, in + pos, n, buf, &olen);
		if (c > n) {
			snprintf(err, errsize, "call %zu consumed %zu of %zu",
			    k, c, n);
			free(buf);
			return (-1);
		}
		if (olen > n + 1) {
			snprintf(err, errsize, "call %zu: %zu bytes out for %zu"
			    " in", k, olen, n);
			free(buf);
			return (-1);
		}
		if (was_done && (c != 0 || olen != 0)) {
			snprintf(err, errsize, "call %zu consumed %zu, made %zu "
			    "after the terminator", k, c, olen);
			free(buf);
			return (-1);
		}
		if (c < n && !d.done) {
			snprintf(err, errsize, "call %zu consumed %zu of %zu "
			    "but is not done", k, c, n);
			free(buf);
			return (-1);
		}
		memcpy(out + o, buf, olen);
		o += olen;
		total += c;
		free(buf);
		pos = end;
	}
	*outlen = o;
	*consumed = total;
	*done = d.done;
	return (0);
}

/* Compare a chunked run with the reference; quiet unless it differs. */
static int
compare_run(const char *in, size_t len, const size_t *cuts, size_t ncuts,
    char *err, size_t errsize)
{
	char	*got, *want;
	size_t	 gotlen, wantlen, gotc, wantc, i, o;
	int	 gotdone, wantdone, r = 0;

	got = malloc(len * 2 + 2);
	want = malloc(len * 2 + 2);
	ref_decode(in, len, want, &wantlen, &wantc, &wantdone);
	if (run_decoder(in, len, cuts, ncuts, got, &gotlen, &gotc, &gotdone,
	    err, errsize) == -1)
		r = -1;
	else if (gotdone != wantdone || gotc != wantc || gotlen != wantlen ||
	    memcmp(got, want, wantlen) != 0) {
		o = snprintf(err, errsize, "done %d/%d consumed %zu/%zu "
		    "out %zu/%zu bytes (got/want); cuts", gotdone, wantdone,
		    gotc, wantc, gotlen, wantlen);
		for (i = 0; i < ncuts && o < errsize; i++)
			o += snprintf(err + o, errsize - o, " %zu", cuts[i]);
		r = -1;
	}
	free(got);
	free(want);
	return (r);
}

/* All single and double splits, and byte by byte. */
static void
check_splits(const char *in, size_t len, const char *what)
{
	char	err[512];
	size_t	cuts[4096], i, j, n = 0;
	int	failed = 0;

	/* In one piece. */
	if (compare_run(in, len, NULL, 0, err, sizeof err) == -1) {
		failed = 1;
		diag("%s: whole: %s", what, err);
	}
	/* Split once at every position (0 and len give empty chunks). */
	for (i = 0; i <= len && !failed; i++) {
		cuts[0] = i;
		if (compare_run(in, len, cuts, 1, err, sizeof err) == -1) {
			failed = 1;
			diag("%s: %s", what, err);
		}
	}
	/* Split twice, for short inputs. */
	if (len <= 40) {
		for (i = 0; i <= len && !failed; i++) {
			for (j = i; j <= len && !failed; j++) {
				cuts[0] = i;
				cuts[1] = j;
				if (compare_run(in, len, cuts, 2, err,
				    sizeof err) == -1) {
					failed = 1;
					diag("%s: %s", what, err);
				}
			}
		}
	}
	/* Byte by byte. */
	if (len < sizeof cuts / sizeof cuts[0]) {
		for (i = 1; i < len; i++)
			cuts[n++] = i;
		if (!failed && compare_run(in, len, cuts, n, err,
		    sizeof err) == -1) {
			failed = 1;
			diag("%s: byte by byte: %s", what, err);
		}
	}
	ok(!failed, tap_fmt("body_decode %s: every split matches the "
	    "reference", what));
}

/* Decode in one go; check the output and what is left over. */
static void
check_body(const char *in, size_t len, const char *want, size_t wantlen,
    size_t wantc, int wantdone, const char *what)
{
	struct body_decoder	 d;
	char			*out = malloc(len + 1);
	size_t			 olen = 0, c;

	body_decoder_init(&d);
	c = body_decode(&d, in, len, out, &olen);
	is_mem(out, olen, want, wantlen, tap_fmt("body_decode %s: output",
	    what));
	is_int(c, wantc, tap_fmt("body_decode %s: consumed", what));
	is_int(d.done, wantdone, tap_fmt("body_decode %s: done", what));
	free(out);
	check_splits(in, len, what);
}

/* A small deterministic PRNG for the random cases. */
static uint64_t	rng_state = 0x9e3779b97f4a7c15ULL;

static uint32_t
rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return ((uint32_t)(rng_state >> 16));
}

static void
test_body(void)
{
	struct body_decoder	 d;
	char			 err[512], out[16], *big, *bigout;
	size_t			 olen, c, i, n, cuts[64], ncuts, fails;
	static const char	 alphabet[] = ".\r\na\0";

	/* The cases from the brief, with their exact results. */
	check_body(S(".\r\n"), S(""), 3, 1, "empty body");
	check_body(S(".\n"), S(""), 2, 1, "empty body, bare LF");
	check_body(S("..\r\n.\r\n"), S(".\n"), 7, 1,
	    "a line that is a dot after unstuffing");
	check_body(S("hello\r\n.\r\n"), S("hello\n"), 10, 1, "one line");
	check_body(S(".foo\r\n.\r\n"), S("foo\n"), 9, 1,
	    ".foo (a stuffed line whose dot was not doubled)");
	check_body(S("..foo\r\n.\r\n"), S(".foo\n"), 10, 1, "..foo");
	check_body(S("...\r\n.\r\n"), S("..\n"), 8, 1, "...");
	check_body(S("a\nb\n.\n"), S("a\nb\n"), 6, 1, "bare LF lines");
	check_body(S("a\rb\r\n.\r\n"), S("a\rb\n"), 8, 1, "bare CR kept");
	check_body(S("a\r\r\n.\r\n"), S("a\r\n"), 7, 1,
	    "\\r\\r\\n: only the CR of the CRLF goes");
	check_body(S("\r\n\r\n.\r\n"), S("\n\n"), 7, 1, "empty lines");
	check_body(S("\r\r\r\n.\r\n"), S("\r\r\n"), 7, 1, "CRs");
	check_body(S(".\rx\r\n.\r\n"), S("\rx\n"), 8, 1,
	    "\".\\rx\": not the terminator, CR kept");
	check_body(S(".\r.\r\n.\r\n"), S("\r.\n"), 8, 1,
	    "\".\\r.\": not the terminator");
	check_body(S(".\r\r\n.\r\n"), S("\r\n"), 7, 1,
	    "\".\\r\\r\\n\": not the terminator");
	check_body(S(". \r\n.\r\n"), S(" \n"), 7, 1,
	    "\". \": not the terminator");
	check_body(S("a\0b\r\n\0\r\n.\r\n"), S("a\0b\n\0\n"), 11, 1,
	    "NUL bytes");
	check_body(S("x.\r\n.\r\n"), S("x.\n"), 7, 1, "dot not first");
	check_body(S("a\r\n.\r\nNEXT"), S("a\n"), 6, 1,
	    "data after the terminator is not consumed");
	check_body(S("a\r\n.\r\n+OK 2\r\n.\r\n"), S("a\n"), 6, 1,
	    "a second response after the terminator");
	check_body(S(".\r\n.\r\n"), S(""), 3, 1,
	    "two terminators: stops at the first");
	check_body(S("abc"), S("abc"), 3, 0, "no terminator yet");
	check_body(S("abc\r"), S("abc"), 4, 0, "CR held back at the end");
	check_body(S("abc\r\n."), S("abc\n"), 6, 0, "dot held back at the end");
	check_body(S("abc\r\n.\r"), S("abc\n"), 7, 0,
	    "\".\\r\" held back at the end");
	check_body(S(""), S(""), 0, 0, "no input");
	check_body(S("a\r\n..\r\n.\r\n"), S("a\n.\n"), 10, 1,
	    "a dot line in the middle");
	check_body(S("\n.\n"), S("\n"), 3, 1, "LF then terminator");
	check_body(S("a\n.\r\n"), S("a\n"), 5, 1, "LF line then CRLF terminator");

	/* A CR at the end of one chunk, LF at the start of the next. */
	body_decoder_init(&d);
	c = body_decode(&d, S("ab\r"), out, &olen);
	ok(c == 3 && olen == 2 && memcmp(out, "ab", 2) == 0,
	    "body_decode: CR at a chunk end is held back");
	c = body_decode(&d, S("\ncd"), out, &olen);
	is_mem(out, olen, "\ncd", 3, "body_decode: ... and becomes LF with "
	    "the next chunk's LF");
	/* ... and comes out as a CR when no LF follows: out = in + 1. */
	body_decoder_init(&d);
	c = body_decode(&d, S("ab\r"), out, &olen);
	c = body_decode(&d, S("x"), out, &olen);
	ok(c == 1 && olen == 2 && memcmp(out, "\rx", 2) == 0,
	    "body_decode: held CR comes out with the next byte (2 out of 1 "
	    "in: the documented bound)");
	/* The same after ".\r" held back at the start of a line. */
	body_decoder_init(&d);
	c = body_decode(&d, S("a\n.\r"), out, &olen);
	ok(c == 4 && olen == 2 && memcmp(out, "a\n", 2) == 0,
	    "body_decode: \".\\r\" held back");
	c = body_decode(&d, S("y"), out, &olen);
	ok(c == 1 && olen == 2 && memcmp(out, "\ry", 2) == 0 && !d.done,
	    "body_decode: held \".\\r\" then 'y' gives \"\\ry\"");
	c = body_decode(&d, S("\r\n.\r\n"), out, &olen);
	ok(c == 5 && olen == 1 && out[0] == '\n' && d.done,
	    "body_decode: ... and the body ends normally");

	/* Zero-length calls change nothing. */
	body_decoder_init(&d);
	c = body_decode(&d, S("a\r"), out, &olen);
	c = body_decode(&d, "", 0, out, &olen);
	ok(c == 0 && olen == 0, "body_decode: empty call, nothing out");
	c = body_decode(&d, S("\n.\r\n"), out, &olen);
	ok(c == 4 && olen == 1 && out[0] == '\n' && d.done,
	    "body_decode: state survives an empty call");

	/* After the terminator nothing more is consumed or produced. */
	body_decoder_init(&d);
	c = body_decode(&d, S(".\r\n"), out, &olen);
	c = body_decode(&d, S("more\r\n"), out, &olen);
	ok(c == 0 && olen == 0 && d.done,
	    "body_decode: nothing consumed once done");

	/* body_decoder_init resets everything. */
	body_decoder_init(&d);
	c = body_decode(&d, S("x\r\n.\r"), out, &olen);
	body_decoder_init(&d);
	c = body_decode(&d, S("\n"), out, &olen);
	ok(c == 1 && olen == 1 && out[0] == '\n' && !d.done,
	    "body_decoder_init: forgets a held \".\\r\"");

	/* Very long lines: 1 MB without a line end, in odd chunks. */
	n = 1 << 20;
	big = malloc(n + 16);
	bigout = malloc(n + 16);
	for (i = 0; i < n; i++)
		big[i] = (char)('a' + i % 26);
	memcpy(big + n, "\r\n.\r\nZZ", 7);
	{
		size_t	pos = 0, o = 0, step = 4093, total = 0;
		int	good = 1;

		body_decoder_init(&d);
		while (pos < n + 7) {
			size_t	m = n + 7 - pos < step ? n + 7 - pos : step;

			c = body_decode(&d, big + pos, m, bigout + o, &olen);
			if (olen > m + 1)
				good = 0;
			o += olen;
			total += c;
			pos += m;
		}
		ok(good && d.done && total == n + 5 && o == n + 1 &&
		    memcmp(bigout, big, n) == 0 && bigout[n] == '\n',
		    "body_decode: 1 MB line in 4093-byte chunks");
	}
	check_splits(big + n - 200, 207, "end of a long line, every split");
	free(big);
	free(bigout);

	/* Many lines of every length 0..300, stuffed and not. */
	{
		size_t	len = 0;

		big = malloc(300 * 310 + 16);
		for (i = 0; i < 300; i++) {
			if (i % 3 == 0)
				big[len++] = '.';
			memset(big + len, i % 7 == 0 ? '.' : 'q', i);
			len += i;
			if (i % 5 == 0)
				big[len++] = '\n';
			else {
				big[len++] = '\r';
				big[len++] = '\n';
			}
		}
		memcpy(big + len, ".\r\n", 3);
		len += 3;
		if (compare_run(big, len, NULL, 0, err, sizeof err) == -1)
			diag("%s", err);
		ok(compare_run(big, len, NULL, 0, err, sizeof err) == 0,
		    "body_decode: 300 lines of growing length");
		ncuts = 0;
		for (i = 1; i < len && ncuts < 64; i += 1 + len / 64)
			cuts[ncuts++] = i;
		ok(compare_run(big, len, cuts, ncuts, err, sizeof err) == 0,
		    "body_decode: 300 lines, in 64 pieces");
		free(big);
	}

	/*
	 * Random inputs over the troublesome bytes, random chunking,
	 * compared with the reference.
	 */
	fails = 0;
	for (i = 0; i < 20000; i++) {
		char	in[48];
		size_t	len = rng() % sizeof in, k;

		for (k = 0; k < len; k++)
			in[k] = alphabet[rng() % (sizeof alphabet - 1)];
		ncuts = 0;
		for (k = 1; k < len; k++) {
			if (rng() % 4 == 0)
				cuts[ncuts++] = k;
		}
		if (compare_run(in, len, cuts, ncuts, err, sizeof err) == -1) {
			if (fails++ < 3) {
				diag("random case %zu: %s", i, err);
				tap_dump("input: ", in, len);
			}
		}
	}
	is_int(fails, 0, "body_decode: 20000 random inputs and chunkings "
	    "match the reference");

	/* All inputs of up to 7 bytes over the alphabet, every split. */
	{
		size_t	len, total = 0, idx, k;
		char	in[8];

		fails = 0;
		for (len = 0; len <= 7; len++) {
			size_t	count = 1;

			for (k = 0; k < len; k++)
				count *= sizeof alphabet - 1;
			for (idx = 0; idx < count; idx++) {
				size_t	v = idx, cut;

				for (k = 0; k < len; k++) {
					in[k] = alphabet[v %
					    (sizeof alphabet - 1)];
					v /= sizeof alphabet - 1;
				}
				for (cut = 0; cut <= len; cut++) {
					total++;
					if (compare_run(in, len, &cut, 1, err,
					    sizeof err) == -1 && fails++ < 3) {
						diag("%s", err);
						tap_dump("input: ", in, len);
					}
				}
				for (k = 1; k < len; k++)
					cuts[k - 1] = k;
				if (len > 1 && compare_run(in, len, cuts,
				    len - 1, err, sizeof err) == -1 &&
				    fails++ < 3) {
					diag("bytewise: %s", err);
					tap_dump("input: ", in, len);
				}
			}
		}
		is_int(fails, 0, tap_fmt("body_decode: all %zu inputs of up to "
		    "7 bytes over \".\\r\\na\\0\", split everywhere", total));
	}
}

/* The reference decoder is checked too, or a shared mistake would hide. */
static void
test_reference(void)
{
	char	out[64];
	size_t	olen, c;
	int	done;

	ref_decode(S("..a\r\nb\n.\r\nX"), out, &olen, &c, &done);
	ok(done && c == 10 && olen == 5 && memcmp(out, ".a\nb\n", 5) == 0,
	    "reference decoder sanity");
}

/* lmtp = "host:port" split for a connection (lmtp.c, probe.c). */
static void
test_lmtp_host_port(void)
{
	static const struct {
		const char	*in, *host;
		int		 port;
	} good[] = {
		{ "127.0.0.1:24", "127.0.0.1", 24 },
		{ "[::1]:24", "::1", 24 },
		{ "lmtp.example.org:65535", "lmtp.example.org", 65535 },
		{ "h:1", "h", 1 },
	};
	static const char *const bad[] = { "host", "host:", ":24", "host:0",
	    "host:65536", "host:24x", "host:-1", "[]:24", "[::1]", "" };
	char	host[32];
	size_t	i;
	int	port;

	for (i = 0; i < sizeof good / sizeof good[0]; i++) {
		port = 0;
		if (!is_int(lmtp_host_port(good[i].in, host, sizeof host,
		    &port), 0, tap_fmt("lmtp_host_port %s", good[i].in)))
			continue;
		is_str(host, good[i].host, tap_fmt("lmtp_host_port %s: host",
		    good[i].in));
		is_int(port, good[i].port, tap_fmt("lmtp_host_port %s: port",
		    good[i].in));
	}
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
		is_int(lmtp_host_port(bad[i], host, sizeof host, &port), -1,
		    tap_fmt("lmtp_host_port '%s' refused", bad[i]));
	is_int(lmtp_host_port("a-host-name-longer-than-the-buffer:24", host, sizeof host,
	    &port), -1, "lmtp_host_port: a host longer than the buffer");
}

/* One line of an LMTP reply (lmtp.c, probe.c). */
static void
test_lmtp_reply_code(void)
{
	static const struct {
		const char	*in;
		int		 code, more;
	} good[] = {
		{ "250 2.1.5 OK", 250, 0 },
		{ "250-PIPELINING", 250, 1 },
		{ "220", 220, 0 },
		{ "452 4.2.2 Mailbox full", 452, 0 },
		{ "599 x", 599, 0 },
	};
	static const char *const bad[] = { "", "25", "199 x", "600 x",
	    "+OK ready", "* OK IMAP", "250x", "2a0 x", "-50 x", " 250" };
	size_t	i;
	int	more;

	for (i = 0; i < sizeof good / sizeof good[0]; i++) {
		more = -1;
		is_int(lmtp_reply_code(good[i].in, strlen(good[i].in), &more),
		    good[i].code, tap_fmt("lmtp_reply_code '%s'", good[i].in));
		is_int(more, good[i].more, tap_fmt("lmtp_reply_code '%s': "
		    "more", good[i].in));
	}
	for (i = 0; i < sizeof bad / sizeof bad[0]; i++)
		is_int(lmtp_reply_code(bad[i], strlen(bad[i]), &more), -1,
		    tap_fmt("lmtp_reply_code '%s' refused", bad[i]));
}

int
main(void)
{
	test_status();
	test_resp_code();
	test_uidl();
	test_list();
	test_retr_octets();
	test_capa();
	test_reference();
	test_body();
	test_lmtp_host_port();
	test_lmtp_reply_code();
	return (done());
}
