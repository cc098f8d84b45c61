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

#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/event.h>

#include <openssl/ssl.h>

#include "maild.h"

/* After SIGTERM, sessions get this long to finish what is in flight. */
#define STOP_GRACE	20

static struct event_base	*base;
static struct event		*grace;
static char			*conf_path;
static int			 run_mode;
static int			 stopping;

static __dead void	usage(void);
static __dead void	help(void);
static void		signal_cb(evutil_socket_t, short, void *);
static void		grace_cb(evutil_socket_t, short, void *);
static void		no_core_dumps(void);
static int		daemon_lock(const struct config *);

/* The SYNOPSIS of maild(8) says the same, to the character. */
#define USAGE	"usage: maild [-dhnvV] [-f file] [--once | --check [account] " \
		"| --status | --authorize account]\n"

static __dead void
usage(void)
{
	fputs(USAGE, stderr);
	exit(EXIT_USAGE);
}

/* -h, --help: the options, one line each (maild(8) has the details). */
static __dead void
help(void)
{
	fputs(USAGE "\n"
	    "  -d                 stay in the foreground, log to standard "
	    "error\n"
	    "  -f file            read the configuration from file (default:\n"
	    "                     ~/.config/maild/maild.conf if it exists and "
	    "you\n"
	    "                     are not root, else " SYSCONFDIR
	    "/maild.conf)\n"
	    "  -n                 check the configuration and exit\n"
	    "  -v                 log more; -vv also logs the POP3 dialogue\n"
	    "  -V, --version      print the version and exit\n"
	    "  -h, --help         print this help and exit\n"
	    "  --once             poll every account once, then exit\n"
	    "  --check [account]  log in to every account (or one), fetch "
	    "nothing\n"
	    "  --status           show what the daemon last did, per "
	    "account\n"
	    "  --authorize account  sign in at the account's OAuth2 provider "
	    "and store\n"
	    "                     the token (oauth2-provider accounts)\n"
	    "  --core-dumps       allow core dumps (for debugging: they hold "
	    "passwords)\n"
	    "\n"
	    "Without --once, --check or --status, maild runs as a daemon.  "
	    "See maild(8)\n"
	    "and maild.conf(5).\n", stdout);
	exit(0);
}

/*
 * Passwords and tokens live in memory: no core file may show them, and no
 * other process of the user may read them through /proc or ptrace.
 * LeakSanitizer stops the process with ptrace, which that forbids.
 */
static void
no_core_dumps(void)
{
	struct rlimit	rl = { 0, 0 };

	if (setrlimit(RLIMIT_CORE, &rl) == -1)
		fatal("setrlimit");
#ifndef __SANITIZE_ADDRESS__
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == -1)
		fatal("prctl");
#endif
}

/*
 * One daemon per state directory: a second one would collide with the
 * first whenever two polls of an account overlap.  (maild --once beside
 * a daemon is fine: each account's own lock keeps them apart.)
 */
static int
daemon_lock(const struct config *conf)
{
	char	path[PATH_MAX];
	long	pid;
	int	fd;

	if (mkdir_p(conf->state_dir, 0700) == -1) {
		fprintf(stderr, "maild: state-dir %s: %s\n", conf->state_dir,
		    strerror(errno));
		exit(EXIT_IOERR);
	}
	snprintf(path, sizeof path, "%s/maild.pid", conf->state_dir);
	switch (lock_file(path, &fd, &pid)) {
	case 0:
		return (fd);
	case -1:
		log_warnx("maild (pid %ld) is already running with state "
		    "directory %s", pid, conf->state_dir);
		if (!log_to_stderr())
			fprintf(stderr, "maild: maild (pid %ld) is already "
			    "running with state directory %s\n", pid,
			    conf->state_dir);
		exit(EXIT_TEMPFAIL);
	default:
		fprintf(stderr, "maild: cannot lock %s: %s\n", path,
		    strerror(errno));
		exit(EXIT_IOERR);
	}
}

