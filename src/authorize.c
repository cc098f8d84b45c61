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
 * authorize.c: maild --authorize ACCOUNT, the one step of OAuth2 that
 * needs a person: they sign in at the provider and allow maild to read
 * their mail, and maild stores the refresh token it gets in the account's
 * token file (oauth2.c), from which the daemon works on its own.
 *
 * Two grants, whichever the provider allows: the device authorization
 * grant (RFC 8628: maild prints a URL and a code to enter there, on any
 * device, and polls the token endpoint until the person is done,
 * honouring authorization_pending and slow_down), and the authorization
 * code grant with PKCE (RFC 7636, S256) and a loopback redirect (RFC
 * 8252): maild prints the URL to open and listens on 127.0.0.1 for the
 * browser coming back with the code; on a machine without a browser, the
 * port is forwarded with ssh.
 */

#include "config.h"

#include <sys/queue.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#include "maild.h"
#include "http.h"
#include "oauth2.h"

/* How long the person has to sign in with the authorization code grant. */
#define AUTHORIZE_WAIT		600
/* RFC 8628 3.5: slow_down adds 5 seconds to the polling interval. */
#define DEVICE_SLOW_DOWN	5
#define DEVICE_INTERVAL		5	/* RFC 8628 3.2: the default */
#define DEVICE_INTERVAL_MAX	60

struct authz {
	struct event_base		*base;
	struct evdns_base		*dns;
	const struct account_conf	*ac;
	struct account_conf		 sac;	/* the client secret's source */
	char				*secret;
	size_t				 secretlen;
	struct secret_job		*sjob;
	struct http_req			*http;
	struct http_listener		*listener;
	struct event			*timer;
	int				 timeout;
	int				 exitcode;
	/* the device grant */
	char				*device_code;
	int				 interval;
	time_t				 device_expires;
	/* the authorization code grant */
	char				 verifier[64];
	char				 state[32];
	char				 redirect[64];
};

static void	authz_start(struct authz *);
static void	authz_end(struct authz *, int, const char *, ...)
		    PRINTFLIKE(3, 4);
static void	authz_device_start(struct authz *);
static void	authz_code_start(struct authz *);

/* Done: leave the loop with an exit status and a last word. */
static void
authz_end(struct authz *z, int code, const char *fmt, ...)
{
	va_list	ap;

	if (fmt != NULL) {
		fflush(stdout);
		fprintf(stderr, "maild: account %s: ", z->ac->name);
		va_start(ap, fmt);
		vfprintf(stderr, fmt, ap);
		va_end(ap);
		fputc('\n', stderr);
	}
	z->exitcode = code;
	event_base_loopexit(z->base, NULL);
}

/* base64url without padding (RFC 7636 appendix A). */
static void
authz_b64url(const void *data, size_t len, char *out, size_t size)
{
	char	*b = auth_b64(data, len), *p;

	for (p = b; *p != '\0' && *p != '='; p++) {
		if (*p == '+')
			*p = '-';
		else if (*p == '/')
			*p = '_';
	}
	*p = '\0';
	snprintf(out, size, "%s", b);
	freezero_str(b);	/* the PKCE verifier is a secret */
}

/* Keep the tokens and say what comes next. */
static void
authz_store(struct authz *z, struct oauth2_tokens *t)
{
	char	*cause = NULL;

	if (t->refresh == NULL) {
		authz_end(z, EXIT_PROTOCOL, "the provider sent no refresh token "
		    "(for Microsoft the scope needs offline_access; for Google "
		    "the authorization URL needs access_type=offline)");
		return;
	}
	if (oauth2_file_write(z->ac->oauth2_file, z->ac->name, t,
	    &cause) == -1) {
		authz_end(z, EXIT_IOERR, "%s", cause);
		free(cause);
		return;
	}
	printf("\nmaild: account %s is authorized; its token is in %s.\n"
	    "Start maild now; a maild already running uses the token at the "
	    "account's\nnext poll (send it SIGUSR1 to poll at once).\n",
	    z->ac->name, z->ac->oauth2_file);
	fflush(stdout);
	authz_end(z, 0, NULL);
}

