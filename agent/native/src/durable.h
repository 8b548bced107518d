// One spool commit as one thread-pool job: write buffers at an offset, then fdatasync.
#pragma once
#include <node_api.h>

// JS: writeDurable(fd: number, buffers: Buffer[], position: number,
//                  done: (err: Error | null) => void): void
// Writes every byte of `buffers` at `position` (pwritev, retried until all is written), then
// fdatasync(fd), on a libuv pool thread. `done` gets null, or an Error whose code is the errno name
// and whose syscall says which call failed. The buffers are held until `done` runs and must not be
// changed meanwhile; the caller keeps fd open until then.
napi_value write_durable_js(napi_env env, napi_callback_info info);
