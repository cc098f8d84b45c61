/*
 * replay.c: a main() for the fuzz targets when libFuzzer is not there, so
 * that "make check" runs every seed and every input that once crashed a
 * target (tests/fuzz/corpus/<target>/) through it, under whatever
 * sanitizers the build has.  Prints one TAP line per input file.
 */

#include <sys/stat.h>

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);
int	LLVMFuzzerInitialize(int *, char ***) __attribute__((weak));

static int	n;

static void
replay_file(const char *path)
{
	FILE	*f;
	uint8_t	*buf;
	long	 len;

	if ((f = fopen(path, "rb")) == NULL) {
		printf("not ok %d - %s: cannot open\n", ++n, path);
		return;
	}
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc(len > 0 ? (size_t)len : 1);
	if (buf == NULL || fread(buf, 1, (size_t)len, f) != (size_t)len) {
		printf("not ok %d - %s: cannot read\n", ++n, path);
		fclose(f);
		free(buf);
		return;
	}
	fclose(f);
	LLVMFuzzerTestOneInput(buf, (size_t)len);
	free(buf);
	/* A failure aborts the process: reaching here is a pass. */
	printf("ok %d - %s\n", ++n, path);
	fflush(stdout);
}

static int
compare(const void *a, const void *b)
{
	return (strcmp(*(char *const *)a, *(char *const *)b));
}

int
main(int argc, char **argv)
{
	struct stat	 sb;
	struct dirent	*de;
	DIR		*d;
	char		 path[4096], **names = NULL;
	size_t		 nnames = 0, i;
	int		 a;

	if (LLVMFuzzerInitialize != NULL)
		LLVMFuzzerInitialize(&argc, &argv);
	for (a = 1; a < argc; a++) {
		if (stat(argv[a], &sb) == 0 && !S_ISDIR(sb.st_mode)) {
			replay_file(argv[a]);
			continue;
		}
		if ((d = opendir(argv[a])) == NULL)
			continue;
		while ((de = readdir(d)) != NULL) {
			if (de->d_name[0] == '.')
				continue;
			char	**nn = realloc(names, (nnames + 1) *
				    sizeof *names);

			if (nn == NULL)
				abort();
			names = nn;
			snprintf(path, sizeof path, "%s/%s", argv[a],
			    de->d_name);
			if ((names[nnames++] = strdup(path)) == NULL)
				abort();
		}
		closedir(d);
	}
	if (nnames > 0)
		qsort(names, nnames, sizeof *names, compare);
	for (i = 0; i < nnames; i++) {
		replay_file(names[i]);
		free(names[i]);
	}
	free(names);
	printf("1..%d\n", n);
	return (0);
}
