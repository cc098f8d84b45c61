/*
 * test_session.c: unit tests for the session logic (src/session.c and
 * src/pop3.c) with the real delivery core, Maildir and state, against a
 * scripted server.  The server is a listener on 127.0.0.1 on the same
 * libevent base as the session (as tests/fuzz/fuzz_session.c does; tls =
 * none with allow-plaintext): its side of each dialogue is a table of
 * steps, "maild sends this line, the server answers that".  A line that
 * is not the one the script expects ends the connection and fails the
 * test.
 *
 * Each test checks what maild sent and in which order, whether it waited
 * for each answer or pipelined (the server notes how many answers it had
 * sent when each line arrived), how the session ended, and what is in the
 * Maildir and the state afterwards: the login methods, pipelined UIDL and
 * LIST, the lock-step fallback, RETR -ERR, a connection lost in the
 * middle of a message, a lost +OK to QUIT, and the greeting of an IMAP or
 * SMTP server.
 *
 * Everything happens in a fresh directory under $TMPDIR (or /tmp), which
 * is removed at the end.
 */

#include "config.h"

#include <sys/socket.h>
#include <sys/stat.h>

#include <netinet/in.h>

#include <dirent.h>
#include <limits.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/dns.h>
#include <event2/event.h>

#include "maild.h"
#include "tap.h"
#include "files.h"

/* The whole test may not take longer than this (seconds). */
#define TEST_ALARM	300
/* Lines the server keeps of what maild sent in one session. */
#define PEER_LINES_MAX	64

/* A step's flags. */
#define HANGUP		0x1	/* close once the answer has left */

struct step {
	const char	*expect;	/* the line maild sends; NULL: greeting */
	const char	*reply;		/* the server's answer; NULL: none */
	int		 flags;
};

/* The server's side of one session. */
struct peer {
	const struct step	*script;
	size_t			 nsteps, next;
	struct bufferevent	*bev;
	int			 connections;
	int			 closed;
	int			 hanging;	/* answers no more */
	unsigned		 replies;	/* answers sent so far */
	size_t			 nlines;
	char			 lines[PEER_LINES_MAX][POP3_LINE_MAX];
	unsigned		 stamp[PEER_LINES_MAX];	/* replies before it */
	char			 transcript[PEER_LINES_MAX * 64];
	char			*mismatch;
};

/* How the session ended. */
struct outcome {
	int		 done;
	int		 exitcode;
	char		*error;
	unsigned	 fetched;
	unsigned	 deleted;
	int		 nopipelining;
};

static char			*topdir;
static char			 statedir[PATH_MAX - 64], maildir[PATH_MAX - 64];
static struct event_base	*base;
static struct session_env	 env;
static struct config		 conf;
static struct account_conf	 ac;
static struct peer		 peer;
static struct outcome		 out;
static int			 listener, port;
static struct event		*listen_ev;

/* Two messages, as the server sends them and as the Maildir keeps them. */
static const char M1_RETR[] = "+OK\r\n"
	"From: a@example.com\r\nSubject: one\r\n\r\nHello.\r\n.\r\n";
static const char M1_FILE[] =
	"From: a@example.com\nSubject: one\n\nHello.\n";
static const char M2_RETR[] = "+OK message follows\r\n"
	"Subject: two\r\n\r\n..a line that starts with a dot\r\n.\r\n";
static const char M2_FILE[] =
	"Subject: two\n\n.a line that starts with a dot\n";

/* The greeting, CAPA and a USER/PASS login that succeeds. */
#define LOGIN(capa)							\
	{ NULL, "+OK ready\r\n", 0 },					\
	{ "CAPA", (capa), 0 },						\
	{ "USER user", "+OK\r\n", 0 },					\
	{ "PASS password", "+OK logged in\r\n", 0 }

static const char CAPA_PIPE[] =
	"+OK\r\nUSER\r\nUIDL\r\nPIPELINING\r\n.\r\n";
