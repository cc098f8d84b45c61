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
 * fetch.c: what a logged-in session does: ask for UIDL and LIST, decide
 * what to fetch and what to delete, keep the server busy with RETR and
 * DELE (pipelined when it allows), stream each message into the Maildir,
 * and commit the messages in batches.
 *
 * THE COMMIT PROTOCOL.  Every message must land in the Maildir exactly
 * once, whatever happens and whenever maild is killed.  For each batch:
 *
 *  1. Each message is streamed into its own file in tmp/.  When its final
 *     "." arrives the file is closed, its write-back started; at commit
 *     time every file of the batch is fdatasync()ed.
 *  2. tmp/ is fsync()ed, so the files' names are durable too.
 *  3. The batch is added to the state file as PENDING records naming each
 *     file, and the state file is replaced atomically (write a temporary
 *     file, fsync, rename, fsync the state directory).
 *  4. Each file is renamed from tmp/ into new/.
 *  5. new/ is fsync()ed.  The batch is delivered.
 *  6. In delete mode, the batch's DELE commands are sent.  The server only
 *     deletes at QUIT.
 *
 * Restarting after a crash, state_open() first finishes what a PENDING
 * record describes: the file is complete and durable (1, 2 happened before
 * 3), so if it is still in tmp/ it is moved to new/ now, and if it is not,
 * step 4 happened.  Either way the message counts as delivered and is not
 * fetched again.  Files in tmp/ without a record are partial downloads from
 * before step 3: they are removed and fetched again, and since nothing was
 * DELEted for them they are still on the server.  A message is DELEted
 * only after step 5 and after its record is durable, so nothing is deleted
 * before it is safe; a DELE that did not take effect (no QUIT) is simply
 * sent again by the next session, which finds the UIDL recorded.
 *
 * If any step fails (disk full, read-only Maildir, state directory not
 * writable), the session ends at once without touching that batch further:
 * whatever reached the disk is resolved by the rule above at the next
 * start.
 *
 * A server without UIDL gives nothing to record; then (delete mode only)
 * the record is the SHA-256 of the message's content, kept until a QUIT
 * confirms the deletions.  A session that dies between step 6 and QUIT
 * leaves those messages on the server; the next session fetches them
 * again, recognises their digests, and deletes them without delivering
 * them a second time.
 */

#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "maild.h"
#include "session.h"

/* Commit a batch after this many messages, bytes or seconds. */
#define BATCH_MAX_MSGS		256
#define BATCH_MAX_BYTES		(64U << 20)
#define BATCH_MAX_SECONDS	2.0
/* Pipelining window: RETRs in flight, and the bytes LIST says they hold. */
#define WINDOW_MAX_CMDS		200
#define WINDOW_MAX_BYTES	(16U << 20)
/* Decoded body bytes are written to disk in chunks of this size. */
#define OUTBUF_SIZE		(128U << 10)
/* How much larger than its LIST size a message may turn out (sizes are
   estimates on some servers); beyond that the server is lying. */
#define SIZE_LIMIT(sz)		(2 * ((sz) + (1U << 20)))
/* The UIDL arena never grows beyond this. */
#define ARENA_MAX		(64U << 20)

static void	fetch_plan(struct session *);
static int	fetch_octets_disagree(struct session *, size_t, const char *,
		    size_t);
static int	fetch_size_disagrees(struct session *, size_t);
static void	fetch_message_done(struct session *);
static int	fetch_commit(struct session *, char **);
static void	fetch_quit_sent_cb(struct bufferevent *, void *);
static void	fetch_quit_event_cb(struct bufferevent *, short, void *);
static void	fetch_quit_wire_cb(struct evbuffer *,
		    const struct evbuffer_cb_info *, void *);

static const char *
fetch_uidl(struct session *s, size_t i, char *buf, size_t size)
{
	return (log_escape(buf, size, s->arena + s->msgs[i].uidl,
	    s->msgs[i].uidl_len));
}

/* Logged in: ask for the listing. */
void
fetch_start(struct session *s)
{
	pop3_set_state(s, POP3_LIST);
	pop3_send(s, CMD_UIDL, 0, "UIDL");
	if (s->flags & S_PIPELINING)
		pop3_send(s, CMD_LIST, 0, "LIST");
}

