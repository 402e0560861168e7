#include "engine/npy.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

#include "engine/error.h"
#include "engine/safetensors.h"

namespace mira {

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
// NumPy itself refuses headers over 10000 bytes unless told otherwise; a little slack for
// other writers, and a bound so a hostile length cannot make us read or allocate much.
constexpr size_t kMaxHeaderLen = 1 << 20;

struct Header {
  NpyType type = NpyType::F32;
  std::vector<int64_t> shape;
  size_t data_offset = 0;  // bytes before the array data
  size_t data_bytes = 0;
};

// A recursive-descent reader for the one Python literal a .npy header holds:
//   {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }
class LiteralParser {
 public:
  LiteralParser(const char* s, size_t n) : s_(s), n_(n) {}

  Header parse_dict() {
    Header h;
    bool have_descr = false, have_order = false, have_shape = false;
    expect('{');
    skip_ws();
    while (peek() != '}') {
      const std::string key = parse_string();
      expect(':');
      if (key == "descr") {
        h.type = type_from_descr(parse_string());
        have_descr = true;
      } else if (key == "fortran_order") {
        const bool fortran = parse_bool();
        MIRA_CHECK(!fortran, "npy: Fortran-order arrays are not supported (save with np.ascontiguousarray)");
        have_order = true;
      } else if (key == "shape") {
        h.shape = parse_shape();
        have_shape = true;
      } else {
        fail("unexpected key '" + key + "'");
      }
      skip_ws();
      if (peek() == ',') {
        ++i_;
        skip_ws();
      } else if (peek() != '}') {
        fail("expected ',' or '}'");
      }
    }
    ++i_;
    skip_ws();
    MIRA_CHECK(i_ == n_, "npy: unexpected text after the header dict");
    MIRA_CHECK(have_descr && have_order && have_shape, "npy: header lacks ",
               !have_descr   ? "'descr'"
               : !have_order ? "'fortran_order'"
                             : "'shape'");
    return h;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    MIRA_FAIL("npy: malformed header (", what, " at offset ", i_, ")");
  }
  char peek() const { return i_ < n_ ? s_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < n_ && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c) {
    skip_ws();
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string parse_string() {
    skip_ws();
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a string");
    ++i_;
    std::string out;
    while (i_ < n_ && s_[i_] != q) {
      if (s_[i_] == '\\') fail("escapes are not supported");
      out += s_[i_++];
      if (out.size() > 64) fail("string too long");
    }
    if (i_ >= n_) fail("unterminated string");
    ++i_;
    return out;
  }
  bool parse_bool() {
    skip_ws();
    if (n_ - i_ >= 4 && std::strncmp(s_ + i_, "True", 4) == 0) {
      i_ += 4;
      return true;
    }
    if (n_ - i_ >= 5 && std::strncmp(s_ + i_, "False", 5) == 0) {
      i_ += 5;
      return false;
    }
    fail("expected True or False");
  }
  int64_t parse_int() {
    skip_ws();
    if (peek() < '0' || peek() > '9') fail("expected a non-negative integer");
    int64_t v = 0;
    while (peek() >= '0' && peek() <= '9') {
      const int d = peek() - '0';
      if (v > (std::numeric_limits<int64_t>::max() - d) / 10) fail("dimension overflows int64");
      v = v * 10 + d;
      ++i_;
    }
    if (peek() == 'L') ++i_;  // Python 2 longs
    return v;
  }
  std::vector<int64_t> parse_shape() {
    expect('(');
    std::vector<int64_t> shape;
    skip_ws();
    while (peek() != ')') {
      shape.push_back(parse_int());
      if (shape.size() > 32) fail("more than 32 dimensions");
      skip_ws();
      if (peek() == ',') {
        ++i_;
        skip_ws();
      } else if (peek() != ')') {
        fail("expected ',' or ')' in the shape");
      }
    }
    ++i_;
    return shape;
  }
  static NpyType type_from_descr(const std::string& d) {
    MIRA_CHECK(!d.empty(), "npy: empty 'descr'");
    const char order = d[0];
    const std::string code = (order == '<' || order == '>' || order == '|' || order == '=') ? d.substr(1) : d;
    MIRA_CHECK(order != '>' || code == "u1", "npy: big-endian data ('", d, "') is not supported");
    if (code == "f4") return NpyType::F32;
    if (code == "f8") return NpyType::F64;
    if (code == "u1") return NpyType::U8;
    if (code == "i8") return NpyType::I64;
    if (code == "i4") return NpyType::I32;
    MIRA_FAIL("npy: unsupported dtype '", d, "' (supported: <f4 <f8 |u1 <i8 <i4)");
  }

  const char* s_;
  size_t n_;
  size_t i_ = 0;
};

uint32_t read_le(const uint8_t* p, int bytes) {
  uint32_t v = 0;
  for (int b = bytes - 1; b >= 0; --b) v = (v << 8) | p[b];
  return v;
}

// prefix: the first bytes of the file (at least min(total, 12)); total: the whole file's size.
// Returns the header once the prefix holds it; sets *need to the prefix length it needs otherwise.
bool parse_header(const uint8_t* prefix, size_t avail, size_t total, Header* out, size_t* need) {
  MIRA_CHECK(total >= kMagicLen + 2 && std::memcmp(prefix, kMagic, kMagicLen) == 0, "npy: not a .npy file (bad magic)");
  const int major = prefix[6];
  MIRA_CHECK(major >= 1 && major <= 3, "npy: unsupported format version ", major, ".", int(prefix[7]));
  const int len_bytes = major == 1 ? 2 : 4;
  const size_t fixed = kMagicLen + 2 + len_bytes;
  MIRA_CHECK(total >= fixed, "npy: truncated header");
  if (avail < fixed) {
    *need = fixed;
    return false;
  }
  const size_t hlen = read_le(prefix + 8, len_bytes);
  MIRA_CHECK(hlen <= kMaxHeaderLen, "npy: header length ", hlen, " is implausibly large");
  MIRA_CHECK(total >= fixed + hlen, "npy: truncated header (", total, " bytes, header needs ", fixed + hlen, ")");
  if (avail < fixed + hlen) {
    *need = fixed + hlen;
    return false;
  }
  const char* text = reinterpret_cast<const char*>(prefix + fixed);
  size_t n = hlen;
  while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' ' || text[n - 1] == '\0')) --n;
  Header h = LiteralParser(text, n).parse_dict();

