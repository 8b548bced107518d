// The native PostgreSQL data path (see relay.h for what it is for and how it divides the work with
// the JavaScript handler). A few epoll threads (Relay), each owning its sessions: a session's state
// is touched by its thread only. JavaScript talks to each through a command queue (mutex + eventfd)
// and hears back through one thread-safe function that delivers every thread's records in batches.
#include "relay.h"
#include "send_batch.h"

#include <errno.h>
#include <pthread.h>
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "pgmsg.h"
#include "relay_records.h"
#include "shape.h"
#include "statement_event.h"

namespace {

// ---- records to JavaScript -----------------------------------------------------------------------

using namespace relay_records;

// Messages the handler relays unread once a session is authenticated (handler.ts onClientFrame and
// onServerFrame: the default branches, and DataRows it would pass unchanged, which are the only
// ones the relay forwards itself): it is told only how many bytes went by.
bool only_counted(Side side, uint8_t type) {
  if (side == kClient) return type == 'D' || type == 'H' || type == 'd' || type == 'c' || type == 'f' || type == 'p';
  switch (type) {
    case 'D': case '1': case '2': case '3': case 'n': case 't': case 'S': case 'N': case 'A':
    case 'd': case 'c': case 'G': case 'H': case 'W': case 'V': case 'v':
      return true;
    default:
      return false;
  }
}

// Decisions the handler said may be remembered (see cache kinds in relay.ts).
enum CacheKind : int { kCacheNone = 0, kCacheExact = 1, kCacheShape = 2 };

// A statement's mask tag: 0 when its rows come back as they are, else the handler's id for the mask
// spec (tag >> 2) and the detectors a value may hit (kHitAt, kHitDigits: see row_cannot_hit). Only
// specs whose effect on a result the relay can rule out get a tag; the handler sees all others live.
constexpr uint32_t kHitAt = 1, kHitDigits = 2;
// A unit with statements of two different specs: every server message goes to the handler first.
constexpr uint32_t kOpaque = UINT32_MAX;

// agent/redact/detectors.ts rowCannotHit, byte for byte: a DataRow body without a '@' cannot hold
// an email address, one with fewer than 13 ASCII digits (length words included) no card number.
bool row_cannot_hit(uint32_t flags, const uint8_t* p, size_t n) {
  size_t digits = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t b = p[i];
    if (b == 0x40 && (flags & kHitAt)) return false;
    if (b >= 0x30 && b <= 0x39 && ++digits > 12 && (flags & kHitDigits)) return false;
  }
  return true;
}

// Per-session bounds: a session cycling through endless distinct statements forgets and asks again.
constexpr size_t kMaxRemembered = 4096;
// Texts longer than this are never remembered (as classify.ts's MAX_CACHED_TEXT).
constexpr size_t kMaxRememberedText = 16 * 1024;
// Stop reading a side while this much is queued for its peer: backpressure instead of buffering.
constexpr size_t kHighWater = 4 * 1024 * 1024;
// Stop reading every socket while this much of what was forwarded waits for JavaScript: the audit
// keeps up with the relay or the relay slows down, and memory stays bounded.
constexpr size_t kMaxBacklog = 64 * 1024 * 1024;
// A batch vector of more than this (a backlog's) is freed once delivered rather than kept for reuse.
constexpr size_t kKeptBatchBytes = 4 * 1024 * 1024;
constexpr size_t kReadChunk = 64 * 1024;
// A loop turn's requests to servers go out in one batch (SendBatch, defer_flush) unless this much is
// already queued for a socket: bulk data (COPY) is sent as it is read, as before.
constexpr size_t kEagerFlush = kReadChunk;
constexpr double kCloseGraceMs = 1000;
// A run of messages the handler only counts is sent to it as a count from this size on.
constexpr size_t kMinSkip = 4096;
constexpr uint32_t kMaxRelayThreads = 64;

double now_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

uint32_t be32(const uint8_t* p) { return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]; }

// ---- framing -------------------------------------------------------------------------------------
// The same per-type length bounds as agent/pg/frames.ts: a message the relay frames is one the
// JavaScript FrameReader frames too. -1: not a message type in that direction.

struct Limits {
  int32_t min[256];
  uint32_t max[256];
};

constexpr uint32_t kAny = 0x7fffffff;

Limits make_limits(std::initializer_list<std::tuple<char, int32_t, uint32_t>> entries) {
  Limits l;
  for (int i = 0; i < 256; i++) l.min[i] = -1, l.max[i] = 0;
  for (auto& [t, lo, hi] : entries) l.min[(uint8_t)t] = lo, l.max[(uint8_t)t] = hi;
  return l;
}

const Limits kFrontend = make_limits({{'Q', 4, kAny}, {'P', 4, kAny}, {'B', 4, kAny}, {'D', 4, kAny}, {'E', 4, kAny},
                                      {'S', 4, 4}, {'H', 4, 4}, {'C', 4, kAny}, {'d', 4, kAny}, {'c', 4, 4},
                                      {'f', 4, kAny}, {'X', 4, 4}, {'F', 4, kAny}, {'p', 4, kAny}});
const Limits kBackend = make_limits({{'R', 8, kAny}, {'K', 12, 264}, {'S', 4, kAny}, {'Z', 5, 5}, {'T', 4, kAny},
                                     {'D', 4, kAny}, {'C', 4, kAny}, {'E', 4, kAny}, {'N', 4, kAny}, {'A', 4, kAny},
                                     {'G', 4, kAny}, {'H', 4, kAny}, {'W', 4, kAny}, {'d', 4, kAny}, {'c', 4, 4},
                                     {'1', 4, 4}, {'2', 4, 4}, {'3', 4, 4}, {'n', 4, 4}, {'s', 4, 4},
                                     {'t', 4, kAny}, {'I', 4, 4}, {'V', 4, kAny}, {'v', 4, kAny}});

// ---- sessions ------------------------------------------------------------------------------------

struct Peer {
  int fd = -1;
  // Read and not yet handled: in[0, in_len). Grown, never shrunk or zero-filled per read.
  std::vector<uint8_t> in;
  size_t in_len = 0;
  std::vector<uint8_t> out;  // to be written to this socket
  size_t out_off = 0;
  bool eof = false;       // this socket's read side ended (reported with kEnd)
  bool failed = false;    // a write or read failed (reported with kEnd)
  bool waiting = false;   // a kLive record of this side's input awaits the handler's answer
  bool broken = false;    // framing failed: the rest went to the handler, which ends the session
  bool deferred = false;  // in this loop turn's send batch (Relay::defer_flush)
  bool blocked = false;   // the last send found no room: wait for EPOLLOUT rather than try again
  uint32_t registered = 0;  // the epoll events currently asked for
  size_t pending() const { return out.size() - out_off; }
};

