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
 * metrics.c: maild's health for Prometheus, in its text exposition format
 * (version 0.0.4): served at /metrics by libevent's own HTTP server
 * (metrics-listen, the daemon only) and written to a file for
 * node_exporter's textfile collector (metrics-file: a temporary file
 * renamed over it, after polls).  account.c gathers the figures
 * (accounts_status()); this file names them, sums an account's IMAP
 * folder sessions into one account, and adds the process's own.
 *
 * The metrics name accounts and servers, never users or secrets; the
 * list, with what each means, is in maild(8), METRICS.  Names follow the
 * Prometheus conventions: base units (seconds, bytes), counters end in
 * _total, timestamps are Unix seconds.
 */

#include "config.h"

#include <sys/resource.h>
#include <sys/stat.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "maild.h"

/* Upper bounds of the poll duration buckets, in seconds (+Inf last). */
static const double poll_bounds[POLL_BUCKETS] = {
	0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800
};

/* The error classes as labels, in enum error_class order. */
static const char *const error_classes[ERRC_MAX] = {
	NULL, "auth", "tls", "network", "protocol", "disk", "config", "oauth2"
};

/* One account: its sessions (IMAP folders) summed up. */
struct agg {
	const struct status_account *sa;	/* the first: name, settings */
	int			 up;
	time_t			 last_poll;
	time_t			 last_success;
	time_t			 next_poll;
	unsigned long long	 fetched;
	unsigned long long	 bytes;
	unsigned long long	 deleted;
	unsigned long long	 errors[ERRC_MAX];
	struct poll_hist	 durations;
	unsigned long long	 waiting;
	long			 records;
	int			 backoff;
	time_t			 token_expires;
	int			 idle;
};

/* A per-account metric: its name, type, help and value (-1: none). */
struct account_metric {
	const char	*name;
	const char	*type;
	const char	*help;
	long long	(*value)(const struct agg *);
};

static struct event_base	*base;
static int			 run_mode;
static time_t			 started;
static struct evhttp		*http;
static struct evhttp_bound_socket *bound;
static char			*bound_listen;	/* what it was bound for */
static char			*file;		/* metrics-file */
static struct event		*file_ev;	/* a write to come */
static double			 file_last;
static int			 file_failed;	/* said so already */
static size_t			 last_count = 1;	/* accounts rendered */

/* Count a poll of d seconds into its bucket (the output sums them up). */
void
metrics_observe(struct poll_hist *h, double d)
{
	size_t	i;

	for (i = 0; i < POLL_BUCKETS && d > poll_bounds[i]; i++)
		;
	h->count[i]++;
	h->sum += d;
}

static long long
m_up(const struct agg *g)
{
	return (g->up);
}

static long long
m_last_poll(const struct agg *g)
{
	return (g->last_poll);
}

static long long
m_last_success(const struct agg *g)
{
	return (g->last_success);
}

static long long
m_next_poll(const struct agg *g)
{
	return (g->next_poll);
}

static long long
m_fetched(const struct agg *g)
{
	return ((long long)g->fetched);
}

static long long
m_bytes(const struct agg *g)
{
	return ((long long)g->bytes);
}

static long long
m_deleted(const struct agg *g)
{
	return ((long long)g->deleted);
}

static long long
m_waiting(const struct agg *g)
{
	return ((long long)g->waiting);
}

static long long
m_records(const struct agg *g)
{
	return (g->records);
}

static long long
m_backoff(const struct agg *g)
{
	return (g->backoff);
}

static long long
m_token(const struct agg *g)
{
	return (g->token_expires > 0 ? (long long)g->token_expires : -1);
}

static long long
m_idle(const struct agg *g)
{
	return (g->idle);
}

