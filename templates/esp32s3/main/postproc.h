/*
 * postproc.h -- the detector: threshold, N-of-M voting, hold-time hysteresis.
 *
 * Same semantics as the Python reference cryblock.detector.Detector (tests check that both
 * give identical decisions):
 *   pos   = score >= threshold                      (float32 compare)
 *   votes = positives among the last M patches      (fewer at start-up)
 *   ok    = votes >= N        -> last_ok_ms = t_ms
 *   det   = ok || (a vote was ever satisfied && t_ms - last_ok_ms < hold_ms)
 * `changed` is 1 when det differs from the previous patch (the firmware then logs an EVT).
 * Changing N or M clears the vote history (det and hold state are kept).
 * Plain C99, no ESP-IDF headers: compiled and tested on the host.
 */
#ifndef CRY_POSTPROC_H
#define CRY_POSTPROC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CRY_DET_MAX_M 64
#define CRY_DET_MAX_HOLD_MS 3600000  /* ms: one hour */

typedef struct {
    float threshold;   /* [0, 1] */
    int vote_n;        /* 1 <= N <= M */
    int vote_m;        /* 1 <= M <= CRY_DET_MAX_M */
    uint32_t hold_ms;  /* 0 .. CRY_DET_MAX_HOLD_MS */
} cry_det_cfg_t;

typedef struct {
    cry_det_cfg_t cfg;
    uint8_t hist[CRY_DET_MAX_M];
    int hist_pos;      /* next slot to write */
    int hist_count;    /* valid entries (<= vote_m) */
    int det;
    int have_ok;
    int64_t last_ok_ms;
} cry_det_t;

typedef struct {
    int pos;      /* 0|1 */
    int votes;    /* positives among the last M */
    int det;      /* 0|1 */
    int changed;  /* 1 if det changed with this patch */
} cry_det_out_t;

/* Returns 0, or -1 (and leaves *d untouched) when cfg is out of range. */
int cry_det_validate(const cry_det_cfg_t *cfg);
int cry_det_init(cry_det_t *d, const cry_det_cfg_t *cfg);
int cry_det_set_config(cry_det_t *d, const cry_det_cfg_t *cfg);
void cry_det_reset(cry_det_t *d);
cry_det_out_t cry_det_update(cry_det_t *d, float score, int64_t t_ms);

/* Serial command: "set threshold 0.6" | "set vote 2 3" | "set hold 2000" | "get" (anything after
 * "get", e.g. "get config", is ignored).
 * Returns 1 when the configuration changed, 0 for "get", -1 on error (message in err). */
int cry_det_command(cry_det_t *d, const char *line, char *err, size_t err_len);

#ifdef __cplusplus
}
#endif

#endif /* CRY_POSTPROC_H */