/* An error of the token endpoint that ends it all. */
static void
authz_refused(struct authz *z, const char *what, const struct oauth2_error *e)
{
	if (strcmp(e->error, "access_denied") == 0)
		authz_end(z, EXIT_NOPERM, "%s: access was denied at the "
		    "provider%s%s", what, e->desc[0] ? ": " : "", e->desc);
	else if (strcmp(e->error, "expired_token") == 0)
		authz_end(z, EXIT_TEMPFAIL, "%s: the code expired before the "
		    "sign-in was finished; run maild --authorize %s again",
		    what, z->ac->name);
	else
		authz_end(z, EXIT_CONFIG, "%s: %s%s%s%s", what, e->error,
		    e->desc[0] ? ": " : "", e->desc, oauth2_error_hint(e));
}

static void
authz_secret_cb(char *secret, size_t len, const char *error, int code,
    void *arg)
{
	struct authz	*z = arg;

	z->sjob = NULL;
	if (secret == NULL) {
		authz_end(z, code, "cannot get the OAuth2 client secret: %s",
		    error);
		return;
	}
	z->secret = secret;
	z->secretlen = len;
	authz_start(z);
}

static void
authz_start(struct authz *z)
{
	if (z->ac->oauth2_device_url != NULL)
		authz_device_start(z);
	else
		authz_code_start(z);
}

/* ------------------------------------------------------------------ */
/* The device authorization grant (RFC 8628) */

static void	authz_device_poll(evutil_socket_t, short, void *);

static void
authz_device_wait(struct authz *z)
{
	struct timeval	tv = { z->interval, 0 };

	if (time(NULL) + z->interval > z->device_expires) {
		authz_end(z, EXIT_TEMPFAIL, "the code expired before the "
		    "sign-in was finished; run maild --authorize %s again",
		    z->ac->name);
		return;
	}
	evtimer_add(z->timer, &tv);
}

static void
authz_device_token_cb(const struct http_reply *reply, void *arg)
{
	struct authz		*z = arg;
	struct oauth2_tokens	 t;
	struct oauth2_error	 e;

	z->http = NULL;
	if (reply->error != NULL || reply->status >= 500) {
		/* The person may still be signing in: try again. */
		if (reply->error != NULL)
			log_warnx("account=%s token endpoint: %s; trying "
			    "again", z->ac->name, reply->error);
		else
			log_warnx("account=%s token endpoint: HTTP status %d; "
			    "trying again", z->ac->name, reply->status);
		authz_device_wait(z);
		return;
	}
	switch (oauth2_token_reply(reply->status, reply->body, reply->len, &t,
	    &e)) {
	case OAUTH2_REPLY_OK:
		authz_store(z, &t);
		oauth2_tokens_clear(&t);
		return;
	case OAUTH2_REPLY_REFUSED:
		if (strcmp(e.error, "authorization_pending") == 0) {
			authz_device_wait(z);
			return;
		}
		if (strcmp(e.error, "slow_down") == 0) {
			z->interval += DEVICE_SLOW_DOWN;
			log_debug("account=%s slow_down: polling every %d "
			    "seconds", z->ac->name, z->interval);
			authz_device_wait(z);
			return;
		}
		authz_refused(z, "the token endpoint refused", &e);
		return;
	default:
		authz_end(z, EXIT_PROTOCOL, "the token endpoint %s sent %s",
		    z->ac->oauth2_token_url, e.desc);
		return;
	}
}

static void
authz_device_poll(evutil_socket_t fd, short what, void *arg)
{
	struct authz	*z = arg;
	char		*form;

	form = oauth2_form("grant_type",
	    "urn:ietf:params:oauth:grant-type:device_code", "device_code",
	    z->device_code, "client_id", z->ac->oauth2_client_id,
	    "client_secret", z->secret, (char *)NULL);
	z->http = http_post(z->base, z->dns, z->ac->oauth2_token_url,
	    z->ac->ca_file, form, z->timeout, authz_device_token_cb, z);
	freezero_str(form);
}

