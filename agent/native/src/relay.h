// The native PostgreSQL data path: one thread that owns the sockets of sessions the JavaScript
// handler has authenticated and relays their messages itself, so that the steady state of a session
// (statements the policy already allowed, their results) costs no JavaScript on the latency path.
//
// The JavaScript handler stays the one place where protocol semantics live. Everything the native
// side relays is also handed to JavaScript afterwards, in batches ("replay" records), and the handler
// runs over it exactly as if it had relayed it itself: statements are classified, decided and
// audited there, with the times the native side saw them. A message the native side cannot vouch
// for (a statement whose shape it has not seen allowed, anything it fails to check, every result of
// a statement whose rows are masked) goes to JavaScript first ("live" records) and that side of the
// session waits until the handler answers with what to write and whether to remember the decision.
// One shortcut: a request on remembered decisions whose whole answer is one plain result is handed
// over as a summary ("audited": the request and the command tag), which the handler audits without
// re-reading every message of the answer. For a simple query the summary also names the audit
// template the handler attached to the remembered decision and the statement text's byte span, so
// that the handler need not classify the text again either.
#pragma once
#include <node_api.h>

// JS: relayStart(onBatch(buf), maxMessageLength, replayDelayMs, threads, batchSends): `threads`
// relay threads (1-64), each with its own epoll and sessions; a new session goes to the one with the
// fewest. batchSends: each loop turn's requests to servers go out in one io_uring call where the
// kernel allows (send_batch.h), answers to clients as they are read; otherwise, or false, one
// send(2) each as soon as there is something to send.
napi_value relay_start_js(napi_env env, napi_callback_info info);
// JS: relayAdopt(id, clientFd, serverFd, precheck | null): the relay takes duplicates of both
// descriptors; `precheck` is the session redactor's, packed (statement_event.h), null for none.
napi_value relay_adopt_js(napi_env env, napi_callback_info info);
// JS: relayWrite(id, serverLive, toServer | null, toClient | null)
napi_value relay_write_js(napi_env env, napi_callback_info info);
// JS: relayResume(id, side, cache, allowName, serverLive, tag, plainResult, template, templatePieces,
// toServer, toClient): a live record of `side` is answered; a new template comes with its pieces
// (statement_event.h StatementPieces, packed), or null.
napi_value relay_resume_js(napi_env env, napi_callback_info info);
// JS: relayClose(id): writes what is queued (for up to a second), then closes both sockets.
napi_value relay_close_js(napi_env env, napi_callback_info info);
// JS: relayForget(): every session forgets the decisions it remembered (the policy changed).
napi_value relay_forget_js(napi_env env, napi_callback_info info);
// JS: relayStats() => { threads, batchedThreads (those sending through io_uring), batchedTurns,
// batchedSends, largestTurn (the most sends in one turn), singleSends (turns of one send, which go
// through send(2)) }.
napi_value relay_stats_js(napi_env env, napi_callback_info info);
// Test hook, JS: sendBatch(fds, buffers, useRing) => { batched, results }: one SendBatch run, each
// result as send(2) would give it (bytes, or -errno).
napi_value send_batch_js(napi_env env, napi_callback_info info);
// JS: relayPinOthers() => cpu: keeps every thread of the process but the relay threads (the audit
// side) on the highest cpu this thread may use, and returns it; -1 (nothing pinned) with fewer than
// two cpus.
napi_value relay_pin_others_js(napi_env env, napi_callback_info info);
