// labels: cpu
// k-NN evaluation core (apps/common/knn.h) and the row top-k kernel (kernels/cpu/topk.h)
// against brute-force references written here from the protocol: a full sort of every
// similarity, ties included, k larger than a class; chunked and unchunked runs agree exactly;
// plus the evaluation helpers (argument parser, subsets, eval transform, checkpoint
// architecture inference and its errors).
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "apps/common/cli.h"
#include "apps/common/eval_data.h"
#include "apps/common/eval_transform.h"
#include "apps/common/features.h"
#include "apps/common/knn.h"
#include "engine/rng.h"
#include "kernels/cpu/topk.h"
#include "models/checkpoint.h"
#include "testing.h"

using namespace mira;
using namespace mira::apps;

namespace {

// Values on a coarse grid so that many are equal (ties), some -0.0.
std::vector<float> tie_heavy(int64_t n, uint64_t seed) {
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i) {
    const int q = static_cast<int>(philox_uniform(seed, i) * 7) - 3;
    v[i] = q == 0 && (i % 2) ? -0.0f : q * 0.25f;
  }
  return v;
}

// Brute-force: full stable sort by value descending (equal values keep index order).
void brute_topk(const std::vector<float>& row, int k, std::vector<float>& val, std::vector<int64_t>& idx) {
  std::vector<int64_t> o(row.size());
  std::iota(o.begin(), o.end(), 0);
  std::stable_sort(o.begin(), o.end(), [&](int64_t a, int64_t b) { return row[a] > row[b]; });
  val.resize(k);
  idx.resize(k);
  for (int j = 0; j < k; ++j) {
    idx[j] = o[j];
    val[j] = row[o[j]];
  }
}

// Brute-force k-NN in double: normalise, all similarities, stable full sort, DINO vote.
KnnResult brute_knn(const Tensor& tr, const std::vector<int64_t>& ytr, const Tensor& te,
                    const std::vector<int64_t>& yte, const std::vector<int>& ks, double T, int C) {
  const int64_t ntr = tr.dim(0), nte = te.dim(0), D = tr.dim(1);
  std::vector<double> a = tr.to_vector(), b = te.to_vector();
  auto norm = [D](std::vector<double>& x) {
    for (size_t r = 0; r * D < x.size(); ++r) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += x[r * D + d] * x[r * D + d];
      s = std::max(std::sqrt(s), 1e-12);
      for (int64_t d = 0; d < D; ++d) x[r * D + d] /= s;
    }
  };
  norm(a);
  norm(b);
  KnnResult res;
  for (int k : ks) {
    KnnScore sc;
    sc.k = k;
    std::vector<int32_t> pred;
    for (int64_t i = 0; i < nte; ++i) {
      std::vector<double> sim(ntr);
      for (int64_t j = 0; j < ntr; ++j) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d) s += b[i * D + d] * a[j * D + d];
        sim[j] = s;
      }
      std::vector<int64_t> o(ntr);
      std::iota(o.begin(), o.end(), 0);
      std::stable_sort(o.begin(), o.end(), [&](int64_t x, int64_t y) { return sim[x] > sim[y]; });
      std::vector<double> score(C, 0.0);
      for (int j = 0; j < k; ++j) score[ytr[o[j]]] += std::exp(sim[o[j]] / T);
      std::vector<int> cls(C);
      std::iota(cls.begin(), cls.end(), 0);
      std::stable_sort(cls.begin(), cls.end(), [&](int x, int y) { return score[x] > score[y]; });
      pred.push_back(cls[0]);
      sc.correct1 += cls[0] == yte[i];
      for (int j = 0; j < std::min({5, k, C}); ++j) sc.correct5 += cls[j] == yte[i];
    }
    res.scores.push_back(sc);
    res.predicted.push_back(pred);
  }
  return res;
}

