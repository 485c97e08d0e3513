#pragma once
/* Subset of esp-dsp's API used by frontend.c (modules/fft/include/dsps_fft4r.h). */
typedef int esp_err_t;
#define ESP_OK 0
esp_err_t dsps_fft4r_init_fc32(float *fft_table_buff, int max_fft_size);
esp_err_t dsps_fft4r_fc32(float *data, int N);
esp_err_t dsps_bit_rev4r_fc32(float *data, int N);
esp_err_t dsps_cplx2real_fc32(float *data, int N);
