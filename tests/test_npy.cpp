// labels: cpu
// NumPy .npy reading and writing: round trips of every supported dtype, headers as NumPy
// writes them (versions 1-3, Python 2 longs, scalar shapes), and malformed, hostile or
// truncated files, each of which must be a clean mira::Error.
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "engine/npy.h"
#include "testing.h"

using namespace mira;

namespace {

// A .npy file from its parts: version, header text (padded as NumPy pads it unless told not
// to) and raw data.
std::vector<uint8_t> make_npy(int major, const std::string& header, const std::vector<uint8_t>& data, bool pad = true) {
  std::string h = header;
  const size_t fixed = 6 + 2 + (major == 1 ? 2 : 4);
  if (pad) {
    while ((fixed + h.size() + 1) % 64) h += ' ';
    h += '\n';
  }
  std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<uint8_t>(major), 0};
  const size_t n = h.size();
  for (size_t b = 0; b < (major == 1 ? 2u : 4u); ++b) out.push_back(static_cast<uint8_t>((n >> (8 * b)) & 0xff));
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), data.begin(), data.end());
  return out;
}

std::vector<uint8_t> floats(std::initializer_list<float> v) {
  std::vector<uint8_t> out(v.size() * 4);
  std::memcpy(out.data(), std::data(v), out.size());
  return out;
}

bool parse_fails_with(const std::vector<uint8_t>& bytes, const std::string& needle) {
  try {
    npy_parse(bytes.data(), bytes.size());
  } catch (const Error& e) {
    const std::string msg = e.what();
    if (msg.find(needle) != std::string::npos) return true;
    MESSAGE("message lacks '", needle, "': ", msg);
    return false;
  }
  MESSAGE("parsed; expected an error mentioning '", needle, "'");
  return false;
}

std::string temp_path(const std::string& name) {
  return std::string("test_npy_") + name + ".npy";
}

}  // namespace

TEST_CASE("npy: round trips of every dtype through a file") {
  const std::vector<int64_t> shape = {2, 3};
  {
    const float v[] = {1.5f, -2.f, 0.f, 3.25f, 1e-30f, -1e30f};
    npy_write(temp_path("f4"), NpyType::F32, shape, v);
    const NpyArray a = npy_read(temp_path("f4"));
    CHECK(a.type == NpyType::F32);
    CHECK(a.shape == shape);
    CHECK(std::memcmp(a.data.data(), v, sizeof(v)) == 0);
  }
  {
    const double v[] = {1.0 / 3, -2, 1e300, 4, 5, 6};
    npy_write(temp_path("f8"), NpyType::F64, shape, v);
    const NpyArray a = npy_read(temp_path("f8"));
    CHECK(a.type == NpyType::F64);
    CHECK(std::memcmp(a.data.data(), v, sizeof(v)) == 0);
  }
  {
    const uint8_t v[] = {0, 1, 127, 128, 254, 255};
    npy_write(temp_path("u1"), NpyType::U8, shape, v);
    CHECK(std::memcmp(npy_read(temp_path("u1")).data.data(), v, sizeof(v)) == 0);
  }
  {
    const int64_t v[] = {-1, 0, 1, INT64_MAX, INT64_MIN, 42};
    npy_write(temp_path("i8"), NpyType::I64, shape, v);
    CHECK(std::memcmp(npy_read(temp_path("i8")).data.data(), v, sizeof(v)) == 0);
  }
  {
    const int32_t v[] = {-7, 0, 7, INT32_MAX, INT32_MIN, 3};
    npy_write(temp_path("i4"), NpyType::I32, shape, v);
    const Tensor t = npy_read_tensor(temp_path("i4"));  // widened to i64
    CHECK(t.dtype() == DType::I64);
    CHECK(t.to_vector() == std::vector<double>{-7, 0, 7, INT32_MAX, INT32_MIN, 3});
  }
  for (const char* n : {"f4", "f8", "u1", "i8", "i4"}) std::remove(temp_path(n).c_str());
}

