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
 * maild.c: main(): the command line, the configuration, signals and the
 * event loop everything else runs on.
 */

#include "config.h"

#include <sys/stat.h>

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>

#include <openssl/ssl.h>

#include "maild.h"

static struct event_base	*base;
static int			 stopping;

static __dead void	usage(void);
static void		signal_cb(evutil_socket_t, short, void *);

static __dead void
usage(void)
{
	fprintf(stderr, "usage: maild [-dnvV] [-f file] [--once]\n");
	exit(EXIT_USAGE);
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
	switch (sig) {
	case SIGTERM:
	case SIGINT:
		if (stopping++) {
			log_warnx("second signal: exiting now");
			event_base_loopbreak(base);
			return;
		}
		log_info("stopping: finishing the messages in flight");
		accounts_stop();
		break;
	case SIGUSR1:
		log_info("SIGUSR1: polling every account now");
		accounts_poll_now();
		break;
	case SIGHUP:
		log_warnx("SIGHUP: reloading is not supported yet; restart "
		    "maild to apply a new configuration");
		break;
	}
}

/* evdns reads resolv.conf and /etc/hosts; address literals need neither. */
static struct evdns_base *
dns_init(struct event_base *eb)
{
	struct evdns_base	*dns;

	dns = evdns_base_new(eb, EVDNS_BASE_INITIALIZE_NAMESERVERS |
	    EVDNS_BASE_DISABLE_WHEN_INACTIVE);
	if (dns == NULL) {
		log_warnx("cannot read /etc/resolv.conf: only /etc/hosts and "
		    "addresses will resolve");
		dns = evdns_base_new(eb, EVDNS_BASE_DISABLE_WHEN_INACTIVE);
		if (dns == NULL)
			fatalx("evdns_base_new failed");
		evdns_base_load_hosts(dns, NULL);
	}
	return (dns);
}

int
main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "once", no_argument, NULL, 'o' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ NULL, 0, NULL, 0 }
	};
	struct config		*conf;
	struct session_env	 env;
	struct event		*sigev[4];
	const int		 sigs[4] = { SIGTERM, SIGINT, SIGHUP, SIGUSR1 };
	char			*path = NULL, *cause = NULL;
	int			 ch, foreground = 0, verbose = 0, check = 0;
	int			 once = 0, code, i;

	umask(077);
	while ((ch = getopt_long(argc, argv, "df:hnvV", longopts, NULL)) != -1) {
		switch (ch) {
		case 'd':
			foreground = 1;
			break;
		case 'f':
			free(path);
			path = xstrdup(optarg);
			break;
		case 'n':
			check = 1;
			break;
		case 'o':
			once = 1;
			break;
		case 'v':
			verbose++;
			break;
		case 'V':
			printf("maild %s\n", PACKAGE_VERSION);
			exit(0);
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	if (path == NULL)
		path = config_default_path();

	if ((conf = config_load(path, &cause)) == NULL) {
		fprintf(stderr, "maild: %s\n", cause);
		exit(EXIT_CONFIG);
	}
	if (check) {
		if (config_check_paths(conf) == -1)
			exit(EXIT_CONFIG);
		printf("maild: %s: configuration OK (%zu account%s)\n", path,
		    conf->naccounts, conf->naccounts == 1 ? "" : "s");
		config_free(conf);
		free(path);
		exit(0);
	}

	if (once)
		foreground = 1;
	log_init(foreground, verbose);
	if (!foreground && daemon(0, 0) == -1)
		fatal("daemon");
	signal(SIGPIPE, SIG_IGN);

	if ((base = event_base_new()) == NULL)
		fatalx("event_base_new failed");
	for (i = 0; i < 4; i++) {
		sigev[i] = evsignal_new(base, sigs[i], signal_cb, NULL);
		evsignal_add(sigev[i], NULL);
	}
	env.base = base;
	env.dns = dns_init(base);
	env.conf = conf;
	if (accounts_init(&env, once, &cause) == -1)
		fatalx("%s", cause);
	log_info("started: %zu account%s, %s", conf->naccounts,
	    conf->naccounts == 1 ? "" : "s", once ? "polling once" :
	    "daemon");
	accounts_start();
	event_base_dispatch(base);

	code = once ? accounts_exitcode() : 0;
	if (stopping && !once)
		log_info("stopped");
	accounts_free();
	for (i = 0; i < 4; i++)
		event_free(sigev[i]);
	evdns_base_free(env.dns, 1);
	event_base_free(base);
	tls_shutdown();
	config_free(conf);
	free(path);
	return (code);
}