struct Session {
  uint32_t id = 0;
  Peer peer[2];
  bool server_live = false;  // every server message goes to the handler first (masked results)
  bool closing = false;
  double close_deadline = 0;
  // Decisions the handler let the relay repeat, with their mask tags and audit templates: 'Q'/'P' +
  // 'S' + shape, or + 'X' + exact text.
  struct Remembered {
    uint32_t tag;
    uint32_t tmpl;  // the handler's audit template for a Q's statement or a Parse's executions (0: none; see remembered())
  };
  std::unordered_map<std::string, Remembered> allowed;
  // Prepared statements and portals whose statement the relay may execute, with its mask tag; a
  // statement also with the audit template of its executions (0: none), which the handler sends
  // with its answer to the Parse (relayResume) and which a Parse the relay repeats has only when
  // remembered by its exact text: the template holds the text.
  struct Statement {
    uint32_t tag;
    uint32_t tmpl;
  };
  std::unordered_map<std::string, Statement> statements;
  std::unordered_map<std::string, uint32_t> portals;
  // What the server is answering, in order: one mask tag per simple query, function call or
  // extended-protocol run up to its Sync; ReadyForQuery ends the oldest. `open` is the run not yet
  // closed by a Sync (its rows may come before it, after a Flush).
  std::deque<uint32_t> units;
  uint32_t open = 0;
  // RowDescriptions the handler found no column masked in, per mask spec: (spec << 32 bytes) key.
  std::unordered_set<std::string> plain_results;
  // The client message waiting in a kLive record: what to remember if the handler says so.
  uint8_t live_type = 0;
  std::string live_shape_key, live_exact_key, live_name, live_portal;
  bool live_has_shape = false;
  // The server message waiting alone in a kLive record, when it is a RowDescription.
  std::string live_result;
  // The current result's RowDescription went to the handler, which did not say it masks nothing:
  // its rows go to the handler too, until the result ends.
  bool masked_result = false;
  // The last Q, Parse or Bind relayed on a remembered decision found nothing outstanding on the
  // server side.
  bool alone = false;
  bool to_settle = false;  // in the loop turn's list of sessions to settle
  // The last Q or Parse relayed on a remembered decision: that decision's template (see
  // remembered()), and a Q's statement's text.
  uint32_t hit_tmpl = 0;
  PgSpan q_text;
  // The handler's audit templates (relayResume), by id, and its redactors' pre-checks (relayAdopt):
  // with both, a summarised simple query becomes a kEvent record instead of a kAudited one.
  std::unordered_map<uint32_t, StatementPieces> templates;
  RedactionPrecheck precheck;
  bool precheck_ok = false;
  // Such a request, relayed but not yet recorded: a Q alone, or an extended-protocol run of exactly
  // Parse (optional), Bind, Describe of the portal (optional), Execute of it, Sync. Its replay
  // record waits for the server's answer. When the answer is one plain result that arrives in one
  // read (for a Q: RowDescription?, DataRows, one CommandComplete, ReadyForQuery; for a run:
  // ParseComplete if it parsed, BindComplete, RowDescription or NoData if it described, DataRows,
  // one CommandComplete, ReadyForQuery), the two become one kAudited record: the handler audits
  // the statement from its request and command tag without re-reading every message, which is most
  // of its cost per statement. Anything else, or any other record of the session, releases the
  // held record first, unchanged (record()), and the handler sees what it always saw.
  struct Held {
    bool active = false;
    double ms = 0;
    uint32_t epoch = 0;
    uint32_t tmpl = 0;  // a Q's template, or that of the statement a run executes in the unnamed portal
    PgSpan text;
    // A run's Bind body and its values block (pg_bind), as offsets into msg.
    size_t bind_at = 0, bind_len = 0, values_at = 0, values_len = 0;
    std::vector<uint8_t> msg;  // the whole request: the Q, or Parse/Bind to Sync
  } held;
  // The held request's answer, read in this loop turn and audited after its sends (relay_run).
  std::vector<uint8_t> answer;
  double answer_ms = 0;
  bool answer_pending = false;
};

// kAudited payload, native byte order: f64 duration in ms (ReadyForQuery's read minus the
// request's), u32 bytes up, u32 bytes down, u32 length of the request, u32 template, u32 start and
// end of the statement's text, the request (whole messages: the Q, or Parse/Bind to Sync), the
// CommandComplete body. The record's ms is the request's; agent/pg/handler.ts onAudited reads it.
// For a Q whose remembered decision came with an audit template (relayResume's `template`), the
// template's id and the byte range of the statement's text within the query string (pg_shape's
// span); 0, 0, 0 otherwise. With them the handler audits the statement without classifying it
// again: the template holds everything its decision fixed.
struct AuditedHead {
  double duration_ms;
  uint32_t up, down, request_len;
  uint32_t tmpl, text_start, text_end;
};
static_assert(sizeof(AuditedHead) == 32, "kAudited layout is shared with agent/pg/handler.ts");

struct Command {
  enum Op { kAdopt, kWrite, kResume, kClose, kForget, kDrained, kStop } op;
  explicit Command(Op o) : op(o) {}
  uint32_t id = 0;
  int a = -1, b = -1;  // adopt: fds; resume: side, cache
  bool allow = false;
  int server_live = -1;  // -1: unchanged
  uint32_t tag = 0;      // resume: the mask tag of the decided statement
  uint32_t plain = 0;    // resume (server): the live RowDescription masks nothing under this spec
  uint32_t tmpl = 0;     // resume (client): the audit template of a Q's statement or a Parse's executions, 0 for none
  std::vector<uint8_t> up, down;
  std::vector<uint8_t> extra;  // adopt: the packed redaction pre-check; resume: the template's pieces (or empty)
};

class Relay {
 public:
  Relay(napi_threadsafe_function tsfn, uint32_t max_message, double replay_delay_ms, bool batch_sends)
      : tsfn_(tsfn), max_message_(max_message), replay_delay_ms_(replay_delay_ms), sends_(batch_sends) {
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    evfd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    struct epoll_event ev = {};
    ev.events = EPOLLIN;
    ev.data.u64 = UINT64_MAX;
    epoll_ctl(epfd_, EPOLL_CTL_ADD, evfd_, &ev);
    thread_ = std::thread([this] {
      pthread_setname_np(pthread_self(), "runguard-relay");  // for top -H, perf and /proc/PID/task
      tid_.store((pid_t)syscall(SYS_gettid));
      loop();
    });
    // pin_others() must know which thread not to pin as soon as relayStart returns.
    while (tid_.load() == 0) std::this_thread::yield();
  }

  pid_t tid() const { return tid_.load(); }

  ~Relay() {
    push(Command(Command::kStop));
    thread_.join();
    close(epfd_);
    close(evfd_);
  }

  bool ok() const { return epfd_ >= 0 && evfd_ >= 0; }

  void push(Command&& c) {
    {
      std::lock_guard<std::mutex> g(cmd_mu_);
      cmds_.push_back(std::move(c));
    }
    uint64_t one = 1;
    ssize_t r = write(evfd_, &one, sizeof one);
    (void)r;  // EAGAIN only when the counter is already non-zero: the thread is woken anyway
  }

  // Called on the JavaScript thread by the thread-safe function: everything batched so far, added
  // to handed() (the records of a call that could not be delivered stay first). The two vectors
  // trade places, so once both have grown neither thread allocates for a batch, and memory is only
  // ever freed by the thread that allocated it.
  size_t take() {
    bool was_full;
    {
      std::lock_guard<std::mutex> g(out_mu_);
      if (handed_.empty()) handed_.swap(outgoing_);
      else handed_.insert(handed_.end(), outgoing_.begin(), outgoing_.end()), outgoing_.clear();
      signalled_ = false;
      was_full = full_;
      full_ = false;
    }
    if (was_full) push(Command(Command::kDrained));  // the loop reads again
    return handed_.size();
  }

  // What take() collected, until delivered() (JavaScript thread only).
  const std::vector<uint8_t>& handed() const { return handed_; }

  // JavaScript has had handed(); its capacity goes back to the loop with the next take(), unless a
  // backlog grew it past what a batch needs (the loop's own vector then grows again if it must).
  void delivered() {
    if (handed_.capacity() > kKeptBatchBytes) std::vector<uint8_t>().swap(handed_);
    else handed_.clear();
  }

 private:
  napi_threadsafe_function tsfn_;
  const uint32_t max_message_;
  const double replay_delay_ms_;
  int epfd_ = -1, evfd_ = -1;
  std::thread thread_;
  std::atomic<pid_t> tid_{0};
  std::mutex cmd_mu_;
  std::deque<Command> cmds_;
  std::mutex out_mu_;
  std::vector<uint8_t> outgoing_;  // guarded by out_mu_
  std::vector<uint8_t> handed_;    // JavaScript thread's: see take()
  bool signalled_ = false;         // guarded by out_mu_: a call to JavaScript is on its way
  bool full_ = false;              // guarded by out_mu_: outgoing_ passed kMaxBacklog
  bool backlogged_ = false;        // the loop's copy of full_: no socket is read meanwhile
  // Thread-owned from here on.
  std::unordered_map<uint32_t, std::unique_ptr<Session>> sessions_;
  std::vector<uint8_t> batch_;  // records of this loop turn
  bool urgent_ = false;         // batch_ holds something JavaScript must see now
  double replay_since_ = 0;     // when the oldest unsent replay record was made (0: none)
  uint32_t epoch_ = 0;
  std::string key_, shape_;  // reused per message: no allocation once grown
  bool stopping_ = false;
  size_t closing_ = 0;  // sessions JavaScript closed that still have output to write
  // This loop turn's deferred sends and the sessions it touched (settled after the sends).
  bool deferring_ = false;
  std::vector<std::pair<Session*, Side>> turn_;
  std::vector<Session*> settle_;
  std::vector<Session*> audits_;  // sessions whose held request's answer is audited after the sends
  SendBatch sends_;

 public:
  // For relayStats (read on the JavaScript thread): loop turns that sent a batch, the sends in
  // them, the most in one turn.
  std::atomic<uint64_t> turns_{0}, sends_count_{0}, largest_turn_{0}, single_sends_{0};
  bool batched() const { return sends_.batched(); }

 private:

  // ---- records ----

  void record(Session& s, RecordKind kind, Side side, const uint8_t* p, size_t n) {
    audit_answer(s);
    if (s.held.active) release(s);
    append_record(s, kind, side, p, n, epoch_, now_ms());
  }

