// labels: cpu
// Dataset readers on files written here (IDX raw and gzip, CIFAR-10/100 binary, ImageFolder),
// every malformed-file case as a clean Error, format detection, the sampler's contract, and
// real Fashion-MNIST (tools/fetch_fashion_mnist.sh; skipped with a message when unreachable).
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>

#include "data/dataset.h"
#include "testing.h"

using namespace mira;
using namespace mira::data;
using mira::testing::TempDir;
namespace fs = std::filesystem;

namespace {

void write_file(const std::string& path, const std::vector<uint8_t>& bytes, bool gzip = false) {
  fs::create_directories(fs::path(path).parent_path());
  if (gzip) {
    gzFile g = gzopen(path.c_str(), "wb");
    REQUIRE(g != nullptr);
    REQUIRE(gzwrite(g, bytes.data(), static_cast<unsigned>(bytes.size())) == static_cast<int>(bytes.size()));
    REQUIRE(gzclose(g) == Z_OK);
    return;
  }
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), static_cast<std::streamsize>(bytes.size()));
  REQUIRE(f.good());
}

void put_be32(std::vector<uint8_t>& v, uint32_t x) {
  for (int s = 24; s >= 0; s -= 8) v.push_back(static_cast<uint8_t>(x >> s));
}

// IDX pair with n images h x w; pixel (i, y, x) = i + 3y + 5x, label i % 10.
void write_idx(const TempDir& d, const std::string& prefix, int n, int h, int w, bool gzip) {
  std::vector<uint8_t> img, lab;
  put_be32(img, 0x803);
  put_be32(img, n);
  put_be32(img, h);
  put_be32(img, w);
  for (int i = 0; i < n; ++i)
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) img.push_back(static_cast<uint8_t>(i + 3 * y + 5 * x));
  put_be32(lab, 0x801);
  put_be32(lab, n);
  for (int i = 0; i < n; ++i) lab.push_back(static_cast<uint8_t>(i % 10));
  const std::string gz = gzip ? ".gz" : "";
  write_file(d / (prefix + "-images-idx3-ubyte" + gz), img, gzip);
  write_file(d / (prefix + "-labels-idx1-ubyte" + gz), lab, gzip);
}

// CIFAR record: label byte(s) then planar RGB; pixel value = (label + channel * 7 + k) % 256.
std::vector<uint8_t> cifar_records(int n, bool c100, int label_offset) {
  std::vector<uint8_t> out;
  for (int i = 0; i < n; ++i) {
    const int label = (i + label_offset) % (c100 ? 100 : 10);
    if (c100) out.push_back(static_cast<uint8_t>(label / 5));  // coarse
    out.push_back(static_cast<uint8_t>(label));
    for (int ch = 0; ch < 3; ++ch)
      for (int k = 0; k < 1024; ++k) out.push_back(static_cast<uint8_t>((label + ch * 7 + k) % 256));
  }
  return out;
}

template <typename F>
void check_error(F&& f, const std::string& needle) {
  try {
    f();
  } catch (const Error& e) {
    const std::string msg = std::string(e.what()) + " (wanted: " + needle + ")";
    CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, msg);
    return;
  }
  FAIL("expected an error mentioning " << needle);
}

}  // namespace

TEST_CASE("IDX, raw and gzip, both splits") {
  for (bool gz : {false, true}) {
    TempDir d;
    write_idx(d, "train", 25, 6, 4, gz);
    write_idx(d, "t10k", 7, 6, 4, gz);
    CHECK(detect_format(d.path.string()) == DataFormat::Idx);
    auto train = open_dataset(d.path.string());
    auto test = open_dataset(d.path.string(), DataFormat::Idx, Split::Test);
    REQUIRE(train->size() == 25);
    REQUIRE(test->size() == 7);
    REQUIRE(train->in_memory());
    CHECK(train->height() == 6);
    CHECK(train->width() == 4);
    CHECK(train->channels() == 1);
    CHECK(train->num_classes() == 10);
    CHECK(train->label(13) == 3);
    const uint8_t* px = train->pixels();
    CHECK(px[(13 * 6 + 2) * 4 + 3] == 13 + 6 + 15);
  }
}

