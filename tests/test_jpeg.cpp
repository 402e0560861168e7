// labels: cpu
// Image decoding. Real photos (Debian packages libdlib19.1 and hugin-data, fetched into
// data_cache/photos; skipped with a message when the archive is unreachable) must decode exactly
// as djpeg does, full size and DCT-downscaled. Files written here cover what the photos may
// not: CMYK (Adobe and plain), gray, progressive, restart markers, arithmetic coding, PNG; and
// every bad input: empty, truncated, random bytes, PNG named .jpg, unsupported precision.
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <zlib.h>

#include <filesystem>
#include <fstream>

#include "data/jpeg.h"
#include "jpeg_fixtures.h"
#include "testing.h"

using namespace mira;
using namespace mira::data;
namespace fs = std::filesystem;

namespace {

const fs::path kCache = fs::path(MIRA_SOURCE_DIR) / "data_cache" / "photos";

// Fetches the photo packages once; returns the list of JPEG files (empty when unreachable).
std::vector<std::string> real_photos() {
  static std::vector<std::string> files;
  static bool tried = false;
  if (tried) return files;
  tried = true;
  const fs::path root = kCache / "x";
  if (!fs::exists(kCache / "fetched")) {
    fs::create_directories(kCache);
    const std::string cmd = "cd '" + kCache.string() +
                            "' && apt-get download libdlib19.1 hugin-data >/dev/null 2>&1 && "
                            "for d in libdlib19.1_*.deb hugin-data_*.deb; do dpkg -x \"$d\" x || exit 1; done && "
                            "touch fetched";
    if (std::system(cmd.c_str()) != 0) {
      MESSAGE("SKIPPED real-photo checks: cannot fetch libdlib19.1 / hugin-data from the Debian archive");
      return files;
    }
  }
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    std::string ext = e.path().extension().string();
    if (e.is_regular_file() && (ext == ".jpg" || ext == ".jpeg" || ext == ".JPG")) files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

bool have_djpeg() {
  return std::system("djpeg -version >/dev/null 2>&1") == 0;
}

// djpeg's output as RGB (PGM replicated). args: extra djpeg options.
Image run_djpeg(const std::string& file, const std::string& args) {
  const fs::path tmp = fs::temp_directory_path() / ("mira_djpeg_" + std::to_string(::getpid()) + ".pnm");
  const std::string cmd = "djpeg " + args + " -outfile '" + tmp.string() + "' '" + file + "' 2>/dev/null";
  REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, "djpeg failed on " << file);
  std::ifstream f(tmp, std::ios::binary);
  std::string magic;
  int w, h, maxv;
  f >> magic >> w >> h >> maxv;
  f.get();
  REQUIRE((magic == "P6" || magic == "P5"));
  const int c = magic == "P6" ? 3 : 1;
  std::vector<uint8_t> raw(static_cast<size_t>(w) * h * c);
  f.read(reinterpret_cast<char*>(raw.data()), raw.size());
  Image img{h, w, 3, {}};
  img.pixels.resize(static_cast<size_t>(w) * h * 3);
  for (size_t i = 0; i < static_cast<size_t>(w) * h; ++i)
    for (int k = 0; k < 3; ++k) img.pixels[3 * i + k] = raw[i * c + (c == 3 ? k : 0)];
  fs::remove(tmp);
  return img;
}

// A JPEG written with libjpeg: w x h, `comps` input components in `space`, with options.
std::vector<uint8_t> make_jpeg(int w, int h, int comps, J_COLOR_SPACE space, bool progressive, int restart_rows,
                               bool arith, bool adobe_cmyk = true) {
  return mira::testing::encode_jpeg(w, h, {comps, space, 95, progressive, restart_rows, arith, adobe_cmyk},
                                    [](int x, int y, int k) { return static_cast<uint8_t>((x * 7 + y * 3 + k * 60) % 256); });
}

// A PNG written by hand (zlib stream of filter-0 rows): 8-bit gray (ctype 0) or RGB (ctype 2).
std::vector<uint8_t> make_png(int w, int h, int ctype) {
  const int c = ctype == 2 ? 3 : 1;
  std::vector<uint8_t> raw;
  for (int y = 0; y < h; ++y) {
    raw.push_back(0);
    for (int x = 0; x < w * c; ++x) raw.push_back(static_cast<uint8_t>(x * 11 + y * 5));
  }
  uLongf zn = compressBound(raw.size());
  std::vector<uint8_t> z(zn);
  REQUIRE(compress2(z.data(), &zn, raw.data(), raw.size(), 6) == Z_OK);
  z.resize(zn);
  std::vector<uint8_t> png = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  auto chunk = [&](const char* type, const std::vector<uint8_t>& data) {
    const uint32_t n = static_cast<uint32_t>(data.size());
    for (int s = 24; s >= 0; s -= 8) png.push_back(static_cast<uint8_t>(n >> s));
    std::vector<uint8_t> td(type, type + 4);
    td.insert(td.end(), data.begin(), data.end());
    png.insert(png.end(), td.begin(), td.end());
    const uint32_t crc = static_cast<uint32_t>(crc32(0, td.data(), static_cast<uInt>(td.size())));
    for (int s = 24; s >= 0; s -= 8) png.push_back(static_cast<uint8_t>(crc >> s));
  };
  std::vector<uint8_t> ihdr = {0,
                               0,
                               static_cast<uint8_t>(w >> 8),
                               static_cast<uint8_t>(w),
                               0,
                               0,
                               static_cast<uint8_t>(h >> 8),
                               static_cast<uint8_t>(h),
                               8,
                               static_cast<uint8_t>(ctype),
                               0,
                               0,
                               0};
  chunk("IHDR", ihdr);
  chunk("IDAT", z);
  chunk("IEND", {});
  return png;
}

Decoded decode(const std::vector<uint8_t>& b, const std::string& name, int scale = 8) {
  return decode_image(b.data(), b.size(), name, {}, [scale](int, int) { return scale; });
}

}  // namespace