static const char CAPA_PLAIN[] = "+OK\r\nUSER\r\nUIDL\r\n.\r\n";
static const char UIDL_2[] = "+OK\r\n1 uid-one\r\n2 uid-two\r\n.\r\n";
static const char UIDL_0[] = "+OK\r\n.\r\n";
static char		 LIST_2[128];

static void	check_done(void);

/* RFC 1939's size: the message with CRLF line ends, unstuffed. */
static size_t
wire_size(const char *file)
{
	size_t	n = strlen(file);
	const char *p;

	for (p = file; *p != '\0'; p++)
		if (*p == '\n')
			n++;
	return (n);
}

/* ---- the scripted server ---- */

static void
peer_close(void)
{
	if (peer.bev != NULL)
		bufferevent_free(peer.bev);
	peer.bev = NULL;
	peer.closed = 1;
	check_done();
}

static void
peer_send(const char *text)
{
	if (text == NULL)
		return;
	evbuffer_add(bufferevent_get_output(peer.bev), text, strlen(text));
	peer.replies++;
}

/* The output has left: a hang-up that waited for it happens now. */
static void
peer_write_cb(struct bufferevent *bev, void *arg)
{
	peer_close();
}

static void
peer_event_cb(struct bufferevent *bev, short what, void *arg)
{
	peer_close();
}

/* Answer, and hang up afterwards if the step says so. */
static void
peer_answer(const struct step *st)
{
	peer_send(st->reply);
	if (!(st->flags & HANGUP))
		return;
	peer.hanging = 1;
	bufferevent_disable(peer.bev, EV_READ);
	if (evbuffer_get_length(bufferevent_get_output(peer.bev)) == 0)
		peer_close();
	else
		bufferevent_setcb(peer.bev, NULL, peer_write_cb, peer_event_cb,
		    NULL);
}

/* One line from maild: note it, check it against the script, answer. */
static void
peer_line(const char *line, unsigned stamp)
{
	const struct step	*st;
	size_t			 o = strlen(peer.transcript);

	if (peer.nlines < PEER_LINES_MAX) {
		snprintf(peer.lines[peer.nlines], sizeof peer.lines[0], "%s",
		    line);
		peer.stamp[peer.nlines++] = stamp;
	}
	snprintf(peer.transcript + o, sizeof peer.transcript - o, "%s%s",
	    o > 0 ? " | " : "", line);
	if (peer.next >= peer.nsteps ||
	    strcmp(peer.script[peer.next].expect, line) != 0) {
		if (peer.mismatch == NULL)
			xasprintf(&peer.mismatch, "step %zu: expected '%s', "
			    "maild sent '%s'", peer.next,
			    peer.next < peer.nsteps ?
			    peer.script[peer.next].expect : "(nothing)", line);
		peer_close();
		return;
	}
	st = &peer.script[peer.next++];
	peer_answer(st);
}

static void
peer_read_cb(struct bufferevent *bev, void *arg)
{
	unsigned	 stamp = peer.replies;
	char		*line;
	size_t		 len;

	while (peer.bev != NULL && peer.bev == bev && !peer.hanging &&
	    (line = evbuffer_readln(bufferevent_get_input(bev), &len,
	    EVBUFFER_EOL_CRLF_STRICT)) != NULL) {
		peer_line(line, stamp);
		free(line);
	}
}

static void
accept_cb(evutil_socket_t fd, short what, void *arg)
{
	int	c;

	if ((c = accept(fd, NULL, NULL)) == -1)
		return;
	if (peer.connections++ > 0 || peer.script == NULL) {
		/* One connection per session, never two. */
		if (peer.mismatch == NULL)
			peer.mismatch = xstrdup("a second connection");
		close(c);
		return;
	}
	evutil_make_socket_nonblocking(c);
	peer.bev = bufferevent_socket_new(base, c, BEV_OPT_CLOSE_ON_FREE);
	bufferevent_setcb(peer.bev, peer_read_cb, NULL, peer_event_cb, NULL);
	bufferevent_enable(peer.bev, EV_READ | EV_WRITE);
	if (peer.nsteps > 0 && peer.script[0].expect == NULL)
		peer_answer(&peer.script[peer.next++]);
}