// Features whose normalised dot products are exact in f32: rows with entries in {0, +-1/2}
// and four non-zeros (unit norm), so similarities are multiples of 1/4 and tie massively.
Tensor exact_features(int64_t n, int64_t D, uint64_t seed) {
  std::vector<double> v(n * D, 0.0);
  for (int64_t i = 0; i < n; ++i)
    for (int j = 0; j < 4; ++j) {
      const int64_t d = static_cast<int64_t>(philox_uniform(seed, i * 8 + j) * D);
      v[i * D + d] = 0;  // collisions just lower the norm; fixed below
    }
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int64_t> dims(D);
    std::iota(dims.begin(), dims.end(), 0);
    for (int j = 0; j < 4; ++j) {
      const int64_t r = j + static_cast<int64_t>(philox_uniform(seed, i * 8 + j) * (D - j));
      std::swap(dims[j], dims[r]);
      v[i * D + dims[j]] = philox_uniform(seed + 1, i * 8 + j) < 0.5 ? -0.5 : 0.5;
    }
  }
  return Tensor::from_vector(v, {n, D});
}

}  // namespace

TEST_CASE("topk_rows: brute force with ties and -0.0, any chunking with merge") {
  const int64_t R = 9, N = 157;
  const std::vector<float> x = tie_heavy(R * N, 3);
  for (int k : {1, 5, 20, 64, 157}) {
    std::vector<float> val(R * k);
    std::vector<int64_t> idx(R * k);
    cpu::topk_rows(x.data(), R, N, N, 0, k, val.data(), idx.data(), false);
    for (int64_t r = 0; r < R; ++r) {
      std::vector<float> row(x.begin() + r * N, x.begin() + (r + 1) * N), bv;
      std::vector<int64_t> bi;
      brute_topk(row, k, bv, bi);
      for (int j = 0; j < k; ++j) {
        REQUIRE(idx[r * k + j] == bi[j]);
        REQUIRE(val[r * k + j] == bv[j]);
      }
    }
    // Chunks of 13 columns, merged: the same answer.
    for (int64_t chunk : {13, 50}) {
      if (chunk < k) continue;
      std::vector<float> cv(R * k);
      std::vector<int64_t> ci(R * k);
      for (int64_t c = 0; c < N; c += chunk) {
        const int64_t w = std::min(chunk, N - c);
        if (c > 0 || w >= k) cpu::topk_rows(x.data() + c, R, w, N, c, k, cv.data(), ci.data(), c > 0);
      }
      CHECK(ci == idx);
    }
  }
  std::vector<float> v(4);
  std::vector<int64_t> i(4);
  CHECK_THROWS_AS(cpu::topk_rows(x.data(), 1, 3, 3, 0, 4, v.data(), i.data(), false), Error);
}

TEST_CASE("knn_classify equals a brute-force reference; chunked == unchunked") {
  // 7 classes with very different sizes (class 6 has 2 members, smaller than k); features on a
  // grid so that similarities tie.
  const int64_t ntr = 300, nte = 77, D = 12;
  const Tensor tr = exact_features(ntr, D, 1), te = exact_features(nte, D, 2);
  std::vector<int64_t> ytr(ntr), yte(nte);
  for (int64_t i = 0; i < ntr; ++i) ytr[i] = i < 2 ? 6 : static_cast<int64_t>(philox_uniform(5, i) * 6);
  for (int64_t i = 0; i < nte; ++i) yte[i] = static_cast<int64_t>(philox_uniform(6, i) * 7);
  KnnConfig cfg;
  cfg.ks = {1, 3, 20, 100};
  cfg.num_classes = 7;
  const KnnResult ref = brute_knn(tr, ytr, te, yte, cfg.ks, cfg.temperature, 7);
  const KnnResult got = knn_classify(tr, ytr, te, yte, cfg);
  KnnConfig chunked = cfg;
  chunked.test_block = 5;
  chunked.train_chunk = 101;
  const KnnResult got_c = knn_classify(tr, ytr, te, yte, chunked);
  const KnnResult got_64 = knn_classify(tr.to(DType::F64), ytr, te.to(DType::F64), yte, chunked);
  REQUIRE(got.scores.size() == cfg.ks.size());
  for (size_t i = 0; i < cfg.ks.size(); ++i) {
    CAPTURE(cfg.ks[i]);
    CHECK(got.scores[i].k == cfg.ks[i]);
    CHECK(got.predicted[i] == ref.predicted[i]);
    CHECK(got.scores[i].correct1 == ref.scores[i].correct1);
    CHECK(got.scores[i].correct5 == ref.scores[i].correct5);
    CHECK(got_c.predicted[i] == got.predicted[i]);
    CHECK(got_c.scores[i].correct5 == got.scores[i].correct5);
    CHECK(got_64.predicted[i] == got.predicted[i]);
    CHECK(got.scores[i].top1 == doctest::Approx(100.0 * ref.scores[i].correct1 / nte));
  }
}