  // The held Q goes out as the replay record it would have been, with its own time and epoch.
  void release(Session& s) {
    s.held.active = false;
    append_record(s, kReplay, kClient, s.held.msg.data(), s.held.msg.size(), s.held.epoch, s.held.ms);
  }

  void append_record(const Session& s, RecordKind kind, Side side, const uint8_t* p, size_t n, uint32_t epoch, double ms) {
    size_t at = begin_record();
    if (n) batch_.insert(batch_.end(), p, p + n);
    finish_record(at, s, kind, side, epoch, ms);
  }

  // A record whose payload the caller appends to batch_ itself (an audit record, built in place
  // rather than built and copied); finish_record() writes its header once the payload is there,
  // and batch_.resize(at) drops it instead.
  size_t begin_record() {
    size_t at = batch_.size();
    batch_.resize(at + sizeof(RecordHeader));
    return at;
  }

  void finish_record(size_t at, const Session& s, RecordKind kind, Side side, uint32_t epoch, double ms) {
    RecordHeader h{s.id, kind, side, 0, epoch, (uint32_t)(batch_.size() - at - sizeof h), ms};
    memcpy(batch_.data() + at, &h, sizeof h);
    if (kind == kReplay || kind == kAudited || kind == kEvent) {
      if (replay_since_ == 0) replay_since_ = h.ms;
    } else {
      urgent_ = true;
    }
  }

  void end(Session& s, Side side, int err) {
    Peer& p = s.peer[side];
    if (p.eof || p.failed) return;
    if (err) p.failed = true; else p.eof = true;
    const char* text = err ? strerror(err) : "";
    record(s, kEnd, side, reinterpret_cast<const uint8_t*>(text), strlen(text));
  }

  // Hands this turn's records to JavaScript: at once when one must be answered, otherwise once
  // the oldest has waited replay_delay_ms_, so that a busy session's audit costs one JavaScript
  // call per few milliseconds instead of one per statement.
  void deliver(double now) {
    if (batch_.empty()) return;
    if (!urgent_ && !stopping_ && now - replay_since_ < replay_delay_ms_) return;
    bool call;
    {
      std::lock_guard<std::mutex> g(out_mu_);
      outgoing_.insert(outgoing_.end(), batch_.begin(), batch_.end());
      call = !signalled_;
      signalled_ = true;
      if (outgoing_.size() > kMaxBacklog) full_ = backlogged_ = true;
    }
    batch_.clear();
    urgent_ = false;
    replay_since_ = 0;
    if (call) napi_call_threadsafe_function(tsfn_, nullptr, napi_tsfn_nonblocking);
  }

  // ---- the loop ----

