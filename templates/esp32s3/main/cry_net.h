/*
 * cry_net.h -- the monitor on the network (projects built with `cryblock build --mqtt`): Wi-Fi
 * station, ESP-IDF's MQTT client (esp-mqtt) publishing the messages of cryblock/mqttformat.py
 * (payloads formatted by cry_msg.c), Home Assistant discovery, SNTP time.
 *
 *   - credentials and broker are set at run time on the serial console and kept in NVS
 *     ("set wifi SSID PASS", "set mqtt mqtts://host:8883", "set device ID", "set prefix P",
 *     "get net"); nothing of them is in the generated sources;
 *   - reconnects (Wi-Fi and broker) with exponential back-off, 1 s doubling to 60 s, with jitter;
 *   - alerts wait in a bounded outbox while offline (oldest dropped and counted in status);
 *   - TLS for mqtts:// with the broker CA in main/mqtt_ca.pem (cryblock build --mqtt-ca), else
 *     ESP-IDF's certificate bundle;
 *   - retained availability "online" with the last will "offline"; discovery on every connect
 *     and when Home Assistant's birth message arrives.
 */
#ifndef CRY_NET_H
#define CRY_NET_H

#include <stddef.h>
#include <stdint.h>

#include "cry_app.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Start the network task (after the model is up). arena_used goes into status messages. */
void cry_net_start(uint32_t arena_used);

/* A console line: 1 if it was a network command (answered with a NET record), else 0. */
int cry_net_command(const char *line);

/* After each cry_app_push of n samples that took push_us: events on detector changes, latency,
 * snippet audio, the audio samples dropped so far. Called from the inference task. */
void cry_net_after_push(const cry_app_t *a, const int16_t *pcm, size_t n, int64_t push_us, uint32_t dropped_audio);

#ifdef __cplusplus
}
#endif

#endif /* CRY_NET_H */
