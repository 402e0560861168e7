// Header-only so kernels/ may use it without linking the engine.
// Errors: library code throws mira::Error (never exits); only apps/ catch and turn an error
// into a message and a non-zero exit code. The message names the failed expression, the file
// and the line, so a fault deep in a kernel launch still points at its call site.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace mira {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

[[noreturn]] inline void throw_error(const char* file, int line, const char* expr, const std::string& msg) {
  std::ostringstream os;
  os << msg;
  if (expr && *expr) os << " [check failed: " << expr << "]";
  os << " (" << file << ":" << line << ")";
  throw Error(os.str());
}

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace mira

// MIRA_CHECK(cond, msg...): argument validation; the message parts are streamed together.
#define MIRA_CHECK(cond, ...)                                                                    \
  do {                                                                                           \
    if (!(cond)) ::mira::throw_error(__FILE__, __LINE__, #cond, ::mira::detail::concat(__VA_ARGS__)); \
  } while (0)

#define MIRA_FAIL(...) ::mira::throw_error(__FILE__, __LINE__, "", ::mira::detail::concat(__VA_ARGS__))
