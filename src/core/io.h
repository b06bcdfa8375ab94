/*
 * Writing to a libuv stream the cheap way: uv_try_write first, and only what
 * the kernel did not take is queued with uv_write. The queued write then
 * owns the buffers it references (up to two struct sg_buf), which it puts
 * back when it completes, so the writer can move on at once.
 */
#ifndef SG_CORE_IO_H
#define SG_CORE_IO_H

#include <uv.h>

#include "core/buf.h"

/* Called when a queued write finished (status 0) or failed (<0, including
 * UV_ECANCELED when the stream was closed). */
typedef void (*sg_io_done_cb)(void *arg, int status);

/*
 * Writes bufs[0..n) to s. Returns 0 when everything was written now (the
 * caller keeps own0/own1 and cb is not called), 1 when the rest was queued
 * (own0/own1, which may be NULL, now belong to the write and cb(arg, status)
 * follows), or a negative libuv error (nothing queued, caller keeps all).
 */
int sg_io_write(uv_stream_t *s, const uv_buf_t *bufs, unsigned n, struct sg_buf *own0,
                struct sg_buf *own1, sg_io_done_cb cb, void *arg);

#endif
