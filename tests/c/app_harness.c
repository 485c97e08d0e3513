/*
 * Host twin of the firmware for tests: the portable core (cry_app.c, front-end, detector, log,
 * replay protocol) driven over stdin/stdout exactly as main.cc drives it on the device, with a
 * stand-in model (TFLite Micro is not available to host gcc):
 *   out = clamp(floor(sum(input) / (2 * n)), -128, 127)   -- half the mean int8 input, as int8
 * Usage: app_harness THRESHOLD VOTE_N VOTE_M HOLD_MS IN_SCALE IN_ZERO_POINT
 * Output quantisation of the stand-in: scale 1/256, zero point -128 (score in [0, 1)).
 */
#define _POSIX_C_SOURCE 199309L /* clock_gettime under -std=c99 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cry_app.h"
#include "replay.h"

static void emit(const char *line)
{
    printf("%s\n", line);
    fflush(stdout);
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int stub_invoke(void *ctx, const int8_t *in, int8_t *out)
{
    (void)ctx;
    const long n = CRY_PATCH_FRAMES * CRY_FE_NMEL;
    long sum = 0;
    for (long i = 0; i < n; i++) sum += in[i];
    long q = sum >= 0 ? sum / (2 * n) : -((-sum + 2 * n - 1) / (2 * n)); /* floor division */
    if (q < -128) q = -128;
    if (q > 127) q = 127;
    out[0] = (int8_t)q;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: %s THRESHOLD VOTE_N VOTE_M HOLD_MS IN_SCALE IN_ZERO_POINT\n", argv[0]);
        return 2;
    }
    static cry_app_t app;
    static int8_t input[CRY_PATCH_FRAMES * CRY_FE_NMEL], output[1];
    cry_det_cfg_t cfg;
    cfg.threshold = strtof(argv[1], NULL);
    cfg.vote_n = atoi(argv[2]);
    cfg.vote_m = atoi(argv[3]);
    cfg.hold_ms = (uint32_t)strtoul(argv[4], NULL, 10);
    app.emit = emit;
    app.now_us = now_us;
    app.invoke = stub_invoke;
    app.input = input;
    app.output = output;
    app.in_scale = strtof(argv[5], NULL);
    app.in_zero_point = atoi(argv[6]);
    app.out_scale = 1.0f / 256.0f;
    app.out_zero_point = -128;
    app.pos_index = 0;
    app.n_out = 1;
    app.activation = CRY_ACT_NONE; /* the stand-in outputs a probability */
    app.hop_ms = CRY_PATCH_HOP_MS;
    if (cry_app_init(&app, &cfg) != 0) return 1;
    cry_app_log(&app, "BOOT", "model_bytes=0 arena_bytes=0 arena_used=0 ops=STUB sr=%d threshold=%.4f vote=%d/%d "
                "hold_ms=%" PRIu32 " audio=replay fw=host-twin", CRY_SAMPLE_RATE, (double)cfg.threshold, cfg.vote_n,
                cfg.vote_m, cfg.hold_ms);
    cry_app_log_config(&app);
    static char line[CRY_REPLAY_MAX_LINE + 2];
    static int16_t pcm[CRY_REPLAY_MAX_SAMPLES];
    uint32_t expect = 0;
    unsigned long long total = 0;
    while (fgets(line, sizeof(line), stdin)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0]) continue;
        uint32_t seq = 0;
        size_t n = 0;
        char err[40];
        const int r = cry_replay_parse(line, &seq, pcm, CRY_REPLAY_MAX_SAMPLES, &n, err, sizeof(err));
        if (r == CRY_REPLAY_BAD || (r == CRY_REPLAY_DATA && seq != expect)) {
            cry_app_log(&app, "ERR", "code=replay msg=%s", r == CRY_REPLAY_BAD ? err : "seq_out_of_order");
        } else if (r == CRY_REPLAY_DATA) {
            cry_app_push(&app, pcm, n);
            total += n;
            cry_app_log(&app, "RDY", "seq=%" PRIu32 " samples=%llu", seq, total);
            expect = seq + 1;
        } else if (r == CRY_REPLAY_END) {
            cry_app_end(&app);
            return 0;
        } else {
            cry_app_command(&app, line);
        }
    }
    return 0;
}