TEST_CASE("real photos decode exactly as djpeg, full size and DCT-downscaled") {
  const std::vector<std::string> files = real_photos();
  if (files.empty()) return;
  REQUIRE(files.size() >= 250);
  const bool djpeg = have_djpeg();
  if (!djpeg) MESSAGE("djpeg not installed (apt-get install libjpeg-turbo-progs): decoding only, no comparison");
  int compared = 0, scaled = 0, restart = 0, progressive = 0, gray = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string& f = files[i];
    CAPTURE(f);
    const std::vector<uint8_t> bytes = read_whole_file(f);
    const std::string s(bytes.begin(), bytes.begin() + std::min<size_t>(bytes.size(), 100000));
    restart += s.find("\xff\xdd") != std::string::npos;
    progressive += s.find("\xff\xc2") != std::string::npos;
    Decoded d = decode(bytes, f);
    REQUIRE(d.image.c == 3);
    REQUIRE(d.orig_h == d.image.h);
    if (!djpeg) continue;
    // Every 3rd file in full against djpeg; gray ones are detected by the comparison itself.
    if (i % 3 == 0 || s.find("\xff\xdd") != std::string::npos || s.find("\xff\xc2") != std::string::npos) {
      Image ref = run_djpeg(f, "");
      REQUIRE(ref.h == d.image.h);
      REQUIRE(ref.w == d.image.w);
      CHECK(ref.pixels == d.image.pixels);
      bool is_gray = true;
      for (size_t k = 0; k < d.image.pixels.size() && is_gray; k += 3)
        is_gray = d.image.pixels[k] == d.image.pixels[k + 1] && d.image.pixels[k] == d.image.pixels[k + 2];
      gray += is_gray;
      ++compared;
    }
    if (i % 7 == 0) {
      const int m = 1 + static_cast<int>(i / 7) % 7;  // 1/8 .. 7/8
      Decoded ds = decode(bytes, f, m);
      CHECK(ds.scale_num == m);
      CHECK(ds.image.h == jpeg_scaled_size(d.orig_h, m));
      CHECK(ds.image.w == jpeg_scaled_size(d.orig_w, m));
      Image ref = run_djpeg(f, "-scale " + std::to_string(m) + "/8");
      CHECK(ref.pixels == ds.image.pixels);
      ++scaled;
    }
  }
  MESSAGE(files.size() << " photos decoded; " << compared << " compared with djpeg, " << scaled
                       << " downscaled; restart markers " << restart << ", progressive " << progressive << ", gray "
                       << gray);
  CHECK(restart > 0);
  CHECK(progressive > 0);
  if (djpeg) CHECK(gray > 0);
}

TEST_CASE("DCT scale choice") {
  CHECK(jpeg_scale_num_for(1.5) == 8);
  CHECK(jpeg_scale_num_for(1.0) == 8);
  CHECK(jpeg_scale_num_for(0.5) == 4);
  CHECK(jpeg_scale_num_for(0.51) == 5);
  CHECK(jpeg_scale_num_for(0.01) == 1);
  CHECK(jpeg_scaled_size(375, 3) == 141);  // ceil(375 * 3 / 8)
}

