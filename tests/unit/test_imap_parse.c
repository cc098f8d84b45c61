/*
 * test_imap_parse.c: unit tests for src/imap_parse.c, the pure parsers of
 * what an IMAP server sends (imap_parse, imap_literal_marker,
 * imap_literal_is_body, imap_fetch_size_before, imap_fetch_att,
 * imap_node_number, imap_node_string, imap_has_word, imap_number) and its
 * encoders (imap_quote, imap_utf7_encode, imap_maildir_folder).
 *
 * Every response is parsed from a heap copy of exactly its length, so
 * that a parser reading past the end shows up under ASan and valgrind;
 * after every successful parse the node tree is checked (every node's
 * bytes inside the response, child/next indexes valid, no cycles, each
 * node reached once).  A parse is shown as a compact rendering: atoms as
 * they are, numbers as #n, quoted strings "..." (escapes kept), literals
 * {n}bytes, NIL, lists (...).
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

#define NODES	64

static struct imap_node	 nodes[NODES];
static struct imap_resp	 resp;
static char		*copy;		/* the response being looked at */
static size_t		 copylen;
static char		 tree[4096];	/* its rendering */

/* Is the tree of r sound?  NULL if so, else what is wrong. */
static const char *
tree_problem(const struct imap_resp *r, const char *buf, size_t len)
{
	static unsigned char	 seen[NODES];
	size_t			 stack[NODES + 1], sp = 0, i, k;
	const struct imap_node	*n;

	if (r->nnodes > NODES)
		return ("more nodes than the array holds");
	memset(seen, 0, sizeof seen);
	if (r->data == IMAP_NONE)
		return (r->nnodes == 0 ? NULL : "nodes but no data");
	if (r->data >= r->nnodes)
		return ("data index out of range");
	stack[sp++] = r->data;
	while (sp > 0) {
		for (i = stack[--sp]; i != IMAP_NONE; i = n->next) {
			if (i >= r->nnodes)
				return ("next/child index out of range");
			if (seen[i])
				return ("a node reached twice (cycle)");
			seen[i] = 1;
			n = &r->nodes[i];
			if (n->p < buf || n->p > buf + len ||
			    n->len > (size_t)(buf + len - n->p))
				return ("node bytes outside the response");
			if (n->type == IMAP_LIST) {
				if (n->len < 2 || n->p[0] != '(' ||
				    n->p[n->len - 1] != ')')
					return ("a list not spanning (...)");
				if (n->child != IMAP_NONE) {
					if (sp >= NODES)
						return ("stack overflow");
					stack[sp++] = n->child;
				}
			} else if (n->child != IMAP_NONE)
				return ("a child under a non-list");
			if (n->type == IMAP_NUMBER) {
				uint64_t v;

				if (imap_number(n->p, n->len, UINT64_MAX, &v) ==
				    -1 || v != n->num)
					return ("a number node that is not one");
			}
		}
	}
	for (k = 0; k < r->nnodes; k++) {
		if (!seen[k])
			return ("a node not in the tree");
	}
	return (NULL);
}

static size_t	render_at(const struct imap_resp *, size_t, char *, size_t,
		    size_t);

/* Render the siblings from i on, space-separated. */
static size_t
render_at(const struct imap_resp *r, size_t i, char *out, size_t size,
    size_t o)
{
	const struct imap_node	*n;
	int			 first = 1;

	for (; i != IMAP_NONE && i < r->nnodes; i = n->next) {
		n = &r->nodes[i];
		if (!first && o + 1 < size)
			out[o++] = ' ';
		first = 0;
		switch (n->type) {
		case IMAP_ATOM:
			o += snprintf(out + o, size - o, "%.*s", (int)n->len,
			    n->p);
			break;
		case IMAP_NUMBER:
			o += snprintf(out + o, size - o, "#%llu",
			    (unsigned long long)n->num);
			break;
		case IMAP_NIL:
			o += snprintf(out + o, size - o, "NIL");
			break;
		case IMAP_STRING:
			if (n->literal)
				o += snprintf(out + o, size - o, "{%zu}", n->len);
			else
				o += snprintf(out + o, size - o, "\"");
			if (o + n->len < size) {
				memcpy(out + o, n->p, n->len);
				o += n->len;
			}
			if (!n->literal && o + 1 < size)
				out[o++] = '"';
			break;
		case IMAP_LIST:
			if (o + 1 < size)
				out[o++] = '(';
			o = render_at(r, n->child, out, size, o);
			if (o + 1 < size)
				out[o++] = ')';
			break;
		}
		if (o >= size)
			o = size - 1;
	}
	out[o] = '\0';
	return (o);
}

/* Parse s (len bytes, copied to the heap); renders the data into tree. */
static int
parse(const char *s, size_t len)
{
	const char	*why;
	int		 rc;

	free(copy);
	copy = malloc(len ? len : 1);
	if (copy == NULL)
		abort();
	memcpy(copy, s, len);
	copylen = len;
	memset(nodes, 0xa5, sizeof nodes);
	rc = imap_parse(copy, len, nodes, NODES, &resp);
	tree[0] = '\0';
	if (rc == 0) {
		if ((why = tree_problem(&resp, copy, len)) != NULL) {
			ok(0, tap_fmt("tree of a parse: %s", why));
			tap_dump("response: ", s, len);
		}
		render_at(&resp, resp.data, tree, sizeof tree, 0);
	}
	return (rc);
}

/* Must be refused. */
static void
bad(const char *s, size_t len, const char *what)
{
	if (!is_int(parse(s, len), -1, tap_fmt("refused: %s", what)))
		tap_dump("tree: ", tree, strlen(tree));
}
#define BAD(lit, what)	bad(S(lit), (what))

/* Must parse, as data of this name with this rendering. */
static void
data(const char *s, size_t len, int kind, long num, const char *name,
    const char *want, const char *what)
{
	if (!is_int(parse(s, len), 0, tap_fmt("parses: %s", what)))
		return;
	is_int(resp.kind, kind, tap_fmt("%s: kind", what));
	is_int(resp.cond, IMAP_COND_NONE, tap_fmt("%s: not a status", what));
	if (num >= 0) {
		is_int(resp.has_num, 1, tap_fmt("%s: has a number", what));
		is_int(resp.num, num, tap_fmt("%s: number", what));
	} else
		is_int(resp.has_num, 0, tap_fmt("%s: no number", what));
	is_str(resp.name, name, tap_fmt("%s: name", what));
	is_str(tree, want, tap_fmt("%s: values", what));
}
#define DATA(lit, num, name, want, what) \
	data(S(lit), IMAP_UNTAGGED, (num), (name), (want), (what))

/* Must parse as a status response. */
static void
status(const char *s, size_t len, int kind, const char *tag, int cond,
    const char *code, const char *args, const char *text, const char *what)
{
	char	buf[512];

	if (!is_int(parse(s, len), 0, tap_fmt("parses: %s", what)))
		return;
	is_int(resp.kind, kind, tap_fmt("%s: kind", what));
	is_int(resp.cond, cond, tap_fmt("%s: condition", what));
	if (tag != NULL)
		is_mem(resp.tag, resp.taglen, tag, strlen(tag),
		    tap_fmt("%s: tag", what));
	if (code == NULL)
		ok(resp.code == NULL, tap_fmt("%s: no code", what));
	else if (ok(resp.code != NULL, tap_fmt("%s: a code", what))) {
		is_mem(resp.code, resp.codelen, code, strlen(code),
		    tap_fmt("%s: code", what));
		ok(resp.code >= copy && resp.code + resp.codelen <=
		    copy + copylen, tap_fmt("%s: code inside", what));
	}
	if (args == NULL)
		ok(resp.codeargs == NULL, tap_fmt("%s: no code args", what));
	else if (ok(resp.codeargs != NULL, tap_fmt("%s: code args", what))) {
		is_mem(resp.codeargs, resp.codeargslen, args, strlen(args),
		    tap_fmt("%s: code args", what));
		ok(resp.codeargs >= copy && resp.codeargs +
		    resp.codeargslen <= copy + copylen,
		    tap_fmt("%s: code args inside", what));
	}
	if (resp.text != NULL && resp.textlen < sizeof buf) {
		memcpy(buf, resp.text, resp.textlen);
		buf[resp.textlen] = '\0';
		is_str(buf, text, tap_fmt("%s: text", what));
		ok(resp.text >= copy && resp.text + resp.textlen <= copy +
		    copylen, tap_fmt("%s: text inside", what));
	} else
		ok(0, tap_fmt("%s: text", what));
}

/* ---------------------------------------------------------------------- */

