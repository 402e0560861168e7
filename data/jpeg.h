// Image decoding for ImageFolder datasets: JPEG through libjpeg(-turbo)'s API, PNG through
// libpng's simplified API (when the build found libpng). Output is always RGB u8 HWC: gray is
// replicated, CMYK / YCCK converted (Adobe's inverted CMYK when the APP14 marker says so).
//
// The codec is chosen from the bytes, not the name; a file whose content contradicts its
// extension (a PNG named .jpg) is refused, as are empty, truncated and random files: each is a
// mira::Error with the file name, which the loader turns into one warning and a counted skip.
// libjpeg's "premature end of data" warning is treated as an error (the decoder would fill the
// rest with gray); its other warnings (e.g. extraneous bytes before a marker) are tolerated.
//
// DCT-domain downscaling: libjpeg can decode at M/8 of the size (M = 1..8) for a fraction of
// the work. decode_image asks a callback, given the full size, for M; jpeg_scale_num_for picks
// the smallest M that keeps the needed resolution.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "data/dataset.h"  // Image

namespace mira::data {

enum class ImageCodec { Unknown, Jpeg, Png };
ImageCodec sniff_codec(const uint8_t* data, size_t size);
bool png_supported();  // built with libpng

struct DecodeOptions {
  bool fast_dct = false;         // JDCT_IFAST instead of the accurate integer DCT (djpeg's default)
  bool fancy_upsampling = true;  // libjpeg's default (triangle chroma upsampling); false = box
  // Images whose header announces more pixels are refused before anything is allocated (a
  // 200-byte corrupt file must not make a worker allocate gigabytes). The default is where PIL
  // refuses an image (DecompressionBombError: twice its MAX_IMAGE_PIXELS, 178,956,970 px, about
  // 13,377 x 13,377), so whatever a torchvision pipeline reads, we read; at most kMaxImagePixels.
  int64_t max_pixels = 178956970;
};
constexpr int64_t kMaxImagePixels = int64_t(1) << 28;

struct Decoded {
  Image image;                 // RGB, possibly downscaled
  int orig_h = 0, orig_w = 0;  // size in the file
  int scale_num = 8;           // decoded at scale_num / 8
};

// Picks M (1..8) for a full-size image: called with (orig_h, orig_w), returns M. Empty: 8.
using ScaleChooser = std::function<int(int orig_h, int orig_w)>;

// Decodes a JPEG or PNG held in memory. `name` is used in error messages and to catch a content
// / extension mismatch (pass "" to skip that check). PNGs are never downscaled.
Decoded decode_image(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& opts = {},
                     const ScaleChooser& choose_scale = {});
Decoded decode_image_file(const std::string& path, const DecodeOptions& opts = {},
                          const ScaleChooser& choose_scale = {});

// Smallest M in 1..8 with M / 8 >= needed (needed = largest output/crop ratio over the views).
int jpeg_scale_num_for(double needed);
// Size libjpeg produces for a full size at M/8: ceil(size * M / 8).
inline int jpeg_scaled_size(int size, int scale_num) {
  return (size * scale_num + 7) / 8;
}

std::vector<uint8_t> read_whole_file(const std::string& path);

}  // namespace mira::data
