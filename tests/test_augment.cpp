// labels: cpu
// Augmentations against torchvision (fixtures in tests/data/aug/ from `tools/gen_golden.py
// augment`), the RandomResizedCrop sampler's contract, determinism of the random decisions, and
// the recipes. Tolerances: 1e-5 absolute for colour ops (f32, same expression order as
// torchvision; contrast's mean is summed in a different order), 2e-5 for resizes and blur
// (separable passes vs torch's 2-D conv / different summation order).
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <set>

#include "data/augment.h"
#include "testing.h"

using namespace mira;
using namespace mira::data;

namespace {

const std::string kAugDir = std::string(MIRA_TEST_DATA_DIR) + "/aug/";

// Minimal .npy reader for the fixtures: little-endian f4 or u1, C order.
struct Npy {
  std::vector<int64_t> shape;
  std::vector<float> f32;
  std::vector<uint8_t> u8;
};
Npy read_npy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  REQUIRE_MESSAGE(f.good(), "missing fixture " << path << " (run /usr/bin/python3 tools/gen_golden.py augment)");
  char magic[8];
  f.read(magic, 8);
  REQUIRE(std::memcmp(magic, "\x93NUMPY", 6) == 0);
  uint32_t hlen = 0;
  if (magic[6] == 1) {
    uint16_t h16;
    f.read(reinterpret_cast<char*>(&h16), 2);
    hlen = h16;
  } else {
    f.read(reinterpret_cast<char*>(&hlen), 4);
  }
  std::string header(hlen, ' ');
  f.read(&header[0], hlen);
  Npy out;
  const size_t sp = header.find("'shape': (");
  REQUIRE(sp != std::string::npos);
  std::string dims = header.substr(sp + 10, header.find(')', sp) - sp - 10);
  int64_t n = 1;
  for (size_t pos = 0; pos < dims.size();) {
    size_t comma = dims.find(',', pos);
    std::string d = dims.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (d.find_first_of("0123456789") != std::string::npos) {
      out.shape.push_back(std::stoll(d));
      n *= out.shape.back();
    }
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  REQUIRE(header.find("'fortran_order': False") != std::string::npos);
  if (header.find("'<f4'") != std::string::npos) {
    out.f32.resize(n);
    f.read(reinterpret_cast<char*>(out.f32.data()), n * 4);
  } else {
    REQUIRE(header.find("'|u1'") != std::string::npos);
    out.u8.resize(n);
    f.read(reinterpret_cast<char*>(out.u8.data()), n);
  }
  REQUIRE(f.good());
  return out;
}

std::vector<double> as_double(const std::vector<float>& v) {
  return std::vector<double>(v.begin(), v.end());
}

struct Input {
  int h, w;
  std::vector<uint8_t> u8;
  std::vector<float> f32;  // u8 / 255
};

const Input& input(const std::string& name) {
  static std::map<std::string, Input> cache;
  auto it = cache.find(name);
  if (it != cache.end()) return it->second;
  Npy n = read_npy(kAugDir + name + ".npy");
  Input in{static_cast<int>(n.shape[0]), static_cast<int>(n.shape[1]), n.u8, {}};
  for (uint8_t v : n.u8) in.f32.push_back(static_cast<float>(v) / 255.0f);
  return cache[name] = in;
}

nlohmann::json load_index() {
  std::ifstream f(kAugDir + "index.json");
  REQUIRE_MESSAGE(f.good(), "missing " << kAugDir << "index.json");
  return nlohmann::json::parse(f);
}

}  // namespace

