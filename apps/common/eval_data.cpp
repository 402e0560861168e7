#include "apps/common/eval_data.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "engine/cuda_backend.h"
#include "engine/npy.h"

namespace mira::apps {

std::unique_ptr<data::Dataset> open_split(const std::string& path, const std::string& format, data::Split split,
                                          const std::string& flag) {
  MIRA_CHECK(std::filesystem::exists(path), flag, ": '", path, "' does not exist");
  return data::open_dataset(path, data::parse_format(format), split);
}

std::vector<int64_t> select_subset(const std::vector<int64_t>& labels, double fraction, uint64_t seed,
                                   const std::string& list_file, const data::Dataset* ds) {
  const int64_t n = static_cast<int64_t>(labels.size());
  MIRA_CHECK(fraction > 0 && fraction <= 1, "--train-fraction must be in (0, 1], got ", fraction);
  MIRA_CHECK(list_file.empty() || fraction == 1, "give --train-fraction or --train-list, not both");
  std::vector<int64_t> out;
  if (!list_file.empty()) {
    std::ifstream in(list_file);
    MIRA_CHECK(in.good(), "--train-list: cannot open '", list_file, "'");
    std::map<std::string, int64_t> by_name;
    if (const auto* folder = dynamic_cast<const data::ImageFolderDataset*>(ds))
      for (int64_t i = 0; i < folder->size(); ++i)
        by_name[std::filesystem::path(folder->file(i)).filename().string()] = i;
    std::string line;
    int lineno = 0;
    while (std::getline(in, line)) {
      ++lineno;
      const size_t hash = line.find('#');
      if (hash != std::string::npos) line = line.substr(0, hash);
      line.erase(0, line.find_first_not_of(" \t\r"));
      line.erase(line.find_last_not_of(" \t\r") + 1);
      if (line.empty()) continue;
      const bool numeric = line.find_first_not_of("0123456789") == std::string::npos;
      int64_t i;
      if (numeric) {
        i = parse_int(line, list_file + ":" + std::to_string(lineno));
      } else {
        auto it = by_name.find(std::filesystem::path(line).filename().string());
        MIRA_CHECK(it != by_name.end(), list_file, ":", lineno, ": '", line, "' is not a file of the train set");
        i = it->second;
      }
      MIRA_CHECK(i >= 0 && i < n, list_file, ":", lineno, ": index ", i, " outside the train set of ", n);
      out.push_back(i);
    }
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    MIRA_CHECK(!out.empty(), "--train-list '", list_file, "' selects no sample");
    return out;
  }
  if (fraction == 1) {
    out.resize(n);
    for (int64_t i = 0; i < n; ++i) out[i] = i;
    return out;
  }
  std::map<int64_t, std::vector<int64_t>> members;
  for (int64_t i = 0; i < n; ++i) members[labels[i]].push_back(i);
  for (const auto& [c, m] : members) {
    const int64_t nc = static_cast<int64_t>(m.size());
    const int64_t take_n = std::max<int64_t>(1, std::llround(fraction * nc));
    data::SamplerConfig sc;
    sc.seed = seed;
    sc.shuffle = true;
    sc.drop_last = false;
    const std::vector<int64_t> perm = data::epoch_indices(nc, c, sc);
    for (int64_t j = 0; j < take_n; ++j) out.push_back(m[perm[j]]);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Tensor take_rows(const Tensor& x, const std::vector<int64_t>& rows) {
  MIRA_CHECK(x.ndim() == 2 && !x.is_cuda(), "take_rows: (N, D) CPU tensor expected, got ", x.str());
  const int64_t D = x.dim(1);
  Tensor out = Tensor::empty({static_cast<int64_t>(rows.size()), D}, x.dtype());
  const size_t row_bytes = static_cast<size_t>(D) * dtype_size(x.dtype());
  const auto* src = static_cast<const uint8_t*>(x.raw());
  auto* dst = static_cast<uint8_t*>(out.raw());
  for (size_t i = 0; i < rows.size(); ++i) {
    MIRA_CHECK(rows[i] >= 0 && rows[i] < x.dim(0), "take_rows: row ", rows[i], " outside ", x.dim(0));
    std::memcpy(dst + i * row_bytes, src + rows[i] * row_bytes, row_bytes);
  }
  return out;
}

std::vector<int64_t> take(const std::vector<int64_t>& v, const std::vector<int64_t>& rows) {
  std::vector<int64_t> out(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) out[i] = v.at(rows[i]);
  return out;
}

Tensor read_features_npy(const std::string& path) {
  MIRA_CHECK(std::filesystem::is_regular_file(path), "features file '", path, "' does not exist");
  Tensor t = npy_read_tensor(path);
  MIRA_CHECK(t.ndim() == 2, "features file '", path, "' holds a ", t.shape().str(), " array, expected (N, D)");
  MIRA_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F64, "features file '", path, "' holds ",
             dtype_name(t.dtype()), " values, expected f32 or f64");
  return t.dtype() == DType::F32 ? t : t.to(DType::F32);
}

std::vector<int64_t> read_labels_npy(const std::string& path) {
  MIRA_CHECK(std::filesystem::is_regular_file(path), "labels file '", path, "' does not exist");
  Tensor t = npy_read_tensor(path);
  MIRA_CHECK(t.ndim() == 1 || (t.ndim() == 2 && t.dim(1) == 1), "labels file '", path, "' holds a ", t.shape().str(),
             " array, expected (N)");
  const std::vector<double> v = t.to_vector();
  std::vector<int64_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    MIRA_CHECK(v[i] >= 0 && v[i] == std::floor(v[i]) && v[i] < 1e9, "labels file '", path, "': entry ", i, " is ", v[i],
               ", not a class index");
    out[i] = static_cast<int64_t>(v[i]);
  }
  return out;
}

void write_labels_npy(const std::string& path, const std::vector<int64_t>& labels) {
  npy_write(path, NpyType::I64, {static_cast<int64_t>(labels.size())}, labels.data());
}

Device parse_device(const std::string& s) {
  if (s == "auto") return cuda::device_count() > 0 ? Device::cuda(0) : Device::cpu();
  const Device d = Device::parse(s);
  if (d.is_cuda()) {
    MIRA_CHECK(cuda::built_with_cuda(), "--device ", s, ": this build has no CUDA backend");
    MIRA_CHECK(d.index < cuda::device_count(), "--device ", s, ": ", cuda::device_count(), " CUDA device(s) present");
    cuda::set_device(d.index);
  }
  return d;
}

void add_transform_args(ArgParser& p) {
  p.option("transform", "eval transform: auto | imagenet | cifar | gray28 (see docs/evaluation.md)", "auto")
      .option("mean", "normalisation mean of the eval transform, M1,M2,M3 (default: the transform's)")
      .option("std", "normalisation std of the eval transform, S1,S2,S3 (default: the transform's)");
}

EvalTransform transform_args(const ArgParser& p, const data::Dataset& ds) {
  EvalTransform t = EvalTransform::by_name(p.str("transform"), ds);
  for (const char* name : {"mean", "std"}) {
    if (!p.has(name)) continue;
    std::vector<float> v;
    std::stringstream ss(p.str(name));
    std::string item;
    while (std::getline(ss, item, ',')) v.push_back(static_cast<float>(parse_double(item, std::string("--") + name)));
    MIRA_CHECK(v.size() == 3, "--", name, " needs 3 comma-separated values, got ", v.size());
    auto& dst = std::string(name) == "mean" ? t.mean : t.std;
    for (int c = 0; c < 3; ++c) {
      MIRA_CHECK(std::string(name) == "mean" || v[c] > 0, "--std values must be positive");
      dst[c] = v[c];
    }
  }
  return t;
}

void add_split_args(ArgParser& p) {
  p.option("train-data", "train set: IDX / CIFAR directory (its train split) or ImageFolder tree")
      .option("test-data", "test set: IDX / CIFAR directory (its test split) or ImageFolder tree")
      .option("data-format", "auto | idx | cifar10 | cifar100 | imagefolder", "auto")
      .option("train-features", "precomputed train features (N, F) .npy instead of datasets")
      .option("train-labels", "labels (N) .npy of --train-features")
      .option("test-features", "precomputed test features .npy")
      .option("test-labels", "labels .npy of --test-features");
}

NpySplits read_npy_splits(const ArgParser& p) {
  for (const char* f : {"train-features", "train-labels", "test-features", "test-labels"})
    MIRA_CHECK(p.has(f),
               "precomputed features need --train-features, --train-labels, --test-features and "
               "--test-labels (missing --",
               f, ")");
  NpySplits s{read_features_npy(p.str("train-features")), read_features_npy(p.str("test-features")),
              read_labels_npy(p.str("train-labels")), read_labels_npy(p.str("test-labels"))};
  MIRA_CHECK(static_cast<int64_t>(s.train_labels.size()) == s.train.dim(0), p.str("train-features"), " holds ",
             s.train.dim(0), " features but ", p.str("train-labels"), " holds ", s.train_labels.size(), " labels");
  MIRA_CHECK(static_cast<int64_t>(s.test_labels.size()) == s.test.dim(0), p.str("test-features"), " holds ",
             s.test.dim(0), " features but ", p.str("test-labels"), " holds ", s.test_labels.size(), " labels");
  return s;
}

void add_backbone_args(ArgParser& p) {
  p.option("checkpoint", "safetensors checkpoint (ours, or a plain torchvision ResNet state dict)")
      .option("which", "backbone of our checkpoints: ema (teacher) or online", "ema")
      .option("arch",
              "resnet18 | resnet50 | resnet_tiny: checked against the checkpoint; needed by --random-init "
              "without a checkpoint")
      .flag("random-init", "baseline: the architecture at its seeded initialisation instead of trained weights")
      .option("seed", "seed of --random-init", "0")
      .option("cifar-stem", "stem of --random-init without a checkpoint: auto (3x3 stem for images <= 64 px), on, off",
              "auto")
      .option("cifar-stem-padding", "padding of a 3x3 CIFAR stem (not stored in checkpoints)", "1");
}

BackboneOptions backbone_args(const ArgParser& p, Device device) {
  BackboneOptions o;
  if (p.has("checkpoint")) o.checkpoint = p.str("checkpoint");
  o.which = p.str("which");
  MIRA_CHECK(o.which == "ema" || o.which == "online", "--which must be ema or online, not '", o.which, "'");
  if (p.has("arch")) o.arch = p.str("arch");
  o.random_init = p.flag_set("random-init");
  o.seed = static_cast<uint64_t>(p.integer("seed"));
  const std::string stem = p.str("cifar-stem");
  MIRA_CHECK(stem == "auto" || stem == "on" || stem == "off", "--cifar-stem must be auto, on or off");
  o.cifar_stem = stem == "auto" ? -1 : stem == "on" ? 1 : 0;
  o.cifar_stem_padding = static_cast<int>(p.integer("cifar-stem-padding"));
  MIRA_CHECK(o.cifar_stem_padding == 1 || o.cifar_stem_padding == 2, "--cifar-stem-padding must be 1 or 2");
  o.device = device;
  if (!o.arch.empty()) models::ResNetConfig::from_name(o.arch);  // validates the name early
  return o;
}

}  // namespace mira::apps
