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
 * login.c: from the greeting to a logged-in session.  CAPA tells what the
 * server can do; with tls = starttls the connection is upgraded with STLS
 * (RFC 2595) and CAPA asked again, and maild refuses to go on in clear
 * text if the server does not offer it.  Then the login: USER/PASS, APOP
 * (RFC 1939) or SASL AUTH (RFC 5034) with PLAIN, LOGIN, CRAM-MD5, XOAUTH2
 * or OAUTHBEARER, chosen by auth_choose().
 *
 * Nothing is pipelined across the login: each login command waits for the
 * answer to the one before, and the listing is asked only after the
 * login's +OK.  Some servers (Courier) hand the connection to another
 * process at the login and drop whatever the client sent behind it.
 */

#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "maild.h"
#include "session.h"

/* RFC 5034: an AUTH command with its initial response and CRLF fits 255
   octets. */
#define AUTH_LINE_MAX	255
/* Real servers list a dozen capabilities; an endless list is an attack. */
#define CAPA_LINES_MAX	10000
/* A server that keeps challenging is not going to let us in. */
#define SASL_MAX_STEPS	4

static void	login_begin(struct session *);
static void	login_sasl_start(struct session *);
static void	login_done(struct session *);
static void	login_failed(struct session *, const char *, size_t);

/* The connection is up (and encrypted, unless tls = starttls or none). */
void
login_connected(struct session *s)
{
	if (s->state == POP3_TLS && s->ac->tls == TLS_STARTTLS) {
		/* RFC 2595: forget what was learnt before TLS. */
		memset(&s->capa, 0, sizeof s->capa);
		s->capa_lines = 0;
		s->result.capa[0] = '\0';
		s->flags &= ~S_HAVE_CAPA;
		pop3_set_state(s, POP3_CAPA);
		pop3_send(s, CMD_CAPA, 0, "CAPA");
		return;
	}
	if (s->ac->tls == TLS_NONE)
		log_warnx("account=%s connection to %s is not encrypted "
		    "(tls = none): the password and the mail can be read "
		    "on the way", s->ac->name, s->result.peer);
	pop3_set_state(s, POP3_GREETING);
	pop3_expect(s, CMD_GREETING);
}

/* A reply to a command of the login phase. */
void
login_status(struct session *s, enum pop3_cmd cmd, enum pop3_status st,
    const char *text, size_t len)
{
	if (cmd == CMD_CAPA && st == POP3_OK) {
		s->flags |= S_HAVE_CAPA;
		s->rd = RD_LINES;		/* dequeued at the "." */
		return;
	}
	pop3_dequeue(s);
	switch (cmd) {
	case CMD_GREETING:
		if (st != POP3_OK) {
			pop3_server_error(s, "server refused the connection",
			    text, len, EXIT_UNAVAIL);
			return;
		}
		auth_apop_timestamp(text, len, s->apop_ts, sizeof s->apop_ts);
		pop3_set_state(s, POP3_CAPA);
		pop3_send(s, CMD_CAPA, 0, "CAPA");
		break;
	case CMD_CAPA:
		/* No CAPA (a plain RFC 1939 server): assume nothing. */
		login_capa_done(s);
		break;
	case CMD_STLS:
		if (st != POP3_OK) {
			pop3_server_error(s, "the server refused STLS; maild "
			    "does not log in without TLS", text, len,
			    EXIT_NOPERM);
			return;
		}
		pop3_start_tls(s);
		break;
	case CMD_USER:
		if (st != POP3_OK) {
			login_failed(s, text, len);
			return;
		}
		pop3_send_secret(s, CMD_PASS, "PASS ", s->secret,
		    s->secretlen, "PASS ********");
		break;
	case CMD_PASS:
	case CMD_APOP:
	case CMD_AUTH:
		if (st != POP3_OK) {
			login_failed(s, text, len);
			return;
		}
		login_done(s);
		break;
	default:
		fatalx("login_status: unexpected command %d", cmd);
	}
}

void
login_capa_line(struct session *s, const char *line, size_t len)
{
	char	esc[LOG_ESCAPE_MAX];

	size_t	o = strlen(s->result.capa);

	if (++s->capa_lines > CAPA_LINES_MAX) {
		pop3_fail(s, EXIT_PROTOCOL, "the server's CAPA list goes on "
		    "and on (more than %d lines)", CAPA_LINES_MAX);
		return;
	}
	log_trace("account=%s <<< %s", s->ac->name,
	    log_escape(esc, sizeof esc, line, len));
	parse_capa_line(&s->capa, line, len);
	/* For --check: the capabilities as the server put them. */
	if (o + 2 < sizeof s->result.capa)
		snprintf(s->result.capa + o, sizeof s->result.capa - o, "%s%s",
		    o ? ", " : "", log_escape(esc, sizeof esc, line, len));
}