/* SIGHUP: load the file again; switch only if all of it is valid. */
static void
reload(void)
{
	struct config	*conf;
	char		*cause = NULL;
	int		 changes;

	sdnotify_reloading();
	log_info("reloading %s", conf_path);
	if ((conf = config_load(conf_path, &cause)) == NULL) {
		log_warnx("reload failed, still running the previous "
		    "configuration: %s", cause);
		free(cause);
		sdnotify("READY=1");
		return;
	}
	/* The trust store is read again, like the rest of the setup. */
	tls_shutdown();
	/* Accounts that need OAuth2 authorization are tried again. */
	oauth2_reload();
	limits_raise(conf);
	if (metrics_configure(conf, &cause) == -1) {
		log_warnx("%s; the metrics stay where they were", cause);
		free(cause);
	}
	changes = accounts_reload(conf);
	config_free(conf);
	log_info("reloaded %s: %d account%s added, removed or changed",
	    conf_path, changes, changes == 1 ? "" : "s");
	sdnotify("READY=1");
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct timeval	 tv = { STOP_GRACE, 0 };

	switch (sig) {
	case SIGTERM:
	case SIGINT:
		if (stopping++) {
			log_warnx("second signal: stopping now");
			accounts_abort();
			return;
		}
		log_info("stopping: finishing the messages in flight (at most "
		    "%d seconds)", STOP_GRACE);
		sdnotify("STOPPING=1");
		if ((grace = evtimer_new(base, grace_cb, NULL)) == NULL)
			fatalx("evtimer_new failed");
		event_add(grace, &tv);
		accounts_stop();
		break;
	case SIGUSR1:
		log_info("SIGUSR1: polling every account now");
		accounts_poll_now();
		break;
	case SIGHUP:
		if (run_mode == ACCOUNTS_DAEMON && !stopping)
			reload();
		break;
	}
}