static const struct account_metric account_metrics[] = {
	{ "maild_account_up", "gauge",
	    "1 if the account's last poll succeeded, 0 if it failed or none "
	    "has ended yet.", m_up },
	{ "maild_account_last_attempt_timestamp_seconds", "gauge",
	    "When the account's last poll started (Unix time; 0: never).",
	    m_last_poll },
	{ "maild_account_last_success_timestamp_seconds", "gauge",
	    "When the account's last successful poll started (Unix time; 0: "
	    "never since maild started).", m_last_success },
	{ "maild_account_next_poll_timestamp_seconds", "gauge",
	    "When the account's next poll is planned (Unix time; 0: none, as "
	    "with maild --once).", m_next_poll },
	{ "maild_account_fetched_messages_total", "counter",
	    "Messages delivered from the account since maild started.",
	    m_fetched },
	{ "maild_account_fetched_bytes_total", "counter",
	    "Bytes of the messages delivered from the account since maild "
	    "started.", m_bytes },
	{ "maild_account_deleted_messages_total", "counter",
	    "Messages removed from the server (deleted or moved) after their "
	    "delivery, since maild started.", m_deleted },
	{ "maild_account_waiting_messages", "gauge",
	    "New messages left on the server after the account's last poll "
	    "(over max-size, or not fetched yet).", m_waiting },
	{ "maild_account_state_records", "gauge",
	    "Messages the account's state file remembers as delivered.",
	    m_records },
	{ "maild_account_backoff_level", "gauge",
	    "Failed polls in a row: the next poll waits about 2^(n-1) poll "
	    "intervals (at most an hour, or 16 intervals).", m_backoff },
	{ "maild_account_oauth2_token_expiry_timestamp_seconds", "gauge",
	    "When the account's OAuth2 access token expires (Unix time); "
	    "maild renews it before.", m_token },
	{ "maild_account_idle_connections", "gauge",
	    "IMAP connections of the account waiting for new mail (IDLE).",
	    m_idle },
};

/* A label value as the text format wants it: \, " and newline escaped. */
static const char *
label(const char *s, char *buf, size_t size)
{
	size_t	o = 0;

	for (; *s != '\0' && o + 3 < size; s++) {
		if (*s == '\\' || *s == '"') {
			buf[o++] = '\\';
			buf[o++] = *s;
		} else if (*s == '\n') {
			buf[o++] = '\\';
			buf[o++] = 'n';
		} else
			buf[o++] = *s;
	}
	buf[o] = '\0';
	return (buf);
}

static int
agg_cmp(const void *a, const void *b)
{
	const struct status_account	*x = a, *y = b;

	return (strcmp(x->name, y->name));
}

/* Add one session's figures (sa) to its account's (g). */
static void
agg_add(struct agg *g, const struct status_account *sa, int first)
{
	size_t	i;
	int	up = sa->last_success != 0 && !sa->failing;

	if (first) {
		memset(g, 0, sizeof *g);
		g->sa = sa;
		g->up = up;
		g->records = sa->records;
		g->next_poll = sa->next_poll;
	}
	g->up = g->up && up;
	if (sa->last_poll > g->last_poll)
		g->last_poll = sa->last_poll;
	if (sa->last_success > g->last_success)
		g->last_success = sa->last_success;
	if (sa->next_poll != 0 && (g->next_poll == 0 ||
	    sa->next_poll < g->next_poll))
		g->next_poll = sa->next_poll;
	g->fetched += sa->fetched_total;
	g->bytes += sa->bytes_total;
	g->deleted += sa->deleted_total;
	for (i = 0; i < ERRC_MAX; i++)
		g->errors[i] += sa->errors[i];
	for (i = 0; i <= POLL_BUCKETS; i++)
		g->durations.count[i] += sa->durations.count[i];
	g->durations.sum += sa->durations.sum;
	g->waiting += sa->waiting;
	if (sa->records > g->records)
		g->records = sa->records;	/* one state, shared */
	if (sa->failures > g->backoff)
		g->backoff = sa->failures;
	if (sa->token_expires > g->token_expires)
		g->token_expires = sa->token_expires;
	g->idle += sa->idle;
}

/*
 * The accounts, one each, by name (sa sorted in place); the removed ones
 * left out.
 */
static struct agg *
agg_accounts(struct status_account *sa, size_t n, size_t *np)
{
	struct agg	*g;
	size_t		 i, k = 0;

	if (n > 0)
		qsort(sa, n, sizeof *sa, agg_cmp);
	g = xcalloc(n ? n : 1, sizeof *g);
	for (i = 0; i < n; i++) {
		if (sa[i].removed)
			continue;
		if (k > 0 && strcmp(sa[i].name, g[k - 1].sa->name) == 0)
			agg_add(&g[k - 1], &sa[i], 0);
		else
			agg_add(&g[k++], &sa[i], 1);
	}
	*np = k;
	return (g);
}

static void
family(struct evbuffer *out, const char *name, const char *type,
    const char *help)
{
	evbuffer_add_printf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help,
	    name, type);
}

