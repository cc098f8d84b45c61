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
 * maildir.c: delivery into a Maildir.  A message is written to tmp/ under a
 * unique name, made durable, and only then renamed into new/, where mail
 * readers see it; a reader never sees a partial message.  The order of the
 * fsyncs across a batch of messages is driven by deliver.c (see the commit
 * protocol there); this file provides the steps, and knows nothing of
 * accounts' states or of any protocol.
 *
 * Names follow the Maildir conventions: "<sec>.M<usec>P<pid>Q<seq>A<tag>.
 * <host>" in tmp/, with ",S=<size>" appended in new/.  <tag> identifies
 * the account, so that after a crash maild can remove its own partial
 * files from tmp/ without touching those of other programs.
 */

#include "config.h"

#include <sys/stat.h>
#include <sys/time.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "maild.h"

static char	maildir_host[128];
static uint32_t	maildir_seq;


/* The host name with '/', ':' and ',' escaped, as Maildir names need. */
static const char *
maildir_hostname(void)
{
	char	host[256];
	size_t	i, o = 0;

	if (maildir_host[0] != '\0')
		return (maildir_host);
	if (gethostname(host, sizeof host) == -1 || host[0] == '\0')
		snprintf(host, sizeof host, "localhost");
	host[sizeof host - 1] = '\0';
	for (i = 0; host[i] != '\0' && o + 5 < sizeof maildir_host; i++) {
		unsigned char	c = host[i];

		if (c == '/' || c == ':' || c == ',' || c == '\\' ||
		    c < 0x21 || c > 0x7e) {
			snprintf(maildir_host + o, 5, "\\%03o", c);
			o += 4;
		} else
			maildir_host[o++] = c;
	}
	maildir_host[o] = '\0';
	return (maildir_host);
}

/* Make a new unique base name for a file in tmp/. */
int
maildir_make_name(char *buf, size_t size, uint32_t tag)
{
	struct timeval	tv;
	int		n;

	gettimeofday(&tv, NULL);
	n = snprintf(buf, size, "%lld.M%06ldP%ldQ%uA%08x.%s",
	    (long long)tv.tv_sec, (long)tv.tv_usec, (long)getpid(),
	    ++maildir_seq, tag, maildir_hostname());
	return (n < 0 || (size_t)n >= size ? -1 : 0);
}

/* Find the account tag in a name maild made; -1 if it is not ours. */
int
maildir_name_tag(const char *name, uint32_t *tag)
{
	const char	*dot1, *dot2, *a;
	uint32_t	 v = 0;
	int		 i;

	if ((dot1 = strchr(name, '.')) == NULL ||
	    (dot2 = strchr(dot1 + 1, '.')) == NULL)
		return (-1);
	if (dot1[1] != 'M' || dot2 - dot1 < 10)
		return (-1);
	a = dot2 - 9;
	if (*a != 'A')
		return (-1);
	for (i = 1; i <= 8; i++) {
		int	c = (unsigned char)a[i], d;

		/* maildir_make_name() writes lower case only. */
		if ((c >= 'A' && c <= 'F') || (d = parse_hexdigit(c)) == -1)
			return (-1);
		v = v << 4 | (uint32_t)d;
	}
	*tag = v;
	return (0);
}

/*
 * Open a Maildir, creating it and its cur/, new/ and tmp/ (mode 0700) if
 * they are missing.
 */
