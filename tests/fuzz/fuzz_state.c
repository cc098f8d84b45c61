/*
 * fuzz_state.c: the state file loader, on arbitrary file contents, and
 * the escaping of UIDLs, which must round-trip.
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

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int	fd;

	log_setverbose(-2);
	if ((fd = mkstemp(path)) == -1)
		abort();
	close(fd);
	return (0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct state	*st;
	FILE		*f;
	char		*cause = NULL, *esc, *raw;
	size_t		 rawlen, i;

	esc = state_escape((const char *)data, size);
	if (state_unescape(esc, strlen(esc), &raw, &rawlen) != 0 ||
	    rawlen != size || memcmp(raw, data, size) != 0)
		abort();
	free(raw);
	free(esc);

	if ((f = fopen(path, "w")) == NULL)
		abort();
	fwrite(data, 1, size, f);
	fclose(f);
	st = state_new();
	if (state_load_file(st, path, &cause) == 0) {
		for (i = 0; i < st->nentries; i++) {
			struct state_entry *e = st->entries[i];

			if (state_find(st, e->uidl, e->uidl_len,
			    e->ordinal) != e)
				abort();
		}
		/* Nothing was listed: only pending deliveries survive. */
		state_forget_unlisted(st);
		for (i = 0; i < st->nentries; i++) {
			if (st->entries[i]->kind != STATE_PENDING)
				abort();
		}
	}
	free(cause);
	state_close(st);
	return (0);
}