/* The poll duration histograms. */
static void
render_durations(struct evbuffer *out, const struct agg *g, size_t n)
{
	const char		*name = "maild_account_poll_duration_seconds";
	char			 acct[256];
	unsigned long long	 cum;
	size_t			 i, b;

	family(out, name, "histogram", "How long the account's polls took "
	    "(an IMAP session waiting in IDLE is not a poll).");
	for (i = 0; i < n; i++) {
		label(g[i].sa->name, acct, sizeof acct);
		for (b = 0, cum = 0; b < POLL_BUCKETS; b++) {
			cum += g[i].durations.count[b];
			evbuffer_add_printf(out, "%s_bucket{account=\"%s\","
			    "le=\"%g\"} %llu\n", name, acct, poll_bounds[b],
			    cum);
		}
		cum += g[i].durations.count[POLL_BUCKETS];
		evbuffer_add_printf(out, "%s_bucket{account=\"%s\",le=\"+Inf\"} "
		    "%llu\n%s_sum{account=\"%s\"} %.3f\n"
		    "%s_count{account=\"%s\"} %llu\n", name, acct, cum, name,
		    acct, g[i].durations.sum, name, acct, cum);
	}
}

/* The per-account metrics. */
static void
render_accounts(struct evbuffer *out, const struct agg *g, size_t n)
{
	const struct account_metric	*m;
	char				 acct[256], host[512];
	long long			 v;
	size_t				 i, k, c;

	family(out, "maild_account_info", "gauge", "The account's server and "
	    "protocol (always 1).");
	for (i = 0; i < n; i++)
		evbuffer_add_printf(out, "maild_account_info{account=\"%s\","
		    "host=\"%s\",port=\"%d\",protocol=\"%s\"} 1\n",
		    label(g[i].sa->name, acct, sizeof acct),
		    label(g[i].sa->ac->host, host, sizeof host),
		    g[i].sa->ac->port, g[i].sa->ac->protocol == PROTOCOL_IMAP ?
		    "imap" : "pop3");
	for (k = 0; k < sizeof account_metrics / sizeof account_metrics[0];
	    k++) {
		m = &account_metrics[k];
		family(out, m->name, m->type, m->help);
		for (i = 0; i < n; i++) {
			if ((v = m->value(&g[i])) < 0)
				continue;
			evbuffer_add_printf(out, "%s{account=\"%s\"} %lld\n",
			    m->name, label(g[i].sa->name, acct, sizeof acct), v);
		}
	}
	family(out, "maild_account_errors_total", "counter", "Failed polls "
	    "of the account since maild started, by class: auth (login "
	    "refused), tls, network, protocol, disk (state, Maildir, local "
	    "delivery), config (password file or command, ca-file), oauth2 "
	    "(no access token).");
	for (i = 0; i < n; i++) {
		label(g[i].sa->name, acct, sizeof acct);
		for (c = ERRC_NONE + 1; c < ERRC_MAX; c++)
			evbuffer_add_printf(out, "maild_account_errors_total{"
			    "account=\"%s\",class=\"%s\"} %llu\n", acct,
			    error_classes[c], g[i].errors[c]);
	}
	render_durations(out, g, n);
}

/* Resident memory, from /proc/self/statm; -1 if it cannot be read. */
static long long
process_rss(void)
{
	FILE		*f;
	char		 line[128], *p, *end;
	long long	 rss = -1;

	if ((f = fopen("/proc/self/statm", "re")) == NULL)
		return (-1);
	/* "size resident shared ...", in pages */
	if (fgets(line, sizeof line, f) != NULL &&
	    (p = strchr(line, ' ')) != NULL) {
		errno = 0;
		rss = strtoll(p + 1, &end, 10);
		if (errno != 0 || end == p + 1 || rss < 0)
			rss = -1;
	}
	fclose(f);
	return (rss < 0 ? -1 : rss * sysconf(_SC_PAGESIZE));
}

/* Open file descriptors, from /proc/self/fd; -1 if it cannot be read. */
static long long
process_fds(void)
{
	DIR		*d;
	struct dirent	*de;
	long long	 n = 0;

	if ((d = opendir("/proc/self/fd")) == NULL)
		return (-1);
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] != '.')
			n++;
	}
	closedir(d);
	return (n - 1);		/* not the one reading it */
}

