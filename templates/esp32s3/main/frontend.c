/*
 * frontend.c -- see frontend.h. Host builds (no ESP_PLATFORM) use a small portable
 * radix-4 FFT; ESP-IDF builds use esp-dsp's radix-4 complex FFT + real split
 * (dsps_fft4r_fc32 / dsps_bit_rev4r_fc32 / dsps_cplx2real_fc32). Both produce the same packed
 * layout for a real FFT of length CRY_FE_NFFT (N = CRY_FE_NFFT/2 complex points):
 *   buf[0] = Re X[0] (DC), buf[1] = Re X[N] (Nyquist), buf[2k], buf[2k+1] = Re, Im X[k], 0<k<N
 * unnormalised, like numpy.fft.rfft / tf.signal.rfft.
 */
#include "frontend.h"

#include <math.h>
#include <string.h>

#define CRY_FFT_N (CRY_FE_NFFT / 2) /* complex points */

#ifdef ESP_PLATFORM
#include "esp_dsp.h" /* esp-dsp umbrella header: dsps_fft4r_* */

static int fft_init(void)
{
    /* Table for a CRY_FFT_N-point complex radix-4 FFT, allocated by esp-dsp (esp-dsp example
     * fft4real: dsps_fft4r_init_fc32(NULL, N >> 1) for an N-point real FFT). */
    static int done = 0;
    if (done) return 0;
    if (dsps_fft4r_init_fc32(NULL, CRY_FFT_N) != ESP_OK) return -1;
    done = 1;
    return 0;
}

static void rfft_packed(const float *frame, float *buf)
{
    for (int i = 0; i < CRY_FE_WIN; i++) buf[i] = frame[i] * cry_fe_hann[i];
    for (int i = CRY_FE_WIN; i < CRY_FE_NFFT; i++) buf[i] = 0.0f;
    dsps_fft4r_fc32(buf, CRY_FFT_N);
    dsps_bit_rev4r_fc32(buf, CRY_FFT_N);
    dsps_cplx2real_fc32(buf, CRY_FFT_N);
}

#else /* host: portable radix-4 FFT (same radix and real split as esp-dsp's fft4r path) */

/* Host window + FFT arithmetic: double by default, so host tests check the front-end's logic
 * against the float64 Python reference to ~1e-4; -DCRY_FE_HOST_FLOAT makes it float32 like the device
 * (esp-dsp), to measure the float32 noise floor (up to a few 1e-3 log units in near-silent
 * bands, e.g. above 4 kHz in 8 kHz-sourced audio). */
#ifdef CRY_FE_HOST_FLOAT
typedef float fft_real;
#else
typedef double fft_real;
#endif

static fft_real tw_re[CRY_FE_NFFT], tw_im[CRY_FE_NFFT]; /* exp(-2*pi*i*k/NFFT), k < NFFT */

static int fft_init(void)
{
    for (int k = 0; k < CRY_FE_NFFT; k++) {
        const double a = -2.0 * 3.14159265358979323846 * (double)k / (double)CRY_FE_NFFT;
        tw_re[k] = (fft_real)cos(a);
        tw_im[k] = (fft_real)sin(a);
    }
    return 0;
}

/* in-place complex FFT of CRY_FFT_N points (a power of 4), interleaved re/im, decimation in
 * time: base-4 digit reversal, then radix-4 butterflies. */
