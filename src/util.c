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
 * util.c: small helpers with no better home: clocks, directories, full
 * writes, a keyed hash, randomness and an edit distance.
 */

#include "config.h"

#include <sys/random.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "maild.h"

double
now_mono(void)
{
	struct timespec	ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (ts.tv_sec + ts.tv_nsec / 1e9);
}

/* fsync() the directory that holds path (path's last component). */
static int
fsync_parent(char *path)
{
	char	*slash = strrchr(path, '/');
	int	 r;

	if (slash == NULL)
		return (fsync_dir("."));
	if (slash == path)
		return (fsync_dir("/"));
	*slash = '\0';
	r = fsync_dir(path);
	*slash = '/';
	return (r);
}

/*
 * Create a directory and its missing parents; existing ones are fine.
 * Each directory made is made durable in its parent: a state or a Maildir
 * that state records refer to must not vanish with a power cut.
 */
int
mkdir_p(const char *path, mode_t mode)
{
	char		 buf[PATH_MAX];
	char		*p;
	struct stat	 sb;
	size_t		 len = strlen(path);

	if (len == 0 || len >= sizeof buf) {
		errno = ENAMETOOLONG;
		return (-1);
	}
	memcpy(buf, path, len + 1);
	for (p = buf + 1; *p != '\0'; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) == 0) {
			if (fsync_parent(buf) == -1)
				return (-1);
		} else if (errno != EEXIST)
			return (-1);
		*p = '/';
	}
	if (mkdir(buf, mode) == 0)
		return (fsync_parent(buf));
	if (errno != EEXIST)
		return (-1);
	if (stat(buf, &sb) == -1)
		return (-1);
	if (!S_ISDIR(sb.st_mode)) {
		errno = ENOTDIR;
		return (-1);
	}
	return (0);
}

/*
 * Make a directory's entries durable.  Some file systems cannot fsync a
 * directory (EINVAL); there is nothing more to do on those.
 */
int
fsync_dir(const char *path)
{
	int	fd, r;

	if ((fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		return (-1);
	r = fsync(fd);
	if (r == -1 && (errno == EINVAL || errno == EROFS))
		r = 0;
	close(fd);
	return (r);
}

/*
 * Is fd (opened from path) a regular file that only its owner can read?
 * Files holding secrets (passwords, private keys) must be.  what names
 * the file in the message, "password-file" say.
 */
int
private_file(int fd, const char *what, const char *path, char **cause)
{
	struct stat	sb;

	if (fstat(fd, &sb) == -1) {
		xasprintf(cause, "%s %s: %s", what, path, strerror(errno));
		return (-1);
	}
	if (!S_ISREG(sb.st_mode)) {
		xasprintf(cause, "%s %s: not a regular file", what, path);
		return (-1);
	}
	if ((sb.st_mode & (S_IRWXG | S_IRWXO)) != 0) {
		xasprintf(cause, "%s %s is readable by others (mode %04o); run "
		    "'chmod 600 %s'", what, path, (unsigned)(sb.st_mode & 07777),
		    path);
		return (-1);
	}
	return (0);
}

/* private_file(), by path. */
int
private_path(const char *what, const char *path, char **cause)
{
	int	fd, r;

	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) == -1) {
		xasprintf(cause, "%s %s: %s", what, path, strerror(errno));
		return (-1);
	}
	r = private_file(fd, what, path, cause);
	close(fd);
	return (r);
}

/*
 * Lock a file with an open-file-description lock (which, unlike a POSIX
 * record lock, conflicts within one process too, and goes with the fd
 * across fork()), and write our pid into it.  Returns 0 with *fdp, -1 if
 * another holds it (*holder: its pid, or 0 if unknown), -2 with errno set
 * if the file cannot be opened or locked.
 */
int
lock_file(const char *path, int *fdp, long *holder)
{
	struct flock	fl;
	char		buf[32];
	ssize_t		n;
	int		fd;

	*holder = 0;
	if ((fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) == -1)
		return (-2);
	memset(&fl, 0, sizeof fl);
	fl.l_type = F_WRLCK;
	fl.l_whence = SEEK_SET;
	if (fcntl(fd, F_OFD_SETLK, &fl) == 0) {
		lock_file_pid(fd);
		*fdp = fd;
		return (0);
	}
	if (errno != EACCES && errno != EAGAIN) {
		n = errno;
		close(fd);
		errno = (int)n;
		return (-2);
	}
	n = pread(fd, buf, sizeof buf - 1, 0);
	buf[n > 0 ? n : 0] = '\0';
	*holder = strtol(buf, NULL, 10);
	close(fd);
	return (-1);
}