/* The position of line in what maild sent; -1 if it did not send it. */
static int
sent(const char *line)
{
	size_t	i;

	for (i = 0; i < peer.nlines; i++)
		if (strcmp(peer.lines[i], line) == 0)
			return ((int)i);
	return (-1);
}

/* Did maild send b before it had the server's answer to a? */
static int
pipelined(const char *a, const char *b)
{
	int	i = sent(a), j = sent(b);

	return (i != -1 && j > i && peer.stamp[j] == peer.stamp[i]);
}

/* Did maild wait for the answer to a before it sent b? */
static int
waited(const char *a, const char *b)
{
	int	i = sent(a), j = sent(b);

	return (i != -1 && j > i && peer.stamp[j] > peer.stamp[i]);
}

/* ---- running a session ---- */

static void
done_cb(struct session_result *r, int final, void *arg)
{
	(void)final;
	out.done = 1;
	out.exitcode = r->exitcode;
	out.error = r->error != NULL ? xstrdup(r->error) : NULL;
	out.fetched = r->fetched;
	out.deleted = r->deleted;
	out.nopipelining = r->nopipelining;
	check_done();
}

/* Both sides are finished: the test looks at what happened. */
static void
check_done(void)
{
	if (out.done && (peer.closed || peer.connections == 0))
		event_base_loopexit(base, NULL);
}

static void
run_(const struct step *script, size_t n)
{
	struct session_opts	opts;

	free(peer.mismatch);
	free(out.error);
	memset(&peer, 0, sizeof peer);
	memset(&out, 0, sizeof out);
	peer.script = script;
	peer.nsteps = n;
	memset(&opts, 0, sizeof opts);
	opts.mode = SESSION_FETCH;
	session_start(&env, &conf, &ac, NULL, &opts, done_cb, NULL);
	event_base_dispatch(base);
	if (peer.bev != NULL) {
		bufferevent_free(peer.bev);
		peer.bev = NULL;
	}
	peer.script = NULL;
	if (peer.mismatch != NULL)
		diag("the server: %s", peer.mismatch);
	if (out.error != NULL)
		diag("maild: %s", out.error);
}
#define run(script)	run_((script), sizeof(script) / sizeof((script)[0]))

/* The script ran to its end, and nothing else was sent. */
static void
script_followed(const char *what)
{
	ok(peer.mismatch == NULL && peer.next == peer.nsteps,
	    tap_fmt("%s: maild said what the script expects, to its end",
	    what));
	if (peer.mismatch != NULL || peer.next != peer.nsteps)
		diag("stopped before step %zu of %zu; maild sent: %s",
		    peer.next, peer.nsteps, peer.transcript);
}

/* A fresh account in <topdir>/<name>: state dir and Maildir. */
static void
fresh(const char *name)
{
	char	*dir;

	xasprintf(&dir, "%s/%s", topdir, name);
	mkdir(dir, 0700);
	snprintf(statedir, sizeof statedir, "%s/state", dir);
	snprintf(maildir, sizeof maildir, "%s/Maildir", dir);
	free(dir);
	conf.state_dir = statedir;
	memset(&ac, 0, sizeof ac);
	ac.name = (char *)"acct";
	ac.host = (char *)"127.0.0.1";
	ac.port = port;
	ac.user = (char *)"user";
	ac.secret_source = SECRET_PASSWORD;
	ac.secret = (char *)"password";
	ac.maildir = maildir;
	ac.keep = 1;
	ac.exact_sizes = 1;
	ac.tls = TLS_NONE;
	ac.allow_plaintext = 1;
	ac.auth = AUTH_USER;
	ac.pipelining = 1;
	ac.poll_interval = 300;
}