static void
test_number(void)
{
	uint64_t	v = 77;

	is_int(imap_number(S("0"), 10, &v), 0, "imap_number 0");
	is_int(v, 0, "imap_number 0: value");
	is_int(imap_number(S("4294967295"), UINT32_MAX, &v), 0,
	    "imap_number 2^32-1 within UINT32_MAX");
	ok(v == UINT32_MAX, "imap_number 2^32-1: value");
	is_int(imap_number(S("4294967296"), UINT32_MAX, &v), -1,
	    "imap_number 2^32 over UINT32_MAX");
	is_int(imap_number(S("18446744073709551615"), UINT64_MAX, &v), 0,
	    "imap_number 2^64-1");
	ok(v == UINT64_MAX, "imap_number 2^64-1: value");
	is_int(imap_number(S("18446744073709551616"), UINT64_MAX, &v), -1,
	    "imap_number 2^64 overflows");
	is_int(imap_number(S("99999999999999999999"), UINT64_MAX, &v), -1,
	    "imap_number 20 nines overflow");
	is_int(imap_number(S("000000000000000000001"), UINT64_MAX, &v), -1,
	    "imap_number: 21 digits are too many");
	is_int(imap_number(S("00000000000000000042"), UINT64_MAX, &v), 0,
	    "imap_number: 20 digits with leading zeros");
	is_int(v, 42, "imap_number: leading zeros value");
	is_int(imap_number(S("5"), 3, &v), -1,
	    "imap_number: a digit above a small max");
	is_int(imap_number(S("3"), 3, &v), 0, "imap_number: max itself");
	is_int(imap_number(S("10"), 9, &v), -1, "imap_number: 10 over 9");
	is_int(imap_number(S("0"), 0, &v), 0, "imap_number: 0 within 0");
	is_int(imap_number(S("1"), 0, &v), -1, "imap_number: 1 over 0");
	is_int(imap_number(S(""), 10, &v), -1, "imap_number: empty");
	is_int(imap_number(S("-1"), 10, &v), -1, "imap_number: minus");
	is_int(imap_number(S("+1"), 10, &v), -1, "imap_number: plus");
	is_int(imap_number(S(" 1"), 10, &v), -1, "imap_number: space");
	is_int(imap_number(S("1a"), 10, &v), -1, "imap_number: letter");
	is_int(imap_number("12", 1, 10, &v), 0,
	    "imap_number reads only its length");
	is_int(v, 1, "imap_number: length respected");
}

static void
test_status(void)
{
	status(S("* OK IMAP4rev1 Service Ready\r\n"), IMAP_UNTAGGED, NULL,
	    IMAP_COND_OK, NULL, NULL, "IMAP4rev1 Service Ready", "greeting");
	status(S("* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR "
	    "AUTH=PLAIN] Dovecot ready.\r\n"), IMAP_UNTAGGED, NULL,
	    IMAP_COND_OK, "CAPABILITY", "IMAP4rev1 LITERAL+ SASL-IR "
	    "AUTH=PLAIN", "Dovecot ready.", "greeting with [CAPABILITY]");
	status(S("* PREAUTH [CAPABILITY IMAP4rev1] Logged in as alice\r\n"),
	    IMAP_UNTAGGED, NULL, IMAP_COND_PREAUTH, "CAPABILITY",
	    "IMAP4rev1", "Logged in as alice", "PREAUTH");
	status(S("* BYE Autologout; idle for too long\r\n"), IMAP_UNTAGGED,
	    NULL, IMAP_COND_BYE, NULL, NULL, "Autologout; idle for too long",
	    "BYE");
	status(S("* OK [UIDVALIDITY 3857529045] UIDs valid\r\n"),
	    IMAP_UNTAGGED, NULL, IMAP_COND_OK, "UIDVALIDITY", "3857529045",
	    "UIDs valid", "[UIDVALIDITY n]");
	status(S("* OK [UIDNEXT 4392] Predicted next UID\r\n"),
	    IMAP_UNTAGGED, NULL, IMAP_COND_OK, "UIDNEXT", "4392",
	    "Predicted next UID", "[UIDNEXT n]");
	status(S("* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Limited\r\n"),
	    IMAP_UNTAGGED, NULL, IMAP_COND_OK, "PERMANENTFLAGS",
	    "(\\Deleted \\Seen \\*)", "Limited", "[PERMANENTFLAGS (...)]");
	status(S("* OK [ALERT] System shutdown in 10 minutes\r\n"),
	    IMAP_UNTAGGED, NULL, IMAP_COND_OK, "ALERT", NULL,
	    "System shutdown in 10 minutes", "[ALERT]");
	status(S("* NO [ALERT] Mailbox is over quota\r\n"), IMAP_UNTAGGED,
	    NULL, IMAP_COND_NO, "ALERT", NULL, "Mailbox is over quota",
	    "untagged NO [ALERT]");
	status(S("a001 OK [READ-WRITE] SELECT completed\r\n"), IMAP_TAGGED,
	    "a001", IMAP_COND_OK, "READ-WRITE", NULL, "SELECT completed",
	    "tagged OK [READ-WRITE]");
	status(S("A12 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"),
	    IMAP_TAGGED, "A12", IMAP_COND_NO, "AUTHENTICATIONFAILED", NULL,
	    "Authentication failed.", "[AUTHENTICATIONFAILED]");
	status(S("A3 NO [UNAVAILABLE] Temporary backend failure\r\n"),
	    IMAP_TAGGED, "A3", IMAP_COND_NO, "UNAVAILABLE", NULL,
	    "Temporary backend failure", "[UNAVAILABLE]");
	status(S("A4 BAD Error in IMAP command: Unknown command\r\n"),
	    IMAP_TAGGED, "A4", IMAP_COND_BAD, NULL, NULL,
	    "Error in IMAP command: Unknown command", "tagged BAD");
	status(S("A5 OK [COPYUID 38505 304,319:320 3956:3958] Done\r\n"),
	    IMAP_TAGGED, "A5", IMAP_COND_OK, "COPYUID",
	    "38505 304,319:320 3956:3958", "Done", "[COPYUID ...]");
	status(S("A6 OK\r\n"), IMAP_TAGGED, "A6", IMAP_COND_OK, NULL, NULL,
	    "", "tagged OK without text");
	status(S("A7 ok [read-only] lower case\r\n"), IMAP_TAGGED, "A7",
	    IMAP_COND_OK, "read-only", NULL, "lower case",
	    "lower-case ok and code");
	status(S("A8 OK [CAPABILITY IMAP4rev1 IDLE]\r\n"), IMAP_TAGGED,
	    "A8", IMAP_COND_OK, "CAPABILITY", "IMAP4rev1 IDLE", "",
	    "a code and no text");
	status(S("A9 OK  two spaces\r\n"), IMAP_TAGGED, "A9", IMAP_COND_OK,
	    NULL, NULL, "two spaces", "spaces before the text");
	status(S("A10 OK text with ] bracket and [x\r\n"), IMAP_TAGGED, "A10",
	    IMAP_COND_OK, NULL, NULL, "text with ] bracket and [x",
	    "brackets in the text, not a code");
	status(S("A11 OK text\xc3\xa9 8-bit\r\n"), IMAP_TAGGED, "A11",
	    IMAP_COND_OK, NULL, NULL, "text\xc3\xa9 8-bit", "8-bit text");
	status(S("* OK text with {5}x\r\n"), IMAP_UNTAGGED, NULL,
	    IMAP_COND_OK, NULL, NULL, "text with {5}x",
	    "braces inside the text");
	status(S("+ idling\r\n"), IMAP_CONTINUATION, NULL, IMAP_COND_NONE,
	    NULL, NULL, "idling", "continuation with text");
	status(S("+ \r\n"), IMAP_CONTINUATION, NULL, IMAP_COND_NONE, NULL,
	    NULL, "", "continuation, empty text");
	status(S("+\r\n"), IMAP_CONTINUATION, NULL, IMAP_COND_NONE, NULL,
	    NULL, "", "bare +");
	status(S("+ PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2U+\r\n"),
	    IMAP_CONTINUATION, NULL, IMAP_COND_NONE, NULL, NULL,
	    "PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2U+", "a base64 challenge");
}

static void
test_status_bad(void)
{
	BAD("", "empty");
	BAD("\r\n", "an empty line");
	BAD("A1 OK", "no CRLF");
	BAD("A1 OK\n", "LF only (the session makes CRLF)");
	BAD("A1 OK\r", "CR only");
	BAD("A1 OK\r\nA2 OK\r\n", "two responses in one");
	BAD(" A1 OK\r\n", "a leading space");
	BAD("A1  OK\r\n", "two spaces after the tag");
	BAD("A1\r\n", "a tag alone");
	BAD("A1 \r\n", "a tag and a space");
	BAD("A1 FOO bar\r\n", "a tagged response that is no status");
	BAD("A1 5 OK\r\n", "a tagged number");
	BAD("A1 OKAY fine\r\n", "OKAY is not OK");
	BAD("A1 OK [] empty code\r\n", "an empty code");
	BAD("A1 OK [ALERT no closing bracket\r\n", "an unclosed code");
	BAD("A1 OK [AL(ERT] x\r\n", "a code that is not an atom");
	BAD("A1 OK [\xff] x\r\n", "an 8-bit code");
	BAD("A1 OK [ALERT {3}\r\nabc] hi\r\n", "a literal inside a code");
	BAD("A1 OK text {5}\r\nhello\r\n", "a literal in the text");
	BAD("A1 OK a\rb\r\n", "a CR in the text");
	BAD("A1 OK a\nb\r\n", "an LF in the text");
	bad("A1 OK a\0b\r\n", 10, "a NUL in the text");
	bad("A1 OK [ALE\0RT] x\r\n", 17, "a NUL in the code");
	BAD("A1 OK [ALERT] x\ry\r\n", "a CR after the code");
	BAD("(1 OK\r\n", "a tag with (");
	BAD("A{1 OK\r\n", "a tag with {");
	BAD("A\"1 OK\r\n", "a tag with a quote");
	BAD("A%1 OK\r\n", "a tag with %");
	BAD("A]1 OK\r\n", "a tag with ]");
	BAD("+1 OK\r\n", "a tag with +");
	BAD("+OK\r\n", "+OK (POP3)");
	BAD("-ERR unknown\r\n", "-ERR (POP3)");
	BAD("*OK\r\n", "*OK without a space");
	BAD("* \r\n", "an untagged nothing");
	BAD("*  OK\r\n", "two spaces after *");
	BAD("*\r\n", "a lone *");
	BAD("+ a\rb\r\n", "a CR in a continuation");
	BAD("+ a\nb\r\n", "an LF in a continuation");
	BAD("+ {5}\r\nhello\r\n", "a literal in a continuation");
	BAD("+x\r\n", "+ and a letter");
	BAD("A123456789012345678901234567890123 OK\r\n",
	    "a tag over IMAP_TAG_MAX");
	BAD("* OK[ALERT] x\r\n", "no space after OK");
	BAD("* THISISANAMEOVERTHIRTYTWOBYTESLONGXX 1\r\n",
	    "a response name over 31 bytes");
	BAD("* FE\"TCH 1\r\n", "a name with a quote");
	BAD("* 1 FETCH(UID 1)\r\n", "no space after the name");
	bad("* 1 FETCH\0X (UID 1)\r\n", 21, "a NUL in the name");
	BAD("\xff\xfe OK\r\n", "8-bit tag");
}