static void
authz_device_cb(const struct http_reply *reply, void *arg)
{
	struct authz		*z = arg;
	struct oauth2_tokens	 t;
	struct oauth2_error	 e;
	char			 code[128], uri[512], device[2048], when[32];
	const char		*complete;
	char			 cbuf[1024];
	long			 n;
	struct tm		 tm;

	z->http = NULL;
	if (reply->error != NULL) {
		authz_end(z, reply->code, "device authorization endpoint: %s",
		    reply->error);
		return;
	}
	if (reply->status != 200) {
		if (oauth2_token_reply(reply->status, reply->body, reply->len,
		    &t, &e) == OAUTH2_REPLY_REFUSED)
			authz_refused(z, "the device authorization endpoint "
			    "refused", &e);
		else
			authz_end(z, reply->status >= 500 ? EXIT_TEMPFAIL :
			    EXIT_CONFIG, "the device authorization endpoint %s "
			    "answered HTTP %d; is oauth2-device-url right?",
			    z->ac->oauth2_device_url, reply->status);
		return;
	}
	/* Google calls it verification_url. */
	if (oauth2_json_string(reply->body, reply->len, "device_code", device,
	    sizeof device) == NULL ||
	    oauth2_json_string(reply->body, reply->len, "user_code", code,
	    sizeof code) == NULL ||
	    (oauth2_json_string(reply->body, reply->len, "verification_uri",
	    uri, sizeof uri) == NULL &&
	    oauth2_json_string(reply->body, reply->len, "verification_url",
	    uri, sizeof uri) == NULL)) {
		authz_end(z, EXIT_PROTOCOL, "the device authorization endpoint "
		    "%s sent no device_code, user_code and verification_uri",
		    z->ac->oauth2_device_url);
		return;
	}
	complete = oauth2_json_string(reply->body, reply->len,
	    "verification_uri_complete", cbuf, sizeof cbuf);
	z->device_code = xstrdup(device);
	wipe(device, sizeof device);
	n = oauth2_json_integer(reply->body, reply->len, "interval");
	z->interval = n >= 1 && n <= DEVICE_INTERVAL_MAX ? (int)n :
	    DEVICE_INTERVAL;
	n = oauth2_json_integer(reply->body, reply->len, "expires_in");
	z->device_expires = time(NULL) + (n > 0 ? n : AUTHORIZE_WAIT);
	localtime_r(&z->device_expires, &tm);
	strftime(when, sizeof when, "%H:%M", &tm);

	printf("To authorize maild to read the mail of account %s (%s),\n"
	    "open this page in a browser, on this or any other device:\n\n"
	    "    %s\n\nsign in as %s and enter the code\n\n    %s\n\n",
	    z->ac->name, oauth2_provider_name(z->ac->oauth2_provider), uri,
	    z->ac->user, code);
	if (complete != NULL)
		printf("(or open %s\nwhich has the code in it)\n\n", complete);
	printf("Waiting for the sign-in until %s...\n", when);
	fflush(stdout);
	authz_device_wait(z);
}

static void
authz_device_start(struct authz *z)
{
	char	*form;

	form = oauth2_form("client_id", z->ac->oauth2_client_id,
	    "client_secret", z->secret, "scope", z->ac->oauth2_scope,
	    (char *)NULL);
	z->timer = evtimer_new(z->base, authz_device_poll, z);
	z->http = http_post(z->base, z->dns, z->ac->oauth2_device_url,
	    z->ac->ca_file, form, z->timeout, authz_device_cb, z);
	freezero_str(form);
}

/* ------------------------------------------------------------------ */
/* The authorization code grant with PKCE and a loopback redirect */

