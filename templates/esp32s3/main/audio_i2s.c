/* audio_i2s.c -- see audio_i2s.h. ESP-IDF >= 5.1 I2S driver (driver/i2s_std.h, i2s_pdm.h). */
#include "audio_i2s.h"

#include "freertos/FreeRTOS.h"
#include "sdkconfig.h"
#include "frontend_tables.h"

#if CONFIG_CRY_I2S_MODE_PDM
#include "driver/i2s_pdm.h"
#else
#include "driver/i2s_std.h"
#endif

#if CONFIG_CRY_I2S_MODE_PDM
#define CRY_I2S_BITS 16 /* PDM RX delivers 16-bit PCM */
#elif CONFIG_CRY_I2S_BITS == 32
#define CRY_I2S_BITS 32
#elif CONFIG_CRY_I2S_BITS == 16
#define CRY_I2S_BITS 16
#else
#error "CONFIG_CRY_I2S_BITS must be 16 or 32"
#endif

#define CRY_I2S_READ_MAX 480 /* samples per read (30 ms) */
/* i2s_channel_read() takes milliseconds and converts them with pdMS_TO_TICKS(), which overflows for
 * portMAX_DELAY (32-bit TickType_t arithmetic), so wait a finite time like the IDF I2S examples;
 * a timeout (no microphone clock/data for 1 s) is reported as a read error. */
#define CRY_I2S_TIMEOUT_MS 1000

static i2s_chan_handle_t s_rx;

int cry_i2s_init(void)
{
    i2s_chan_config_t cc = I2S_CHANNEL_DEFAULT_CONFIG(I2S_NUM_0, I2S_ROLE_MASTER);
    cc.dma_desc_num = 8;    /* as esp-tflite-micro micro_speech */
    cc.dma_frame_num = 240;
    if (i2s_new_channel(&cc, NULL, &s_rx) != ESP_OK) return -1;
#if CONFIG_CRY_I2S_MODE_PDM
    i2s_pdm_rx_config_t pc = {
        .clk_cfg = I2S_PDM_RX_CLK_DEFAULT_CONFIG(CRY_SAMPLE_RATE),
        .slot_cfg = I2S_PDM_RX_SLOT_DEFAULT_CONFIG(I2S_DATA_BIT_WIDTH_16BIT, I2S_SLOT_MODE_MONO),
        .gpio_cfg = {
            .clk = CONFIG_CRY_I2S_WS_GPIO,
            .din = CONFIG_CRY_I2S_DIN_GPIO,
        },
    };
#if CONFIG_CRY_I2S_SLOT_RIGHT
    pc.slot_cfg.slot_mask = I2S_PDM_SLOT_RIGHT;
#else
    pc.slot_cfg.slot_mask = I2S_PDM_SLOT_LEFT;
#endif
    if (i2s_channel_init_pdm_rx_mode(s_rx, &pc) != ESP_OK) return -2;
#else
    i2s_std_config_t sc = {
        .clk_cfg = I2S_STD_CLK_DEFAULT_CONFIG(CRY_SAMPLE_RATE),
#if CRY_I2S_BITS == 32
        .slot_cfg = I2S_STD_PHILIPS_SLOT_DEFAULT_CONFIG(I2S_DATA_BIT_WIDTH_32BIT, I2S_SLOT_MODE_MONO),
#else
        .slot_cfg = I2S_STD_PHILIPS_SLOT_DEFAULT_CONFIG(I2S_DATA_BIT_WIDTH_16BIT, I2S_SLOT_MODE_MONO),
#endif
        .gpio_cfg = {
            .mclk = I2S_GPIO_UNUSED,
            .bclk = CONFIG_CRY_I2S_BCLK_GPIO,
            .ws = CONFIG_CRY_I2S_WS_GPIO,
            .dout = I2S_GPIO_UNUSED,
            .din = CONFIG_CRY_I2S_DIN_GPIO,
        },
    };
    /* Set the slot explicitly: on the S3 the Philips default is BOTH even in mono (IDF 5.1-5.5 i2s_std.h). */
#if CONFIG_CRY_I2S_SLOT_RIGHT
    sc.slot_cfg.slot_mask = I2S_STD_SLOT_RIGHT;
#else
    sc.slot_cfg.slot_mask = I2S_STD_SLOT_LEFT;
#endif
    if (i2s_channel_init_std_mode(s_rx, &sc) != ESP_OK) return -2;
#endif
    if (i2s_channel_enable(s_rx) != ESP_OK) return -3;
    return 0;
}

int cry_i2s_read(int16_t *out, size_t max_samples, size_t *got)
{
    size_t n = max_samples < CRY_I2S_READ_MAX ? max_samples : CRY_I2S_READ_MAX;
    size_t bytes = 0;
    *got = 0;
#if CRY_I2S_BITS == 32
    static int32_t raw[CRY_I2S_READ_MAX];
    if (i2s_channel_read(s_rx, raw, n * sizeof(int32_t), &bytes, CRY_I2S_TIMEOUT_MS) != ESP_OK) return -1;
    n = bytes / sizeof(int32_t);
    for (size_t i = 0; i < n; i++) out[i] = (int16_t)(raw[i] >> 16);
#else
    if (i2s_channel_read(s_rx, out, n * sizeof(int16_t), &bytes, CRY_I2S_TIMEOUT_MS) != ESP_OK) return -1;
    n = bytes / sizeof(int16_t);
#endif
    *got = n;
    return 0;
}
