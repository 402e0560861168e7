// JPEG (libjpeg API) and PNG (libpng simplified API) decoding; see jpeg.h for the policy.
//
// libjpeg reports fatal errors through error_exit, which must not return: ours longjmps back to
// the setjmp of the current phase. Because a longjmp skips C++ destructors, each phase that can
// fail (header, start, scanlines) is a small function whose locals are all trivially
// destructible; the C++ side (vectors, strings, the throw) runs between phases. The
// decompressor itself lives in an RAII holder that calls jpeg_destroy_decompress.
#include "data/jpeg.h"

#include <cstddef>
#include <cstdio>
// jpeglib.h needs size_t and FILE declared first
#include <jerror.h>
#include <jpeglib.h>
#ifdef MIRA_HAVE_PNG
#include <png.h>
#endif

#include <algorithm>
#include <cctype>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "engine/error.h"

namespace mira::data {

ImageCodec sniff_codec(const uint8_t* data, size_t size) {
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return ImageCodec::Jpeg;
  static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  if (size >= 8 && std::memcmp(data, png_sig, 8) == 0) return ImageCodec::Png;
  return ImageCodec::Unknown;
}

bool png_supported() {
#ifdef MIRA_HAVE_PNG
  return true;
#else
  return false;
#endif
}

int jpeg_scale_num_for(double needed) {
  for (int m = 1; m < 8; ++m)
    if (m / 8.0 >= needed) return m;
  return 8;
}

std::vector<uint8_t> read_whole_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  MIRA_CHECK(f.good(), "cannot open ", path);
  const std::streamoff n = f.tellg();
  MIRA_CHECK(n >= 0, "cannot size ", path);
  MIRA_CHECK(n <= (std::streamoff(1) << 31), path, " is larger than 2 GiB");
  std::vector<uint8_t> buf(static_cast<size_t>(n));
  f.seekg(0);
  if (n > 0) f.read(reinterpret_cast<char*>(buf.data()), n);
  MIRA_CHECK(f.good(), "error reading ", path);
  return buf;
}

namespace {

int64_t pixel_cap(const DecodeOptions& opts) {
  MIRA_CHECK(opts.max_pixels >= 1, "max_image_pixels must be >= 1, got ", opts.max_pixels);
  return std::min(opts.max_pixels, kMaxImagePixels);
}


struct ErrorManager {
  jpeg_error_mgr pub;  // first member: libjpeg casts cinfo->err to this type
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  int warnings;
};

void on_error_exit(j_common_ptr cinfo) {
  ErrorManager* e = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, e->message);
  longjmp(e->jump, 1);
}

void on_emit_message(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // trace messages
  ErrorManager* e = reinterpret_cast<ErrorManager*>(cinfo->err);
  // A truncated file: libjpeg would pad the image with gray and carry on. Refuse it instead.
  if (cinfo->err->msg_code == JWRN_JPEG_EOF) on_error_exit(cinfo);
  ++e->warnings;
}

struct JpegHolder {
  jpeg_decompress_struct cinfo;
  ErrorManager err;
  bool created = false;
  JpegHolder() {
    std::memset(&cinfo, 0, sizeof(cinfo));
    std::memset(&err, 0, sizeof(err));
  }
  JpegHolder(const JpegHolder&) = delete;
  JpegHolder& operator=(const JpegHolder&) = delete;
  ~JpegHolder() {
    if (created) jpeg_destroy_decompress(&cinfo);
  }
};

// Phases: each returns false after a libjpeg error (message in h->err.message).
bool jpeg_phase_header(JpegHolder* h, const uint8_t* data, size_t size) {
  h->cinfo.err = jpeg_std_error(&h->err.pub);
  h->err.pub.error_exit = on_error_exit;
  h->err.pub.emit_message = on_emit_message;
  if (setjmp(h->err.jump)) return false;
  jpeg_create_decompress(&h->cinfo);
  h->created = true;
  jpeg_mem_src(&h->cinfo, data, static_cast<unsigned long>(size));
  jpeg_read_header(&h->cinfo, TRUE);
  return true;
}