static void cfft(fft_real *z)
{
    const int n = CRY_FFT_N;
    int digits = 0;
    for (int m = n; m > 1; m >>= 2) digits++;
    for (int i = 0; i < n; i++) {
        int r = 0, v = i;
        for (int d = 0; d < digits; d++) { r = (r << 2) | (v & 3); v >>= 2; }
        if (i < r) {
            fft_real t = z[2 * i]; z[2 * i] = z[2 * r]; z[2 * r] = t;
            t = z[2 * i + 1]; z[2 * i + 1] = z[2 * r + 1]; z[2 * r + 1] = t;
        }
    }
    for (int len = 4; len <= n; len <<= 2) {
        const int q = len >> 2;
        const int step = CRY_FE_NFFT / len; /* index step into the NFFT-point twiddle table */
        for (int s = 0; s < n; s += len) {
            for (int k = 0; k < q; k++) {
                fft_real br[4], bi[4];
                for (int r = 0; r < 4; r++) {
                    const fft_real *a = z + 2 * (s + k + r * q);
                    const int t = r * k * step;
                    br[r] = a[0] * tw_re[t] - a[1] * tw_im[t];
                    bi[r] = a[0] * tw_im[t] + a[1] * tw_re[t];
                }
                const fft_real s02r = br[0] + br[2], s02i = bi[0] + bi[2];
                const fft_real d02r = br[0] - br[2], d02i = bi[0] - bi[2];
                const fft_real s13r = br[1] + br[3], s13i = bi[1] + bi[3];
                const fft_real d13r = br[1] - br[3], d13i = bi[1] - bi[3];
                fft_real *y0 = z + 2 * (s + k), *y1 = y0 + 2 * q, *y2 = y0 + 4 * q, *y3 = y0 + 6 * q;
                y0[0] = s02r + s13r; y0[1] = s02i + s13i;
                y2[0] = s02r - s13r; y2[1] = s02i - s13i;
                /* y1 = d02 - i*d13, y3 = d02 + i*d13 */
                y1[0] = d02r + d13i; y1[1] = d02i - d13r;
                y3[0] = d02r - d13i; y3[1] = d02i + d13r;
            }
        }
    }
}

/* real FFT of CRY_FE_NFFT samples via one CRY_FFT_N-point complex FFT + split
 * (z[n] = x[2n] + i x[2n+1]; X[k] = E[k] + W^k O[k], X[N-k] = conj(E[k] - W^k O[k])) */
static void rfft_packed(const float *frame, float *io)
{
    const int n = CRY_FFT_N;
    static fft_real buf[CRY_FE_NFFT];
    /* window in fft_real precision (double on the host, float32 with CRY_FE_HOST_FLOAT) */
    for (int i = 0; i < CRY_FE_WIN; i++) buf[i] = (fft_real)frame[i] * (fft_real)cry_fe_hann[i];
    for (int i = CRY_FE_WIN; i < CRY_FE_NFFT; i++) buf[i] = 0;
    cfft(buf);
    const fft_real r0 = buf[0], i0 = buf[1];
    buf[0] = r0 + i0; /* DC */
    buf[1] = r0 - i0; /* Nyquist */
    for (int k = 1; k <= n / 2; k++) {
        const int m = n - k;
        const fft_real ar = buf[2 * k], ai = buf[2 * k + 1];
        const fft_real br = buf[2 * m], bi = buf[2 * m + 1];
        const fft_real er = (fft_real)0.5 * (ar + br), ei = (fft_real)0.5 * (ai - bi);
        const fft_real orr = (fft_real)0.5 * (ai + bi), oi = (fft_real)-0.5 * (ar - br);
        const fft_real wr = tw_re[k], wi = tw_im[k];
        const fft_real tr = orr * wr - oi * wi, ti = orr * wi + oi * wr;
        buf[2 * k] = er + tr;
        buf[2 * k + 1] = ei + ti;
        if (m != k) {
            buf[2 * m] = er - tr;
            buf[2 * m + 1] = -(ei - ti);
        }
    }
    for (int i = 0; i < CRY_FE_NFFT; i++) io[i] = (float)buf[i];
}
#endif

int cry_fe_init(cry_fe_t *fe)
{
    cry_fe_reset(fe);
    /* esp-dsp's S3 FFT needs an aligned buffer (see cry_fe_t); a heap-allocated cry_fe_t may not be */
    if (((uintptr_t)fe->fft % 16u) != 0) return -2;
    return fft_init();
}

