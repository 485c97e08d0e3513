/*
 * replay.h -- the audio replay protocol: known audio sent from the host over the serial console,
 * so the same firmware runs in Espressif's QEMU, on ESP-IDF's linux target and on a bench board
 * with known input (cryblock emulate; framing documented in cryblock/logformat.py):
 *
 *   host -> device   "pcm <seq> <base64>\n"   seq = 0, 1, 2, ...; base64 (RFC 4648, padded) of
 *                                             1..CRY_REPLAY_MAX_SAMPLES int16 little-endian samples
 *                    "pcm end\n"              no more audio
 *   device -> host   CRYB/1 RDY seq=<seq> samples=<total>   after each pcm line was queued
 *                    CRYB/1 ERR code=replay msg=<why>       for a malformed or out-of-order line
 *                    CRYB/1 END seq=<patches> samples=<total>  after the last patch of the audio
 *
 * The host sends the next line only after the RDY of the previous one (stop and wait), so no
 * serial buffer can overflow whatever the link speed. Any other line is a detector command.
 * Plain C99, host-testable.
 */
#ifndef CRY_REPLAY_H
#define CRY_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CRY_REPLAY_MAX_SAMPLES 512
/* "pcm " + seq (10 digits) + " " + base64 of 2*MAX bytes + slack */
#define CRY_REPLAY_MAX_LINE (4 + 10 + 1 + 4 * ((2 * CRY_REPLAY_MAX_SAMPLES + 2) / 3) + 8)

enum {
    CRY_REPLAY_BAD = -1,  /* a pcm line that cannot be decoded (why in err) */
    CRY_REPLAY_NONE = 0,  /* not a pcm line: a command */
    CRY_REPLAY_DATA = 1,  /* samples decoded */
    CRY_REPLAY_END = 2,   /* "pcm end" */
};

/* Parse one line (without its newline). For DATA, *seq is the line's sequence number and
 * out[0..*n) its samples (at most max). err (may be NULL) receives a reason for BAD. */
int cry_replay_parse(const char *line, uint32_t *seq, int16_t *out, size_t max, size_t *n, char *err,
                     size_t err_len);

/* RFC 4648 base64 (standard alphabet, '=' padding) of len chars into out (at most cap bytes).
 * Returns the number of bytes, or -1 for a character outside the alphabet, a bad length or
 * padding, or too little room. */
int cry_base64_decode(const char *in, size_t len, uint8_t *out, size_t cap);

#ifdef __cplusplus
}
#endif

#endif /* CRY_REPLAY_H */
