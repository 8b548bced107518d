// The relay's own STATEMENT events, sealed straight into the spool. For a kEvent record that needs
// nothing from the handler (no Bind to keep as a portal, no unnamed statement to re-point, see
// relay_records.h EventFlags), the handler would only number it, wrap the Statement field in the
// session's envelope (proto/session-events.ts SessionEventEncoder) and hand it to the spool, which
// frames it, chains its hash and copies it into its slab (agent/events/spool.ts append). Here a run
// of such records becomes spool records in one call on the JavaScript thread, byte for byte what
// that path writes (test/unit/relay-events.test.ts compares the two); everything else in the batch
// is left to the handler, which the call hands back to at the first record it does not take.
#pragma once
#include <node_api.h>

// What the handler and this file both keep count of, in a Float64Array the handler allocates per
// session (agent/native/relay.ts newEventTally): the handler reads and bumps the same slots on its own
// path, so request ids stay one sequence whichever side numbers a statement. Only the JavaScript
// thread touches it.
enum TallySlot {
  kTallyRequestSeq = 0,
  kTallyBytesUp = 1,
  kTallyBytesDown = 2,
  kTallySummarised = 3,  // statements the relay summarised (handler.ts auditedByRelay)
  kTallyEncoded = 4,     // of those, the ones whose Statement field it encoded
  kTallyUnnamedPortal = 5,  // 1 while the handler keeps an unnamed portal (a kPortalEnded record must clear it)
  kTallySlots = 6,
};

// JS: relayEventsRegister(id, sink, sessionIdField: Uint8Array, identityFields: Uint8Array, tally:
// Float64Array): the session's spool (a number: relay.ts EventSealer.sink) and fixed envelope
// pieces (SessionEventEncoder), kept until relayEventsForget(id).
napi_value relay_events_register_js(napi_env env, napi_callback_info info);
// JS: relayEventsForget(id): its records go to the handler again (it is closing or closed).
napi_value relay_events_forget_js(napi_env env, napi_callback_info info);
// JS: relayEventsSeal(sink, batch, offset, slab, pos, room, maxEventBytes, chainHash, agentIdField,
// seq, timeMs, kind, out: Float64Array): seals kEvent records (and counts kSkip ones) of sessions
// registered with `sink` from batch[offset], as records of seq, seq + 1, ... into slab[pos, pos + room), chaining
// from and updating chainHash; stops at the first record it leaves to the handler or that does not
// fit. out[0] = the batch offset it stopped at, out[1] = records written, out[2] = the slab position after,
// out[3] = the framed size of the record it stopped at if only room was lacking (else 0).
napi_value relay_events_seal_js(napi_env env, napi_callback_info info);