void cry_fe_reset(cry_fe_t *fe)
{
    fe->fill = 0;
    fe->ring_pos = 0;
    fe->frames_total = 0;
    memset(fe->ring, 0, sizeof(fe->ring));
}

void cry_fe_frame_logmel(cry_fe_t *fe, const float *frame, float *out)
{
    float *buf = fe->fft;
    rfft_packed(frame, buf); /* periodic Hann, zero-pad, packed real FFT */
    /* magnitude, in place: mag[k] for k = 0..NFFT/2 needs NFFT/2+1 slots; keep Nyquist aside */
    const float nyq = fabsf(buf[1]);
    float mag[CRY_FE_NBINS];
    mag[0] = fabsf(buf[0]);
    for (int k = 1; k < CRY_FFT_N; k++) {
        const float re = buf[2 * k], im = buf[2 * k + 1];
        mag[k] = sqrtf(re * re + im * im);
    }
    mag[CRY_FFT_N] = nyq;
    for (int b = 0; b < CRY_FE_NMEL; b++) {
        const float *w = cry_fe_mel_weights + cry_fe_mel_offset[b];
        const float *m = mag + cry_fe_mel_start[b];
        float acc = 0.0f;
        for (int j = 0; j < cry_fe_mel_len[b]; j++) acc += w[j] * m[j];
        out[b] = logf(acc + CRY_FE_LOG_OFFSET);
    }
}

size_t cry_fe_push(cry_fe_t *fe, const float *x, size_t n, int *patch_ready)
{
    size_t used = 0;
    *patch_ready = 0;
    while (used < n) {
        size_t take = (size_t)(CRY_FE_WIN - fe->fill);
        if (take > n - used) take = n - used;
        memcpy(fe->samples + fe->fill, x + used, take * sizeof(float));
        fe->fill += (int)take;
        used += take;
        if (fe->fill < CRY_FE_WIN) break;
        cry_fe_frame_logmel(fe, fe->samples, fe->ring[fe->ring_pos]);
        fe->ring_pos = (fe->ring_pos + 1) % CRY_PATCH_FRAMES;
        fe->frames_total++;
        memmove(fe->samples, fe->samples + CRY_FE_HOP, (CRY_FE_WIN - CRY_FE_HOP) * sizeof(float));
        fe->fill = CRY_FE_WIN - CRY_FE_HOP;
        if (fe->frames_total >= CRY_PATCH_FRAMES &&
            (fe->frames_total - CRY_PATCH_FRAMES) % CRY_PATCH_HOP == 0) {
            *patch_ready = 1;
            break;
        }
    }
    return used;
}

void cry_fe_get_patch(const cry_fe_t *fe, float *out)
{
    for (int f = 0; f < CRY_PATCH_FRAMES; f++) {
        const int row = (fe->ring_pos + f) % CRY_PATCH_FRAMES;
        memcpy(out + (size_t)f * CRY_FE_NMEL, fe->ring[row], CRY_FE_NMEL * sizeof(float));
    }
}

void cry_quantize_int8(const float *x, size_t n, float scale, int zero_point, int8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        /* rintf: round half to even in the default rounding mode, like numpy.round */
        float q = rintf(x[i] / scale) + (float)zero_point;
        if (q < -128.0f) q = -128.0f;
        if (q > 127.0f) q = 127.0f;
        out[i] = (int8_t)q;
    }
}

void cry_fe_get_patch_int8(const cry_fe_t *fe, float scale, int zero_point, int8_t *out)
{
    for (int f = 0; f < CRY_PATCH_FRAMES; f++) {
        const int row = (fe->ring_pos + f) % CRY_PATCH_FRAMES;
        cry_quantize_int8(fe->ring[row], CRY_FE_NMEL, scale, zero_point, out + (size_t)f * CRY_FE_NMEL);
    }
}
