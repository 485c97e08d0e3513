#pragma once
/* Subset of ESP-IDF 5.x driver/i2s_pdm.h (PDM RX); shares the common types with the i2s_std stub. */
#include "driver/i2s_std.h"
typedef enum { I2S_PDM_SLOT_RIGHT = 1, I2S_PDM_SLOT_LEFT = 2, I2S_PDM_SLOT_BOTH = 3 } i2s_pdm_slot_mask_t;
typedef struct { uint32_t sample_rate_hz; int clk_src; int mclk_multiple; int dn_sample_mode; uint32_t bclk_div; }
    i2s_pdm_rx_clk_config_t;
#define I2S_PDM_RX_CLK_DEFAULT_CONFIG(rate) { .sample_rate_hz = rate, .clk_src = 0, .mclk_multiple = 256, \
    .dn_sample_mode = 0, .bclk_div = 8, }
typedef struct { i2s_data_bit_width_t data_bit_width; int slot_bit_width; i2s_slot_mode_t slot_mode;
                 i2s_pdm_slot_mask_t slot_mask; } i2s_pdm_rx_slot_config_t;
#define I2S_PDM_RX_SLOT_DEFAULT_CONFIG(bits_per_sample, mono_or_stereo) { .data_bit_width = bits_per_sample, \
    .slot_bit_width = 0, .slot_mode = mono_or_stereo, .slot_mask = I2S_PDM_SLOT_LEFT, }
typedef struct {
    gpio_num_t clk;
    union { gpio_num_t din; gpio_num_t dins[4]; };
    struct { uint32_t clk_inv : 1; } invert_flags;
} i2s_pdm_rx_gpio_config_t;
typedef struct { i2s_pdm_rx_clk_config_t clk_cfg; i2s_pdm_rx_slot_config_t slot_cfg; i2s_pdm_rx_gpio_config_t gpio_cfg; }
    i2s_pdm_rx_config_t;
esp_err_t i2s_channel_init_pdm_rx_mode(i2s_chan_handle_t handle, const i2s_pdm_rx_config_t *pdm_rx_cfg);