/* How many files in the Maildir's sub (new, tmp) hold exactly content. */
static int
maildir_count(const char *sub, const char *content)
{
	DIR		*d;
	struct dirent	*de;
	char		*path, *data;
	size_t		 len;
	int		 n = 0;

	xasprintf(&path, "%s/%s", maildir, sub);
	d = opendir(path);
	free(path);
	if (d == NULL)
		return (content == NULL ? 0 : -1);
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		if (content == NULL) {
			n++;
			continue;
		}
		xasprintf(&path, "%s/%s/%s", maildir, sub, de->d_name);
		data = read_file(path, &len);
		if (data != NULL && len == strlen(content) &&
		    memcmp(data, content, len) == 0)
			n++;
		free(data);
		free(path);
	}
	closedir(d);
	return (n);
}

/* The kind of the state's record of uidl (0: none). */
static int
state_kind(const char *uidl)
{
	struct state		*st;
	const struct state_rec	*r;
	char			*cause = NULL;
	uint32_t		 id;
	int			 code, kind = 0;

	if ((st = state_open(statedir, ac.name, &code, &cause)) == NULL) {
		diag("state_open: %s", cause);
		free(cause);
		return (-1);
	}
	id = state_find(st, uidl, strlen(uidl), 1);
	if (id != STATE_NONE && (r = state_rec(st, id)) != NULL)
		kind = r->kind;
	state_close(st);
	return (kind);
}

/* ---- the tests ---- */

/*
 * The usual session with a server that pipelines: UIDL and LIST go
 * together, but only once the login is answered; both RETRs together;
 * the DELEs once both are delivered; QUIT; the records of what the
 * server removed are forgotten at its +OK.
 */
static void
test_pipelined_delete(void)
{
	const struct step script[] = {
		LOGIN(CAPA_PIPE),
		{ "UIDL", UIDL_2, 0 },
		{ "LIST", LIST_2, 0 },
		{ "RETR 1", M1_RETR, 0 },
		{ "RETR 2", M2_RETR, 0 },
		{ "DELE 1", "+OK\r\n", 0 },
		{ "DELE 2", "+OK\r\n", 0 },
		{ "QUIT", "+OK bye\r\n", 0 },
	};

	fresh("pipelined");
	ac.keep = 0;
	run(script);
	script_followed("pipelined");
	is_int(out.exitcode, 0, "pipelined: the session succeeded");
	is_int(out.fetched, 2, "pipelined: fetched=2");
	is_int(out.deleted, 2, "pipelined: deleted=2");
	ok(waited("PASS password", "UIDL"),
	    "pipelined: UIDL only after the answer to the login");
	ok(pipelined("UIDL", "LIST"), "pipelined: UIDL and LIST together");
	ok(pipelined("RETR 1", "RETR 2"), "pipelined: the RETRs together");
	ok(waited("RETR 2", "DELE 1"),
	    "pipelined: DELE only once the message is in");
	ok(pipelined("DELE 1", "DELE 2"), "pipelined: the DELEs together");
	ok(waited("DELE 2", "QUIT"), "pipelined: QUIT after the DELEs");
	is_int(maildir_count("new", M1_FILE), 1,
	    "pipelined: message 1 in new/, byte-exact");
	is_int(maildir_count("new", M2_FILE), 1,
	    "pipelined: message 2 in new/, unstuffed");
	is_int(maildir_count("new", NULL), 2, "pipelined: nothing else in new/");
	is_int(maildir_count("tmp", NULL), 0, "pipelined: tmp/ empty");
	is_int(state_kind("uid-one"), 0,
	    "pipelined: the server removed uid-one: its record is forgotten");
	is_int(state_kind("uid-two"), 0,
	    "pipelined: the server removed uid-two: its record is forgotten");
}

/*
 * A server without PIPELINING: CAPA is asked again after the login (some
 * announce it only then); still none, so every command waits for the
 * answer to the one before.  Keep mode: no DELE, and QUIT's answer is
 * not waited for.  A second session fetches nothing.
 */