TEST_CASE("npy: tensors, scalars, empty arrays, long headers") {
  const Tensor t = Tensor::from_vector({1, 2, 3, 4, 5, 6, 7, 8}, {2, 2, 2}, DType::F64);
  npy_write_tensor(temp_path("t"), t);
  const Tensor r = npy_read_tensor(temp_path("t"));
  CHECK(r.shape() == t.shape());
  CHECK(r.dtype() == DType::F64);
  CHECK(r.to_vector() == t.to_vector());
  std::remove(temp_path("t").c_str());

  // Serialised layout: magic, version 1.0, 64-byte aligned data, NumPy's header text.
  const float one = 2.5f;
  const auto bytes = npy_serialize(NpyType::F32, {}, &one);
  CHECK((bytes.size() - 4) % 64 == 0);
  CHECK(bytes[6] == 1);
  const std::string header(bytes.begin() + 10, bytes.end() - 4);
  CHECK(header.find("{'descr': '<f4', 'fortran_order': False, 'shape': (), }") == 0);
  CHECK(header.back() == '\n');
  const NpyArray scalar = npy_parse(bytes.data(), bytes.size());
  CHECK(scalar.shape.empty());
  CHECK(scalar.numel() == 1);
  CHECK(npy_to_tensor(scalar).shape() == Shape{1});
  CHECK(npy_to_tensor(scalar).item() == 2.5);

  const auto empty = npy_serialize(NpyType::F64, {0, 3}, nullptr);
  const NpyArray e = npy_parse(empty.data(), empty.size());
  CHECK(e.shape == std::vector<int64_t>{0, 3});
  CHECK(e.data.empty());

  const auto one_d = npy_serialize(NpyType::I64, {1}, std::vector<int64_t>{9}.data());
  CHECK(std::string(one_d.begin(), one_d.end()).find("'shape': (1,)") != std::string::npos);

  // Many dimensions: still a version 1.0 header; a Tensor takes at most 4.
  std::vector<int64_t> many(30, 1);
  const auto v1 = npy_serialize(NpyType::U8, many, std::vector<uint8_t>{7}.data());
  CHECK(v1[6] == 1);
  CHECK(npy_parse(v1.data(), v1.size()).shape == many);
  CHECK_THROWS_AS(npy_to_tensor(npy_parse(v1.data(), v1.size())), Error);  // 30 dims > 4
}

