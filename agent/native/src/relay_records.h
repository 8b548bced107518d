// The records the relay thread hands to JavaScript (relay.cc writes them, agent/native/relay.ts
// reads them, relay_events.cc seals some of them into the spool without the handler). One header
// so that the three agree on one layout; native byte order, since both ends are this process.
#pragma once
#include <stdint.h>

namespace relay_records {

enum RecordKind : uint8_t {
  kReplay = 1,  // bytes the relay forwarded: whole messages, in order
  kLive = 2,    // bytes the relay did not forward: the handler decides, then resumes that side
  kEnd = 3,     // that side's socket ended (bytes: an error text, empty for an orderly end)
  kClosed = 4,  // the session's sockets are closed and it is forgotten (after relayClose)
  kSkip = 5,    // the relay forwarded this many bytes (u32) of messages the handler only counts
  kAudited = 6,  // a simple query and its whole plain answer, summarised (see Held in relay.cc)
  kEvent = 7,    // the same, audited here: see EventHead, then the Statement field (statement_event.h)
};
enum Side : uint8_t { kClient = 0, kServer = 1 };

// What else a kEvent record tells the handler, which never saw the request's messages.
// kPortalEnded: the statement was an execution of the unnamed portal in a transaction that ended
// with it (ReadyForQuery 'I'), so the server has no such portal any more: the handler forgets the
// one it knew. Otherwise an execution's record carries its Bind, which the handler keeps as the
// unnamed portal (a later Execute of it without a Bind is audited with those values).
// kParsedUnnamed: the run began with a Parse of the unnamed statement, which is now the one whose
// executions have the record's template (the handler made it for that statement).
enum EventFlags : uint32_t { kPortalEnded = 1, kParsedUnnamed = 2 };

// kEvent payload: this head, the Bind's body (bind_len bytes: an execution in a transaction still
// open), the Statement field. agent/pg/handler.ts onRelayEvent reads it.
struct EventHead {
  uint32_t up, down;  // bytes relayed each way
  uint32_t flags;     // EventFlags
  uint32_t tmpl;      // the template the statement was written with
  uint32_t bind_len;
};
static_assert(sizeof(EventHead) == 20, "kEvent layout is shared with agent/pg/handler.ts");

// 24 bytes, so the f64 stays aligned.
struct RecordHeader {
  uint32_t id;
  uint8_t kind;
  uint8_t side;
  uint16_t reserved;
  uint32_t epoch;
  uint32_t len;
  double ms;  // CLOCK_MONOTONIC in milliseconds: the clock behind process.hrtime()
};
static_assert(sizeof(RecordHeader) == 24, "record header layout is shared with agent/native/relay.ts");

}  // namespace relay_records