/* A reply to a command of the fetch phase. */
void
fetch_status(struct session *s, enum pop3_cmd cmd, enum pop3_status st,
    const char *text, size_t len)
{
	struct pop3_pending	 p = s->q[s->qhead];
	char			 esc[LOG_ESCAPE_MAX], u[LOG_ESCAPE_MAX];
	char			*cause = NULL;

	if ((cmd == CMD_UIDL || cmd == CMD_LIST) && st == POP3_OK) {
		s->rd = RD_LINES;	/* dequeued at the "." */
		s->listpos = 0;
		return;
	}
	if (cmd == CMD_RETR && st == POP3_OK) {
		if (fetch_octets_disagree(s, p.msg, text, len))
			return;
		s->cur = p.msg;
		s->cur_raw = 0;
		s->cur_decoded = 0;
		body_decoder_init(&s->dec);
		if (maildir_create(&s->md, &s->file, &cause) == -1) {
			pop3_fail(s, EXIT_IOERR, "%s", cause);
			free(cause);
			return;
		}
		s->outlen = fetch_trace_headers(s, s->outbuf, OUTBUF_SIZE);
		if (s->digest != NULL &&
		    EVP_DigestInit_ex(s->digest, EVP_sha256(), NULL) != 1)
			fatalx("SHA-256 unavailable");
		s->rd = RD_BODY;	/* dequeued at the "." */
		return;
	}
	pop3_dequeue(s);
	switch (cmd) {
	case CMD_STAT:
		if (st != POP3_OK) {
			pop3_server_error(s, "STAT failed", text, len,
			    EXIT_PROTOCOL);
			return;
		}
		if (parse_stat(text, len, &s->result.messages,
		    &s->result.octets) == -1) {
			pop3_fail(s, EXIT_PROTOCOL, "bad reply to STAT");
			return;
		}
		pop3_set_state(s, POP3_QUIT);
		pop3_send(s, CMD_QUIT, 0, "QUIT");
		break;
	case CMD_UIDL:
		/* A response code means a condition, not "no UIDL here". */
		if (parse_resp_code(text, len) != 0) {
			pop3_server_error(s, "UIDL failed", text, len,
			    EXIT_TEMPFAIL);
			return;
		}
		if (s->ac->keep) {
			pop3_fail(s, EXIT_PROTOCOL, "the server does not "
			    "support UIDL, so maild cannot tell old messages "
			    "from new ones; with keep = yes it would fetch "
			    "every message again at every poll: set keep = no");
			return;
		}
		/*
		 * Messages recorded by UIDL cannot be recognised without
		 * one: they might be delivered again.  A server that had
		 * UIDL and now refuses it is having trouble; wait.
		 */
		if (s->st->nentries > 0 && !s->st->digests) {
			pop3_server_error(s, "the server refused UIDL, which "
			    "it supported before; not fetching, so as not to "
			    "deliver anything twice", text, len,
			    EXIT_TEMPFAIL);
			return;
		}
		s->flags |= S_NO_UIDL;
		if (!s->st->digests) {
			s->st->digests = 1;
			s->st->dirty = 1;
		}
		log_info("account=%s the server has no UIDL: every message is "
		    "fetched and deleted", s->ac->name);
		if (!(s->flags & S_PIPELINING))
			pop3_send(s, CMD_LIST, 0, "LIST");
		break;
	case CMD_LIST:
		if (s->flags & S_NO_UIDL) {
			pop3_server_error(s, "LIST failed", text, len,
			    EXIT_PROTOCOL);
			return;
		}
		/* Sizes unknown: only the window by count applies. */
		fetch_plan(s);
		break;
	case CMD_RETR:
		s->retr_inflight--;
		s->bytes_inflight -= s->msgs[p.msg].size;
		s->retr_failed++;
		log_warnx("account=%s cannot retrieve message %u (uidl \"%s\"); "
		    "it stays on the server: server said \"%s\"", s->ac->name,
		    s->msgs[p.msg].num, fetch_uidl(s, p.msg, u, sizeof u),
		    log_escape(esc, sizeof esc, text, len));
		fetch_pump(s);
		break;
	case CMD_DELE:
		if (st == POP3_OK)
			s->result.deleted++;
		else
			log_warnx("account=%s DELE of message %u (uidl \"%s\") "
			    "failed, it is deleted at the next poll: server "
			    "said \"%s\"", s->ac->name, s->msgs[p.msg].num,
			    fetch_uidl(s, p.msg, u, sizeof u),
			    log_escape(esc, sizeof esc, text, len));
		fetch_pump(s);
		break;
	case CMD_QUIT:
		if (st != POP3_OK) {
			pop3_server_error(s, "QUIT failed, so the server may "
			    "not have deleted the fetched messages (they are "
			    "deleted at the next poll)", text, len,
			    EXIT_PROTOCOL);
			return;
		}
		/* Without UIDLs, the digests were only needed until now. */
		if (s->flags & S_NO_UIDL)
			state_clear(s->st);
		pop3_set_state(s, POP3_DONE);
		pop3_finish(s);
		break;
	default:
		fatalx("fetch_status: unexpected command %d", cmd);
	}
}