TEST_CASE("knn_classify on random features: brute force, chunking, labels larger than k") {
  const int64_t ntr = 500, nte = 64, D = 33;
  const Tensor tr = Tensor::randn({ntr, D}, 11), te = Tensor::randn({nte, D}, 12);
  std::vector<int64_t> ytr(ntr), yte(nte);
  for (int64_t i = 0; i < ntr; ++i) ytr[i] = i % 13;
  for (int64_t i = 0; i < nte; ++i) yte[i] = (i * 7) % 13;
  KnnConfig cfg;
  cfg.ks = {20, 5, 200};
  const KnnResult ref = brute_knn(tr.to(DType::F64), ytr, te.to(DType::F64), yte, cfg.ks, 0.07, 13);
  const KnnResult got = knn_classify(tr.to(DType::F64), ytr, te.to(DType::F64), yte, cfg);
  cfg.train_chunk = 64;
  cfg.test_block = 7;
  const KnnResult got32 = knn_classify(tr, ytr, te, yte, cfg);
  for (size_t i = 0; i < cfg.ks.size(); ++i) {
    CHECK(got.predicted[i] == ref.predicted[i]);
    CHECK(got.scores[i].correct5 == ref.scores[i].correct5);
    CHECK(got32.predicted[i] == ref.predicted[i]);
  }
}