TEST_CASE("augmentation ops match torchvision") {
  const nlohmann::json index = load_index();
  int checked = 0;
  for (const auto& c : index["cases"]) {
    const std::string name = c["name"], op = c["op"];
    CAPTURE(name);
    const Input& in = input(c["input"]);
    const Npy ref = read_npy(kAugDir + name + ".npy");
    std::vector<float> img = in.f32;
    const int64_t npix = static_cast<int64_t>(in.h) * in.w;
    testing::Tol tol{1e-5, 0};
    if (op == "resize") {
      const int oh = c["out_h"], ow = c["out_w"];
      const Interp interp = c["interp"] == "bilinear" ? Interp::Bilinear : Interp::Bicubic;
      std::vector<float> scratch, out(static_cast<size_t>(oh) * ow * 3), out_u8(out.size());
      resized_crop(in.f32.data(), in.h, in.w, 3, c["top"].get<int>(), c["left"].get<int>(), c["height"].get<int>(),
                   c["width"].get<int>(), out.data(), oh, ow, interp, c["antialias"].get<bool>(), false, scratch);
      // the u8 source path (what the loader uses) must agree with the f32 one
      resized_crop(in.u8.data(), in.h, in.w, 3, c["top"].get<int>(), c["left"].get<int>(), c["height"].get<int>(),
                   c["width"].get<int>(), out_u8.data(), oh, ow, interp, c["antialias"].get<bool>(), false, scratch);
      CHECK(testing::allclose(as_double(out), as_double(ref.f32), {2e-5, 0}, name));
      CHECK(testing::allclose(as_double(out_u8), as_double(ref.f32), {2e-5, 0}, name + " (u8 source)"));
      // the flip folded into the resize is the same as flipping afterwards
      std::vector<float> flipped(out.size());
      resized_crop(in.f32.data(), in.h, in.w, 3, c["top"].get<int>(), c["left"].get<int>(), c["height"].get<int>(),
                   c["width"].get<int>(), flipped.data(), oh, ow, interp, c["antialias"].get<bool>(), true, scratch);
      hflip(out.data(), oh, ow, 3);
      CHECK(flipped == out);
      ++checked;
      continue;
    }
    if (op == "brightness")
      adjust_brightness(img.data(), npix, c["factor"].get<double>());
    else if (op == "contrast")
      adjust_contrast(img.data(), npix, c["factor"].get<double>());
    else if (op == "saturation")
      adjust_saturation(img.data(), npix, c["factor"].get<double>());
    else if (op == "hue")
      adjust_hue(img.data(), npix, c["factor"].get<double>());
    else if (op == "gray")
      rgb_to_grayscale(img.data(), npix);
    else if (op == "solarize")
      solarize(img.data(), npix * 3, static_cast<float>(c["threshold"].get<double>()));
    else if (op == "hflip")
      hflip(img.data(), in.h, in.w, 3);
    else if (op == "normalize") {
      float mean[3], stddev[3];
      for (int k = 0; k < 3; ++k) {
        mean[k] = c["mean"][k].get<float>();
        stddev[k] = c["std"][k].get<float>();
      }
      normalize(img.data(), npix, 3, mean, stddev);
    } else if (op == "blur") {
      const float sigma = c["sigma"].get<float>();
      if (c["input"] == "in_small") CHECK(blur_radius(sigma) == c["radius"].get<int>());
      std::vector<float> scratch;
      gaussian_blur(img.data(), in.h, in.w, 3, sigma, c["radius"].get<int>(), scratch);
      tol = {2e-5, 0};
    } else if (op == "jitter") {
      for (const auto& o : c["order"]) {
        const int k = o;
        if (k == 0) adjust_brightness(img.data(), npix, c["brightness"].get<double>());
        if (k == 1) adjust_contrast(img.data(), npix, c["contrast"].get<double>());
        if (k == 2) adjust_saturation(img.data(), npix, c["saturation"].get<double>());
        if (k == 3) adjust_hue(img.data(), npix, c["hue"].get<double>());
      }
    } else {
      FAIL("unknown op " << op);
    }
    // Hue goes through HSV with divisions; torchvision's einsum adds exact zeros, so f32 ops
    // in the same order agree to a few ulp.
    CHECK(testing::allclose(as_double(img), as_double(ref.f32), tol, name));
    ++checked;
  }
  CHECK(checked == static_cast<int>(index["cases"].size()));
  CHECK(checked >= 40);
}

TEST_CASE("RandomResizedCrop fallback matches torchvision") {
  const nlohmann::json index = load_index();
  for (const auto& b : index["crop_fallback"]) {
    ViewSpec v;
    v.scale_min = b["scale"][0];
    v.scale_max = b["scale"][1];
    ViewParams p;
    sample_crop(v, b["h"], b["w"], 7, 0, 0, 0, p);
    CHECK(p.top == b["box"][0].get<int>());
    CHECK(p.left == b["box"][1].get<int>());
    CHECK(p.height == b["box"][2].get<int>());
    CHECK(p.width == b["box"][3].get<int>());
  }
}