  size_t numel = 1;
  for (int64_t d : h.shape) {
    MIRA_CHECK(!__builtin_mul_overflow(numel, static_cast<size_t>(d), &numel), "npy: shape overflows");
  }
  size_t bytes = 0;
  MIRA_CHECK(!__builtin_mul_overflow(numel, npy_type_size(h.type), &bytes), "npy: shape overflows");
  h.data_offset = fixed + hlen;
  h.data_bytes = bytes;
  const size_t have = total - h.data_offset;
  MIRA_CHECK(have >= bytes, "npy: truncated data: the shape needs ", bytes, " bytes, the file holds ", have);
  MIRA_CHECK(have == bytes, "npy: ", have - bytes, " unexpected bytes after the array data");
  *out = std::move(h);
  return true;
}

std::string shape_literal(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

DType dtype_of(NpyType t) {
  switch (t) {
    case NpyType::F32:
      return DType::F32;
    case NpyType::F64:
      return DType::F64;
    case NpyType::U8:
      return DType::U8;
    case NpyType::I64:
    case NpyType::I32:
      return DType::I64;
  }
  return DType::F32;
}

}  // namespace

size_t npy_type_size(NpyType t) {
  switch (t) {
    case NpyType::F32:
      return 4;
    case NpyType::F64:
      return 8;
    case NpyType::U8:
      return 1;
    case NpyType::I64:
      return 8;
    case NpyType::I32:
      return 4;
  }
  return 0;
}

const char* npy_type_descr(NpyType t) {
  switch (t) {
    case NpyType::F32:
      return "<f4";
    case NpyType::F64:
      return "<f8";
    case NpyType::U8:
      return "|u1";
    case NpyType::I64:
      return "<i8";
    case NpyType::I32:
      return "<i4";
  }
  return "?";
}

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

NpyArray npy_parse(const void* bytes, size_t size) {
  MIRA_CHECK(bytes != nullptr || size == 0, "npy_parse: null buffer");
  const auto* p = static_cast<const uint8_t*>(bytes);
  MIRA_CHECK(size >= kMagicLen + 2, "npy: not a .npy file (", size, " bytes)");
  Header h;
  size_t need = 0;
  MIRA_CHECK(parse_header(p, size, size, &h, &need), "npy: truncated header");
  NpyArray a;
  a.type = h.type;
  a.shape = h.shape;
  a.data.assign(p + h.data_offset, p + h.data_offset + h.data_bytes);
  return a;
}

NpyArray npy_read(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  MIRA_CHECK(f.good(), "npy: cannot open '", path, "'");
  const std::streamoff end = f.tellg();
  MIRA_CHECK(end >= 0, "npy: cannot size '", path, "'");
  const size_t total = static_cast<size_t>(end);
  f.seekg(0);
  MIRA_CHECK(total >= kMagicLen + 2, "npy: '", path, "' is not a .npy file (", total, " bytes)");

  // Read the fixed part, then the header it announces, then (sizes checked) the data.
  std::vector<uint8_t> prefix(std::min<size_t>(total, 12));
  f.read(reinterpret_cast<char*>(prefix.data()), static_cast<std::streamsize>(prefix.size()));
  Header h;
  size_t need = 0;
  try {
    while (!parse_header(prefix.data(), prefix.size(), total, &h, &need)) {
      const size_t old = prefix.size();
      prefix.resize(need);
      f.read(reinterpret_cast<char*>(prefix.data() + old), static_cast<std::streamsize>(need - old));
      MIRA_CHECK(f.good(), "npy: read error");
    }
  } catch (const Error& e) {
    throw Error(std::string(e.what()) + " [file '" + path + "']");
  }
  NpyArray a;
  a.type = h.type;
  a.shape = h.shape;
  a.data.resize(h.data_bytes);
  f.seekg(static_cast<std::streamoff>(h.data_offset));
  f.read(reinterpret_cast<char*>(a.data.data()), static_cast<std::streamsize>(h.data_bytes));
  MIRA_CHECK(f.good() || h.data_bytes == 0, "npy: read error in '", path, "'");
  return a;
}

