#include "apps/common/cli.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <sstream>

#include "engine/error.h"
#include "engine/safetensors.h"

namespace mira::apps {

ArgParser::ArgParser(std::string prog, std::string summary) : prog_(std::move(prog)), summary_(std::move(summary)) {}

ArgParser& ArgParser::option(const std::string& name, const std::string& help, const std::string& default_value,
                             bool required) {
  MIRA_CHECK(!opts_.count(name), "option --", name, " declared twice");
  Opt o;
  o.help = help;
  o.value = default_value;
  o.required = required;
  opts_[name] = o;
  order_.push_back(name);
  return *this;
}

ArgParser& ArgParser::flag(const std::string& name, const std::string& help) {
  MIRA_CHECK(!opts_.count(name), "option --", name, " declared twice");
  Opt o;
  o.help = help;
  o.is_flag = true;
  opts_[name] = o;
  order_.push_back(name);
  return *this;
}

bool ArgParser::parse(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::fputs(usage().c_str(), stdout);
      return false;
    }
    MIRA_CHECK(a.size() > 2 && a.compare(0, 2, "--") == 0, "unexpected argument '", a, "' (see --help)");
    std::string name = a.substr(2), value;
    bool inline_value = false;
    const size_t eq = name.find('=');
    if (eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      inline_value = true;
    }
    auto it = opts_.find(name);
    MIRA_CHECK(it != opts_.end(), "unknown option --", name, " (see --help)");
    Opt& o = it->second;
    if (o.is_flag) {
      MIRA_CHECK(!inline_value, "option --", name, " takes no value");
      o.given = true;
      continue;
    }
    if (!inline_value) {
      MIRA_CHECK(i + 1 < argc, "option --", name, " needs a value");
      value = argv[++i];
    }
    o.value = value;
    o.given = true;
  }
  for (const auto& name : order_) {
    const Opt& o = opts_.at(name);
    MIRA_CHECK(!o.required || o.given, "missing required option --", name, " (see --help)");
  }
  return true;
}

const ArgParser::Opt& ArgParser::get(const std::string& name) const {
  auto it = opts_.find(name);
  MIRA_CHECK(it != opts_.end(), "internal: option --", name, " was never declared");
  return it->second;
}

bool ArgParser::has(const std::string& name) const {
  const Opt& o = get(name);
  return o.is_flag ? o.given : (o.given || !o.value.empty());
}
bool ArgParser::given(const std::string& name) const { return get(name).given; }
bool ArgParser::flag_set(const std::string& name) const { return get(name).given; }

std::string ArgParser::str(const std::string& name) const {
  const Opt& o = get(name);
  MIRA_CHECK(o.given || !o.value.empty(), "option --", name, " is required here (see --help)");
  return o.value;
}

int64_t parse_int(const std::string& s, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(s.c_str(), &end, 10);
  MIRA_CHECK(!s.empty() && end && *end == '\0' && errno == 0, what, ": '", s, "' is not an integer");
  return v;
}

double parse_double(const std::string& s, const std::string& what) {
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  MIRA_CHECK(!s.empty() && end && *end == '\0' && errno == 0, what, ": '", s, "' is not a number");
  return v;
}

int64_t ArgParser::integer(const std::string& name) const { return parse_int(str(name), "--" + name); }
double ArgParser::number(const std::string& name) const { return parse_double(str(name), "--" + name); }

std::vector<int64_t> ArgParser::integers(const std::string& name) const {
  std::vector<int64_t> out;
  std::stringstream ss(str(name));
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(parse_int(item, "--" + name));
  MIRA_CHECK(!out.empty(), "--", name, ": empty list");
  return out;
}

std::string ArgParser::usage() const {
  std::ostringstream os;
  os << "usage: " << prog_ << " [options]\n" << summary_ << "\n\noptions:\n";
  for (const auto& name : order_) {
    const Opt& o = opts_.at(name);
    std::string lhs = "  --" + name + (o.is_flag ? "" : " V");
    os << lhs;
    os << std::string(lhs.size() < 26 ? 26 - lhs.size() : 1, ' ') << o.help;
    if (o.required) os << " (required)";
    if (!o.is_flag && !o.value.empty()) os << " [" << o.value << "]";
    os << "\n";
  }
  os << "  --help                  print this help\n";
  return os.str();
}

void check_output_path(const std::string& option, const std::string& path) {
  namespace fs = std::filesystem;
  MIRA_CHECK(!path.empty(), option, ": empty path");
  std::error_code ec;
  const fs::path p(path);
  MIRA_CHECK(!fs::is_directory(p, ec), option, ": '", path, "' is a folder, not a file name");
  const fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
  MIRA_CHECK(fs::is_directory(dir, ec), option, ": cannot write '", path, "': its folder '", dir.string(),
             fs::exists(dir, ec) ? "' is not a folder" : "' does not exist");
}

void write_output_file(const std::string& option, const std::string& path, const std::string& text) {
  try {
    write_file_atomic(path, text);
  } catch (const std::exception& e) {
    MIRA_FAIL(option, ": cannot write '", path, "' (", e.what(), ")");
  }
}

int run_main(const std::function<int()>& body) {
  try {
    return body();
  } catch (const mira::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
  }
  return 1;
}

}  // namespace mira::apps
