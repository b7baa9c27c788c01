// Turns a C++ exception into a message in a caller's buffer and a nonzero return, for the C
// interfaces of store.cc and gloo.cc. A file may define FT_MESSAGE_OF(e) before including this
// to say what an exception's message is (store.cc leaves out libtorch's stack trace).
#pragma once

#include <cstring>
#include <exception>

#ifndef FT_MESSAGE_OF
#define FT_MESSAGE_OF(e) ((e).what())
#endif

namespace ft {

inline void fail(char* err, size_t len, const char* what) {
  if (err != nullptr && len > 0) {
    std::strncpy(err, what, len - 1);
    err[len - 1] = '\0';
  }
}

template <typename F>
int guarded(char* err, size_t len, F&& f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    fail(err, len, FT_MESSAGE_OF(e));
  } catch (...) {
    fail(err, len, "unknown C++ exception");
  }
  return 1;
}

}  // namespace ft
