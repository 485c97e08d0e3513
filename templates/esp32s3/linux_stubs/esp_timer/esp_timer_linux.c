/* esp_timer_get_time() for ESP-IDF's linux target: microseconds since the first call (on the chip:
 * since boot), from CLOCK_MONOTONIC. */
#include <stdint.h>
#include <time.h>

#include "esp_timer.h"

int64_t esp_timer_get_time(void)
{
    static int64_t t0 = -1;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const int64_t now = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    if (t0 < 0) t0 = now;
    return now - t0;
}