/* The process as a whole. */
static void
render_process(struct evbuffer *out, const struct status_totals *tot)
{
	struct rlimit	rl;
	long long	v;

	family(out, "maild_build_info", "gauge", "maild's version (always 1).");
	evbuffer_add_printf(out, "maild_build_info{version=\"%s\"} 1\n",
	    PACKAGE_VERSION);
	family(out, "maild_accounts_configured", "gauge", "Accounts in the "
	    "configuration.");
	evbuffer_add_printf(out, "maild_accounts_configured %zu\n",
	    tot->accounts);
	family(out, "maild_connections", "gauge", "Sessions with servers now, "
	    "IDLE ones too (those at work: at most max-connections).");
	evbuffer_add_printf(out, "maild_connections %d\n", tot->active);
	family(out, "maild_accounts_queued", "gauge", "Accounts due for a "
	    "poll and waiting for a connection (max-connections, "
	    "max-connections-per-host).");
	evbuffer_add_printf(out, "maild_accounts_queued %d\n", tot->queued);
	family(out, "maild_process_start_time_seconds", "gauge", "When maild "
	    "started (Unix time).");
	evbuffer_add_printf(out, "maild_process_start_time_seconds %lld\n",
	    (long long)started);
	if ((v = process_rss()) >= 0) {
		family(out, "maild_process_resident_memory_bytes", "gauge",
		    "maild's resident memory.");
		evbuffer_add_printf(out, "maild_process_resident_memory_bytes "
		    "%lld\n", v);
	}
	if ((v = process_fds()) >= 0) {
		family(out, "maild_process_open_fds", "gauge", "maild's open "
		    "file descriptors.");
		evbuffer_add_printf(out, "maild_process_open_fds %lld\n", v);
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
		family(out, "maild_process_max_fds", "gauge", "The most file "
		    "descriptors maild may open (RLIMIT_NOFILE).");
		evbuffer_add_printf(out, "maild_process_max_fds %llu\n",
		    (unsigned long long)rl.rlim_cur);
	}
}

/* Everything, in the text exposition format. */
static void
metrics_render(struct evbuffer *out)
{
	struct status_account	*sa;
	struct status_totals	 tot;
	struct agg		*g;
	size_t			 n, na;

	sa = accounts_status(&n, &tot);
	g = agg_accounts(sa, n, &na);
	render_accounts(out, g, na);
	render_process(out, &tot);
	last_count = n > 0 ? n : 1;
	free(g);
	free(sa);
}

/* GET /metrics */
static void
metrics_http_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer	*out;

	if ((out = evbuffer_new()) == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	metrics_render(out);
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
	evhttp_send_reply(req, HTTP_OK, "OK", out);
	evbuffer_free(out);
}

/* Anything else. */
static void
metrics_http_other_cb(struct evhttp_request *req, void *arg)
{
	struct evbuffer	*out;

	if ((out = evbuffer_new()) == NULL) {
		evhttp_send_error(req, HTTP_INTERNAL, NULL);
		return;
	}
	evbuffer_add_printf(out, "maild serves its metrics at /metrics\n");
	evhttp_add_header(evhttp_request_get_output_headers(req),
	    "Content-Type", "text/plain; charset=utf-8");
	evhttp_send_reply(req, HTTP_NOTFOUND, "Not Found", out);
	evbuffer_free(out);
}

/* Write metrics-file: a temporary file beside it, renamed over it. */
static void
metrics_write_file(void)
{
	struct evbuffer	*out;
	char		 tmp[PATH_MAX];
	unsigned char	*p;
	size_t		 len;
	int		 fd, saved;

	file_last = now_mono();
	if ((size_t)snprintf(tmp, sizeof tmp, "%s.XXXXXX", file) >= sizeof tmp)
		return;
	if ((out = evbuffer_new()) == NULL)
		return;
	metrics_render(out);
	len = evbuffer_get_length(out);
	p = evbuffer_pullup(out, -1);
	if ((fd = mkstemp(tmp)) == -1)
		goto fail;
	/* node_exporter runs as another user; nothing secret is in it. */
	if (fchmod(fd, 0644) == -1 || write_full(fd, p, len) == -1) {
		saved = errno;
		close(fd);
		unlink(tmp);
		errno = saved;
		goto fail;
	}
	if (close(fd) == -1 || rename(tmp, file) == -1) {
		saved = errno;
		unlink(tmp);
		errno = saved;
		goto fail;
	}
	evbuffer_free(out);
	if (file_failed)
		log_info("metrics-file %s written again", file);
	file_failed = 0;
	return;

fail:
	/* Once, not after every poll; mail goes on being fetched. */
	if (!file_failed)
		log_warnx("cannot write metrics-file %s: %s; check that its "
		    "directory exists and is writable by maild", file,
		    strerror(errno));
	file_failed = 1;
	evbuffer_free(out);
}

static void
metrics_file_cb(evutil_socket_t fd, short what, void *arg)
{
	metrics_write_file();
}

/*
 * A poll ended, or the accounts changed: metrics-file is written again,
 * at most every millisecond per account (as the status file: account.c).
 */