  void loop() {
    struct epoll_event evs[64];
    while (!stopping_) {
      int timeout = -1;
      double now = now_ms();
      if (!batch_.empty()) timeout = urgent_ ? 0 : (int)(replay_delay_ms_ - (now - replay_since_)) + 1;
      if (closing_ > 0) timeout = timeout < 0 ? 50 : std::min(timeout, 50);
      if (timeout < 0 && !batch_.empty()) timeout = 0;
      int n = epoll_wait(epfd_, evs, 64, timeout);
      if (n < 0 && errno != EINTR) break;
      for (int i = 0; i < n; i++) {
        if (evs[i].data.u64 == UINT64_MAX) {
          uint64_t v;
          ssize_t r = read(evfd_, &v, sizeof v);
          (void)r;
          run_commands();
          continue;
        }
        uint32_t id = (uint32_t)(evs[i].data.u64 >> 1);
        Side side = (Side)(evs[i].data.u64 & 1);
        auto it = sessions_.find(id);
        if (it == sessions_.end()) continue;
        Session& s = *it->second;
        if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) flush(s, side);
        // Without a ring every send is its own syscall anyway: sent at once, as they come.
        deferring_ = sends_.batched();
        if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) read_side(s, side);
        deferring_ = false;
        if (!s.to_settle) s.to_settle = true, settle_.push_back(&s);
      }
      send_turn();
      for (Session* s : audits_) audit_answer(*s);
      audits_.clear();
      for (Session* s : settle_) s->to_settle = false, settle(*s);
      settle_.clear();
      now = now_ms();
      reap(now);
      deliver(now);
    }
    for (auto& [id, s] : sessions_) {
      for (auto& p : s->peer) close(p.fd);
    }
    sessions_.clear();
  }

  void run_commands() {
    std::deque<Command> cmds;
    {
      std::lock_guard<std::mutex> g(cmd_mu_);
      cmds.swap(cmds_);
    }
    for (auto& c : cmds) {
      if (c.op == Command::kStop) {
        stopping_ = true;
        // The last delivery takes every forwarded statement along, held ones too.
        for (auto& [id, s] : sessions_) {
          audit_answer(*s);
          if (s->held.active) release(*s);
        }
        continue;
      }
      if (c.op == Command::kDrained) {
        backlogged_ = false;
        for (auto& [id, s] : sessions_) settle(*s);
        continue;
      }
      if (c.op == Command::kForget) {
        epoch_ = (uint32_t)c.a;
        for (auto& [id, s] : sessions_) {
          s->allowed.clear(), s->statements.clear(), s->portals.clear(), s->plain_results.clear();
          s->templates.clear();  // a template holds a decision of the old policy
        }
        continue;
      }
      if (c.op == Command::kAdopt) {
        adopt(c.id, c.a, c.b, c.extra);
        continue;
      }
      auto it = sessions_.find(c.id);
      if (it == sessions_.end()) continue;  // already closed: what JavaScript sends after is moot
      Session& s = *it->second;
      if (c.server_live >= 0) s.server_live = c.server_live;
      switch (c.op) {
        case Command::kWrite:
          queue(s, kServer, c.up);
          queue(s, kClient, c.down);
          break;
        case Command::kResume:
          // What the handler decided takes effect before its writes go out: the server's answer
          // to them is read against it.
          if (c.tmpl && !c.extra.empty()) keep_template(s, c.tmpl, c.extra);
          resume(s, (Side)c.a, c.b, c.allow, c.tag, c.plain, c.tmpl);
          queue(s, kServer, c.up);
          queue(s, kClient, c.down);
          continue_side(s, (Side)c.a);
          break;
        case Command::kClose:
          if (!s.closing) {
            s.closing = true;
            closing_++;
            s.close_deadline = now_ms() + kCloseGraceMs;
          }
          break;
        default:
          break;
      }
      settle(s);
    }
  }

  void adopt(uint32_t id, int cfd, int sfd, const std::vector<uint8_t>& precheck) {
    auto s = std::make_unique<Session>();
    s->id = id;
    // Without a pre-check (or with one that does not parse) the handler audits every statement.
    s->precheck_ok = !precheck.empty() && s->precheck.parse(precheck.data(), precheck.size());
    s->peer[kClient].fd = cfd;
    s->peer[kServer].fd = sfd;
    Session& ref = *s;
    sessions_[id] = std::move(s);
    settle(ref);
  }

  // ---- reading and deciding ----

  bool may_read(const Session& s, Side side) const {
    const Peer& p = s.peer[side];
    return !p.eof && !p.failed && !p.waiting && !s.closing && !backlogged_ && s.peer[side ^ 1].pending() < kHighWater;
  }

  void read_side(Session& s, Side side) {
    Peer& p = s.peer[side];
    // Read only while the input can be handled; the rest stays in the kernel (backpressure).
    while (may_read(s, side)) {
      if (p.in.size() < p.in_len + kReadChunk) p.in.resize(p.in_len + kReadChunk);
      ssize_t r = recv(p.fd, p.in.data() + p.in_len, kReadChunk, 0);
      if (r <= 0) {
        if (r == 0) end(s, side, 0);
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) end(s, side, errno);
        break;
      }
      p.in_len += (size_t)r;
      handle(s, side);
      defer_flush(s, (Side)(side ^ 1));  // what was relayed goes out before the next read, or with this turn's batch
      if ((size_t)r < kReadChunk) break;  // the kernel had no more: the next epoll turn says when
    }
  }

  // Relays every complete message of `side` the relay may relay itself, stopping at the first the
  // handler must see first. Runs of relayed messages become one replay record each.
  void handle(Session& s, Side side) {
    Peer& in = s.peer[side];
    const Limits& lim = side == kClient ? kFrontend : kBackend;
    size_t off = 0, run = 0;
    while (!in.waiting && !in.broken && !s.closing) {
      size_t avail = in.in_len - off;
      if (avail < 5) break;
      const uint8_t* m = in.in.data() + off;
      uint8_t type = m[0];
      uint32_t len = be32(m + 1);
      if (lim.min[type] < 0 || len < (uint32_t)lim.min[type] || len > lim.max[type] || len > max_message_) {
        // Not a frame the handler's reader accepts: it gets the rest and reports the error.
        relay_run(s, side, run, off);
        record(s, kLive, side, m, avail);
        in.waiting = in.broken = true;
        off = run = in.in_len;
        break;
      }
      size_t total = (size_t)len + 1;
      if (avail < total) break;
      bool relay = side == kClient ? client_may_relay(s, type, m + 5, len - 4) : server_may_relay(s, type, m + 5, len - 4);
      if (!relay) {
        relay_run(s, side, run, off);
        size_t live_end = off + total;
        s.live_result.clear();
        if (side == kServer) {
          // What the handler must see goes to it with everything after it that has arrived (rows
          // to mask, mostly): one answer per read, not per row. A RowDescription goes alone: the
          // answer may say the relay can forward the rest itself.
          if (type == 'T' && !s.server_live) s.live_result.assign(reinterpret_cast<const char*>(m + 5), len - 4);
          else live_end = complete_prefix(in, off, lim);
          for (size_t z = off; z < live_end; z += be32(in.in.data() + z + 1) + 1) result_state(s, in.in[z]);
          if (type == 'T' && live_end == off + total) s.masked_result = true;
        }
        record(s, kLive, side, m, live_end - off);
        in.waiting = true;
        off = run = live_end;
        break;
      }
      if (side == kServer) result_state(s, type);
      off += total;
    }
    relay_run(s, side, run, off);
    if (off) {
      memmove(in.in.data(), in.in.data() + off, in.in_len - off);
      in.in_len -= off;
    }
  }

  // Where the server's answer stands after a message of this type: a result starts or ends, and
  // ReadyForQuery answers the oldest unit.
  void result_state(Session& s, uint8_t type) {
    switch (type) {
      case 'Z':
        if (!s.units.empty()) s.units.pop_front();
        s.masked_result = false;
        break;
      case 'T': case 'C': case 'E': case 'I': case 's':
        s.masked_result = false;
        break;
      default:
        break;
    }
  }

  // No answer is owed on the server side: a request sent now is answered first (see Session::held).
  static bool nothing_outstanding(const Session& s) { return s.units.empty() && s.open == 0; }

  // A message that starts or extends a unit went to the server with mask tag `tag`.
  static uint32_t merge(uint32_t a, uint32_t b) { return a == 0 ? b : b == 0 || a == b ? a : kOpaque; }
  void sent(Session& s, uint8_t type, uint32_t tag) {
    switch (type) {
      case 'Q': case 'F': s.units.push_back(tag); break;
      case 'E': s.open = merge(s.open, tag); break;
      case 'S': s.units.push_back(s.open), s.open = 0; break;
      default: break;
    }
  }

  // The end of the last complete, well-framed message from `off` on.
  size_t complete_prefix(const Peer& in, size_t off, const Limits& lim) {
    size_t end = off;
    while (in.in_len - end >= 5) {
      const uint8_t* m = in.in.data() + end;
      uint32_t len = be32(m + 1);
      if (lim.min[m[0]] < 0 || len < (uint32_t)lim.min[m[0]] || len > lim.max[m[0]] || len > max_message_) break;
      if (in.in_len - end < (size_t)len + 1) break;
      end += (size_t)len + 1;
    }
    return end;
  }

  // Forwards in[from, to), whole messages, to the peer and tells JavaScript it did: as replay
  // records, except that a long run of messages the handler only counts (a big result, COPY data)
  // becomes its byte count. A short run stays in the replay: a record costs the handler more than
  // the few messages it would save.
  void relay_run(Session& s, Side side, size_t from, size_t to) {
    if (to <= from) return;
    audit_answer(s);
    Peer& in = s.peer[side];
    const uint8_t* p = in.in.data();
    Peer& out = s.peer[side ^ 1];
    out.out.insert(out.out.end(), p + from, p + to);
    if (side == kClient && hold(s, p + from, to - from)) return;
    if (side == kServer && s.held.active) {
      // The answer leaves before the relay audits it: building the statement's event is not on the
      // job's round trip. In a loop turn, the audit waits for the turn's sends (a copy of the
      // answer, which handle() is about to drop); anything else the session records first audits
      // it (audit_answer), so that records keep their order. A failed write ends the side, which
      // releases the held request.
      double read_ms = now_ms();
      defer_flush(s, kClient);
      if (deferring_ && s.held.active) {
        s.answer.assign(p + from, p + to);
        s.answer_ms = read_ms;
        s.answer_pending = true;
        audits_.push_back(&s);
        return;
      }
      if (s.held.active && audited(s, p + from, to - from, read_ms)) return;
    }
    record_run(s, side, p, from, to);
  }

  // The held request's answer that waited for the loop turn's sends, audited now.
  void audit_answer(Session& s) {
    if (!s.answer_pending) return;
    s.answer_pending = false;
    if (s.held.active && audited(s, s.answer.data(), s.answer.size(), s.answer_ms)) return;
    record_run(s, kServer, s.answer.data(), 0, s.answer.size());
  }

  // Records p[from, to), whole messages relayed from `side` (see relay_run).
  void record_run(Session& s, Side side, const uint8_t* p, size_t from, size_t to) {
    size_t replay = from;  // start of what is not yet recorded
    size_t counted = to;   // start of the current run of counted-only messages (to: none)
    for (size_t m = from; m < to; m += 1 + be32(p + m + 1)) {
      if (only_counted(side, p[m])) {
        if (counted == to) counted = m;
        continue;
      }
      if (counted != to && m - counted >= kMinSkip) skip(s, side, p, replay, counted, m), replay = m;
      counted = to;
    }
    if (counted != to && to - counted >= kMinSkip) skip(s, side, p, replay, counted, to), replay = to;
    if (replay < to) record(s, kReplay, side, p + replay, to - replay);
  }

  // Holds a run that is exactly one request relayed alone (see Session::held).
  bool hold(Session& s, const uint8_t* m, size_t n) {
    if (!s.alone || s.held.active) return false;
    uint32_t tmpl = 0;
    if (m[0] == 'Q') {
      if (n != (size_t)be32(m + 1) + 1) return false;
      tmpl = s.hit_tmpl;
    } else {
      Execution x;
      if (!one_execution(m, n, &x)) return false;
      const PgSlice &statement = x.statement, &portal = x.portal;
      s.held.bind_at = (size_t)(x.bind.p - m), s.held.bind_len = x.bind.n;
      s.held.values_at = (size_t)(x.values.p - m), s.held.values_len = x.values.n;
      // Only a statement the handler saw parsed has a template (a Parse in the run just set it), and
      // only the unnamed portal and the unnamed statement are what the handler follows from a
      // kEvent record instead of the messages (see EventFlags).
      if (portal.n == 0 && (m[0] == 'B' || statement.n == 0)) {
        key_.assign(reinterpret_cast<const char*>(statement.p), statement.n);
        auto it = s.statements.find(key_);
        if (it != s.statements.end()) tmpl = it->second.tmpl;
      }
    }
    s.alone = false;
    s.held.active = true;
    s.held.ms = now_ms();
    s.held.epoch = epoch_;
    s.held.tmpl = tmpl;
    s.held.text = s.q_text;
    s.held.msg.assign(m, m + n);
    return true;
  }

  // What one_execution found in a run: the statement and portal its Bind names, the Bind's body and
  // its values block (pg_bind), all within the run.
  struct Execution {
    PgSlice statement, portal, bind, values;
  };

  // Whether m[0, n), whole messages the relay framed, is Parse (optional), Bind (of that statement),
  // Describe of that portal (optional), Execute of it for all rows, Sync: one statement's
  // execution, answered by one result. Drivers that bind values send it with the Parse of an
  // unnamed statement every time; prepared statements without.
  static bool one_execution(const uint8_t* m, size_t n, Execution* x) {
    PgSlice parsed{nullptr, 0}, sql, bound, executed, statement, values;
    size_t at = 0;
    auto next = [&](uint8_t type) {
      if (at >= n || m[at] != type) return (const uint8_t*)nullptr;
      const uint8_t* msg = m + at;
      at += (size_t)be32(msg + 1) + 1;
      return msg;
    };
    auto body_len = [](const uint8_t* msg) { return (size_t)be32(msg + 1) - 4; };
    auto same = [](const PgSlice& a, const PgSlice& b) { return a.n == b.n && memcmp(a.p, b.p, a.n) == 0; };
    const uint8_t* p = next('P');
    if (p && !pg_parse(p + 5, body_len(p), &parsed, &sql)) return false;
    const uint8_t* b = next('B');
    if (!b || !pg_bind(b + 5, body_len(b), &bound, &statement, &values) || (p && !same(parsed, statement))) return false;
    if (const uint8_t* d = next('D')) {
      // 'P', the portal's name, its NUL.
      if (body_len(d) != bound.n + 2 || d[5] != 'P' || memcmp(d + 6, bound.p, bound.n) != 0 || d[6 + bound.n] != 0) return false;
    }
    const uint8_t* e = next('E');
    if (!e || !pg_execute(e + 5, body_len(e), &executed)) return false;
    // The portal bound is the one executed, and for every row: a row limit ends in PortalSuspended.
    if (!same(executed, bound) || be32(e + 5 + body_len(e) - 4) != 0) return false;
    *x = Execution{statement, bound, PgSlice{b + 5, body_len(b)}, values};
    return next('S') != nullptr && at == n;
  }

  // The held request's answer, if this run is all of it and a plain one: recorded as kAudited.
  bool audited(Session& s, const uint8_t* m, size_t n, double read_ms) {
    size_t at = 0, complete = SIZE_MAX, ready = SIZE_MAX;
    // 0: before the result (after BindComplete for a run), 1: rows, 2: after CommandComplete,
    // 3: after ReadyForQuery; -1: a run's answer before its BindComplete, -2: before ParseComplete.
    uint8_t first = s.held.msg[0];
    int stage = first == 'P' ? -2 : first == 'B' ? -1 : 0;
    while (at < n) {
      uint8_t t = m[at];
      size_t size = (size_t)be32(m + at + 1) + 1;
      if (t == '1' && stage == -2) stage = -1;
      else if (t == '2' && stage == -1) stage = 0;
      else if ((t == 'T' || (t == 'n' && first != 'Q')) && stage == 0) stage = 1;
      else if (t == 'D' && (stage == 0 || stage == 1)) stage = 1;
      else if (t == 'C' && (stage == 0 || stage == 1)) stage = 2, complete = at;
      else if (t == 'Z' && stage == 2) stage = 3, ready = at;
      else return false;
      at += size;
      if (stage == 3 && at != n) return false;
    }
    if (stage != 3) return false;
    const Session::Held& h = s.held;
    const uint8_t* c = m + complete + 5;
    size_t clen = (size_t)be32(m + complete + 1) - 4;
    size_t rlen = h.msg.size();
    AuditedHead head{read_ms - h.ms, (uint32_t)rlen, (uint32_t)n, (uint32_t)rlen, h.tmpl, h.text.start, h.text.end};
    // ReadyForQuery's status: 'I', the transaction ended (pg_backend_ok checked the body is one byte).
    bool idle = m[ready + 5] == 'I';
    size_t rec = begin_record();
    s.held.active = false;
    if (event(s, head, idle, c, clen, &batch_)) {
      finish_record(rec, s, kEvent, kServer, h.epoch, h.ms);
      return true;
    }
    batch_.resize(rec + sizeof(RecordHeader));
    const uint8_t* hp = reinterpret_cast<const uint8_t*>(&head);
    batch_.insert(batch_.end(), hp, hp + sizeof head);
    batch_.insert(batch_.end(), h.msg.data(), h.msg.data() + rlen);
    batch_.insert(batch_.end(), c, c + clen);
    finish_record(rec, s, kAudited, kServer, h.epoch, h.ms);
    return true;
  }

  // Appends the held request's statement event to `out` (a kEvent payload), if the relay can write
  // exactly what the handler would (see statement_event.h): a Q's statement, or the execution of a
  // prepared statement in the unnamed portal (the statement parsed in the same run or before).
  // `idle`: the answer's ReadyForQuery says no transaction is open. On false, `out` may hold part
  // of it: the caller drops it.
  bool event(const Session& s, const AuditedHead& head, bool idle, const uint8_t* complete, size_t clen, std::vector<uint8_t>* out) {
    if (!s.precheck_ok || !head.tmpl) return false;
    auto it = s.templates.find(head.tmpl);
    if (it == s.templates.end()) return false;
    const std::vector<uint8_t>& q = s.held.msg;
    EventHead e{head.up, head.down, 0, head.tmpl, 0};
    if (q[0] != 'Q') {
      // The template holds the statement's text; the Bind's values (hold() kept where they are)
      // are this execution's.
      const Session::Held& h = s.held;
      PgSlice values{q.data() + h.values_at, h.values_len};
      if (!values_clean(s.precheck, values)) return false;
      e.flags = (idle ? (uint32_t)kPortalEnded : 0u) | (q[0] == 'P' ? (uint32_t)kParsedUnnamed : 0u);
      e.bind_len = idle ? 0 : (uint32_t)h.bind_len;
      put_event_head(e, idle ? nullptr : q.data() + h.bind_at, out);
      return encode_statement(it->second, nullptr, 0, &values, complete, clen, head.duration_ms, out);
    }
    // The text span is within the query string (offset 5 in the Q), its NUL after it.
    if (head.text_start > head.text_end || 5 + (size_t)head.text_end >= q.size()) return false;
    const uint8_t* text = q.data() + 5 + head.text_start;
    size_t text_len = head.text_end - head.text_start;
    if (!utf8_valid(text, text_len) || !s.precheck.clean(text, text_len)) return false;
    put_event_head(e, nullptr, out);
    return encode_statement(it->second, text, text_len, nullptr, complete, clen, head.duration_ms, out);
  }

  // Appends the head, then the Bind's body when the head says it has one.
  static void put_event_head(const EventHead& e, const uint8_t* bind, std::vector<uint8_t>* out) {
    const uint8_t* h = reinterpret_cast<const uint8_t*>(&e);
    out->insert(out->end(), h, h + sizeof e);
    if (bind) out->insert(out->end(), bind, bind + e.bind_len);
  }

  void keep_template(Session& s, uint32_t id, const std::vector<uint8_t>& packed) {
    StatementPieces t;
    if (!t.parse(packed.data(), packed.size())) return;  // then the handler audits its statements itself
    // Bounded like the decisions: a session cycling through endless statements starts over.
    if (s.templates.size() >= kMaxRemembered) s.templates.clear();
    s.templates[id] = std::move(t);
  }

  // Records [replay, counted) as replay and [counted, end) as a byte count.
  void skip(Session& s, Side side, const uint8_t* p, size_t replay, size_t counted, size_t end) {
    if (counted > replay) record(s, kReplay, side, p + replay, counted - replay);
    uint32_t n = (uint32_t)(end - counted);
    record(s, kSkip, side, reinterpret_cast<const uint8_t*>(&n), sizeof n);
  }

  // Whether the handler let the relay repeat its decision on this text; *tag: its mask tag. Also
  // the decision's template (s.hit_tmpl): for a Q, with its statement's text (s.q_text), which
  // needs the shape's span; for a Parse, only when found by its exact text, which the template of
  // its executions holds.
  bool remembered(Session& s, uint8_t type, const uint8_t* sql, size_t n, uint32_t* tag) {
    s.live_has_shape = false;
    s.live_exact_key.clear();
    s.hit_tmpl = 0;
    if (n > kMaxRememberedText) return false;
    bool shaped = pg_shape(sql, n, &shape_, &s.q_text);
    if (type == 'P' && exact_hit(s, type, sql, n, shaped, tag)) return true;
    if (shaped) {
      key_.assign(1, (char)type);
      key_ += 'S';
      key_ += shape_;
      auto it = s.allowed.find(key_);
      if (it != s.allowed.end()) {
        *tag = it->second.tag;
        if (type == 'Q') s.hit_tmpl = it->second.tmpl;
        s.live_exact_key.clear();
        return true;
      }
      s.live_has_shape = true;
      s.live_shape_key = key_;
    }
    return type != 'P' && exact_hit(s, type, sql, n, shaped, tag);
  }

  // The decision remembered for exactly this text. Its key stays in s.live_exact_key on a miss.
  bool exact_hit(Session& s, uint8_t type, const uint8_t* sql, size_t n, bool shaped, uint32_t* tag) {
    std::string& k = s.live_exact_key;
    if (k.empty()) {
      k.assign(1, (char)type);
      k += 'X';
      k.append(reinterpret_cast<const char*>(sql), n);
    }
    auto it = s.allowed.find(k);
    if (it == s.allowed.end()) return false;
    *tag = it->second.tag;
    if (type == 'P' || shaped) s.hit_tmpl = it->second.tmpl;
    k.clear();
    return true;
  }

  static std::string str(const PgSlice& x) { return std::string(reinterpret_cast<const char*>(x.p), x.n); }

  bool client_may_relay(Session& s, uint8_t type, const uint8_t* body, size_t n) {
    PgSlice sql, name, portal;
    uint32_t tag = 0;
    s.live_type = type;
    switch (type) {
      case 'Q':
        if (!pg_query(body, n, &sql) || !remembered(s, type, sql.p, sql.n, &tag)) return false;
        s.alone = nothing_outstanding(s);
        sent(s, type, tag);
        return true;
      case 'P':
        if (!pg_parse(body, n, &name, &sql)) return false;
        s.live_name = str(name);
        if (!remembered(s, type, sql.p, sql.n, &tag)) return false;
        s.statements[s.live_name] = {tag, s.hit_tmpl};
        s.alone = nothing_outstanding(s);
        return true;
      case 'B': {
        if (!pg_bind(body, n, &portal, &name)) return false;
        s.live_name = str(name);
        s.live_portal = str(portal);
        auto it = s.statements.find(s.live_name);
        if (it == s.statements.end()) {
          s.portals.erase(s.live_portal);
          return false;
        }
        s.portals[s.live_portal] = it->second.tag;
        s.alone = nothing_outstanding(s);
        return true;
      }
      case 'E': {
        if (!pg_execute(body, n, &portal)) return false;
        s.live_portal = str(portal);
        auto it = s.portals.find(s.live_portal);
        if (it == s.portals.end()) return false;
        sent(s, type, it->second);
        return true;
      }
      case 'C': {
        uint8_t kind;
        if (!pg_close(body, n, &kind, &name)) return false;
        if (kind == 'S') s.statements.erase(str(name));
        else s.portals.erase(str(name));
        return true;
      }
      case 'S': case 'F':
        sent(s, type, 0);
        return true;
      case 'H': case 'D': case 'd': case 'c': case 'f': case 'X': case 'p':
        // Relayed unread by the handler too (X is recorded from the replay).
        return true;
      default:
        return false;
    }
  }

  bool server_may_relay(Session& s, uint8_t type, const uint8_t* body, size_t n) {
    if (s.server_live || !pg_backend_ok(type, body, n)) return false;
    if (type != 'T' && type != 'D') return true;
    if (type == 'D' && s.masked_result) return false;
    // Results of masked statements: relayed when the handler would change nothing in them.
    uint32_t flags = 0;
    for (size_t i = 0; i <= s.units.size(); i++) {
      uint32_t tag = i < s.units.size() ? s.units[i] : s.open;
      if (tag == 0) continue;
      if (tag == kOpaque) return false;
      if (type == 'T') {
        key_.assign(reinterpret_cast<const char*>(&tag), sizeof tag);
        key_.append(reinterpret_cast<const char*>(body), n);
        if (!s.plain_results.count(key_)) return false;
      }
      flags |= tag & 3;
    }
    return type == 'T' || flags == 0 || row_cannot_hit(flags, body, n);
  }

  void resume(Session& s, Side side, int cache, bool allow, uint32_t tag, uint32_t plain, uint32_t tmpl) {
    Peer& p = s.peer[side];
    if (!p.waiting || p.broken) return;
    p.waiting = false;
    if (side == kClient) {
      remember(s, cache, allow, tag, tmpl);
      // The handler wrote what it made of the message (the message, a replacement, nothing yet).
      sent(s, s.live_type, tag);
    } else if (plain != 0 && !s.live_result.empty()) {
      s.masked_result = false;
      if (s.plain_results.size() >= kMaxRemembered) s.plain_results.clear();
      key_.assign(reinterpret_cast<const char*>(&plain), sizeof plain);
      key_ += s.live_result;
      s.plain_results.insert(key_);
    }
  }

  void continue_side(Session& s, Side side) {
    if (!s.peer[side].waiting) handle(s, side);
  }

  void remember(Session& s, int cache, bool allow, uint32_t tag, uint32_t tmpl) {
    if (s.allowed.size() >= kMaxRemembered) s.allowed.clear();
    if (s.statements.size() >= kMaxRemembered) s.statements.clear();
    if (s.portals.size() >= kMaxRemembered) s.portals.clear();
    uint8_t t = s.live_type;
    if ((t == 'Q' || t == 'P') && cache != kCacheNone) {
      // A Parse's template holds its text: remembered under that text only (remembered()).
      bool by_shape = cache == kCacheShape && s.live_has_shape;
      if (by_shape) s.allowed[s.live_shape_key] = {tag, t == 'Q' ? tmpl : 0};
      if ((!by_shape || (t == 'P' && tmpl)) && !s.live_exact_key.empty()) s.allowed[s.live_exact_key] = {tag, tmpl};
    }
    // Whether the statement a later Bind/Execute refers to may be relayed without asking.
    if (t == 'P') allow ? (void)(s.statements[s.live_name] = {tag, tmpl}) : (void)s.statements.erase(s.live_name);
    if (t == 'B') {
      if (allow) s.statements[s.live_name] = {tag, 0}, s.portals[s.live_portal] = tag;
      else s.portals.erase(s.live_portal);
    }
    if (t == 'E') allow ? (void)(s.portals[s.live_portal] = tag) : (void)s.portals.erase(s.live_portal);
    s.live_exact_key.clear();
  }

  // ---- writing ----

  void queue(Session& s, Side side, const std::vector<uint8_t>& b) {
    if (b.empty()) return;
    Peer& p = s.peer[side];
    p.out.insert(p.out.end(), b.begin(), b.end());
  }

  void flush(Session& s, Side side) {
    Peer& p = s.peer[side];
    p.blocked = false;
    while (p.pending() > 0 && !p.failed) {
      ssize_t w = send(p.fd, p.out.data() + p.out_off, p.pending(), MSG_NOSIGNAL | MSG_DONTWAIT);
      if (w < 0 && errno == EINTR) continue;
      if (!sent_bytes(s, side, w < 0 ? -errno : w)) break;
    }
  }

  // Accounts for one send's result (bytes, or -errno); false when the socket takes no more now.
  bool sent_bytes(Session& s, Side side, long result) {
    Peer& p = s.peer[side];
    if (result == -EAGAIN || result == -EWOULDBLOCK) {
      p.blocked = true;
      return false;
    }
    if (result < 0) {
      end(s, side, (int)-result);
      p.out.clear();
      p.out_off = 0;
      return false;
    }
    p.out_off += (size_t)result;
    if (p.out_off == p.out.size()) {
      p.out.clear();
      p.out_off = 0;
    }
    return true;
  }

  // While a loop turn reads, what it relays to servers waits for the turn's one batch of sends
  // (see send_batch.h): a send that wakes a backend would otherwise often hand it the cpu before
  // the relay forwards the other sessions' bytes it already holds. Answers to clients go out at
  // once, as they are read: batching those too made select-only simple slower (0.84x and 0.92x of
  // pgbouncer against 0.96x and 1.05x in one series), since an answer then waited for every other
  // event of the turn; in the same series prepared gave 1.09x against 0.95x and TPC-B 0.98x against
  // 0.94x, one run each (README, known limits).
  void defer_flush(Session& s, Side side) {
    Peer& p = s.peer[side];
    if (!deferring_ || side != kServer || p.pending() >= kEagerFlush) return flush(s, side);
    if (p.deferred || p.pending() == 0 || p.failed) return;
    p.deferred = true;
    turn_.push_back({&s, side});
  }

  void send_turn() {
    if (turn_.empty()) return;
    for (size_t i = 0; i < turn_.size(); i++) {
      Peer& p = turn_[i].first->peer[turn_[i].second];
      p.deferred = false;
      if (p.pending() > 0 && !p.failed) sends_.add(p.fd, p.out.data() + p.out_off, p.pending(), i);
    }
    if (sends_.size() == 1) {
      // One send has nothing to share a system call with: send(2) is the shorter path (io_uring
      // adds its submission and completion, about 3 us per TPC-B transaction in perf).
      auto [s, side] = turn_[sends_.front().tag];
      sends_.clear();
      turn_.clear();
      count_turn(1);
      single_sends_.fetch_add(1, std::memory_order_relaxed);
      return flush(*s, side);
    }
    if (!sends_.empty()) {
      std::vector<SendBatch::Entry>& done = sends_.run();
      count_turn(done.size());
      for (const SendBatch::Entry& e : done) {
        auto [s, side] = turn_[e.tag];
        s->peer[side].blocked = false;
        sent_bytes(*s, side, e.result == -EINTR ? 0 : e.result);  // interrupted: settle() sends again
      }
      sends_.clear();
    }
    turn_.clear();
  }

  void count_turn(size_t sends) {
    turns_.fetch_add(1, std::memory_order_relaxed);
    sends_count_.fetch_add(sends, std::memory_order_relaxed);
    if (sends > largest_turn_.load(std::memory_order_relaxed)) largest_turn_.store(sends, std::memory_order_relaxed);
  }

  // Writes what is queued and asks epoll for exactly what each socket now waits for.
  void settle(Session& s) {
    for (int side = 0; side < 2; side++) {
      if (s.peer[side].pending() && !s.peer[side].blocked) flush(s, (Side)side);
    }
    for (int side = 0; side < 2; side++) {
      Peer& p = s.peer[side];
      bool reading = may_read(s, (Side)side);
      // Input that arrived while this side waited is handled now that it may be.
      if (reading && p.in_len > 0) {
        handle(s, (Side)side);
        reading = !p.waiting;
      }
      uint32_t want = (reading ? (uint32_t)EPOLLIN : 0u) | (p.pending() && !p.failed ? (uint32_t)EPOLLOUT : 0u);
      if (want == p.registered) continue;
      struct epoll_event ev = {};
      ev.events = want;
      ev.data.u64 = (uint64_t)s.id << 1 | side;
      int op = p.registered == 0 ? (int)EPOLL_CTL_ADD : want == 0 ? (int)EPOLL_CTL_DEL : (int)EPOLL_CTL_MOD;
      epoll_ctl(epfd_, op, p.fd, &ev);
      p.registered = want;
    }
  }

  // Sessions JavaScript closed: gone once their output is written, or the grace time is over.
  void reap(double now) {
    if (closing_ == 0) return;
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      Session& s = *it->second;
      bool drained = (s.peer[0].pending() == 0 || s.peer[0].failed) && (s.peer[1].pending() == 0 || s.peer[1].failed);
      if (!s.closing || (!drained && now < s.close_deadline)) {
        ++it;
        continue;
      }
      for (auto& p : s.peer) {
        if (p.registered) epoll_ctl(epfd_, EPOLL_CTL_DEL, p.fd, nullptr);
        shutdown(p.fd, SHUT_WR);
        close(p.fd);
      }
      record(s, kClosed, kClient, nullptr, 0);
      closing_--;
      it = sessions_.erase(it);
    }
  }
};