TEST_CASE("IDX: malformed files are clean errors naming the file") {
  TempDir d;
  write_idx(d, "train", 5, 3, 3, false);
  const std::string img = d / "train-images-idx3-ubyte", lab = d / "train-labels-idx1-ubyte";
  std::vector<uint8_t> good_img, good_lab;
  {
    std::ifstream f(img, std::ios::binary);
    good_img.assign(std::istreambuf_iterator<char>(f), {});
    std::ifstream g(lab, std::ios::binary);
    good_lab.assign(std::istreambuf_iterator<char>(g), {});
  }
  auto with_img = [&](std::vector<uint8_t> bytes, const std::string& needle, bool gzip = false) {
    write_file(d / "bad-images", bytes, gzip);
    check_error([&] { read_idx(d / "bad-images", lab); }, needle);
  };
  with_img({}, "too short");
  with_img({0, 0, 8, 1, 0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 3}, "bad IDX magic");
  std::vector<uint8_t> trunc(good_img.begin(), good_img.end() - 4);
  with_img(trunc, "truncated");
  with_img(trunc, "truncated", true);
  std::vector<uint8_t> huge = good_img;  // header claims 2^31 images: must not allocate for them
  huge[4] = 0x80;
  with_img(huge, "bad-images");
  std::vector<uint8_t> big_dims = good_img;
  big_dims[8] = 0x7f;
  with_img(big_dims, "implausible");
  // wrong label count
  std::vector<uint8_t> lab6 = good_lab;
  lab6[7] = 6;
  lab6.push_back(1);
  write_file(d / "bad-labels", lab6);
  check_error([&] { read_idx(img, d / "bad-labels"); }, "labels");
  // corrupt and truncated gzip
  std::vector<uint8_t> gz_bytes;
  write_file(d / "g.gz", good_img, true);
  {
    std::ifstream f(d / "g.gz", std::ios::binary);
    gz_bytes.assign(std::istreambuf_iterator<char>(f), {});
  }
  std::vector<uint8_t> gz_trunc(gz_bytes.begin(), gz_bytes.begin() + gz_bytes.size() / 2);
  with_img(gz_trunc, "gzip");
  std::vector<uint8_t> gz_bad = gz_bytes;
  for (size_t i = 12; i < gz_bad.size() - 8; ++i) gz_bad[i] ^= 0xA5;
  with_img(gz_bad, "gzip");
  // a gzip bomb: a valid 5x3x3 header followed by 8 MB of zeros. Decompression stops one chunk
  // past the 61 bytes the header announces instead of inflating the whole stream.
  std::vector<uint8_t> bomb = good_img;
  bomb.resize(size_t(8) << 20, 0);
  with_img(bomb, "more than the 61 bytes its header announces", true);
  std::vector<uint8_t> lab_bomb = good_lab;
  lab_bomb.resize(size_t(8) << 20, 0);
  write_file(d / "bomb-labels", lab_bomb, true);
  check_error([&] { read_idx(img, d / "bomb-labels"); }, "more than the 13 bytes its header announces");
  // a gzip stream whose header is bad fails at the header, whatever follows
  std::vector<uint8_t> bad_magic_bomb = bomb;
  bad_magic_bomb[2] = 9;
  with_img(bad_magic_bomb, "bad IDX magic", true);
  check_error([&] { read_idx(d / "missing", lab); }, "missing");
  // a directory without the files
  TempDir empty;
  check_error([&] { open_dataset(empty.path.string(), DataFormat::Idx); }, empty.path.string());
  check_error([&] { open_dataset(empty.path.string()); }, empty.path.string());
  check_error([&] { open_dataset((empty.path / "nope").string()); }, "nope");
}

