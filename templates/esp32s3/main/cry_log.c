/* cry_log.c -- see cry_log.h */
#include "cry_log.h"

#include <stdio.h>
#include <string.h>

unsigned cry_log_checksum(const char *s, size_t n)
{
    unsigned c = 0;
    for (size_t i = 0; i < n; i++) c ^= (unsigned char)s[i];
    return c & 0xFFu;
}

int cry_log_vformat(char *buf, size_t cap, const char *kind, const char *fields_fmt, va_list ap)
{
    int n = snprintf(buf, cap, "%s %s", CRY_LOG_MAGIC, kind);
    if (n < 0 || (size_t)n >= cap) return -1;
    if (fields_fmt && fields_fmt[0]) {
        if ((size_t)n + 1 >= cap) return -1;
        buf[n++] = ' ';
        int m = vsnprintf(buf + n, cap - (size_t)n, fields_fmt, ap);
        if (m < 0 || (size_t)(n + m) >= cap) return -1;
        n += m;
    }
    /* values must not contain spaces or '*': replace them so the line stays parseable */
    for (int i = (int)strlen(CRY_LOG_MAGIC) + 1; i < n; i++) {
        if (buf[i] == '*') buf[i] = '_';
    }
    const unsigned cc = cry_log_checksum(buf, (size_t)n);
    int m = snprintf(buf + n, cap - (size_t)n, " *%02X", cc);
    if (m < 0 || (size_t)(n + m) >= cap) return -1;
    return n + m;
}

int cry_log_format(char *buf, size_t cap, const char *kind, const char *fields_fmt, ...)
{
    va_list ap;
    va_start(ap, fields_fmt);
    int r = cry_log_vformat(buf, cap, kind, fields_fmt, ap);
    va_end(ap);
    return r;
}
