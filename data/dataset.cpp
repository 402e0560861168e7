// Dataset readers (IDX, CIFAR binary, ImageFolder scan), format detection and the epoch
// sampler. See dataset.h for the contracts; the notes here are about validation: every count
// read from a header is checked against the bytes actually present before anything is sized
// from it.
#include "data/dataset.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>

#include "engine/error.h"
#include "engine/rng.h"

namespace fs = std::filesystem;

namespace mira::data {

const char* format_name(DataFormat f) {
  switch (f) {
    case DataFormat::Auto:
      return "auto";
    case DataFormat::Idx:
      return "idx";
    case DataFormat::Cifar10:
      return "cifar10";
    case DataFormat::Cifar100:
      return "cifar100";
    case DataFormat::ImageFolder:
      return "imagefolder";
  }
  return "?";
}

DataFormat parse_format(const std::string& s) {
  for (DataFormat f :
       {DataFormat::Auto, DataFormat::Idx, DataFormat::Cifar10, DataFormat::Cifar100, DataFormat::ImageFolder})
    if (s == format_name(f)) return f;
  MIRA_FAIL("unknown data format '", s, "' (expected auto, idx, cifar10, cifar100 or imagefolder)");
}

Split parse_split(const std::string& s) {
  if (s == "train") return Split::Train;
  if (s == "test") return Split::Test;
  MIRA_FAIL("unknown split '", s, "' (expected train or test)");
}

InMemoryDataset::InMemoryDataset(std::string path, DataFormat format, int h, int w, int c, int num_classes,
                                 std::vector<uint8_t> pixels, std::vector<int64_t> labels)
    : path_(std::move(path)),
      format_(format),
      h_(h),
      w_(w),
      c_(c),
      num_classes_(num_classes),
      pixels_(std::move(pixels)),
      labels_(std::move(labels)) {
  MIRA_CHECK(pixels_.size() == labels_.size() * static_cast<size_t>(h) * w * c, "dataset ", path_,
             ": pixel buffer does not match ", labels_.size(), " images of ", h, "x", w, "x", c);
}

ImageFolderDataset::ImageFolderDataset(std::string root, std::vector<std::string> classes,
                                       std::vector<std::string> files, std::vector<int64_t> labels)
    : root_(std::move(root)), classes_(std::move(classes)), files_(std::move(files)), labels_(std::move(labels)) {
  MIRA_CHECK(files_.size() == labels_.size(), "image folder ", root_, ": files and labels differ in count");
}

// ---- IDX -----------------------------------------------------------------------------------

namespace {

// Reads path whole, gunzipping it when it starts with the gzip magic. Once `header_bytes` of
// (decompressed) content are in hand, `limit_from_header` (when given) sees them and returns the
// exact size the file must have; decompression stops past that size, so a gzip bomb or a lying
// length costs at most the announced size plus one 64 KiB chunk, never max_bytes.
std::vector<uint8_t> read_maybe_gzip_limited(const std::string& path, size_t max_bytes, size_t header_bytes,
                                             const std::function<uint64_t(const uint8_t*)>& limit_from_header) {
  std::error_code ec;
  const uintmax_t on_disk = std::filesystem::file_size(path, ec);
  MIRA_CHECK(!ec, "cannot open ", path, " (", ec.message(), ")");
  std::ifstream f(path, std::ios::binary);
  MIRA_CHECK(f.good(), "cannot open ", path);
  uint8_t magic[2] = {0, 0};
  f.read(reinterpret_cast<char*>(magic), 2);
  const bool gz = f.gcount() == 2 && magic[0] == 0x1f && magic[1] == 0x8b;
  f.clear();
  f.seekg(0);
  if (!gz) {
    MIRA_CHECK(on_disk <= max_bytes, path, " is larger than ", max_bytes, " bytes");
    std::vector<uint8_t> raw(static_cast<size_t>(on_disk));
    if (!raw.empty()) f.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
    MIRA_CHECK(f.gcount() == static_cast<std::streamsize>(raw.size()), "error reading ", path);
    return raw;
  }
  MIRA_CHECK(on_disk <= 0xffffffffu, path, ": compressed file too large");
  std::vector<uint8_t> raw(static_cast<size_t>(on_disk));
  f.read(reinterpret_cast<char*>(raw.data()), static_cast<std::streamsize>(raw.size()));
  MIRA_CHECK(f.gcount() == static_cast<std::streamsize>(raw.size()), "error reading ", path);
  // Inflate in chunks: 16 + MAX_WBITS asks zlib for the gzip wrapper.
  z_stream zs{};
  int rc = inflateInit2(&zs, 16 + MAX_WBITS);
  MIRA_CHECK(rc == Z_OK, "zlib inflateInit2 failed for ", path, " (", rc, ")");
  struct Guard {
    z_stream* z;
    ~Guard() { inflateEnd(z); }
  } guard{&zs};
  std::vector<uint8_t> out;
  zs.next_in = raw.data();
  zs.avail_in = static_cast<uInt>(raw.size());
  uint64_t limit = max_bytes;
  bool limit_known = !limit_from_header;
  uint8_t chunk[1 << 16];
  do {
    zs.next_out = chunk;
    zs.avail_out = sizeof(chunk);
    rc = inflate(&zs, Z_NO_FLUSH);
    if (rc == Z_BUF_ERROR && zs.avail_in == 0) MIRA_FAIL("truncated gzip data in ", path);
    if (rc != Z_OK && rc != Z_STREAM_END) {
      MIRA_FAIL("corrupt gzip data in ", path, " (zlib: ", zs.msg ? zs.msg : "error ", rc, ")");
    }
    const size_t got = sizeof(chunk) - zs.avail_out;
    MIRA_CHECK(out.size() + got <= max_bytes, path, " decompresses to more than ", max_bytes, " bytes");
    out.insert(out.end(), chunk, chunk + got);
    if (!limit_known && out.size() >= header_bytes) {
      limit = limit_from_header(out.data());  // throws on a bad header
      limit_known = true;
      if (limit < max_bytes) out.reserve(static_cast<size_t>(limit));
    }
    MIRA_CHECK(out.size() <= limit, path, " decompresses to more than the ", limit, " bytes its header announces");
  } while (rc != Z_STREAM_END);
  return out;
}

}  // namespace

std::vector<uint8_t> read_file_maybe_gzip(const std::string& path, size_t max_bytes) {
  return read_maybe_gzip_limited(path, max_bytes, 0, {});
}

namespace {

uint32_t be32(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

}  // namespace

std::unique_ptr<InMemoryDataset> read_idx(const std::string& images_path, const std::string& labels_path) {
  // The header is checked as soon as its bytes are decompressed, and bounds the rest: a gzip
  // bomb named like an IDX file costs at most the size its header announces.
  auto image_header = [&](const uint8_t* p) -> uint64_t {
    const uint32_t magic = be32(p);
    MIRA_CHECK(magic == 0x803, images_path, ": bad IDX magic 0x", std::hex, magic, " (expected 0x803: u8, 3 dims)");
    const uint64_t n = be32(p + 4), h = be32(p + 8), w = be32(p + 12);
    MIRA_CHECK(h > 0 && w > 0 && h <= 4096 && w <= 4096, images_path, ": implausible image size ", h, "x", w);
    MIRA_CHECK(n > 0, images_path, ": holds no images");
    return 16 + n * h * w;  // < 2^32 * 2^24: no overflow
  };
  auto label_header = [&](const uint8_t* p) -> uint64_t {
    const uint32_t magic = be32(p);
    MIRA_CHECK(magic == 0x801, labels_path, ": bad IDX magic 0x", std::hex, magic, " (expected 0x801: u8, 1 dim)");
    return 8 + uint64_t(be32(p + 4));
  };
  const size_t max_bytes = size_t(1) << 32;
  std::vector<uint8_t> img = read_maybe_gzip_limited(images_path, max_bytes, 16, image_header);
  std::vector<uint8_t> lab = read_maybe_gzip_limited(labels_path, max_bytes, 8, label_header);
  MIRA_CHECK(img.size() >= 16, images_path, ": too short for an IDX image header (", img.size(), " bytes)");
  MIRA_CHECK(lab.size() >= 8, labels_path, ": too short for an IDX label header (", lab.size(), " bytes)");
  image_header(img.data());  // raw files: the same checks, after the read
  label_header(lab.data());
  const uint64_t n = be32(img.data() + 4), h = be32(img.data() + 8), w = be32(img.data() + 12);
  const uint64_t nl = be32(lab.data() + 4);
  MIRA_CHECK(n == nl, images_path, " holds ", n, " images but ", labels_path, " holds ", nl, " labels");
  MIRA_CHECK(img.size() == 16 + n * h * w, images_path, ": ", img.size() - 16, " pixel bytes, header says ", n, "x", h,
             "x", w, " = ", n * h * w, " (truncated or corrupt)");
  MIRA_CHECK(lab.size() == 8 + n, labels_path, ": ", lab.size() - 8, " label bytes, header says ", n);
  std::vector<int64_t> labels(n);
  int max_label = 0;
  for (uint64_t i = 0; i < n; ++i) {
    labels[i] = lab[8 + i];
    max_label = std::max(max_label, static_cast<int>(lab[8 + i]));
  }
  img.erase(img.begin(), img.begin() + 16);
  return std::make_unique<InMemoryDataset>(images_path, DataFormat::Idx, static_cast<int>(h), static_cast<int>(w), 1,
                                           max_label + 1, std::move(img), std::move(labels));
}

namespace {

// An IDX file in dir whose name starts with `prefix` and contains `kind` (e.g. "train",
// "idx3"), raw or .gz. Empty when none.
std::string find_idx_file(const std::string& dir, const std::string& prefix, const std::string& kind) {
  std::vector<std::string> hits;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0 && name.find(kind) != std::string::npos && e.is_regular_file()) hits.push_back(name);
  }
  std::sort(hits.begin(), hits.end());  // prefer the raw file ("x-ubyte" < "x-ubyte.gz")
  return hits.empty() ? std::string() : (fs::path(dir) / hits.front()).string();
}

std::unique_ptr<InMemoryDataset> open_idx_dir(const std::string& dir, Split split) {
  const std::string prefix = split == Split::Train ? "train-" : "t10k-";
  const std::string images = find_idx_file(dir, prefix, "idx3-ubyte");
  const std::string labels = find_idx_file(dir, prefix, "idx1-ubyte");
  MIRA_CHECK(!images.empty() && !labels.empty(), "IDX directory ", dir, " has no ", prefix, "images-idx3-ubyte[.gz] / ",
             prefix, "labels-idx1-ubyte[.gz] pair");
  return read_idx(images, labels);
}

constexpr size_t kCifarPixels = 3 * 32 * 32;

// The CIFAR directory itself, or its well-known subfolder when given the parent.
std::string cifar_dir(const std::string& dir, DataFormat format) {
  const char* marker = format == DataFormat::Cifar100 ? "train.bin" : "data_batch_1.bin";
  if (fs::exists(fs::path(dir) / marker)) return dir;
  const char* sub = format == DataFormat::Cifar100 ? "cifar-100-binary" : "cifar-10-batches-bin";
  if (fs::exists(fs::path(dir) / sub / marker)) return (fs::path(dir) / sub).string();
  return dir;
}

}  // namespace

