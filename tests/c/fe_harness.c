/* Host harness for main/frontend.c (cryblock tests/test_deploy_c.py).
 *   fe_harness patches <in.f32> <out.f32> <chunk>          stream samples in chunks, write every patch
 *   fe_harness patches_q <in.f32> <out.i8> <chunk> <scale> <zp>   same, patches quantised to int8
 *   fe_harness quant <in.f32> <out.i8> <scale> <zp>         cry_quantize_int8 over the whole file
 * Files are raw little-endian float32 / int8. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "frontend.h"

static float *read_f32(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(3); }
    fseek(f, 0, SEEK_END);
    long bytes = ftell(f);
    fseek(f, 0, SEEK_SET);
    *n = (size_t)bytes / sizeof(float);
    float *x = malloc(*n * sizeof(float) + 1);
    if (fread(x, sizeof(float), *n, f) != *n) { perror("read"); exit(3); }
    fclose(f);
    return x;
}

int main(int argc, char **argv)
{
    if (argc < 4) { fprintf(stderr, "usage: see source\n"); return 2; }
    size_t n;
    float *x = read_f32(argv[2], &n);
    FILE *out = fopen(argv[3], "wb");
    if (!out) { perror(argv[3]); return 3; }
    if (strcmp(argv[1], "quant") == 0 && argc == 6) {
        int8_t *q = malloc(n + 1);
        cry_quantize_int8(x, n, strtof(argv[4], NULL), atoi(argv[5]), q);
        fwrite(q, 1, n, out);
        fclose(out);
        return 0;
    }
    const int quant = strcmp(argv[1], "patches_q") == 0;
    if (!(strcmp(argv[1], "patches") == 0 && argc == 5) && !(quant && argc == 7)) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    const size_t chunk = (size_t)atol(argv[4]);
    static cry_fe_t fe;
    if (cry_fe_init(&fe) != 0) return 4;
    static float patch[CRY_PATCH_FRAMES * CRY_FE_NMEL];
    static int8_t qpatch[CRY_PATCH_FRAMES * CRY_FE_NMEL];
    size_t pos = 0;
    long patches = 0;
    while (pos < n) {
        size_t want = n - pos < chunk ? n - pos : chunk;
        size_t off = 0;
        while (off < want) {
            int ready = 0;
            off += cry_fe_push(&fe, x + pos + off, want - off, &ready);
            if (ready) {
                if (quant) {
                    cry_fe_get_patch_int8(&fe, strtof(argv[5], NULL), atoi(argv[6]), qpatch);
                    fwrite(qpatch, 1, sizeof(qpatch), out);
                } else {
                    cry_fe_get_patch(&fe, patch);
                    fwrite(patch, sizeof(float), CRY_PATCH_FRAMES * CRY_FE_NMEL, out);
                }
                patches++;
            }
        }
        pos += want;
    }
    fclose(out);
    printf("%ld\n", patches);
    free(x);
    return 0;
}