static void
test_data(void)
{
	DATA("* 172 EXISTS\r\n", 172, "EXISTS", "", "EXISTS");
	DATA("* 0 EXISTS\r\n", 0, "EXISTS", "", "0 EXISTS");
	DATA("* 4294967295 EXISTS\r\n", 4294967295L, "EXISTS", "",
	    "EXISTS of 2^32-1");
	DATA("* 1 RECENT\r\n", 1, "RECENT", "", "RECENT");
	DATA("* 44 EXPUNGE\r\n", 44, "EXPUNGE", "", "EXPUNGE");
	DATA("* CAPABILITY IMAP4rev1 STARTTLS AUTH=GSSAPI LOGINDISABLED\r\n",
	    -1, "CAPABILITY", "IMAP4rev1 STARTTLS AUTH=GSSAPI LOGINDISABLED",
	    "CAPABILITY");
	DATA("* CAPABILITY IMAP4rev1 LITERAL+ LITERAL- X-GM-EXT-1\r\n", -1,
	    "CAPABILITY", "IMAP4rev1 LITERAL+ LITERAL- X-GM-EXT-1",
	    "CAPABILITY with + and -");
	DATA("* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n",
	    -1, "FLAGS", "(\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
	    "FLAGS");
	DATA("* SEARCH 2 84 882\r\n", -1, "SEARCH", "#2 #84 #882", "SEARCH");
	DATA("* SEARCH\r\n", -1, "SEARCH", "", "an empty SEARCH");
	DATA("* LIST (\\Noselect) \"/\" \"\"\r\n", -1, "LIST",
	    "(\\Noselect) \"/\" \"\"", "LIST of the separator");
	DATA("* LIST (\\HasNoChildren) NIL INBOX\r\n", -1, "LIST",
	    "(\\HasNoChildren) NIL INBOX", "LIST, no separator");
	DATA("* LIST () \".\" {7}\r\nA\"B(C)D\r\n", -1, "LIST",
	    "() \".\" {7}A\"B(C)D", "LIST with a literal name");
	DATA("* ENABLED\r\n", -1, "ENABLED", "", "ENABLED");
	DATA("* ID (\"name\" \"Dovecot\" \"version\" NIL)\r\n", -1, "ID",
	    "(\"name\" \"Dovecot\" \"version\" NIL)", "ID");
	DATA("* 1 FETCH (UID 1)\r\n", 1, "FETCH", "(UID #1)", "FETCH UID");
	DATA("* 12 FETCH (UID 4827313 RFC822.SIZE 44827)\r\n", 12, "FETCH",
	    "(UID #4827313 RFC822.SIZE #44827)", "FETCH UID RFC822.SIZE");
	DATA("* 1 FETCH (X-GM-MSGID 1278455344230334865 UID 9)\r\n", 1,
	    "FETCH", "(X-GM-MSGID #1278455344230334865 UID #9)",
	    "X-GM-MSGID");
	DATA("* 3 FETCH (FLAGS (\\Seen \\Deleted $Junk \\*) UID 3)\r\n", 3,
	    "FETCH", "(FLAGS (\\Seen \\Deleted $Junk \\*) UID #3)",
	    "FLAGS with \\Seen and \\*");
	DATA("* 3 FETCH (FLAGS ())\r\n", 3, "FETCH", "(FLAGS ())",
	    "empty FLAGS");
	DATA("* 1 FETCH (UID 5 BODY[] {11}\r\nHello\r\nYou!)\r\n", 1,
	    "FETCH", "(UID #5 BODY[] {11}Hello\r\nYou!)", "BODY[] literal");
	DATA("* 1 FETCH (UID 5 BODY[] {0}\r\n)\r\n", 1, "FETCH",
	    "(UID #5 BODY[] {0})", "an empty literal (a streamed body)");
	DATA("* 1 FETCH (BODY[] {0}\r\n UID 5)\r\n", 1, "FETCH",
	    "(BODY[] {0} UID #5)", "UID after the literal");
	DATA("* 2 FETCH (UID 6 BODY[HEADER.FIELDS (MESSAGE-ID)] {21}\r\n"
	    "Message-ID: <a@b>\r\n\r\n   )\r\n", 2, "FETCH",
	    "(UID #6 BODY[HEADER.FIELDS (MESSAGE-ID)] {21}"
	    "Message-ID: <a@b>\r\n\r\n)",
	    "a section with a list");
	DATA("* 2 FETCH (BODY[HEADER.FIELDS.NOT (\"X-A\" Received)] NIL)\r\n",
	    2, "FETCH", "(BODY[HEADER.FIELDS.NOT (\"X-A\" Received)] NIL)",
	    "a section with quoted names");
	DATA("* 2 FETCH (BODY[]<0> {3}\r\nabc)\r\n", 2, "FETCH",
	    "(BODY[]<0> {3}abc)", "a partial <0>");
	DATA("* 2 FETCH (BODY[1.2.MIME]<1024> \"x\")\r\n", 2, "FETCH",
	    "(BODY[1.2.MIME]<1024> \"x\")", "a partial of a part");
	DATA("* 2 FETCH (BINARY[] ~{4}\r\n\0\1\2\3)\r\n", 2, "FETCH",
	    "(BINARY[] {4}\0\1\2\3)", "a literal8");
	DATA("* 4 FETCH (RFC822 {5}\r\n)(\"\\x UID 7)\r\n", 4, "FETCH",
	    "(RFC822 {5})(\"\\x UID #7)",
	    "a literal holding parens, a quote, a backslash");
	DATA("* 5 FETCH (BODY[] {6}\r\n\0a\0\r\n\0 UID 1)\r\n", 5, "FETCH",
	    "(BODY[] {6}\0a\0\r\n\0 UID #1)", "a literal holding NULs");
	DATA("* 5 FETCH (BODY[] {5}\r\n{2}\r\n UID 1)\r\n", 5, "FETCH",
	    "(BODY[] {5}{2}\r\n UID #1)",
	    "a literal that looks like a literal marker");
	DATA("* 6 FETCH (ENVELOPE (\"date\" \"subj\" ((\"A\" NIL \"a\" "
	    "\"b.c\")) NIL NIL NIL NIL NIL NIL \"<id>\"))\r\n", 6, "FETCH",
	    "(ENVELOPE (\"date\" \"subj\" ((\"A\" NIL \"a\" \"b.c\")) NIL NIL "
	    "NIL NIL NIL NIL \"<id>\"))", "nested lists (ENVELOPE)");
	DATA("* 7 FETCH (INTERNALDATE \"17-Jul-1996 02:44:25 -0700\")\r\n", 7,
	    "FETCH", "(INTERNALDATE \"17-Jul-1996 02:44:25 -0700\")",
	    "INTERNALDATE");
	DATA("* 8 FETCH (X \"a\\\\b\\\"c\" Y \"\")\r\n", 8, "FETCH",
	    "(X \"a\\\\b\\\"c\" Y \"\")", "quoted escapes kept in the node");
	DATA("* 8 FETCH (X \"caf\xc3\xa9\")\r\n", 8, "FETCH",
	    "(X \"caf\xc3\xa9\")", "8-bit in a quoted string");
	DATA("* 8 FETCH (X nil Y NiL)\r\n", 8, "FETCH", "(X NIL Y NIL)",
	    "NIL in any case");
	DATA("* 8 FETCH (X NILS Y NI)\r\n", 8, "FETCH", "(X NILS Y NI)",
	    "NILS and NI are atoms");
	DATA("* 9 FETCH (UID 4294967296 RFC822.SIZE 18446744073709551615)\r\n",
	    9, "FETCH", "(UID #4294967296 RFC822.SIZE #18446744073709551615)",
	    "numbers beyond 2^32 and at 2^64-1");
	DATA("* 9 FETCH (UID 18446744073709551616)\r\n", 9, "FETCH",
	    "(UID 18446744073709551616)", "2^64 is an atom, not a number");
	DATA("* 9 FETCH (UID 000000000000000000000007)\r\n", 9, "FETCH",
	    "(UID 000000000000000000000007)", "24 digits: an atom");
	DATA("* 9 FETCH (UID -1 RFC822.SIZE 1e3)\r\n", 9, "FETCH",
	    "(UID -1 RFC822.SIZE 1e3)", "-1 and 1e3 are atoms");
	DATA("* 9 FETCH ( UID  1 )\r\n", 9, "FETCH", "(UID #1)",
	    "extra spaces");
	DATA("* 9 FETCH ()\r\n", 9, "FETCH", "()", "an empty FETCH");
	DATA("* 9 FETCH\r\n", 9, "FETCH", "", "FETCH without a list");
	DATA("* 9 FETCH (UID 1) (UID 2)\r\n", 9, "FETCH", "(UID #1) (UID #2)",
	    "two lists");
	DATA("* STATUS \"Sent\" (MESSAGES 2 UIDNEXT 3)\r\n", -1, "STATUS",
	    "\"Sent\" (MESSAGES #2 UIDNEXT #3)", "STATUS");
	DATA("* 1 FETCH (UID 1 BODY[] {2}\r\nab BODY[TEXT] {1}\r\nc)\r\n", 1,
	    "FETCH", "(UID #1 BODY[] {2}ab BODY[TEXT] {1}c)",
	    "two literals in one response");
	DATA("* 1 fetch (uid 1)\r\n", 1, "fetch", "(uid #1)",
	    "lower-case names kept as sent");
	DATA("* 7 OK\r\n", 7, "OK", "", "a number and OK: data");
}

