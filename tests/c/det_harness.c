/* Host harness for main/postproc.c (cryblock tests/test_deploy_c.py).
 *   det_harness run <scores.f32> <threshold> <N> <M> <hold_ms> <hop_ms>
 *       prints "pos votes det changed" per score (patch i at t = i*hop_ms)
 *   det_harness cmd <N> <M> "<line>" ...
 *       applies each command line, printing "rc threshold N M hold_ms err" after each */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "postproc.h"

int main(int argc, char **argv)
{
    if (argc >= 8 && strcmp(argv[1], "run") == 0) {
        FILE *f = fopen(argv[2], "rb");
        if (!f) { perror(argv[2]); return 3; }
        cry_det_cfg_t c = {strtof(argv[3], NULL), atoi(argv[4]), atoi(argv[5]), (uint32_t)atol(argv[6])};
        const long hop = atol(argv[7]);
        cry_det_t d;
        if (cry_det_init(&d, &c) != 0) { fprintf(stderr, "bad config\n"); return 2; }
        float s;
        long i = 0;
        while (fread(&s, sizeof(float), 1, f) == 1) {
            cry_det_out_t o = cry_det_update(&d, s, (int64_t)i * hop);
            printf("%d %d %d %d\n", o.pos, o.votes, o.det, o.changed);
            i++;
        }
        fclose(f);
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "cmd") == 0) {
        cry_det_cfg_t c = {0.5f, atoi(argv[2]), atoi(argv[3]), 2000};
        cry_det_t d;
        if (cry_det_init(&d, &c) != 0) return 2;
        for (int k = 4; k < argc; k++) {
            char err[64] = "-";
            int rc = cry_det_command(&d, argv[k], err, sizeof(err));
            printf("%d %.4f %d %d %u %s\n", rc, (double)d.cfg.threshold, d.cfg.vote_n, d.cfg.vote_m,
                   (unsigned)d.cfg.hold_ms, err);
        }
        return 0;
    }
    fprintf(stderr, "usage: see source\n");
    return 2;
}