void
metrics_changed(void)
{
	struct timeval	tv;
	double		wait;

	if (file == NULL || base == NULL)
		return;
	if (file_ev == NULL &&
	    (file_ev = evtimer_new(base, metrics_file_cb, NULL)) == NULL)
		fatalx("evtimer_new failed");
	if (evtimer_pending(file_ev, NULL))
		return;
	wait = file_last + (double)last_count / 1000.0 - now_mono();
	if (file_last == 0 || wait <= 0) {
		metrics_write_file();
		return;
	}
	tv.tv_sec = (time_t)wait;
	tv.tv_usec = (suseconds_t)((wait - (double)tv.tv_sec) * 1e6);
	evtimer_add(file_ev, &tv);
}

/* Is the address (numeric, as config.c checked) a loopback one? */
static int
is_loopback(const char *addr)
{
	struct in6_addr	a6;
	struct in_addr	a4;

	if (inet_pton(AF_INET, addr, &a4) == 1)
		return ((ntohl(a4.s_addr) >> 24) == 127);
	return (inet_pton(AF_INET6, addr, &a6) == 1 &&
	    IN6_IS_ADDR_LOOPBACK(&a6));
}

/* Serve /metrics on conf's metrics-listen, instead of any other. */
static int
metrics_listen(const struct config *conf, char **cause)
{
	struct evhttp_bound_socket	*sock;
	int				 v6;

	if (http == NULL) {
		if ((http = evhttp_new(base)) == NULL)
			fatalx("evhttp_new failed");
		evhttp_set_allowed_methods(http, EVHTTP_REQ_GET |
		    EVHTTP_REQ_HEAD);
		evhttp_set_timeout(http, 10);
		evhttp_set_max_headers_size(http, 8192);
		evhttp_set_max_body_size(http, 1024);
		evhttp_set_cb(http, "/metrics", metrics_http_cb, NULL);
		evhttp_set_gencb(http, metrics_http_other_cb, NULL);
	}
	sock = evhttp_bind_socket_with_handle(http, conf->metrics_addr,
	    (ev_uint16_t)conf->metrics_port);
	if (sock == NULL) {
		xasprintf(cause, "metrics-listen %s: cannot listen there: %s",
		    conf->metrics_listen, strerror(errno));
		return (-1);
	}
	if (bound != NULL)
		evhttp_del_accept_socket(http, bound);
	bound = sock;
	free(bound_listen);
	bound_listen = xstrdup(conf->metrics_listen);
	v6 = strchr(conf->metrics_addr, ':') != NULL;
	if (is_loopback(conf->metrics_addr))
		log_info("metrics at http://%s%s%s:%d/metrics", v6 ? "[" : "",
		    conf->metrics_addr, v6 ? "]" : "", conf->metrics_port);
	else
		log_warnx("metrics at http://%s%s%s:%d/metrics, not on "
		    "loopback: whoever can connect sees the names of the "
		    "accounts and of their servers (no users, no passwords)",
		    v6 ? "[" : "", conf->metrics_addr, v6 ? "]" : "",
		    conf->metrics_port);
	return (0);
}

void
metrics_init(struct event_base *eb, int mode)
{
	base = eb;
	run_mode = mode;
	started = time(NULL);
}

/*
 * Take the metrics options of a configuration, at start and at every
 * reload.  Only the daemon serves HTTP.  -1 with *cause if
 * metrics-listen cannot be bound; the previous address, if any, is then
 * kept.
 */
int
metrics_configure(const struct config *conf, char **cause)
{
	free(file);
	file = conf->metrics_file != NULL ? xstrdup(conf->metrics_file) :
	    NULL;
	file_failed = 0;
	if (run_mode != ACCOUNTS_DAEMON)
		return (0);
	if (conf->metrics_listen == NULL) {
		if (bound != NULL) {
			evhttp_del_accept_socket(http, bound);
			bound = NULL;
			free(bound_listen);
			bound_listen = NULL;
			log_info("metrics no longer served");
		}
		return (0);
	}
	if (bound_listen != NULL &&
	    strcmp(bound_listen, conf->metrics_listen) == 0)
		return (0);
	return (metrics_listen(conf, cause));
}

/* At exit: the last figures into metrics-file, and no more serving. */
void
metrics_shutdown(void)
{
	if (file_ev != NULL) {
		if (evtimer_pending(file_ev, NULL))
			metrics_write_file();
		event_free(file_ev);
		file_ev = NULL;
	}
	if (http != NULL)
		evhttp_free(http);
	http = NULL;
	bound = NULL;
	free(bound_listen);
	bound_listen = NULL;
	free(file);
	file = NULL;
	base = NULL;
}