static void
test_lockstep(void)
{
	const struct step script[] = {
		LOGIN(CAPA_PLAIN),
		{ "CAPA", CAPA_PLAIN, 0 },
		{ "UIDL", UIDL_2, 0 },
		{ "LIST", LIST_2, 0 },
		{ "RETR 1", M1_RETR, 0 },
		{ "RETR 2", M2_RETR, 0 },
		{ "QUIT", "+OK bye\r\n", 0 },
	};
	const struct step again[] = {
		LOGIN(CAPA_PLAIN),
		{ "CAPA", CAPA_PLAIN, 0 },
		{ "UIDL", UIDL_2, 0 },
		{ "LIST", LIST_2, 0 },
		{ "QUIT", "+OK bye\r\n", 0 },
	};
	size_t	i;
	int	each = 1;

	fresh("lockstep");
	run(script);
	script_followed("lock-step");
	is_int(out.exitcode, 0, "lock-step: the session succeeded");
	is_int(out.fetched, 2, "lock-step: fetched=2");
	for (i = 1; i < peer.nlines; i++)
		if (peer.stamp[i] <= peer.stamp[i - 1])
			each = 0;
	ok(each, "lock-step: every command waited for the answer before it");
	is_int(maildir_count("new", M1_FILE) + maildir_count("new", M2_FILE),
	    2, "lock-step: both messages in new/");
	is_int(state_kind("uid-one"), STATE_DELIVERED,
	    "lock-step: uid-one recorded as delivered");
	is_int(state_kind("uid-two"), STATE_DELIVERED,
	    "lock-step: uid-two recorded as delivered");

	run(again);
	script_followed("lock-step, second session");
	is_int(out.exitcode, 0, "lock-step: the second session succeeded");
	is_int(out.fetched, 0, "lock-step: the second session fetched nothing");
	is_int(maildir_count("new", NULL), 2, "lock-step: still two in new/");
}

/* pipelining = no: lock-step although the server offers PIPELINING. */
static void
test_pipelining_off(void)
{
	const struct step script[] = {
		LOGIN(CAPA_PIPE),
		{ "UIDL", UIDL_2, 0 },
		{ "LIST", LIST_2, 0 },
		{ "RETR 1", M1_RETR, 0 },
		{ "RETR 2", M2_RETR, 0 },
		{ "QUIT", "+OK bye\r\n", 0 },
	};

	fresh("nopipe");
	ac.pipelining = 0;
	run(script);
	script_followed("pipelining = no");
	is_int(out.exitcode, 0, "pipelining = no: the session succeeded");
	ok(waited("UIDL", "LIST"), "pipelining = no: LIST after UIDL's answer");
	ok(waited("RETR 1", "RETR 2"),
	    "pipelining = no: RETR 2 after message 1");
	is_int(maildir_count("new", NULL), 2, "pipelining = no: two in new/");
}

/* One login: the method's lines, then an empty mailbox and QUIT. */
static void
login_(const char *what, enum auth_method method, const char *user,
    const char *secret, const char *greeting, const char *capa,
    const struct step *login, size_t nlogin)
{
	static int	count;
	struct step	script[16];
	size_t		n = 0, i;
	char		dir[32];

	snprintf(dir, sizeof dir, "login-%d", ++count);
	fresh(dir);
	ac.auth = method;
	ac.pipelining = 0;
	ac.user = (char *)user;
	ac.secret = (char *)secret;
	script[n++] = (struct step){ NULL, greeting, 0 };
	script[n++] = (struct step){ "CAPA", capa, 0 };
	for (i = 0; i < nlogin; i++)
		script[n++] = login[i];
	script[n++] = (struct step){ "UIDL", UIDL_0, 0 };
	script[n++] = (struct step){ "QUIT", "+OK\r\n", 0 };
	run_(script, n);
	script_followed(what);
	is_int(out.exitcode, 0, tap_fmt("%s: logged in, nothing to fetch",
	    what));
}
#define login(what, m, u, s, g, c, l) \
	login_((what), (m), (u), (s), (g), (c), (l), sizeof(l) / sizeof((l)[0]))

