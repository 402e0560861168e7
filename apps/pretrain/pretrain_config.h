// The configuration of mira_pretrain: every key with its default (the schema), and the
// checks on values that the schema's kinds cannot express. Presets in configs/ override it.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "engine/config.h"

namespace mira::apps {

// Every key mira_pretrain accepts, with its default (ImageNet ResNet-50, the paper's recipe).
const Json& pretrain_schema();
// Range and consistency checks; errors name the key.
void validate_pretrain_config(const Json& cfg);

// The keys a multi-process run's ranks may set differently: where each rank finds its data and
// how it reads it (data.path, data.threads, data.prefetch), its collective timeout, and
// train.max_steps (a rank that stops early is reported by the others' collective timeout).
bool rank_local_key(const std::string& section, const std::string& key);

// One digest per top-level section (name, 52 bits as an exactly representable double) of
// every key but the rank-local ones: the ranks compare them at start-up, so a rank started with
// another --config or --set stops the run with an error naming the section before anything is
// written, instead of a hang or a silently different run.
std::vector<std::pair<std::string, double>> config_digests(const Json& cfg);

}  // namespace mira::apps
