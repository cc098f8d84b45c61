/*
 * fuzz_body.c: the dot-unstuffing body decoder.  The input is decoded in
 * one go and again in chunks whose sizes come from the input itself; the
 * two must agree byte for byte (the decoder keeps its state across
 * chunks), and each call must keep its promises: it never writes more
 * than one byte beyond what it read, and stops right after the ".".
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "maild.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

static size_t
decode_all(const char *in, size_t len, size_t step, char *out, int *done)
{
	struct body_decoder	d;
	size_t			o = 0, pos = 0, n, used, got;

	body_decoder_init(&d);
	while (pos < len && !d.done) {
		n = len - pos;
		if (step > 0 && n > step)
			n = step;
		used = body_decode(&d, in + pos, n, out + o, &got);
		if (used > n || got > n + 1)
			abort();
		if (!d.done && used != n)
			abort();
		o += got;
		pos += used;
		step = step * 7 % 13 + 1;	/* vary the chunk sizes */
	}
	*done = d.done;
	return (o);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char	*a, *b;
	size_t	 la, lb, step;
	int	 da, db;

	if (size < 1)
		return (0);
	step = data[0] % 17 + 1;
	data++;
	size--;
	a = malloc(size + 2);
	b = malloc(size + 2);
	if (a == NULL || b == NULL)
		abort();
	la = decode_all((const char *)data, size, 0, a, &da);
	lb = decode_all((const char *)data, size, step, b, &db);
	if (la != lb || da != db || memcmp(a, b, la) != 0)
		abort();
	if (la > size + 1)
		abort();
	free(a);
	free(b);
	return (0);
}