/* Add one UIDL listing line to msgs. */
static void
fetch_uidl_line(struct session *s, const char *line, size_t len)
{
	struct pop3_msg	*m;
	const char	*uidl;
	size_t		 ulen, i;
	uint32_t	 num;
	char		 esc[LOG_ESCAPE_MAX];

	if (parse_uidl_line(line, len, &num, &uidl, &ulen) == -1) {
		pop3_fail(s, EXIT_PROTOCOL, "bad line in the UIDL listing: "
		    "'%s'", log_escape(esc, sizeof esc, line, len));
		return;
	}
	if (s->nmsgs > 0 && num <= s->msgs[s->nmsgs - 1].num) {
		pop3_fail(s, EXIT_PROTOCOL, "UIDL listing is not in order at "
		    "message %u", num);
		return;
	}
	if (s->nmsgs >= POP3_MAX_MESSAGES ||
	    s->arenalen + ulen > ARENA_MAX) {
		pop3_fail(s, EXIT_PROTOCOL, "UIDL listing is too long");
		return;
	}
	for (i = 0; i < ulen; i++) {
		if ((unsigned char)uidl[i] < 0x21 ||
		    (unsigned char)uidl[i] > 0x7e)
			break;
	}
	if ((i < ulen || ulen > UIDL_RFC_MAX) && s->odd_uidls++ == 0)
		log_warnx("account=%s the server sends UIDLs that break RFC "
		    "1939 (like \"%s\" for message %u); maild handles them, "
		    "but tell the server's administrator", s->ac->name,
		    log_escape(esc, sizeof esc, uidl, ulen), num);
	if (s->nmsgs == s->capmsgs) {
		s->capmsgs = s->capmsgs ? s->capmsgs * 2 : 256;
		s->msgs = xreallocarray(s->msgs, s->capmsgs, sizeof *s->msgs);
	}
	if (s->arenalen + ulen > s->arenacap) {
		while (s->arenalen + ulen > s->arenacap)
			s->arenacap = s->arenacap ? s->arenacap * 2 : 8192;
		s->arena = xreallocarray(s->arena, 1, s->arenacap);
	}
	memcpy(s->arena + s->arenalen, uidl, ulen);
	m = &s->msgs[s->nmsgs++];
	memset(m, 0, sizeof *m);
	m->num = num;
	m->uidl = s->arenalen;
	m->uidl_len = (uint32_t)ulen;
	s->arenalen += ulen;
}

/* Add one LIST line: the size of a message UIDL listed (or a new one). */
static void
fetch_size_line(struct session *s, const char *line, size_t len)
{
	struct pop3_msg	*m;
	uint32_t	 num;
	uint64_t	 size;
	char		 esc[LOG_ESCAPE_MAX];

	if (parse_list_line(line, len, &num, &size) == -1) {
		pop3_fail(s, EXIT_PROTOCOL, "bad line in the LIST listing: "
		    "'%s'", log_escape(esc, sizeof esc, line, len));
		return;
	}
	if (s->flags & S_NO_UIDL) {
		if ((s->nmsgs > 0 && num <= s->msgs[s->nmsgs - 1].num) ||
		    s->nmsgs >= POP3_MAX_MESSAGES) {
			pop3_fail(s, EXIT_PROTOCOL, "LIST listing is not in "
			    "order or too long at message %u", num);
			return;
		}
		if (s->nmsgs == s->capmsgs) {
			s->capmsgs = s->capmsgs ? s->capmsgs * 2 : 256;
			s->msgs = xreallocarray(s->msgs, s->capmsgs,
			    sizeof *s->msgs);
		}
		m = &s->msgs[s->nmsgs++];
		memset(m, 0, sizeof *m);
		m->num = num;
		m->size = size;
		m->listed = 1;
		return;
	}
	/* Both listings are in order: walk UIDL's alongside. */
	if (s->listpos >= s->nmsgs || s->msgs[s->listpos].num != num) {
		pop3_fail(s, EXIT_PROTOCOL, "LIST and UIDL disagree about "
		    "message %u", num);
		return;
	}
	m = &s->msgs[s->listpos++];
	m->size = size;
	m->listed = 1;
}

void
fetch_list_line(struct session *s, const char *line, size_t len)
{
	if (s->q[s->qhead].cmd == CMD_UIDL)
		fetch_uidl_line(s, line, len);
	else
		fetch_size_line(s, line, len);
}

/* The "." ending the UIDL or LIST listing. */
void
fetch_list_end(struct session *s)
{
	struct pop3_pending	p = pop3_dequeue(s);

	if (p.cmd == CMD_UIDL) {
		if (s->flags & S_PIPELINING)
			return;		/* LIST is on its way */
		if (s->nmsgs == 0) {
			fetch_plan(s);
			return;
		}
		pop3_send(s, CMD_LIST, 0, "LIST");
		return;
	}
	if (!(s->flags & S_NO_UIDL) && s->listpos != s->nmsgs) {
		pop3_fail(s, EXIT_PROTOCOL, "LIST and UIDL disagree about the "
		    "number of messages (%zu and %zu)", s->listpos, s->nmsgs);
		return;
	}
	fetch_plan(s);
}