TEST_CASE("CIFAR-10 and CIFAR-100 binary") {
  TempDir d;
  const fs::path c10 = d.path / "cifar-10-batches-bin";
  for (int b = 1; b <= 5; ++b)
    write_file((c10 / ("data_batch_" + std::to_string(b) + ".bin")).string(), cifar_records(4, false, b));
  write_file((c10 / "test_batch.bin").string(), cifar_records(3, false, 0));
  CHECK(detect_format(d.path.string()) == DataFormat::Cifar10);  // the parent directory works too
  CHECK(detect_format(c10.string()) == DataFormat::Cifar10);
  auto train = open_dataset(c10.string());
  auto test = open_dataset(d.path.string(), DataFormat::Auto, Split::Test);
  REQUIRE(train->size() == 20);
  REQUIRE(test->size() == 3);
  CHECK(train->num_classes() == 10);
  CHECK(train->channels() == 3);
  CHECK(train->height() == 32);
  // batch 2, record 1: label (1 + 2) % 10 = 3; HWC pixel k = 5, channel 2 = (3 + 14 + 5) % 256
  CHECK(train->label(5) == 3);
  CHECK(train->pixels()[5 * 3072 + 5 * 3 + 2] == 22);

  const fs::path c100 = d.path / "c100";
  write_file((c100 / "train.bin").string(), cifar_records(12, true, 90));
  write_file((c100 / "test.bin").string(), cifar_records(2, true, 0));
  CHECK(detect_format(c100.string()) == DataFormat::Cifar100);
  auto t100 = open_dataset(c100.string());
  REQUIRE(t100->size() == 12);
  CHECK(t100->num_classes() == 100);
  CHECK(t100->label(11) == 1);  // (11 + 90) % 100: the fine label, not the coarse one
  CHECK(t100->label(3) == 93);

  // truncated batch, label out of range, missing batch
  std::vector<uint8_t> rec = cifar_records(2, false, 0);
  rec.pop_back();
  write_file((c10 / "test_batch.bin").string(), rec);
  check_error([&] { open_dataset(c10.string(), DataFormat::Cifar10, Split::Test); }, "test_batch.bin");
  rec = cifar_records(2, false, 0);
  rec[3073] = 10;
  write_file((c10 / "test_batch.bin").string(), rec);
  check_error([&] { open_dataset(c10.string(), DataFormat::Cifar10, Split::Test); }, "label 10");
  fs::remove(c10 / "data_batch_3.bin");
  check_error([&] { open_dataset(c10.string()); }, "data_batch_3.bin");
  write_file((c10 / "test_batch.bin").string(), {});
  check_error([&] { open_dataset(c10.string(), DataFormat::Cifar10, Split::Test); }, "empty");
}

TEST_CASE("ImageFolder scan: sorted classes and files, progress, errors") {
  TempDir d;
  const std::vector<uint8_t> junk = {1, 2, 3};  // content is not read by the scan
  write_file(d / "zebra/b.jpg", junk);
  write_file(d / "zebra/a.JPEG", junk);
  write_file(d / "apple/x.png", junk);
  write_file(d / "apple/sub/y.jpg", junk);  // nested files belong to the class
  write_file(d / "apple/notes.txt", junk);
  write_file(d / "mango/c.jpg", junk);
  fs::create_directories(d.path / "empty_class");
  CHECK(detect_format(d.path.string()) == DataFormat::ImageFolder);
  std::vector<int64_t> progress;
  auto ds = scan_image_folder(d.path.string(), [&](int64_t n) { progress.push_back(n); });
  REQUIRE(ds->size() == 5);
  CHECK(ds->classes() == std::vector<std::string>{"apple", "empty_class", "mango", "zebra"});
  CHECK(ds->num_classes() == 4);
  CHECK(ds->file(0).find("apple/sub/y.jpg") != std::string::npos);  // "sub/y.jpg" < "x.png"
  CHECK(ds->file(1).find("apple/x.png") != std::string::npos);
  CHECK(ds->label(2) == 2);
  CHECK(ds->file(3).find("zebra/a.JPEG") != std::string::npos);
  CHECK(ds->label(4) == 3);
  REQUIRE(!progress.empty());
  CHECK(progress.back() == 5);

  TempDir e;
  fs::create_directories(e.path / "cls");
  write_file(e / "cls/readme.txt", junk);
  check_error([&] { open_dataset(e.path.string()); }, e.path.string());
  check_error([&] { scan_image_folder(e / "missing"); }, "missing");
}

TEST_CASE("format names") {
  CHECK(parse_format("cifar100") == DataFormat::Cifar100);
  CHECK(parse_split("test") == Split::Test);
  CHECK_THROWS_AS(parse_format("jpeg"), Error);
  CHECK_THROWS_AS(parse_split("val"), Error);
}

