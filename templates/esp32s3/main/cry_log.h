/*
 * cry_log.h -- formatter for the versioned serial log format CRYB/1 (cryblock/logformat.py):
 *   CRYB/1 <KIND> key=value key=value ... *CC
 * CC = two upper-case hex digits, XOR of every byte before the " *". Values contain no spaces;
 * floats are written with 4 decimals ("%.4f"), like the Python formatter.
 * Plain C99, host-testable.
 */
#ifndef CRY_LOG_H
#define CRY_LOG_H

#include <stdarg.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CRY_LOG_MAGIC "CRYB/1"
#define CRY_LOG_MAX_LINE 384

/* XOR checksum of s[0..n). */
unsigned cry_log_checksum(const char *s, size_t n);

/* Format one record into buf (no newline). `fields_fmt` is a printf format producing
 * "k=v k=v ...". Returns the line length, or -1 if it does not fit. */
int cry_log_format(char *buf, size_t cap, const char *kind, const char *fields_fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 5)))
#endif
    ;
int cry_log_vformat(char *buf, size_t cap, const char *kind, const char *fields_fmt, va_list ap)
#if defined(__GNUC__)
    __attribute__((format(printf, 4, 0)))
#endif
    ;

#ifdef __cplusplus
}
#endif

#endif /* CRY_LOG_H */