TEST_CASE("written JPEGs: gray, CMYK, progressive, restart markers, arithmetic") {
  // gray -> RGB by replication
  Decoded g = decode(make_jpeg(33, 21, 1, JCS_GRAYSCALE, false, 0, false), "g.jpg");
  REQUIRE(g.image.h == 21);
  REQUIRE(g.image.w == 33);
  for (size_t k = 0; k < g.image.pixels.size(); k += 3) {
    REQUIRE(g.image.pixels[k] == g.image.pixels[k + 1]);
    REQUIRE(g.image.pixels[k] == g.image.pixels[k + 2]);
  }
  // progressive and restart-marker files decode to (nearly) the baseline result
  Decoded base = decode(make_jpeg(70, 45, 3, JCS_RGB, false, 0, false), "b.jpg");
  Decoded prog = decode(make_jpeg(70, 45, 3, JCS_RGB, true, 0, false), "p.jpg");
  Decoded rst = decode(make_jpeg(70, 45, 3, JCS_RGB, false, 1, false), "r.jpg");
  CHECK(rst.image.pixels == base.image.pixels);  // restart markers change nothing decoded
  int max_diff = 0;
  for (size_t k = 0; k < base.image.pixels.size(); ++k)
    max_diff = std::max(max_diff, std::abs(int(prog.image.pixels[k]) - int(base.image.pixels[k])));
  CHECK(max_diff <= 2);  // progressive quantises the same coefficients, in another order
  // arithmetic coding: decodes when libjpeg was built with it; otherwise a clean error
  std::vector<uint8_t> ari;
  try {
    ari = make_jpeg(40, 24, 3, JCS_RGB, false, 0, true);
  } catch (...) {
  }
  if (!ari.empty()) {
    try {
      Decoded a = decode(ari, "a.jpg");
      CHECK(a.image.w == 40);
    } catch (const Error& e) {
      CHECK(std::string(e.what()).find("a.jpg") != std::string::npos);
    }
  }
  // CMYK: libjpeg writes an Adobe marker with (non-inverted) CMYK; the decoder inverts per
  // Adobe's convention, so check against that formula.
  std::vector<uint8_t> cmyk = make_jpeg(24, 16, 4, JCS_CMYK, false, 0, false);
  Decoded k = decode(cmyk, "cmyk.jpg");
  REQUIRE(k.image.c == 3);
  REQUIRE(k.image.w == 24);
  // pixel (x=5, y=3): C,M,Y,K written as (x*7 + y*3 + k*60) % 256, lossy: allow a few levels
  const int x = 5, y = 3;
  const int C = (x * 7 + y * 3) % 256, Mg = (x * 7 + y * 3 + 60) % 256, K = (x * 7 + y * 3 + 180) % 256;
  const uint8_t* px = &k.image.pixels[(y * 24 + x) * 3];
  CHECK(std::abs(int(px[0]) - C * K / 255) <= 6);
  CHECK(std::abs(int(px[1]) - Mg * K / 255) <= 6);
}

TEST_CASE("PNG decode") {
  if (!png_supported()) {
    MESSAGE("SKIPPED: built without libpng");
    return;
  }
  Decoded rgb = decode(make_png(9, 5, 2), "x.png");
  REQUIRE(rgb.image.h == 5);
  REQUIRE(rgb.image.w == 9);
  CHECK(rgb.image.pixels[(2 * 9 + 3) * 3 + 1] == static_cast<uint8_t>(10 * 11 + 2 * 5));  // x*c+k = 10
  Decoded gray = decode(make_png(6, 4, 0), "g.PNG");
  CHECK(gray.image.pixels[(1 * 6 + 2) * 3 + 0] == static_cast<uint8_t>(2 * 11 + 5));
  CHECK(gray.image.pixels[(1 * 6 + 2) * 3 + 2] == static_cast<uint8_t>(2 * 11 + 5));
}