/*
 * Number the messages that share a UIDL: 1, 2, ...  Some servers derive
 * UIDLs from a few headers and give two messages the same one; telling
 * them apart by order lets both be delivered, once each.
 */
static void
fetch_number_duplicates(struct session *s)
{
	struct {
		uint64_t	hash;
		size_t		msg;
	}		*seen;
	size_t		 i, size = 16, mask, slot;
	uint8_t		 key[16];
	char		 esc[LOG_ESCAPE_MAX];

	while (size < s->nmsgs * 2)
		size *= 2;
	mask = size - 1;
	seen = xcalloc(size, sizeof *seen);
	random_bytes(key, sizeof key);
	for (i = 0; i < s->nmsgs; i++) {
		struct pop3_msg	*m = &s->msgs[i];
		uint64_t	 h = siphash24(key, s->arena + m->uidl,
				    m->uidl_len) | 1;

		m->ordinal = 1;
		for (slot = h & mask; seen[slot].hash != 0;
		    slot = (slot + 1) & mask) {
			struct pop3_msg	*o = &s->msgs[seen[slot].msg];

			if (seen[slot].hash == h && o->uidl_len ==
			    m->uidl_len && memcmp(s->arena + o->uidl,
			    s->arena + m->uidl, m->uidl_len) == 0) {
				m->ordinal = o->ordinal + 1;
				seen[slot].msg = i;	/* the latest */
				break;
			}
		}
		if (seen[slot].hash == 0) {
			seen[slot].hash = h;
			seen[slot].msg = i;
		}
		if (m->ordinal == 2)
			log_warnx("account=%s the server lists UIDL \"%s\" for "
			    "more than one message; maild fetches each of "
			    "them once", s->ac->name, fetch_uidl(s, i, esc,
			    sizeof esc));
	}
	free(seen);
}

/* Is this message over max-size? */
static int
fetch_too_big(struct session *s, struct pop3_msg *m)
{
	return (s->ac->max_size > 0 && m->listed && m->size > s->ac->max_size);
}

/*
 * The listings are in: decide what to fetch (UIDLs not in the state) and
 * what to delete (delete mode: UIDLs already delivered; keep mode with
 * delete-after: those delivered long enough ago).
 */
static void
fetch_plan(struct session *s)
{
	struct state_entry	*e;
	size_t			 i, known = 0, skipped = 0;
	time_t			 now = time(NULL);
	char			 esc[LOG_ESCAPE_MAX];

	s->want = xcalloc(s->nmsgs ? s->nmsgs : 1, sizeof *s->want);
	s->dele_cap = s->nmsgs ? s->nmsgs : 1;
	s->dele = xcalloc(s->dele_cap, sizeof *s->dele);
	if (s->flags & S_NO_UIDL) {
		/* Every message is new; the digests catch repeats. */
		if ((s->digest = EVP_MD_CTX_new()) == NULL)
			fatalx("EVP_MD_CTX_new");
		for (i = 0; i < s->nmsgs; i++) {
			/* Without UIDL, a skip cannot be remembered. */
			if (fetch_too_big(s, &s->msgs[i])) {
				skipped++;
				log_warnx("account=%s message %u has %llu bytes, "
				    "over max-size (%llu): it stays on the "
				    "server", s->ac->name, s->msgs[i].num,
				    (unsigned long long)s->msgs[i].size,
				    (unsigned long long)s->ac->max_size);
				continue;
			}
			s->want[s->nwant++] = i;
		}
		goto done;
	}

	if (s->st->digests) {
		/* The server has UIDL again: digests mean nothing now. */
		s->st->digests = 0;
		s->st->dirty = 1;
	}
	fetch_number_duplicates(s);
	for (i = 0; i < s->nmsgs; i++) {
		struct pop3_msg	*m = &s->msgs[i];

		e = state_find(s->st, s->arena + m->uidl, m->uidl_len,
		    m->ordinal);
		if (e != NULL)
			e->listed = 1;
		if (e != NULL && e->kind == STATE_DELIVERED) {
			known++;
			if (!s->ac->keep || (s->ac->delete_after > 0 &&
			    now - e->first >= s->ac->delete_after))
				s->dele[s->ndele++] = i;
			continue;
		}
		if (fetch_too_big(s, m)) {
			skipped++;
			if (e != NULL)
				continue;	/* logged when first seen */
			log_warnx("account=%s message %u (uidl \"%s\") has %llu "
			    "bytes, over max-size (%llu): it stays on the "
			    "server; raise max-size to fetch it", s->ac->name,
			    m->num, fetch_uidl(s, i, esc, sizeof esc),
			    (unsigned long long)m->size,
			    (unsigned long long)s->ac->max_size);
			state_add_skipped(s->st, s->arena + m->uidl,
			    m->uidl_len, m->ordinal, now);
			continue;
		}
		s->want[s->nwant++] = i;
	}
	/* Forget UIDLs that are gone from the server. */
	for (i = 0; i < s->st->nentries; i++) {
		if (!s->st->entries[i]->listed)
			break;
	}
	if (i < s->st->nentries) {
		size_t	before = s->st->nentries;

		state_forget_unlisted(s->st);
		log_debug("account=%s forgot %zu UIDLs no longer on the "
		    "server", s->ac->name, before - s->st->nentries);
	}
done:
	log_debug("account=%s messages=%zu new=%zu known=%zu too-big=%zu%s",
	    s->ac->name, s->nmsgs, s->nwant, known, skipped,
	    s->flags & S_NO_UIDL ? " (no UIDL)" : "");
	if (s->nwant > 0)
		s->outbuf = xmalloc(OUTBUF_SIZE + 1);
	pop3_set_state(s, POP3_TRANSFER);
	fetch_pump(s);
}

