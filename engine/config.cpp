#include "engine/config.h"

#include <fstream>
#include <sstream>

#include "engine/error.h"

namespace mira {

namespace {

const char* kind_name(const Json& v) {
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "a list";
  if (v.is_object()) return "an object";
  return "null";
}

// For error messages: invalid UTF-8 in a string (a --set value is raw command-line bytes) is
// shown replaced, since dump() would throw.
std::string show(const Json& v) { return v.dump(-1, ' ', false, Json::error_handler_t::replace); }

bool same_kind(const Json& def, const Json& v) {
  if (def.is_number()) return v.is_number() && !(def.is_number_integer() && v.is_number_float());
  if (def.is_null()) return true;  // optional value: anything
  return std::string(kind_name(def)) == kind_name(v);
}

void merge_into(Json& out, const Json& schema, const Json& user, const std::string& path, const std::string& where) {
  MIRA_CHECK(user.is_object(), where, ": ", path.empty() ? "the configuration" : "'" + path + "'", " must be an object");
  for (auto it = user.begin(); it != user.end(); ++it) {
    const std::string key = path.empty() ? it.key() : path + "." + it.key();
    MIRA_CHECK(schema.contains(it.key()), where, ": unknown configuration key '", key, "'");
    const Json& def = schema[it.key()];
    Json& slot = out[it.key()];
    if (def.is_object()) {
      merge_into(slot, def, it.value(), key, where);
    } else {
      MIRA_CHECK(same_kind(def, it.value()), where, ": '", key, "' must be ",
                 def.is_number_integer() ? "an integer" : kind_name(def), ", got ", show(it.value()));
      slot = it.value();
    }
  }
}

}  // namespace

Json merge_config(const Json& schema, const Json& base, const Json& user, const std::string& where) {
  Json out = base;
  merge_into(out, schema, user, "", where);
  return out;
}

void apply_overrides(Json& cfg, const Json& schema, const std::vector<std::string>& sets) {
  for (const std::string& s : sets) {
    const size_t eq = s.find('=');
    MIRA_CHECK(eq != std::string::npos && eq > 0, "--set '", s, "': expected key.path=value");
    const std::string key = s.substr(0, eq), text = s.substr(eq + 1);
    Json value;
    try {
      value = Json::parse(text);
    } catch (const std::exception&) {
      value = text;  // bare words are strings
      // ... that must be valid UTF-8: the config is written as JSON to the run directory and
      // into every checkpoint, and dumping an invalid string would fail there.
      try {
        (void)value.dump();
      } catch (const Json::type_error&) {
        MIRA_FAIL("--set '", key, "': the value is not valid UTF-8 text");
      }
    }
    // Build {"a": {"b": value}} and merge it, so overrides get the same checks as files.
    Json patch = value;
    std::vector<std::string> parts;
    std::stringstream ss(key);
    for (std::string part; std::getline(ss, part, '.');) {
      MIRA_CHECK(!part.empty(), "--set '", s, "': empty key component");
      parts.push_back(part);
    }
    for (auto it = parts.rbegin(); it != parts.rend(); ++it) patch = Json{{*it, patch}};
    cfg = merge_config(schema, cfg, patch, "--set " + key);
  }
}

Json read_json_file(const std::string& path) {
  std::ifstream in(path);
  MIRA_CHECK(in.good(), "cannot read configuration file ", path);
  try {
    return Json::parse(in, nullptr, true, true);  // comments allowed
  } catch (const std::exception& e) {
    MIRA_FAIL(path, ": invalid JSON: ", e.what());
  }
}

}  // namespace mira
