/*
 * fuzz_parse.c: every parser of a line a server sends (status, response
 * code, UIDL, LIST, CAPA, STAT, APOP timestamp, base64 challenge), and the
 * configuration's value parsers (and their hints, which must parse), on
 * each line of the input.
 */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "maild.h"

int	LLVMFuzzerTestOneInput(const uint8_t *, size_t);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char		*p = (const char *)data, *end = p + size;
	const char		*nl, *text, *uidl;
	char			 buf[POP3_LINE_MAX + 1], ts[256];
	struct pop3_capa	 capa;
	size_t			 len, textlen, ulen, n;
	uint32_t		 num;
	uint64_t		 sz, count, octets;
	uint8_t			 fp[32];
	unsigned char		*dec;
	long			 v;

	memset(&capa, 0, sizeof capa);
	while (p < end) {
		nl = memchr(p, '\n', end - p);
		len = (nl != NULL ? nl : end) - p;
		if (len > POP3_LINE_MAX)
			len = POP3_LINE_MAX;
		memcpy(buf, p, len);
		buf[len] = '\0';
		if (parse_status(buf, len, &text, &textlen) != REPLY_BAD) {
			if (text < buf || text + textlen > buf + len)
				abort();
			parse_resp_code(text, textlen);
			parse_stat(text, textlen, &count, &octets);
			parse_retr_octets(text, textlen, &octets);
			auth_apop_timestamp(text, textlen, ts, sizeof ts);
		}
		if (parse_uidl_line(buf, len, &num, &uidl, &ulen) == 0 &&
		    (ulen == 0 || uidl < buf || uidl + ulen > buf + len ||
		    num == 0))
			abort();
		if (parse_list_line(buf, len, &num, &sz) == 0 && num == 0)
			abort();
		parse_capa_line(&capa, buf, len);
		if (strnlen(capa.sasl, sizeof capa.sasl) >= sizeof capa.sasl)
			abort();
		if ((dec = auth_unb64(buf, len, &n)) != NULL) {
			if (n > len)
				abort();
			free(dec);
		}
		parse_duration(buf, PARSE_LONG_DURATION_MAX, &v);
		parse_size(buf, &v);
		parse_fingerprint(buf, fp);
		if (parse_duration_hint(buf, PARSE_DURATION_MAX, ts,
		    sizeof ts) == 0 && parse_duration(ts, PARSE_DURATION_MAX,
		    &v) == -1)
			abort();
		if (parse_size_hint(buf, ts, sizeof ts) == 0 &&
		    parse_size(ts, &v) == -1)
			abort();
		p += len + (nl != NULL);
	}
	return (0);
}