TEST_CASE("RandomResizedCrop boxes follow torchvision's distribution") {
  // Accepted boxes lie inside the image with area fraction and aspect ratio inside the requested
  // ranges (up to the rounding of w and h); their statistics match torchvision's get_params
  // (fixture: 20000 draws) within 4 standard errors.
  const nlohmann::json st = load_index()["crop_stats"];
  ViewSpec v;  // scale (0.14, 1), ratio (3/4, 4/3)
  const int H = st["h"], W = st["w"];
  double sum_frac = 0, sum_lr = 0, sum_lr2 = 0;
  const int n = 6000;
  for (int s = 0; s < n; ++s) {
    ViewParams p;
    sample_crop(v, H, W, 99, 3, s, 1, p);
    REQUIRE(p.top >= 0);
    REQUIRE(p.left >= 0);
    REQUIRE(p.top + p.height <= H);
    REQUIRE(p.left + p.width <= W);
    const double frac = static_cast<double>(p.height) * p.width / (H * W);
    const double lr = std::log(static_cast<double>(p.width) / p.height);
    CHECK(frac >= 0.14 * 0.98);
    CHECK(frac <= 1.0);
    CHECK(lr >= std::log(0.75) - 0.01);
    CHECK(lr <= std::log(4.0 / 3.0) + 0.01);
    sum_frac += frac;
    sum_lr += lr;
    sum_lr2 += lr * lr;
  }
  const double se_area = st["std_area"].get<double>() * std::sqrt(1.0 / n + 1.0 / st["n"].get<double>());
  const double se_lr = st["std_log_ratio"].get<double>() * std::sqrt(1.0 / n + 1.0 / st["n"].get<double>());
  CHECK(std::fabs(sum_frac / n - st["mean_area"].get<double>()) < 4 * se_area);
  CHECK(std::fabs(sum_lr / n - st["mean_log_ratio"].get<double>()) < 4 * se_lr);
  const double sd_lr = std::sqrt(sum_lr2 / n - (sum_lr / n) * (sum_lr / n));
  CHECK(sd_lr == doctest::Approx(st["std_log_ratio"].get<double>()).epsilon(0.05));
}

TEST_CASE("random decisions are deterministic and keyed by (seed, epoch, sample, view)") {
  const MultiCropRecipe r = MultiCropRecipe::imagenet_2x224_6x96();
  auto params = [&](uint64_t seed, int64_t epoch, int64_t sample, int view) {
    return sample_view_params(r.views[view], 375, 500, seed, epoch, sample, view);
  };
  auto same = [](const ViewParams& a, const ViewParams& b) {
    return a.top == b.top && a.left == b.left && a.height == b.height && a.width == b.width && a.flip == b.flip &&
           a.jitter == b.jitter && std::memcmp(a.order, b.order, 4) == 0 && a.brightness == b.brightness &&
           a.contrast == b.contrast && a.saturation == b.saturation && a.hue == b.hue && a.gray == b.gray &&
           a.blur == b.blur && a.sigma == b.sigma && a.solarize == b.solarize;
  };
  CHECK(same(params(1, 2, 3, 4), params(1, 2, 3, 4)));
  CHECK(!same(params(1, 2, 3, 4), params(2, 2, 3, 4)));
  CHECK(!same(params(1, 2, 3, 4), params(1, 3, 3, 4)));
  CHECK(!same(params(1, 2, 3, 4), params(1, 2, 4, 4)));
  CHECK(!same(params(1, 2, 3, 4), params(1, 2, 3, 5)));
  CHECK(!same(params(1, 2, 3, 4), params(1, 2, (int64_t(1) << 32) + 3, 4)));

  // Frequencies of each decision match the recipe's probabilities (5000 samples: 3 sigma of a
  // Bernoulli(0.5) mean is 0.021).
  std::map<int, std::array<double, 6>> freq;  // view -> flip, jitter, gray, blur, solarize
  const int n = 5000;
  std::set<std::array<uint8_t, 4>> orders;
  double hue_min = 1, hue_max = -1, sig_min = 9, sig_max = 0;
  for (int s = 0; s < n; ++s)
    for (int v = 0; v < 3; ++v) {
      ViewParams p = params(5, 0, s, v);
      auto& f = freq[v];
      f[0] += p.flip;
      f[1] += p.jitter;
      f[2] += p.gray;
      f[3] += p.blur;
      f[4] += p.solarize;
      orders.insert({p.order[0], p.order[1], p.order[2], p.order[3]});
      hue_min = std::min<double>(hue_min, p.hue);
      hue_max = std::max<double>(hue_max, p.hue);
      sig_min = std::min<double>(sig_min, p.sigma);
      sig_max = std::max<double>(sig_max, p.sigma);
      CHECK(p.brightness >= 0.6f);
      CHECK(p.brightness <= 1.4f);
      CHECK(p.saturation >= 0.8f);
      CHECK(p.saturation <= 1.2f);
      CHECK(p.blur_radius == blur_radius(p.sigma));
    }
  for (int v = 0; v < 3; ++v) {
    const ViewSpec& spec = r.views[v];
    const auto& f = freq[v];
    CHECK(std::fabs(f[0] / n - spec.p_flip) < 0.025);
    CHECK(std::fabs(f[1] / n - spec.p_jitter) < 0.025);
    CHECK(std::fabs(f[2] / n - spec.p_gray) < 0.025);
    CHECK(std::fabs(f[3] / n - spec.p_blur) < 0.025);
    CHECK(std::fabs(f[4] / n - spec.p_solarize) < 0.025);
  }
  CHECK(orders.size() == 24);  // every permutation of the four jitter ops occurs
  CHECK(hue_min < -0.09);
  CHECK(hue_max > 0.09);
  CHECK(sig_min < 0.15);
  CHECK(sig_max > 1.95);
  CHECK(sig_max <= 2.0);
}

