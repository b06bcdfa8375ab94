/*
 * scalegate: command line, start-up, signals.
 *
 *   scalegate -c FILE        run
 *   scalegate -t -c FILE     check FILE and exit 0 (valid) or 1
 *
 * The main thread owns the control plane: it loads the config, starts the
 * worker threads (server/worker.c), and turns signals into actions:
 * SIGHUP reloads the config in place (an invalid one is logged and the
 * running one kept), SIGTERM/SIGINT stop gracefully within
 * limits.shutdown_timeout, SIGUSR1 is reserved for log reopening.
 */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "cache/cache.h"
#include "core/version.h"
#include "stats/accesslog.h"
#include "stats/stats.h"
#include "cache/cache_admin.h"
#include "cache/l2.h"
#include "redis/pubsub.h"
#include "admin/admin.h"
#include "admin/api.h"
#include "admin/dashboard.h"
#include "config/config.h"
#include "core/log.h"
#include "pool/health.h"
#include "pool/pool.h"
#include "ratelimit/limit.h"
#include "ratelimit/shared.h"
#include "ratelimit/shed.h"
#include "redis/redis.h"
#include "scale/scaler.h"
#include "server/server.h"

static uv_loop_t *loop;
static uv_signal_t sig_term, sig_int, sig_hup, sig_usr1;
static bool log_level_flag; /* -d or -q: the config's log.level does not apply */
static uv_timer_t shutdown_timer;
static const char *config_path;
static struct sg_config *running;      /* what the workers run: derived by the autoscaler */
static struct sg_redis_sub *cache_sub; /* cache invalidations from other gateways */
static int stopping;
static struct sg_scaler *scaler;
static struct sg_admin *admin;
static struct sg_redis *redis;
static uv_timer_t registry_timer; /* with redis: this gateway in the rate-limit registry */
static uv_timer_t shed_timer;     /* the pools' p95 for shed_p95 */

static void usage(FILE *f) {
    fprintf(f, "usage: scalegate [-t] -c FILE\n"
               "  -c FILE   configuration file (YAML)\n"
               "  -t        check the configuration and exit (0 valid, 1 invalid)\n"
               "  -d        debug logging\n"
               "  -q        log errors and warnings only\n"
               "  -v        print the version\n"
               "  -h        this help\n");
}

static void print_errors(struct sg_config_errors *errs) {
    for (size_t i = 0; i < errs->n; i++)
        fprintf(stderr, "%s\n", errs->msgs[i]);
}

/* The last step of a stop: what is left goes (a second signal gets here
 * without waiting for the instances). */
static void finish(void *arg) {
    (void)arg;
    static bool done;
    if (done)
        return;
    done = true;
    sg_scaler_free(scaler); /* SIGKILLs whatever instance is still running */
    scaler = NULL;
    sg_admin_close(admin);
    admin = NULL;
    if (redis) {
        uv_close((uv_handle_t *)&registry_timer, NULL);
        sg_redis_free(redis);
    }
    sg_redis_sub_free(cache_sub);
    cache_sub = NULL;
    redis = NULL;
    uv_close((uv_handle_t *)&sig_term, NULL);
    uv_close((uv_handle_t *)&sig_int, NULL);
    uv_close((uv_handle_t *)&sig_hup, NULL);
    uv_close((uv_handle_t *)&sig_usr1, NULL);
    uv_close((uv_handle_t *)&shutdown_timer, NULL);
    uv_close((uv_handle_t *)&shed_timer, NULL);
}

/* Every worker is done: the instances get SIGTERM and their stop_grace. */
static void on_all_done(void) {
    sg_health_stop();
    stopping = 2;
    if (scaler)
        sg_scaler_shutdown(scaler, finish, NULL);
    else
        finish(NULL);
}

static void on_shutdown_timeout(uv_timer_t *t) {
    (void)t;
    sg_log_warn("shutdown_timeout reached: closing the connections still open");
    sg_server_force();
}

static void on_stop_signal(uv_signal_t *s, int signum) {
    (void)s;
    if (stopping) {
        sg_log_warn("second %s: closing everything now", strsignal(signum));
        sg_server_force();
        if (stopping == 2)
            finish(NULL); /* the instances are being stopped: kill them now */
        return;
    }
    stopping = 1;
    sg_log_info("%s: no new connections; finishing requests in flight (at most %llu ms)",
                strsignal(signum), (unsigned long long)running->limits.shutdown_timeout_ms);
    sg_server_stop();
    uv_timer_start(&shutdown_timer, on_shutdown_timeout, running->limits.shutdown_timeout_ms, 0);
    uv_unref((uv_handle_t *)&shutdown_timer);
}

