/* cry_net.c -- see cry_net.h. ESP-IDF >= 5.1: esp_wifi, esp_netif, esp-mqtt, nvs_flash, esp_netif_sntp. */
#include "cry_net.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "esp_crt_bundle.h"
#include "esp_event.h"
#include "esp_heap_caps.h"
#include "esp_mac.h"
#include "esp_netif.h"
#include "esp_netif_sntp.h"
#include "esp_random.h"
#include "esp_system.h"
#include "esp_timer.h"
#include "esp_wifi.h"
#include "freertos/FreeRTOS.h"
#include "freertos/semphr.h"
#include "freertos/task.h"
#include "mqtt_client.h"
#include "nvs.h"
#include "nvs_flash.h"
#include "sdkconfig.h"

#include "cry_log.h"
#include "cry_msg.h"
#include "cry_net_config.h"
#include "model_settings.h"

#if CRY_NET_HAS_CA
extern const char mqtt_ca_pem_start[] asm("_binary_mqtt_ca_pem_start");
#endif

#define BACKOFF_MIN_MS 1000
#define BACKOFF_MAX_MS 60000

static struct {
    cry_msg_id_t id;
    char ssid[33], pass[65], uri[129], prefix[65];
    uint32_t arena_used;
    esp_mqtt_client_handle_t mqtt;
    SemaphoreHandle_t lock; /* outbox, latency, counters */
    cry_outbox_t outbox;
    cry_lat_t lat;
    volatile int wifi_up, mqtt_up, announce;
    int64_t retry_at_us;  /* next broker reconnect attempt */
    uint32_t backoff_ms;
    volatile int64_t wifi_retry_at_us; /* next Wi-Fi connect attempt; 0: none pending */
    uint32_t wifi_backoff_ms;
    uint32_t event_seq, status_seq, dropped_audio, dropped_snippets;
    int last_det, last_seq;
#if CONFIG_CRY_MQTT_SNIPPETS
    cry_snip_t snip;
    int16_t *snip_pcm;
    char *snip_payload;
    volatile int snip_ready;
    uint32_t snip_n;
#endif
} g;

static void net_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void net_log(const char *fmt, ...)
{
    char line[CRY_LOG_MAX_LINE];
    va_list ap;
    va_start(ap, fmt);
    if (cry_log_vformat(line, sizeof(line), "NET", fmt, ap) > 0) {
        printf("%s\n", line);
        fflush(stdout);
    }
    va_end(ap);
}

/* ---- NVS ---- */
static void nvs_str(nvs_handle_t h, const char *key, char *out, size_t cap, const char *dflt)
{
    size_t len = cap;
    if (nvs_get_str(h, key, out, &len) != ESP_OK) snprintf(out, cap, "%s", dflt);
}

static void load_settings(void)
{
    esp_err_t err = nvs_flash_init();
    if (err == ESP_ERR_NVS_NO_FREE_PAGES || err == ESP_ERR_NVS_NEW_VERSION_FOUND) {
        nvs_flash_erase();
        nvs_flash_init();
    }
    uint8_t mac[6] = {0};
    esp_read_mac(mac, ESP_MAC_WIFI_STA);
    char dflt[16];
    snprintf(dflt, sizeof(dflt), "cry-%02x%02x%02x", mac[3], mac[4], mac[5]);
    nvs_handle_t h;
    if (nvs_open("cryblock", NVS_READWRITE, &h) == ESP_OK) {
        nvs_str(h, "ssid", g.ssid, sizeof(g.ssid), "");
        nvs_str(h, "pass", g.pass, sizeof(g.pass), "");
        nvs_str(h, "uri", g.uri, sizeof(g.uri), "");
        nvs_str(h, "device", g.id.device, sizeof(g.id.device), dflt);
        nvs_str(h, "prefix", g.prefix, sizeof(g.prefix), CRY_NET_HA_PREFIX);
        uint32_t boot = 0;
        nvs_get_u32(h, "boot", &boot);
        g.id.boot = boot + 1; /* (device, boot, seq) names every message uniquely */
        nvs_set_u32(h, "boot", g.id.boot);
        nvs_commit(h);
        nvs_close(h);
    } else {
        snprintf(g.id.device, sizeof(g.id.device), "%s", dflt);
        snprintf(g.prefix, sizeof(g.prefix), "%s", CRY_NET_HA_PREFIX);
    }
    if (!cry_msg_device_ok(g.id.device)) snprintf(g.id.device, sizeof(g.id.device), "%s", dflt);
    snprintf(g.id.model, sizeof(g.id.model), "%s", CRY_NET_MODEL_SHA16);
    snprintf(g.id.fw, sizeof(g.id.fw), "%s", CRY_FW_VERSION);
}