/*
 * Keep the server busy: send RETRs while the window allows, DELEs for
 * committed messages, and QUIT once everything is done.
 */
void
fetch_pump(struct session *s)
{
	int	pipelining = (s->flags & S_PIPELINING) != 0;

	if ((s->flags & S_DEAD) || s->state != POP3_TRANSFER)
		return;
	while (s->next_dele < s->ndele && (pipelining || s->qlen == 0)) {
		size_t	i = s->dele[s->next_dele++];

		pop3_send(s, CMD_DELE, i, "DELE %u", s->msgs[i].num);
	}
	while (!(s->flags & S_STOPPING) && s->next_want < s->nwant &&
	    (pipelining || s->qlen == 0) &&
	    (s->retr_inflight == 0 || (s->retr_inflight < WINDOW_MAX_CMDS &&
	    s->bytes_inflight < WINDOW_MAX_BYTES))) {
		size_t	i = s->want[s->next_want++];

		s->retr_inflight++;
		s->bytes_inflight += s->msgs[i].size;
		pop3_send(s, CMD_RETR, i, "RETR %u", s->msgs[i].num);
	}
	if (s->qlen > 0 || s->nbatch > 0 || s->next_dele < s->ndele)
		return;
	if (s->next_want < s->nwant && !(s->flags & S_STOPPING))
		return;
	pop3_set_state(s, POP3_QUIT);
	pop3_send(s, CMD_QUIT, 0, "QUIT");
	if (s->ndele > 0)
		return;		/* the deletions happen at QUIT: wait for it */
	/*
	 * Nothing depends on the reply: hang up once the command is on its
	 * way, saving a round trip.
	 */
	pop3_dequeue(s);
	bufferevent_setcb(s->bev, NULL, fetch_quit_sent_cb, fetch_quit_event_cb,
	    s);
	if (evbuffer_get_length(bufferevent_get_output(s->bev)) == 0)
		fetch_quit_sent_cb(s->bev, s);
}

/*
 * QUIT has left our buffer; under TLS that only means it is encrypted
 * into the socket's buffer: hang up once that one is empty too.
 */
static void
fetch_quit_sent_cb(struct bufferevent *bev, void *arg)
{
	struct session		*s = arg;
	struct bufferevent	*sock = bufferevent_get_underlying(s->bev);
	struct evbuffer		*wire;

	if (sock != NULL) {
		wire = bufferevent_get_output(sock);
		if (evbuffer_get_length(wire) > 0) {
			if (s->quit_cb == NULL)
				s->quit_cb = evbuffer_add_cb(wire,
				    fetch_quit_wire_cb, s);
			return;
		}
	}
	pop3_set_state(s, POP3_DONE);
	pop3_finish(s);
}

static void
fetch_quit_wire_cb(struct evbuffer *wire, const struct evbuffer_cb_info *info,
    void *arg)
{
	struct session	*s = arg;

	if (evbuffer_get_length(wire) > 0 || (s->flags & S_DEAD))
		return;
	pop3_set_state(s, POP3_DONE);
	pop3_finish(s);		/* which removes this callback */
}

/* The server hung up first: fine, nothing was waiting for QUIT. */
static void
fetch_quit_event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct session	*s = arg;

	pop3_set_state(s, POP3_DONE);
	pop3_finish(s);
}