TEST_CASE("knn_classify: bad input is a clear error") {
  const Tensor tr = Tensor::randn({10, 4}, 1), te = Tensor::randn({3, 4}, 2);
  std::vector<int64_t> ytr(10, 0), yte(3, 1);
  KnnConfig cfg;
  cfg.ks = {5};
  auto msg = [&](const Tensor& a, const std::vector<int64_t>& ya, const Tensor& b, const std::vector<int64_t>& yb,
                 const KnnConfig& c) -> std::string {
    try {
      knn_classify(a, ya, b, yb, c);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  CHECK(msg(tr, std::vector<int64_t>(9, 0), te, yte, cfg).find("10 train features but 9 train labels") !=
        std::string::npos);
  CHECK(msg(tr, ytr, te, std::vector<int64_t>(4, 0), cfg).find("3 test features but 4 test labels") !=
        std::string::npos);
  CHECK(msg(tr, ytr, Tensor::randn({3, 5}, 2), yte, cfg).find("dimensions") != std::string::npos);
  KnnConfig big = cfg;
  big.ks = {11};
  CHECK(msg(tr, ytr, te, yte, big).find("only 10") != std::string::npos);
  CHECK(msg(tr, std::vector<int64_t>(10, -1), te, yte, cfg).find("negative") != std::string::npos);
}

TEST_CASE("ArgParser: values, lists, unknown options, help") {
  ArgParser p("prog", "test");
  p.option("k", "ks", "20").option("out", "o", "", true).flag("fast", "f");
  const char* argv1[] = {"prog", "--k=10,20", "--out", "x.json", "--fast"};
  REQUIRE(p.parse(5, const_cast<char**>(argv1)));
  CHECK(p.integers("k") == std::vector<int64_t>{10, 20});
  CHECK(p.str("out") == "x.json");
  CHECK(p.flag_set("fast"));
  ArgParser q = ArgParser("prog", "test");
  q.option("out", "o", "", true);
  const char* argv2[] = {"prog", "--bogus", "1"};
  CHECK_THROWS_WITH_AS(q.parse(3, const_cast<char**>(argv2)), doctest::Contains("unknown option --bogus"), Error);
  ArgParser r("prog", "test");
  r.option("out", "o", "", true);
  const char* argv3[] = {"prog"};
  CHECK_THROWS_WITH_AS(r.parse(1, const_cast<char**>(argv3)), doctest::Contains("missing required option --out"),
                       Error);
  ArgParser h("prog", "test");
  h.option("out", "o", "", true);
  const char* argv4[] = {"prog", "--help"};
  CHECK_FALSE(h.parse(2, const_cast<char**>(argv4)));
  CHECK_THROWS_AS(parse_int("12x", "--k"), Error);
}

TEST_CASE("select_subset: class-balanced, seeded, list files") {
  std::vector<int64_t> y(1000);
  for (int i = 0; i < 1000; ++i) y[i] = i % 10;
  const auto a = select_subset(y, 0.1, 7, "");
  const auto b = select_subset(y, 0.1, 7, "");
  const auto c = select_subset(y, 0.1, 8, "");
  CHECK(a.size() == 100);
  CHECK(a == b);
  CHECK(a != c);
  std::vector<int> per(10, 0);
  for (int64_t i : a) ++per[y[i]];
  for (int n : per) CHECK(n == 10);
  CHECK(select_subset(y, 0.0001, 1, "").size() == 10);  // at least one per class
  const std::string list = (std::filesystem::temp_directory_path() / "mira_knn_list.txt").string();
  {
    std::ofstream f(list);
    f << "# indices\n5\n3\n\n999\n";
  }
  CHECK(select_subset(y, 1, 0, list) == std::vector<int64_t>{3, 5, 999});
  {
    std::ofstream f(list);
    f << "1000\n";
  }
  CHECK_THROWS_WITH_AS(select_subset(y, 1, 0, list), doctest::Contains("outside the train set"), Error);
  std::filesystem::remove(list);
}

TEST_CASE("eval transform: 28 px gray -> padded RGB 32, normalised; ImageNet resize + centre crop") {
  std::vector<uint8_t> img(28 * 28);
  for (size_t i = 0; i < img.size(); ++i) img[i] = static_cast<uint8_t>(i % 256);
  const EvalTransform t = EvalTransform::gray28_to_32();
  int oh, ow;
  t.out_size(28, 28, oh, ow);
  REQUIRE(oh == 32);
  REQUIRE(ow == 32);
  std::vector<float> out(32 * 32 * 3), scratch;
  eval_transform_image(img.data(), 28, 28, 1, t, out.data(), scratch);
  for (int c = 0; c < 3; ++c) {
    CHECK(out[c] == doctest::Approx((0.0f - t.mean[c]) / t.std[c]));  // border: zero pixel
    const float v = img[5 * 28 + 7] / 255.0f;
    CHECK(out[((5 + 2) * 32 + 7 + 2) * 3 + c] == doctest::Approx((v - t.mean[c]) / t.std[c]));
  }
  // A constant 300x400 RGB image: 224x224 output, every value the normalised constant.
  EvalTransform in = EvalTransform::imagenet();
  std::vector<uint8_t> flat(300 * 400 * 3, 128);
  in.out_size(300, 400, oh, ow);
  REQUIRE(oh == 224);
  REQUIRE(ow == 224);
  std::vector<float> o2(224 * 224 * 3);
  eval_transform_image(flat.data(), 300, 400, 3, in, o2.data(), scratch);
  for (int c = 0; c < 3; ++c)
    CHECK(o2[(100 * 224 + 100) * 3 + c] == doctest::Approx((128 / 255.0f - in.mean[c]) / in.std[c]).epsilon(1e-4));
  in.crop = 400;
  CHECK_THROWS_AS(in.out_size(300, 400, oh, ow), Error);
}

TEST_CASE("backbones: architecture read from checkpoints, torchvision names, clear mismatch errors") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / "mira_knn_ckpt_test";
  fs::create_directories(dir);
  // A resnet_tiny saved under ema.backbone. (as mira_pretrain) and without prefix (torchvision) + fc.
  Backbone net(models::ResNetConfig::tiny(), Device::cpu());
  net.init(5);
  models::NamedTensors ours, plain;
  models::append_state(ours, net.params(), net.net().batch_norms(), "", "ema.backbone.");
  models::append_state(plain, net.params(), net.net().batch_norms(), "", "");
  plain.emplace_back("fc.weight", Tensor::randn({10, 128}, 1));
  plain.emplace_back("fc.bias", Tensor::zeros({10}));
  const std::string p_ours = (dir / "ours.safetensors").string(), p_plain = (dir / "plain.safetensors").string();
  save_safetensors(p_ours, ours);
  save_safetensors(p_plain, plain);

  const SafetensorsFile f = load_safetensors(p_ours);
  CHECK(backbone_prefix(f, "ema", p_ours) == "ema.backbone.");
  CHECK_THROWS_WITH_AS(backbone_prefix(f, "online", p_ours), doctest::Contains("no online backbone"), Error);
  const models::ResNetConfig cfg = infer_resnet_config(f, "ema.backbone.");
  CHECK(cfg.arch == "resnet_tiny");
  CHECK(cfg.cifar_stem);
  CHECK(same_architecture(cfg, models::ResNetConfig::tiny()));

  const Tensor x = Tensor::randn({2, 32, 32, 3}, 9);
  const std::vector<double> want = net.features(x).to_vector();
  for (const std::string& path : {p_ours, p_plain}) {
    BackboneOptions o;
    o.checkpoint = path;
    auto b = open_backbone(o, 32);
    CHECK(b->features(x).to_vector() == want);
  }
  BackboneOptions wrong;
  wrong.checkpoint = p_ours;
  wrong.arch = "resnet18";
  CHECK_THROWS_WITH_AS(open_backbone(wrong, 32), doctest::Contains("not a resnet18"), Error);
  BackboneOptions missing;
  missing.checkpoint = (dir / "nope.safetensors").string();
  CHECK_THROWS_WITH_AS(open_backbone(missing, 32), doctest::Contains("does not exist"), Error);
  // A truncated tensor set: a clear list of what is missing.
  ours.pop_back();
  ours.erase(ours.begin() + 3);
  save_safetensors(p_ours, ours);
  BackboneOptions partial;
  partial.checkpoint = p_ours;
  CHECK_THROWS_WITH_AS(open_backbone(partial, 32), doctest::Contains("missing"), Error);
  // Random init is the pre-training initialisation: same seed, same features.
  BackboneOptions r1;
  r1.random_init = true;
  r1.arch = "resnet_tiny";
  r1.seed = 5;
  CHECK(open_backbone(r1, 32)->features(x).to_vector() == want);
  fs::remove_all(dir);
}

TEST_CASE("transform options: --transform, --mean, --std") {
  data::InMemoryDataset ds("x", data::DataFormat::Idx, 28, 28, 1, 2, std::vector<uint8_t>(28 * 28, 0), {0});
  ArgParser p("prog", "test");
  add_transform_args(p);
  const char* argv[] = {"prog", "--mean", "0.2860,0.2860,0.2860", "--std=0.353,0.353,0.353"};
  REQUIRE(p.parse(4, const_cast<char**>(argv)));
  const EvalTransform t = transform_args(p, ds);
  CHECK(t.pad == 2);
  CHECK(t.mean[1] == doctest::Approx(0.286));
  CHECK(t.std[2] == doctest::Approx(0.353));
  ArgParser q("prog", "test");
  add_transform_args(q);
  const char* bad[] = {"prog", "--std", "1,0,1"};
  REQUIRE(q.parse(3, const_cast<char**>(bad)));
  CHECK_THROWS_WITH_AS(transform_args(q, ds), doctest::Contains("positive"), Error);
}
