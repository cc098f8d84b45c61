/*
 * fuzz_imap.c: the IMAP response parser and encoders of imap_parse.c.
 *
 * The input is parsed whole as one response (and again with CRLF added,
 * so that most inputs get past the first check), into a node array of a
 * size taken from the input.  A response that parses must keep the
 * parser's promises: every node's bytes inside the input, child and next
 * indexes below nnodes, each node reached once from the data (no cycle,
 * none left over), lists spanning "(...)", numbers that are numbers, and
 * the code and text of a status response inside the input.  Each node
 * is read back with imap_node_string() and imap_node_number(), the FETCH
 * attributes maild uses are looked up.
 *
 * imap_literal_marker(), imap_literal_is_body() and
 * imap_fetch_size_before() see every prefix of the input that ends in
 * "}" CRLF (as the session asks at the end of each line).
 *
 * imap_maildir_folder() gets the input as a folder name, with each of
 * the separators servers use: a name it gives is "." and then bytes
 * that hold no "/" and no empty level ("..").
 *
 * imap_utf7_encode() gets the input as a folder name: if it accepts it,
 * the result is printable ASCII whose "&...-" runs decode back (a
 * reference decoder, here) to exactly the input.  imap_quote() gets it
 * too: what it quotes parses back to the same bytes.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "maild.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

#define NODES_MAX	512

static struct imap_node	nodes[NODES_MAX];

static void
check_inside(const char *buf, size_t len, const char *p, size_t plen)
{
	if (p == NULL) {
		if (plen != 0)
			abort();
		return;
	}
	if (p < buf || p > buf + len || plen > (size_t)(buf + len - p))
		abort();
}

/* The tree of a parsed response keeps its promises. */
static void
check_tree(const struct imap_resp *r, const char *buf, size_t len,
    size_t max)
{
	static unsigned char	 seen[NODES_MAX];
	static size_t		 stack[NODES_MAX + 1];
	const struct imap_node	*n;
	size_t			 sp = 0, i, k;
	uint64_t		 v;
	char			 s[64];
	ssize_t			 sl;

	if (r->nnodes > max || r->nodes != nodes)
		abort();
	check_inside(buf, len, r->tag, r->taglen);
	check_inside(buf, len, r->code, r->codelen);
	check_inside(buf, len, r->codeargs, r->codeargslen);
	check_inside(buf, len, r->text, r->textlen);
	if (strnlen(r->name, sizeof r->name) >= sizeof r->name)
		abort();
	if (r->kind == IMAP_TAGGED && (r->cond == IMAP_COND_NONE ||
	    r->taglen == 0 || r->taglen > IMAP_TAG_MAX))
		abort();
	if (r->cond != IMAP_COND_NONE && r->data != IMAP_NONE)
		abort();
	memset(seen, 0, r->nnodes);
	if (r->data == IMAP_NONE) {
		if (r->nnodes != 0)
			abort();
		return;
	}
	if (r->data >= r->nnodes)
		abort();
	stack[sp++] = r->data;
	while (sp > 0) {
		for (i = stack[--sp]; i != IMAP_NONE; i = n->next) {
			if (i >= r->nnodes || seen[i])
				abort();
			seen[i] = 1;
			n = &r->nodes[i];
			check_inside(buf, len, n->p, n->len);
			switch (n->type) {
			case IMAP_LIST:
				if (n->len < 2 || n->p[0] != '(' ||
				    n->p[n->len - 1] != ')')
					abort();
				if (n->child != IMAP_NONE) {
					if (sp > NODES_MAX)
						abort();
					stack[sp++] = n->child;
				}
				if (imap_node_string(r, i, s, sizeof s) != -1)
					abort();
				break;
			case IMAP_NUMBER:
				if (imap_number(n->p, n->len, UINT64_MAX, &v) ==
				    -1 || v != n->num)
					abort();
				if (imap_node_number(r, i, UINT64_MAX, &v) ==
				    -1 || v != n->num)
					abort();
				/* FALLTHROUGH */
			default:
				if (n->child != IMAP_NONE)
					abort();
				sl = imap_node_string(r, i, s, sizeof s);
				if (sl > (ssize_t)n->len || (sl == -1 &&
				    n->len <= sizeof s && n->type !=
				    IMAP_NIL && !n->quoted))
					abort();
				if (n->type == IMAP_NIL && sl != 0)
					abort();
				break;
			}
		}
	}
	for (k = 0; k < r->nnodes; k++) {
		if (!seen[k])
			abort();
	}
	/* what the session looks up */
	(void)imap_node_number(r, imap_fetch_att(r, "UID"), UINT32_MAX, &v);
	(void)imap_node_number(r, imap_fetch_att(r, "RFC822.SIZE"),
	    IMAP_LITERAL_LEN_MAX, &v);
	(void)imap_node_number(r, imap_fetch_att(r, "X-GM-MSGID"),
	    UINT64_MAX, &v);
	i = imap_fetch_att(r, "BODY[]");
	if (i != IMAP_NONE && i >= r->nnodes)
		abort();
	i = imap_fetch_att(r, "FLAGS");
	if (i != IMAP_NONE && i >= r->nnodes)
		abort();
}

