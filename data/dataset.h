// Datasets and the sampler. Three on-disk formats: IDX (MNIST / Fashion-MNIST, raw or gzip),
// CIFAR-10/100 binary, and ImageFolder (PATH/<class>/<image>.jpg|png). IDX and CIFAR are small
// enough to hold decoded in memory as one u8 [N, H, W, C] array; ImageFolder keeps only the file
// list and decodes on demand (data/jpeg.h), so the loader can choose a DCT downscale per sample.
//
// Every reader validates sizes before it allocates: a corrupt header is a mira::Error naming the
// path, never a crash or a multi-gigabyte allocation. The sampler shuffles with Philox keyed by
// (seed, epoch) only, then shards by rank, so all ranks agree on the epoch's order without talking.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace mira::data {

enum class DataFormat { Auto, Idx, Cifar10, Cifar100, ImageFolder };
enum class Split { Train, Test };

const char* format_name(DataFormat f);
// "auto", "idx", "cifar10", "cifar100", "imagefolder"; anything else is an Error.
DataFormat parse_format(const std::string& s);
Split parse_split(const std::string& s);  // "train" | "test"

// A decoded image, HWC u8, C = 1 or 3.
struct Image {
  int h = 0, w = 0, c = 0;
  std::vector<uint8_t> pixels;
};

class Dataset {
 public:
  virtual ~Dataset() = default;
  virtual int64_t size() const = 0;
  virtual int64_t label(int64_t i) const = 0;
  virtual int num_classes() const = 0;
  virtual std::string path() const = 0;
  virtual DataFormat format() const = 0;
  // All images resident in memory with one shape: then pixels() is u8 [size, H, W, C].
  virtual bool in_memory() const { return false; }
  virtual const uint8_t* pixels() const { return nullptr; }
  virtual int height() const { return 0; }  // in-memory datasets only
  virtual int width() const { return 0; }
  virtual int channels() const { return 0; }
};

// IDX or CIFAR, decoded: pixels u8 [N, H, W, C], labels in [0, num_classes).
class InMemoryDataset : public Dataset {
 public:
  InMemoryDataset(std::string path, DataFormat format, int h, int w, int c, int num_classes,
                  std::vector<uint8_t> pixels, std::vector<int64_t> labels);
  int64_t size() const override { return static_cast<int64_t>(labels_.size()); }
  int64_t label(int64_t i) const override { return labels_[i]; }
  int num_classes() const override { return num_classes_; }
  std::string path() const override { return path_; }
  DataFormat format() const override { return format_; }
  bool in_memory() const override { return true; }
  const uint8_t* pixels() const override { return pixels_.data(); }
  int height() const override { return h_; }
  int width() const override { return w_; }
  int channels() const override { return c_; }
  const uint8_t* image(int64_t i) const { return pixels_.data() + static_cast<size_t>(i) * h_ * w_ * c_; }

 private:
  std::string path_;
  DataFormat format_;
  int h_, w_, c_, num_classes_;
  std::vector<uint8_t> pixels_;
  std::vector<int64_t> labels_;
};

// Class folders, sorted by name (label = rank in that order, as torchvision's ImageFolder);
// files sorted by name within a class. Only .jpg/.jpeg/.png (any case) are listed.
class ImageFolderDataset : public Dataset {
 public:
  ImageFolderDataset(std::string root, std::vector<std::string> classes, std::vector<std::string> files,
                     std::vector<int64_t> labels);
  int64_t size() const override { return static_cast<int64_t>(files_.size()); }
  int64_t label(int64_t i) const override { return labels_[i]; }
  int num_classes() const override { return static_cast<int>(classes_.size()); }
  std::string path() const override { return root_; }
  DataFormat format() const override { return DataFormat::ImageFolder; }
  const std::string& file(int64_t i) const { return files_[i]; }  // full path
  const std::vector<std::string>& classes() const { return classes_; }

 private:
  std::string root_;
  std::vector<std::string> classes_, files_;
  std::vector<int64_t> labels_;
};

// Reads an IDX image file (magic 0x803, u8 [N, H, W]) and its label file (0x801, u8 [N]);
// either may be gzip-compressed (detected from the content, not the name).
std::unique_ptr<InMemoryDataset> read_idx(const std::string& images_path, const std::string& labels_path);
// Reads a whole file, gunzipping it when it starts with the gzip magic. max_bytes bounds the
// decompressed size (a gzip bomb or a corrupt length is an Error, not an out-of-memory).
std::vector<uint8_t> read_file_maybe_gzip(const std::string& path, size_t max_bytes = size_t(1) << 32);

// CIFAR binary directory. CIFAR-10: data_batch_{1..5}.bin / test_batch.bin, records of
// 1 label + 3072 bytes (planar RGB 32x32). CIFAR-100: train.bin / test.bin, records of
// coarse label + fine label + 3072 bytes; the fine label (100 classes) is used.
// Also accepts the directory one level up (cifar-10-batches-bin/, cifar-100-binary/).
std::unique_ptr<InMemoryDataset> read_cifar(const std::string& dir, DataFormat format, Split split);

// Progress while scanning a large tree: called with the number of files found so far.
using ScanProgress = std::function<void(int64_t files_found)>;
std::unique_ptr<ImageFolderDataset> scan_image_folder(const std::string& root, const ScanProgress& progress = {});

// Looks at a directory: IDX files (*-idx3-ubyte[.gz]), CIFAR batches, or class subfolders.
DataFormat detect_format(const std::string& path);

// Opens `path` in `format` (Auto: detect). IDX and CIFAR directories hold both splits; an
// ImageFolder tree is one split and ignores `split`. An empty or unreadable dataset is an Error
// naming the path.
std::unique_ptr<Dataset> open_dataset(const std::string& path, DataFormat format = DataFormat::Auto,
                                      Split split = Split::Train, const ScanProgress& progress = {});

// The samples `rows` of ds (in that order) as a dataset of their own: in-memory datasets copy
// their pixels, ImageFolder datasets their file list. Indices must be in range.
std::unique_ptr<Dataset> subset_dataset(const Dataset& ds, const std::vector<int64_t>& rows);

// The indices one rank visits in one epoch. Shuffle: Fisher-Yates with Philox draws keyed by
// seed and counted by (epoch, position), so it depends on (seed, epoch) only. Sharding: the
// shuffled order is cut into `world` interleaved shards (rank r takes positions r, r + world,
// ...). drop_last: every rank gets floor(n / world) samples, rounded down to a multiple of
// batch_size (when batch_size > 0) so no rank sees a short batch. Without drop_last, the order is
// padded by wrapping around so every rank gets ceil(n / world) samples (as DistributedSampler).
struct SamplerConfig {
  uint64_t seed = 0;
  bool shuffle = true;
  int rank = 0;
  int world = 1;
  bool drop_last = true;
  int64_t batch_size = 0;  // per rank; only used to round under drop_last
};
std::vector<int64_t> epoch_indices(int64_t n, int64_t epoch, const SamplerConfig& cfg);

}  // namespace mira::data
