/* replay.c -- see replay.h. */
#include "replay.h"

#include <string.h>

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

int cry_base64_decode(const char *in, size_t len, uint8_t *out, size_t cap)
{
    if (len % 4 != 0) return -1;
    size_t n = 0;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            const char c = in[i + k];
            if (c == '=') {
                /* padding only in the last quantum, at its last one or two places */
                if (i + 4 != len || k < 2) return -1;
                v[k] = 0;
                pad++;
            } else {
                if (pad) return -1; /* data after padding */
                v[k] = b64_value(c);
                if (v[k] < 0) return -1;
            }
        }
        const uint32_t q = ((uint32_t)v[0] << 18) | ((uint32_t)v[1] << 12) | ((uint32_t)v[2] << 6) | (uint32_t)v[3];
        const int bytes = 3 - pad;
        if (n + (size_t)bytes > cap) return -1;
        out[n++] = (uint8_t)(q >> 16);
        if (bytes > 1) out[n++] = (uint8_t)(q >> 8);
        if (bytes > 2) out[n++] = (uint8_t)q;
    }
    return (int)n;
}

static int fail(char *err, size_t err_len, const char *msg)
{
    if (err && err_len) {
        strncpy(err, msg, err_len - 1);
        err[err_len - 1] = '\0';
    }
    return CRY_REPLAY_BAD;
}

int cry_replay_parse(const char *line, uint32_t *seq, int16_t *out, size_t max, size_t *n, char *err,
                     size_t err_len)
{
    *n = 0;
    if (strncmp(line, "pcm ", 4) != 0) return CRY_REPLAY_NONE;
    const char *p = line + 4;
    if (strcmp(p, "end") == 0) return CRY_REPLAY_END;
    uint64_t s = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9') {
        s = s * 10u + (uint64_t)(*p - '0');
        if (++digits > 10 || s > 0xFFFFFFFFu) return fail(err, err_len, "seq_out_of_range");
        p++;
    }
    if (digits == 0 || *p != ' ') return fail(err, err_len, "usage:_pcm_<seq>_<base64>");
    p++;
    const size_t len = strlen(p);
    uint8_t bytes[2 * CRY_REPLAY_MAX_SAMPLES];
    size_t cap = 2 * (max < CRY_REPLAY_MAX_SAMPLES ? max : CRY_REPLAY_MAX_SAMPLES);
    const int got = cry_base64_decode(p, len, bytes, cap);
    if (got < 0) return fail(err, err_len, "bad_base64_or_too_many_samples");
    if (got == 0 || got % 2 != 0) return fail(err, err_len, "need_whole_int16_samples");
    for (int i = 0; i < got / 2; i++) out[i] = (int16_t)((uint16_t)bytes[2 * i] | ((uint16_t)bytes[2 * i + 1] << 8));
    *n = (size_t)(got / 2);
    *seq = (uint32_t)s;
    return CRY_REPLAY_DATA;
}