bool jpeg_phase_start(JpegHolder* h, int scale_num, bool fast_dct, bool fancy) {
  if (setjmp(h->err.jump)) return false;
  j_decompress_ptr c = &h->cinfo;
  const bool cmyk = c->jpeg_color_space == JCS_CMYK || c->jpeg_color_space == JCS_YCCK;
  c->out_color_space = cmyk ? JCS_CMYK : JCS_RGB;  // gray -> RGB replicates (libjpeg-turbo)
  c->scale_num = static_cast<unsigned int>(scale_num);
  c->scale_denom = 8;
  c->dct_method = fast_dct ? JDCT_IFAST : JDCT_ISLOW;
  c->do_fancy_upsampling = fancy ? TRUE : FALSE;
  jpeg_calc_output_dimensions(c);
  return true;
}

bool jpeg_phase_decompress(JpegHolder* h, uint8_t* out, size_t row_bytes) {
  if (setjmp(h->err.jump)) return false;
  j_decompress_ptr c = &h->cinfo;
  jpeg_start_decompress(c);
  while (c->output_scanline < c->output_height) {
    JSAMPROW row = out + static_cast<size_t>(c->output_scanline) * row_bytes;
    if (jpeg_read_scanlines(c, &row, 1) != 1) {
      // Suspension cannot happen with a memory source holding the whole file; treat as corrupt.
      std::snprintf(h->err.message, sizeof(h->err.message), "decoder stopped at row %u", c->output_scanline);
      return false;
    }
  }
  jpeg_finish_decompress(c);
  return true;
}

std::string lower_ext(const std::string& name) {
  std::string ext = std::filesystem::path(name).extension().string();
  for (char& ch : ext) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return ext;
}

Decoded decode_jpeg(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& opts,
                    const ScaleChooser& choose_scale) {
  JpegHolder h;
  if (!jpeg_phase_header(&h, data, size)) MIRA_FAIL("cannot decode JPEG ", name, ": ", h.err.message);
  Decoded d;
  d.orig_h = static_cast<int>(h.cinfo.image_height);
  d.orig_w = static_cast<int>(h.cinfo.image_width);
  MIRA_CHECK(d.orig_h > 0 && d.orig_w > 0, "JPEG ", name, " has an empty image (", d.orig_w, "x", d.orig_h, ")");
  MIRA_CHECK(static_cast<int64_t>(d.orig_h) * d.orig_w <= pixel_cap(opts), "JPEG ", name, " is too large (",
             d.orig_w, "x", d.orig_h, " pixels; the limit is ", pixel_cap(opts), ", data.max_image_pixels)");
  const int nc = h.cinfo.num_components;
  MIRA_CHECK(nc == 1 || nc == 3 || nc == 4, "JPEG ", name, " has ", nc, " components (expected 1, 3 or 4)");
  d.scale_num = choose_scale ? choose_scale(d.orig_h, d.orig_w) : 8;
  MIRA_CHECK(d.scale_num >= 1 && d.scale_num <= 8, "JPEG scale ", d.scale_num, "/8 outside 1/8..8/8");
  if (!jpeg_phase_start(&h, d.scale_num, opts.fast_dct, opts.fancy_upsampling))
    MIRA_FAIL("cannot decode JPEG ", name, ": ", h.err.message);
  const int oh = static_cast<int>(h.cinfo.output_height), ow = static_cast<int>(h.cinfo.output_width);
  const int oc = h.cinfo.out_color_components;
  MIRA_CHECK(oc == 3 || oc == 4, "JPEG ", name, ": unexpected ", oc, " output components");
  std::vector<uint8_t> buf(static_cast<size_t>(oh) * ow * oc);
  const bool adobe_inverted = h.cinfo.saw_Adobe_marker;
  if (!jpeg_phase_decompress(&h, buf.data(), static_cast<size_t>(ow) * oc))
    MIRA_FAIL("cannot decode JPEG ", name, ": ", h.err.message);
  d.image.h = oh;
  d.image.w = ow;
  d.image.c = 3;
  if (oc == 3) {
    d.image.pixels = std::move(buf);
  } else {
    // CMYK -> RGB. Adobe writes inverted CMYK (APP14): stored C' = 255 - C, so R = C' K' / 255.
    d.image.pixels.resize(static_cast<size_t>(oh) * ow * 3);
    for (size_t i = 0; i < static_cast<size_t>(oh) * ow; ++i) {
      int cmyk[4];
      for (int k = 0; k < 4; ++k) cmyk[k] = adobe_inverted ? buf[4 * i + k] : 255 - buf[4 * i + k];
      for (int k = 0; k < 3; ++k) d.image.pixels[3 * i + k] = static_cast<uint8_t>((cmyk[k] * cmyk[3] + 127) / 255);
    }
  }
  return d;
}