static void
fuzz_parse(const char *buf, size_t len, size_t max)
{
	struct imap_resp	r;

	if (imap_parse(buf, len, nodes, max, &r) == 0)
		check_tree(&r, buf, len, max);
}

/* Each prefix ending in "}" CRLF, as the session asks. */
static void
fuzz_literal_is_body(const char *buf, size_t len)
{
	uint64_t	n;
	size_t		i;
	int		x;

	for (i = 3; i <= len; i++) {
		if (buf[i - 1] != '\n' || buf[i - 2] != '\r' ||
		    buf[i - 3] != '}')
			continue;
		n = 0;
		x = imap_literal_marker(buf, i);
		if (x < 0 || x > 1)
			abort();
		x = imap_literal_is_body(buf, i, &n);
		if (x < -1 || x > 1 || (x >= 0 && n > IMAP_LITERAL_LEN_MAX))
			abort();
		n = 0;
		if (imap_fetch_size_before(buf, i, &n) == 0 &&
		    n > IMAP_LITERAL_LEN_MAX)
			abort();
	}
}

/* A Maildir++ name never leaves the Maildir. */
static void
fuzz_maildir_folder(const char *in, size_t len)
{
	static const char	delims[] = { '/', '.', '\0' };
	char			buf[256];
	ssize_t			n;
	size_t			i, k;

	for (k = 0; k < sizeof delims; k++) {
		n = imap_maildir_folder(in, len, delims[k], buf, sizeof buf);
		if (n < -1 || n >= (ssize_t)sizeof buf)
			abort();
		if (n <= 0)
			continue;
		if (buf[0] != '.' || buf[n] != '\0' || n < 2 ||
		    buf[n - 1] == '.')
			abort();
		for (i = 0; i < (size_t)n; i++) {
			if (buf[i] == '/' || buf[i] == '\0' ||
			    (buf[i] == '.' && i > 0 && buf[i - 1] == '.'))
				abort();
		}
	}
}

static int
b64val(int c)
{
	static const char	b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnop"
	    "qrstuvwxyz0123456789+,";
	const char		*q;

	if (c == '\0' || (q = strchr(b64, c)) == NULL)
		return (-1);
	return ((int)(q - b64));
}

