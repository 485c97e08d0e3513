/*
 * audio_i2s.h -- microphone capture over I2S (standard Philips or PDM), 16 kHz mono.
 * Mode, pins, slot and sample width come from Kconfig (menu "cryblock detector"), whose
 * defaults cryblock rendered from the options of `cryblock build` (i2s mode, pins, slot, bits).
 */
#ifndef CRY_AUDIO_I2S_H
#define CRY_AUDIO_I2S_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Create, configure and enable the RX channel. 0 on success, negative on error. */
int cry_i2s_init(void);

/* Blocking read (waits at most 1 s) of up to max_samples samples as int16 (full scale = 32768,
 * so x/32768 lies in [-1, 1) like the training audio). 32-bit slots (INMP441: 24-bit MSB-aligned
 * data) keep their top 16 bits. *got = samples read. 0 on success, negative on error or timeout. */
int cry_i2s_read(int16_t *out, size_t max_samples, size_t *got);

#ifdef __cplusplus
}
#endif

#endif /* CRY_AUDIO_I2S_H */
