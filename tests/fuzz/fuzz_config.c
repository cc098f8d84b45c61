/*
 * fuzz_config.c: the configuration loader (libconfuse, maild's checks,
 * comment stripping) on arbitrary file contents.
 */

#include <sys/stat.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "maild.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);
int	LLVMFuzzerInitialize(int *, char ***);

static char	path[] = "/tmp/maild-fuzz-conf.XXXXXX";

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	int	fd;

	log_setverbose(-2);
	setenv("HOME", "/tmp", 1);
	if ((fd = mkstemp(path)) == -1)
		abort();
	close(fd);
	return (0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct config	*conf;
	FILE		*f;
	char		*cause = NULL;

	if ((f = fopen(path, "w")) == NULL)
		abort();
	fwrite(data, 1, size, f);
	fclose(f);
	chmod(path, 0600);
	conf = config_load(path, &cause);
	if (conf == NULL && cause == NULL)
		abort();
	config_free(conf);
	free(cause);
	return (0);
}