static void
test_logins(void)
{
	static const char capa_sasl[] = "+OK\r\nUSER\r\nUIDL\r\n"
	    "SASL PLAIN LOGIN CRAM-MD5\r\n.\r\n";
	static const char capa_cram[] = "+OK\r\nUIDL\r\nSASL CRAM-MD5\r\n.\r\n";
	const struct step user[] = {
		{ "USER user", "+OK\r\n", 0 },
		{ "PASS password", "+OK\r\n", 0 },
	};
	const struct step plain[] = {
		{ "AUTH PLAIN AHVzZXIAcGFzc3dvcmQ=", "+OK\r\n", 0 },
	};
	const struct step login[] = {
		{ "AUTH LOGIN", "+ VXNlcm5hbWU6\r\n", 0 },
		{ "dXNlcg==", "+ UGFzc3dvcmQ6\r\n", 0 },
		{ "cGFzc3dvcmQ=", "+OK\r\n", 0 },
	};
	/* RFC 2195's example. */
	const struct step cram[] = {
		{ "AUTH CRAM-MD5", "+ PDE4OTYuNjk3MTcwOTUyQHBvc3RvZmZpY2UucmVzdG"
		    "9uLm1jaS5uZXQ+\r\n", 0 },
		{ "dGltIGI5MTNhNjAyYzdlZGE3YTQ5NWI0ZTZlNzMzNGQzODkw", "+OK\r\n",
		    0 },
	};
	/* RFC 1939's example. */
	const struct step apop[] = {
		{ "APOP mrose c4c9334bac560ecc979e58001b3e22fb", "+OK\r\n", 0 },
	};

	login("auth = user", AUTH_USER, "user", "password", "+OK ready\r\n",
	    capa_sasl, user);
	login("auth = plain", AUTH_PLAIN, "user", "password", "+OK ready\r\n",
	    capa_sasl, plain);
	login("auth = login", AUTH_LOGIN, "user", "password", "+OK ready\r\n",
	    capa_sasl, login);
	login("auth = auto, CRAM-MD5 offered", AUTH_AUTO, "tim",
	    "tanstaaftanstaaf", "+OK ready\r\n", capa_cram, cram);
	login("auth = auto, APOP timestamp, no TLS", AUTH_AUTO, "mrose",
	    "tanstaaf", "+OK POP3 server ready "
	    "<1896.697170952@dbc.mtview.ca.us>\r\n", CAPA_PLAIN, apop);
}

/* Without TLS, auto never sends the password in clear; a refusal stops. */
static void
test_login_refused(void)
{
	const struct step clear[] = {
		{ NULL, "+OK ready\r\n", 0 },
		{ "CAPA", CAPA_PLAIN, 0 },
	};
	const struct step refused[] = {
		{ NULL, "+OK ready\r\n", 0 },
		{ "CAPA", CAPA_PLAIN, 0 },
		{ "USER user", "+OK\r\n", 0 },
		{ "PASS password", "-ERR [AUTH] wrong password\r\n", 0 },
	};

	fresh("clear");
	ac.auth = AUTH_AUTO;
	run(clear);
	script_followed("auto without TLS, only USER offered");
	is_int(out.exitcode, EXIT_NOPERM,
	    "auto without TLS, only USER offered: exit 77");
	like(out.error, "unencrypted",
	    "auto without TLS, only USER offered: says why");

	fresh("refused");
	run(refused);
	script_followed("refused login");
	is_int(out.exitcode, EXIT_NOPERM, "refused login: exit 77");
	like(out.error, "wrong password",
	    "refused login: the server's words are in the error");
	is_int(peer.nlines, 3, "refused login: nothing after PASS");
}

/*
 * RETR answered -ERR: that message stays on the server, unrecorded; the
 * other is delivered and deleted; the session ends with an error saying
 * so, after QUIT.
 */
