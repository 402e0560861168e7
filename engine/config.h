// Configuration: JSON (nlohmann/json) checked against a schema of defaults. Every key a user
// writes must exist in the schema with a value of the same kind (numbers may be given as
// integers for float keys); unknown keys and wrong types are errors naming the key path.
// `--set a.b=value` overrides parse the value as JSON when it is valid JSON, else as a string.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace mira {

using Json = nlohmann::json;

// Merges `user` into a copy of `base` (a complete configuration), checking every key and
// value kind against `schema` (the defaults); `where` names the source in error messages.
Json merge_config(const Json& schema, const Json& base, const Json& user, const std::string& where);
inline Json merge_config(const Json& defaults, const Json& user, const std::string& where) {
  return merge_config(defaults, defaults, user, where);
}
// Applies "key.path=value" overrides to cfg, checked against schema.
void apply_overrides(Json& cfg, const Json& schema, const std::vector<std::string>& sets);
// Reads a JSON file (error names the file and the parse position).
Json read_json_file(const std::string& path);

}  // namespace mira