// ---- JavaScript bindings -------------------------------------------------------------------------

// Several relay threads, each with its own sessions: while one is preempted (often by the very
// process its send just woke) or busy with a long read, the others go on forwarding theirs, where a
// single thread would hold every session up. The price: each thread sleeps and wakes for fewer
// messages, so more threads than the host has cpus to spare cost more than they save (see
// relayThreadCount in agent/config.ts). A session stays on the thread that adopted it. The
// bindings below run on the JavaScript thread only, so these need no lock.
std::vector<Relay*> g_relays;
struct Owner {
  Relay* relay;
  size_t index;
};
std::unordered_map<uint32_t, Owner> g_owner;  // live sessions (adopted, not yet closed)
std::vector<size_t> g_load;                   // live sessions per relay thread
uint32_t g_epoch = 0;                         // the last forget epoch handed out

// The thread with the fewest live sessions takes a new one (the first such, so a lone session
// always lands on the same thread).
Relay* place(uint32_t id) {
  size_t best = 0;
  for (size_t i = 1; i < g_relays.size(); i++) {
    if (g_load[i] < g_load[best]) best = i;
  }
  g_load[best]++;
  g_owner[id] = Owner{g_relays[best], best};
  return g_relays[best];
}

// A session's thread; null once it is closed (what JavaScript sends after that is moot, as it is to
// the relay itself).
Relay* relay_for(uint32_t id) {
  auto it = g_owner.find(id);
  return it == g_owner.end() ? nullptr : it->second.relay;
}