int cry_net_command(const char *line)
{
    cry_net_cmd_t c;
    const int kind = cry_net_parse(line, &c);
    if (kind == CRY_NET_NONE) return 0;
    if (kind == CRY_NET_BAD) {
        net_log("error=%s", c.err);
        return 1;
    }
    if (kind == CRY_NET_GET) { /* never the password */
        net_log("device=%s boot=%" PRIu32 " wifi=%s ssid_set=%d mqtt=%s uri_set=%d prefix=%s outbox=%d dropped=%" PRIu32,
                g.id.device, g.id.boot, g.wifi_up ? "up" : "down", g.ssid[0] != 0, g.mqtt_up ? "up" : "down",
                g.uri[0] != 0, g.prefix, g.outbox.count, g.outbox.dropped);
        return 1;
    }
    nvs_handle_t h;
    if (nvs_open("cryblock", NVS_READWRITE, &h) != ESP_OK) {
        net_log("error=nvs_open_failed");
        return 1;
    }
    if (kind == CRY_NET_WIFI) {
        nvs_set_str(h, "ssid", c.a);
        nvs_set_str(h, "pass", c.b);
    } else if (kind == CRY_NET_MQTT) {
        nvs_set_str(h, "uri", c.a);
    } else if (kind == CRY_NET_DEVICE) {
        nvs_set_str(h, "device", c.a);
    } else {
        nvs_set_str(h, "prefix", c.a);
    }
    const esp_err_t err = nvs_commit(h);
    nvs_close(h);
    net_log("saved=%s restart=1", err == ESP_OK ? "yes" : "no");
    vTaskDelay(pdMS_TO_TICKS(200));
    esp_restart(); /* the new settings take effect from a clean start */
    return 1;
}

/* ---- Wi-Fi ---- */
static uint32_t jitter(uint32_t ms) { return ms / 2 + esp_random() % (ms / 2 + 1); }

static void wifi_event(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    (void)arg;
    (void)data;
    if (base == WIFI_EVENT && id == WIFI_EVENT_STA_START) {
        esp_wifi_connect();
    } else if (base == WIFI_EVENT && id == WIFI_EVENT_STA_DISCONNECTED) {
        /* never sleep here: this handler runs on the default event loop, which every other
           event (IP, MQTT) shares; net_task makes the next attempt when the back-off is over */
        g.wifi_up = 0;
        g.wifi_retry_at_us = esp_timer_get_time() + 1000LL * jitter(g.wifi_backoff_ms);
        g.wifi_backoff_ms = g.wifi_backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : g.wifi_backoff_ms * 2;
    } else if (base == IP_EVENT && id == IP_EVENT_STA_GOT_IP) {
        g.wifi_up = 1;
        g.wifi_backoff_ms = BACKOFF_MIN_MS;
        net_log("wifi=up");
    }
}

static void wifi_start(void)
{
    esp_netif_create_default_wifi_sta();
    wifi_init_config_t cfg = WIFI_INIT_CONFIG_DEFAULT();
    ESP_ERROR_CHECK(esp_wifi_init(&cfg));
    esp_event_handler_instance_register(WIFI_EVENT, ESP_EVENT_ANY_ID, wifi_event, NULL, NULL);
    esp_event_handler_instance_register(IP_EVENT, IP_EVENT_STA_GOT_IP, wifi_event, NULL, NULL);
    wifi_config_t wc;
    memset(&wc, 0, sizeof(wc));
    memcpy(wc.sta.ssid, g.ssid, strnlen(g.ssid, sizeof(wc.sta.ssid)));
    memcpy(wc.sta.password, g.pass, strnlen(g.pass, sizeof(wc.sta.password)));
    wc.sta.threshold.authmode = g.pass[0] ? WIFI_AUTH_WPA2_PSK : WIFI_AUTH_OPEN;
    esp_wifi_set_mode(WIFI_MODE_STA);
    esp_wifi_set_config(WIFI_IF_STA, &wc);
    esp_wifi_start();
}

