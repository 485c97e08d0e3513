/*
 * cry_msg.h -- the fleet's MQTT messages, version 1 (cryblock/mqttformat.py is the specification):
 * topics cryblock/<device>/<kind>, JSON payloads with "v":1, Home Assistant's device discovery
 * config; plus the pieces of the network client that need no ESP-IDF: the bounded alert outbox
 * (oldest dropped and counted), latency percentiles, the snippet recorder and the parser of the
 * network console commands. Plain C99: tests/test_mqtt_fw.py compiles it with host gcc and parses
 * its output with the Python spec. Only in projects built with `cryblock build --mqtt`.
 */
#ifndef CRY_MSG_H
#define CRY_MSG_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CRY_MSG_VERSION 1
#define CRY_MSG_DEVICE_MAX 32 /* device id: 1-32 of A-Z a-z 0-9 _ - */
#define CRY_MSG_TOPIC_MAX 128

typedef struct {
    char device[CRY_MSG_DEVICE_MAX + 1];
    uint32_t boot;  /* boot counter (NVS) */
    char model[17]; /* first 16 hex digits of the model's SHA-256 */
    char fw[32];    /* firmware version token */
} cry_msg_id_t;

/* 1 when id is a valid device id. */
int cry_msg_device_ok(const char *id);

/* "cryblock/<device>/<kind>". Returns the length, or -1 if it does not fit. */
int cry_msg_topic(char *buf, size_t cap, const char *device, const char *kind);

/* Event payload. unix_s < 0: clock not set (null). Returns the length or -1. */
int cry_msg_event(char *buf, size_t cap, const cry_msg_id_t *id, uint32_t seq, int64_t t_ms, double unix_s, int on,
                  float score, float threshold, int vote_n, int vote_m, int votes);

typedef struct {
    uint32_t seq;
    int64_t t_ms;
    float lat_p50_ms, lat_p95_ms, lat_max_ms;
    uint32_t arena_used;
    uint32_t dropped_audio, dropped_events;
    int have_rssi, rssi;          /* dBm */
    int have_battery;
    float battery;                /* % */
} cry_msg_status_t;

int cry_msg_status(char *buf, size_t cap, const cry_msg_id_t *id, const cry_msg_status_t *s);

/* Snippet payload: n int16 samples at sr Hz, pre_ms of them before the onset, base64. */
int cry_msg_snippet(char *buf, size_t cap, const cry_msg_id_t *id, uint32_t seq, int sr, int pre_ms,
                    const int16_t *pcm, size_t n);
/* Bytes cry_msg_snippet needs for n samples (with the terminating NUL). */
size_t cry_msg_snippet_size(size_t n);

/* Home Assistant device discovery: topic "<prefix>/device/cryblock_<device>/config" and payload. */
int cry_msg_discovery_topic(char *buf, size_t cap, const char *prefix, const char *device);
int cry_msg_discovery(char *buf, size_t cap, const cry_msg_id_t *id);

/* ---- bounded outbox of event payloads (QoS 1), kept until the broker acknowledges them ---- */
#define CRY_OUTBOX_SLOTS 16
#define CRY_OUTBOX_PAYLOAD 400
typedef struct {
    char payload[CRY_OUTBOX_PAYLOAD];
    int len;
    int msg_id; /* -1: waiting to be sent; >= 0: sent, waiting for its PUBACK */
} cry_outbox_slot_t;
typedef struct {
    cry_outbox_slot_t slot[CRY_OUTBOX_SLOTS];
    int head, count;  /* oldest slot, slots used */
    uint32_t dropped; /* payloads pushed out by newer ones while the outbox was full */
} cry_outbox_t;

void cry_outbox_init(cry_outbox_t *o);
/* Append a payload (len < CRY_OUTBOX_PAYLOAD); when full, the oldest is dropped and counted. */
void cry_outbox_push(cry_outbox_t *o, const char *payload, int len);
/* The oldest payload not yet sent, or NULL. */
cry_outbox_slot_t *cry_outbox_next(cry_outbox_t *o);
/* The broker acknowledged msg_id: remove that payload. Returns 1 if found. */
int cry_outbox_acked(cry_outbox_t *o, int msg_id);
/* The connection was lost: every sent payload is sent again after reconnecting. */
void cry_outbox_requeue(cry_outbox_t *o);

/* ---- latency percentiles over the last CRY_LAT_WINDOW patches (nearest rank) ---- */
#define CRY_LAT_WINDOW 64
typedef struct {
    float v[CRY_LAT_WINDOW];
    int n, pos;
} cry_lat_t;
void cry_lat_add(cry_lat_t *l, float ms);
/* p in (0, 100]; 0 when empty. */
float cry_lat_pct(const cry_lat_t *l, float p);

/* ---- snippet recorder: the last pre + post samples around an onset ---- */
typedef struct {
    int16_t *ring;       /* cap samples, owned by the caller */
    size_t cap, post;    /* total and after-onset samples */
    size_t pos;          /* next write */
    uint64_t total;      /* samples pushed so far */
    uint64_t end;        /* capture completes when total reaches this; 0 = none pending */
    uint32_t seq;        /* event seq of the pending capture */
} cry_snip_t;
void cry_snip_init(cry_snip_t *s, int16_t *ring, size_t pre, size_t post);
/* Start a capture for the event seq at the current sample (ignored while one is pending). */
void cry_snip_trigger(cry_snip_t *s, uint32_t seq);
/* Push up to n samples (*used of them taken); returns 1 when the pending capture completed with the
 * last one taken: cry_snip_copy it, then push the rest. */
int cry_snip_push(cry_snip_t *s, const int16_t *pcm, size_t n, size_t *used);
/* Copy the captured samples (oldest first) into out[cap]; returns the count (< cap if the device
 * had not heard cap samples yet) and clears the pending capture. */
size_t cry_snip_copy(cry_snip_t *s, int16_t *out);

/* ---- network console commands ---- */
enum { CRY_NET_NONE = 0, CRY_NET_WIFI, CRY_NET_MQTT, CRY_NET_DEVICE, CRY_NET_PREFIX, CRY_NET_GET, CRY_NET_BAD };
typedef struct {
    char a[129]; /* SSID, broker URI, device id or discovery prefix */
    char b[65];  /* Wi-Fi password */
    char err[48];
} cry_net_cmd_t;
/* "set wifi SSID [PASSWORD]" (quote values with spaces: "my net"; \" and \\ escape inside quotes),
 * "set mqtt mqtt://host[:port]" or mqtts://..., "set device ID", "set prefix homeassistant",
 * "get net". Returns CRY_NET_NONE for any other line, CRY_NET_BAD (with err) for a malformed one. */
int cry_net_parse(const char *line, cry_net_cmd_t *cmd);

#ifdef __cplusplus
}
#endif

#endif /* CRY_MSG_H */