/* The autoscaler's instance lists changed: run cfg (a reference for us). */
static void on_publish(struct sg_config *cfg, void *arg) {
    (void)arg;
    if (stopping || sg_pool_prepare(cfg) != 0) {
        if (!stopping)
            sg_log_error("autoscaler: out of memory publishing instances");
        sg_config_unref(cfg);
        return;
    }
    struct sg_config *ref = sg_config_ref(cfg);
    if (sg_server_reload(cfg) == 0) {
        sg_config_unref(running);
        running = ref;
        sg_health_apply(loop, running);
    } else {
        sg_config_unref(ref);
    }
}

/* What changes only with a restart: said once per reload. */
static void warn_restart_only(const struct sg_config *old, const struct sg_config *cfg) {
    const struct sg_config *o = old->base ? old->base : old;
    if (o->admin.enabled != cfg->admin.enabled ||
        (cfg->admin.enabled && strcmp(o->admin.listen.text, cfg->admin.listen.text) != 0))
        sg_log_warn("reload: admin.listen changes take effect only after a restart");
    if (o->redis.enabled != cfg->redis.enabled ||
        (cfg->redis.enabled &&
         (strcmp(o->redis.host, cfg->redis.host) != 0 || o->redis.port != cfg->redis.port ||
          strcmp(o->redis.prefix, cfg->redis.prefix) != 0 ||
          o->redis.lease_ttl_ms != cfg->redis.lease_ttl_ms)))
        sg_log_warn("reload: redis changes (url, prefix, lease_ttl) take effect only after a "
                    "restart");
    if (o->limits.rate_limit_keys != cfg->limits.rate_limit_keys)
        sg_log_warn("reload: limits.rate_limit_keys takes effect only after a restart");
}

/* The rate-limit table, made when a config first has a rule. Returns 0 or -1. */
static int rate_limits_ready(const struct sg_config *cfg) {
    for (size_t i = 0; i < cfg->nroutes; i++) {
        if (cfg->routes[i].nrate_limits == 0)
            continue;
        if (sg_ratelimit_init(cfg->limits.rate_limit_keys) == 0)
            return 0;
        sg_log_error("cannot allocate the rate-limit table (%u keys)", cfg->limits.rate_limit_keys);
        return -1;
    }
    return 0;
}

/*
 * Loads the config file again and runs it: SIGHUP and POST /api/v1/reload
 * (admin/api.h). Returns 0 when the new config runs; -1 when the file is
 * invalid, with *errs_out filled if not NULL (the caller frees it); -2 when
 * it could not be applied (logged); -3 while stopping.
 */
static void apply_logs(const struct sg_config *cfg, bool reload);

static int reload_config(struct sg_config_errors *errs_out) {
    if (stopping)
        return -3;
    struct sg_config_errors errs = {0};
    struct sg_config *cfg = sg_config_load(config_path, &errs);
    if (!cfg) {
        for (size_t i = 0; i < errs.n; i++)
            sg_log_error("reload: %s", errs.msgs[i]);
        sg_log_error("reload failed: %s is invalid; keeping the running config", config_path);
        if (errs_out)
            *errs_out = errs;
        else
            sg_config_errors_free(&errs);
        return -1;
    }
    sg_config_errors_free(&errs);
    sg_stats_assign(cfg);
    warn_restart_only(running, cfg);
    if (rate_limits_ready(cfg) != 0) {
        sg_log_error("reload failed: out of memory; keeping the running config");
        sg_config_unref(cfg);
        return -2;
    }
    struct sg_config *loaded_before = sg_config_ref(running->base ? running->base : running);
    struct sg_config *run = sg_scaler_apply(scaler, cfg);
    sg_config_unref(cfg);
    if (run == NULL || sg_pool_prepare(run) != 0) {
        sg_log_error("reload failed: out of memory; keeping the running config");
        sg_config_unref(run);
        sg_config_unref(sg_scaler_apply(scaler, loaded_before));
        sg_config_unref(loaded_before);
        return -2;
    }
    int rc = 0;
    struct sg_config *ref = sg_config_ref(run);
    if (sg_server_reload(run) == 0) {
        sg_config_unref(running);
        running = ref;
        sg_health_apply(loop, running);
        if (admin) {
            sg_admin_set_token(admin, running->admin.token);
            sg_admin_set_public_metrics(admin, running->admin.public_metrics);
        }
        sg_cache_reconfigure(running);
        apply_logs(running, true);
        if (redis)
            sg_cache_admin_set_redis(redis, running->cache.l2_ttl_ms);
        sg_log_info("reloaded %s", config_path);
    } else {
        sg_config_unref(ref);
        sg_config_unref(sg_scaler_apply(scaler, loaded_before)); /* back to the old one */
        rc = -2;
    }
    sg_config_unref(loaded_before);
    return rc;
}

