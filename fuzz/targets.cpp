// Fuzz entry points (see targets.h). The parsers under test read paths, not buffers, so inputs
// are handed over as memfd files (/proc/self/fd/N): the real file-reading code runs, and nothing
// touches the disk. CIFAR needs fixed file names in a directory: a private folder in /dev/shm
// (or TMPDIR) per process.
#include "fuzz/targets.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <stdexcept>

#include "apps/pretrain/pretrain_config.h"
#include "apps/pretrain/run_dir.h"
#include "data/augment.h"
#include "data/dataset.h"
#include "data/jpeg.h"
#include "engine/config.h"
#include "engine/error.h"
#include "engine/npy.h"
#include "engine/optim.h"
#include "engine/safetensors.h"
#include "models/mira_model.h"

namespace mira::fuzz {

namespace fs = std::filesystem;

namespace {

// A harness-detected bug (not a clean rejection): escapes run_target and crashes the fuzzer.
[[noreturn]] void bug(const std::string& what) { throw std::logic_error("fuzz target found a bug: " + what); }

void write_fd(int fd, const uint8_t* p, size_t n) {
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(std::string("fuzz harness: write failed: ") + std::strerror(errno));
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

// An anonymous in-memory file holding the bytes, readable by path.
class MemFile {
 public:
  MemFile(const uint8_t* data, size_t size) {
    fd_ = ::memfd_create("mira_fuzz", MFD_CLOEXEC);
    if (fd_ < 0) throw std::runtime_error(std::string("fuzz harness: memfd_create: ") + std::strerror(errno));
    write_fd(fd_, data, size);
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemFile() { ::close(fd_); }
  MemFile(const MemFile&) = delete;
  MemFile& operator=(const MemFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  int fd_ = -1;
  std::string path_;
};

// ---- checkpoints ---------------------------------------------------------------------------

struct CheckpointModel {
  models::MiraModel model;
  Optimizer opt;
  static models::MiraModelConfig config() {
    models::MiraModelConfig c;
    c.backbone = models::ResNetConfig::tiny();
    c.backbone.widths = {2, 2, 2, 2};
    c.backbone.blocks = {1, 1, 1, 1};
    c.head = models::HeadConfig{4, 4, 4};
    return c;
  }
  CheckpointModel() : model(config()), opt(model.student(), OptimConfig{}) { model.init(0); }
};

CheckpointModel& checkpoint_model() {
  static CheckpointModel m;
  return m;
}

// ---- configuration -------------------------------------------------------------------------

// What mira_pretrain reads from a validated configuration, read the same way (typed gets), with
// the ranges validation promises checked on the values the app actually sees.
void consume_config(const Json& c) {
  auto int_at_least = [](const Json& v, int64_t lo, const char* key) {
    const int64_t x = v.get<int64_t>();
    if (x < lo) bug(std::string("'") + key + "' passed validation but reads as " + std::to_string(x));
    return x;
  };
  const Json& m = c["model"];
  models::ResNetConfig rc = models::ResNetConfig::from_name(m["arch"].get<std::string>());
  if (!m["widths"].empty()) {
    rc.widths = m["widths"].get<std::vector<int>>();
    rc.blocks = m["blocks"].get<std::vector<int>>();
    for (int w : rc.widths)
      if (w < 1) bug("model.widths holds " + std::to_string(w) + " after validation");
    for (int b : rc.blocks)
      if (b < 0) bug("model.blocks holds " + std::to_string(b) + " after validation");
  }
  rc.cifar_stem = m["cifar_stem"].get<bool>();
  rc.cifar_stem_padding = m["cifar_stem_padding"].get<int>();
  rc.zero_init_residual = m["zero_init_residual"].get<bool>();
  int_at_least(m["proj_hidden"], 1, "model.proj_hidden");
  int_at_least(m["proj_out"], 1, "model.proj_out");
  int_at_least(m["prototypes"], 1, "model.prototypes");

  const Json& d = c["data"];
  data::parse_format(d["format"].get<std::string>());
  int_at_least(d["train_subset"], 0, "data.train_subset");
  data::MultiCropRecipe r = data::MultiCropRecipe::by_name(d["recipe"].get<std::string>());
  (void)r;
  d["local_crops"].get<int>();
  d["interp"].get<std::string>();
  for (const char* key : {"mean", "std"}) {
    for (size_t i = 0; i < d[key].size(); ++i) {
      const float v = d[key][i].get<float>();
      if (!std::isfinite(v)) bug(std::string("data.") + key + " holds a non-finite value after validation");
      if (std::string(key) == "std" && !(v > 0)) bug("data.std holds " + std::to_string(v) + " after validation");
    }
  }
  d["threads"].get<int>();
  d["prefetch"].get<int>();

  const Json& o = c["optim"];
  o["name"].get<std::string>();
  for (const char* key : {"lr", "momentum", "weight_decay", "eta", "warmup_start_lr", "min_lr", "warmup_epochs"})
    o[key].get<double>();
  o["scale_lr_by_batch"].get<bool>();

  const Json& mj = c["mira"];
  for (const char* key : {"tau_s", "tau_t", "beta_initial", "beta_final", "ema_initial", "ema_final"})
    mj[key].get<double>();
  mj["iters"].get<int>();
  mj["working_copy"].get<std::string>();
  mj["assign_plan"].get<std::string>();
  int_at_least(mj["exact_passes"], 0, "mira.exact_passes");
  int_at_least(mj["freeze_prototypes_epochs"], 0, "mira.freeze_prototypes_epochs");

  const Json& t = c["train"];
  int_at_least(t["epochs"], 1, "train.epochs");
  int_at_least(t["batch_size"], 2, "train.batch_size");
  int_at_least(t["checkpoint_every"], 0, "train.checkpoint_every");
  int_at_least(t["keep_every"], 0, "train.keep_every");
  int_at_least(t["log_every"], 1, "train.log_every");
  int_at_least(t["max_steps"], 0, "train.max_steps");
  t["seed"].get<uint64_t>();
  if (t.contains("comm_timeout_s")) t["comm_timeout_s"].get<double>();
  if (t.contains("dtype")) t["dtype"].get<std::string>();
  Device::parse(t["device"].get<std::string>());

  const Json& e = c["eval"];
  e["test_data"].get<std::string>();
  int_at_least(e["knn_k"], 1, "eval.knn_k");
  e["knn_t"].get<double>();
  e["bank_fraction"].get<double>();
  e["baselines"].get<bool>();
  int_at_least(e["batch_size"], 1, "eval.batch_size");
}

// ---- CIFAR ---------------------------------------------------------------------------------

struct ScratchDir {
  fs::path dir;
  ScratchDir() {
    const char* base = fs::is_directory("/dev/shm") ? "/dev/shm" : (std::getenv("TMPDIR") ? std::getenv("TMPDIR") : "/tmp");
    std::string tmpl = std::string(base) + "/mira_fuzz_XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("fuzz harness: mkdtemp failed");
    dir = tmpl;
  }
  ~ScratchDir() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

void write_file(const fs::path& p, const uint8_t* data, size_t size) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  f.close();
  if (!f) throw std::runtime_error("fuzz harness: cannot write " + p.string());
}

}  // namespace

void fuzz_safetensors(const uint8_t* data, size_t size) {
  MemFile f(data, size);
  SafetensorsFile st = load_safetensors(f.path());
  if (st.metadata.count("step")) {
    CheckpointModel& m = checkpoint_model();
    Json saved;
    apps::load_training_checkpoint(f.path(), m.model, m.opt, &saved);
  }
}

void fuzz_config(const uint8_t* data, size_t size) {
  const auto* begin = reinterpret_cast<const char*>(data);
  const char* nul = static_cast<const char*>(std::memchr(begin, '\0', size));
  const size_t json_len = nul ? static_cast<size_t>(nul - begin) : size;
  std::vector<std::string> sets;
  if (nul) {
    std::string rest(nul + 1, begin + size);
    size_t start = 0;
    while (start <= rest.size() && sets.size() < 16) {
      size_t end = rest.find_first_of(std::string("\n\0", 2), start);
      if (end == std::string::npos) end = rest.size();
      if (end > start) sets.push_back(rest.substr(start, end - start));
      start = end + 1;
    }
  }
  MemFile f(data, json_len);
  const Json& schema = apps::pretrain_schema();
  Json cfg = merge_config(schema, schema, read_json_file(f.path()), "fuzz.json");
  apply_overrides(cfg, schema, sets);
  apps::validate_pretrain_config(cfg);
  consume_config(cfg);
  // The resolved config is written to the run directory and stored in checkpoints.
  const Json reparsed = Json::parse(cfg.dump());
  (void)reparsed;
}

void fuzz_npy(const uint8_t* data, size_t size) {
  // Both readers (the one from memory and the incremental one from a file) must agree.
  bool parsed = false, read = false;
  std::string why;
  try {
    NpyArray a = npy_parse(data, size);
    parsed = true;
    if (a.data.size() != static_cast<size_t>(a.numel()) * npy_type_size(a.type)) bug("npy_parse: data size mismatch");
    npy_to_tensor(a);
  } catch (const Error& e) {
    why = e.what();
  }
  MemFile f(data, size);
  try {
    NpyArray b = npy_read(f.path());
    read = true;
    npy_to_tensor(b);
  } catch (const Error& e) {
    if (why.empty()) why = e.what();
  }
  if (parsed != read) bug(parsed ? "npy_read rejects a file npy_parse accepts" : "npy_read accepts a file npy_parse rejects");
  if (!why.empty()) throw Error(why);
}

void fuzz_idx(const uint8_t* data, size_t size) {
  size_t split = 0;
  if (size >= 4) split = std::min<size_t>(size - 4, uint32_t(data[0]) | uint32_t(data[1]) << 8 |
                                                        uint32_t(data[2]) << 16 | uint32_t(data[3]) << 24);
  const uint8_t* img = size >= 4 ? data + 4 : data;
  const size_t img_n = split, lab_n = size >= 4 ? size - 4 - split : size;
  MemFile images(img, img_n), labels(img + img_n, lab_n);
  auto ds = data::read_idx(images.path(), labels.path());
  for (int64_t i = 0; i < ds->size(); ++i)
    if (ds->label(i) < 0 || ds->label(i) >= ds->num_classes()) bug("IDX label out of range");
  const size_t px = static_cast<size_t>(ds->height()) * ds->width() * ds->channels();
  volatile uint8_t sink = 0;
  if (ds->size() > 0) sink = sink + ds->image(ds->size() - 1)[px - 1];  // the last pixel is in bounds
}

void fuzz_cifar(const uint8_t* data, size_t size) {
  static ScratchDir scratch;
  std::error_code ec;
  for (const char* name : {"test_batch.bin", "test.bin", "data_batch_1.bin", "train.bin"}) fs::remove(scratch.dir / name, ec);
  write_file(scratch.dir / "test_batch.bin", data, size);
  write_file(scratch.dir / "test.bin", data, size);
  int loaded = 0;
  std::string first_error;
  for (data::DataFormat f : {data::DataFormat::Cifar10, data::DataFormat::Cifar100, data::DataFormat::Auto}) {
    try {
      auto ds = data::open_dataset(scratch.dir.string(), f, data::Split::Test);
      for (int64_t i = 0; i < ds->size(); ++i)
        if (ds->label(i) < 0 || ds->label(i) >= ds->num_classes()) bug("CIFAR label out of range");
      ++loaded;
    } catch (const Error& e) {
      if (first_error.empty()) first_error = e.what();
    }
  }
  if (!loaded) throw Error(first_error);  // accepted when it is valid in one of the formats
}

void fuzz_jpeg(const uint8_t* data, size_t size) {
  data::DecodeOptions opts;
  opts.fast_dct = size % 2 == 1;
  opts.fancy_upsampling = size % 4 < 2;
  auto choose = [](int h, int w) { return 1 + static_cast<int>((static_cast<unsigned>(h) * 31u + w) % 8u); };
  data::Decoded d = data::decode_image(data, size, "fuzz.jpg", opts, choose);
  const size_t want = static_cast<size_t>(d.image.h) * d.image.w * d.image.c;
  if (d.image.pixels.size() != want || d.image.c != 3) bug("decoded image size mismatch");
  // The same bytes under a neutral name (no extension check), full scale, when small.
  if (static_cast<int64_t>(d.orig_h) * d.orig_w <= (1 << 20)) data::decode_image(data, size, "", {}, {});
}

const std::vector<Target>& all_targets() {
  static const std::vector<Target> t = {{"safetensors", fuzz_safetensors}, {"config", fuzz_config},
                                        {"npy", fuzz_npy},                 {"idx", fuzz_idx},
                                        {"cifar", fuzz_cifar},             {"jpeg", fuzz_jpeg}};
  return t;
}

bool run_target(TargetFn fn, const uint8_t* data, size_t size, std::string* why) {
  try {
    fn(data, size);
    return true;
  } catch (const Error& e) {
    if (why) *why = e.what();
    return false;
  }
}

std::vector<std::string> checkpoint_model_sets() {
  return {"model.arch=\"resnet_tiny\"", "model.widths=[2,2,2,2]", "model.blocks=[1,1,1,1]", "model.proj_hidden=4",
          "model.proj_out=4", "model.prototypes=4"};
}

}  // namespace mira::fuzz
