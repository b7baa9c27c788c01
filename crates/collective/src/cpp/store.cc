// A C interface to c10d's TCPStore (libtorch_cpu), the rendezvous store torchrun uses: rank 0
// serves it at MASTER_ADDR:MASTER_PORT, every rank (rank 0 included) is a client. Errors are
// C++ exceptions turned into a message in `err` and a nonzero return.
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

// c10's errors append libtorch's C++ stack trace to what(); the message goes without it.
static const char* message_of(const std::exception& e) {
  auto* c = dynamic_cast<const c10::Error*>(&e);
  return c != nullptr ? c->what_without_backtrace() : e.what();
}
#define FT_MESSAGE_OF(e) message_of(e)
#include "guarded.h"

#include <cstdlib>
#include <cstring>
#include <string>

namespace {

using ft::guarded;

struct Store {
  c10::intrusive_ptr<c10d::TCPStore> inner;
};

}  // namespace

extern "C" {

void* ft_store_new(const char* host, uint16_t port, int is_server, size_t world, int64_t timeout_ms, char* err, size_t errlen) {
  Store* out = nullptr;
  guarded(err, errlen, [&] {
    c10d::TCPStoreOptions o;
    o.port = port;
    o.isServer = is_server != 0;
    o.numWorkers = world;
    // Rank 0 must not wait in the constructor: it serves while the others start.
    o.waitWorkers = false;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    out = new Store{c10::make_intrusive<c10d::TCPStore>(std::string(host), o)};
  });
  return out;
}

void ft_store_free(void* s) { delete static_cast<Store*>(s); }

int ft_store_set(void* s, const char* key, const uint8_t* data, size_t len, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    std::vector<uint8_t> v(data, data + len);
    static_cast<Store*>(s)->inner->set(std::string(key), v);
  });
}

// Blocks until `key` is set (or the store's timeout passes); the bytes are malloc'd, the caller
// frees them.
int ft_store_get(void* s, const char* key, uint8_t** data, size_t* len, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    std::vector<uint8_t> v = static_cast<Store*>(s)->inner->get(std::string(key));
    *len = v.size();
    *data = static_cast<uint8_t*>(std::malloc(v.size() > 0 ? v.size() : 1));
    if (*data == nullptr) throw std::bad_alloc();
    std::memcpy(*data, v.data(), v.size());
  });
}

int ft_store_wait(void* s, const char* key, int64_t timeout_ms, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    static_cast<Store*>(s)->inner->wait({std::string(key)}, std::chrono::milliseconds(timeout_ms));
  });
}

int ft_store_check(void* s, const char* key, int* present, char* err, size_t errlen) {
  return guarded(err, errlen, [&] { *present = static_cast<Store*>(s)->inner->check({std::string(key)}) ? 1 : 0; });
}

}  // extern "C"