static void
test_data_bad(void)
{
	BAD("* 4294967296 EXISTS\r\n", "EXISTS beyond 2^32-1");
	BAD("* 99999999999999999999999 EXISTS\r\n", "a giant count");
	BAD("* 5\r\n", "a number without a name");
	BAD("* 5 \r\n", "a number and a space");
	BAD("* 1 FETCH (UID 1\r\n", "an unclosed list");
	BAD("* 1 FETCH (UID 1))\r\n", "a ) too many");
	BAD("* 1 FETCH UID 1)\r\n", "a ) without (");
	BAD("* 1 FETCH (UID \"1)\r\n", "an unterminated quoted string");
	BAD("* 1 FETCH (X \"a\\nb\")\r\n", "a bad escape");
	BAD("* 1 FETCH (X \"a\\\")\r\n", "an escaped closing quote");
	BAD("* 1 FETCH (X \"a\rb\")\r\n", "a CR in a quoted string");
	bad("* 1 FETCH (X \"a\0b\")\r\n", 21, "a NUL in a quoted string");
	BAD("* 5 FETCH (BODY[] {3}\r\n{2}\r\n UID 1)\r\n",
	    "a CRLF after a literal's bytes");
	BAD("* 1 FETCH (BODY[] {5}\r\nabc)\r\n", "a literal longer than "
	    "what is left");
	BAD("* 1 FETCH (BODY[] {5}\r\nabcde\r\n", "a literal then no )");
	BAD("* 1 FETCH (BODY[] {5}abcde)\r\n", "a literal without CRLF");
	BAD("* 1 FETCH (BODY[] {5}\nabcde)\r\n", "a literal with LF only");
	BAD("* 1 FETCH (BODY[] {}\r\n)\r\n", "an empty literal length");
	BAD("* 1 FETCH (BODY[] {-1}\r\n)\r\n", "a negative literal");
	BAD("* 1 FETCH (BODY[] {5+}\r\nabcde)\r\n", "a {n+} from a server");
	BAD("* 1 FETCH (BODY[] {1099511627777}\r\n)\r\n",
	    "a literal over IMAP_LITERAL_LEN_MAX");
	BAD("* 1 FETCH (BODY[] {18446744073709551616}\r\n)\r\n",
	    "a literal of 2^64");
	BAD("* 1 FETCH (BODY[] {5\r\nabcde)\r\n", "an unclosed {");
	BAD("* 1 FETCH (BODY[] ~5}\r\nabcde)\r\n", "~ without {");
	BAD("* 1 FETCH (BODY[] {2}\r\nabX)\r\n",
	    "bytes after a literal before the next value");
	BAD("* 1 FETCH (UID 1)X\r\n", "bytes after the list");
	BAD("* 1 FETCH (UID \"1\"X)\r\n", "bytes after a quoted string");
	BAD("* 1 FETCH (UID 1)\r\n\r\n", "two CRLFs");
	BAD("* 1 FETCH (UID\r1)\r\n", "a CR inside");
	BAD("* 1 FETCH (UID\n1)\r\n", "an LF inside");
	bad("* 1 FETCH (UID\0 1)\r\n", 19, "a NUL inside");
	BAD("* 1 FETCH (BODY[ {3}\r\nabc)\r\n", "an unclosed section");
	BAD("* 1 FETCH (BODY[HEADER]] x)\r\n", "a ] too many");
	BAD("* 1 FETCH (BODY[HEADER\r\n] x)\r\n", "a CRLF inside a section");
	bad("* 1 FETCH (BODY[HE\0ADER] x)\r\n", 29, "a NUL inside a section");
	BAD("* 1 FETCH (UID ])\r\n", "a lone ]");
	BAD("* 1 FETCH (UID %)\r\n", "a lone %");
	BAD("* 1 FETCH (UID *)\r\n", "a lone *");
	BAD("* 1 FETCH (UID {)\r\n", "a lone {");
	BAD("* 1 FETCH (UID \xff)\r\n", "an 8-bit atom");
	BAD("* 1 FETCH (UID \x01)\r\n", "a control character");
	BAD("* 1 FETCH (UID \x7f)\r\n", "DEL");
	BAD("* LIST (\\Noselect) \"/\" \"\r\n", "LIST with a broken name");
}

/* Lists nested n deep around one atom. */
static int
nested(int n)
{
	char	buf[512];
	size_t	o = 0;
	int	i;

	o += snprintf(buf + o, sizeof buf - o, "* 1 FETCH ");
	for (i = 0; i < n; i++)
		buf[o++] = '(';
	buf[o++] = 'x';
	for (i = 0; i < n; i++)
		buf[o++] = ')';
	buf[o++] = '\r';
	buf[o++] = '\n';
	return (parse(buf, o));
}

static void
test_limits(void)
{
	char	 buf[8192];
	size_t	 o;
	int	 i, d, deepest = 0;

	for (d = 1; d <= 40; d++) {
		if (nested(d) == 0)
			deepest = d;
	}
	ok(deepest >= 4, tap_fmt("lists nest at least 4 deep (%d)", deepest));
	ok(deepest <= 20, tap_fmt("lists nest at most 20 deep (%d)",
	    deepest));
	is_int(nested(deepest + 1), -1, "one level deeper is refused");
	is_int(nested(200), -1, "200 levels refused (no stack overflow)");
	/* nodes: the array holds NODES */
	o = (size_t)snprintf(buf, sizeof buf, "* SEARCH");
	for (i = 0; i < NODES; i++)
		o += (size_t)snprintf(buf + o, sizeof buf - o, " %d", i + 1);
	o += (size_t)snprintf(buf + o, sizeof buf - o, "\r\n");
	is_int(parse(buf, o), 0, "as many values as nodes: parsed");
	is_int(resp.nnodes, NODES, "all nodes used");
	o = (size_t)snprintf(buf, sizeof buf, "* SEARCH");
	for (i = 0; i < NODES + 1; i++)
		o += (size_t)snprintf(buf + o, sizeof buf - o, " %d", i + 1);
	o += (size_t)snprintf(buf + o, sizeof buf - o, "\r\n");
	is_int(parse(buf, o), -1, "one value more than nodes: refused");
	o = (size_t)snprintf(buf, sizeof buf, "* 1 FETCH (");
	for (i = 0; i < NODES; i++)
		o += (size_t)snprintf(buf + o, sizeof buf - o, "()");
	o += (size_t)snprintf(buf + o, sizeof buf - o, ")\r\n");
	is_int(parse(buf, o), -1, "empty lists count as nodes");
	/* no nodes at all */
	{
		struct imap_resp	r;

		is_int(imap_parse(S("* 1 FETCH (UID 1)\r\n"), nodes, 0, &r),
		    -1, "max 0 nodes: data refused");
		is_int(imap_parse(S("* 1 EXISTS\r\n"), nodes, 0, &r), 0,
		    "max 0 nodes: EXISTS parsed");
		is_int(imap_parse(S("A1 OK done\r\n"), NULL, 0, &r), 0,
		    "no node array: a status parsed");
	}
	/* a long tag, name */
	is_int(parse(S("A1234567890123456789012345678901 OK\r\n")), 0,
	    "a 32-byte tag");
	is_int(parse(S("* ABCDEFGHIJABCDEFGHIJABCDEFGHIJA 1\r\n")), 0,
	    "a 31-byte name");
	is_int(parse(S("* ABCDEFGHIJABCDEFGHIJABCDEFGHIJAB 1\r\n")), -1,
	    "a 32-byte name");
}

