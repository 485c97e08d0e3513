#pragma once
/* Subset of esp-dsp's API used by frontend.c (modules/fft/include/dsps_fft4r.h, esp-dsp 1.8):
 * the public names are macros over table-taking functions (_ansi_/_aes3_ variants). */
#include <stdint.h>
typedef int esp_err_t;
#define ESP_OK 0
#ifdef __cplusplus
extern "C" {
#endif
extern float *dsps_fft4r_w_table_fc32;
extern int dsps_fft4r_w_table_size;
esp_err_t dsps_fft4r_init_fc32(float *fft_table_buff, int max_fft_size);
esp_err_t dsps_fft4r_fc32_ansi_(float *data, int N, float *table, int table_size);
esp_err_t dsps_bit_rev4r_fc32(float *data, int N);
esp_err_t dsps_cplx2real_fc32_ansi_(float *data, int N, float *table, int table_size);
#ifdef __cplusplus
}
#endif
#define dsps_fft4r_fc32(data, N) dsps_fft4r_fc32_ansi_(data, N, dsps_fft4r_w_table_fc32, dsps_fft4r_w_table_size)
#define dsps_cplx2real_fc32(data, N) dsps_cplx2real_fc32_ansi_(data, N, dsps_fft4r_w_table_fc32, dsps_fft4r_w_table_size)
