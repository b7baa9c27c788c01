// A C interface to Gloo (Debian's libgloo-dev): a full-mesh TCP context made through a
// rendezvous store whose operations are callbacks (the Rust side forwards them to c10d's
// TCPStore), and the three collectives training needs. Built as its own shared library and
// loaded with RTLD_DEEPBIND: libtorch_cpu exports a different Gloo under the same names.
#include <gloo/allreduce.h>
#include <gloo/barrier.h>
#include <gloo/broadcast.h>
#include <gloo/math.h>
#include <gloo/rendezvous/context.h>
#include <gloo/rendezvous/store.h>
#include <gloo/transport/tcp/device.h>

#include "guarded.h"

#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>

extern "C" {
struct ft_store_callbacks {
  void* user;
  int (*set)(void* user, const char* key, const uint8_t* data, size_t len);
  // Blocks until the key is set; the bytes are malloc'd and freed here.
  int (*get)(void* user, const char* key, uint8_t** data, size_t* len);
  int (*wait)(void* user, const char* key, int64_t timeout_ms);
};
}

namespace {

using ft::guarded;

class CallbackStore : public gloo::rendezvous::Store {
 public:
  explicit CallbackStore(ft_store_callbacks cb) : cb_(cb) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    if (cb_.set(cb_.user, key.c_str(), reinterpret_cast<const uint8_t*>(data.data()), data.size()) != 0) {
      throw gloo::Exception("rendezvous store: setting " + key + " failed");
    }
  }

  std::vector<char> get(const std::string& key) override {
    uint8_t* data = nullptr;
    size_t len = 0;
    if (cb_.get(cb_.user, key.c_str(), &data, &len) != 0) {
      throw gloo::Exception("rendezvous store: reading " + key + " failed");
    }
    std::vector<char> out(reinterpret_cast<char*>(data), reinterpret_cast<char*>(data) + len);
    std::free(data);
    return out;
  }

  void wait(const std::vector<std::string>& keys) override { wait(keys, kDefaultTimeout); }

  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    for (const auto& k : keys) {
      if (cb_.wait(cb_.user, k.c_str(), timeout.count()) != 0) {
        throw gloo::Exception("rendezvous store: waiting for " + k + " failed");
      }
    }
  }

 private:
  ft_store_callbacks cb_;
};

struct Group {
  std::shared_ptr<gloo::Context> ctx;
  uint32_t tag = 0;
};

}  // namespace

extern "C" {

// `hostname` is the address this rank listens on (and peers connect to), or empty to use
// the network interface `iface`.
void* ft_gloo_new(int rank, int size, int64_t timeout_ms, ft_store_callbacks cb, const char* hostname, const char* iface, char* err, size_t errlen) {
  Group* out = nullptr;
  guarded(err, errlen, [&] {
    gloo::transport::tcp::attr attr;
    if (iface != nullptr && iface[0] != '\0') {
      attr.iface = iface;
    } else {
      attr.hostname = hostname;
    }
    auto device = gloo::transport::tcp::CreateDevice(attr);
    auto ctx = std::make_shared<gloo::rendezvous::Context>(rank, size);
    ctx->setTimeout(std::chrono::milliseconds(timeout_ms));
    CallbackStore store(cb);
    ctx->connectFullMesh(store, device);
    out = new Group{ctx};
  });
  return out;
}

void ft_gloo_free(void* g) { delete static_cast<Group*>(g); }

int ft_gloo_allreduce_sum_f32(void* g, float* data, size_t n, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* grp = static_cast<Group*>(g);
    gloo::AllreduceOptions opts(grp->ctx);
    opts.setOutput(data, n);
    opts.setReduceFunction(static_cast<void (*)(void*, const void*, const void*, size_t)>(&gloo::sum<float>));
    opts.setTag(grp->tag++);
    gloo::allreduce(opts);
  });
}

int ft_gloo_broadcast(void* g, uint8_t* data, size_t n, int root, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* grp = static_cast<Group*>(g);
    gloo::BroadcastOptions opts(grp->ctx);
    opts.setOutput(data, n);
    opts.setRoot(root);
    opts.setTag(grp->tag++);
    gloo::broadcast(opts);
  });
}

int ft_gloo_barrier(void* g, char* err, size_t errlen) {
  return guarded(err, errlen, [&] {
    auto* grp = static_cast<Group*>(g);
    gloo::BarrierOptions opts(grp->ctx);
    opts.setTag(grp->tag++);
    gloo::barrier(opts);
  });
}

}  // extern "C"