/* CAPA is answered (or refused): on to STLS, the login or the listing. */
void
login_capa_done(struct session *s)
{
	if (s->qlen > 0 && s->q[s->qhead].cmd == CMD_CAPA)
		pop3_dequeue(s);
	if (s->capa.flags & CAPA_LOGIN_DELAY)
		s->result.login_delay = s->capa.login_delay;
	if (s->flags & S_CAPA_AGAIN) {
		if ((s->capa.flags & CAPA_PIPELINING) &&
		    !(s->flags & S_NO_PIPE))
			s->flags |= S_PIPELINING;
		fetch_start(s);
		return;
	}
	if (s->ac->tls == TLS_STARTTLS && !(s->flags & S_TLS_UP)) {
		if (!(s->capa.flags & CAPA_STLS)) {
			pop3_fail(s, EXIT_NOPERM, "the server does not offer "
			    "STLS%s; maild does not log in without TLS (use "
			    "tls = implicit on port 995 if the server has "
			    "it)", (s->flags & S_HAVE_CAPA) ? "" :
			    " (it does not even answer CAPA)");
			return;
		}
		pop3_set_state(s, POP3_STLS);
		pop3_send(s, CMD_STLS, 0, "STLS");
		return;
	}
	login_begin(s);
}

/* Choose how to log in, and start. */
static void
login_begin(struct session *s)
{
	const char	*why = NULL;
	char		*line;
	int		 m;

	m = auth_choose(s->ac->auth, &s->capa, (s->flags & S_HAVE_CAPA) != 0,
	    s->apop_ts[0] != '\0', (s->flags & S_TLS_UP) != 0, &why);
	if (m == -1) {
		pop3_fail(s, EXIT_NOPERM, "cannot log in: %s", why);
		return;
	}
	s->method = (enum auth_method)m;
	if ((s->capa.flags & CAPA_PIPELINING) && !(s->flags & S_NO_PIPE))
		s->flags |= S_PIPELINING;
	pop3_set_state(s, POP3_AUTH);
	log_debug("account=%s login=%s", s->ac->name,
	    auth_method_name(s->method));
	switch (s->method) {
	case AUTH_USER:
		pop3_send(s, CMD_USER, 0, "USER %s", s->ac->user);
		break;
	case AUTH_APOP:
		line = auth_apop(s->ac->user, s->apop_ts, s->secret,
		    s->secretlen);
		pop3_send_secret(s, CMD_APOP, "", line, strlen(line),
		    "APOP ********");
		freezero_str(line);
		break;
	default:
		login_sasl_start(s);
		break;
	}
}

/* The initial response of a SASL method that has one; NULL otherwise. */
static char *
login_sasl_response(struct session *s)
{
	switch (s->method) {
	case AUTH_PLAIN:
		return (auth_plain(s->ac->user, s->secret, s->secretlen));
	case AUTH_XOAUTH2:
		return (auth_xoauth2(s->ac->user, s->secret, s->secretlen));
	case AUTH_OAUTHBEARER:
		return (auth_oauthbearer(s->ac->user, s->ac->host, s->ac->port,
		    s->secret, s->secretlen));
	default:
		return (NULL);
	}
}

/* "AUTH <mech>", with the initial response when it fits the line. */
static void
login_sasl_start(struct session *s)
{
	const char	*mech = auth_sasl_name(s->method);
	char		 prefix[64], trace[64];
	char		*ir;

	s->sasl_step = 0;
	s->flags &= ~S_SASL_IR;
	ir = login_sasl_response(s);
	snprintf(prefix, sizeof prefix, "AUTH %s ", mech);
	if (ir != NULL && strlen(prefix) + strlen(ir) + 2 <= AUTH_LINE_MAX) {
		snprintf(trace, sizeof trace, "AUTH %s ********", mech);
		s->flags |= S_SASL_IR;
		pop3_send_secret(s, CMD_AUTH, prefix, ir, strlen(ir), trace);
	} else
		pop3_send(s, CMD_AUTH, 0, "AUTH %s", mech);
	if (ir != NULL)
		freezero_str(ir);
}

