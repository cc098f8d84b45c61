/*
 * files.h: the unit tests' scratch directory and small file helpers.
 * Include after maild.h (xasprintf, xmalloc, write_full) and tap.h.
 * Errors in the test's own set-up exit 99, which the TAP driver reports
 * as a hard error rather than a failed check.
 */

#ifndef FILES_H
#define FILES_H

#include <sys/stat.h>

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

TAP_FN int
rm_cb(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	(void)sb;
	(void)type;
	(void)ftw;
	return (remove(path));
}

TAP_FN void
rm_rf(const char *path)
{
	nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* A new directory $TMPDIR/maild-test-<name>.XXXXXX (or under /tmp). */
TAP_FN char *
mkscratch(const char *name)
{
	const char	*t = getenv("TMPDIR");
	char		*dir;

	xasprintf(&dir, "%s/maild-test-%s.XXXXXX",
	    t != NULL && *t == '/' ? t : "/tmp", name);
	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		exit(99);
	}
	return (dir);
}

TAP_FN void
write_file(const char *path, const void *data, size_t len)
{
	int	fd;

	if ((fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600)) == -1 ||
	    write_full(fd, data, len) == -1 || close(fd) == -1) {
		perror(path);
		exit(99);
	}
}

/* The whole file, NUL-terminated; NULL if it cannot be opened. */
TAP_FN char *
read_file(const char *path, size_t *lenp)
{
	FILE	*f;
	char	*buf;
	size_t	 cap = 1 << 16, len = 0, n;

	if ((f = fopen(path, "r")) == NULL)
		return (NULL);
	buf = xmalloc(cap + 1);
	while ((n = fread(buf + len, 1, cap - len, f)) > 0) {
		len += n;
		if (len == cap) {
			cap *= 2;
			buf = xreallocarray(buf, cap + 1, 1);
		}
	}
	fclose(f);
	buf[len] = '\0';
	if (lenp != NULL)
		*lenp = len;
	return (buf);
}

TAP_FN int
exists(const char *path)
{
	struct stat	sb;

	return (lstat(path, &sb) == 0);
}

/* How many entries a directory has, less "." and ".."; -1 if none. */
TAP_FN int
count_dir(const char *path)
{
	DIR		*d;
	struct dirent	*de;
	int		 n = 0;

	if ((d = opendir(path)) == NULL)
		return (-1);
	while ((de = readdir(d)) != NULL) {
		if (strcmp(de->d_name, ".") != 0 &&
		    strcmp(de->d_name, "..") != 0)
			n++;
	}
	closedir(d);
	return (n);
}

#endif /* FILES_H */
