// Many sends, to many sockets, in one system call (io_uring), for the relay's event loop.
//
// Why: on this kind of host a send() that wakes the process at the other end (a PostgreSQL backend,
// a job's client) usually hands it the cpu when the syscall returns; the relay then waits, often
// 30-80 us, before it forwards the next session's bytes that were already in hand from the same
// epoll_wait. Measured with sched tracepoints, the relay (and pgbouncer alike) spent a third of its
// time preempted that way. Submitting every send of one loop turn together means one return to user
// space, so at most one such handover per turn; the wakeups all happen inside the one call. The relay
// batches its sends to servers only (relay.cc defer_flush says why).
//
// Each send is non-blocking (MSG_DONTWAIT: io_uring then fails it with -EAGAIN instead of waiting
// for room), so the call never sleeps and the results are exactly what send(2) would have returned.
// Where io_uring is unavailable (an older kernel, kernel.io_uring_disabled, a seccomp profile that
// denies it) the batch falls back to one send(2) per entry: same results, no batching.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

class SendBatch {
 public:
  struct Entry {
    int fd;
    const uint8_t* data;
    size_t len;
    uint64_t tag;    // the caller's, returned unchanged
    long result;     // bytes sent, or -errno (as send(2) would have set it)
  };

  // use_ring false: never tries io_uring (one send(2) each).
  explicit SendBatch(bool use_ring);
  ~SendBatch();
  SendBatch(const SendBatch&) = delete;
  SendBatch& operator=(const SendBatch&) = delete;

  // Queues a send; nothing is written until run().
  void add(int fd, const uint8_t* data, size_t len, uint64_t tag) { entries_.push_back({fd, data, len, tag, 0}); }
  bool empty() const { return entries_.empty(); }
  size_t size() const { return entries_.size(); }
  const Entry& front() const { return entries_.front(); }
  // Performs every queued send and fills in each entry's result; the entries stay readable until
  // clear(). The buffers must stay valid until run() returns.
  std::vector<Entry>& run();
  void clear() { entries_.clear(); }
  // Whether the sends go through io_uring (false: one send(2) each).
  bool batched() const { return ring_fd_ >= 0; }

 private:
  bool setup();
  size_t submit_chunk(size_t from, size_t count);
  void run_plain(size_t from);

  std::vector<Entry> entries_;
  int ring_fd_ = -1;
  unsigned sq_entries_ = 0;
  // Mapped ring pieces (see io_uring_setup(2)).
  void* sq_map_ = nullptr;
  size_t sq_map_len_ = 0;
  void* cq_map_ = nullptr;
  size_t cq_map_len_ = 0;
  void* sqes_map_ = nullptr;
  size_t sqes_map_len_ = 0;
  unsigned* sq_head_ = nullptr;
  unsigned* sq_tail_ = nullptr;
  unsigned* sq_mask_ = nullptr;
  unsigned* sq_array_ = nullptr;
  unsigned* cq_head_ = nullptr;
  unsigned* cq_tail_ = nullptr;
  unsigned* cq_mask_ = nullptr;
  void* cqes_ = nullptr;
  void* sqes_ = nullptr;
};