/* Every prefix of a good response that does not end in CRLF is refused,
   and none reads outside what it is given. */
static void
test_truncations(void)
{
	static const char *const good[] = {
		"* 1 FETCH (UID 5 RFC822.SIZE 11 BODY[] {11}\r\nHello\r\n"
		    "You!)\r\n",
		"* OK [CAPABILITY IMAP4rev1 IDLE] ready\r\n",
		"A1 OK [READ-WRITE] done\r\n",
		"* 2 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID)] {3}\r\nabc "
		    "FLAGS (\\Seen))\r\n",
		"* LIST (\\HasNoChildren) \"/\" \"a \\\"b\\\"\"\r\n",
	};
	size_t	i, n, len;
	int	fails = 0;

	for (i = 0; i < sizeof good / sizeof good[0]; i++) {
		len = strlen(good[i]);
		if (parse(good[i], len) != 0) {
			ok(0, tap_fmt("good response %zu parses", i));
			continue;
		}
		for (n = 0; n < len; n++) {
			if (n >= 2 && good[i][n - 2] == '\r' &&
			    good[i][n - 1] == '\n')
				continue;	/* ends in CRLF by chance */
			if (parse(good[i], n) != -1) {
				fails++;
				diag("prefix %zu of %zu accepted", n, i);
			}
		}
	}
	is_int(fails, 0, "truncated responses are refused");
}

/* Single-byte changes of good responses: parsed or refused, never
   anything in between (the tree is checked by parse()). */
static void
test_mutations(void)
{
	static const char base[] = "* 1 FETCH (UID 5 FLAGS (\\Seen \\*) "
	    "BODY[HEADER.FIELDS (X)] {3}\r\nabc X \"q\\\"\" NIL)\r\n";
	static const char sub[] = "\0\r\n ()[]{}\"\\*%+~0912xX<>";
	char	buf[sizeof base];
	size_t	i, k, len = sizeof base - 1;
	int	parsed = 0, refused = 0;

	for (i = 0; i < len; i++) {
		for (k = 0; k < sizeof sub - 1; k++) {
			memcpy(buf, base, len);
			buf[i] = sub[k];
			if (parse(buf, len) == 0)
				parsed++;
			else
				refused++;
			/* the same with a byte removed */
			memmove(buf + i, buf + i + 1, len - i - 1);
			if (parse(buf, len - 1) == 0)
				parsed++;
			else
				refused++;
		}
	}
	ok(parsed > 0 && refused > 0, tap_fmt("mutations: %d parsed, %d "
	    "refused, every tree sound", parsed, refused));
}

/* ---------------------------------------------------------------------- */

static int
body(const char *s, size_t len, uint64_t *n)
{
	free(copy);
	copy = malloc(len ? len : 1);
	if (copy == NULL)
		abort();
	memcpy(copy, s, len);
	return (imap_literal_is_body(copy, len, n));
}
#define BODY(lit, n)	body(S(lit), (n))

static void
test_literal_is_body(void)
{
	uint64_t	n = 0;

	is_int(BODY("* 1 FETCH (UID 5 RFC822.SIZE 44 BODY[] {44}\r\n", &n), 1,
	    "BODY[] is a body");
	is_int(n, 44, "its length");
	is_int(BODY("* 1 FETCH (BODY[] {0}\r\n", &n), 1,
	    "BODY[] right after (");
	is_int(n, 0, "length 0");
	is_int(BODY("* 1 FETCH (UID 5 body[] {7}\r\n", &n), 1,
	    "body[] in lower case");
	is_int(BODY("* 1 FETCH (UID 5 RFC822 {7}\r\n", &n), 1,
	    "RFC822 is a body");
	is_int(BODY("* 1 FETCH (UID 5 BINARY[] ~{7}\r\n", &n), 1,
	    "BINARY[] literal8 is a body");
	is_int(n, 7, "literal8 length");
	is_int(BODY("* 1 FETCH (UID 5 BODY[] {1099511627776}\r\n", &n), 1,
	    "a body of IMAP_LITERAL_LEN_MAX");
	ok(n == IMAP_LITERAL_LEN_MAX, "its length");
	is_int(BODY("* 1 FETCH (UID 5 BODY[] {1099511627777}\r\n", &n), -1,
	    "one more is refused");
	is_int(BODY("* 1 FETCH (UID 5 BODY[] {18446744073709551616}\r\n", &n),
	    -1, "2^64 refused");
	is_int(BODY("* 1 FETCH (UID 5 BODY[] {000000000000000000000001}\r\n",
	    &n), -1, "24 digits refused");
	is_int(BODY("* 1 FETCH (UID 5 BODY[HEADER] {7}\r\n", &n), 0,
	    "BODY[HEADER] is another literal");
	is_int(n, 7, "its length");
	is_int(BODY("* 1 FETCH (BODY[HEADER.FIELDS (MESSAGE-ID)] {7}\r\n", &n),
	    0, "a header section is another literal");
	is_int(BODY("* 1 FETCH (BODY[TEXT] {7}\r\n", &n), 0, "BODY[TEXT]");
	is_int(BODY("* 1 FETCH (BODY[]<0> {7}\r\n", &n), 0,
	    "a partial BODY[]<0> is another literal");
	is_int(BODY("* 1 FETCH (RFC822.HEADER {7}\r\n", &n), 0,
	    "RFC822.HEADER");
	is_int(BODY("* 1 FETCH (RFC822.TEXT {7}\r\n", &n), 0, "RFC822.TEXT");
	is_int(BODY("* 1 FETCH (XBODY[] {7}\r\n", &n), 0, "XBODY[]");
	is_int(BODY("* 1 FETCH (BODY[]{7}\r\n", &n), 0,
	    "no space before the literal");
	is_int(BODY("* LIST () \"/\" {7}\r\n", &n), 0, "a LIST literal");
	is_int(BODY("A1 OK BODY[] {7}\r\n", &n), 0, "a tagged response");
	is_int(BODY("+ BODY[] {7}\r\n", &n), 0, "a continuation");
	is_int(BODY("* 1 FETCH (UID 1 BODY[] {2}\r\nab BODY[] {9}\r\n", &n),
	    1, "a second BODY[] after a first literal");
	is_int(n, 9, "the last literal's length");
	is_int(BODY("* 1 FETCH (X {7}\r\n(abcdef BODY[] {3}\r\n", &n), 1,
	    "the attribute after a literal");
	is_int(BODY("{7}\r\n", &n), 0, "a literal alone");
	is_int(BODY("* 1 FETCH (BODY[] {}\r\n", &n), -1, "{} refused");
	is_int(BODY("* 1 FETCH (BODY[] {x}\r\n", &n), -1, "{x} refused");
	is_int(BODY("* 1 FETCH (BODY[] {7+}\r\n", &n), -1, "{7+} refused");
	is_int(BODY("* 1 FETCH (BODY[] {-7}\r\n", &n), -1, "{-7} refused");
	is_int(BODY("* 1 FETCH (BODY[] 7}\r\n", &n), -1, "no {");
	is_int(BODY("}\r\n", &n), -1, "a lone }");
	is_int(BODY("{}\r\n", &n), -1, "a lone {}");
	is_int(BODY("* 1 FETCH (BODY[] {7}\n", &n), -1, "LF only");
	is_int(BODY("* 1 FETCH (BODY[] {7} \r\n", &n), -1,
	    "a space before CRLF");
	is_int(BODY("* OK friend {hello}\r\n", &n), -1,
	    "text ending in {word} is no literal marker");
	is_int(BODY("* 1 FETCH (BODY[] {7}\r\n", &n) == 1 &&
	    body("* 1 FETCH (BODY[] {7}\r\n", 22, &n) == -1, 1,
	    "reads only its length");
	{
		/* no scan past the digits, whatever is before */
		static char	big[300000];

		memset(big, '}', sizeof big);
		memcpy(big + sizeof big - 3, "}\r\n", 3);
		is_int(body(big, sizeof big, &n), -1,
		    "300 KB of } : refused (and quickly)");
		memset(big, '9', sizeof big);
		big[0] = '{';
		memcpy(big + sizeof big - 3, "}\r\n", 3);
		is_int(body(big, sizeof big, &n), -1,
		    "300 KB of digits: refused");
	}
}

/* ---------------------------------------------------------------------- */

static int
marker(const char *s, size_t len)
{
	free(copy);
	copy = malloc(len ? len : 1);
	if (copy == NULL)
		abort();
	memcpy(copy, s, len);
	return (imap_literal_marker(copy, len));
}
#define MARKER(lit)	marker(S(lit))

