/*
 * fuzz_state.c: the state loader (snapshot and journal), on arbitrary
 * contents, and the escaping of keys, which must round-trip.  The input
 * is split at the first "\n--\n" into a snapshot and a journal; each is
 * loaded twice: as it is (checksums will rarely match, so this explores
 * the refusals), and with correct checksums added by this harness (so
 * that the record parser is reached too).
 */

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "maild.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);
int	LLVMFuzzerInitialize(int *, char ***);

static char	path[] = "/tmp/maild-fuzz-state.XXXXXX";
static char	jpath[64];

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int	fd;

	log_setverbose(-2);
	if ((fd = mkstemp(path)) == -1)
		abort();
	close(fd);
	snprintf(jpath, sizeof jpath, "%s.journal", path);
	return (0);
}


/* FNV-1a, as state.c sums its files. */
static uint64_t
sum(const uint8_t *p, size_t len, unsigned *lines)
{
	uint64_t	h = 0xcbf29ce484222325ULL;

	*lines = 0;
	while (len-- > 0) {
		if (*p == '\n')
			(*lines)++;
		h ^= *p++;
		h *= 0x100000001b3ULL;
	}
	return (h);
}

static void
write_parts(const uint8_t *snap, size_t slen, const uint8_t *jnl,
    size_t jlen, int fix)
{
	FILE		*f;
	unsigned	 lines;
	uint64_t	 h;

	if ((f = fopen(path, "w")) == NULL)
		abort();
	fwrite(snap, 1, slen, f);
	if (fix && (slen == 0 || snap[slen - 1] == '\n')) {
		h = sum(snap, slen, &lines);
		fprintf(f, "end %u %016llx\n", lines, (unsigned long long)h);
	}
	fclose(f);
	unlink(jpath);
	if (jnl == NULL)
		return;
	if ((f = fopen(jpath, "w")) == NULL)
		abort();
	if (fix)
		fprintf(f, "maild-journal 2 0\n");
	fwrite(jnl, 1, jlen, f);
	if (fix && (jlen == 0 || jnl[jlen - 1] == '\n')) {
		h = sum(jnl, jlen, &lines);
		fprintf(f, "C %u %016llx\n", lines, (unsigned long long)h);
	}
	fclose(f);
}

/* Load; if that works, every live record must be found by its key. */
static void
load_and_check(void)
{
	struct state		*st;
	const struct state_rec	*r;
	const char		*key;
	size_t			 len;
	uint32_t		 it = 0;
	char			*cause = NULL;

	st = state_new();
	if (state_load(st, path, jpath, &cause) == 0) {
		while ((r = state_next(st, &it)) != NULL) {
			key = state_rec_key(st, r, &len);
			if (state_find(st, key, len, r->ordinal) !=
			    state_rec_id(st, r))
				abort();
			if (r->kind == STATE_PENDING &&
			    state_rec_file(st, r) == NULL)
				abort();
		}
	}
	free(cause);
	state_close(st);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t	*sep = NULL, *jnl = NULL;
	char		*esc, *raw;
	size_t		 rawlen, slen = size, jlen = 0, i;

	esc = state_escape((const char *)data, size);
	if (state_unescape(esc, strlen(esc), &raw, &rawlen) != 0 ||
	    rawlen != size || memcmp(raw, data, size) != 0)
		abort();
	free(raw);
	free(esc);

	for (i = 0; i + 4 <= size; i++) {
		if (memcmp(data + i, "\n--\n", 4) == 0) {
			sep = data + i;
			break;
		}
	}
	if (sep != NULL) {
		slen = sep - data + 1;
		jnl = sep + 4;
		jlen = size - (jnl - data);
	}
	write_parts(data, slen, jnl, jlen, 0);
	load_and_check();
	write_parts(data, slen, jnl, jlen, 1);
	load_and_check();
	return (0);
}