/* ---- MQTT ---- */
static void publish_announcement(void)
{
    static char payload[2600];
    char topic[CRY_MSG_TOPIC_MAX];
    if (cry_msg_discovery_topic(topic, sizeof(topic), g.prefix, g.id.device) > 0 &&
        cry_msg_discovery(payload, sizeof(payload), &g.id) > 0) {
        esp_mqtt_client_publish(g.mqtt, topic, payload, 0, 1, 1);
    }
}

static void mqtt_event(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    (void)arg;
    (void)base;
    esp_mqtt_event_handle_t ev = (esp_mqtt_event_handle_t)data;
    char topic[CRY_MSG_TOPIC_MAX];
    switch ((esp_mqtt_event_id_t)id) {
    case MQTT_EVENT_CONNECTED:
        g.mqtt_up = 1;
        g.backoff_ms = BACKOFF_MIN_MS;
        cry_msg_topic(topic, sizeof(topic), g.id.device, "availability");
        esp_mqtt_client_publish(g.mqtt, topic, "online", 0, 1, 1);
        snprintf(topic, sizeof(topic), "%s/status", g.prefix);
        esp_mqtt_client_subscribe(g.mqtt, topic, 1);
        g.announce = 1;
        net_log("mqtt=up");
        break;
    case MQTT_EVENT_DISCONNECTED:
        g.mqtt_up = 0;
        xSemaphoreTake(g.lock, portMAX_DELAY);
        cry_outbox_requeue(&g.outbox); /* unacknowledged alerts go out again after reconnecting */
        xSemaphoreGive(g.lock);
        g.retry_at_us = esp_timer_get_time() + 1000LL * jitter(g.backoff_ms);
        g.backoff_ms = g.backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : g.backoff_ms * 2;
        net_log("mqtt=down");
        break;
    case MQTT_EVENT_PUBLISHED:
        xSemaphoreTake(g.lock, portMAX_DELAY);
        cry_outbox_acked(&g.outbox, ev->msg_id);
        xSemaphoreGive(g.lock);
        break;
    case MQTT_EVENT_DATA:
        snprintf(topic, sizeof(topic), "%s/status", g.prefix);
        if (ev->topic_len == (int)strlen(topic) && memcmp(ev->topic, topic, (size_t)ev->topic_len) == 0 &&
            ev->data_len == 6 && memcmp(ev->data, "online", 6) == 0) {
            g.announce = 1; /* Home Assistant (re)started: announce again */
        }
        break;
    default:
        break;
    }
}

static void mqtt_start(void)
{
    static char will_topic[CRY_MSG_TOPIC_MAX];
    cry_msg_topic(will_topic, sizeof(will_topic), g.id.device, "availability");
    esp_mqtt_client_config_t mc;
    memset(&mc, 0, sizeof(mc));
    mc.broker.address.uri = g.uri;
    if (strncmp(g.uri, "mqtts://", 8) == 0) {
#if CRY_NET_HAS_CA
        mc.broker.verification.certificate = mqtt_ca_pem_start;
#else
        mc.broker.verification.crt_bundle_attach = esp_crt_bundle_attach;
#endif
    }
    mc.credentials.client_id = g.id.device;
    mc.session.last_will.topic = will_topic;
    mc.session.last_will.msg = "offline";
    mc.session.last_will.msg_len = 7;
    mc.session.last_will.qos = 1;
    mc.session.last_will.retain = 1;
    mc.session.keepalive = 30;
    mc.network.disable_auto_reconnect = true; /* our back-off (net_task) reconnects */
    g.mqtt = esp_mqtt_client_init(&mc);
    esp_mqtt_client_register_event(g.mqtt, ESP_EVENT_ANY_ID, mqtt_event, NULL);
    esp_mqtt_client_start(g.mqtt);
}

