// Between ParamStores and safetensors files. Store names carry their owner ("backbone.conv1.
// weight", "projector.0.weight"); file names are the store names with an optional prefix
// ("ema." for the teacher), so `backbone.` + torchvision's names loads into
// torchvision.models.resnet50 after a prefix strip. 4-D tensors (conv weights) are OHWI in
// the store and OIHW (PyTorch's layout) in files; BN's num_batches_tracked are I64 scalars.
#pragma once

#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "models/layers.h"

namespace mira::models {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;

// Appends the store's tensors whose names start with `store_prefix`, renamed to
// file_prefix + (name without store_prefix), plus num_batches_tracked of `bns`.
void append_state(NamedTensors& out, const ParamStore& ps, const std::vector<BatchNorm*>& bns,
                  const std::string& store_prefix, const std::string& file_prefix);

struct LoadReport {
  std::vector<std::string> missing;     // in the store, not in the file
  std::vector<std::string> unexpected;  // in the file under file_prefix, not in the store
  std::vector<std::string> mismatched;  // shapes differ ("name: file [..] vs model [..]")
  int loaded = 0;
  bool ok() const { return missing.empty() && unexpected.empty() && mismatched.empty(); }
  std::string str() const;
};

// Copies matching tensors into the store (converted to its dtype and device). Nothing is
// written unless every shape matches; `ignore` lists file-name prefixes not to report as
// unexpected (e.g. "fc." of a torchvision classifier). With strict, any missing, unexpected
// or mismatched entry is an error listing them all.
LoadReport load_state(ParamStore& ps, const std::vector<BatchNorm*>& bns, const SafetensorsFile& file,
                      const std::string& store_prefix, const std::string& file_prefix, bool strict,
                      const std::vector<std::string>& ignore = {});

// OHWI <-> OIHW for (O, A, B, C)-shaped host tensors.
Tensor ohwi_to_oihw(const Tensor& w);
Tensor oihw_to_ohwi(const Tensor& w);

}  // namespace mira::models