/* (Re)write our pid into a lock file we hold (after fork(), say). */
void
lock_file_pid(int fd)
{
	char	buf[32];
	int	n;

	n = snprintf(buf, sizeof buf, "%ld\n", (long)getpid());
	if (ftruncate(fd, 0) == 0)
		(void)pwrite(fd, buf, n, 0);
}

/* write(2) all of buf, retrying short writes. */
int
write_full(int fd, const void *buf, size_t len)
{
	const char	*p = buf;
	ssize_t		 n;

	while (len > 0) {
		n = write(fd, p, len);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			return (-1);
		}
		if (n == 0) {
			errno = EIO;
			return (-1);
		}
		p += n;
		len -= n;
	}
	return (0);
}

/*
 * SipHash-2-4: lookup tables are keyed with it because their keys (UIDLs)
 * come from the server, which must not be able to force collisions.
 */
#define ROTL(x, b)	(uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND do {							\
	v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);	\
	v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;				\
	v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;				\
	v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);	\
} while (0)

static uint64_t
le64(const uint8_t *p)
{
	uint64_t	v = 0;
	int		i;

	for (i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return (v);
}

uint64_t
siphash24(const uint8_t key[16], const void *data, size_t len)
{
	const uint8_t	*in = data;
	uint64_t	 k0 = le64(key), k1 = le64(key + 8);
	uint64_t	 v0 = 0x736f6d6570736575ULL ^ k0;
	uint64_t	 v1 = 0x646f72616e646f6dULL ^ k1;
	uint64_t	 v2 = 0x6c7967656e657261ULL ^ k0;
	uint64_t	 v3 = 0x7465646279746573ULL ^ k1;
	uint64_t	 m, b = ((uint64_t)len) << 56;
	size_t		 i, left = len & 7;

	for (i = 0; i + 8 <= len; i += 8) {
		m = le64(in + i);
		v3 ^= m;
		SIPROUND;
		SIPROUND;
		v0 ^= m;
	}
	for (; left > 0; left--)
		b |= ((uint64_t)in[i + left - 1]) << (8 * (left - 1));
	v3 ^= b;
	SIPROUND;
	SIPROUND;
	v0 ^= b;
	v2 ^= 0xff;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	SIPROUND;
	return (v0 ^ v1 ^ v2 ^ v3);
}

void
random_bytes(void *buf, size_t len)
{
	char	*p = buf;
	ssize_t	 n;

	while (len > 0) {
		n = getrandom(p, len, 0);
		if (n == -1) {
			if (errno == EINTR)
				continue;
			fatal("getrandom");
		}
		p += n;
		len -= n;
	}
}

/* Clear memory that held a secret, in a way the compiler cannot drop. */
void
wipe(void *p, size_t len)
{
#ifdef HAVE_EXPLICIT_BZERO
	explicit_bzero(p, len);
#else
	volatile unsigned char	*vp = p;

	while (len-- > 0)
		*vp++ = 0;
#endif
}

/*
 * How many single-character insertions, deletions, substitutions and
 * swaps of neighbours turn a into b (the optimal string alignment
 * distance): "kep" is 1 from "keep", "hsot" 1 from "host".
 */
size_t
edit_distance(const char *a, const char *b)
{
	size_t	 la = strlen(a), lb = strlen(b), i, j, cost, d;
	size_t	*prev2, *prev, *cur, *t;

	prev2 = xcalloc(lb + 1, sizeof *prev2);
	prev = xcalloc(lb + 1, sizeof *prev);
	cur = xcalloc(lb + 1, sizeof *cur);
	for (j = 0; j <= lb; j++)
		prev[j] = j;
	for (i = 1; i <= la; i++) {
		cur[0] = i;
		for (j = 1; j <= lb; j++) {
			cost = a[i - 1] != b[j - 1];
			d = prev[j - 1] + cost;
			if (prev[j] + 1 < d)
				d = prev[j] + 1;
			if (cur[j - 1] + 1 < d)
				d = cur[j - 1] + 1;
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] &&
			    a[i - 2] == b[j - 1] && prev2[j - 2] + 1 < d)
				d = prev2[j - 2] + 1;
			cur[j] = d;
		}
		t = prev2;
		prev2 = prev;
		prev = cur;
		cur = t;
	}
	d = prev[lb];
	free(prev2);
	free(prev);
	free(cur);
	return (d);
}