TEST_CASE("sampler: deterministic shuffle, sharding, drop_last") {
  SamplerConfig cfg;
  cfg.seed = 42;
  const int64_t n = 103;
  const auto a = epoch_indices(n, 3, cfg), b = epoch_indices(n, 3, cfg), c = epoch_indices(n, 4, cfg);
  CHECK(a == b);
  CHECK(a != c);
  REQUIRE(a.size() == 103);
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  std::vector<int64_t> iota(n);
  std::iota(iota.begin(), iota.end(), 0);
  CHECK(sorted == iota);  // a permutation
  cfg.seed = 43;
  CHECK(epoch_indices(n, 3, cfg) != a);
  cfg.seed = 42;
  cfg.shuffle = false;
  CHECK(epoch_indices(n, 3, cfg) == iota);
  cfg.shuffle = true;

  // 4 ranks with drop_last: disjoint shards of floor(103 / 4) = 25, union inside the epoch order
  cfg.world = 4;
  std::set<int64_t> seen;
  for (int r = 0; r < 4; ++r) {
    cfg.rank = r;
    const auto s = epoch_indices(n, 3, cfg);
    REQUIRE(s.size() == 25);
    for (size_t k = 0; k < s.size(); ++k) CHECK(s[k] == a[r + 4 * k]);
    seen.insert(s.begin(), s.end());
  }
  CHECK(seen.size() == 100);
  // batch rounding under drop_last: 25 -> 24 with batch 8
  cfg.batch_size = 8;
  CHECK(epoch_indices(n, 3, cfg).size() == 24);
  // without drop_last every rank gets ceil(103 / 4) = 26 and every sample is seen
  cfg.drop_last = false;
  seen.clear();
  for (int r = 0; r < 4; ++r) {
    cfg.rank = r;
    const auto s = epoch_indices(n, 3, cfg);
    REQUIRE(s.size() == 26);
    seen.insert(s.begin(), s.end());
  }
  CHECK(seen.size() == 103);
  cfg.rank = 4;
  CHECK_THROWS_AS(epoch_indices(n, 3, cfg), Error);
  CHECK_THROWS_AS(epoch_indices(0, 3, SamplerConfig{}), Error);

  // the shuffle is uniform enough: position of element 0 over many epochs
  SamplerConfig u;
  std::vector<int> first(10, 0);
  for (int e = 0; e < 5000; ++e) ++first[epoch_indices(10, e, u)[0]];
  for (int k = 0; k < 10; ++k) CHECK(std::abs(first[k] - 500) < 100);  // 4.7 sigma
}

TEST_CASE("real Fashion-MNIST from Debian's archive") {
  const std::string dir = std::string(MIRA_SOURCE_DIR) + "/data_cache/fashion-mnist";
  const std::string cmd =
      "bash '" + std::string(MIRA_SOURCE_DIR) + "/tools/fetch_fashion_mnist.sh' '" + dir + "' >/dev/null 2>&1";
  const int rc = std::system(cmd.c_str());
  if (rc != 0) {
    MESSAGE("SKIPPED real Fashion-MNIST: tools/fetch_fashion_mnist.sh exited with " << rc << " (archive unreachable?)");
    return;
  }
  auto train = open_dataset(dir);
  auto test = open_dataset(dir, DataFormat::Auto, Split::Test);
  CHECK(train->format() == DataFormat::Idx);
  REQUIRE(train->size() == 60000);
  REQUIRE(test->size() == 10000);
  CHECK(train->height() == 28);
  CHECK(train->width() == 28);
  CHECK(train->num_classes() == 10);
  std::vector<int> count(10, 0);
  for (int64_t i = 0; i < train->size(); ++i) ++count[train->label(i)];
  for (int k = 0; k < 10; ++k) CHECK(count[k] == 6000);  // balanced classes
  double mean = 0;
  const uint8_t* px = train->pixels();
  for (int64_t i = 0; i < 60000LL * 784; ++i) mean += px[i];
  mean /= 60000.0 * 784 * 255;
  CHECK(mean == doctest::Approx(0.2860).epsilon(0.002));  // the recipe's normalisation mean
  CHECK(train->label(0) == 9);                            // the first training image is an ankle boot
}