static void on_reload_signal(uv_signal_t *s, int signum) {
    (void)s;
    (void)signum;
    reload_config(NULL);
}

/* The admin API's pools, config and reload endpoints (admin/api.h). */
static struct sg_admin_api admin_api = {.running = &running, .reload = reload_config};

/* log.level and log.access of cfg (at a reload: the access log is opened
 * again, at its new path if it moved, or closed). */
static void apply_logs(const struct sg_config *cfg, bool reload) {
    if (!log_level_flag)
        sg_log_level = cfg->log_level >= 0 ? (enum sg_log_level)cfg->log_level : SG_LOG_INFO;
    if (!reload)
        return;
    int err = sg_alog_open(cfg->access_log);
    if (err < 0)
        sg_log_error("log.access %s: cannot open: %s; writing on to the old file", cfg->access_log,
                     strerror(-err));
}

/* SIGUSR1: the access log is opened again (after logrotate moved it). */
static void on_reopen_signal(uv_signal_t *s, int signum) {
    (void)s;
    (void)signum;
    if (running == NULL || running->access_log == NULL)
        return;
    int err = sg_alog_open(running->access_log);
    if (err < 0)
        sg_log_error("log.access %s: cannot reopen: %s; writing on to the old file",
                     running->access_log, strerror(-err));
    else
        sg_log_info("access log %s reopened", running->access_log);
}

static void on_shed(uv_timer_t *t) {
    (void)t;
    if (!stopping)
        sg_shed_tick(running);
}

static void on_registry(uv_timer_t *t) {
    (void)t;
    if (redis && sg_redis_connected(redis))
        sg_rl_shared_register(redis);
}

static void on_cache_message(void *arg, const char *data, size_t len) {
    (void)arg;
    sg_cache_on_message(data, len);
}

/* A gap in the subscription may have lost invalidations: the memory tier
 * is dropped when it starts again (not the first time: it was empty). */
static void on_cache_sub_state(void *arg, bool connected) {
    (void)arg;
    static bool was_up;
    if (connected && was_up) {
        sg_log_info("cache: invalidation channel back; the memory tier is dropped (messages "
                    "may have been missed)");
        sg_cache_purge_local('a', "", 0);
    }
    if (connected)
        was_up = true;
    sg_cache_admin_set_subscribed(connected);
}

static void scaler_metrics(void *arg, struct sg_text *out) {
    (void)arg;
    sg_scaler_prometheus(scaler, out);
}

/* GET /metrics: the Prometheus exposition (docs/metrics.md). */
static bool metrics_handler(void *arg, const struct sg_admin_request *req,
                            struct sg_admin_response *resp) {
    (void)arg;
    if (req->path_len != 8)
        return false; /* "/metricsX": not ours */
    if (req->method != SG_METHOD_GET && req->method != SG_METHOD_HEAD) {
        resp->status = 405;
        return true;
    }
    struct sg_text t = {0};
    struct sg_stats_scrape sc = {
        .cfg = running,
        .scaler = scaler_metrics,
        .redis_up = redis ? sg_redis_connected(redis) : -1,
    };
    sg_stats_render(&sc, &t);
    resp->text = sg_text_take(&t, &resp->text_len);
    resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
    return true;
}

/* The admin listener and the Redis link (start-up only). Returns 0 or -1. */
static int start_control(const struct sg_config *cfg) {
    if (cfg->redis.enabled) {
        redis = sg_redis_new(loop, cfg->redis.host, cfg->redis.port, cfg->redis.prefix);
        if (redis == NULL) {
            fprintf(stderr, "scalegate: cannot set up the redis link\n");
            return -1;
        }
        sg_scaler_set_redis(scaler, redis, cfg->redis.lease_ttl_ms);
        sg_cache_admin_set_redis(redis, cfg->cache.l2_ttl_ms);
        char channel[256];
        if (sg_cache_l2_channel(cfg->redis.prefix, channel, sizeof(channel)) > 0)
            cache_sub = sg_redis_sub_new(loop, cfg->redis.host, cfg->redis.port, channel,
                                         on_cache_message, on_cache_sub_state, NULL);
        if (cache_sub == NULL) {
            fprintf(stderr, "scalegate: cannot set up the cache invalidation channel\n");
            return -1;
        }
        uv_timer_init(loop, &registry_timer);
        uv_timer_start(&registry_timer, on_registry, 100, 1000);
        uv_unref((uv_handle_t *)&registry_timer);
    }
    if (cfg->admin.enabled) {
        int err = 0;
        admin = sg_admin_start(loop, (const struct sockaddr *)&cfg->admin.listen.addr,
                               cfg->admin.token, &err);
        if (admin == NULL) {
            fprintf(stderr, "scalegate: admin.listen %s: %s\n", cfg->admin.listen.text,
                    uv_strerror(err));
            return -1;
        }
        sg_admin_add_handler(admin, "/api/v1/scaling/", sg_scaler_admin, scaler);
        sg_admin_add_handler(admin, "/api/v1/cache/", sg_cache_admin, NULL);
        sg_admin_add_handler(admin, "/api/v1/pools", sg_admin_api, &admin_api);
        sg_admin_add_handler(admin, "/api/v1/config", sg_admin_api, &admin_api);
        sg_admin_add_handler(admin, "/api/v1/reload", sg_admin_api, &admin_api);
        sg_admin_add_handler(admin, "/metrics", metrics_handler, NULL);
        sg_admin_set_public_metrics(admin, cfg->admin.public_metrics);
        sg_admin_add_handler(admin, "/", sg_dashboard_admin, NULL); /* last */
        sg_log_info("admin API on %s (token from %s)", cfg->admin.listen.text,
                    cfg->admin.token_from ? cfg->admin.token_from : "?");
    }
    return 0;
}