static void
test_literal_marker(void)
{
	is_int(MARKER("* 1 FETCH (UID 5 BODY[] {44}\r\n"), 1,
	    "a FETCH literal");
	is_int(MARKER("* 1 FETCH (BODY[] {0}\r\n"), 1, "{0}");
	is_int(MARKER("* 1 FETCH (X (a {3}\r\n"), 1, "after (");
	is_int(MARKER("* 1 FETCH (BINARY[] ~{7}\r\n"), 1, "literal8");
	is_int(MARKER("* LIST () \"/\" {7}\r\n"), 1, "a LIST literal");
	is_int(MARKER("* 1 FETCH (BODY[] {7+}\r\n"), 1,
	    "{7+} is a marker (imap_literal_is_body refuses it)");
	is_int(MARKER("* 1 FETCH (BODY[] {1099511627777}\r\n"), 1,
	    "too long is still a marker (then refused)");
	is_int(MARKER("* OK IMAP server {v2.3}\r\n"), 0,
	    "greeting text ending in {v2.3}");
	is_int(MARKER("* OK IMAP server {5}\r\n"), 0,
	    "greeting text ending in {5}: status text, no literal");
	is_int(MARKER("* ok [ALERT] see {12}\r\n"), 0,
	    "a status response in lower case");
	is_int(MARKER("* BYE {3}\r\n"), 0, "BYE");
	is_int(MARKER("* PREAUTH {3}\r\n"), 0, "PREAUTH");
	is_int(MARKER("A7 NO [ALERT] quota {1}\r\n"), 0, "a tagged NO");
	is_int(MARKER("A7 OK {1}\r\n"), 0, "a tagged OK");
	is_int(MARKER("+ {5}\r\n"), 0, "a continuation");
	is_int(MARKER("+{5}\r\n"), 0, "a continuation without a space");
	is_int(MARKER("* 1 FETCH (BODY[] {}\r\n"), 0, "{}: no digits");
	is_int(MARKER("* 1 FETCH (BODY[] {x}\r\n"), 0, "{x}");
	is_int(MARKER("* 1 FETCH (BODY[]{7}\r\n"), 0, "no space before {");
	is_int(MARKER("* CAPABILITY IMAP4rev1 X{7}\r\n"), 0,
	    "inside an atom");
	is_int(MARKER("* 1 FETCH (BODY[] 7}\r\n"), 0, "no {");
	is_int(MARKER("* 1 FETCH (BODY[] {7}\n"), 0, "LF only");
	is_int(MARKER("{7}\r\n"), 0, "a marker alone");
	is_int(MARKER("}\r\n"), 0, "a lone }");
	is_int(MARKER("*\r\n"), 0, "a lone *");
	is_int(MARKER("* 1 FETCH (UID 1 BODY[] {2}\r\nab BODY[] {9}\r\n"), 1,
	    "a second literal after a first");
	{
		static char	big[300000];

		memset(big, '9', sizeof big);
		memcpy(big, "* 1 FETCH (X {", 14);
		memcpy(big + sizeof big - 3, "}\r\n", 3);
		is_int(marker(big, sizeof big), 0,
		    "300 KB of digits: no marker within reach");
	}
}

static int
size_before(const char *s, size_t len, uint64_t *v)
{
	free(copy);
	copy = malloc(len ? len : 1);
	if (copy == NULL)
		abort();
	memcpy(copy, s, len);
	return (imap_fetch_size_before(copy, len, v));
}
#define SIZE_BEFORE(lit, v)	size_before(S(lit), (v))

static void
test_fetch_size_before(void)
{
	uint64_t	v = 0;

	is_int(SIZE_BEFORE("* 1 FETCH (UID 5 RFC822.SIZE 2000 BODY[] {9}\r\n",
	    &v), 0, "RFC822.SIZE before the body");
	is_int(v, 2000, "its value");
	is_int(SIZE_BEFORE("* 1 FETCH (rfc822.size 7 BODY[] {9}\r\n", &v), 0,
	    "in lower case, first in the list");
	is_int(v, 7, "its value");
	is_int(SIZE_BEFORE("* 1 FETCH (UID 5 BODY[] {9}\r\n", &v), -1,
	    "none");
	is_int(SIZE_BEFORE("* 1 FETCH (UID 5 XRFC822.SIZE 7 BODY[] {9}\r\n",
	    &v), -1, "part of another word");
	is_int(SIZE_BEFORE("* 1 FETCH (RFC822.SIZE 7x BODY[] {9}\r\n", &v), -1,
	    "not a number");
	is_int(SIZE_BEFORE("* 1 FETCH (RFC822.SIZE 1099511627777 BODY[] "
	    "{9}\r\n", &v), -1, "over IMAP_LITERAL_LEN_MAX");
	is_int(SIZE_BEFORE("* 1 FETCH (X {3}\r\nabc RFC822.SIZE 7 BODY[] "
	    "{9}\r\n", &v), -1, "only the first line is looked at");
	is_int(SIZE_BEFORE("* 1 FETCH (RFC822.SIZE ", &v), -1,
	    "no line end");
}

static ssize_t
mfolder(const char *name, char delim, char *buf, size_t size)
{
	free(copy);
	copy = malloc(strlen(name) + 1);
	if (copy == NULL)
		abort();
	memcpy(copy, name, strlen(name));
	return (imap_maildir_folder(copy, strlen(name), delim, buf, size));
}

static void
test_maildir_folder(void)
{
	static const struct {
		const char	*name;
		char		 delim;
		const char	*want;		/* NULL: refused; "": INBOX */
	} cases[] = {
		{ "INBOX", '/', "" },
		{ "inbox", '.', "" },
		{ "Work", '/', ".Work" },
		{ "Sent Items", '/', ".Sent Items" },
		{ "Lists/Linux", '/', ".Lists.Linux" },
		{ "INBOX.Sent", '.', ".Sent" },
		{ "INBOX.Lists.Linux", '.', ".Lists.Linux" },
		{ "INBOX/Sent", '/', ".Sent" },
		{ "INBOX/INBOX", '/', ".INBOX" },
		{ "a.b", '/', ".a_b" },
		{ "a/b", '.', ".a_b" },
		{ "a/b", '\0', ".a_b" },
		{ "x\001y\177", '/', ".x_y_" },
		{ "&AOk-t&AOk-", '/', ".&AOk-t&AOk-" },
		{ ".hidden", '/', "._hidden" },
		{ "..", '/', ".__" },
		{ "/", '/', NULL },
		{ ".", '.', NULL },
		{ "a//b", '/', NULL },
		{ "a/", '/', NULL },
		{ "/a", '/', NULL },
		{ "INBOX/", '/', NULL },
		{ "INBOX//", '/', NULL },
		{ "", '/', NULL },
	};
	char	buf[64];
	ssize_t	n;
	size_t	i;

	for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		memset(buf, 'Z', sizeof buf);
		n = mfolder(cases[i].name, cases[i].delim, buf, sizeof buf);
		if (cases[i].want == NULL)
			is_int(n, -1, tap_fmt("Maildir++ name of \"%s\" (%c): "
			    "refused", cases[i].name, cases[i].delim ?
			    cases[i].delim : '0'));
		else if (cases[i].want[0] == '\0')
			is_int(n, 0, tap_fmt("\"%s\" is the Maildir",
			    cases[i].name));
		else if (ok(n == (ssize_t)strlen(cases[i].want),
		    tap_fmt("Maildir++ name of \"%s\" (%c): length",
		    cases[i].name, cases[i].delim ? cases[i].delim : '0')))
			is_str(buf, cases[i].want, tap_fmt("Maildir++ name of "
			    "\"%s\"", cases[i].name));
	}
	is_int(mfolder("abcdefgh", '/', buf, 10), 9,
	    "\".abcdefgh\" fits with its NUL");
	is_int(mfolder("abcdefgh", '/', buf, 9), -1, "one byte short");
	is_int(mfolder("abc", '/', buf, 1), -1, "no room at all");
}

/* ---------------------------------------------------------------------- */

