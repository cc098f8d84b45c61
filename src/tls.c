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
 * tls.c: OpenSSL setup.  Certificates are always verified, against the
 * system trust store or the account's ca-file, and the host name is
 * checked; when that fails, tls_explain_failure() turns OpenSSL's verdict
 * into a message that says what is wrong and what to do.
 *
 * Accounts of one server with the same TLS settings share one context
 * (tls_ctx_get()), and with it the session kept for resumption: a
 * context costs some 13 KiB and a loaded ca-file a few more, which
 * thousands of accounts of one server would otherwise each pay.  The
 * shared contexts are dropped at tls_shutdown() (a reload), so that
 * certificates are read anew.
 */

#include "config.h"

#include <sys/queue.h>

#include <arpa/inet.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "maild.h"

/* OpenSSL's errors, as one line for a message. */
#define TLS_ERRORS_MAX	512

/* What the verify callback saw about the first certificate it disliked. */
struct tls_seen {
	const struct account_conf *ac;
	int	error;
	int	depth;
	int	pin_checked;
	int	pin_ok;
	int	cert_requested;	/* the server asked for a client certificate */
	char	names[256];	/* subject CN, DNS names, IPs of the leaf */
	char	fingerprint[128];
	char	expiry[64];
};

/* A context shared by the accounts whose settings are these. */
struct tls_shared {
	LIST_ENTRY(tls_shared)	 entry;
	char			*host;
	int			 port;
	int			 verify;
	int			 min_version;
	char			*ca_file;
	char			*cert_file;
	char			*key_file;
	tls_pin			*pins;
	size_t			 npins;
	SSL_CTX			*ctx;		/* a reference */
};
static LIST_HEAD(, tls_shared) tls_shared = LIST_HEAD_INITIALIZER(tls_shared);

static int	tls_ex_index = -1;
static int	tls_ctx_index = -1;	/* the last session, for resumption */
static X509_STORE *tls_system_store;

static int	tls_verify_cb(int, X509_STORE_CTX *);
static int	tls_client_cert_cb(SSL *, X509 **, EVP_PKEY **);
static void	tls_cert_info(X509 *, struct tls_seen *);
static void	tls_seen_free(void *, void *, CRYPTO_EX_DATA *, int, long,
		    void *);

/* Our notes on a connection are freed along with its SSL. */
static void
tls_seen_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
    void *argp)
{
	free(ptr);
}

/* A context's saved session goes with it. */
static void
tls_session_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx,
    long argl, void *argp)
{
	SSL_SESSION_free(ptr);
}

static void
tls_init(void)
{
	if (tls_ex_index == -1)
		tls_ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL,
		    tls_seen_free);
	if (tls_ctx_index == -1)
		tls_ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL,
		    tls_session_free);
}

/*
 * Keep the newest session the server offers (TLS 1.3 sends tickets after
 * the handshake), to resume it at the next poll: a cheaper handshake.
 * Each account has its own context, so a session is only ever offered to
 * the server that issued it.
 */
static int
tls_new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	SSL_CTX		*ctx = SSL_get_SSL_CTX(ssl);

	SSL_SESSION_free(SSL_CTX_get_ex_data(ctx, tls_ctx_index));
	SSL_CTX_set_ex_data(ctx, tls_ctx_index, sess);
	return (1);	/* we keep the reference */
}

/* An OpenSSL error queue as one line. */
static void
tls_errors(char *buf, size_t size)
{
	unsigned long	e;
	size_t		o = 0;

	buf[0] = '\0';
	while ((e = ERR_get_error()) != 0) {
		if (o > 0 && o + 2 < size)
			o += snprintf(buf + o, size - o, "; ");
		if (o < size)
			ERR_error_string_n(e, buf + o, size - o);
		o = strlen(buf);
	}
	if (buf[0] == '\0')
		snprintf(buf, size, "unknown error");
}

/*
 * The trust store every account without ca-file shares: loaded once,
 * since parsing the system bundle costs more than a TLS handshake.
 */
static X509_STORE *
tls_system_trust(char **cause)
{
	char	err[TLS_ERRORS_MAX];

	if (tls_system_store != NULL)
		return (tls_system_store);
	if ((tls_system_store = X509_STORE_new()) == NULL ||
	    X509_STORE_set_default_paths(tls_system_store) != 1) {
		tls_errors(err, sizeof err);
		xasprintf(cause, "cannot load the system trust store: %s", err);
		X509_STORE_free(tls_system_store);
		tls_system_store = NULL;
		return (NULL);
	}
	return (tls_system_store);
}