TEST_CASE("bad inputs are clean errors naming the file") {
  auto fails_with = [](const std::vector<uint8_t>& b, const std::string& name, const std::string& what) {
    try {
      decode(b, name);
    } catch (const Error& e) {
      const std::string msg = e.what();
      CHECK_MESSAGE(msg.find(name) != std::string::npos, msg);
      CHECK_MESSAGE(msg.find(what) != std::string::npos, msg);
      return;
    }
    FAIL("no error for " << name);
  };
  fails_with({}, "empty.jpg", "empty");
  std::vector<uint8_t> good = make_jpeg(64, 64, 3, JCS_RGB, false, 0, false);
  for (size_t cut : {size_t(2), size_t(20), good.size() / 3, good.size() - 10}) {
    std::vector<uint8_t> t(good.begin(), good.begin() + cut);
    fails_with(t, "trunc" + std::to_string(cut) + ".jpg", "trunc" + std::to_string(cut));
  }
  std::vector<uint8_t> noise(5000);
  uint32_t s = 12345;
  for (uint8_t& b : noise) b = static_cast<uint8_t>((s = s * 1664525u + 1013904223u) >> 24);
  fails_with(noise, "noise.jpg", "neither JPEG nor PNG");
  // JPEG magic followed by garbage
  std::vector<uint8_t> fake = {0xFF, 0xD8, 0xFF};
  fake.insert(fake.end(), noise.begin(), noise.end());
  fails_with(fake, "fake.jpg", "cannot decode JPEG");
  // corrupted entropy-coded data in the middle must not crash (it may decode with warnings)
  std::vector<uint8_t> mid = good;
  for (size_t i = mid.size() / 2; i < mid.size() / 2 + 40; ++i) mid[i] = 0x5A;
  try {
    decode(mid, "mid.jpg");
  } catch (const Error&) {
  }
  fails_with(make_png(4, 4, 2), "png_named.jpg", "PNG data named .jpg");
  fails_with(good, "jpeg_named.png", "JPEG data named .png");
  // 12-bit precision: the 8-bit library refuses it cleanly
  std::vector<uint8_t> p12 = good;
  for (size_t i = 0; i + 4 < p12.size(); ++i)
    if (p12[i] == 0xFF && p12[i + 1] == 0xC0) {  // SOF0: FF C0 len(2) precision
      p12[i + 4] = 12;
      break;
    }
  fails_with(p12, "p12.jpg", "p12.jpg");
}

TEST_CASE("pixel cap: a header announcing too many pixels is refused before decoding") {
  const std::vector<uint8_t> jpg = make_jpeg(64, 48, 3, JCS_RGB, false, 0, false);
  DecodeOptions opts;
  opts.max_pixels = 64 * 48;  // exactly at the cap: decodes
  CHECK(decode_image(jpg.data(), jpg.size(), "at.jpg", opts).image.w == 64);
  opts.max_pixels = 64 * 48 - 1;
  try {
    decode_image(jpg.data(), jpg.size(), "over.jpg", opts);
    FAIL("no error for over.jpg");
  } catch (const Error& e) {
    const std::string msg = e.what();
    CHECK_MESSAGE(msg.find("over.jpg is too large (64x48 pixels; the limit is 3071") != std::string::npos, msg);
    CHECK_MESSAGE(msg.find("data.max_image_pixels") != std::string::npos, msg);
  }
  // A 100000 x 60000 SOF in an otherwise tiny file: refused with the default cap (PIL's 179 MP),
  // without allocating 18 GB.
  std::vector<uint8_t> huge = jpg;
  for (size_t i = 0; i + 8 < huge.size(); ++i)
    if (huge[i] == 0xFF && huge[i + 1] == 0xC0) {  // SOF0: FF C0 len(2) precision(1) H(2) W(2)
      huge[i + 5] = 60000 >> 8;
      huge[i + 6] = 60000 & 0xFF;
      huge[i + 7] = 50000 >> 8;  // libjpeg caps dimensions at 65500
      huge[i + 8] = 50000 & 0xFF;
      break;
    }
  try {
    decode(huge, "huge.jpg");
    FAIL("no error for huge.jpg");
  } catch (const Error& e) {
    CHECK_MESSAGE(std::string(e.what()).find("huge.jpg is too large (50000x60000") != std::string::npos, e.what());
  }
  if (png_supported()) {
    const std::vector<uint8_t> png = make_png(9, 5, 2);
    opts.max_pixels = 44;
    try {
      decode_image(png.data(), png.size(), "big.png", opts);
      FAIL("no error for big.png");
    } catch (const Error& e) {
      CHECK_MESSAGE(std::string(e.what()).find("big.png is too large (9x5") != std::string::npos, e.what());
    }
  }
  opts.max_pixels = 0;
  CHECK_THROWS_AS(decode_image(jpg.data(), jpg.size(), "zero.jpg", opts), Error);
}