std::unique_ptr<InMemoryDataset> read_cifar(const std::string& dir_in, DataFormat format, Split split) {
  MIRA_CHECK(format == DataFormat::Cifar10 || format == DataFormat::Cifar100,
             "read_cifar: format must be cifar10 or cifar100");
  const std::string dir = cifar_dir(dir_in, format);
  const bool c100 = format == DataFormat::Cifar100;
  std::vector<std::string> files;
  if (c100) {
    files.push_back((fs::path(dir) / (split == Split::Train ? "train.bin" : "test.bin")).string());
  } else if (split == Split::Train) {
    for (int i = 1; i <= 5; ++i)
      files.push_back((fs::path(dir) / ("data_batch_" + std::to_string(i) + ".bin")).string());
  } else {
    files.push_back((fs::path(dir) / "test_batch.bin").string());
  }
  const size_t label_bytes = c100 ? 2 : 1, record = label_bytes + kCifarPixels;
  const int num_classes = c100 ? 100 : 10;
  std::vector<uint8_t> pixels;
  std::vector<int64_t> labels;
  for (const std::string& file : files) {
    std::vector<uint8_t> raw = read_file_maybe_gzip(file, size_t(1) << 31);
    MIRA_CHECK(!raw.empty(), "CIFAR file ", file, " is empty");
    MIRA_CHECK(raw.size() % record == 0, "CIFAR file ", file, ": ", raw.size(), " bytes is not a whole number of ",
               record, "-byte records (truncated, or not ", format_name(format), ")");
    const size_t n = raw.size() / record;
    const size_t base = labels.size();
    pixels.resize((base + n) * kCifarPixels);
    labels.resize(base + n);
    for (size_t i = 0; i < n; ++i) {
      const uint8_t* r = raw.data() + i * record;
      const int lab = r[label_bytes - 1];  // CIFAR-100: fine label is the second byte
      MIRA_CHECK(lab < num_classes, "CIFAR file ", file, ": record ", i, " has label ", lab, " >= ", num_classes);
      labels[base + i] = lab;
      // planar RGB (1024 R, 1024 G, 1024 B) -> HWC
      const uint8_t* p = r + label_bytes;
      uint8_t* dst = pixels.data() + (base + i) * kCifarPixels;
      for (int k = 0; k < 1024; ++k) {
        dst[3 * k + 0] = p[k];
        dst[3 * k + 1] = p[1024 + k];
        dst[3 * k + 2] = p[2048 + k];
      }
    }
  }
  return std::make_unique<InMemoryDataset>(dir, format, 32, 32, 3, num_classes, std::move(pixels), std::move(labels));
}