/* Make the TLS context for an account. */
SSL_CTX *
tls_ctx_new(const struct account_conf *a, char **cause)
{
	SSL_CTX		*ctx;
	X509_STORE	*store;
	char		 err[TLS_ERRORS_MAX];

	tls_init();
	if ((ctx = SSL_CTX_new(TLS_client_method())) == NULL)
		goto sslfail;
	SSL_CTX_set_min_proto_version(ctx, a->tls_min_version == 13 ?
	    TLS1_3_VERSION : TLS1_2_VERSION);
	/*
	 * POP3 frames its own end (the reply to QUIT, the "." of a multi-line
	 * response), so a peer closing without close_notify cannot truncate
	 * anything unnoticed; libevent 2.1 misreads OpenSSL 3's report of it.
	 */
	SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF |
	    SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, tls_verify_cb);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
	    SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(ctx, tls_new_session_cb);
	if (a->tls_cert_file == NULL)
		SSL_CTX_set_client_cert_cb(ctx, tls_client_cert_cb);
	else {
		if (private_path("tls-key-file", a->tls_key_file, cause) == -1) {
			SSL_CTX_free(ctx);
			return (NULL);
		}
		if (SSL_CTX_use_certificate_chain_file(ctx,
		    a->tls_cert_file) != 1 ||
		    SSL_CTX_use_PrivateKey_file(ctx, a->tls_key_file,
		    SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(ctx) != 1) {
			tls_errors(err, sizeof err);
			xasprintf(cause, "tls-cert-file %s / tls-key-file %s: %s",
			    a->tls_cert_file, a->tls_key_file, err);
			SSL_CTX_free(ctx);
			return (NULL);
		}
	}
	if (a->ca_file != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, a->ca_file, NULL) != 1) {
			tls_errors(err, sizeof err);
			xasprintf(cause, "ca-file %s: %s", a->ca_file, err);
			SSL_CTX_free(ctx);
			return (NULL);
		}
	} else {
		if ((store = tls_system_trust(cause)) == NULL) {
			SSL_CTX_free(ctx);
			return (NULL);
		}
		SSL_CTX_set1_cert_store(ctx, store);
	}
	return (ctx);

sslfail:
	tls_errors(err, sizeof err);
	xasprintf(cause, "TLS setup: %s", err);
	return (NULL);
}

static int
tls_same_str(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		return (a == b);
	return (strcmp(a, b) == 0);
}

/* Would an account with settings a use the shared context t? */
static int
tls_shared_fits(const struct tls_shared *t, const struct account_conf *a)
{
	return (t->port == a->port && t->verify == a->tls_verify &&
	    t->min_version == a->tls_min_version &&
	    strcasecmp(t->host, a->host) == 0 &&
	    tls_same_str(t->ca_file, a->ca_file) &&
	    tls_same_str(t->cert_file, a->tls_cert_file) &&
	    tls_same_str(t->key_file, a->tls_key_file) &&
	    t->npins == a->npins && (a->npins == 0 ||
	    memcmp(t->pins, a->pins, a->npins * sizeof *a->pins) == 0));
}

static char *
tls_strdup(const char *s)
{
	return (s != NULL ? xstrdup(s) : NULL);
}

/*
 * The TLS context for an account, with a reference for the caller: the
 * one another account of the same server with the same settings uses
 * (above), or a new one.
 */
SSL_CTX *
tls_ctx_get(const struct account_conf *a, char **cause)
{
	struct tls_shared	*t;
	SSL_CTX			*ctx;

	LIST_FOREACH(t, &tls_shared, entry) {
		if (tls_shared_fits(t, a) && SSL_CTX_up_ref(t->ctx) == 1)
			return (t->ctx);
	}
	if ((ctx = tls_ctx_new(a, cause)) == NULL)
		return (NULL);
	if (SSL_CTX_up_ref(ctx) != 1)
		return (ctx);		/* not shared, then */
	t = xcalloc(1, sizeof *t);
	t->host = xstrdup(a->host);
	t->port = a->port;
	t->verify = a->tls_verify;
	t->min_version = a->tls_min_version;
	t->ca_file = tls_strdup(a->ca_file);
	t->cert_file = tls_strdup(a->tls_cert_file);
	t->key_file = tls_strdup(a->tls_key_file);
	if (a->npins > 0) {
		t->pins = xreallocarray(NULL, a->npins, sizeof *t->pins);
		memcpy(t->pins, a->pins, a->npins * sizeof *t->pins);
	}
	t->npins = a->npins;
	t->ctx = ctx;
	LIST_INSERT_HEAD(&tls_shared, t, entry);
	return (ctx);
}