/* Keep what an OAuth server says when it refuses a token, for the log. */
static void
login_sasl_note_error(struct session *s, const char *text, size_t len)
{
	unsigned char	*json;
	size_t		 jlen;
	char		 esc[LOG_ESCAPE_MAX];

	if ((json = auth_unb64(text, len, &jlen)) == NULL)
		return;
	free(s->sasl_error);
	s->sasl_error = xstrdup(log_escape(esc, sizeof esc, json, jlen));
	free(json);
}

/* The server sent a SASL challenge ("+ ..."): answer it. */
void
login_continuation(struct session *s, const char *text, size_t len)
{
	char	*resp = NULL;
	int	 step = s->sasl_step++;

	if (step >= SASL_MAX_STEPS) {
		pop3_fail(s, EXIT_PROTOCOL, "the server keeps sending SASL "
		    "challenges; giving up the login");
		return;
	}
	switch (s->method) {
	case AUTH_PLAIN:
		if (step == 0 && !(s->flags & S_SASL_IR))
			resp = login_sasl_response(s);
		break;
	case AUTH_LOGIN:
		/* The prompts are "Username:" and "Password:". */
		if (step == 0)
			resp = auth_b64(s->ac->user, strlen(s->ac->user));
		else if (step == 1)
			resp = auth_b64(s->secret, s->secretlen);
		break;
	case AUTH_CRAM_MD5:
		if (step == 0 && (resp = auth_cram_md5(s->ac->user, s->secret,
		    s->secretlen, text, len)) == NULL) {
			pop3_fail(s, EXIT_PROTOCOL, "the server sent a "
			    "CRAM-MD5 challenge that is not base64");
			return;
		}
		break;
	case AUTH_XOAUTH2:
	case AUTH_OAUTHBEARER:
		if (step == 0 && !(s->flags & S_SASL_IR)) {
			resp = login_sasl_response(s);
			break;
		}
		/* A refusal with details; answer so the server says -ERR. */
		login_sasl_note_error(s, text, len);
		pop3_send_secret(s, CMD_NONE, s->method == AUTH_XOAUTH2 ? "" :
		    "AQ==", "", 0, "(acknowledging the error)");
		return;
	default:
		break;
	}
	if (resp == NULL) {
		/* Nothing sensible to say: cancel (RFC 5034 "*"). */
		pop3_send_secret(s, CMD_NONE, "*", "", 0, "*");
		return;
	}
	pop3_send_secret(s, CMD_NONE, "", resp, strlen(resp), "********");
	freezero_str(resp);
}

/* The login was refused: say so usefully, and classify it. */
static void
login_failed(struct session *s, const char *text, size_t len)
{
	char	what[512];

	int	resp = parse_resp_code(text, len);

	if (resp & RESP_SYS_PERM)
		snprintf(what, sizeof what, "login (%s) refused for a reason on "
		    "the server's side, not the password (RFC 3206 SYS/PERM): "
		    "see what it says, or ask the provider",
		    auth_method_name(s->method));
	else if (resp & (RESP_SYS_TEMP | RESP_IN_USE | RESP_LOGIN_DELAY))
		snprintf(what, sizeof what, "login (%s) refused for now",
		    auth_method_name(s->method));
	else if (s->sasl_error != NULL)
		snprintf(what, sizeof what, "login (%s) refused, the token was "
		    "not accepted (%s); check password-command",
		    auth_method_name(s->method), s->sasl_error);
	else
		snprintf(what, sizeof what, "login (%s) refused; check user "
		    "and password", auth_method_name(s->method));
	pop3_server_error(s, what, text, len, EXIT_NOPERM);
}

/* Logged in: the password is no longer needed. */
static void
login_done(struct session *s)
{
	pop3_wipe_secret(s);
	s->result.login = auth_method_name(s->method);
	log_debug("account=%s logged in (%s)", s->ac->name, s->result.login);
	if (s->flags & S_CHECK) {
		pop3_set_state(s, POP3_LIST);
		pop3_send(s, CMD_STAT, 0, "STAT");
		return;
	}
	/* Some servers announce more after login (mpop learnt this from
	   Gmail); ask again if pipelining was not offered before. */
	if (!(s->capa.flags & CAPA_PIPELINING) && !(s->flags & S_NO_PIPE)) {
		s->flags |= S_CAPA_AGAIN;
		memset(&s->capa, 0, sizeof s->capa);
		s->capa_lines = 0;
		pop3_set_state(s, POP3_CAPA);
		pop3_send(s, CMD_CAPA, 0, "CAPA");
		return;
	}
	fetch_start(s);
}