// ---- ImageFolder ---------------------------------------------------------------------------

namespace {

bool is_image_name(const std::string& name) {
  std::string ext = fs::path(name).extension().string();
  for (char& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return ext == ".jpg" || ext == ".jpeg" || ext == ".png";
}

}  // namespace

std::unique_ptr<ImageFolderDataset> scan_image_folder(const std::string& root, const ScanProgress& progress) {
  std::error_code ec;
  MIRA_CHECK(fs::is_directory(root, ec), "image folder ", root, " is not a readable directory");
  std::vector<std::string> classes;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    std::error_code ec2;
    if (e.is_directory(ec2)) classes.push_back(e.path().filename().string());
  }
  MIRA_CHECK(!ec, "cannot list ", root, ": ", ec.message());
  std::sort(classes.begin(), classes.end());
  std::vector<std::string> files;
  std::vector<int64_t> labels;
  int64_t last_report = 0;
  for (size_t c = 0; c < classes.size(); ++c) {
    std::vector<std::string> in_class;
    const fs::path dir = fs::path(root) / classes[c];
    // follow symlinks like torchvision (os.walk(followlinks=True)); skip unreadable subtrees
    auto opts = fs::directory_options::follow_directory_symlink | fs::directory_options::skip_permission_denied;
    for (auto it = fs::recursive_directory_iterator(dir, opts, ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec)) {
      std::error_code ec2;
      if (it->is_regular_file(ec2) && is_image_name(it->path().filename().string()))
        in_class.push_back(it->path().string());
    }
    MIRA_CHECK(!ec, "cannot list ", dir.string(), ": ", ec.message());
    std::sort(in_class.begin(), in_class.end());
    for (std::string& f : in_class) {
      files.push_back(std::move(f));
      labels.push_back(static_cast<int64_t>(c));
    }
    if (progress && static_cast<int64_t>(files.size()) - last_report >= 10000) {
      last_report = static_cast<int64_t>(files.size());
      progress(last_report);
    }
  }
  if (progress) progress(static_cast<int64_t>(files.size()));
  MIRA_CHECK(!files.empty(), "image folder ", root, " has no .jpg/.jpeg/.png files under class subfolders (found ",
             classes.size(), " subfolders)");
  return std::make_unique<ImageFolderDataset>(root, std::move(classes), std::move(files), std::move(labels));
}

