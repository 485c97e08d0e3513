/*
 * cry_app.h -- the firmware's portable core: int16 audio in, CRYB/1 log lines out.
 *
 *   samples -> front-end (frontend.c) -> every patch: int8 quantisation with the model's own
 *   scale/zero point -> model (a callback: TFLite Micro on the device) -> detector (postproc.c)
 *   -> INF line (and EVT on a detector change)
 *
 * plus the detector commands (CFG / ERR lines). The platform (main.cc: ESP32-S3 with I2S or
 * serial replay, ESP-IDF's linux target) provides the model, a microsecond clock and the line
 * output, and owns tasks, buffers and the audio source. Plain C99, host-testable: the host twin
 * in tests/c/app_harness.c runs this exact code over replayed audio.
 */
#ifndef CRY_APP_H
#define CRY_APP_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include "frontend.h"
#include "postproc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Model: quantised input patch (CRY_PATCH_FRAMES x CRY_FE_NMEL int8) -> output (n_out int8).
 * Returns 0 on success. */
typedef int (*cry_invoke_fn)(void *ctx, const int8_t *input, int8_t *output);
typedef void (*cry_emit_fn)(const char *line); /* one log line, without newline */
typedef int64_t (*cry_clock_fn)(void);         /* microseconds since boot */

/* The score from the model output (cryblock.blocks.deploy.model.output_scores): the output is a
 * probability, or logits whose sigmoid (one output) / softmax (several) is taken in float. */
enum { CRY_ACT_NONE = 0, CRY_ACT_SIGMOID = 1, CRY_ACT_SOFTMAX = 2 };

typedef struct {
    cry_fe_t fe; /* first member: keeps the FFT buffer 16-byte aligned (frontend.h) */
    cry_det_t det;
    cry_invoke_fn invoke;
    void *model;
    cry_emit_fn emit;
    cry_clock_fn now_us;
    int8_t *input;   /* model input buffer (CRY_PATCH_FRAMES * CRY_FE_NMEL) */
    int8_t *output;  /* model output buffer */
    float in_scale, out_scale;
    int in_zero_point, out_zero_point;
    int pos_index;   /* output element thresholded by the detector */
    int n_out;       /* output elements */
    int activation;  /* CRY_ACT_*: how the output becomes the score */
    uint32_t hop_ms; /* audio time between patches */
    uint32_t seq;    /* patches so far */
    int64_t fe_us;   /* front-end time spent on the current patch */
    uint64_t samples;
} cry_app_t;

/* Initialise front-end and detector. Returns 0, -1 (front-end: FFT tables or alignment), or -2
 * (detector configuration out of range). */
int cry_app_init(cry_app_t *a, const cry_det_cfg_t *cfg);

/* Feed n samples (int16, full scale 32768); runs every patch they complete. */
void cry_app_push(cry_app_t *a, const int16_t *pcm, size_t n);

/* A detector command line ("set threshold 0.6", "get"): answers CFG, or ERR code=bad_command.
 * Returns 1 changed, 0 unchanged, -1 rejected. */
int cry_app_command(cry_app_t *a, const char *line);

/* Log one CRYB/1 record through a->emit ("k=v k=v"). */
void cry_app_log(cry_app_t *a, const char *kind, const char *fields_fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void cry_app_vlog(cry_app_t *a, const char *kind, const char *fields_fmt, va_list ap)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 0)))
#endif
    ;

/* The CFG record of the current detector configuration. */
void cry_app_log_config(cry_app_t *a);

/* The score of the current output (dequantised, then CRY_ACT_*). */
float cry_app_score(const cry_app_t *a);

/* The END record after replayed audio: patches and samples processed. */
void cry_app_end(cry_app_t *a);

#ifdef __cplusplus
}
#endif

#endif /* CRY_APP_H */