static void
authz_code_token_cb(const struct http_reply *reply, void *arg)
{
	struct authz		*z = arg;
	struct oauth2_tokens	 t;
	struct oauth2_error	 e;

	z->http = NULL;
	if (reply->error != NULL) {
		authz_end(z, reply->code, "token endpoint: %s", reply->error);
		return;
	}
	switch (oauth2_token_reply(reply->status, reply->body, reply->len, &t,
	    &e)) {
	case OAUTH2_REPLY_OK:
		authz_store(z, &t);
		oauth2_tokens_clear(&t);
		return;
	case OAUTH2_REPLY_REFUSED:
		authz_refused(z, "the token endpoint refused the code", &e);
		return;
	default:
		authz_end(z, reply->status >= 500 ? EXIT_TEMPFAIL :
		    EXIT_PROTOCOL, "the token endpoint %s sent %s",
		    z->ac->oauth2_token_url, e.desc);
		return;
	}
}

/* The browser came back: with the code, or with why not. */
static void
authz_redirect_cb(const char *query, void *arg)
{
	struct authz		*z = arg;
	struct evkeyvalq	 q;
	const char		*code, *state, *error, *desc;
	char			*form, esc[2][LOG_ESCAPE_MAX];

	TAILQ_INIT(&q);
	if (evhttp_parse_query_str(query, &q) == -1) {
		authz_end(z, EXIT_PROTOCOL, "the browser came back with a "
		    "query maild cannot read");
		return;
	}
	code = evhttp_find_header(&q, "code");
	state = evhttp_find_header(&q, "state");
	error = evhttp_find_header(&q, "error");
	desc = evhttp_find_header(&q, "error_description");
	if (state == NULL || strcmp(state, z->state) != 0) {
		/* RFC 6749 10.12: not the answer to our request. */
		authz_end(z, EXIT_PROTOCOL, "the browser came back with a "
		    "wrong state; was another authorization under way?");
	} else if (error != NULL) {
		log_escape(esc[0], sizeof esc[0], error, strlen(error));
		log_escape(esc[1], sizeof esc[1], desc != NULL ? desc : "",
		    desc != NULL ? strlen(desc) : 0);
		authz_end(z, strcmp(error, "access_denied") == 0 ? EXIT_NOPERM :
		    EXIT_CONFIG, "the provider said: %s%s%s", esc[0],
		    desc != NULL ? ": " : "", esc[1]);
	} else if (code == NULL || *code == '\0') {
		authz_end(z, EXIT_PROTOCOL, "the browser came back without a "
		    "code");
	} else {
		printf("Got the code; asking for the tokens...\n");
		fflush(stdout);
		form = oauth2_form("grant_type", "authorization_code", "code",
		    code, "redirect_uri", z->redirect, "client_id",
		    z->ac->oauth2_client_id, "client_secret", z->secret,
		    "code_verifier", z->verifier, (char *)NULL);
		z->http = http_post(z->base, z->dns, z->ac->oauth2_token_url,
		    z->ac->ca_file, form, z->timeout, authz_code_token_cb, z);
		freezero_str(form);
	}
	evhttp_clear_headers(&q);
}

static void
authz_code_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	struct authz	*z = arg;

	authz_end(z, EXIT_TEMPFAIL, "no answer from the browser within %d "
	    "minutes; run maild --authorize %s again", AUTHORIZE_WAIT / 60,
	    z->ac->name);
}