TEST_CASE("recipes follow the spec") {
  const MultiCropRecipe im = MultiCropRecipe::imagenet_2x224_6x96();
  REQUIRE(im.views.size() == 8);
  CHECK(im.views[0].size == 224);
  CHECK(im.views[0].p_blur == 1.0f);
  CHECK(im.views[0].p_solarize == 0.0f);
  CHECK(im.views[1].p_blur == 0.1f);
  CHECK(im.views[1].p_solarize == 0.2f);
  for (int i = 2; i < 8; ++i) {
    CHECK(im.views[i].size == 96);
    CHECK(im.views[i].scale_min == 0.05f);
    CHECK(im.views[i].scale_max == 0.14f);
    CHECK(im.views[i].p_blur == 0.5f);
  }
  for (const ViewSpec& v : im.views) {
    CHECK(v.interp == Interp::Bicubic);
    CHECK(v.p_jitter == 0.8f);
    CHECK(v.p_gray == 0.2f);
    CHECK(v.p_flip == 0.5f);
  }
  CHECK(im.max_size() == 224);
  const MultiCropRecipe c = MultiCropRecipe::cifar();
  REQUIRE(c.views.size() == 2);
  CHECK(c.views[0].size == 32);
  CHECK(c.views[0].scale_min == 0.2f);
  CHECK(c.views[1].p_solarize == 0.2f);
  CHECK(c.views[0].p_blur == 0.0f);
  CHECK(c.mean[0] == 0.4914f);
  const MultiCropRecipe f = MultiCropRecipe::by_name("fashion_mnist");
  CHECK(f.pad == 2);
  CHECK_THROWS_AS(MultiCropRecipe::by_name("nope"), Error);
}

TEST_CASE("augment_view: identity parameters give the normalised crop") {
  // A view with every random op off is crop + resize + normalise; with a box equal to the image
  // and the output the same size, that is just normalise(img / 255).
  const Input& in = input("in_small");
  MultiCropRecipe r = MultiCropRecipe::cifar();
  ViewSpec v = r.views[0];
  v.size = 13;
  ViewParams p;
  p.top = 0;
  p.left = 2;
  p.height = 13;
  p.width = 13;
  std::vector<float> out(13 * 13 * 3);
  AugScratch scratch;
  augment_view(in.u8.data(), in.h, in.w, in.h, in.w, p, v, r, out.data(), scratch);
  std::vector<double> ref;
  for (int y = 0; y < 13; ++y)
    for (int x = 0; x < 13; ++x)
      for (int c = 0; c < 3; ++c) ref.push_back((in.f32[(y * in.w + x + 2) * 3 + c] - r.mean[c]) / r.std[c]);
  CHECK(testing::allclose(as_double(out), ref, {1e-5, 0}, "identity view"));

  // Solarize + gray + flip by hand.
  p.solarize = true;
  p.gray = true;
  p.flip = true;
  augment_view(in.u8.data(), in.h, in.w, in.h, in.w, p, v, r, out.data(), scratch);
  std::vector<float> img(13 * 13 * 3);
  for (int y = 0; y < 13; ++y)
    for (int x = 0; x < 13; ++x)
      for (int c = 0; c < 3; ++c) img[(y * 13 + x) * 3 + c] = in.f32[(y * in.w + x + 2) * 3 + c];
  rgb_to_grayscale(img.data(), 169);
  solarize(img.data(), 169 * 3, 128.0f / 255.0f);
  hflip(img.data(), 13, 13, 3);
  normalize(img.data(), 169, 3, r.mean.data(), r.std.data());
  CHECK(testing::allclose(as_double(out), as_double(img), {1e-5, 0}, "gray+solarize+flip view"));
}

TEST_CASE("to_rgb_padded replicates gray and pads with zeros") {
  const uint8_t g[6] = {1, 2, 3, 4, 5, 6};  // 2x3 gray
  std::vector<uint8_t> out;
  to_rgb_padded(g, 2, 3, 1, 1, out);
  REQUIRE(out.size() == 4 * 5 * 3);
  CHECK(out[0] == 0);
  CHECK(out[(1 * 5 + 1) * 3 + 0] == 1);
  CHECK(out[(1 * 5 + 1) * 3 + 2] == 1);
  CHECK(out[(2 * 5 + 3) * 3 + 1] == 6);
  CHECK(out[(3 * 5 + 4) * 3 + 2] == 0);
}