/*
 * Free what tls_ctx_get() and tls_system_trust() keep (contexts still
 * in use stay until their users let them go).
 */
void
tls_shutdown(void)
{
	struct tls_shared	*t;

	while ((t = LIST_FIRST(&tls_shared)) != NULL) {
		LIST_REMOVE(t, entry);
		SSL_CTX_free(t->ctx);
		free(t->host);
		free(t->ca_file);
		free(t->cert_file);
		free(t->key_file);
		free(t->pins);
		free(t);
	}
	X509_STORE_free(tls_system_store);
	tls_system_store = NULL;
}

/*
 * A new connection's TLS state: SNI and the name the certificate must
 * carry (or the IP address, for an address literal).
 */
SSL *
tls_ssl_new(SSL_CTX *ctx, const struct account_conf *ac)
{
	const char		*host = ac->host;
	SSL			*ssl;
	SSL_SESSION		*sess;
	struct tls_seen		*seen;
	unsigned char		 addr[16];
	X509_VERIFY_PARAM	*param;

	if ((ssl = SSL_new(ctx)) == NULL)
		return (NULL);
	seen = xcalloc(1, sizeof *seen);
	seen->ac = ac;
	SSL_set_ex_data(ssl, tls_ex_index, seen);
	if ((sess = SSL_CTX_get_ex_data(ctx, tls_ctx_index)) != NULL) {
		/* TLS 1.3 tickets are for one use. */
		SSL_set_session(ssl, sess);
		SSL_CTX_set_ex_data(ctx, tls_ctx_index, NULL);
		SSL_SESSION_free(sess);
	}
	param = SSL_get0_param(ssl);
	if (inet_pton(AF_INET, host, addr) == 1 ||
	    inet_pton(AF_INET6, host, addr) == 1) {
		if (ac->tls_verify &&
		    X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1)
			goto fail;
	} else {
		/* SNI is for DNS names only (RFC 6066). */
		if (SSL_set_tlsext_host_name(ssl, host) != 1)
			goto fail;
		SSL_set_hostflags(ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		if (ac->tls_verify && SSL_set1_host(ssl, host) != 1)
			goto fail;
	}
	return (ssl);
fail:
	SSL_free(ssl);
	return (NULL);
}

/*
 * The server asks for a client certificate and none is configured: note
 * it, to explain the refusal that follows, and go on without one.
 */
static int
tls_client_cert_cb(SSL *ssl, X509 **cert, EVP_PKEY **key)
{
	struct tls_seen	*seen = SSL_get_ex_data(ssl, tls_ex_index);

	if (seen != NULL)
		seen->cert_requested = 1;
	return (0);
}

/* Did the server ask for a client certificate we did not have? */
int
tls_cert_requested(SSL *ssl)
{
	struct tls_seen	*seen;

	if (ssl == NULL || (seen = SSL_get_ex_data(ssl, tls_ex_index)) == NULL)
		return (0);
	return (seen->cert_requested);
}

/* Is cert one of the account's pinned certificates?  Constant time. */
static int
tls_pin_match(const struct account_conf *ac, X509 *cert)
{
	unsigned char	md[EVP_MAX_MD_SIZE];
	unsigned int	mdlen;
	size_t		i;
	int		match = 0;

	if (cert == NULL || X509_digest(cert, EVP_sha256(), md, &mdlen) != 1 ||
	    mdlen != 32)
		return (0);
	for (i = 0; i < ac->npins; i++)
		match |= CRYPTO_memcmp(md, ac->pins[i], 32) == 0;
	return (match);
}

/* After the handshake: with pins, the server's certificate must match. */
int
tls_check_pin(SSL *ssl, const struct account_conf *ac)
{
	if (ac->npins == 0)
		return (1);
	return (tls_pin_match(ac, SSL_get0_peer_certificate(ssl)));
}

/*
 * Verify the chain.  Without pins, OpenSSL's verdict stands and the first
 * complaint is remembered with the leaf's details.  With pins, the leaf
 * must match one, and the rest of OpenSSL's verdict only counts with
 * tls-verify = yes.
 */
static int
tls_verify_cb(int ok, X509_STORE_CTX *x)
{
	SSL		*ssl;
	struct tls_seen	*seen;
	X509		*leaf;

	ssl = X509_STORE_CTX_get_ex_data(x,
	    SSL_get_ex_data_X509_STORE_CTX_idx());
	if (ssl == NULL ||
	    (seen = SSL_get_ex_data(ssl, tls_ex_index)) == NULL)
		return (0);
	leaf = X509_STORE_CTX_get0_cert(x);
	if (seen->ac->npins > 0 && !seen->pin_checked) {
		seen->pin_checked = 1;
		seen->pin_ok = tls_pin_match(seen->ac, leaf);
		if (!seen->pin_ok) {
			seen->error = X509_V_ERR_APPLICATION_VERIFICATION;
			tls_cert_info(leaf, seen);
			X509_STORE_CTX_set_error(x,
			    X509_V_ERR_APPLICATION_VERIFICATION);
			return (0);
		}
	}
	if (seen->ac->npins > 0 && !seen->pin_ok)
		return (0);
	if (ok)
		return (1);
	if (seen->ac->npins > 0 && !seen->ac->tls_verify)
		return (1);
	if (seen->error == 0) {
		seen->error = X509_STORE_CTX_get_error(x);
		seen->depth = X509_STORE_CTX_get_error_depth(x);
		tls_cert_info(leaf, seen);
	}
	return (0);
}

/*
 * A subjectAltName as OpenSSL prints it: "DNS:pop.example.net",
 * "IP:127.0.0.1", "IP:::1".  -1 for the kinds a POP3 server's name
 * cannot match (e-mail, URI...).
 */
static int
tls_san_text(const GENERAL_NAME *gn, char *buf, size_t size)
{
	char		 esc[LOG_ESCAPE_MAX], addr[INET6_ADDRSTRLEN];
	const char	*s;
	int		 len, af;

	switch (gn->type) {
	case GEN_DNS:
		s = (const char *)ASN1_STRING_get0_data(gn->d.dNSName);
		len = ASN1_STRING_length(gn->d.dNSName);
		snprintf(buf, size, "DNS:%s", log_escape(esc, sizeof esc, s,
		    len > 0 ? (size_t)len : 0));
		return (0);
	case GEN_IPADD:
		s = (const char *)ASN1_STRING_get0_data(gn->d.iPAddress);
		len = ASN1_STRING_length(gn->d.iPAddress);
		af = len == 4 ? AF_INET : len == 16 ? AF_INET6 : -1;
		if (af == -1 || inet_ntop(af, s, addr, sizeof addr) == NULL)
			snprintf(addr, sizeof addr, "?");
		snprintf(buf, size, "IP:%s", addr);
		return (0);
	default:
		return (-1);
	}
}

/*
 * The names a certificate is for (subject CN, DNS names and IP
 * addresses), its SHA-256 fingerprint and expiry.
 */
static void
tls_cert_info(X509 *cert, struct tls_seen *seen)
{
	unsigned char		 md[EVP_MAX_MD_SIZE];
	unsigned int		 mdlen, i;
	char			 cn[128], esc[LOG_ESCAPE_MAX];
	char			 san[LOG_ESCAPE_MAX + 8];
	GENERAL_NAMES		*sans;
	size_t			 o = 0;
	int			 n, j;
	BIO			*bio;

	if (cert == NULL)
		return;
	if (X509_digest(cert, EVP_sha256(), md, &mdlen) == 1) {
		o = snprintf(seen->fingerprint, sizeof seen->fingerprint,
		    "sha256:");
		for (i = 0; i < mdlen && o + 3 < sizeof seen->fingerprint; i++)
			o += snprintf(seen->fingerprint + o,
			    sizeof seen->fingerprint - o, "%s%02X",
			    i ? ":" : "", md[i]);
	}
	o = 0;
	n = X509_NAME_get_text_by_NID(X509_get_subject_name(cert),
	    NID_commonName, cn, sizeof cn);
	if (n > 0)
		o = snprintf(seen->names, sizeof seen->names, "CN=%s",
		    log_escape(esc, sizeof esc, cn, (size_t)n));
	sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	for (j = 0; sans != NULL && j < sk_GENERAL_NAME_num(sans); j++) {
		if (o + 8 >= sizeof seen->names)
			break;
		if (tls_san_text(sk_GENERAL_NAME_value(sans, j), san,
		    sizeof san) == -1)
			continue;
		o += snprintf(seen->names + o, sizeof seen->names - o, "%s%s",
		    o ? " " : "", san);
		if (o >= sizeof seen->names)
			o = sizeof seen->names - 1;
	}
	GENERAL_NAMES_free(sans);
	if ((bio = BIO_new(BIO_s_mem())) != NULL) {
		if (ASN1_TIME_print(bio, X509_get0_notAfter(cert)) == 1) {
			n = BIO_read(bio, seen->expiry, sizeof seen->expiry - 1);
			if (n > 0)
				seen->expiry[n] = '\0';
		}
		BIO_free(bio);
	}
}

/*
 * Explain a failed handshake: the verification verdict with a hint, or
 * OpenSSL's error (err, from bufferevent_get_openssl_error()).  Returns an
 * allocated string; *verify tells whether the certificate was refused.
 */
char *
tls_explain_failure(SSL *ssl, const char *host, unsigned long err,
    int *verify)
{
	struct tls_seen	*seen = NULL;
	char		 buf[TLS_ERRORS_MAX], *msg;
	const char	*why, *hint = "";
	long		 v = X509_V_OK;

	if (ssl != NULL) {
		seen = SSL_get_ex_data(ssl, tls_ex_index);
		v = SSL_get_verify_result(ssl);
	}
	if (seen != NULL && seen->error != 0)
		v = seen->error;
	*verify = v != X509_V_OK;
	if (v != X509_V_OK) {
		why = X509_verify_cert_error_string(v);
		switch (v) {
		case X509_V_ERR_APPLICATION_VERIFICATION:
			why = "the certificate does not match tls-fingerprint";
			hint = "if the server changed its certificate on "
			    "purpose, pin the new fingerprint";
			break;
		case X509_V_ERR_HOSTNAME_MISMATCH:
		case X509_V_ERR_IP_ADDRESS_MISMATCH:
			hint = "the certificate was issued to other names; "
			    "use one of them as host";
			break;
		case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
		case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
		case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
		case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
		case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
			hint = "the certificate is not signed by an authority "
			    "maild trusts; if you trust this server, give its "
			    "CA certificate as ca-file, or pin its certificate "
			    "with tls-fingerprint";
			break;
		case X509_V_ERR_CERT_HAS_EXPIRED:
			hint = "the server's certificate has expired; the "
			    "server's administrator must renew it";
			break;
		case X509_V_ERR_CERT_NOT_YET_VALID:
			hint = "the certificate is not valid yet; check this "
			    "machine's clock";
			break;
		}
		xasprintf(&msg, "certificate verification failed for %s: %s "
		    "(%ld)%s%s%s%s%s%s%s%s", host, why, v,
		    seen && seen->names[0] ? "; certificate for " : "",
		    seen ? seen->names : "",
		    seen && seen->expiry[0] ? ", expires " : "",
		    seen ? seen->expiry : "",
		    seen && seen->fingerprint[0] ? ", fingerprint " : "",
		    seen ? seen->fingerprint : "",
		    *hint ? "; " : "", hint);
		return (msg);
	}
	if (err != 0) {
		ERR_error_string_n(err, buf, sizeof buf);
		if (ERR_GET_REASON(err) == SSL_R_WRONG_VERSION_NUMBER ||
		    ERR_GET_REASON(err) == SSL_R_PACKET_LENGTH_TOO_LONG)
			hint = "; the server does not speak TLS on this port: "
			    "is it a plain POP3 port (usually 110)?";
		xasprintf(&msg, "TLS handshake with %s failed: %s%s", host, buf,
		    hint);
		return (msg);
	}
	xasprintf(&msg, "TLS handshake with %s failed", host);
	return (msg);
}

/*
 * The POP3 session ended with QUIT: say the TLS one ended cleanly too.
 * OpenSSL makes the session of a connection freed without a shutdown
 * unusable for resumption.
 */
void
tls_clean_end(SSL *ssl)
{
	if (ssl != NULL)
		SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
}

/* "TLSv1.3 TLS_AES_256_GCM_SHA384", for the log. */
void
tls_describe(SSL *ssl, char *buf, size_t size)
{
	snprintf(buf, size, "%s %s%s", SSL_get_version(ssl),
	    SSL_get_cipher_name(ssl), SSL_session_reused(ssl) ?
	    " (resumed)" : "");
}
