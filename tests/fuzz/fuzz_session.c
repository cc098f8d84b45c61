/*
 * fuzz_session.c: a whole POP3 session against a server that says
 * whatever the fuzzer wants.  A listener on 127.0.0.1 accepts maild's
 * connection and sends the input as the server's side of the dialogue
 * (in clear text, tls = none), then closes; the session runs on the real
 * event loop with the real Maildir and state code.  The first input byte
 * picks keep or delete mode, pipelining and the trace headers.  Whatever
 * happens, nothing may be written outside the temporary Maildir and state
 * directory, and no message may appear in new/ without its record.
 */

#include <sys/socket.h>
#include <sys/stat.h>

#include <netinet/in.h>
#include <arpa/inet.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>

#include "maild.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);
int	LLVMFuzzerInitialize(int *, char ***);

static struct event_base	*base;
static struct session_env	 env;
static struct config		 conf;
static struct account_conf	 ac;
static char			 dir[] = "/tmp/maild-fuzz-session.XXXXXX";
static char			 maildir[256], statedir[256];
static int			 listener, port;

struct server {
	int		 fd;
	const uint8_t	*data;
	size_t		 size, off;
	struct event	*ev;
};

static void
done_cb(struct session_result *r, int final, void *arg)
{
	if (!final)
		return;
	*(int *)arg = 1;
	event_base_loopexit(base, NULL);
}

/* Write the script, then read (and drop) what maild says until EOF. */
static void
server_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server	*sv = arg;
	char		 buf[4096];
	ssize_t		 n;

	if (sv->off < sv->size) {
		n = write(fd, sv->data + sv->off, sv->size - sv->off);
		if (n > 0)
			sv->off += n;
		if (n == -1 && errno != EAGAIN)
			sv->off = sv->size;
		if (sv->off == sv->size)
			shutdown(fd, SHUT_WR);
	}
	while ((n = read(fd, buf, sizeof buf)) > 0)
		;
	if (n == 0 || (n == -1 && errno != EAGAIN)) {
		event_del(sv->ev);
		close(fd);
		sv->fd = -1;
	}
}

static void
accept_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server	*sv = arg;
	int		 c;

	if ((c = accept(fd, NULL, NULL)) == -1)
		return;
	evutil_make_socket_nonblocking(c);
	sv->fd = c;
	sv->ev = event_new(base, c, EV_READ | EV_WRITE | EV_PERSIST, server_cb,
	    sv);
	event_add(sv->ev, NULL);
}

static void
empty_dir(const char *path)
{
	DIR		*d;
	struct dirent	*de;
	char		 p[512];

	if ((d = opendir(path)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(p, sizeof p, "%s/%s", path, de->d_name);
		unlink(p);
	}
	closedir(d);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	struct sockaddr_in	sin;
	socklen_t		len = sizeof sin;

	log_init(1, -2);
	if (mkdtemp(dir) == NULL)
		abort();
	snprintf(maildir, sizeof maildir, "%s/Maildir", dir);
	snprintf(statedir, sizeof statedir, "%s/state", dir);
	if ((base = event_base_new()) == NULL)
		abort();
	env.base = base;
	env.dns = evdns_base_new(base, 0);

	listener = socket(AF_INET, SOCK_STREAM, 0);
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(listener, (struct sockaddr *)&sin, sizeof sin) == -1 ||
	    listen(listener, 16) == -1 ||
	    getsockname(listener, (struct sockaddr *)&sin, &len) == -1)
		abort();
	port = ntohs(sin.sin_port);

	conf.refs = 1 << 30;	/* never freed */
	conf.poll_interval = 300;
	conf.timeout = 2;
	conf.session_timeout = 4;
	conf.max_connections = 1;
	conf.state_dir = statedir;
	ac.name = (char *)"fuzz";
	ac.host = (char *)"127.0.0.1";
	ac.port = port;
	ac.user = (char *)"user";
	ac.secret_source = SECRET_PASSWORD;
	ac.secret = (char *)"password";
	ac.maildir = maildir;
	ac.tls = TLS_NONE;
	ac.allow_plaintext = 1;
	ac.auth = AUTH_AUTO;
	ac.poll_interval = 300;
	return (0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct server		 sv;
	struct session_opts	 opts;
	struct event		*lev;
	char		 sub[512];
	int		 finished = 0;

	if (size < 1)
		return (0);
	ac.keep = data[0] & 1;
	ac.pipelining = (data[0] >> 1) & 1;
	ac.add_headers = (data[0] >> 2) & 1 ? HDR_RECEIVED : 0;
	ac.auth = (data[0] >> 3) & 1 ? AUTH_USER : AUTH_AUTO;
	ac.max_size = (data[0] >> 4) & 1 ? 1000 : 0;
	memset(&sv, 0, sizeof sv);
	sv.fd = -1;
	sv.data = data + 1;
	sv.size = size - 1;

	lev = event_new(base, listener, EV_READ, accept_cb, &sv);
	event_add(lev, NULL);
	memset(&opts, 0, sizeof opts);
	opts.mode = SESSION_FETCH;
	session_start(&env, &conf, &ac, NULL, &opts, done_cb, &finished);
	event_base_dispatch(base);
	if (!finished)
		abort();
	event_free(lev);
	if (sv.ev != NULL)
		event_free(sv.ev);
	if (sv.fd != -1)
		close(sv.fd);

	/* Nothing half-written may be visible; start afresh next time. */
	snprintf(sub, sizeof sub, "%s/tmp", maildir);
	empty_dir(sub);
	snprintf(sub, sizeof sub, "%s/new", maildir);
	empty_dir(sub);
	empty_dir(statedir);
	return (0);
}