bool is_relay_thread(pid_t tid) {
  for (Relay* r : g_relays) {
    if (r->tid() == tid) return true;
  }
  return false;
}

// The Buffer every batch is copied into, grown but never replaced otherwise: a fresh one per batch
// (40 a second of 100-300 KiB under load) was ArrayBuffer churn that made V8 run a mark-compact
// every second or two. JavaScript may read it only during the call (agent/native/relay.ts dispatch).
napi_ref g_batch_ref = nullptr;
uint8_t* g_batch_data = nullptr;
size_t g_batch_cap = 0;
constexpr size_t kMinBatchBuffer = 256 * 1024;

bool batch_buffer(napi_env env, size_t need, napi_value* out) {
  if (need <= g_batch_cap) return napi_get_reference_value(env, g_batch_ref, out) == napi_ok && *out != nullptr;
  size_t cap = std::max(need + need / 2, kMinBatchBuffer);
  void* data;
  napi_ref ref;
  if (napi_create_buffer(env, cap, &data, out) != napi_ok || napi_create_reference(env, *out, 1, &ref) != napi_ok) return false;
  if (g_batch_ref) napi_delete_reference(env, g_batch_ref);
  g_batch_ref = ref, g_batch_data = static_cast<uint8_t*>(data), g_batch_cap = cap;
  return true;
}