// ---- detection and opening -----------------------------------------------------------------

DataFormat detect_format(const std::string& path) {
  std::error_code ec;
  MIRA_CHECK(fs::is_directory(path, ec), "dataset path ", path, " is not a readable directory");
  if (!find_idx_file(path, "train-", "idx3-ubyte").empty() || !find_idx_file(path, "t10k-", "idx3-ubyte").empty())
    return DataFormat::Idx;
  for (DataFormat f : {DataFormat::Cifar10, DataFormat::Cifar100}) {
    const std::string d = cifar_dir(path, f);
    const bool c100 = f == DataFormat::Cifar100;
    if (fs::exists(fs::path(d) / (c100 ? "train.bin" : "data_batch_1.bin")) ||
        fs::exists(fs::path(d) / (c100 ? "test.bin" : "test_batch.bin")))
      return f;
  }
  for (const auto& e : fs::directory_iterator(path, ec)) {
    std::error_code ec2;
    if (e.is_directory(ec2)) return DataFormat::ImageFolder;
  }
  MIRA_FAIL("cannot tell the format of dataset ", path,
            ": no IDX files (train-/t10k-*-idx3-ubyte[.gz]), no CIFAR batches (data_batch_1.bin, train.bin) and no "
            "class subfolders");
}

std::unique_ptr<Dataset> subset_dataset(const Dataset& ds, const std::vector<int64_t>& rows) {
  for (int64_t r : rows) MIRA_CHECK(r >= 0 && r < ds.size(), "subset of ", ds.path(), ": index ", r, " out of range");
  std::vector<int64_t> labels(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) labels[i] = ds.label(rows[i]);
  if (ds.in_memory()) {
    const size_t img = static_cast<size_t>(ds.height()) * ds.width() * ds.channels();
    std::vector<uint8_t> pixels(img * rows.size());
    for (size_t i = 0; i < rows.size(); ++i)
      std::memcpy(pixels.data() + i * img, ds.pixels() + static_cast<size_t>(rows[i]) * img, img);
    return std::make_unique<InMemoryDataset>(ds.path(), ds.format(), ds.height(), ds.width(), ds.channels(),
                                             ds.num_classes(), std::move(pixels), std::move(labels));
  }
  const auto* folder = dynamic_cast<const ImageFolderDataset*>(&ds);
  MIRA_CHECK(folder != nullptr, "subset of ", ds.path(), ": unsupported dataset kind");
  std::vector<std::string> files(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) files[i] = folder->file(rows[i]);
  return std::make_unique<ImageFolderDataset>(folder->path(), folder->classes(), std::move(files), std::move(labels));
}