static void publish_status(void)
{
    static char payload[512];
    char topic[CRY_MSG_TOPIC_MAX];
    cry_msg_status_t st;
    memset(&st, 0, sizeof(st));
    xSemaphoreTake(g.lock, portMAX_DELAY);
    st.lat_p50_ms = cry_lat_pct(&g.lat, 50);
    st.lat_p95_ms = cry_lat_pct(&g.lat, 95);
    st.lat_max_ms = cry_lat_pct(&g.lat, 100);
    st.dropped_events = g.outbox.dropped;
    st.dropped_audio = g.dropped_audio;
    xSemaphoreGive(g.lock);
    st.seq = g.status_seq++;
    st.t_ms = esp_timer_get_time() / 1000;
    st.arena_used = g.arena_used;
    wifi_ap_record_t ap;
    if (esp_wifi_sta_get_ap_info(&ap) == ESP_OK) {
        st.have_rssi = 1;
        st.rssi = ap.rssi;
    }
    if (cry_msg_topic(topic, sizeof(topic), g.id.device, "status") > 0 &&
        cry_msg_status(payload, sizeof(payload), &g.id, &st) > 0) {
        esp_mqtt_client_publish(g.mqtt, topic, payload, 0, 0, 0);
    }
}

static void net_task(void *arg)
{
    (void)arg;
    char topic[CRY_MSG_TOPIC_MAX];
    int64_t next_status = esp_timer_get_time() + 5000000LL;
    cry_msg_topic(topic, sizeof(topic), g.id.device, "event");
    for (;;) {
        vTaskDelay(pdMS_TO_TICKS(50));
        const int64_t now = esp_timer_get_time();
        if (!g.wifi_up && g.wifi_retry_at_us && now >= g.wifi_retry_at_us) {
            g.wifi_retry_at_us = 0;
            esp_wifi_connect(); /* a failure raises STA_DISCONNECTED again: the next back-off */
        }
        if (!g.mqtt_up) {
            if (g.wifi_up && now >= g.retry_at_us) {
                esp_mqtt_client_reconnect(g.mqtt);
                g.retry_at_us = now + 1000LL * jitter(g.backoff_ms);
                g.backoff_ms = g.backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : g.backoff_ms * 2;
            }
            continue;
        }
        if (g.announce) {
            g.announce = 0;
            publish_announcement();
        }
        for (;;) { /* alerts, oldest first */
            static char payload[CRY_OUTBOX_PAYLOAD];
            int len = 0;
            xSemaphoreTake(g.lock, portMAX_DELAY);
            cry_outbox_slot_t *s = cry_outbox_next(&g.outbox);
            if (s) {
                len = s->len;
                memcpy(payload, s->payload, (size_t)len + 1);
                s->msg_id = -2; /* being sent */
            }
            xSemaphoreGive(g.lock);
            if (!s) break;
            const int mid = esp_mqtt_client_publish(g.mqtt, topic, payload, len, 1, 0);
            xSemaphoreTake(g.lock, portMAX_DELAY);
            for (int k = 0; k < g.outbox.count; k++) {
                cry_outbox_slot_t *t = &g.outbox.slot[(g.outbox.head + k) % CRY_OUTBOX_SLOTS];
                if (t->msg_id == -2) t->msg_id = mid < 0 ? -1 : mid;
            }
            xSemaphoreGive(g.lock);
            if (mid < 0) break; /* not connected after all: retried after reconnecting */
        }
#if CONFIG_CRY_MQTT_SNIPPETS
        if (g.snip_ready) {
            char st[CRY_MSG_TOPIC_MAX];
            cry_msg_topic(st, sizeof(st), g.id.device, "snippet");
            const size_t cap = cry_msg_snippet_size(g.snip_n);
            if (cry_msg_snippet(g.snip_payload, cap, &g.id, g.snip.seq, CRY_SAMPLE_RATE, CRY_NET_SNIPPET_PRE_MS,
                                g.snip_pcm, g.snip_n) < 0 ||
                esp_mqtt_client_publish(g.mqtt, st, g.snip_payload, 0, 1, 0) < 0) {
                g.dropped_snippets++;
            }
            g.snip_ready = 0;
        }
#endif
        if (now >= next_status) {
            next_status = now + 1000000LL * CRY_NET_STATUS_PERIOD_S;
            publish_status();
        }
    }
}

