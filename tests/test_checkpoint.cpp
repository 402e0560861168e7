// labels: cpu
// safetensors files: round trips, atomic writes, every kind of corruption a clean error; the
// MIRA model's state (student + EMA teacher) saved and restored exactly; reports of missing,
// unexpected and mis-shaped tensors; the EMA update.
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "engine/optim.h"
#include "engine/safetensors.h"
#include "models/mira_model.h"
#include "testing.h"

using namespace mira;
using namespace mira::models;
using mira::testing::TempDir;
namespace fs = std::filesystem;

namespace {

std::string read_bytes(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_bytes(const std::string& p, const std::string& b) {
  std::ofstream out(p, std::ios::binary);
  out << b;
}

std::string with_header(const std::string& json, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((json.size() >> (8 * i)) & 0xff);
  return out + json + data;
}

MiraModelConfig tiny_config() {
  MiraModelConfig c;
  c.backbone = ResNetConfig::tiny();
  c.head = HeadConfig{32, 16, 20};
  return c;
}

}  // namespace

TEST_CASE("safetensors round trip: dtypes, scalars, metadata") {
  TempDir d;
  const std::string p = d / "a.safetensors";
  Tensor f = Tensor::randn({2, 3, 4, 5}, 1), g = Tensor::randn({7}, 2, 0, 1, DType::F64);
  Tensor u = Tensor::full({3}, 200, DType::U8), s = Tensor::full({}, 42, DType::I64);
  save_safetensors(p, {{"f", f}, {"g", g}, {"u", u}, {"s", s}}, {{"step", "17"}});
  SafetensorsFile r = load_safetensors(p);
  CHECK(r.metadata.at("step") == "17");
  CHECK(r.tensors.at("f").to_vector() == f.to_vector());
  CHECK(r.tensors.at("g").dtype() == DType::F64);
  CHECK(r.tensors.at("g").to_vector() == g.to_vector());
  CHECK(r.tensors.at("u").to_vector() == u.to_vector());
  CHECK(r.tensors.at("s").shape().ndim() == 0);
  CHECK(r.tensors.at("s").item() == 42);
  // No temp file is left next to it, and the header starts data 8-byte aligned.
  int files = 0;
  for (auto& e : fs::directory_iterator(d.path)) files += e.is_regular_file();
  CHECK(files == 1);
  std::string bytes = read_bytes(p);
  uint64_t hlen = 0;
  for (int i = 0; i < 8; ++i) hlen |= uint64_t(uint8_t(bytes[i])) << (8 * i);
  CHECK((8 + hlen) % 8 == 0);
  CHECK_THROWS_AS(save_safetensors(p, {{"x", f}, {"x", f}}), Error);
}

TEST_CASE("safetensors: corrupt and truncated files are clean errors") {
  TempDir d;
  const std::string good = d / "good.safetensors";
  save_safetensors(good, {{"w", Tensor::randn({4, 4}, 1)}});
  const std::string bytes = read_bytes(good);
  const std::string bad = d / "bad.safetensors";
  auto expect_error = [&](const std::string& content, const char* what) {
    write_bytes(bad, content);
    CAPTURE(what);
    CHECK_THROWS_AS(load_safetensors(bad), Error);
  };
  for (size_t cut : {size_t(0), size_t(4), size_t(8), size_t(20), bytes.size() - 1}) {
    expect_error(bytes.substr(0, cut), "truncated");
  }
  std::string huge = bytes;
  huge[7] = '\x7f';  // header length ~ 2^62
  expect_error(huge, "header length past the end");
  expect_error(with_header("{not json", ""), "bad json");
  expect_error(with_header("[1,2]", ""), "not an object");
  expect_error(with_header(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "1234"), "data past end");
  expect_error(with_header(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", "12345678"), "size mismatch");
  expect_error(with_header(R"({"w":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})", "12345678"), "dtype");
  expect_error(with_header(R"({"w":{"dtype":"U8","shape":[1,1,1,1,1],"data_offsets":[0,1]}})", "1"), "5-D");
  expect_error(with_header(R"({"w":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}})", "1"), "negative dim");
  expect_error(with_header(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                           "12345678"),
               "overflowing shape");
  expect_error(with_header(R"({"w":{"dtype":"F32","shape":[2]}})", "12345678"), "no offsets");
  expect_error(with_header(R"({"__metadata__":{"a":1}})", ""), "non-string metadata");
  CHECK_THROWS_AS(load_safetensors(d / "missing.safetensors"), Error);
  // Damage after the write that keeps the structure (one flipped bit in the data): the checksum
  // the writer stored says so. A file without one (another writer's) loads unchecked.
  const SafetensorsFile gf = load_safetensors(good);
  REQUIRE(gf.metadata.count(kSafetensorsCrcKey));
  CHECK(gf.metadata.at(kSafetensorsCrcKey).size() == 8);
  for (size_t at : {bytes.size() - 64, bytes.size() - 1}) {
    std::string flipped = bytes;
    flipped[at] = static_cast<char>(flipped[at] ^ 0x10);
    write_bytes(bad, flipped);
    CHECK_THROWS_WITH_AS(load_safetensors(bad), doctest::Contains("checksum"), Error);
  }
  write_bytes(bad, with_header(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", "12345678"));
  CHECK(load_safetensors(bad).tensors.at("w").numel() == 2);
  // Saved again with the loaded metadata (a round trip): the new data's checksum replaces it.
  SafetensorsFile edited = gf;
  edited.tensors.at("w").data<float>()[0] += 1.f;
  save_safetensors(bad, {edited.tensors.begin(), edited.tensors.end()}, edited.metadata);
  CHECK(load_safetensors(bad).tensors.at("w").data<float>()[0] == edited.tensors.at("w").data<float>()[0]);
  CHECK(load_safetensors(bad).metadata.at(kSafetensorsCrcKey) != gf.metadata.at(kSafetensorsCrcKey));
  // A failed write leaves the previous file intact.
  CHECK_THROWS_AS(save_safetensors(d / "no/such/dir/x.safetensors", {{"w", Tensor::randn({1}, 1)}}), Error);
  CHECK(read_bytes(good) == bytes);
}

TEST_CASE("EMA update is one pass over the teacher's parameters") {
  MiraModel m(tiny_config());
  m.init(3);
  CHECK(m.teacher().flat_params().to_vector() ==
        m.student().flat_params().slice_batch(0, m.teacher().flat_params().numel()).to_vector());
  std::vector<double> t0 = m.teacher().flat_params().to_vector();
  // Move the student, then average.
  const Tensor& w = m.student().get("backbone.conv1.weight");
  w.copy_(Tensor::randn(w.shape(), 9));
  std::vector<double> s = m.student().flat_params().to_vector();
  std::vector<double> buffers_before = m.teacher().flat_buffers().to_vector();
  m.ema_update(0.99);
  std::vector<double> t1 = m.teacher().flat_params().to_vector();
  for (size_t i = 0; i < t1.size(); ++i) {
    REQUIRE(std::fabs(t1[i] - float(0.99f * float(t0[i]) + 0.01f * float(s[i]))) <= 1e-6);
  }
  CHECK(m.teacher().flat_buffers().to_vector() == buffers_before);  // running stats untouched
  CHECK_THROWS_AS(ema_update(m.teacher().flat_params(), m.student().flat_params(), 1.5), Error);
}

TEST_CASE("MIRA checkpoint: save, load into a fresh model, exact") {
  TempDir d;
  MiraModel a(tiny_config());
  a.init(1);
  // Make the running statistics and counters non-trivial with a few train-mode forwards.
  Tensor x = Tensor::randn({4, 32, 32, 3}, 5);
  for (int i = 0; i < 2; ++i) {
    a.student_logits(x);
    a.teacher_logits(x);
  }
  clear_tape();
  const std::string p = d / "ckpt.safetensors";
  save_safetensors(p, a.state(), {{"step", "2"}});
  MiraModel b(tiny_config());
  b.init(2);
  b.load_state(load_safetensors(p));
  CHECK(b.student().flat_params().to_vector() == a.student().flat_params().to_vector());
  CHECK(b.student().flat_buffers().to_vector() == a.student().flat_buffers().to_vector());
  CHECK(b.teacher().flat_params().to_vector() == a.teacher().flat_params().to_vector());
  CHECK(b.teacher().flat_buffers().to_vector() == a.teacher().flat_buffers().to_vector());
  CHECK(b.teacher_bns()[0]->num_batches_tracked == 2);
  CHECK(b.features(x, true).to_vector() == a.features(x, true).to_vector());
  // File names are torchvision's under backbone. / ema.backbone., conv weights OIHW.
  SafetensorsFile f = load_safetensors(p);
  CHECK(f.tensors.at("backbone.conv1.weight").shape() == Shape{16, 3, 3, 3});
  CHECK(f.tensors.count("ema.backbone.layer4.0.bn2.running_var") == 1);
  CHECK(f.tensors.count("ema.projector.6.bias") == 1);
  CHECK(f.tensors.count("ema.prototypes.weight_v") == 0);  // the teacher uses the student's
  CHECK(f.tensors.count("prototypes.weight_g") == 1);
}

TEST_CASE("loading reports missing, unexpected and mis-shaped tensors, and writes nothing then") {
  TempDir d;
  ParamStore ps;
  ResNet net(ps, ResNetConfig::tiny(), "backbone.");
  ps.finalize();
  net.init(1);
  NamedTensors st;
  append_state(st, ps, net.batch_norms(), "backbone.", "");  // a plain torchvision-style dict
  st.emplace_back("fc.weight", Tensor::randn({10, 128}, 1));
  const std::string p = d / "tv.safetensors";
  save_safetensors(p, st);
  // Plain names load under our prefix; the classifier is ignorable.
  ParamStore ps2;
  ResNet net2(ps2, ResNetConfig::tiny(), "backbone.");
  ps2.finalize();
  LoadReport rep = load_state(ps2, net2.batch_norms(), load_safetensors(p), "backbone.", "", false, {"fc."});
  CHECK(rep.ok());
  CHECK(ps2.flat_params().to_vector() == ps.flat_params().to_vector());
  // Strict without the ignore list: fc.weight is unexpected.
  CHECK_THROWS_AS(load_state(ps2, net2.batch_norms(), load_safetensors(p), "backbone.", "", true), Error);
  // A different architecture: mismatched shapes are reported and nothing is written.
  ParamStore ps3;
  ResNetConfig wide = ResNetConfig::tiny();
  wide.widths = {16, 32, 64, 256};
  ResNet net3(ps3, wide, "backbone.");
  ps3.finalize();
  std::vector<double> before = ps3.flat_params().to_vector();
  try {
    load_state(ps3, net3.batch_norms(), load_safetensors(p), "backbone.", "", false, {"fc."});
    FAIL("expected an error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("layer4.0.conv1.weight") != std::string::npos);
  }
  CHECK(ps3.flat_params().to_vector() == before);
  // A model with an extra block: missing entries are named.
  ParamStore ps4;
  ResNetConfig deeper = ResNetConfig::tiny();
  deeper.blocks = {1, 1, 1, 2};
  ResNet net4(ps4, deeper, "backbone.");
  ps4.finalize();
  LoadReport r4 = load_state(ps4, net4.batch_norms(), load_safetensors(p), "backbone.", "", false, {"fc."});
  CHECK(!r4.ok());
  CHECK(r4.str().find("layer4.1.conv1.weight") != std::string::npos);
}