void call_js(napi_env env, napi_value cb, void*, void*) {
  if (env == nullptr || g_relays.empty()) return;
  // Every shard's records in one batch: one JavaScript call, whichever thread signalled.
  size_t total = 0;
  for (Relay* r : g_relays) total += r->take();
  if (total == 0) return;
  napi_value args[2];
  // Without a buffer the records stay with their relays and go with the next call: never dropped.
  if (!batch_buffer(env, total, &args[0]) || napi_create_double(env, (double)total, &args[1]) != napi_ok) return;
  size_t at = 0;
  for (Relay* r : g_relays) {
    const std::vector<uint8_t>& part = r->handed();
    if (!part.empty()) memcpy(g_batch_data + at, part.data(), part.size());
    at += part.size();
    r->delivered();
  }
  napi_value undefined;
  napi_get_undefined(env, &undefined);
  napi_call_function(env, undefined, cb, 2, args, nullptr);
}

napi_value throw_error(napi_env env, const char* msg) {
  napi_throw_error(env, nullptr, msg);
  return nullptr;
}

bool get_u32(napi_env env, napi_value v, uint32_t* out) { return napi_get_value_uint32(env, v, out) == napi_ok; }

bool get_bytes(napi_env env, napi_value v, std::vector<uint8_t>* out) {
  napi_valuetype t;
  napi_typeof(env, v, &t);
  if (t == napi_null || t == napi_undefined) return true;
  void* data;
  size_t n;
  if (napi_get_buffer_info(env, v, &data, &n) != napi_ok) return false;
  out->assign(static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + n);
  return true;
}

template <size_t N>
bool args(napi_env env, napi_callback_info info, napi_value (&argv)[N]) {
  size_t argc = N;
  return napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) == napi_ok && argc == N;
}

void stop_all() {
  for (Relay* r : g_relays) delete r;
  g_relays.clear();
  // The buffer's reference goes with the environment (this runs as its cleanup hook or before any batch).
  g_batch_ref = nullptr, g_batch_data = nullptr, g_batch_cap = 0;
  g_owner.clear();
  g_load.clear();
}

void cleanup(void*) { stop_all(); }

}  // namespace

napi_value relay_start_js(napi_env env, napi_callback_info info) {
  napi_value argv[5];
  uint32_t max_message, threads;
  double delay;
  bool batch_sends;
  if (!args(env, info, argv) || !get_u32(env, argv[1], &max_message) || napi_get_value_double(env, argv[2], &delay) != napi_ok ||
      !get_u32(env, argv[3], &threads) || threads < 1 || threads > kMaxRelayThreads || napi_get_value_bool(env, argv[4], &batch_sends) != napi_ok)
    return throw_error(env, "relayStart(onBatch, maxMessageLength, replayDelayMs, threads 1-64, batchSends)");
  if (!g_relays.empty()) return throw_error(env, "the native relay is already started");
  napi_value name;
  napi_create_string_utf8(env, "runguard-relay", NAPI_AUTO_LENGTH, &name);
  napi_threadsafe_function tsfn;
  if (napi_create_threadsafe_function(env, argv[0], nullptr, name, 0, 1, nullptr, nullptr, nullptr, call_js, &tsfn) != napi_ok)
    return throw_error(env, "cannot create the relay's callback");
  // The relay never keeps the process alive by itself: the agent's own sockets and timers do.
  napi_unref_threadsafe_function(env, tsfn);
  for (uint32_t i = 0; i < threads; i++) {
    g_relays.push_back(new Relay(tsfn, max_message, delay, batch_sends));
    g_load.push_back(0);
    if (!g_relays.back()->ok()) {
      stop_all();
      return throw_error(env, "cannot create the relay's epoll or eventfd descriptor");
    }
  }
  napi_add_env_cleanup_hook(env, cleanup, nullptr);
  return nullptr;
}

