#include "apps/common/features.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <set>
#include <sstream>

#include "engine/autograd.h"
#include "models/checkpoint.h"

namespace mira::apps {

namespace {

bool starts_with(const std::string& s, const std::string& p) {
  return s.compare(0, p.size(), p) == 0;
}

const Tensor* find(const SafetensorsFile& f, const std::string& name) {
  auto it = f.tensors.find(name);
  return it == f.tensors.end() ? nullptr : &it->second;
}

std::string top_prefixes(const SafetensorsFile& f) {
  std::set<std::string> p;
  for (const auto& kv : f.tensors) {
    const std::string& n = kv.first;
    size_t dot = n.find('.');
    if (starts_with(n, "ema.") && dot != std::string::npos) dot = n.find('.', dot + 1);
    p.insert(dot == std::string::npos ? n : n.substr(0, dot + 1));
    if (p.size() > 12) break;
  }
  std::string out;
  for (const auto& s : p) out += (out.empty() ? "" : ", ") + s;
  return out;
}

std::string join(const std::vector<int>& v) {
  std::string s;
  for (size_t i = 0; i < v.size(); ++i) s += (i ? "," : "") + std::to_string(v[i]);
  return s;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

std::string backbone_prefix(const SafetensorsFile& f, const std::string& which, const std::string& path) {
  MIRA_CHECK(which == "ema" || which == "online", "--which must be ema or online, not '", which, "'");
  const std::string want = which == "ema" ? "ema.backbone." : "backbone.";
  if (find(f, want + "conv1.weight")) return want;
  const bool ours = find(f, "backbone.conv1.weight") || find(f, "ema.backbone.conv1.weight");
  if (!ours && find(f, "conv1.weight")) return "";  // plain torchvision state dict
  MIRA_FAIL("checkpoint '", path, "' has no ", which == "ema" ? "EMA " : "online ", "backbone (no '", want,
            "conv1.weight'); it holds: ", top_prefixes(f));
}

bool same_architecture(const models::ResNetConfig& a, const models::ResNetConfig& b) {
  return a.bottleneck == b.bottleneck && a.blocks == b.blocks && a.widths == b.widths && a.stem_width == b.stem_width &&
         a.cifar_stem == b.cifar_stem;
}

models::ResNetConfig infer_resnet_config(const SafetensorsFile& f, const std::string& prefix, int cifar_stem_padding) {
  const Tensor* c1 = find(f, prefix + "conv1.weight");
  MIRA_CHECK(c1 && c1->ndim() == 4, "no 4-d '", prefix, "conv1.weight' in the checkpoint");
  models::ResNetConfig c;
  c.stem_width = static_cast<int>(c1->dim(0));
  c.cifar_stem = c1->dim(2) == 3;
  c.cifar_stem_padding = cifar_stem_padding;
  c.bottleneck = find(f, prefix + "layer1.0.conv3.weight") != nullptr;
  c.widths.clear();
  c.blocks.clear();
  for (int L = 1;; ++L) {
    const std::string layer = prefix + "layer" + std::to_string(L) + ".";
    const Tensor* w = find(f, layer + "0.conv1.weight");
    if (!w) break;
    int b = 0;
    while (find(f, layer + std::to_string(b) + ".conv1.weight")) ++b;
    c.widths.push_back(static_cast<int>(w->dim(0)));
    c.blocks.push_back(b);
  }
  MIRA_CHECK(!c.widths.empty(), "no '", prefix, "layer1.0.conv1.weight' in the checkpoint: not a ResNet");
  c.arch = "custom";
  for (const char* name : {"resnet18", "resnet50", "resnet_tiny"}) {
    models::ResNetConfig p = models::ResNetConfig::from_name(name);
    p.cifar_stem = c.cifar_stem;
    if (same_architecture(p, c)) c.arch = name;
  }
  return c;
}

std::string describe(const models::ResNetConfig& c) {
  std::ostringstream os;
  os << c.arch << " (" << (c.cifar_stem ? "CIFAR stem, " : "ImageNet stem, ")
     << (c.bottleneck ? "Bottleneck [" : "BasicBlock [") << join(c.blocks) << "], widths [" << join(c.widths) << "], "
     << c.feature_dim() << "-d features)";
  return os.str();
}

Backbone::Backbone(const models::ResNetConfig& cfg, Device device) : cfg_(cfg), device_(device) {
  ps_ = std::make_unique<ParamStore>(device, DType::F32);
  net_ = std::make_unique<models::ResNet>(*ps_, cfg, "");
  ps_->finalize();
}

void Backbone::init(uint64_t seed) {
  net_->init(seed);
}

void Backbone::load(const SafetensorsFile& f, const std::string& prefix, const std::string& path) {
  models::LoadReport rep =
      models::load_state(*ps_, net_->batch_norms(), f, "", prefix, false,
                         prefix.empty() ? std::vector<std::string>{"fc."} : std::vector<std::string>{});
  std::vector<std::string> missing;
  for (const auto& m : rep.missing)
    if (m.find("num_batches_tracked") == std::string::npos) missing.push_back(m);
  rep.missing = missing;
  MIRA_CHECK(rep.ok(), "checkpoint '", path, "' does not match a ", describe(cfg_), " under prefix '", prefix,
             "': ", rep.str());
}

Tensor Backbone::features(const Tensor& x) {
  NoGradGuard ng;
  Tensor in = x.device() == device_ ? x : x.to(device_);
  return net_->forward(in, false);
}

std::unique_ptr<Backbone> open_backbone(const BackboneOptions& opt, int image_size) {
  std::unique_ptr<Backbone> net;
  if (!opt.checkpoint.empty()) {
    MIRA_CHECK(std::filesystem::is_regular_file(opt.checkpoint), "checkpoint '", opt.checkpoint,
               "' does not exist or is not a file");
    SafetensorsFile f = load_safetensors(opt.checkpoint);
    const std::string prefix = backbone_prefix(f, opt.which, opt.checkpoint);
    models::ResNetConfig cfg = infer_resnet_config(f, prefix, opt.cifar_stem_padding);
    if (!opt.arch.empty()) {
      models::ResNetConfig want = models::ResNetConfig::from_name(opt.arch);
      want.cifar_stem = cfg.cifar_stem;
      MIRA_CHECK(same_architecture(want, cfg), "checkpoint '", opt.checkpoint, "' holds a ", describe(cfg), " under '",
                 prefix, "', not a ", opt.arch);
    }
    net = std::make_unique<Backbone>(cfg, opt.device);
    if (opt.random_init) {
      net->init(opt.seed);
      std::fprintf(stderr, "backbone: random init (seed %llu) of the architecture of %s: %s\n",
                   static_cast<unsigned long long>(opt.seed), opt.checkpoint.c_str(), describe(cfg).c_str());
    } else {
      net->load(f, prefix, opt.checkpoint);
      std::fprintf(stderr, "backbone: %s from %s under '%s'\n", describe(cfg).c_str(), opt.checkpoint.c_str(),
                   prefix.c_str());
    }
  } else {
    MIRA_CHECK(opt.random_init && !opt.arch.empty(), "give --checkpoint, or --random-init with --arch");
    models::ResNetConfig cfg = models::ResNetConfig::from_name(opt.arch);
    if (opt.cifar_stem >= 0)
      cfg.cifar_stem = opt.cifar_stem == 1;
    else
      cfg.cifar_stem = image_size <= 64;
    cfg.cifar_stem_padding = opt.cifar_stem_padding;
    net = std::make_unique<Backbone>(cfg, opt.device);
    net->init(opt.seed);
    std::fprintf(stderr, "backbone: random init (seed %llu): %s\n", static_cast<unsigned long long>(opt.seed),
                 describe(cfg).c_str());
  }
  return net;
}

Tensor extract_features(Backbone& net, const data::Dataset& ds, const EvalTransform& t, int64_t batch,
                        const std::string& what) {
  return extract_features([&](const Tensor& x) { return net.features(x); }, net.feature_dim(), ds, t, batch, what);
}

Tensor extract_features(const std::function<Tensor(const Tensor&)>& fn, int feature_dim, const data::Dataset& ds,
                        const EvalTransform& t, int64_t batch, const std::string& what) {
  MIRA_CHECK(batch > 0, "batch size must be positive");
  const int64_t n = ds.size();
  Tensor out = Tensor::empty({n, feature_dim});
  Progress prog(what, n);
  std::vector<int64_t> idx;
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t e = std::min(n, b + batch);
    idx.resize(e - b);
    for (int64_t i = b; i < e; ++i) idx[i - b] = i;
    Tensor x = eval_transform_batch(ds, t, idx);
    Tensor f;
    {
      NoGradGuard ng;
      f = fn(x);
    }
    MIRA_CHECK(f.ndim() == 2 && f.dim(0) == e - b && f.dim(1) == feature_dim, "feature function returned ", f.str(),
               " for a batch of ", e - b, " (expected ", feature_dim, "-d features)");
    out.slice_batch(b, e).copy_(f);
    prog.update(e);
  }
  prog.finish();
  return out;
}

Tensor extract_features(Backbone& net, const Tensor& images, int64_t batch, const std::string& what) {
  MIRA_CHECK(batch > 0, "batch size must be positive");
  MIRA_CHECK(images.ndim() == 4 && images.dim(3) == 3 && images.dtype() == DType::F32,
             "images must be an (N, H, W, 3) f32 array, got ", images.str());
  const int64_t n = images.dim(0);
  Tensor out = Tensor::empty({n, net.feature_dim()});
  Progress prog(what, n);
  for (int64_t b = 0; b < n; b += batch) {
    const int64_t e = std::min(n, b + batch);
    out.slice_batch(b, e).copy_(net.features(images.slice_batch(b, e)));
    prog.update(e);
  }
  prog.finish();
  return out;
}

Tensor pixel_features(const data::Dataset& ds, const std::vector<double>& mean, const std::vector<double>& std,
                      DType dtype) {
  MIRA_CHECK(ds.in_memory(), "raw-pixel features need an in-memory dataset (IDX or CIFAR), not ", ds.path());
  const int C = ds.channels();
  MIRA_CHECK((mean.empty() && std.empty()) || (static_cast<int>(mean.size()) == C && static_cast<int>(std.size()) == C),
             "pixel normalisation needs ", C, " mean and std values, got ", mean.size(), " and ", std.size());
  MIRA_CHECK(dtype == DType::F32 || dtype == DType::F64, "pixel features are f32 or f64");
  const int64_t n = ds.size(), d = static_cast<int64_t>(ds.height()) * ds.width() * C;
  Tensor out = Tensor::empty({n, d}, dtype);
  const uint8_t* p = ds.pixels();
  double* o64 = dtype == DType::F64 ? out.data<double>() : nullptr;
  float* o32 = dtype == DType::F32 ? out.data<float>() : nullptr;
  for (int64_t i = 0; i < n * d; ++i) {
    double v = p[i] / 255.0;
    if (!mean.empty()) v = (v - mean[i % C]) / std[i % C];
    if (o64)
      o64[i] = v;
    else
      o32[i] = static_cast<float>(v);
  }
  return out;
}

void pixel_mean_std(const data::Dataset& ds, std::vector<double>& mean, std::vector<double>& std) {
  MIRA_CHECK(ds.in_memory(), "pixel statistics need an in-memory dataset (IDX or CIFAR), not ", ds.path());
  const int C = ds.channels();
  const int64_t total = ds.size() * ds.height() * ds.width() * C;
  std::vector<double> s(C, 0.0), s2(C, 0.0);
  const uint8_t* p = ds.pixels();
  for (int64_t i = 0; i < total; ++i) {
    const double v = p[i] / 255.0;
    s[i % C] += v;
    s2[i % C] += v * v;
  }
  const double n = static_cast<double>(total / C);
  mean.resize(C);
  std.resize(C);
  for (int c = 0; c < C; ++c) {
    const double m = s[c] / n;
    mean[c] = std::round(m * 1e4) / 1e4;
    std[c] = std::round(std::sqrt(std::max(0.0, s2[c] / n - m * m)) * 1e4) / 1e4;
  }
}

std::vector<int64_t> dataset_labels(const data::Dataset& ds) {
  std::vector<int64_t> y(ds.size());
  for (int64_t i = 0; i < ds.size(); ++i) y[i] = ds.label(i);
  return y;
}

Progress::Progress(std::string what, int64_t total)
    : what_(std::move(what)), total_(total), start_(now_s()), tty_(isatty(fileno(stderr))), active_(!what_.empty()) {}

void Progress::update(int64_t done) {
  if (!active_ || total_ <= 0) return;
  const int64_t pct = done * 100 / total_;
  if (!tty_ && pct / 10 == last_pct_ / 10 && done < total_) return;
  if (tty_ && pct == last_pct_ && done < total_) return;
  last_pct_ = pct;
  const double el = now_s() - start_;
  std::fprintf(stderr, "%s%s: %lld/%lld (%lld%%) %.0f img/s%s", tty_ ? "\r" : "", what_.c_str(),
               static_cast<long long>(done), static_cast<long long>(total_), static_cast<long long>(pct),
               el > 0 ? done / el : 0.0, tty_ ? "" : "\n");
  std::fflush(stderr);
}

void Progress::finish() {
  if (active_ && tty_) std::fprintf(stderr, "\n");
  active_ = false;
}

}  // namespace mira::apps