/* "Received:" and friends, as add-headers asks; returns their length. */
size_t
fetch_trace_headers(struct session *s, char *buf, size_t size)
{
	const struct account_conf	*ac = s->ac;
	char				 date[64], addr[512], local[256];
	struct tm			 tm;
	time_t				 now = time(NULL);
	size_t				 o = 0;
	int				 n;

	if (ac->add_headers == 0)
		return (0);
	if (strchr(ac->user, '@') != NULL)
		snprintf(addr, sizeof addr, "%s", ac->user);
	else
		snprintf(addr, sizeof addr, "%s@%s", ac->user, ac->host);
	if (ac->add_headers & HDR_DELIVERED_TO) {
		n = snprintf(buf + o, size - o, "Delivered-To: %s\n", addr);
		if (n > 0 && (size_t)n < size - o)
			o += n;
	}
	if (ac->add_headers & HDR_X_ORIGINAL_TO) {
		n = snprintf(buf + o, size - o, "X-Original-To: %s\n", addr);
		if (n > 0 && (size_t)n < size - o)
			o += n;
	}
	if (ac->add_headers & HDR_RECEIVED) {
		gmtime_r(&now, &tm);
		strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &tm);
		if (gethostname(local, sizeof local) == -1)
			snprintf(local, sizeof local, "localhost");
		local[sizeof local - 1] = '\0';
		n = snprintf(buf + o, size - o, "Received: from %s (%s)\n"
		    "\tby %s (maild %s) with %s%s%s%s\n\tfor <%s>; %s\n",
		    ac->host, s->result.peer, local, PACKAGE_VERSION,
		    ac->tls == TLS_NONE ? "POP3" : "POP3S",
		    s->result.tls[0] ? " (" : "", s->result.tls,
		    s->result.tls[0] ? ")" : "", addr, date);
		if (n > 0 && (size_t)n < size - o)
			o += n;
	}
	return (o);
}

/* Write out what the decoder has produced so far. */
static int
fetch_flush_body(struct session *s)
{
	if (s->outlen == 0)
		return (0);
	if (maildir_write(&s->file, s->outbuf, s->outlen) == -1) {
		pop3_fail(s, EXIT_IOERR, "cannot write to %s/tmp: %s",
		    s->md.path, strerror(errno));
		return (-1);
	}
	s->outlen = 0;
	return (0);
}

/*
 * Stream message data from the connection to the file in tmp/, undoing
 * the POP3 framing on the way, in chunks: memory does not grow with the
 * size of a message or of its lines.
 */
void
fetch_body(struct session *s, struct evbuffer *in)
{
	struct evbuffer_iovec	 v[8];
	struct pop3_msg		*m = &s->msgs[s->cur];
	size_t			 consumed = 0, used, n, out;
	int			 i, nv;

	nv = evbuffer_peek(in, -1, NULL, v, 8);
	if (nv > 8)
		nv = 8;
	for (i = 0; i < nv && !s->dec.done; i++) {
		const char	*p = v[i].iov_base;
		size_t		 left = v[i].iov_len;

		while (left > 0 && !s->dec.done) {
			if (s->outlen >= OUTBUF_SIZE &&
			    fetch_flush_body(s) == -1)
				return;
			/* body_decode may emit one byte more than it eats:
			   outbuf has OUTBUF_SIZE + 1 bytes. */
			n = left;
			if (n > OUTBUF_SIZE - s->outlen)
				n = OUTBUF_SIZE - s->outlen;
			used = body_decode(&s->dec, p, n, s->outbuf + s->outlen,
			    &out);
			if (s->digest != NULL && out > 0)
				EVP_DigestUpdate(s->digest, s->outbuf +
				    s->outlen, out);
			s->outlen += out;
			s->cur_decoded += out;
			p += used;
			left -= used;
			consumed += used;
		}
	}
	evbuffer_drain(in, consumed);
	s->cur_raw += consumed;
	pop3_progress(s, consumed);
	if (m->listed && s->cur_raw > SIZE_LIMIT(m->size)) {
		pop3_fail(s, EXIT_PROTOCOL, "message %u is far larger than the "
		    "%llu bytes the server announced; giving up on this "
		    "server", m->num, (unsigned long long)m->size);
		return;
	}
	if (s->outlen >= OUTBUF_SIZE / 2 || s->dec.done) {
		if (fetch_flush_body(s) == -1)
			return;
	}
	if (s->dec.done)
		fetch_message_done(s);
}

/*
 * Replies are matched to commands by their order only.  A server that
 * sends one reply too many or too few, forgets to dot-stuff a line or
 * answers RETR with another message would have maild record a body under
 * the wrong UIDL, and later delete the message that UIDL really names.
 * RFC 1939 says LIST gives each message's exact size; a message that
 * arrives with another size is not recorded, and the session ends: the
 * rest of the conversation cannot be trusted.  (exact-sizes = no, for
 * servers whose sizes are estimates, keeps only a coarse bound.)
 */
