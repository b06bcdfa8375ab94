/*
 * The error log: one line per event on stderr, with a UTC timestamp and a
 * level. The level is checked before anything is formatted, so a debug line
 * on the request path costs a compare when debug is off. Lines are written
 * with one write(2) each, so threads never interleave within a line.
 */
#ifndef SG_CORE_LOG_H
#define SG_CORE_LOG_H

enum sg_log_level { SG_LOG_ERROR = 0, SG_LOG_WARN, SG_LOG_INFO, SG_LOG_DEBUG };

extern int sg_log_level;

void sg_log_write(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define sg_log(level, ...)                                                                         \
    do {                                                                                           \
        if ((level) <= sg_log_level)                                                               \
            sg_log_write((level), __VA_ARGS__);                                                    \
    } while (0)

#define sg_log_error(...) sg_log(SG_LOG_ERROR, __VA_ARGS__)
#define sg_log_warn(...)  sg_log(SG_LOG_WARN, __VA_ARGS__)
#define sg_log_info(...)  sg_log(SG_LOG_INFO, __VA_ARGS__)
#define sg_log_debug(...) sg_log(SG_LOG_DEBUG, __VA_ARGS__)

#endif
