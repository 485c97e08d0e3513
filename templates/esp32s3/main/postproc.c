/* postproc.c -- see postproc.h */
#include "postproc.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cry_det_validate(const cry_det_cfg_t *c)
{
    if (!(c->threshold >= 0.0f && c->threshold <= 1.0f)) return -1;
    if (c->vote_m < 1 || c->vote_m > CRY_DET_MAX_M) return -1;
    if (c->vote_n < 1 || c->vote_n > c->vote_m) return -1;
    if (c->hold_ms > CRY_DET_MAX_HOLD_MS) return -1;
    return 0;
}

void cry_det_reset(cry_det_t *d)
{
    memset(d->hist, 0, sizeof(d->hist));
    d->hist_pos = 0;
    d->hist_count = 0;
    d->det = 0;
    d->have_ok = 0;
    d->last_ok_ms = 0;
}

int cry_det_init(cry_det_t *d, const cry_det_cfg_t *cfg)
{
    if (cry_det_validate(cfg) != 0) return -1;
    d->cfg = *cfg;
    cry_det_reset(d);
    return 0;
}

int cry_det_set_config(cry_det_t *d, const cry_det_cfg_t *cfg)
{
    if (cry_det_validate(cfg) != 0) return -1;
    if (cfg->vote_m != d->cfg.vote_m || cfg->vote_n != d->cfg.vote_n) {
        memset(d->hist, 0, sizeof(d->hist));
        d->hist_pos = 0;
        d->hist_count = 0;
    }
    d->cfg = *cfg;
    return 0;
}

cry_det_out_t cry_det_update(cry_det_t *d, float score, int64_t t_ms)
{
    cry_det_out_t o;
    const int m = d->cfg.vote_m;
    o.pos = (score >= d->cfg.threshold) ? 1 : 0;
    d->hist[d->hist_pos] = (uint8_t)o.pos;
    d->hist_pos = (d->hist_pos + 1) % m;
    if (d->hist_count < m) d->hist_count++;
    o.votes = 0;
    for (int i = 0; i < d->hist_count; i++) o.votes += d->hist[i];
    const int ok = o.votes >= d->cfg.vote_n;
    if (ok) {
        d->last_ok_ms = t_ms;
        d->have_ok = 1;
    }
    const int det = ok || (d->have_ok && (t_ms - d->last_ok_ms) < (int64_t)d->cfg.hold_ms);
    o.changed = det != d->det;
    d->det = det;
    o.det = det;
    return o;
}

static void set_err(char *err, size_t n, const char *msg)
{
    if (err && n) {
        strncpy(err, msg, n - 1);
        err[n - 1] = '\0';
    }
}

/* A decimal integer token: 0 and *out set when it lies in [lo, hi]; -1 when it is not a plain
 * decimal number (sign, digits, nothing else), -2 when it is one but out of range (strtol reports
 * overflow through errno, so 4294967297 never wraps to 1). */
static int parse_int(const char *tok, long lo, long hi, long *out)
{
    char *end = NULL;
    errno = 0;
    const long v = strtol(tok, &end, 10);
    if (end == tok || *end != '\0') return -1;
    if (errno == ERANGE || v < lo || v > hi) return -2;
    *out = v;
    return 0;
}

int cry_det_command(cry_det_t *d, const char *line, char *err, size_t err_len)
{
    char cmd[16] = {0}, what[16] = {0}, extra[2] = {0};
    cry_det_cfg_t c = d->cfg;
    if (sscanf(line, "%15s", cmd) != 1) { set_err(err, err_len, "empty_command"); return -1; }
    if (strcmp(cmd, "get") == 0) return 0;
    if (strcmp(cmd, "set") != 0 || sscanf(line, "%*s %15s", what) != 1) {
        set_err(err, err_len, "usage:_set_threshold|vote|hold_or_get");
        return -1;
    }
    if (strcmp(what, "threshold") == 0) {
        float t;
        if (sscanf(line, "%*s %*s %f %1s", &t, extra) != 1) { set_err(err, err_len, "usage:_set_threshold_<0..1>"); return -1; }
        c.threshold = t;
    } else if (strcmp(what, "vote") == 0) {
        char a[24], b[24];
        long n = 0, m = 0;
        const int two = sscanf(line, "%*s %*s %23s %23s %1s", a, b, extra) == 2;
        const int rn = two ? parse_int(a, 1, CRY_DET_MAX_M, &n) : -1, rm = two ? parse_int(b, 1, CRY_DET_MAX_M, &m) : -1;
        if (rn != 0 || rm != 0) {
            set_err(err, err_len, (rn == -1 || rm == -1) ? "usage:_set_vote_<N>_<M>" : "value_out_of_range");
            return -1;
        }
        c.vote_n = (int)n;
        c.vote_m = (int)m;
    } else if (strcmp(what, "hold") == 0) {
        char a[24];
        long h = 0;
        const int r = sscanf(line, "%*s %*s %23s %1s", a, extra) == 1 ? parse_int(a, 0, CRY_DET_MAX_HOLD_MS, &h) : -1;
        if (r != 0) { set_err(err, err_len, r == -2 ? "value_out_of_range" : "usage:_set_hold_<ms>"); return -1; }
        c.hold_ms = (uint32_t)h;
    } else {
        set_err(err, err_len, "unknown_setting");
        return -1;
    }
    if (cry_det_set_config(d, &c) != 0) { set_err(err, err_len, "value_out_of_range"); return -1; }
    return 1;
}