napi_value relay_adopt_js(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  uint32_t id, cfd, sfd;
  std::vector<uint8_t> precheck;
  if (g_relays.empty()) return throw_error(env, "the native relay is not started");
  if (!args(env, info, argv) || !get_u32(env, argv[0], &id) || !get_u32(env, argv[1], &cfd) || !get_u32(env, argv[2], &sfd) ||
      !get_bytes(env, argv[3], &precheck))
    return throw_error(env, "relayAdopt(id, clientFd, serverFd, precheck)");
  if (relay_for(id)) return throw_error(env, "relayAdopt: that session id is already live");
  // Duplicates, so that the JavaScript sockets can be closed without ending the connections.
  int c = fcntl(cfd, F_DUPFD_CLOEXEC, 3);
  int s = c < 0 ? -1 : fcntl(sfd, F_DUPFD_CLOEXEC, 3);
  if (c < 0 || s < 0) {
    int err = errno;
    if (c >= 0) close(c);
    napi_throw_error(env, nullptr, strerror(err));
    return nullptr;
  }
  Command cmd(Command::kAdopt);
  cmd.id = id, cmd.a = c, cmd.b = s;
  cmd.extra = std::move(precheck);
  place(id)->push(std::move(cmd));
  return nullptr;
}

napi_value relay_write_js(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  uint32_t id;
  bool live;
  Command cmd(Command::kWrite);
  if (g_relays.empty() || !args(env, info, argv) || !get_u32(env, argv[0], &id) || napi_get_value_bool(env, argv[1], &live) != napi_ok ||
      !get_bytes(env, argv[2], &cmd.up) || !get_bytes(env, argv[3], &cmd.down))
    return throw_error(env, "relayWrite(id, serverLive, toServer, toClient)");
  cmd.id = id, cmd.server_live = live;
  if (Relay* r = relay_for(id)) r->push(std::move(cmd));
  return nullptr;
}

napi_value relay_resume_js(napi_env env, napi_callback_info info) {
  napi_value argv[11];
  uint32_t id, side, cache, tag, plain, tmpl;
  bool allow, live;
  Command cmd(Command::kResume);
  if (g_relays.empty() || !args(env, info, argv) || !get_u32(env, argv[0], &id) || !get_u32(env, argv[1], &side) || side > 1 ||
      !get_u32(env, argv[2], &cache) || cache > 2 || napi_get_value_bool(env, argv[3], &allow) != napi_ok ||
      napi_get_value_bool(env, argv[4], &live) != napi_ok || !get_u32(env, argv[5], &tag) || !get_u32(env, argv[6], &plain) ||
      !get_u32(env, argv[7], &tmpl) || !get_bytes(env, argv[8], &cmd.extra) || !get_bytes(env, argv[9], &cmd.up) ||
      !get_bytes(env, argv[10], &cmd.down))
    return throw_error(env, "relayResume(id, side, cache, allowName, serverLive, tag, plainResult, template, templatePieces, toServer, toClient)");
  cmd.id = id, cmd.a = (int)side, cmd.b = (int)cache, cmd.allow = allow, cmd.server_live = live, cmd.tag = tag, cmd.plain = plain;
  cmd.tmpl = tmpl;
  if (Relay* r = relay_for(id)) r->push(std::move(cmd));
  return nullptr;
}

napi_value relay_close_js(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  uint32_t id;
  if (g_relays.empty() || !args(env, info, argv) || !get_u32(env, argv[0], &id)) return throw_error(env, "relayClose(id)");
  auto it = g_owner.find(id);
  if (it == g_owner.end()) return nullptr;
  Command cmd(Command::kClose);
  cmd.id = id;
  it->second.relay->push(std::move(cmd));
  g_load[it->second.index]--;
  g_owner.erase(it);
  return nullptr;
}

napi_value relay_forget_js(napi_env env, napi_callback_info) {
  if (g_relays.empty()) return throw_error(env, "the native relay is not started");
  uint32_t epoch = ++g_epoch;
  for (Relay* r : g_relays) {
    Command cmd(Command::kForget);
    cmd.a = (int)epoch;
    r->push(std::move(cmd));
  }
  napi_value v;
  napi_create_uint32(env, epoch, &v);
  return v;
}

napi_value relay_stats_js(napi_env env, napi_callback_info) {
  uint64_t turns = 0, sends = 0, largest = 0, single = 0;
  uint32_t rings = 0;
  for (Relay* r : g_relays) {
    turns += r->turns_.load(std::memory_order_relaxed);
    single += r->single_sends_.load(std::memory_order_relaxed);
    sends += r->sends_count_.load(std::memory_order_relaxed);
    largest = std::max<uint64_t>(largest, r->largest_turn_.load(std::memory_order_relaxed));
    rings += r->batched();
  }
  napi_value o, v;
  napi_create_object(env, &o);
  napi_create_uint32(env, (uint32_t)g_relays.size(), &v), napi_set_named_property(env, o, "threads", v);
  napi_create_uint32(env, rings, &v), napi_set_named_property(env, o, "batchedThreads", v);
  napi_create_double(env, (double)turns, &v), napi_set_named_property(env, o, "batchedTurns", v);
  napi_create_double(env, (double)sends, &v), napi_set_named_property(env, o, "batchedSends", v);
  napi_create_double(env, (double)largest, &v), napi_set_named_property(env, o, "largestTurn", v);
  napi_create_double(env, (double)single, &v), napi_set_named_property(env, o, "singleSends", v);
  return o;
}

// Test hook: one SendBatch run over the given sockets and buffers (see send_batch.h).
napi_value send_batch_js(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  bool use_ring;
  uint32_t n = 0, m = 0;
  if (!args(env, info, argv) || napi_get_array_length(env, argv[0], &n) != napi_ok || napi_get_array_length(env, argv[1], &m) != napi_ok ||
      n != m || napi_get_value_bool(env, argv[2], &use_ring) != napi_ok)
    return throw_error(env, "sendBatch(fds, buffers, useRing)");
  SendBatch batch(use_ring);
  for (uint32_t i = 0; i < n; i++) {
    napi_value fd_v, buf_v;
    int32_t fd;
    void* data;
    size_t len;
    napi_get_element(env, argv[0], i, &fd_v);
    napi_get_element(env, argv[1], i, &buf_v);
    if (napi_get_value_int32(env, fd_v, &fd) != napi_ok || napi_get_buffer_info(env, buf_v, &data, &len) != napi_ok)
      return throw_error(env, "sendBatch: fds are numbers, buffers Buffers");
    batch.add(fd, static_cast<const uint8_t*>(data), len, i);
  }
  bool batched = batch.batched();
  napi_value o, results, v;
  napi_create_object(env, &o);
  napi_create_array_with_length(env, n, &results);
  for (const SendBatch::Entry& e : batch.run()) {
    napi_create_double(env, (double)e.result, &v);
    napi_set_element(env, results, (uint32_t)e.tag, v);
  }
  napi_get_boolean(env, batched, &v);
  napi_set_named_property(env, o, "batched", v);
  napi_set_named_property(env, o, "results", results);
  return o;
}

// The agent's audit work (the JavaScript main thread, V8's helpers, libuv's pool that writes and
// syncs the spool) comes in bursts: a relay batch every few milliseconds. Left free, the scheduler
// moves those threads onto whichever cpu the relays, the jobs and their servers are using (the likely
// reason why, measured, the host then sat 6-9% idle and PostgreSQL switched twice as often per
// statement); kept on one cpu, the relay threads (left free here) and everything else go on around them.
// On a 2-cpu host this took pgbench select-only through runguard from 0.74-0.85x of pgbouncer's
// throughput to 0.76-0.98x, the host to 96-98% busy, and the added p50 from +0.2 to +0.05 ms
// (bench/pgbench.ts, README). The cpu is the highest one this thread may run on; threads created
// later inherit the pin from their creator.
napi_value relay_pin_others_js(napi_env env, napi_callback_info) {
  if (g_relays.empty()) return throw_error(env, "the native relay is not started");
  cpu_set_t allowed;
  CPU_ZERO(&allowed);
  int cpu = -1;
  if (sched_getaffinity(0, sizeof allowed, &allowed) == 0 && CPU_COUNT(&allowed) >= 2) {
    for (int c = CPU_SETSIZE - 1; c >= 0; c--) {
      if (CPU_ISSET(c, &allowed)) {
        cpu = c;
        break;
      }
    }
  }
  if (cpu >= 0) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpu, &one);
    DIR* d = opendir("/proc/self/task");
    if (!d) {
      napi_throw_error(env, nullptr, strerror(errno));
      return nullptr;
    }
    while (struct dirent* e = readdir(d)) {
      pid_t tid = (pid_t)atoi(e->d_name);
      // A thread that exits meanwhile is no error: it no longer needs a cpu.
      if (tid > 0 && !is_relay_thread(tid)) sched_setaffinity(tid, sizeof one, &one);
    }
    closedir(d);
  }
  napi_value v;
  napi_create_int32(env, cpu, &v);
  return v;
}