int main(int argc, char **argv) {
    int check = 0, opt;
    while ((opt = getopt(argc, argv, "c:tdqvh")) != -1) {
        switch (opt) {
        case 'c':
            config_path = optarg;
            break;
        case 't':
            check = 1;
            break;
        case 'd':
            log_level_flag = true;
            sg_log_level = SG_LOG_DEBUG;
            break;
        case 'q':
            log_level_flag = true;
            sg_log_level = SG_LOG_WARN;
            break;
        case 'v':
            printf("scalegate %s\n", SG_VERSION);
            return 0;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (!config_path || optind != argc) {
        usage(stderr);
        return 2;
    }
    struct sg_config_errors errs = {0};
    running = sg_config_load(config_path, &errs);
    if (!running) {
        print_errors(&errs);
        sg_config_errors_free(&errs);
        if (check)
            fprintf(stderr, "%s: configuration is invalid\n", config_path);
        return 1;
    }
    sg_config_errors_free(&errs);
    if (check) {
        fprintf(stderr, "%s: ok\n", config_path);
        sg_config_unref(running);
        return 0;
    }
    sg_stats_assign(running);
    apply_logs(running, false);
    if (running->access_log) {
        int err = sg_alog_open(running->access_log);
        if (err < 0) {
            fprintf(stderr, "scalegate: log.access %s: %s\n", running->access_log, strerror(-err));
            sg_config_unref(running);
            return 1;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    loop = uv_default_loop();
    uv_signal_init(loop, &sig_term);
    uv_signal_init(loop, &sig_int);
    uv_signal_init(loop, &sig_hup);
    uv_signal_init(loop, &sig_usr1);
    uv_timer_init(loop, &shutdown_timer);
    scaler = sg_scaler_new(loop, on_publish, NULL);
    if (sg_cache_init(running) != 0) {
        fprintf(stderr, "scalegate: cannot allocate the cache\n");
        return 1;
    }
    if (scaler == NULL || rate_limits_ready(running) != 0 || start_control(running) != 0) {
        sg_config_unref(running);
        return 1;
    }
    struct sg_config *loaded = running;
    running = sg_scaler_apply(scaler, loaded); /* starts each scaled pool's minimum */
    sg_config_unref(loaded);
    if (running == NULL || sg_pool_prepare(running) != 0) {
        fprintf(stderr, "scalegate: out of memory\n");
        return 1;
    }
    if (sg_server_start(loop, running, on_all_done) != 0) {
        on_all_done();
        uv_run(loop, UV_RUN_DEFAULT);
        sg_config_unref(running);
        return 1;
    }
    sg_health_apply(loop, running);
    uv_timer_init(loop, &shed_timer);
    uv_timer_start(&shed_timer, on_shed, SG_SHED_TICK_MS, SG_SHED_TICK_MS);
    uv_unref((uv_handle_t *)&shed_timer);
    uv_signal_start(&sig_term, on_stop_signal, SIGTERM);
    uv_signal_start(&sig_int, on_stop_signal, SIGINT);
    uv_signal_start(&sig_hup, on_reload_signal, SIGHUP);
    uv_signal_start(&sig_usr1, on_reopen_signal, SIGUSR1);
    uv_run(loop, UV_RUN_DEFAULT);
    sg_server_cleanup();
    sg_alog_cleanup();
    uv_run(loop, UV_RUN_DEFAULT); /* close callbacks */
    sg_config_unref(running);
    sg_ratelimit_cleanup();
    sg_cache_shutdown();
    sg_stats_cleanup();
    uv_loop_close(loop);
    sg_log_info("stopped");
    return 0;
}