static void
test_retr_err(void)
{
	const struct step script[] = {
		LOGIN(CAPA_PIPE),
		{ "UIDL", UIDL_2, 0 },
		{ "LIST", LIST_2, 0 },
		{ "RETR 1", "-ERR message is locked\r\n", 0 },
		{ "RETR 2", M2_RETR, 0 },
		{ "DELE 2", "+OK\r\n", 0 },
		{ "QUIT", "+OK\r\n", 0 },
	};

	fresh("retr-err");
	ac.keep = 0;
	run(script);
	script_followed("RETR -ERR");
	is_int(out.exitcode, EXIT_PROTOCOL, "RETR -ERR: exit 76");
	like(out.error, "could not be retrieved",
	    "RETR -ERR: the error says a message stayed");
	is_int(out.fetched, 1, "RETR -ERR: fetched=1");
	is_int(out.deleted, 1, "RETR -ERR: deleted=1");
	ok(sent("DELE 1") == -1, "RETR -ERR: no DELE 1");
	is_int(maildir_count("new", M2_FILE), 1, "RETR -ERR: message 2 in new/");
	is_int(maildir_count("new", NULL), 1, "RETR -ERR: only message 2");
	is_int(state_kind("uid-one"), 0, "RETR -ERR: uid-one not recorded");
}

/*
 * The connection drops in the middle of message 2: message 1, complete,
 * is kept and recorded (fetching it again would only be waste); nothing
 * of message 2 stays, in new/ or tmp/; nothing is deleted.
 */
static void
test_drop_mid_message(void)
{
	const struct step script[] = {
		LOGIN(CAPA_PIPE),
		{ "UIDL", UIDL_2, 0 },
		{ "LIST", LIST_2, 0 },
		{ "RETR 1", M1_RETR, 0 },
		{ "RETR 2", "+OK\r\nSubject: two\r\n\r\nhalf a me", HANGUP },
	};

	fresh("drop");
	ac.keep = 0;
	run(script);
	script_followed("dropped mid-message");
	is_int(out.exitcode, EXIT_TEMPFAIL, "dropped mid-message: exit 75");
	like(out.error, "while receiving message 2",
	    "dropped mid-message: the error names the message cut short");
	is_int(out.fetched, 1, "dropped mid-message: fetched=1");
	is_int(maildir_count("new", M1_FILE), 1,
	    "dropped mid-message: message 1 kept");
	is_int(maildir_count("new", NULL), 1,
	    "dropped mid-message: nothing of message 2 in new/");
	is_int(maildir_count("tmp", NULL), 0, "dropped mid-message: tmp/ empty");
	is_int(state_kind("uid-one"), STATE_DELIVERED,
	    "dropped mid-message: uid-one recorded");
	is_int(state_kind("uid-two"), 0,
	    "dropped mid-message: uid-two not recorded");
	ok(sent("DELE 1") == -1 && sent("QUIT") == -1,
	    "dropped mid-message: no DELE, no QUIT");
}

/*
 * The +OK to QUIT never comes: the server may not have removed anything,
 * so the records stay; the next session finds the message listed again
 * and deletes it without fetching it again.
 */
static void
test_quit_lost(void)
{
	static const char uidl1[] = "+OK\r\n1 uid-one\r\n.\r\n";
	char		list1[64];
	const struct step script[] = {
		LOGIN(CAPA_PIPE),
		{ "UIDL", uidl1, 0 },
		{ "LIST", list1, 0 },
		{ "RETR 1", M1_RETR, 0 },
		{ "DELE 1", "+OK\r\n", 0 },
		{ "QUIT", NULL, HANGUP },
	};
	const struct step again[] = {
		LOGIN(CAPA_PIPE),
		{ "UIDL", uidl1, 0 },
		{ "LIST", list1, 0 },
		{ "DELE 1", "+OK\r\n", 0 },
		{ "QUIT", "+OK\r\n", 0 },
	};

	snprintf(list1, sizeof list1, "+OK\r\n1 %zu\r\n.\r\n",
	    wire_size(M1_FILE));
	fresh("quit-lost");
	ac.keep = 0;
	run(script);
	script_followed("QUIT's +OK lost");
	is_int(out.exitcode, EXIT_TEMPFAIL, "QUIT's +OK lost: exit 75");
	is_int(out.fetched, 1, "QUIT's +OK lost: fetched=1");
	is_int(maildir_count("new", M1_FILE), 1, "QUIT's +OK lost: delivered");
	is_int(state_kind("uid-one"), STATE_DELIVERED,
	    "QUIT's +OK lost: the record stays");

	run(again);
	script_followed("QUIT's +OK lost, next session");
	is_int(out.exitcode, 0, "QUIT's +OK lost: the next session succeeds");
	is_int(out.fetched, 0, "QUIT's +OK lost: not fetched again");
	is_int(out.deleted, 1, "QUIT's +OK lost: deleted again");
	is_int(maildir_count("new", NULL), 1,
	    "QUIT's +OK lost: still one message in new/");
	is_int(state_kind("uid-one"), 0,
	    "QUIT's +OK lost: forgotten once the server confirmed");
}