static void
authz_code_start(struct authz *z)
{
	const struct account_conf	*ac = z->ac;
	unsigned char			 rnd[32], digest[SHA256_DIGEST_LENGTH];
	char				 challenge[64], host[256], *form, *cause;
	const char			*hint;
	struct timeval			 tv = { AUTHORIZE_WAIT, 0 };
	int				 port;

	if ((z->listener = http_listen(z->base, &port, authz_redirect_cb, z,
	    &cause)) == NULL) {
		authz_end(z, EXIT_OSERR, "%s", cause);
		free(cause);
		return;
	}
	snprintf(z->redirect, sizeof z->redirect, "http://127.0.0.1:%d/",
	    port);
	random_bytes(rnd, sizeof rnd);
	authz_b64url(rnd, sizeof rnd, z->verifier, sizeof z->verifier);
	SHA256((const unsigned char *)z->verifier, strlen(z->verifier),
	    digest);
	authz_b64url(digest, sizeof digest, challenge, sizeof challenge);
	random_bytes(rnd, 16);
	authz_b64url(rnd, 16, z->state, sizeof z->state);
	wipe(rnd, sizeof rnd);

	/* Google gives a refresh token only when asked for one. */
	hint = ac->oauth2_provider == OAUTH2_CUSTOM ? NULL : ac->user;
	form = oauth2_form("response_type", "code", "client_id",
	    ac->oauth2_client_id, "redirect_uri", z->redirect, "scope",
	    ac->oauth2_scope, "state", z->state, "code_challenge", challenge,
	    "code_challenge_method", "S256", "login_hint", hint,
	    "access_type", ac->oauth2_provider == OAUTH2_GOOGLE ? "offline" :
	    NULL, "prompt", ac->oauth2_provider == OAUTH2_GOOGLE ? "consent" :
	    NULL, (char *)NULL);
	if (gethostname(host, sizeof host) == -1)
		snprintf(host, sizeof host, "this-machine");
	host[sizeof host - 1] = '\0';
	printf("To authorize maild to read the mail of account %s (%s),\n"
	    "open this URL in a web browser and sign in as %s:\n\n"
	    "    %s%c%s\n\n"
	    "The browser then comes back to maild at %s\n"
	    "(the page may say so, or that it cannot connect: see the "
	    "terminal).\n"
	    "With the browser on another machine, forward the port from "
	    "there first:\n\n"
	    "    ssh -L %d:127.0.0.1:%d %s\n\n"
	    "Waiting for the browser (at most %d minutes)...\n",
	    ac->name, oauth2_provider_name(ac->oauth2_provider), ac->user,
	    ac->oauth2_auth_url, strchr(ac->oauth2_auth_url, '?') != NULL ?
	    '&' : '?', form, z->redirect, port, port, host,
	    AUTHORIZE_WAIT / 60);
	fflush(stdout);
	free(form);
	z->timer = evtimer_new(z->base, authz_code_timeout_cb, z);
	evtimer_add(z->timer, &tv);
}

/* ------------------------------------------------------------------ */

/*
 * Run maild --authorize name: the loop runs until the token is stored
 * or it failed.  Returns the exit status.
 */
int
authorize_run(const struct session_env *env, struct config *conf,
    const char *name)
{
	struct authz	 z;
	size_t		 i;

	memset(&z, 0, sizeof z);
	for (i = 0; i < conf->naccounts; i++) {
		if (strcmp(conf->accounts[i].name, name) == 0)
			z.ac = &conf->accounts[i];
	}
	if (z.ac == NULL) {
		fprintf(stderr, "maild: %s: no account \"%s\"\n", conf->path,
		    name);
		return (EXIT_USAGE);
	}
	if (z.ac->oauth2_provider == OAUTH2_NONE) {
		fprintf(stderr, "maild: account %s has no oauth2-provider, so "
		    "there is nothing to authorize (see maild.conf(5))\n",
		    name);
		return (EXIT_CONFIG);
	}
	if (mkdir_p(conf->state_dir, 0700) == -1) {
		fprintf(stderr, "maild: state-dir %s: %s\n", conf->state_dir,
		    strerror(errno));
		return (EXIT_IOERR);
	}
	z.base = env->base;
	z.dns = env->dns;
	z.timeout = conf->timeout;
	z.exitcode = EXIT_SOFTWARE;
	if (z.ac->oauth2_secret_source != SECRET_NONE) {
		z.sac.name = z.ac->name;
		z.sac.secret_source = z.ac->oauth2_secret_source;
		z.sac.secret = z.ac->oauth2_client_secret;
		z.sjob = secret_get(z.base, &z.sac, z.timeout, authz_secret_cb,
		    &z);
	} else
		authz_start(&z);
	event_base_dispatch(z.base);

	secret_cancel(z.sjob);
	http_cancel(z.http);
	http_listen_close(z.listener);
	if (z.timer != NULL)
		event_free(z.timer);
	if (z.secret != NULL) {
		wipe(z.secret, z.secretlen);
		free(z.secret);
	}
	freezero_str(z.device_code);
	wipe(z.verifier, sizeof z.verifier);
	return (z.exitcode);
}
