/* Host harness for main/cry_msg.c (tests/test_mqtt_fw.py): one command per mode, output on stdout.
 *   msg_harness messages DEVICE       topic and payload lines (event on/off, status, discovery, snippet)
 *   msg_harness outbox N              push N payloads "e<k>" into the outbox, ack some, print the state
 *   msg_harness lat F1 F2 ...         p50 p95 p100 of the values (last CRY_LAT_WINDOW)
 *   msg_harness snip PRE POST TRIG N  ramp 0..N-1 pushed in chunks of 37, trigger after TRIG samples
 *   msg_harness cmd LINE...           cry_net_parse of each line: "kind|a|b|err" */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cry_msg.h"

static void pair(const char *topic, const char *payload) { printf("%s\n%s\n", topic, payload); }

int main(int argc, char **argv)
{
    if (argc < 2) return 2;
    static char buf[200000], topic[CRY_MSG_TOPIC_MAX];
    if (strcmp(argv[1], "messages") == 0 && argc == 3) {
        cry_msg_id_t id;
        memset(&id, 0, sizeof(id));
        if (!cry_msg_device_ok(argv[2])) return 3;
        snprintf(id.device, sizeof(id.device), "%s", argv[2]);
        id.boot = 3;
        strcpy(id.model, "9f86d081884c7d65");
        strcpy(id.fw, "cryblock-0.1.0");
        cry_msg_topic(topic, sizeof(topic), id.device, "event");
        if (cry_msg_event(buf, sizeof(buf), &id, 17, 7384512, 1767225600.25, 1, 0.8125f, 0.449f, 2, 2, 2) < 0) return 1;
        pair(topic, buf);
        if (cry_msg_event(buf, sizeof(buf), &id, 18, 7390000, -1.0, 0, 0.1f, 0.449f, 2, 2, 0) < 0) return 1;
        pair(topic, buf);
        cry_msg_status_t st = {5, 61000, 4.7f, 5.1f, 9.0f, 25104, 0, 3, 1, -61, 0, 0.0f};
        cry_msg_topic(topic, sizeof(topic), id.device, "status");
        if (cry_msg_status(buf, sizeof(buf), &id, &st) < 0) return 1;
        pair(topic, buf);
        cry_msg_discovery_topic(topic, sizeof(topic), "homeassistant", id.device);
        if (cry_msg_discovery(buf, sizeof(buf), &id) < 0) return 1;
        pair(topic, buf);
        static int16_t pcm[48001];
        for (int i = 0; i < 48001; i++) pcm[i] = (int16_t)((i * 7919) % 65536 - 32768);
        cry_msg_topic(topic, sizeof(topic), id.device, "snippet");
        if (cry_msg_snippet(buf, cry_msg_snippet_size(48001), &id, 17, 16000, 2000, pcm, 48001) < 0) return 1;
        pair(topic, buf);
        printf("%d\n", cry_msg_event(buf, 40, &id, 1, 1, -1.0, 1, 0.5f, 0.5f, 1, 1, 1)); /* does not fit: -1 */
        return 0;
    }
    if (strcmp(argv[1], "outbox") == 0 && argc == 3) {
        static cry_outbox_t o;
        cry_outbox_init(&o);
        const int n = atoi(argv[2]);
        char p[16];
        for (int k = 0; k < n; k++) {
            const int len = snprintf(p, sizeof(p), "e%d", k);
            cry_outbox_push(&o, p, len);
        }
        /* send three, the broker acknowledges the second; the connection drops; send one again */
        int ids[3];
        for (int k = 0; k < 3; k++) {
            cry_outbox_slot_t *s = cry_outbox_next(&o);
            if (!s) break;
            ids[k] = s->msg_id = 100 + k;
        }
        cry_outbox_acked(&o, ids[1]);
        cry_outbox_requeue(&o);
        cry_outbox_next(&o)->msg_id = 200;
        printf("dropped=%u count=%d\n", (unsigned)o.dropped, o.count);
        for (int k = 0; k < o.count; k++) {
            const cry_outbox_slot_t *s = &o.slot[(o.head + k) % CRY_OUTBOX_SLOTS];
            printf("%s %d\n", s->payload, s->msg_id);
        }
        return 0;
    }
    if (strcmp(argv[1], "lat") == 0) {
        cry_lat_t l;
        memset(&l, 0, sizeof(l));
        for (int k = 2; k < argc; k++) cry_lat_add(&l, strtof(argv[k], NULL));
        printf("%.4f %.4f %.4f\n", (double)cry_lat_pct(&l, 50), (double)cry_lat_pct(&l, 95), (double)cry_lat_pct(&l, 100));
        return 0;
    }
    if (strcmp(argv[1], "snip") == 0 && argc == 6) {
        const size_t pre = (size_t)atol(argv[2]), post = (size_t)atol(argv[3]), trig = (size_t)atol(argv[4]);
        const size_t n = (size_t)atol(argv[5]);
        int16_t *ring = malloc(sizeof(int16_t) * (pre + post)), *out = malloc(sizeof(int16_t) * (pre + post));
        int16_t chunk[37];
        cry_snip_t s;
        cry_snip_init(&s, ring, pre, post);
        size_t i = 0;
        while (i < n) {
            size_t m = 0;
            for (; m < 37 && i + m < n; m++) chunk[m] = (int16_t)(i + m);
            size_t off = 0;
            while (off < m) {
                if (s.total == trig) cry_snip_trigger(&s, 42);
                const size_t lim = (s.total < trig && trig - s.total < m - off) ? trig - s.total : m - off;
                size_t used = 0;
                if (cry_snip_push(&s, chunk + off, lim, &used)) {
                    const size_t got = cry_snip_copy(&s, out);
                    printf("seq=%u n=%zu first=%d last=%d\n", (unsigned)s.seq, got, out[0], out[got - 1]);
                    for (size_t k = 1; k < got; k++) {
                        if (out[k] != out[k - 1] + 1) return 4;
                    }
                }
                off += used;
            }
            i += m;
        }
        free(ring);
        free(out);
        return 0;
    }
    if (strcmp(argv[1], "cmd") == 0) {
        cry_net_cmd_t c;
        for (int k = 2; k < argc; k++) {
            const int r = cry_net_parse(argv[k], &c);
            printf("%d|%s|%s|%s\n", r, c.a, c.b, c.err);
        }
        return 0;
    }
    return 2;
}