TEST_CASE("npy: headers as other writers produce them") {
  const auto data = floats({1, 2, 3, 4, 5, 6});
  for (int major : {1, 2, 3}) {
    CAPTURE(major);
    const auto b = make_npy(major, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", data);
    const NpyArray a = npy_parse(b.data(), b.size());
    CHECK(a.shape == std::vector<int64_t>{2, 3});
    CHECK(a.as<float>()[5] == 6.f);
  }
  // Key order, double quotes, no trailing comma, Python 2 longs, extra spaces, '|u1' / '<u1'.
  CHECK(npy_parse(make_npy(1, "{\"shape\": (2L, 3L), \"fortran_order\": False, \"descr\": \"<f4\"}", data).data(),
                  make_npy(1, "{\"shape\": (2L, 3L), \"fortran_order\": False, \"descr\": \"<f4\"}", data).size())
            .shape == std::vector<int64_t>{2, 3});
  const auto u = make_npy(1, "{ 'descr' : '<u1' , 'fortran_order' : False , 'shape' : ( 3 , ) }", {1, 2, 3});
  CHECK(npy_parse(u.data(), u.size()).type == NpyType::U8);
}

TEST_CASE("npy: malformed, hostile and truncated input is a clean error") {
  const auto data = floats({1, 2, 3, 4, 5, 6});
  const std::string good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  auto with = [&](const std::string& h) { return make_npy(1, h, data); };

  CHECK(parse_fails_with({}, "not a .npy"));
  CHECK(parse_fails_with({0x93, 'N', 'U', 'M'}, "not a .npy"));
  CHECK(parse_fails_with({'P', 'K', 3, 4, 0, 0, 0, 0, 0, 0, 0, 0}, "bad magic"));
  auto v9 = with(good);
  v9[6] = 9;
  CHECK(parse_fails_with(v9, "version"));
  // Header length beyond the file; absurd header length.
  auto longhdr = with(good);
  longhdr[8] = 0xff, longhdr[9] = 0xff;
  CHECK(parse_fails_with(longhdr, "truncated header"));
  auto huge = make_npy(2, good, data);
  huge[8] = 0xff, huge[9] = 0xff, huge[10] = 0xff, huge[11] = 0x7f;
  CHECK(parse_fails_with(huge, "implausibly large"));
  // Truncated data and trailing garbage.
  auto cut = with(good);
  cut.resize(cut.size() - 1);
  CHECK(parse_fails_with(cut, "truncated data"));
  auto extra = with(good);
  extra.push_back(0);
  CHECK(parse_fails_with(extra, "unexpected bytes"));
  // Shapes whose element count overflows, or that claim far more data than is there: an error
  // before any allocation.
  CHECK(parse_fails_with(with("{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }"),
                         "overflows"));
  CHECK(parse_fails_with(with("{'descr': '<f8', 'fortran_order': False, 'shape': (99999999999999999999,), }"),
                         "overflows int64"));
  CHECK(parse_fails_with(with("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }"),
                         "truncated data"));
  CHECK(parse_fails_with(with("{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3), }"), "non-negative"));
  // Unsupported or bad fields.
  CHECK(parse_fails_with(with("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }"), "big-endian"));
  CHECK(parse_fails_with(with("{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3), }"), "unsupported dtype"));
  CHECK(parse_fails_with(with("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }"), "Fortran"));
  CHECK(parse_fails_with(with("{'descr': '<f4', 'shape': (2, 3), }"), "lacks"));
  CHECK(parse_fails_with(with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), 'x': 1}"), "unexpected key"));
  CHECK(parse_fails_with(with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)"), "malformed"));
  CHECK(parse_fails_with(with("{'descr': '<f4', 'fortran_order': Fals, 'shape': (2, 3)}"), "True or False"));
  CHECK(parse_fails_with(with("{'descr': '<f4' 'fortran_order': False, 'shape': (2, 3)}"), "malformed"));
  CHECK(parse_fails_with(with("{'descr': '<f4, 'fortran_order': False, 'shape': (2, 3)}"), "unsupported dtype"));
  CHECK(parse_fails_with(with("{'descr': '<f4', 'fortran_order': False, 'shape': (2 3)}"), "malformed"));
  CHECK(parse_fails_with(with("{'descr': '<f4', 'fortran_order': False, 'shape': [2, 3]}"), "malformed"));
  CHECK(parse_fails_with(with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3)} junk"), "after the header"));
  CHECK(parse_fails_with(with(""), "malformed"));
  CHECK(parse_fails_with(with("{'descr': '" + std::string(100, 'f') + "', 'fortran_order': False, 'shape': ()}"),
                         "too long"));

  // Every truncation of a good file fails cleanly (never crashes, never reads past the end).
  const auto full = with(good);
  for (size_t n = 0; n < full.size(); ++n) {
    CAPTURE(n);
    CHECK_THROWS_AS(npy_parse(full.data(), n), Error);
  }
  // Files: missing, truncated on disk.
  CHECK_THROWS_AS(npy_read("/nonexistent/dir/x.npy"), Error);
  {
    std::ofstream f(temp_path("cut"), std::ios::binary);
    f.write(reinterpret_cast<const char*>(cut.data()), static_cast<std::streamsize>(cut.size()));
  }
  try {
    npy_read(temp_path("cut"));
    CHECK(false);
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("truncated data") != std::string::npos);
    CHECK(std::string(e.what()).find(temp_path("cut")) != std::string::npos);
  }
  std::remove(temp_path("cut").c_str());
}

TEST_CASE("npy: a write that fails (a full disk) leaves the earlier file whole and no temp file") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("test_npy_full_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string path = (dir / "a.npy").string();
  const std::vector<float> old = {1, 2, 3};
  npy_write(path, NpyType::F32, {3}, old.data());
  const std::string before = testing::slurp_text(path);
  // A child whose files may not grow past 100 bytes (SIGXFSZ ignored: writes fail with EFBIG).
  const std::vector<float> big(1000, 0.5f);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const rlimit lim{100, 100};
    ::signal(SIGXFSZ, SIG_IGN);
    if (::setrlimit(RLIMIT_FSIZE, &lim) != 0) ::_exit(3);
    try {
      npy_write(path, NpyType::F32, {1000}, big.data());
    } catch (const Error& e) {
      const std::string msg = e.what();
      ::_exit(msg.find("npy_write: cannot write '" + path + "'") != std::string::npos &&
                      msg.find("File too large") != std::string::npos
                  ? 1
                  : 2);
    }
    ::_exit(0);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFEXITED(status));
  CHECK_MESSAGE(WEXITSTATUS(status) == 1,
                "0: the write succeeded; 2: its error lacks the path or reason; 3: no rlimit");
  CHECK(testing::slurp_text(path) == before);
  int files = 0;
  for (const auto& e : fs::directory_iterator(dir)) files += e.path().filename() == "a.npy" ? 0 : 1;
  CHECK(files == 0);
  // Without the limit the same write replaces the file.
  npy_write(path, NpyType::F32, {1000}, big.data());
  CHECK(npy_read_tensor(path).numel() == 1000);
  fs::remove_all(dir);
}
