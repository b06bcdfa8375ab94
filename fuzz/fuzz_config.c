/*
 * libFuzzer harness for the config loader: arbitrary bytes through libyaml
 * and the schema walk of src/config/. Whatever comes back (a snapshot or the
 * error list) is freed, so LeakSanitizer checks ownership on every input.
 * A loaded snapshot is also routed against once, to exercise the lookup on
 * whatever routes the input produced.
 */
#include "config/config.h"

#include <stddef.h>
#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct sg_config_errors errs;
    struct sg_config *c = sg_config_load_string("fuzz.yaml", (const char *)data, size, &errs);
    if (c) {
        /* a snapshot has at least one listener, pool, server and route */
        if (c->nlisten == 0 || c->npools == 0 || c->nroutes == 0 || c->listen[0].text == NULL)
            __builtin_trap();
        for (size_t i = 0; i < c->npools; i++)
            if (c->pools[i].nservers == 0 || c->pools[i].servers[0].text == NULL)
                __builtin_trap();
        for (size_t i = 0; i < c->nroutes; i++)
            if (c->routes[i].pool == NULL)
                __builtin_trap();
        const char *host = "a.example.com:80";
        sg_config_route(c, host, strlen(host), "/api/x", 6, 1);
        sg_config_unref(c);
    } else if (errs.n == 0) {
        __builtin_trap(); /* a rejected config must say why */
    }
    sg_config_errors_free(&errs);
    return 0;
}
