// A JPEG encoder for tests (libjpeg): w x h pixels from a function, in memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>
// jpeglib.h needs size_t and FILE declared first
#include <jpeglib.h>

namespace mira::testing {

struct JpegOptions {
  int comps = 3;  // input components, in `space`
  J_COLOR_SPACE space = JCS_RGB;
  int quality = 90;
  bool progressive = false;
  int restart_rows = 0;
  bool arith = false;
  bool adobe_marker = true;  // libjpeg's default (false: no Adobe marker, e.g. for CMYK)
};

// pixel(x, y, k): component k of the pixel at column x, row y.
template <typename Pixel>
std::vector<uint8_t> encode_jpeg(int w, int h, const JpegOptions& o, Pixel pixel) {
  jpeg_compress_struct c;
  jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  unsigned char* mem = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&c, &mem, &size);
  c.image_width = w;
  c.image_height = h;
  c.input_components = o.comps;
  c.in_color_space = o.space;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, o.quality, TRUE);
  if (o.progressive) jpeg_simple_progression(&c);
  c.restart_in_rows = o.restart_rows;
  c.arith_code = o.arith ? TRUE : FALSE;
  if (!o.adobe_marker) c.write_Adobe_marker = FALSE;
  jpeg_start_compress(&c, TRUE);
  std::vector<uint8_t> row(static_cast<size_t>(w) * o.comps);
  while (c.next_scanline < c.image_height) {
    const int y = static_cast<int>(c.next_scanline);
    for (int x = 0; x < w; ++x)
      for (int k = 0; k < o.comps; ++k) row[static_cast<size_t>(x) * o.comps + k] = pixel(x, y, k);
    JSAMPROW r = row.data();
    jpeg_write_scanlines(&c, &r, 1);
  }
  jpeg_finish_compress(&c);
  std::vector<uint8_t> out(mem, mem + size);
  jpeg_destroy_compress(&c);
  std::free(mem);
  return out;
}

}  // namespace mira::testing
