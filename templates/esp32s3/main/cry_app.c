/* cry_app.c -- see cry_app.h. */
#include "cry_app.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>

#include "cry_log.h"

#define CRY_APP_CHUNK (4 * CRY_FE_HOP) /* samples converted to float at a time */

int cry_app_init(cry_app_t *a, const cry_det_cfg_t *cfg)
{
    a->seq = 0;
    a->fe_us = 0;
    a->samples = 0;
    if (cry_fe_init(&a->fe) != 0) return -1;
    if (cry_det_init(&a->det, cfg) != 0) return -2;
    return 0;
}

void cry_app_vlog(cry_app_t *a, const char *kind, const char *fields_fmt, va_list ap)
{
    char line[CRY_LOG_MAX_LINE];
    if (cry_log_vformat(line, sizeof(line), kind, fields_fmt, ap) > 0) a->emit(line);
}

void cry_app_log(cry_app_t *a, const char *kind, const char *fields_fmt, ...)
{
    va_list ap;
    va_start(ap, fields_fmt);
    cry_app_vlog(a, kind, fields_fmt, ap);
    va_end(ap);
}

void cry_app_log_config(cry_app_t *a)
{
    cry_app_log(a, "CFG", "threshold=%.4f vote=%d/%d hold_ms=%" PRIu32, (double)a->det.cfg.threshold,
                a->det.cfg.vote_n, a->det.cfg.vote_m, a->det.cfg.hold_ms);
}

static float dequant(const cry_app_t *a, int k)
{
    return (float)((int)a->output[k] - a->out_zero_point) * a->out_scale;
}

float cry_app_score(const cry_app_t *a)
{
    const float v = dequant(a, a->pos_index);
    if (a->activation == CRY_ACT_SIGMOID) return 1.0f / (1.0f + expf(-v));
    if (a->activation == CRY_ACT_SOFTMAX) {
        float vmax = v, sum = 0.0f;
        for (int k = 0; k < a->n_out; k++) {
            if (dequant(a, k) > vmax) vmax = dequant(a, k);
        }
        for (int k = 0; k < a->n_out; k++) sum += expf(dequant(a, k) - vmax);
        return expf(v - vmax) / sum;
    }
    return v;
}

static void run_patch(cry_app_t *a, int64_t t0)
{
    cry_fe_get_patch_int8(&a->fe, a->in_scale, a->in_zero_point, a->input);
    const int64_t t1 = a->now_us();
    a->fe_us += t1 - t0;
    const int st = a->invoke(a->model, a->input, a->output);
    const int64_t inv_us = a->now_us() - t1;
    if (st != 0) {
        cry_app_log(a, "ERR", "code=invoke msg=Invoke_failed_seq_%" PRIu32, a->seq);
    } else {
        const float score = cry_app_score(a);
        /* the detector runs on audio time (patch index x hop), like cryblock.detector */
        const cry_det_out_t o = cry_det_update(&a->det, score, (int64_t)a->seq * a->hop_ms);
        const long long t_ms = (long long)(a->now_us() / 1000);
        cry_app_log(a, "INF", "t_ms=%lld seq=%" PRIu32 " fe_us=%lld inv_us=%lld score=%.4f q=%d pos=%d votes=%d det=%d",
                    t_ms, a->seq, (long long)a->fe_us, (long long)inv_us, (double)score, (int)a->output[a->pos_index],
                    o.pos, o.votes, o.det);
        if (o.changed) cry_app_log(a, "EVT", "t_ms=%lld state=%s score=%.4f", t_ms, o.det ? "ON" : "OFF", (double)score);
    }
    a->fe_us = 0;
    a->seq++;
}

void cry_app_push(cry_app_t *a, const int16_t *pcm, size_t n)
{
    float x[CRY_APP_CHUNK];
    a->samples += n;
    while (n > 0) {
        const size_t m = n < CRY_APP_CHUNK ? n : CRY_APP_CHUNK;
        for (size_t i = 0; i < m; i++) x[i] = (float)pcm[i] * (1.0f / 32768.0f);
        size_t off = 0;
        while (off < m) {
            int ready = 0;
            const int64_t t0 = a->now_us();
            off += cry_fe_push(&a->fe, x + off, m - off, &ready);
            if (ready) {
                run_patch(a, t0);
            } else {
                a->fe_us += a->now_us() - t0;
            }
        }
        pcm += m;
        n -= m;
    }
}

int cry_app_command(cry_app_t *a, const char *line)
{
    char err[48];
    const int r = cry_det_command(&a->det, line, err, sizeof(err));
    if (r < 0) {
        cry_app_log(a, "ERR", "code=bad_command msg=%s", err);
    } else {
        cry_app_log_config(a);
    }
    return r;
}

void cry_app_end(cry_app_t *a)
{
    cry_app_log(a, "END", "seq=%" PRIu32 " samples=%llu", a->seq, (unsigned long long)a->samples);
}