void cry_net_start(uint32_t arena_used)
{
    g.arena_used = arena_used;
    g.lock = xSemaphoreCreateMutex();
    g.backoff_ms = BACKOFF_MIN_MS;
    g.wifi_backoff_ms = BACKOFF_MIN_MS;
    g.last_seq = -1;
    cry_outbox_init(&g.outbox);
    load_settings();
#if CONFIG_CRY_MQTT_SNIPPETS
    const size_t pre = (size_t)CRY_SAMPLE_RATE * CRY_NET_SNIPPET_PRE_MS / 1000;
    const size_t post = (size_t)CRY_SAMPLE_RATE * CRY_NET_SNIPPET_POST_MS / 1000;
    int16_t *ring = heap_caps_malloc(sizeof(int16_t) * (pre + post), MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT);
    g.snip_pcm = heap_caps_malloc(sizeof(int16_t) * (pre + post), MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT);
    g.snip_payload = heap_caps_malloc(cry_msg_snippet_size(pre + post), MALLOC_CAP_SPIRAM | MALLOC_CAP_8BIT);
    if (ring && g.snip_pcm && g.snip_payload) {
        cry_snip_init(&g.snip, ring, pre, post);
    } else {
        net_log("error=no_psram_for_snippets");
    }
#endif
    net_log("device=%s boot=%" PRIu32 " ssid_set=%d uri_set=%d", g.id.device, g.id.boot, g.ssid[0] != 0, g.uri[0] != 0);
    if (!g.ssid[0] || !g.uri[0]) {
        net_log("error=set_wifi_and_mqtt_on_the_console");
        return;
    }
    esp_netif_init();
    esp_event_loop_create_default();
    wifi_start();
    esp_sntp_config_t sntp = ESP_NETIF_SNTP_DEFAULT_CONFIG("pool.ntp.org");
    esp_netif_sntp_init(&sntp);
    mqtt_start();
    xTaskCreatePinnedToCore(net_task, "cry_net", 6144, NULL, 3, NULL, 0);
}

static int votes_of(const cry_det_t *d)
{
    int v = 0;
    for (int k = 0; k < d->hist_count; k++) v += d->hist[(d->hist_pos - 1 - k + CRY_DET_MAX_M) % CRY_DET_MAX_M];
    return v;
}

void cry_net_after_push(const cry_app_t *a, const int16_t *pcm, size_t n, int64_t push_us, uint32_t dropped_audio)
{
    if (g.lock == NULL) return;
#if CONFIG_CRY_MQTT_SNIPPETS
    if (g.snip.ring != NULL && !g.snip_ready) {
        size_t off = 0;
        while (off < n) {
            size_t used = 0;
            if (cry_snip_push(&g.snip, pcm + off, n - off, &used)) {
                g.snip_n = (uint32_t)cry_snip_copy(&g.snip, g.snip_pcm);
                g.snip_ready = 1; /* net_task publishes it */
            }
            off += used;
            if (g.snip_ready) break;
        }
    }
#else
    (void)pcm;
    (void)n;
#endif
    if ((int)a->seq == g.last_seq) return; /* no patch completed in this push */
    g.last_seq = (int)a->seq;
    xSemaphoreTake(g.lock, portMAX_DELAY);
    cry_lat_add(&g.lat, (float)push_us / 1000.0f);
    g.dropped_audio = dropped_audio;
    if (a->det.det != g.last_det) {
        g.last_det = a->det.det;
        static char payload[CRY_OUTBOX_PAYLOAD];
        struct timeval tv;
        gettimeofday(&tv, NULL);
        const double unix_s = tv.tv_sec > 1600000000 ? (double)tv.tv_sec + tv.tv_usec / 1e6 : -1.0; /* SNTP set */
        const uint32_t seq = g.event_seq++;
        const int len = cry_msg_event(payload, sizeof(payload), &g.id, seq, esp_timer_get_time() / 1000, unix_s,
                                      a->det.det, cry_app_score(a), a->det.cfg.threshold, a->det.cfg.vote_n,
                                      a->det.cfg.vote_m, votes_of(&a->det));
        if (len > 0) cry_outbox_push(&g.outbox, payload, len);
#if CONFIG_CRY_MQTT_SNIPPETS
        if (a->det.det && g.snip.ring != NULL) cry_snip_trigger(&g.snip, seq);
#endif
    }
    xSemaphoreGive(g.lock);
}
