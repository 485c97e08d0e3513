#pragma once
#include "freertos/FreeRTOS.h"
#ifdef __cplusplus
extern "C" {
#endif
typedef void *RingbufHandle_t;
typedef enum { RINGBUF_TYPE_NOSPLIT = 0, RINGBUF_TYPE_ALLOWSPLIT, RINGBUF_TYPE_BYTEBUF } RingbufferType_t;
RingbufHandle_t xRingbufferCreate(size_t buf_length, RingbufferType_t type);
UBaseType_t xRingbufferSend(RingbufHandle_t rb, const void *data, size_t size, TickType_t wait);
void *xRingbufferReceiveUpTo(RingbufHandle_t rb, size_t *item_size, TickType_t wait, size_t max_size);
void vRingbufferReturnItem(RingbufHandle_t rb, void *item);
#ifdef __cplusplus
}
#endif