static int
fetch_out_of_step(struct session *s, size_t i, uint64_t got, int others)
{
	/* With other commands in flight, pipelining may have confused it. */
	int	pipelined = (s->flags & S_PIPELINING) && others;

	if (pipelined)
		s->result.nopipelining = 1;
	pop3_fail(s, EXIT_PROTOCOL, "message %u arrived with %llu bytes, but "
	    "the server listed it with %llu: its replies are out of step, "
	    "or its sizes are wrong; the message was not kept, nothing was "
	    "deleted (if this server's sizes are estimates, set exact-sizes "
	    "= no)%s", s->msgs[i].num, (unsigned long long)got,
	    (unsigned long long)s->msgs[i].size, pipelined ?
	    "; pipelining is turned off for this account" : "");
	return (1);
}

/* Does a "+OK <n> octets" reply to RETR contradict LIST? */
static int
fetch_octets_disagree(struct session *s, size_t i, const char *text,
    size_t len)
{
	uint64_t	n;

	if (!s->ac->exact_sizes || !s->msgs[i].listed ||
	    parse_retr_octets(text, len, &n) == -1 || n == s->msgs[i].size)
		return (0);
	/* This RETR is still queued, and counted in flight. */
	return (fetch_out_of_step(s, i, n, s->qlen > 1));
}

/* Is got the listed size, or that plus a CRLF the server added? */
static int
fetch_size_is(uint64_t got, uint64_t listed)
{
	return (got == listed || got == listed + 2);
}

/*
 * Does the message just received have the size LIST gave?  As RFC 1939
 * counts it, that is its size on the wire: what was written, less the
 * trace headers, plus the CRs of the CRLFs.  Some servers send bare LFs
 * but count CRLFs, or count LFs (the size on their disk): those are the
 * same message too.  A server may add a final CRLF to a message that
 * lacked one.
 */
static int
fetch_size_disagrees(struct session *s, size_t i)
{
	uint64_t	out = s->cur_decoded, size = s->msgs[i].size;
	uint64_t	wire = out + s->dec.crs;

	if (!s->ac->exact_sizes || !s->msgs[i].listed ||
	    fetch_size_is(wire, size) ||
	    fetch_size_is(out + s->dec.lines, size) || fetch_size_is(out, size))
		return (0);
	maildir_unlink(&s->md, s->file.final);
	s->file.name[0] = '\0';
	return (fetch_out_of_step(s, i, wire, s->qlen > 0));
}

/*
 * Without UIDLs, a message's key is its content digest, numbered like
 * duplicate UIDLs when the same content appears twice.
 */
static uint32_t
fetch_digest_key(struct session *s, char *key, size_t size)
{
	unsigned char	md[EVP_MAX_MD_SIZE];
	unsigned int	mdlen, i;
	size_t		o;
	uint32_t	n = 1;

	if (EVP_DigestFinal_ex(s->digest, md, &mdlen) != 1)
		fatalx("SHA-256 failed");
	o = snprintf(key, size, "sha256:");
	for (i = 0; i < mdlen && o + 3 <= size; i++)
		o += snprintf(key + o, size - o, "%02x", md[i]);
	/* The digests seen in this session: a set, with the state's index. */
	if (s->digests == NULL)
		s->digests = state_new();
	while (state_find(s->digests, key, o, n) != NULL)
		n++;
	state_add(s->digests, key, o, n, 0, NULL);
	return (n);
}

/* The final "." of a message arrived. */
static void
fetch_message_done(struct session *s)
{
	struct pop3_pending	 p = pop3_dequeue(s);
	struct batch_item	*b;
	char			*cause = NULL, key[72];
	uint32_t		 ordinal = 0;

	s->rd = RD_STATUS;
	s->retr_inflight--;
	s->bytes_inflight -= s->msgs[p.msg].size;
	if (maildir_finish(&s->file, &cause) == -1) {
		pop3_fail(s, EXIT_IOERR, "%s", cause);
		free(cause);
		return;
	}
	if (fetch_size_disagrees(s, p.msg))
		return;
	if (s->flags & S_NO_UIDL) {
		ordinal = fetch_digest_key(s, key, sizeof key);
		if (state_find(s->st, key, strlen(key), ordinal) != NULL) {
			/* Delivered by a session that died before QUIT. */
			log_info("account=%s message %u was delivered before "
			    "(same content); deleting it without delivering "
			    "it again", s->ac->name, s->msgs[p.msg].num);
			maildir_unlink(&s->md, s->file.final);
			s->file.name[0] = '\0';
			if (s->ndele == s->dele_cap) {
				s->dele_cap *= 2;
				s->dele = xreallocarray(s->dele, s->dele_cap,
				    sizeof *s->dele);
			}
			s->dele[s->ndele++] = p.msg;
			goto next;
		}
	}
	if (s->nbatch == 0) {
		s->batch = xreallocarray(s->batch, BATCH_MAX_MSGS,
		    sizeof *s->batch);
		s->batch_started = now_mono();
	}
	b = &s->batch[s->nbatch++];
	memset(b, 0, sizeof *b);
	b->msg = p.msg;
	b->size = s->file.size;
	snprintf(b->final, sizeof b->final, "%s", s->file.final);
	if (s->flags & S_NO_UIDL) {
		snprintf(b->key, sizeof b->key, "%s", key);
		b->ordinal = ordinal;
	}
	s->batch_bytes += s->file.size;
	s->file.name[0] = '\0';

next:
	/*
	 * Commit when the batch is full or old, or when no more messages
	 * are coming: that is, in lock-step mode, not after every message.
	 */
	if (s->nbatch > 0 && (s->nbatch >= BATCH_MAX_MSGS ||
	    s->batch_bytes >= BATCH_MAX_BYTES ||
	    now_mono() - s->batch_started >= BATCH_MAX_SECONDS ||
	    (s->retr_inflight == 0 && (s->next_want >= s->nwant ||
	    (s->flags & S_STOPPING))))) {
		if (fetch_commit(s, &cause) == -1) {
			pop3_fail(s, EXIT_IOERR, "cannot deliver: %s; nothing "
			    "is deleted from the server", cause);
			free(cause);
			return;
		}
	}
	fetch_pump(s);
}