namespace {

// The header of an .npy file holding `shape` of `type` (magic, version, length, the dict padded
// so that the data starts on a 64-byte boundary); *bytes: the data's size.
std::string npy_header(NpyType type, const std::vector<int64_t>& shape, const void* data, size_t* bytes_out) {
  size_t numel = 1;
  for (int64_t d : shape) {
    MIRA_CHECK(d >= 0, "npy_write: negative dimension ", d);
    MIRA_CHECK(!__builtin_mul_overflow(numel, static_cast<size_t>(d), &numel), "npy_write: shape overflows");
  }
  const size_t bytes = numel * npy_type_size(type);
  MIRA_CHECK(data != nullptr || bytes == 0, "npy_write: null data");
  std::string dict = std::string("{'descr': '") + npy_type_descr(type) +
                     "', 'fortran_order': False, 'shape': " + shape_literal(shape) + ", }";
  // Pad with spaces and end with '\n' so the data starts on a 64-byte boundary (as NumPy does);
  // version 2.0 only when the header length does not fit version 1.0's 16 bits.
  auto padded = [&](size_t fixed) { return (fixed + dict.size() + 1 + 63) / 64 * 64; };
  const bool v2 = padded(kMagicLen + 4) - (kMagicLen + 4) > 65535;
  const size_t fixed = kMagicLen + 2 + (v2 ? 4 : 2);
  const size_t total_header = padded(fixed);
  dict.append(total_header - fixed - dict.size() - 1, ' ');
  dict += '\n';
  const size_t hlen = dict.size();

  std::string head(kMagic, kMagicLen);
  head += static_cast<char>(v2 ? 2 : 1);
  head += '\0';
  for (size_t b = 0; b < (v2 ? 4u : 2u); ++b) head += static_cast<char>((hlen >> (8 * b)) & 0xff);
  head += dict;
  *bytes_out = bytes;
  return head;
}

}  // namespace

std::vector<uint8_t> npy_serialize(NpyType type, const std::vector<int64_t>& shape, const void* data) {
  size_t bytes = 0;
  const std::string head = npy_header(type, shape, data, &bytes);
  std::vector<uint8_t> out(head.size() + bytes);
  std::memcpy(out.data(), head.data(), head.size());
  if (bytes) std::memcpy(out.data() + head.size(), data, bytes);
  return out;
}

void npy_write(const std::string& path, NpyType type, const std::vector<int64_t>& shape, const void* data) {
  size_t bytes = 0;
  const std::string head = npy_header(type, shape, data, &bytes);
  // Header and data straight from the caller's buffer (no copy of the array), through a temp
  // file, fsync and rename: a failed write leaves any earlier file at `path` as it was.
  try {
    write_file_atomic(path, {{head.data(), head.size()}, {static_cast<const char*>(data), bytes}});
  } catch (const std::exception& e) {
    MIRA_FAIL("npy_write: cannot write '", path, "' (", e.what(), ")");
  }
}

Tensor npy_to_tensor(const NpyArray& a) {
  std::vector<int64_t> dims = a.shape.empty() ? std::vector<int64_t>{1} : a.shape;
  MIRA_CHECK(dims.size() <= static_cast<size_t>(Shape::kMaxDims), "npy: ", dims.size(),
             "-dimensional arrays do not fit a Tensor (at most ", Shape::kMaxDims, ")");
  Tensor t = Tensor::empty(Shape(dims), dtype_of(a.type), Device::cpu());
  if (a.type == NpyType::I32) {
    auto* dst = t.data<int64_t>();
    const auto* src = a.as<int32_t>();
    for (int64_t i = 0; i < a.numel(); ++i) dst[i] = src[i];
  } else if (!a.data.empty()) {
    std::memcpy(t.raw(), a.data.data(), a.data.size());
  }
  return t;
}

Tensor npy_read_tensor(const std::string& path) {
  return npy_to_tensor(npy_read(path));
}

void npy_write_tensor(const std::string& path, const Tensor& t) {
  MIRA_CHECK(t.defined(), "npy_write_tensor: undefined tensor");
  // bf16 exists on CUDA only: widen there, then copy.
  const Tensor h = (t.dtype() == DType::BF16 ? t.to(DType::F32) : t).to(Device::cpu());
  NpyType type = NpyType::F32;
  switch (h.dtype()) {
    case DType::F32:
      type = NpyType::F32;
      break;
    case DType::F64:
      type = NpyType::F64;
      break;
    case DType::U8:
      type = NpyType::U8;
      break;
    case DType::I64:
      type = NpyType::I64;
      break;
    default:
      MIRA_FAIL("npy_write_tensor: unsupported dtype ", dtype_name(h.dtype()));
  }
  npy_write(path, type, h.shape().vec(), h.raw());
}

}  // namespace mira
