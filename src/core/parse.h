/*
 * Parsers for the value syntaxes of the config file: durations ("250ms",
 * "10s", "5m", "1h", "2d"; a bare number is seconds), sizes ("512", "16k",
 * "16KB", "100MB", "1g"; powers of 1024) and addresses ("host:port",
 * "[v6]:port", ":port", "port").
 */
#ifndef SG_CORE_PARSE_H
#define SG_CORE_PARSE_H

#include <stdint.h>
#include <sys/socket.h>

/* Each returns 0 or -EINVAL; *out untouched on error. */
int sg_parse_duration_ms(const char *s, uint64_t *out);
int sg_parse_size(const char *s, uint64_t *out);
/* Numeric hosts only (IPv4, IPv6) plus "localhost" (-> 127.0.0.1);
 * an empty host (":8080" or "8080") means 0.0.0.0. */
int sg_parse_addr(const char *s, struct sockaddr_storage *out, socklen_t *outlen);

#endif