static void
test_fetch_att(void)
{
	uint64_t	v;
	char		s[64];
	ssize_t		n;
	size_t		i;

	ok(parse(S("* 3 FETCH (UID 17 RFC822.SIZE 4 X-GM-MSGID "
	    "1278455344230334865 FLAGS (\\Seen) BODY[] {4}\r\nab\r\n "
	    "BODY[HEADER.FIELDS (MESSAGE-ID)] \"m\")\r\n")) == 0,
	    "a full FETCH parses");
	i = imap_fetch_att(&resp, "UID");
	is_int(imap_node_number(&resp, i, UINT32_MAX, &v), 0, "UID value");
	is_int(v, 17, "UID 17");
	i = imap_fetch_att(&resp, "uid");
	is_int(imap_node_number(&resp, i, UINT32_MAX, &v), 0,
	    "uid in any case");
	i = imap_fetch_att(&resp, "RFC822.SIZE");
	is_int(imap_node_number(&resp, i, IMAP_LITERAL_LEN_MAX, &v), 0,
	    "RFC822.SIZE");
	is_int(v, 4, "RFC822.SIZE 4");
	i = imap_fetch_att(&resp, "X-GM-MSGID");
	is_int(imap_node_number(&resp, i, UINT64_MAX, &v), 0, "X-GM-MSGID");
	ok(v == 1278455344230334865ULL, "X-GM-MSGID value");
	is_int(imap_node_number(&resp, i, UINT32_MAX, &v), -1,
	    "X-GM-MSGID is over UINT32_MAX");
	i = imap_fetch_att(&resp, "FLAGS");
	ok(i != IMAP_NONE && resp.nodes[i].type == IMAP_LIST, "FLAGS list");
	is_int(imap_node_number(&resp, i, UINT64_MAX, &v), -1,
	    "a list is no number");
	is_int(imap_node_string(&resp, i, s, sizeof s), -1,
	    "a list is no string");
	i = imap_fetch_att(&resp, "BODY[]");
	ok(i != IMAP_NONE && resp.nodes[i].literal, "BODY[] literal");
	n = imap_node_string(&resp, i, s, sizeof s);
	is_mem(s, n < 0 ? 0 : (size_t)n, "ab\r\n", 4, "BODY[] bytes");
	i = imap_fetch_att(&resp, "BODY[HEADER.FIELDS (MESSAGE-ID)]");
	n = imap_node_string(&resp, i, s, sizeof s);
	is_mem(s, n < 0 ? 0 : (size_t)n, "m", 1, "section with a list");
	is_int(imap_fetch_att(&resp, "BODY"), IMAP_NONE, "BODY is not BODY[]");
	is_int(imap_fetch_att(&resp, "UI"), IMAP_NONE, "a prefix is not it");
	is_int(imap_fetch_att(&resp, "17"), IMAP_NONE,
	    "a value is not an attribute");
	is_int(imap_fetch_att(&resp, "\\Seen"), IMAP_NONE,
	    "a flag inside FLAGS is not an attribute");
	is_int(imap_fetch_att(&resp, "ab\r\n"), IMAP_NONE,
	    "literal bytes are not an attribute");
	is_int(imap_node_number(&resp, IMAP_NONE, UINT64_MAX, &v), -1,
	    "imap_node_number(IMAP_NONE)");
	is_int(imap_node_string(&resp, IMAP_NONE, s, sizeof s), -1,
	    "imap_node_string(IMAP_NONE)");

	ok(parse(S("* 3 FETCH (UID 17 RFC822.SIZE)\r\n")) == 0,
	    "a FETCH with a name without value");
	is_int(imap_fetch_att(&resp, "RFC822.SIZE"), IMAP_NONE,
	    "an attribute without value");
	ok(parse(S("* 3 FETCH (\"UID\" 17 UID 18)\r\n")) == 0,
	    "a quoted UID");
	is_int(imap_node_number(&resp, imap_fetch_att(&resp, "UID"),
	    UINT32_MAX, &v), 0, "the atom UID");
	is_int(v, 18, "not the quoted one");
	ok(parse(S("* 3 FETCH (UID 17 UID 18)\r\n")) == 0, "UID twice");
	imap_node_number(&resp, imap_fetch_att(&resp, "UID"), UINT32_MAX, &v);
	is_int(v, 17, "the first one counts");
	ok(parse(S("* 3 FETCH (UID 17) (UID 18)\r\n")) == 0, "two lists");
	is_int(imap_fetch_att(&resp, "UID"), IMAP_NONE,
	    "two lists: no attribute");
	ok(parse(S("* 3 FETCH UID 17\r\n")) == 0, "no list");
	is_int(imap_fetch_att(&resp, "UID"), IMAP_NONE, "no list: none");
	ok(parse(S("* 3 STORE (UID 17)\r\n")) == 0, "not a FETCH");
	is_int(imap_fetch_att(&resp, "UID"), IMAP_NONE, "STORE: none");
	ok(parse(S("* 3 fetch (uid 17)\r\n")) == 0, "lower-case fetch");
	is_int(imap_node_number(&resp, imap_fetch_att(&resp, "UID"),
	    UINT32_MAX, &v), 0, "lower-case fetch and uid");
	ok(parse(S("* 3 FETCH (UID \"17\")\r\n")) == 0, "a quoted number");
	is_int(imap_node_number(&resp, imap_fetch_att(&resp, "UID"),
	    UINT32_MAX, &v), -1, "a quoted number is no number");
	ok(parse(S("* 3 FETCH (UID 4294967296)\r\n")) == 0, "UID 2^32");
	is_int(imap_node_number(&resp, imap_fetch_att(&resp, "UID"),
	    UINT32_MAX, &v), -1, "UID 2^32 over UINT32_MAX");
	ok(parse(S("* 3 FETCH (UID NIL)\r\n")) == 0, "UID NIL");
	is_int(imap_node_number(&resp, imap_fetch_att(&resp, "UID"),
	    UINT32_MAX, &v), -1, "NIL is no number");
	ok(parse(S("* 3 FETCH ()\r\n")) == 0, "an empty list");
	is_int(imap_fetch_att(&resp, "UID"), IMAP_NONE, "empty: none");
	ok(parse(S("A1 OK FETCH done\r\n")) == 0, "a status");
	is_int(imap_fetch_att(&resp, "UID"), IMAP_NONE, "a status: none");
}

static void
test_node_string(void)
{
	char	s[16];
	ssize_t	n;

	ok(parse(S("* X \"a\\\\b\\\"c\" NIL atom {3}\r\na\"b 12\r\n")) == 0,
	    "strings parse");
	n = imap_node_string(&resp, resp.data, s, sizeof s);
	is_mem(s, n < 0 ? 0 : (size_t)n, "a\\b\"c", 5, "escapes undone");
	n = imap_node_string(&resp, resp.nodes[resp.data].next, s, sizeof s);
	is_int(n, 0, "NIL is empty");
	n = imap_node_string(&resp, 2, s, sizeof s);
	is_mem(s, n < 0 ? 0 : (size_t)n, "atom", 4, "an atom");
	n = imap_node_string(&resp, 3, s, sizeof s);
	is_mem(s, n < 0 ? 0 : (size_t)n, "a\"b", 3, "a literal as is");
	n = imap_node_string(&resp, 4, s, sizeof s);
	is_mem(s, n < 0 ? 0 : (size_t)n, "12", 2, "a number's digits");
	is_int(imap_node_string(&resp, resp.data, s, 5), 5,
	    "exactly fits");
	is_int(imap_node_string(&resp, resp.data, s, 4), -1,
	    "one byte short");
	is_int(imap_node_string(&resp, resp.data, s, 0), -1, "size 0");
	is_int(imap_node_string(&resp, 3, s, 2), -1, "a literal too long");
}

static void
test_has_word(void)
{
	static const char caps[] = "IMAP4rev1 SASL-IR LITERAL+  AUTH=PLAIN "
	    "IDLE";

	ok(imap_has_word(S(caps), "IMAP4rev1"), "first word");
	ok(imap_has_word(S(caps), "IDLE"), "last word");
	ok(imap_has_word(S(caps), "auth=plain"), "any case");
	ok(imap_has_word(S(caps), "LITERAL+"), "after two spaces");
	ok(!imap_has_word(S(caps), "AUTH"), "a prefix is not a word");
	ok(!imap_has_word(S(caps), "IDL"), "a shorter word is not one");
	ok(!imap_has_word(S(caps), "SASL"), "SASL is not SASL-IR");
	ok(!imap_has_word(S(caps), "IMAP4"), "IMAP4 is not IMAP4rev1");
	ok(!imap_has_word(caps, 4, "IMAP4rev1"), "only its length");
	ok(!imap_has_word("", 0, "IDLE"), "empty list");
	ok(!imap_has_word(S(caps), ""), "an empty word is never there");
}

/* ---------------------------------------------------------------------- */

static void
quote_ok(const char *in, size_t inlen, const char *want, const char *what)
{
	char	buf[256];
	ssize_t	n;

	n = imap_quote(in, inlen, buf, sizeof buf);
	if (!ok(n >= 0, tap_fmt("imap_quote %s", what)))
		return;
	is_mem(buf, (size_t)n, want, strlen(want),
	    tap_fmt("imap_quote %s: quoted", what));
	/* what the server's parser makes of it: the same bytes */
	{
		char	line[300], back[256];
		size_t	len;
		ssize_t	m;

		len = (size_t)snprintf(line, sizeof line, "* X %.*s\r\n",
		    (int)n, buf);
		if (parse(line, len) == 0) {
			m = imap_node_string(&resp, resp.data, back,
			    sizeof back);
			is_mem(back, m < 0 ? 0 : (size_t)m, in, inlen,
			    tap_fmt("imap_quote %s: round trip", what));
		} else
			ok(0, tap_fmt("imap_quote %s: parses back", what));
	}
}

static void
test_quote(void)
{
	char	buf[16];

	quote_ok(S("alice"), "\"alice\"", "a plain word");
	quote_ok(S(""), "\"\"", "the empty string");
	quote_ok(S("p w\"d\\x"), "\"p w\\\"d\\\\x\"", "space, quote, "
	    "backslash");
	quote_ok(S("\"\\\"\\"), "\"\\\"\\\\\\\"\\\\\"", "only quotes and "
	    "backslashes");
	quote_ok(S("(){%*]"), "\"(){%*]\"", "atom-specials");
	quote_ok(S("\t~"), "\"\t~\"", "a TAB");
	is_int(imap_quote(S("a\rb"), buf, sizeof buf), -1, "CR needs a literal");
	is_int(imap_quote(S("a\nb"), buf, sizeof buf), -1, "LF needs a literal");
	is_int(imap_quote("a\0b", 3, buf, sizeof buf), -1,
	    "NUL needs a literal");
	is_int(imap_quote(S("caf\xc3\xa9"), buf, sizeof buf), -1,
	    "8-bit needs a literal");
	is_int(imap_quote(S("abc"), buf, 5), 5, "exactly fits");
	is_int(imap_quote(S("abc"), buf, 4), -1, "one byte short");
	is_int(imap_quote(S("a\""), buf, 4), -1, "an escape one byte short");
	is_int(imap_quote(S("a\""), buf, 5), 5, "an escape exactly fits");
	is_int(imap_quote(S(""), buf, 2), 2, "empty exactly fits");
	is_int(imap_quote(S(""), buf, 1), -1, "size 1");
	is_int(imap_quote(S(""), buf, 0), -1, "size 0");
	is_int(imap_quote("abc", 1, buf, sizeof buf), 3, "only its length");
}

