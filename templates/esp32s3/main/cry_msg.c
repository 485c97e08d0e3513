/* cry_msg.c -- see cry_msg.h. */
#include "cry_msg.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int cry_msg_device_ok(const char *id)
{
    size_t n = 0;
    if (id == NULL) return 0;
    for (; id[n]; n++) {
        const char c = id[n];
        const int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
        if (!ok || n >= CRY_MSG_DEVICE_MAX) return 0;
    }
    return n > 0;
}

/* snprintf that reports -1 when the output does not fit; format-checked like snprintf (on the S3
 * int32_t is long: every argument's type must match its conversion) */
static int fit(char *buf, size_t cap, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
static int fit(char *buf, size_t cap, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const int n = vsnprintf(buf, cap, fmt, ap);
    va_end(ap);
    return (n < 0 || (size_t)n >= cap) ? -1 : n;
}

int cry_msg_topic(char *buf, size_t cap, const char *device, const char *kind)
{
    return fit(buf, cap, "cryblock/%s/%s", device, kind);
}

int cry_msg_event(char *buf, size_t cap, const cry_msg_id_t *id, uint32_t seq, int64_t t_ms, double unix_s, int on,
                  float score, float threshold, int vote_n, int vote_m, int votes)
{
    char tbuf[24];
    if (unix_s < 0) {
        strcpy(tbuf, "null");
    } else {
        snprintf(tbuf, sizeof(tbuf), "%.3f", unix_s);
    }
    return fit(buf, cap,
               "{\"v\":%d,\"device\":\"%s\",\"boot\":%lu,\"seq\":%lu,\"t_ms\":%lld,\"time\":%s,\"state\":\"%s\","
               "\"score\":%.4f,\"threshold\":%.4f,\"vote\":\"%d/%d\",\"votes\":%d,\"model\":\"%s\"}",
               CRY_MSG_VERSION, id->device, (unsigned long)id->boot, (unsigned long)seq, (long long)t_ms, tbuf,
               on ? "on" : "off", (double)score, (double)threshold, vote_n, vote_m, votes, id->model);
}

int cry_msg_status(char *buf, size_t cap, const cry_msg_id_t *id, const cry_msg_status_t *s)
{
    char rssi[16], batt[16];
    if (s->have_rssi) {
        snprintf(rssi, sizeof(rssi), "%d", s->rssi);
    } else {
        strcpy(rssi, "null");
    }
    if (s->have_battery) {
        snprintf(batt, sizeof(batt), "%.1f", (double)s->battery);
    } else {
        strcpy(batt, "null");
    }
    return fit(buf, cap,
               "{\"v\":%d,\"device\":\"%s\",\"boot\":%lu,\"seq\":%lu,\"t_ms\":%lld,\"uptime_s\":%lld,"
               "\"lat_p50_ms\":%.2f,\"lat_p95_ms\":%.2f,\"lat_max_ms\":%.2f,\"arena_used\":%lu,"
               "\"dropped_audio\":%lu,\"dropped_events\":%lu,\"rssi\":%s,\"battery\":%s,\"fw\":\"%s\"}",
               CRY_MSG_VERSION, id->device, (unsigned long)id->boot, (unsigned long)s->seq, (long long)s->t_ms,
               (long long)(s->t_ms / 1000), (double)s->lat_p50_ms, (double)s->lat_p95_ms, (double)s->lat_max_ms,
               (unsigned long)s->arena_used, (unsigned long)s->dropped_audio, (unsigned long)s->dropped_events, rssi,
               batt, id->fw);
}

static const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t cry_msg_snippet_size(size_t n)
{
    return 4 * ((2 * n + 2) / 3) + 160 + 2 * CRY_MSG_DEVICE_MAX;
}

int cry_msg_snippet(char *buf, size_t cap, const cry_msg_id_t *id, uint32_t seq, int sr, int pre_ms,
                    const int16_t *pcm, size_t n)
{
    int k = fit(buf, cap, "{\"v\":%d,\"device\":\"%s\",\"boot\":%lu,\"seq\":%lu,\"sr\":%d,\"pre_ms\":%d,\"pcm\":\"",
                CRY_MSG_VERSION, id->device, (unsigned long)id->boot, (unsigned long)seq, sr, pre_ms);
    if (k < 0 || (size_t)k + 4 * ((2 * n + 2) / 3) + 3 > cap) return -1;
    size_t o = (size_t)k;
    const size_t nbytes = 2 * n;
    uint8_t tri[3];
    for (size_t i = 0; i < nbytes; i += 3) {
        size_t m = 0;
        for (; m < 3 && i + m < nbytes; m++) {
            const size_t b = i + m;
            const uint16_t v = (uint16_t)pcm[b / 2];
            tri[m] = (uint8_t)((b & 1) ? (v >> 8) : (v & 0xFF)); /* little-endian */
        }
        const uint32_t w = ((uint32_t)tri[0] << 16) | ((m > 1 ? (uint32_t)tri[1] : 0u) << 8) | (m > 2 ? tri[2] : 0u);
        buf[o++] = kB64[(w >> 18) & 63];
        buf[o++] = kB64[(w >> 12) & 63];
        buf[o++] = m > 1 ? kB64[(w >> 6) & 63] : '=';
        buf[o++] = m > 2 ? kB64[w & 63] : '=';
    }
    buf[o++] = '"';
    buf[o++] = '}';
    buf[o] = '\0';
    return (int)o;
}

int cry_msg_discovery_topic(char *buf, size_t cap, const char *prefix, const char *device)
{
    return fit(buf, cap, "%s/device/cryblock_%s/config", prefix, device);
}

int cry_msg_discovery(char *buf, size_t cap, const cry_msg_id_t *id)
{
    const char *d = id->device;
    char sw[48];
    if (id->fw[0]) {
        snprintf(sw, sizeof(sw), ",\"sw\":\"%s\"", id->fw);
    } else {
        sw[0] = '\0';
    }
    /* the same config as cryblock.mqttformat.discovery(), component by component */
    return fit(buf, cap,
               "{\"dev\":{\"ids\":[\"cryblock_%s\"],\"name\":\"Cry monitor %s\",\"mf\":\"cryblock\",\"mdl\":\"cry detector\"%s},"
               "\"o\":{\"name\":\"cryblock\",\"sw\":\"%s\"},"
               "\"avty_t\":\"cryblock/%s/availability\",\"qos\":1,\"cmps\":{"
               "\"cry\":{\"p\":\"binary_sensor\",\"name\":\"Crying\",\"device_class\":\"sound\","
               "\"unique_id\":\"cryblock_%s_cry\",\"state_topic\":\"cryblock/%s/event\","
               "\"value_template\":\"{{ 'ON' if value_json.state == 'on' else 'OFF' }}\"},"
               "\"cry_event\":{\"p\":\"event\",\"name\":\"Cry\",\"unique_id\":\"cryblock_%s_event\","
               "\"state_topic\":\"cryblock/%s/event\",\"event_types\":[\"cry_started\",\"cry_ended\"],"
               "\"value_template\":\"{{ {'event_type': 'cry_started' if value_json.state == 'on' else 'cry_ended', "
               "'score': value_json.score} | tojson }}\"},"
               "\"score\":{\"p\":\"sensor\",\"name\":\"Cry score\",\"unique_id\":\"cryblock_%s_score\","
               "\"state_topic\":\"cryblock/%s/event\",\"value_template\":\"{{ value_json.score }}\","
               "\"state_class\":\"measurement\",\"entity_category\":\"diagnostic\"},"
               "\"rssi\":{\"p\":\"sensor\",\"name\":\"Wi-Fi signal\",\"unique_id\":\"cryblock_%s_rssi\","
               "\"state_topic\":\"cryblock/%s/status\",\"value_template\":\"{{ value_json.rssi }}\","
               "\"device_class\":\"signal_strength\",\"unit_of_measurement\":\"dBm\",\"state_class\":\"measurement\","
               "\"entity_category\":\"diagnostic\"},"
               "\"uptime\":{\"p\":\"sensor\",\"name\":\"Uptime\",\"unique_id\":\"cryblock_%s_uptime\","
               "\"state_topic\":\"cryblock/%s/status\",\"value_template\":\"{{ value_json.uptime_s }}\","
               "\"device_class\":\"duration\",\"unit_of_measurement\":\"s\",\"entity_category\":\"diagnostic\"},"
               "\"opinion\":{\"p\":\"sensor\",\"name\":\"Second opinion\",\"unique_id\":\"cryblock_%s_opinion\","
               "\"state_topic\":\"cryblock/%s/verdict\",\"value_template\":\"{{ value_json.verdict }}\"}}}",
               d, d, sw, id->fw[0] ? id->fw : "cryblock", d, d, d, d, d, d, d, d, d, d, d, d, d);
}

/* ---- outbox ---- */
void cry_outbox_init(cry_outbox_t *o)
{
    memset(o, 0, sizeof(*o));
}

void cry_outbox_push(cry_outbox_t *o, const char *payload, int len)
{
    if (len < 0 || len >= CRY_OUTBOX_PAYLOAD) return;
    if (o->count == CRY_OUTBOX_SLOTS) { /* full: the oldest alert goes */
        o->head = (o->head + 1) % CRY_OUTBOX_SLOTS;
        o->count--;
        o->dropped++;
    }
    cry_outbox_slot_t *s = &o->slot[(o->head + o->count) % CRY_OUTBOX_SLOTS];
    memcpy(s->payload, payload, (size_t)len);
    s->payload[len] = '\0';
    s->len = len;
    s->msg_id = -1;
    o->count++;
}

cry_outbox_slot_t *cry_outbox_next(cry_outbox_t *o)
{
    for (int k = 0; k < o->count; k++) {
        cry_outbox_slot_t *s = &o->slot[(o->head + k) % CRY_OUTBOX_SLOTS];
        if (s->msg_id < 0) return s;
    }
    return NULL;
}

int cry_outbox_acked(cry_outbox_t *o, int msg_id)
{
    for (int k = 0; k < o->count; k++) {
        const int i = (o->head + k) % CRY_OUTBOX_SLOTS;
        if (o->slot[i].msg_id == msg_id) {
            for (int j = k; j > 0; j--) { /* close the gap: later slots keep their order */
                o->slot[(o->head + j) % CRY_OUTBOX_SLOTS] = o->slot[(o->head + j - 1) % CRY_OUTBOX_SLOTS];
            }
            o->head = (o->head + 1) % CRY_OUTBOX_SLOTS;
            o->count--;
            return 1;
        }
    }
    return 0;
}

void cry_outbox_requeue(cry_outbox_t *o)
{
    for (int k = 0; k < o->count; k++) o->slot[(o->head + k) % CRY_OUTBOX_SLOTS].msg_id = -1;
}

/* ---- latency ---- */
void cry_lat_add(cry_lat_t *l, float ms)
{
    l->v[l->pos] = ms;
    l->pos = (l->pos + 1) % CRY_LAT_WINDOW;
    if (l->n < CRY_LAT_WINDOW) l->n++;
}

float cry_lat_pct(const cry_lat_t *l, float p)
{
    float s[CRY_LAT_WINDOW];
    if (l->n == 0) return 0.0f;
    memcpy(s, l->v, sizeof(float) * (size_t)l->n);
    for (int i = 1; i < l->n; i++) { /* insertion sort: 64 values */
        const float x = s[i];
        int j = i - 1;
        for (; j >= 0 && s[j] > x; j--) s[j + 1] = s[j];
        s[j + 1] = x;
    }
    const double x = (double)p * (double)l->n / 100.0; /* nearest rank: ceil(p/100 n) */
    int rank = (int)x;
    if ((double)rank < x) rank++;
    if (rank < 1) rank = 1;
    if (rank > l->n) rank = l->n;
    return s[rank - 1];
}

/* ---- snippet recorder ---- */
void cry_snip_init(cry_snip_t *s, int16_t *ring, size_t pre, size_t post)
{
    memset(s, 0, sizeof(*s));
    s->ring = ring;
    s->cap = pre + post;
    s->post = post;
}

void cry_snip_trigger(cry_snip_t *s, uint32_t seq)
{
    if (s->end != 0) return;
    s->end = s->total + s->post;
    s->seq = seq;
}

int cry_snip_push(cry_snip_t *s, const int16_t *pcm, size_t n, size_t *used)
{
    size_t i = 0;
    int done = 0;
    while (i < n && !done) {
        s->ring[s->pos] = pcm[i++];
        s->pos = (s->pos + 1) % s->cap;
        s->total++;
        done = s->end != 0 && s->total == s->end; /* stop: more would overwrite the snippet's start */
    }
    *used = i;
    return done;
}

size_t cry_snip_copy(cry_snip_t *s, int16_t *out)
{
    const size_t have = s->total < s->cap ? (size_t)s->total : s->cap;
    const size_t start = (s->pos + s->cap - have) % s->cap;
    for (size_t i = 0; i < have; i++) out[i] = s->ring[(start + i) % s->cap];
    s->end = 0;
    return have;
}

/* ---- console commands ---- */
/* Next token of *p into out (cap bytes): bare word, or "quoted" with \" and \\ escapes.
 * Returns 1, 0 at the end of the line, -1 on a malformed or over-long token. */
static int token(const char **p, char *out, size_t cap)
{
    const char *s = *p;
    size_t n = 0;
    while (*s == ' ') s++;
    if (!*s) return 0;
    if (*s == '"') {
        s++;
        for (; *s && *s != '"'; s++) {
            if (*s == '\\' && (s[1] == '"' || s[1] == '\\')) s++;
            if (n + 1 >= cap) return -1;
            out[n++] = *s;
        }
        if (*s != '"') return -1;
        s++;
    } else {
        for (; *s && *s != ' '; s++) {
            if (n + 1 >= cap) return -1;
            out[n++] = *s;
        }
    }
    out[n] = '\0';
    *p = s;
    return 1;
}

static int bad(cry_net_cmd_t *c, const char *msg)
{
    snprintf(c->err, sizeof(c->err), "%s", msg);
    return CRY_NET_BAD;
}

int cry_net_parse(const char *line, cry_net_cmd_t *c)
{
    char w1[8], w2[8], extra[2];
    const char *p = line;
    memset(c, 0, sizeof(*c));
    if (token(&p, w1, sizeof(w1)) != 1 || token(&p, w2, sizeof(w2)) != 1) return CRY_NET_NONE;
    if (strcmp(w1, "get") == 0 && strcmp(w2, "net") == 0) return CRY_NET_GET;
    if (strcmp(w1, "set") != 0) return CRY_NET_NONE;
    int kind;
    if (strcmp(w2, "wifi") == 0) {
        kind = CRY_NET_WIFI;
    } else if (strcmp(w2, "mqtt") == 0) {
        kind = CRY_NET_MQTT;
    } else if (strcmp(w2, "device") == 0) {
        kind = CRY_NET_DEVICE;
    } else if (strcmp(w2, "prefix") == 0) {
        kind = CRY_NET_PREFIX;
    } else {
        return CRY_NET_NONE;
    }
    if (token(&p, c->a, sizeof(c->a)) != 1) return bad(c, "missing_or_too_long_value");
    if (kind == CRY_NET_WIFI) {
        const int r = token(&p, c->b, sizeof(c->b));
        if (r < 0) return bad(c, "password_too_long");
        if (strlen(c->a) > 32) return bad(c, "ssid_longer_than_32_bytes");
        if (r == 1 && strlen(c->b) < 8) return bad(c, "wpa_password_needs_8_to_64_chars");
    } else if (kind == CRY_NET_MQTT) {
        if (strncmp(c->a, "mqtt://", 7) != 0 && strncmp(c->a, "mqtts://", 8) != 0) return bad(c, "uri_must_be_mqtt_or_mqtts");
        if (strchr(c->a, ' ') || strlen(c->a) < 9) return bad(c, "bad_broker_uri");
    } else if (kind == CRY_NET_DEVICE) {
        if (!cry_msg_device_ok(c->a)) return bad(c, "device_id_1_to_32_of_A-Za-z0-9_-");
    } else {
        for (const char *q = c->a; *q; q++) {
            if (*q == '+' || *q == '#' || *q == ' ' || (unsigned char)*q < 0x20) return bad(c, "bad_prefix");
        }
        if (strlen(c->a) > 64) return bad(c, "bad_prefix");
    }
    if (token(&p, extra, sizeof(extra)) != 0) return bad(c, "too_many_values");
    return kind;
}