int
maildir_open(struct maildir *md, const char *path, uint32_t tag,
    const char *account, char **cause)
{
	char		 sub[PATH_MAX];
	const char	*dirs[] = { "cur", "new", "tmp" };
	struct stat	 sb;
	size_t		 i;
	int		 made = 0;

	memset(md, 0, sizeof *md);
	md->tmpfd = md->newfd = -1;
	md->tag = tag;
	md->account = account;
	if (mkdir_p(path, 0700) == -1) {
		xasprintf(cause, "maildir %s: %s", path, strerror(errno));
		return (-1);
	}
	for (i = 0; i < 3; i++) {
		snprintf(sub, sizeof sub, "%s/%s", path, dirs[i]);
		if (mkdir(sub, 0700) == 0)
			made = 1;
		else if (errno != EEXIST)
			goto fail;
		if (stat(sub, &sb) == -1)
			goto fail;
		if (!S_ISDIR(sb.st_mode)) {
			errno = ENOTDIR;
			goto fail;
		}
	}
	/* The new subdirectories must survive a power cut. */
	if (made && fsync_dir(path) == -1) {
		snprintf(sub, sizeof sub, "%s", path);
		goto fail;
	}
	snprintf(sub, sizeof sub, "%s/tmp", path);
	if ((md->tmpfd = open(sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		goto fail;
	snprintf(sub, sizeof sub, "%s/new", path);
	if ((md->newfd = open(sub, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) == -1)
		goto fail;
	md->path = xstrdup(path);
	return (0);

fail:
	xasprintf(cause, "maildir %s: %s", sub, strerror(errno));
	maildir_close(md);
	return (-1);
}

/*
 * Mark a Maildir++ folder as one, with the empty "maildirfolder" file
 * Courier and Dovecot put in each (quota code and delivery agents look
 * for it).  Its name is made durable like the folder's own.
 */
int
maildir_mark_folder(struct maildir *md, char **cause)
{
	char	path[PATH_MAX];
	int	fd;

	snprintf(path, sizeof path, "%s/maildirfolder", md->path);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
	    0600);
	if (fd == -1 && errno == EEXIST)
		return (0);
	if (fd == -1 || close(fd) == -1 || fsync_dir(md->path) == -1) {
		xasprintf(cause, "maildir %s: %s", path, strerror(errno));
		return (-1);
	}
	return (0);
}

void
maildir_close(struct maildir *md)
{
	if (md->tmpfd != -1)
		close(md->tmpfd);
	if (md->newfd != -1)
		close(md->newfd);
	md->tmpfd = md->newfd = -1;
	free(md->path);
	md->path = NULL;
}

/* Create a new, empty file in tmp/. */
int
maildir_create(struct maildir *md, struct maildir_file *f, char **cause)
{
	int	tries;

	memset(f, 0, sizeof *f);
	for (tries = 0; tries < 100; tries++) {
		if (maildir_make_name(f->name, sizeof f->name, md->tag) == -1) {
			xasprintf(cause, "maildir %s: host name too long",
			    md->path);
			return (-1);
		}
		f->fd = openat(md->tmpfd, f->name, O_WRONLY | O_CREAT | O_EXCL |
		    O_NOFOLLOW | O_CLOEXEC, 0600);
		if (f->fd != -1)
			return (0);
		if (errno != EEXIST)
			break;
	}
	xasprintf(cause, "cannot create %s/tmp/%s: %s", md->path, f->name,
	    strerror(errno));
	f->fd = -1;
	f->name[0] = '\0';	/* nothing to clean up */
	return (-1);
}

/* Append to a file in tmp/. */
int
maildir_write(struct maildir_file *f, const void *buf, size_t len)
{
	if (write_full(f->fd, buf, len) == -1)
		return (-1);
	f->size += len;
	return (0);
}

/*
 * The message is complete: start writing it out and close it.  It is made
 * durable by maildir_sync_file() when its batch is committed; starting the
 * write-back now means that sync then has little left to wait for.
 */
int
maildir_finish(struct maildir_file *f, char **cause)
{
	int	n;

	n = snprintf(f->final, sizeof f->final, "%s,S=%llu", f->name,
	    (unsigned long long)f->size);
	if (n < 0 || (size_t)n >= sizeof f->final) {
		xasprintf(cause, "file name too long");
		return (-1);
	}
#ifdef SYNC_FILE_RANGE_WRITE
	if (f->size > 0)
		sync_file_range(f->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
#endif
	if (close(f->fd) == -1) {
		f->fd = -1;
		xasprintf(cause, "close tmp/%s: %s", f->name, strerror(errno));
		return (-1);
	}
	f->fd = -1;
	return (0);
}

/*
 * Make a finished file's data durable (by its name in new/, which is its
 * name in tmp/ plus ",S=<size>").  fdatasync() reports the write errors
 * that delayed allocation only finds now, such as a full disk.
 */
int
maildir_sync_file(struct maildir *md, const char *final, char **cause)
{
	char	name[MAILDIR_TMP_NAME_MAX];
	int	fd;

	maildir_tmp_name(final, name, sizeof name);
	fd = openat(md->tmpfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd == -1 || fdatasync(fd) == -1) {
		xasprintf(cause, "maildir %s: fsync tmp/%s: %s", md->path, name,
		    strerror(errno));
		if (fd != -1)
			close(fd);
		return (-1);
	}
	close(fd);
	return (0);
}

/* Remove a finished file from tmp/ that will not be delivered after all. */
void
maildir_unlink(struct maildir *md, const char *final)
{
	char	name[MAILDIR_TMP_NAME_MAX];

	maildir_tmp_name(final, name, sizeof name);
	if (unlinkat(md->tmpfd, name, 0) == -1 && errno != ENOENT)
		log_warn("account=%s maildir %s: cannot remove tmp/%s",
		    md->account != NULL ? md->account : "-", md->path, name);
}

/*
 * A finished file's name in tmp/, from its name in new/: the same, less
 * the ",S=<size>" (see maildir_finish).
 */
const char *
maildir_tmp_name(const char *final, char *buf, size_t size)
{
	char	*comma;

	snprintf(buf, size, "%s", final);
	if ((comma = strchr(buf, ',')) != NULL)
		*comma = '\0';
	return (buf);
}

/* Throw away a file in tmp/ that will not be delivered. */
void
maildir_abort(struct maildir *md, struct maildir_file *f)
{
	if (f->fd != -1)
		close(f->fd);
	f->fd = -1;
	if (f->name[0] != '\0' && unlinkat(md->tmpfd, f->name, 0) == -1 &&
	    errno != ENOENT)
		log_warn("account=%s maildir %s: cannot remove tmp/%s",
		    md->account != NULL ? md->account : "-", md->path, f->name);
	f->name[0] = '\0';
}

static int
maildir_fsync_fd(struct maildir *md, int fd, const char *which, char **cause)
{
	if (fsync(fd) == -1 && errno != EINVAL) {
		xasprintf(cause, "maildir %s: fsync %s/: %s", md->path, which,
		    strerror(errno));
		return (-1);
	}
	return (0);
}

/* Make the names of the files in tmp/ durable. */
int
maildir_sync_tmp(struct maildir *md, char **cause)
{
	return (maildir_fsync_fd(md, md->tmpfd, "tmp", cause));
}

/* Deliver: move tmp/<name> to new/<final>. */
int
maildir_move(struct maildir *md, const char *final, char **cause)
{
	char	name[MAILDIR_TMP_NAME_MAX];

	maildir_tmp_name(final, name, sizeof name);
	if (renameat(md->tmpfd, name, md->newfd, final) == -1) {
		xasprintf(cause, "maildir %s: rename tmp/%s to new/: %s",
		    md->path, name, strerror(errno));
		return (-1);
	}
	return (0);
}

/* Make the moves into new/ durable. */
int
maildir_sync_new(struct maildir *md, char **cause)
{
	return (maildir_fsync_fd(md, md->newfd, "new", cause));
}

/* Is there an entry in dir named base, or base followed by ',' or ':'? */
static int
maildir_dir_has(const char *path, const char *base)
{
	DIR		*dir;
	struct dirent	*de;
	size_t		 len = strlen(base);
	int		 found = 0;

	if ((dir = opendir(path)) == NULL)
		return (-1);
	while ((de = readdir(dir)) != NULL) {
		if (strncmp(de->d_name, base, len) == 0 &&
		    (de->d_name[len] == '\0' || de->d_name[len] == ',' ||
		    de->d_name[len] == ':')) {
			found = 1;
			break;
		}
	}
	closedir(dir);
	return (found);
}

/*
 * Finish a delivery that a crash interrupted after the file was made
 * durable in tmp/ under its final name less ",S=...": move it into new/
 * (MAILDIR_MOVED), or find that it got there, or on into cur/ where a mail
 * reader puts what it has seen, with flags after its name
 * (MAILDIR_PRESENT), or that it is nowhere (MAILDIR_MISSING).  -1 and
 * *cause on an error.
 */
int
maildir_recover(struct maildir *md, const char *final, char **cause)
{
	char		 name[MAILDIR_TMP_NAME_MAX], sub[PATH_MAX];
	struct stat	 sb;
	const char	*dirs[] = { "new", "cur" };
	size_t		 i;
	int		 r;

	maildir_tmp_name(final, name, sizeof name);
	if (renameat(md->tmpfd, name, md->newfd, final) == 0)
		return (MAILDIR_MOVED);
	if (errno != ENOENT) {
		xasprintf(cause, "cannot finish the delivery of %s/tmp/%s: "
		    "rename to new/: %s", md->path, name, strerror(errno));
		return (-1);
	}
	if (fstatat(md->newfd, final, &sb, AT_SYMLINK_NOFOLLOW) == 0)
		return (MAILDIR_PRESENT);
	for (i = 0; i < 2; i++) {
		snprintf(sub, sizeof sub, "%s/%s", md->path, dirs[i]);
		if ((r = maildir_dir_has(sub, name)) == 1)
			return (MAILDIR_PRESENT);
		if (r == -1) {
			xasprintf(cause, "cannot read %s: %s", sub,
			    strerror(errno));
			return (-1);
		}
	}
	return (MAILDIR_MISSING);
}

/*
 * Remove this account's leftovers from tmp/: partial messages of a maild
 * that was killed.  Only called with the account's lock held and after
 * state_open() finished any pending deliveries, so none of them is in use.
 * Returns how many were removed.
 */
int
maildir_cleanup_tmp(struct maildir *md)
{
	DIR		*dir;
	struct dirent	*de;
	uint32_t	 tag;
	int		 fd, n = 0;

	if ((fd = openat(md->tmpfd, ".", O_RDONLY | O_DIRECTORY |
	    O_CLOEXEC)) == -1)
		return (-1);
	if ((dir = fdopendir(fd)) == NULL) {
		close(fd);
		return (-1);
	}
	while ((de = readdir(dir)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (maildir_name_tag(de->d_name, &tag) == -1 || tag != md->tag)
			continue;
		if (unlinkat(md->tmpfd, de->d_name, 0) == 0)
			n++;
	}
	closedir(dir);
	return (n);
}