/*
 * Steps 1 to 6 of the commit protocol (see the top of this file) for the
 * messages in the batch.  On failure the session must end.
 */
static int
fetch_commit(struct session *s, char **cause)
{
	struct state_entry	**ents;
	time_t			  now = time(NULL);
	size_t			  i;

	if (s->nbatch == 0)
		return (0);
	for (i = 0; i < s->nbatch; i++) {
		if (maildir_sync_file(&s->md, s->batch[i].final, cause) == -1)
			goto discard;
	}
	if (maildir_sync_tmp(&s->md, cause) == -1)
		goto discard;
	ents = xcalloc(s->nbatch, sizeof(struct state_entry *));
	for (i = 0; i < s->nbatch; i++) {
		struct batch_item	*b = &s->batch[i];
		struct pop3_msg		*m = &s->msgs[b->msg];

		if (s->flags & S_NO_UIDL)
			ents[i] = state_add(s->st, b->key, strlen(b->key),
			    b->ordinal, now, b->final);
		else
			ents[i] = state_add(s->st, s->arena + m->uidl,
			    m->uidl_len, m->ordinal, now, b->final);
	}
	/* From here on, a failure may have left records on disk. */
	if (state_save(s->st, cause) == -1) {
		free(ents);
		goto fail;
	}
	for (i = 0; i < s->nbatch; i++) {
		if (maildir_move(&s->md, s->batch[i].final, cause) == -1) {
			free(ents);
			goto fail;
		}
	}
	if (maildir_sync_new(&s->md, cause) == -1) {
		free(ents);
		goto fail;
	}
	for (i = 0; i < s->nbatch; i++) {
		ents[i]->kind = STATE_DELIVERED;
		free(ents[i]->file);
		ents[i]->file = NULL;
		s->st->dirty = 1;
		s->result.fetched++;
		s->result.bytes += s->batch[i].size;
		if (!s->ac->keep) {
			if (s->ndele == s->dele_cap) {
				s->dele_cap *= 2;
				s->dele = xreallocarray(s->dele, s->dele_cap,
				    sizeof *s->dele);
			}
			s->dele[s->ndele++] = s->batch[i].msg;
		}
	}
	free(ents);
	log_debug("account=%s committed %zu messages", s->ac->name, s->nbatch);
	s->nbatch = 0;
	s->batch_bytes = 0;
	return (0);

discard:
	/* Nothing about this batch was recorded: it will be fetched again. */
	for (i = 0; i < s->nbatch; i++)
		maildir_unlink(&s->md, s->batch[i].final);
fail:
	/*
	 * Otherwise leave the batch's files where they are: whether they
	 * count as delivered depends on whether the state file got their
	 * records, which only the next state_open() can tell for sure.
	 */
	s->nbatch = 0;
	s->batch_bytes = 0;
	s->flags |= S_STATE_SUSPECT;
	return (-1);
}

/*
 * The session is failing: drop the message being received, and keep the
 * ones that are complete in tmp/: they are good, and not keeping them
 * would only mean fetching them again.
 */
void
fetch_abort(struct session *s)
{
	char	*cause = NULL;

	if (s->file.fd != -1 || s->file.name[0] != '\0')
		maildir_abort(&s->md, &s->file);
	if (s->nbatch > 0 && fetch_commit(s, &cause) == -1) {
		log_warnx("account=%s cannot keep the messages fetched before "
		    "the error: %s", s->ac->name, cause);
		free(cause);
	}
}

void
fetch_free(struct session *s)
{
	free(s->msgs);
	free(s->arena);
	free(s->want);
	free(s->dele);
	free(s->outbuf);
	free(s->batch);
	state_close(s->digests);
	EVP_MD_CTX_free(s->digest);
}