std::unique_ptr<Dataset> open_dataset(const std::string& path, DataFormat format, Split split,
                                      const ScanProgress& progress) {
  if (format == DataFormat::Auto) format = detect_format(path);
  switch (format) {
    case DataFormat::Idx:
      return open_idx_dir(path, split);
    case DataFormat::Cifar10:
    case DataFormat::Cifar100:
      return read_cifar(path, format, split);
    case DataFormat::ImageFolder:
      return scan_image_folder(path, progress);
    case DataFormat::Auto:
      break;
  }
  MIRA_FAIL("unreachable");
}

// ---- sampler -------------------------------------------------------------------------------

std::vector<int64_t> epoch_indices(int64_t n, int64_t epoch, const SamplerConfig& cfg) {
  MIRA_CHECK(n > 0, "sampler: empty dataset");
  MIRA_CHECK(cfg.world >= 1 && cfg.rank >= 0 && cfg.rank < cfg.world, "sampler: rank ", cfg.rank, " of world ",
             cfg.world);
  std::vector<int64_t> order(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  if (cfg.shuffle) {
    // Fisher-Yates from the back; draw for position i is Philox(counter = (i, epoch, tag)).
    // 64 random bits per draw; the modulo bias (n / 2^64) is far below anything measurable.
    for (int64_t i = n - 1; i > 0; --i) {
      Philox4 r = philox4x32(static_cast<uint32_t>(i), static_cast<uint32_t>(static_cast<uint64_t>(i) >> 32),
                             static_cast<uint32_t>(epoch), 0x53484646u /* "SHFF" */, cfg.seed);
      const uint64_t bits = (static_cast<uint64_t>(r.v[0]) << 32) | r.v[1];
      const int64_t j = static_cast<int64_t>(bits % static_cast<uint64_t>(i + 1));
      std::swap(order[i], order[j]);
    }
  }
  const int64_t world = cfg.world;
  int64_t per_rank;
  if (cfg.drop_last) {
    per_rank = n / world;
    if (cfg.batch_size > 0) per_rank -= per_rank % cfg.batch_size;
  } else {
    per_rank = (n + world - 1) / world;
  }
  std::vector<int64_t> out(static_cast<size_t>(per_rank));
  for (int64_t k = 0; k < per_rank; ++k) out[k] = order[(cfg.rank + k * world) % n];
  return out;
}

}  // namespace mira::data
