// A small command-line parser for the apps. Options are declared with a help line; `--name
// value` and `--name=value` both work; an unknown option, a missing value or a missing
// required option is a mira::Error; `--help` prints the usage. run_main() is the apps' top
// level: it turns any error into "error: ..." on stderr and exit code 1.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <vector>

namespace mira::apps {

class ArgParser {
 public:
  ArgParser(std::string prog, std::string summary);
  // A value option; an empty default means "not set" unless given.
  ArgParser& option(const std::string& name, const std::string& help, const std::string& default_value = "",
                    bool required = false);
  // A switch without a value.
  ArgParser& flag(const std::string& name, const std::string& help);

  // Returns false when --help was given (usage printed to stdout); the app then exits 0.
  bool parse(int argc, char** argv);

  bool has(const std::string& name) const;  // given, or set by a non-empty default
  bool given(const std::string& name) const;  // given on the command line
  bool flag_set(const std::string& name) const;
  std::string str(const std::string& name) const;  // error when not set
  int64_t integer(const std::string& name) const;
  double number(const std::string& name) const;
  std::vector<int64_t> integers(const std::string& name) const;  // "10,20,100"
  std::string usage() const;

 private:
  struct Opt {
    std::string help, value;
    bool is_flag = false, required = false, given = false;
  };
  const Opt& get(const std::string& name) const;
  std::string prog_, summary_;
  std::vector<std::string> order_;
  std::map<std::string, Opt> opts_;
};

// Parses integers / numbers with the option's name in the error message.
int64_t parse_int(const std::string& s, const std::string& what);
double parse_double(const std::string& s, const std::string& what);

// Writes an output file the user named with `option` (e.g. "--json") as a whole or not at all:
// a temp file next to it, then a rename, so a full disk leaves any earlier file at that path
// intact. The error names the option and the reason.
void write_output_file(const std::string& option, const std::string& path, const std::string& text);

// Before any long work: an output path the user named with `option` can be created (its folder
// exists and is a folder; the path itself is not a folder). Throws mira::Error naming both.
void check_output_path(const std::string& option, const std::string& path);

// Runs body; mira::Error and std::exception become "error: <message>" and exit code 1.
int run_main(const std::function<int()>& body);

}  // namespace mira::apps