/* Not a POP3 server: say what it is, send nothing (no password). */
static void
test_wrong_server(void)
{
	const struct step imap[] = {
		{ NULL, "* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n",
		    0 },
	};
	const struct step smtp[] = {
		{ NULL, "220 mail.example.com ESMTP Postfix\r\n", 0 },
	};

	fresh("imap");
	run(imap);
	script_followed("IMAP greeting");
	is_int(out.exitcode, EXIT_PROTOCOL, "IMAP greeting: exit 76");
	like(out.error, "IMAP server", "IMAP greeting: says it is IMAP");
	is_int(peer.nlines, 0, "IMAP greeting: maild sent nothing");

	fresh("smtp");
	run(smtp);
	script_followed("SMTP greeting");
	is_int(out.exitcode, EXIT_PROTOCOL, "SMTP greeting: exit 76");
	like(out.error, "SMTP server", "SMTP greeting: says it is SMTP");
	is_int(peer.nlines, 0, "SMTP greeting: maild sent nothing");
}

static void
setup(void)
{
	struct sockaddr_in	sin;
	socklen_t		len = sizeof sin;

	signal(SIGPIPE, SIG_IGN);
	alarm(TEST_ALARM);
	log_init(1, 0);
	topdir = mkscratch("session");
	if ((base = event_base_new()) == NULL) {
		diag("event_base_new failed");
		exit(99);
	}
	env.base = base;
	env.dns = evdns_base_new(base, 0);

	listener = socket(AF_INET, SOCK_STREAM, 0);
	memset(&sin, 0, sizeof sin);
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (listener == -1 ||
	    bind(listener, (struct sockaddr *)&sin, sizeof sin) == -1 ||
	    listen(listener, 16) == -1 ||
	    getsockname(listener, (struct sockaddr *)&sin, &len) == -1) {
		perror("listener on 127.0.0.1");
		exit(99);
	}
	port = ntohs(sin.sin_port);
	listen_ev = event_new(base, listener, EV_READ | EV_PERSIST, accept_cb,
	    NULL);
	event_add(listen_ev, NULL);

	conf.refs = 1 << 30;	/* never freed */
	conf.poll_interval = 300;
	conf.timeout = 10;
	conf.session_timeout = 60;
	conf.max_connections = 1;
	snprintf(LIST_2, sizeof LIST_2, "+OK\r\n1 %zu\r\n2 %zu\r\n.\r\n",
	    wire_size(M1_FILE), wire_size(M2_FILE));
}

int
main(void)
{
	setup();
	test_pipelined_delete();
	test_lockstep();
	test_pipelining_off();
	test_logins();
	test_login_refused();
	test_retr_err();
	test_drop_mid_message();
	test_quit_lost();
	test_wrong_server();

	free(peer.mismatch);
	free(out.error);
	evdns_base_free(env.dns, 0);
	event_free(listen_ev);
	close(listener);
	event_base_free(base);
	rm_rf(topdir);
	free(topdir);
	return (done());
}
