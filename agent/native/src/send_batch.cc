// See send_batch.h. io_uring through its system calls directly (no liburing): one ring per relay
// thread, used only by that thread, with SQ entries that each send a caller's buffer.
#include "send_batch.h"

#include <errno.h>
#include <linux/io_uring.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>

namespace {

// Sends per io_uring_enter; a turn with more submits several chunks.
constexpr unsigned kRingEntries = 64;
// io_uring's sqe->len is 32 bits; a longer pending buffer goes out in several turns anyway.
constexpr size_t kMaxSendLen = 1u << 30;
// An entry submitted whose completion has not come yet (no send returns this).
constexpr long kUnsettled = -(1L << 40);

int sys_io_uring_setup(unsigned entries, struct io_uring_params* p) {
  return (int)syscall(__NR_io_uring_setup, entries, p);
}

int sys_io_uring_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
  return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, nullptr, 0);
}

template <typename T>
T* at(void* base, uint32_t off) {
  return reinterpret_cast<T*>(static_cast<char*>(base) + off);
}

}  // namespace

SendBatch::SendBatch(bool use_ring) {
  if (use_ring && !setup()) {
    if (ring_fd_ >= 0) close(ring_fd_);
    ring_fd_ = -1;
  }
}

SendBatch::~SendBatch() {
  if (sqes_map_) munmap(sqes_map_, sqes_map_len_);
  if (cq_map_ && cq_map_ != sq_map_) munmap(cq_map_, cq_map_len_);
  if (sq_map_) munmap(sq_map_, sq_map_len_);
  if (ring_fd_ >= 0) close(ring_fd_);
}

bool SendBatch::setup() {
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  // SUBMIT_ALL: a send that fails is reported in its completion and the rest still go (the ring
  // then never keeps unconsumed entries). Kernels without it (before 5.18) take the plain path.
  p.flags = IORING_SETUP_SUBMIT_ALL;
  ring_fd_ = sys_io_uring_setup(kRingEntries, &p);
  if (ring_fd_ < 0) return false;
  if (!(p.features & IORING_FEAT_NODROP)) return false;
  sq_entries_ = p.sq_entries;
  sq_map_len_ = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  cq_map_len_ = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
  bool single = p.features & IORING_FEAT_SINGLE_MMAP;
  if (single) sq_map_len_ = cq_map_len_ = std::max(sq_map_len_, cq_map_len_);
  sq_map_ = mmap(nullptr, sq_map_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd_, IORING_OFF_SQ_RING);
  if (sq_map_ == MAP_FAILED) return sq_map_ = nullptr, false;
  if (single) {
    cq_map_ = sq_map_;
  } else {
    cq_map_ = mmap(nullptr, cq_map_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd_, IORING_OFF_CQ_RING);
    if (cq_map_ == MAP_FAILED) return cq_map_ = nullptr, false;
  }
  sqes_map_len_ = p.sq_entries * sizeof(struct io_uring_sqe);
  sqes_map_ = mmap(nullptr, sqes_map_len_, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd_, IORING_OFF_SQES);
  if (sqes_map_ == MAP_FAILED) return sqes_map_ = nullptr, false;
  sq_head_ = at<unsigned>(sq_map_, p.sq_off.head);
  sq_tail_ = at<unsigned>(sq_map_, p.sq_off.tail);
  sq_mask_ = at<unsigned>(sq_map_, p.sq_off.ring_mask);
  sq_array_ = at<unsigned>(sq_map_, p.sq_off.array);
  cq_head_ = at<unsigned>(cq_map_, p.cq_off.head);
  cq_tail_ = at<unsigned>(cq_map_, p.cq_off.tail);
  cq_mask_ = at<unsigned>(cq_map_, p.cq_off.ring_mask);
  cqes_ = at<void>(cq_map_, p.cq_off.cqes);
  sqes_ = sqes_map_;
  return true;
}

std::vector<SendBatch::Entry>& SendBatch::run() {
  size_t i = 0;
  while (i < entries_.size() && ring_fd_ >= 0) {
    size_t n = std::min<size_t>(sq_entries_, entries_.size() - i);
    size_t done = submit_chunk(i, n);
    i += done;
    if (done < n) break;  // the ring failed before taking these: they go the plain way
  }
  run_plain(i);
  return entries_;
}

// Submits entries [from, from + count) and waits for all of their completions. Returns how many
// entries it settled (each with a result): count, or 0 when the ring failed before the kernel took
// any of them (the caller then sends them the plain way). A send the kernel took is never sent
// again: should the ring fail after taking some, those it did not report end with -EIO, which ends
// their sessions instead of risking the same bytes twice.
size_t SendBatch::submit_chunk(size_t from, size_t count) {
  auto* sqes = static_cast<struct io_uring_sqe*>(sqes_);
  auto* cqes = static_cast<struct io_uring_cqe*>(cqes_);
  const unsigned base = *sq_tail_;  // only this thread writes it; the kernel has taken all before it
  unsigned tail = base;
  for (size_t k = 0; k < count; k++) {
    const Entry& e = entries_[from + k];
    unsigned idx = tail & *sq_mask_;
    struct io_uring_sqe* sqe = &sqes[idx];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_SEND;
    sqe->fd = e.fd;
    sqe->addr = (uint64_t)(uintptr_t)e.data;
    sqe->len = (uint32_t)std::min(e.len, kMaxSendLen);
    // DONTWAIT: fail with -EAGAIN rather than park the request until the socket has room.
    sqe->msg_flags = MSG_NOSIGNAL | MSG_DONTWAIT;
    sqe->user_data = k;
    sq_array_[idx] = idx;
    entries_[from + k].result = kUnsettled;
    tail++;
  }
  __atomic_store_n(sq_tail_, tail, __ATOMIC_RELEASE);

  size_t reaped = 0;
  while (reaped < count) {
    unsigned taken = __atomic_load_n(sq_head_, __ATOMIC_ACQUIRE) - base;
    int r = sys_io_uring_enter(ring_fd_, (unsigned)count - taken, (unsigned)(count - reaped), IORING_ENTER_GETEVENTS);
    int err = r < 0 ? errno : 0;
    unsigned head = *cq_head_;
    unsigned ctail = __atomic_load_n(cq_tail_, __ATOMIC_ACQUIRE);
    for (; head != ctail; head++) {
      const struct io_uring_cqe& c = cqes[head & *cq_mask_];
      if (c.user_data < count && entries_[from + c.user_data].result == kUnsettled) {
        entries_[from + c.user_data].result = c.res;
        reaped++;
      }
    }
    __atomic_store_n(cq_head_, head, __ATOMIC_RELEASE);
    if (err == 0 || err == EINTR) continue;
    // The ring is unusable: this and every later turn goes the plain way.
    taken = __atomic_load_n(sq_head_, __ATOMIC_ACQUIRE) - base;
    close(ring_fd_);
    ring_fd_ = -1;
    if (taken == 0 && reaped == 0) return 0;
    for (size_t k = 0; k < count; k++) {
      if (entries_[from + k].result == kUnsettled) entries_[from + k].result = -EIO;
    }
    return count;
  }
  return count;
}

void SendBatch::run_plain(size_t from) {
  for (size_t i = from; i < entries_.size(); i++) {
    Entry& e = entries_[i];
    ssize_t w;
    do w = send(e.fd, e.data, e.len, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (w < 0 && errno == EINTR);
    e.result = w < 0 ? -errno : (long)w;
  }
}
