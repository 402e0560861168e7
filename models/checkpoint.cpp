#include "models/checkpoint.h"

#include <algorithm>
#include <set>
#include <cstring>
#include <sstream>

#include "kernels/cpu/pointwise.h"

namespace mira::models {

namespace {

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }

// Permutes a host tensor of shape (O, d1, d2, d3) with element (o, a, b, c) going to
// (o, c, a, b) when `to_oihw` (OHWI -> OIHW), or back.
Tensor permute4(const Tensor& w, bool to_oihw) {
  Tensor h = w.to(Device::cpu(), w.dtype() == DType::BF16 ? DType::F32 : w.dtype());
  const int64_t O = h.dim(0), A = h.dim(1), B = h.dim(2), C = h.dim(3);
  Shape out_shape = to_oihw ? Shape{O, C, A, B} : Shape{O, B, C, A};
  Tensor out = Tensor::empty(out_shape, h.dtype());
  const size_t es = dtype_size(h.dtype());
  const char* src = static_cast<const char*>(h.raw());
  char* dst = static_cast<char*>(out.raw());
  for (int64_t o = 0; o < O; ++o)
    for (int64_t a = 0; a < A; ++a)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t s = ((o * A + a) * B + b) * C + c;
          // OHWI (o,a=h,b=w,c=i) -> OIHW (o,c,a,b); OIHW (o,a=i,b=h,c=w) -> OHWI (o,b,c,a)
          const int64_t d = to_oihw ? ((o * C + c) * A + a) * B + b : ((o * B + b) * C + c) * A + a;
          std::memcpy(dst + d * es, src + s * es, es);
        }
  return out;
}

}  // namespace

Tensor ohwi_to_oihw(const Tensor& w) { return permute4(w, true); }
Tensor oihw_to_ohwi(const Tensor& w) { return permute4(w, false); }

void append_state(NamedTensors& out, const ParamStore& ps, const std::vector<BatchNorm*>& bns,
                  const std::string& store_prefix, const std::string& file_prefix) {
  for (const ParamStore::Entry& e : ps.entries()) {
    if (!starts_with(e.name, store_prefix)) continue;
    const std::string name = file_prefix + e.name.substr(store_prefix.size());
    Tensor t = e.view.detach();
    out.emplace_back(name, t.ndim() == 4 ? ohwi_to_oihw(t) : t.to(Device::cpu()));
  }
  for (const BatchNorm* bn : bns) {
    if (!starts_with(bn->name(), store_prefix)) continue;
    const std::string name = file_prefix + bn->name().substr(store_prefix.size()) + ".num_batches_tracked";
    out.emplace_back(name, Tensor::full({}, static_cast<double>(bn->num_batches_tracked), DType::I64));
  }
}

std::string LoadReport::str() const {
  std::ostringstream os;
  auto list = [&](const char* what, const std::vector<std::string>& v) {
    if (v.empty()) return;
    os << v.size() << " " << what << ":";
    for (size_t i = 0; i < v.size() && i < 20; ++i) os << " " << v[i];
    if (v.size() > 20) os << " ...";
    os << "; ";
  };
  list("missing", missing);
  list("unexpected", unexpected);
  list("mismatched", mismatched);
  os << loaded << " loaded";
  return os.str();
}

LoadReport load_state(ParamStore& ps, const std::vector<BatchNorm*>& bns, const SafetensorsFile& file,
                      const std::string& store_prefix, const std::string& file_prefix, bool strict,
                      const std::vector<std::string>& ignore) {
  LoadReport rep;
  std::set<std::string> used;
  std::vector<std::pair<const ParamStore::Entry*, Tensor>> plan;
  for (const ParamStore::Entry& e : ps.entries()) {
    if (!starts_with(e.name, store_prefix)) continue;
    const std::string name = file_prefix + e.name.substr(store_prefix.size());
    auto it = file.tensors.find(name);
    if (it == file.tensors.end()) {
      rep.missing.push_back(name);
      continue;
    }
    used.insert(name);
    Tensor src = it->second;
    if (src.ndim() == 4) src = oihw_to_ohwi(src);
    if (src.shape() != e.shape) {
      rep.mismatched.push_back(name + ": file " + it->second.shape().str() + " vs model " +
                               (e.shape.ndim() == 4 ? ohwi_to_oihw(e.view.detach()).shape().str() : e.shape.str()));
      continue;
    }
    plan.emplace_back(&e, src);
  }
  std::vector<std::pair<BatchNorm*, int64_t>> counts;
  for (BatchNorm* bn : bns) {
    if (!starts_with(bn->name(), store_prefix)) continue;
    const std::string name = file_prefix + bn->name().substr(store_prefix.size()) + ".num_batches_tracked";
    auto it = file.tensors.find(name);
    if (it == file.tensors.end()) {
      rep.missing.push_back(name);
      continue;
    }
    used.insert(name);
    if (it->second.numel() != 1) {
      rep.mismatched.push_back(name + ": file " + it->second.shape().str() + " vs model []");
      continue;
    }
    counts.emplace_back(bn, static_cast<int64_t>(it->second.item()));
  }
  for (const auto& entry : file.tensors) {
    const std::string& name = entry.first;  // not a structured binding: clang < 16 cannot capture one
    if (!starts_with(name, file_prefix) || used.count(name)) continue;
    const bool ignored = std::any_of(ignore.begin(), ignore.end(), [&](const std::string& p) {
      return starts_with(name, file_prefix + p) || starts_with(name, p);
    });
    if (!ignored) rep.unexpected.push_back(name);
  }
  if (strict && !rep.ok()) MIRA_FAIL("checkpoint does not match the model: ", rep.str());
  if (!rep.mismatched.empty()) MIRA_FAIL("checkpoint shapes do not match the model: ", rep.str());
  for (auto& [e, src] : plan) {
    e->view.copy_(src);
    ++rep.loaded;
  }
  for (auto& [bn, n] : counts) bn->num_batches_tracked = n;
  return rep;
}

}  // namespace mira::models
