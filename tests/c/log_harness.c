/* Host harness for main/cry_log.c: prints the records the firmware would print for a few
 * representative values (cryblock tests/test_deploy_c.py parses them with logformat.parse_line). */
#include <stdio.h>
#include <stdlib.h>

#include "cry_log.h"

int main(int argc, char **argv)
{
    char line[CRY_LOG_MAX_LINE];
    const double score = argc > 1 ? atof(argv[1]) : 0.8125;
    if (cry_log_format(line, sizeof line, "BOOT", "model_bytes=%u arena_bytes=%u arena_used=%u ops=%s sr=%d threshold=%.4f vote=%d/%d hold_ms=%u fw=%s",
                       8288u, 115616u, 52000u, "CONV_2D,DEPTHWISE_CONV_2D,SOFTMAX", 16000, 0.5, 2, 3, 2000u, "cryblock-0.1.0") < 0) return 1;
    puts(line);
    if (cry_log_format(line, sizeof line, "INF", "t_ms=%lld seq=%u fe_us=%lld inv_us=%lld score=%.4f pos=%d votes=%d det=%d",
                       123456LL, 7u, 2100LL, 31000LL, score, 1, 2, 1) < 0) return 1;
    puts(line);
    if (cry_log_format(line, sizeof line, "EVT", "t_ms=%lld state=%s score=%.4f", 123456LL, "ON", score) < 0) return 1;
    puts(line);
    if (cry_log_format(line, sizeof line, "CFG", "threshold=%.4f vote=%d/%d hold_ms=%u", 0.6, 2, 3, 2000u) < 0) return 1;
    puts(line);
    if (cry_log_format(line, sizeof line, "ERR", "code=%s msg=%s", "bad_command", "a*b") < 0) return 1;
    puts(line);
    /* too long for the buffer -> -1, never a truncated line */
    char small[24];
    printf("%d\n", cry_log_format(small, sizeof small, "INF", "t_ms=%d seq=%d", 123456, 7));
    return 0;
}