#ifdef MIRA_HAVE_PNG
Decoded decode_png(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& opts) {
  png_image img;
  std::memset(&img, 0, sizeof(img));
  img.version = PNG_IMAGE_VERSION;
  struct Guard {
    png_image* p;
    ~Guard() { png_image_free(p); }
  } guard{&img};
  if (!png_image_begin_read_from_memory(&img, data, size)) MIRA_FAIL("cannot decode PNG ", name, ": ", img.message);
  MIRA_CHECK(img.width > 0 && img.height > 0, "PNG ", name, " has an empty image (", img.width, "x", img.height, ")");
  MIRA_CHECK(static_cast<int64_t>(img.width) * img.height <= pixel_cap(opts), "PNG ", name, " is too large (",
             img.width, "x", img.height, " pixels; the limit is ", pixel_cap(opts), ", data.max_image_pixels)");
  img.format = PNG_FORMAT_RGB;  // gray replicated; alpha composited on black
  Decoded d;
  d.orig_h = d.image.h = static_cast<int>(img.height);
  d.orig_w = d.image.w = static_cast<int>(img.width);
  d.image.c = 3;
  d.image.pixels.resize(PNG_IMAGE_SIZE(img));
  if (!png_image_finish_read(&img, nullptr, d.image.pixels.data(), 0, nullptr))
    MIRA_FAIL("cannot decode PNG ", name, ": ", img.message);
  MIRA_CHECK(!PNG_IMAGE_FAILED(img), "cannot decode PNG ", name, ": ", img.message);
  return d;
}
#endif

}  // namespace

Decoded decode_image(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& opts,
                     const ScaleChooser& choose_scale) {
  MIRA_CHECK(size > 0, "image ", name, " is an empty file");
  const ImageCodec codec = sniff_codec(data, size);
  const std::string ext = lower_ext(name);
  const bool named_jpeg = ext == ".jpg" || ext == ".jpeg", named_png = ext == ".png";
  if (codec == ImageCodec::Jpeg) {
    MIRA_CHECK(!named_png, "image ", name, " is JPEG data named .png");
    return decode_jpeg(data, size, name, opts, choose_scale);
  }
  if (codec == ImageCodec::Png) {
    MIRA_CHECK(!named_jpeg, "image ", name, " is PNG data named ", ext);
#ifdef MIRA_HAVE_PNG
    return decode_png(data, size, name, opts);
#else
    MIRA_FAIL("image ", name, " is a PNG, and this build has no libpng");
#endif
  }
  char head[40];
  std::snprintf(head, sizeof(head), "%02x %02x %02x %02x", data[0], size > 1 ? data[1] : 0, size > 2 ? data[2] : 0,
                size > 3 ? data[3] : 0);
  MIRA_FAIL("image ", name, " is neither JPEG nor PNG (starts with ", head, ")");
}

Decoded decode_image_file(const std::string& path, const DecodeOptions& opts, const ScaleChooser& choose_scale) {
  std::vector<uint8_t> bytes = read_whole_file(path);
  return decode_image(bytes.data(), bytes.size(), path, opts, choose_scale);
}

}  // namespace mira::data