/* The grace time is over: whatever is still running stops now. */
static void
grace_cb(evutil_socket_t fd, short what, void *arg)
{
	log_warnx("sessions still running after %d seconds: stopping them",
	    STOP_GRACE);
	accounts_abort();
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
		{ "check", no_argument, NULL, 'c' },
		{ "status", no_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ "version", no_argument, NULL, 'V' },
		{ "core-dumps", no_argument, NULL, 'C' },
		{ "authorize", required_argument, NULL, 'A' },
		{ NULL, 0, NULL, 0 }
	};
	struct config		*conf;
	struct session_env	 env;
	struct event		*sigev[4];
	const int		 sigs[4] = { SIGTERM, SIGINT, SIGHUP, SIGUSR1 };
	char			*cause = NULL;
	const char		*check_name = NULL, *authorize = NULL;
	int			 ch, foreground = 0, verbose = 0, check = 0;
	int			 once = 0, online = 0, status = 0, code, i;
	int			 cores = 0, lockfd = -1;

	umask(077);
	while ((ch = getopt_long(argc, argv, "df:hnvV", longopts, NULL)) != -1) {
		switch (ch) {
		case 'd':
			foreground = 1;
			break;
		case 'f':
			free(conf_path);
			conf_path = xstrdup(optarg);
			break;
		case 'n':
			check = 1;
			break;
		case 'o':
			once = 1;
			break;
		case 'c':
			online = 1;
			break;
		case 's':
			status = 1;
			break;
		case 'v':
			verbose++;
			break;
		case 'V':
			printf("maild %s\n", PACKAGE_VERSION);
			exit(0);
		case 'h':
			help();
		case 'C':
			cores = 1;
			break;
		case 'A':
			authorize = optarg;
			break;
		default:
			usage();
		}
	}
	if (online && optind < argc)
		check_name = argv[optind++];
	if (optind != argc || once + online + status + check +
	    (authorize != NULL) > 1)
		usage();
	if (!cores)
		no_core_dumps();
	if (conf_path == NULL && (conf_path = config_default_path(&cause)) ==
	    NULL) {
		fprintf(stderr, "maild: %s\n", cause);
		exit(EXIT_CONFIG);
	}

	if (check || status)
		conf = config_load_readonly(conf_path, &cause);
	else
		conf = config_load(conf_path, &cause);
	if (conf == NULL) {
		fprintf(stderr, "maild: %s\n", cause);
		exit(EXIT_CONFIG);
	}
	if (check) {
		if (check_config(conf) == -1)
			exit(EXIT_CONFIG);
		if (conf->include_dir != NULL)
			printf("maild: %s: configuration OK (%zu account%s, "
			    "%zu file%s in %s)\n", conf_path, conf->naccounts,
			    conf->naccounts == 1 ? "" : "s", conf->nfiles - 1,
			    conf->nfiles == 2 ? "" : "s", conf->include_dir);
		else
			printf("maild: %s: configuration OK (%zu account%s)\n",
			    conf_path, conf->naccounts, conf->naccounts == 1 ?
			    "" : "s");
		config_free(conf);
		free(conf_path);
		exit(0);
	}
	if (status) {
		code = status_show(conf);
		config_free(conf);
		free(conf_path);
		exit(code);
	}
	if (authorize != NULL) {
		log_init(1, verbose);
		signal(SIGPIPE, SIG_IGN);
		if ((base = event_base_new()) == NULL)
			fatalx("event_base_new failed");
		env.base = base;
		env.dns = dns_init(base);
		oauth2_init(base, env.dns);
		code = authorize_run(&env, conf, authorize);
		evdns_base_free(env.dns, 1);
		event_base_free(base);
		tls_shutdown();
		config_free(conf);
		free(conf_path);
		exit(code);
	}
	if (check_name != NULL && config_keep_account(conf, check_name) == -1) {
		fprintf(stderr, "maild: %s: no account \"%s\"\n", conf_path,
		    check_name);
		exit(EXIT_USAGE);
	}

	run_mode = online ? ACCOUNTS_CHECK : once ? ACCOUNTS_ONCE :
	    ACCOUNTS_DAEMON;
	if (run_mode != ACCOUNTS_DAEMON)
		foreground = 1;
	log_init(foreground, online && verbose == 0 ? -1 : verbose);
	if (run_mode == ACCOUNTS_DAEMON && check_start(conf) == -1)
		exit(EXIT_IOERR);
	if (run_mode == ACCOUNTS_CHECK)
		check_dests_probe(conf);
	if (run_mode == ACCOUNTS_DAEMON)
		lockfd = daemon_lock(conf);
	if (!foreground && daemon(0, 0) == -1)
		fatal("daemon");
	if (lockfd != -1)
		lock_file_pid(lockfd);	/* the lock went with the fd */
	signal(SIGPIPE, SIG_IGN);

	if ((base = event_base_new()) == NULL)
		fatalx("event_base_new failed");
	for (i = 0; i < 4; i++) {
		sigev[i] = evsignal_new(base, sigs[i], signal_cb, NULL);
		evsignal_add(sigev[i], NULL);
	}
	env.base = base;
	env.dns = dns_init(base);
	oauth2_init(base, env.dns);
	limits_raise(conf);
	accounts_init(&env, conf, run_mode);
	if (run_mode != ACCOUNTS_CHECK) {
		metrics_init(base, run_mode);
		if (metrics_configure(conf, &cause) == -1) {
			log_warnx("%s; not starting", cause);
			if (!log_to_stderr())
				fprintf(stderr, "maild: %s\n", cause);
			exit(EXIT_OSERR);
		}
		log_info("started: %zu account%s, %s", conf->naccounts,
		    conf->naccounts == 1 ? "" : "s", once ? "polling once" :
		    "daemon");
		if (conf->naccounts == 0)
			log_info("no account yet: add a file to %s%s",
			    conf->include_dir, once ? "" : " and send SIGHUP");
	}
	accounts_start();
	sdnotify("READY=1");
	event_base_dispatch(base);

	code = run_mode != ACCOUNTS_DAEMON ? accounts_exitcode() : 0;
	if (stopping && run_mode == ACCOUNTS_DAEMON)
		log_info("stopped");
	metrics_shutdown();
	accounts_free();
	check_dests_free();
	oauth2_shutdown();
	for (i = 0; i < 4; i++)
		event_free(sigev[i]);
	if (grace != NULL)
		event_free(grace);
	evdns_base_free(env.dns, 1);
	event_base_free(base);
	tls_shutdown();
	config_free(conf);
	free(conf_path);
	if (lockfd != -1)
		close(lockfd);
	return (code);
}