static void
utf7_ok(const char *in, const char *want, const char *what)
{
	char	buf[256];
	ssize_t	n;

	n = imap_utf7_encode(in, strlen(in), buf, sizeof buf);
	if (ok(n >= 0, tap_fmt("imap_utf7_encode %s", what)))
		is_mem(buf, (size_t)n, want, strlen(want),
		    tap_fmt("imap_utf7_encode %s: result", what));
}

static void
utf7_bad(const char *in, size_t len, const char *what)
{
	char	buf[256];

	is_int(imap_utf7_encode(in, len, buf, sizeof buf), -1,
	    tap_fmt("imap_utf7_encode refuses %s", what));
}

/* RFC 3501 5.1.3's example: ~peter/mail/<taibei>/<nihongo> */
#define RFC_EXAMPLE	"~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97" \
			"\xa5\xe6\x9c\xac\xe8\xaa\x9e"

/*
 * A reference decoder: the one code point that the modified base64 s
 * (between "&" and "-") holds, or 0xffffffff if it is not exactly one.
 */
static uint32_t
utf7_decode_one(const char *s, size_t len)
{
	static const char	 b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij"
	    "klmnopqrstuvwxyz0123456789+,";
	uint32_t		 bits = 0, units[4];
	const char		*q;
	size_t			 i, nu = 0;
	int			 nbits = 0;

	for (i = 0; i < len; i++) {
		if ((q = strchr(b64, s[i])) == NULL || s[i] == '\0')
			return (0xffffffff);
		bits = (bits << 6) | (uint32_t)(q - b64);
		nbits += 6;
		if (nbits >= 16) {
			nbits -= 16;
			if (nu >= 4)
				return (0xffffffff);
			units[nu++] = (bits >> nbits) & 0xffff;
		}
	}
	/* the padding bits are zero and fewer than 6 */
	if (nbits >= 6 || (bits & ((1U << nbits) - 1)) != 0)
		return (0xffffffff);
	if (nu == 1 && (units[0] < 0xd800 || units[0] >= 0xe000))
		return (units[0]);
	if (nu == 2 && units[0] >= 0xd800 && units[0] < 0xdc00 &&
	    units[1] >= 0xdc00 && units[1] < 0xe000)
		return (0x10000 + ((units[0] - 0xd800) << 10) +
		    (units[1] - 0xdc00));
	return (0xffffffff);
}

static void
test_utf7(void)
{
	char	buf[64];
	size_t	need, k;
	int	short_ok = 1;

	utf7_ok("INBOX", "INBOX", "ASCII");
	utf7_ok("", "", "the empty name");
	/* RFC 3501 5.1.3 */
	utf7_ok(RFC_EXAMPLE, "~peter/mail/&U,BTFw-/&ZeVnLIqe-",
	    "RFC 3501's example");
	utf7_ok("&", "&-", "&");
	utf7_ok("Tom & Jerry", "Tom &- Jerry", "& inside");
	utf7_ok("&&", "&-&-", "two &");
	utf7_ok("Entw\xc3\xbc" "rfe", "Entw&APw-rfe", "Entwuerfe");
	utf7_ok("\xc3\x89t\xc3\xa9", "&AMk-t&AOk-", "Ete");
	utf7_ok("\xc3\x9cn\xc3\xaf" "code & Co", "&ANw-n&AO8-code &- Co",
	    "fakeimap's example");
	utf7_ok("\xe2\x82\xac", "&IKw-", "the euro sign");
	utf7_ok("\xc3\xa9\xc3\xa9\xc3\xa9", "&AOkA6QDp-",
	    "three in one shift");
	utf7_ok("\xc3\xa9&", "&AOk-&-", "& right after a shift");
	utf7_ok("\xc3\xa9-", "&AOk--", "a - right after a shift");
	utf7_ok("\xf0\x9f\x93\xac", "&2D3c7A-", "U+1F4EC: a surrogate pair");
	utf7_ok("a\xf0\x9f\x98\x80" "b", "a&2D3eAA-b", "U+1F600 between");
	utf7_ok("\xf4\x8f\xbf\xbf", "&2,,f,w-", "U+10FFFF");
	utf7_ok("\xef\xbf\xbf", "&,,8-", "U+FFFF");
	utf7_ok("\xc2\x80", "&AIA-", "U+0080");
	utf7_ok("/", "/", "slash");
	utf7_ok("a b", "a b", "space");
	utf7_ok("~", "~", "tilde");
	utf7_bad("\x01", 1, "a control character");
	utf7_bad("a\tb", 3, "a TAB");
	utf7_bad("\x7f", 1, "DEL");
	utf7_bad("a\0b", 3, "a NUL");
	utf7_bad("\x80", 1, "a lone continuation byte");
	utf7_bad("\xc3", 1, "a truncated sequence");
	utf7_bad("\xe2\x82", 2, "a truncated 3-byte sequence");
	utf7_bad("\xc3\x28", 2, "a bad continuation");
	utf7_bad("\xc0\xaf", 2, "an overlong /");
	utf7_bad("\xe0\x80\xaf", 3, "an overlong 3-byte /");
	utf7_bad("\xf0\x80\x80\xaf", 4, "an overlong 4-byte /");
	utf7_bad("\xed\xa0\x80", 3, "a high surrogate (U+D800)");
	utf7_bad("\xed\xbf\xbf", 3, "a low surrogate (U+DFFF)");
	utf7_bad("\xed\xa0\xbd\xed\xb3\xac", 6, "CESU-8 surrogates");
	utf7_bad("\xf4\x90\x80\x80", 4, "above U+10FFFF");
	utf7_bad("\xf8\x88\x80\x80\x80", 5, "a 5-byte sequence");
	utf7_bad("\xfe", 1, "0xFE");
	utf7_bad("\xff", 1, "0xFF");
	utf7_bad("ok\xc3", 3, "a sequence cut at the end");
	is_int(imap_utf7_encode("a\xc3\xa9", 2, buf, sizeof buf), -1,
	    "only its length (cut mid-sequence)");
	/* every output size below the need is refused, never overrun */
	need = 31;
	for (k = 0; k < need; k++) {
		char	small[64];

		memset(small, 'Z', sizeof small);
		if (imap_utf7_encode(RFC_EXAMPLE, strlen(RFC_EXAMPLE), small,
		    k) != -1 || small[k] != 'Z')
			short_ok = 0;
	}
	ok(short_ok, "imap_utf7_encode: every short buffer refused, none "
	    "overrun");
	is_int(imap_utf7_encode(RFC_EXAMPLE, strlen(RFC_EXAMPLE), buf, need),
	    31, "imap_utf7_encode: exactly fits");
	/* every BMP code point and a range of astral ones round-trip
	   through a reference decoder */
	{
		unsigned	cp, bad = 0;
		char		in[8], out[32];
		size_t		il;
		ssize_t		n;

		for (cp = 0x80; cp < 0x110000; cp += (cp < 0x10000 ? 1 :
		    97)) {
			if (cp >= 0xd800 && cp < 0xe000)
				continue;
			if (cp < 0x800) {
				in[0] = 0xc0 | (cp >> 6);
				in[1] = 0x80 | (cp & 0x3f);
				il = 2;
			} else if (cp < 0x10000) {
				in[0] = 0xe0 | (cp >> 12);
				in[1] = 0x80 | ((cp >> 6) & 0x3f);
				in[2] = 0x80 | (cp & 0x3f);
				il = 3;
			} else {
				in[0] = 0xf0 | (cp >> 18);
				in[1] = 0x80 | ((cp >> 12) & 0x3f);
				in[2] = 0x80 | ((cp >> 6) & 0x3f);
				in[3] = 0x80 | (cp & 0x3f);
				il = 4;
			}
			n = imap_utf7_encode(in, il, out, sizeof out);
			if (n < 3 || out[0] != '&' || out[n - 1] != '-' ||
			    utf7_decode_one(out + 1, (size_t)n - 2) != cp)
				bad++;
		}
		is_int(bad, 0, "imap_utf7_encode: every code point decodes "
		    "back");
	}
}

int
main(void)
{
	test_number();
	test_status();
	test_status_bad();
	test_data();
	test_data_bad();
	test_limits();
	test_truncations();
	test_mutations();
	test_literal_is_body();
	test_literal_marker();
	test_fetch_size_before();
	test_maildir_folder();
	test_fetch_att();
	test_node_string();
	test_has_word();
	test_quote();
	test_utf7();
	free(copy);
	return (done());
}
