// The configuration of mira_pretrain: every key with its default (the schema), and the
// checks on values that the schema's kinds cannot express. Presets in configs/ override it.
#pragma once

#include "engine/config.h"

namespace mira::apps {

// Every key mira_pretrain accepts, with its default (ImageNet ResNet-50, the paper's recipe).
const Json& pretrain_schema();
// Range and consistency checks; errors name the key.
void validate_pretrain_config(const Json& cfg);

}  // namespace mira::apps
