#include "engine/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>

#include <zlib.h>

#include "kernels/cpu/pointwise.h"

namespace mira {

namespace {

constexpr uint64_t kMaxHeader = 100ull << 20;  // the format's own limit is 100 MB

const char* st_dtype(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::U8: return "U8";
    case DType::I64: return "I64";
  }
  return "?";
}

bool parse_st_dtype(const std::string& s, DType* t, size_t* file_elem) {
  static const std::map<std::string, std::pair<DType, size_t>> k = {
      {"F32", {DType::F32, 4}}, {"F64", {DType::F64, 8}}, {"BF16", {DType::BF16, 2}},
      {"U8", {DType::U8, 1}},   {"I64", {DType::I64, 8}}};
  auto it = k.find(s);
  if (it == k.end()) return false;
  *t = it->second.first;
  *file_elem = it->second.second;
  return true;
}

std::string errno_text() { return std::strerror(errno); }

// CRC-32 (zlib's) of bytes, continuing from crc; in pieces below zlib's 32-bit length.
uint32_t crc32_of(uint32_t crc, const char* p, size_t n) {
  uLong c = crc;
  while (n > 0) {
    const uInt m = static_cast<uInt>(std::min<size_t>(n, 1u << 30));
    c = ::crc32(c, reinterpret_cast<const Bytef*>(p), m);
    p += m;
    n -= m;
  }
  return static_cast<uint32_t>(c);
}

std::string hex32(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

void write_all(int fd, const char* p, size_t n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      MIRA_FAIL("writing ", path, ": ", errno_text());
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
}

std::string dir_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? "." : (slash == 0 ? "/" : path.substr(0, slash));
}

// Writes pieces to a temp file next to `path`, fsyncs, renames over `path`, fsyncs the folder.
void atomic_write_pieces(const std::string& path, const std::vector<std::pair<const char*, size_t>>& pieces) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  MIRA_CHECK(fd >= 0, "cannot create ", tmp, ": ", errno_text());
  try {
    for (const auto& [p, n] : pieces) write_all(fd, p, n, tmp);
    MIRA_CHECK(::fsync(fd) == 0, "fsync of ", tmp, ": ", errno_text());
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (::close(fd) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    MIRA_FAIL("closing ", tmp, ": ", why);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = errno_text();
    ::unlink(tmp.c_str());
    MIRA_FAIL("renaming ", tmp, " to ", path, ": ", why);
  }
  int dfd = ::open(dir_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace

void write_file_atomic(const std::string& path, const std::string& bytes) {
  atomic_write_pieces(path, {{bytes.data(), bytes.size()}});
}

void write_file_atomic(const std::string& path, const std::vector<std::pair<const char*, size_t>>& pieces) {
  atomic_write_pieces(path, pieces);
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  // The checksum goes in below; one in `metadata` (a loaded file's, saved again) is replaced.
  header["__metadata__"] = metadata;
  std::vector<Tensor> host;
  host.reserve(tensors.size());
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    MIRA_CHECK(t.defined(), "save_safetensors: tensor '", name, "' is undefined");
    MIRA_CHECK(name != "__metadata__" && !header.contains(name), "save_safetensors: duplicate name '", name, "'");
    Tensor h;
    if (t.dtype() == DType::BF16) {
      // Keep the bits: move to f32 on the host and round back (exact for values that came from bf16).
      Tensor f = t.to(Device::cpu(), DType::F32);
      std::vector<uint16_t> bits(static_cast<size_t>(t.numel()));
      const float* src = f.data<float>();
      for (size_t i = 0; i < bits.size(); ++i) bits[i] = f32_to_bf16_bits(src[i]);
      h = Tensor::empty({static_cast<int64_t>(bits.size() * 2)}, DType::U8, Device::cpu());
      std::memcpy(h.raw(), bits.data(), bits.size() * 2);
    } else {
      h = t.is_cuda() ? t.to(Device::cpu()) : t;
    }
    const uint64_t n = h.nbytes();
    header[name] = {{"dtype", st_dtype(t.dtype())}, {"shape", t.shape().vec()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
    host.push_back(h);
  }
  uint32_t crc = 0;  // zlib's CRC-32 starts from 0
  for (const Tensor& h : host) crc = crc32_of(crc, static_cast<const char*>(h.raw()), h.nbytes());
  header["__metadata__"][kSafetensorsCrcKey] = hex32(crc);
  std::string hs = header.dump();
  while ((hs.size() + 8) % 8 != 0) hs.push_back(' ');  // tensors start 8-byte aligned
  uint64_t hlen = hs.size();
  unsigned char len_le[8];
  for (int i = 0; i < 8; ++i) len_le[i] = static_cast<unsigned char>(hlen >> (8 * i));
  std::vector<std::pair<const char*, size_t>> pieces;
  pieces.push_back({reinterpret_cast<const char*>(len_le), 8});
  pieces.push_back({hs.data(), hs.size()});
  for (const Tensor& h : host)
    if (h.nbytes()) pieces.push_back({static_cast<const char*>(h.raw()), h.nbytes()});
  atomic_write_pieces(path, pieces);
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  MIRA_CHECK(in.good(), "cannot open checkpoint ", path, ": ", errno_text());
  in.seekg(0, std::ios::end);
  const uint64_t fsize = static_cast<uint64_t>(in.tellg());
  in.seekg(0);
  MIRA_CHECK(fsize >= 8, path, ": not a safetensors file (", fsize, " bytes, shorter than its 8-byte header length)");
  unsigned char len_le[8];
  in.read(reinterpret_cast<char*>(len_le), 8);
  uint64_t hlen = 0;
  for (int i = 0; i < 8; ++i) hlen |= static_cast<uint64_t>(len_le[i]) << (8 * i);
  MIRA_CHECK(hlen <= kMaxHeader && hlen <= fsize - 8, path, ": header length ", hlen, " does not fit a file of ",
             fsize, " bytes (truncated or not safetensors)");
  std::string hs(hlen, '\0');
  in.read(hs.data(), static_cast<std::streamsize>(hlen));
  MIRA_CHECK(in.good(), path, ": cannot read its header");
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(hs);
  } catch (const std::exception& e) {
    MIRA_FAIL(path, ": header is not valid JSON: ", e.what());
  }
  MIRA_CHECK(header.is_object(), path, ": header is not a JSON object");
  const uint64_t data_size = fsize - 8 - hlen;
  SafetensorsFile out;
  struct Pending {
    std::string name;
    DType dtype;
    Shape shape;
    uint64_t begin, end;
  };
  std::vector<Pending> pending;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& e = it.value();
    if (name == "__metadata__") {
      MIRA_CHECK(e.is_object(), path, ": __metadata__ is not an object");
      for (auto m = e.begin(); m != e.end(); ++m) {
        MIRA_CHECK(m.value().is_string(), path, ": metadata '", m.key(), "' is not a string");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    MIRA_CHECK(e.is_object() && e.contains("dtype") && e.contains("shape") && e.contains("data_offsets"), path,
               ": entry '", name, "' lacks dtype, shape or data_offsets");
    MIRA_CHECK(e["dtype"].is_string(), path, ": entry '", name, "' has a non-string dtype");
    DType t;
    size_t esz;
    MIRA_CHECK(parse_st_dtype(e["dtype"].get<std::string>(), &t, &esz), path, ": entry '", name,
               "' has unsupported dtype ", e["dtype"].dump());
    const nlohmann::json& sh = e["shape"];
    MIRA_CHECK(sh.is_array() && sh.size() <= 4, path, ": entry '", name, "' shape ", sh.dump(),
               " is not an array of at most 4 dimensions");
    std::vector<int64_t> dims;
    uint64_t numel = 1;
    for (const auto& d : sh) {
      MIRA_CHECK(d.is_number_unsigned(), path, ": entry '", name, "' has a bad dimension ", d.dump());
      const uint64_t v = d.get<uint64_t>();
      MIRA_CHECK(v <= data_size && (v == 0 || numel <= data_size / v), path, ": entry '", name, "' shape ", sh.dump(),
                 " is larger than the file");
      numel *= v;
      dims.push_back(static_cast<int64_t>(v));
    }
    const nlohmann::json& off = e["data_offsets"];
    MIRA_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() && off[1].is_number_unsigned(), path,
               ": entry '", name, "' has bad data_offsets ", off.dump());
    const uint64_t b = off[0].get<uint64_t>(), en = off[1].get<uint64_t>();
    MIRA_CHECK(b <= en && en <= data_size, path, ": entry '", name, "' points at bytes [", b, ", ", en,
               ") past the end of the data (", data_size, " bytes; truncated file?)");
    MIRA_CHECK(en - b == numel * esz, path, ": entry '", name, "' holds ", en - b, " bytes for shape ", sh.dump(),
               " of ", e["dtype"].get<std::string>());
    pending.push_back({name, t, Shape(dims), b, en});
  }
  std::string data(data_size, '\0');
  in.read(data.data(), static_cast<std::streamsize>(data_size));
  MIRA_CHECK(in.gcount() == static_cast<std::streamsize>(data_size), path, ": truncated data section");
  const auto crc = out.metadata.find(kSafetensorsCrcKey);
  if (crc != out.metadata.end()) {
    const std::string got = hex32(crc32_of(0, data.data(), data.size()));
    MIRA_CHECK(got == crc->second, path, ": the data's checksum is ", got, " but the file was written with ",
               crc->second, " (damaged after it was written)");
  }
  for (const Pending& p : pending) {
    const char* src = data.data() + p.begin;
    if (p.dtype == DType::BF16) {
      Tensor t = Tensor::empty(p.shape, DType::F32);
      float* dst = t.data<float>();
      for (int64_t i = 0; i < p.shape.numel(); ++i) {
        uint16_t bits;
        std::memcpy(&bits, src + 2 * i, 2);
        dst[i] = bf16_bits_to_f32(bits);
      }
      out.tensors[p.name] = t;
    } else {
      Tensor t = Tensor::empty(p.shape, p.dtype);
      if (t.nbytes()) std::memcpy(t.raw(), src, t.nbytes());
      out.tensors[p.name] = t;
    }
  }
  return out;
}

}  // namespace mira
