#include "durable.h"

#include <errno.h>
#include <limits.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <vector>

// Why not fs.promises' writev then datasync: each is its own pool job, so a commit wakes a pool
// thread twice and the JavaScript thread twice (two completions, two promises). Here a commit is
// one job and one callback. Byte-for-byte the same file contents.
namespace {

struct Job {
  napi_async_work work = nullptr;
  napi_ref done = nullptr;
  napi_ref buffers = nullptr;  // keeps the Buffers alive while the pool thread writes them
  int fd = -1;
  std::vector<struct iovec> iov;
  off_t position = 0;
  int err = 0;
  const char* syscall = nullptr;
};

void execute(napi_env, void* data) {
  Job* j = static_cast<Job*>(data);
  size_t first = 0;
  off_t at = j->position;
  while (first < j->iov.size()) {
    int n = (int)std::min(j->iov.size() - first, (size_t)IOV_MAX);
    ssize_t w = pwritev(j->fd, &j->iov[first], n, at);
    if (w < 0) {
      if (errno == EINTR) continue;
      j->err = errno, j->syscall = "pwritev";
      return;
    }
    if (w == 0) {
      j->err = EIO, j->syscall = "pwritev";  // no progress: never spin
      return;
    }
    at += w;
    size_t left = (size_t)w;
    while (first < j->iov.size() && left >= j->iov[first].iov_len) left -= j->iov[first++].iov_len;
    if (left) {
      j->iov[first].iov_base = static_cast<char*>(j->iov[first].iov_base) + left;
      j->iov[first].iov_len -= left;
    }
  }
  if (fdatasync(j->fd) != 0) j->err = errno, j->syscall = "fdatasync";
}

napi_value error_for(napi_env env, const Job& j) {
  const char* code = strerrorname_np(j.err);
  std::string text = std::string(code ? code : "EIO") + ": " + strerror(j.err) + ", " + j.syscall;
  napi_value msg, codev, err, sys;
  napi_create_string_utf8(env, text.c_str(), text.size(), &msg);
  napi_create_string_utf8(env, code ? code : "EIO", NAPI_AUTO_LENGTH, &codev);
  napi_create_error(env, codev, msg, &err);
  napi_create_string_utf8(env, j.syscall, NAPI_AUTO_LENGTH, &sys);
  napi_set_named_property(env, err, "syscall", sys);
  napi_value errnov;
  napi_create_int32(env, -j.err, &errnov);
  napi_set_named_property(env, err, "errno", errnov);
  return err;
}

void complete(napi_env env, napi_status, void* data) {
  Job* j = static_cast<Job*>(data);
  napi_value done, undefined, arg;
  napi_get_reference_value(env, j->done, &done);
  napi_get_undefined(env, &undefined);
  if (j->err) arg = error_for(env, *j);
  else napi_get_null(env, &arg);
  napi_delete_reference(env, j->done);
  napi_delete_reference(env, j->buffers);
  napi_delete_async_work(env, j->work);
  delete j;
  napi_call_function(env, undefined, done, 1, &arg, nullptr);
}

}  // namespace

napi_value write_durable_js(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  const char* usage = "writeDurable(fd: number, buffers: Buffer[], position: number, done: (err) => void)";
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc < 4) {
    napi_throw_type_error(env, nullptr, usage);
    return nullptr;
  }
  int32_t fd;
  double position;
  bool is_array;
  napi_valuetype done_type;
  napi_typeof(env, argv[3], &done_type);
  if (napi_get_value_int32(env, argv[0], &fd) != napi_ok || fd < 0 || napi_is_array(env, argv[1], &is_array) != napi_ok || !is_array ||
      napi_get_value_double(env, argv[2], &position) != napi_ok || !(position >= 0) || position > 9007199254740991.0 ||
      done_type != napi_function) {
    napi_throw_type_error(env, nullptr, usage);
    return nullptr;
  }
  uint32_t n;
  napi_get_array_length(env, argv[1], &n);
  auto* j = new Job();
  j->fd = fd;
  j->position = (off_t)position;
  j->iov.reserve(n);
  for (uint32_t i = 0; i < n; i++) {
    napi_value b;
    bool is_buffer = false;
    void* data;
    size_t len;
    if (napi_get_element(env, argv[1], i, &b) != napi_ok || napi_is_buffer(env, b, &is_buffer) != napi_ok || !is_buffer ||
        napi_get_buffer_info(env, b, &data, &len) != napi_ok) {
      delete j;
      napi_throw_type_error(env, nullptr, usage);
      return nullptr;
    }
    if (len) j->iov.push_back({data, len});
  }
  napi_value name;
  napi_create_string_utf8(env, "runguard:writeDurable", NAPI_AUTO_LENGTH, &name);
  if (napi_create_reference(env, argv[3], 1, &j->done) != napi_ok || napi_create_reference(env, argv[1], 1, &j->buffers) != napi_ok ||
      napi_create_async_work(env, nullptr, name, execute, complete, j, &j->work) != napi_ok || napi_queue_async_work(env, j->work) != napi_ok) {
    if (j->done) napi_delete_reference(env, j->done);
    if (j->buffers) napi_delete_reference(env, j->buffers);
    if (j->work) napi_delete_async_work(env, j->work);
    delete j;
    napi_throw_error(env, nullptr, "writeDurable: cannot queue the write");
    return nullptr;
  }
  return nullptr;
}