/* Modified UTF-7 back to UTF-8 (strict); -1 if it is not valid. */
static ssize_t
utf7_decode(const char *in, size_t len, char *out, size_t size)
{
	size_t		i = 0, o = 0;
	uint32_t	bits, unit, hi, cp;
	int		nbits, v, nunits;

	while (i < len) {
		if (in[i] != '&') {
			if (o >= size)
				return (-1);
			out[o++] = in[i++];
			continue;
		}
		i++;
		if (i < len && in[i] == '-') {
			if (o >= size)
				return (-1);
			out[o++] = '&';
			i++;
			continue;
		}
		bits = 0;
		nbits = 0;
		hi = 0;
		nunits = 0;
		while (i < len && in[i] != '-') {
			if ((v = b64val((unsigned char)in[i++])) == -1)
				return (-1);
			bits = (bits << 6) | (uint32_t)v;
			nbits += 6;
			if (nbits < 16)
				continue;
			nbits -= 16;
			unit = (bits >> nbits) & 0xffff;
			bits &= (1U << nbits) - 1;
			nunits++;
			if (unit >= 0xd800 && unit < 0xdc00) {
				if (hi != 0)
					return (-1);
				hi = unit;
				continue;
			}
			if (unit >= 0xdc00 && unit < 0xe000) {
				if (hi == 0)
					return (-1);
				cp = 0x10000 + ((hi - 0xd800) << 10) +
				    (unit - 0xdc00);
				hi = 0;
			} else {
				if (hi != 0 || unit < 0x80)
					return (-1);
				cp = unit;
			}
			if (o + 4 > size)
				return (-1);
			if (cp < 0x800) {
				out[o++] = (char)(0xc0 | (cp >> 6));
				out[o++] = (char)(0x80 | (cp & 0x3f));
			} else if (cp < 0x10000) {
				out[o++] = (char)(0xe0 | (cp >> 12));
				out[o++] = (char)(0x80 | ((cp >> 6) & 0x3f));
				out[o++] = (char)(0x80 | (cp & 0x3f));
			} else {
				out[o++] = (char)(0xf0 | (cp >> 18));
				out[o++] = (char)(0x80 | ((cp >> 12) & 0x3f));
				out[o++] = (char)(0x80 | ((cp >> 6) & 0x3f));
				out[o++] = (char)(0x80 | (cp & 0x3f));
			}
		}
		/* "-" closes; padding under 6 bits and zero; not empty */
		if (i >= len || hi != 0 || nbits >= 6 || bits != 0 ||
		    nunits == 0)
			return (-1);
		i++;
	}
	return ((ssize_t)o);
}

static void
fuzz_utf7(const char *in, size_t len)
{
	static char	out[8 * 4096 + 16], back[4096 + 16];
	ssize_t		n, m;
	size_t		i;

	if (len > 4096)
		return;
	n = imap_utf7_encode(in, len, out, sizeof out);
	if (n == -1)
		return;
	if ((size_t)n > sizeof out)
		abort();
	for (i = 0; i < (size_t)n; i++) {
		if ((unsigned char)out[i] < 0x20 ||
		    (unsigned char)out[i] >= 0x7f)
			abort();
	}
	m = utf7_decode(out, (size_t)n, back, sizeof back);
	if (m != (ssize_t)len || memcmp(back, in, len) != 0)
		abort();
	/* a shorter buffer: refused, never overrun */
	if (n > 0) {
		memset(out, 0x55, sizeof out);
		if (imap_utf7_encode(in, len, out, (size_t)n - 1) != -1 ||
		    out[n - 1] != 0x55)
			abort();
	}
}

/* What imap_quote() makes parses back to the same bytes. */
static void
fuzz_quote(const char *in, size_t len)
{
	static char		line[2 * 1024 + 16], back[1024];
	struct imap_resp	r;
	ssize_t			n, m;

	if (len > 1000)
		return;
	memcpy(line, "* X ", 4);
	n = imap_quote(in, len, line + 4, sizeof line - 6);
	if (n == -1)
		return;
	if (n < 2 || (size_t)n > 2 * len + 2)
		abort();
	memcpy(line + 4 + n, "\r\n", 2);
	if (imap_parse(line, (size_t)n + 6, nodes, NODES_MAX, &r) == -1)
		abort();
	m = imap_node_string(&r, r.data, back, sizeof back);
	if (m != (ssize_t)len || memcmp(back, in, len) != 0)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char	*in = (const char *)data;
	char		*buf;
	size_t		 max;

	if (size < 1)
		return (0);
	/* the first byte: how many nodes the parser may use */
	max = data[0] % 4 == 0 ? NODES_MAX : data[0] % 64;
	in++;
	size--;
	/* an exact copy, so that reading past the end is seen */
	if ((buf = malloc(size + 2)) == NULL)
		abort();
	memcpy(buf, in, size);
	fuzz_parse(buf, size, max);
	fuzz_literal_is_body(buf, size);
	fuzz_utf7(buf, size);
	fuzz_quote(buf, size);
	fuzz_maildir_folder(buf, size);
	free(buf);
	if ((buf = malloc(size + 2)) == NULL)
		abort();
	memcpy(buf, in, size);
	memcpy(buf + size, "\r\n", 2);
	fuzz_parse(buf, size + 2, max);
	fuzz_literal_is_body(buf, size + 2);
	free(buf);
	return (0);
}
