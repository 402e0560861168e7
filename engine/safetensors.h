// safetensors files (8-byte little-endian header length, JSON header, raw little-endian
// tensors), the checkpoint format: PyTorch reads them with safetensors.torch.load_file.
// Writing is atomic (temp file in the same folder, fsync, rename, fsync of the folder), so a
// crash or a full disk leaves the previous file intact. Reading validates everything before
// allocating: a truncated or corrupt file is a mira::Error naming the problem, never a crash
// or a partial load.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "engine/tensor.h"

namespace mira {

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;  // CPU tensors
  std::map<std::string, std::string> metadata;
};

// The writer stores the CRC-32 of the data section (8 hex digits) under this metadata key, and
// the reader checks it where present (files from other writers have none): a checkpoint damaged
// after its atomic write (a flipped bit on disk or in a copy) is an error, not a silent model.
// A value under this key in the metadata given to save_safetensors is replaced by the new one.
inline constexpr const char* kSafetensorsCrcKey = "mira_data_crc32";

// Tensors may live on any device (copied to the host); bf16 tensors are stored as BF16.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// bf16 entries load as f32 (the host holds no bf16). Entries with more than 4 dimensions or an
// unsupported dtype are errors naming the entry.
SafetensorsFile load_safetensors(const std::string& path);

// Atomically replaces `path` with `bytes` (the same temp + fsync + rename protocol: a failed
// write removes its temp file and leaves any earlier file at `path` as it was).
void write_file_atomic(const std::string& path, const std::string& bytes);
// The same with the bytes in pieces (pointer, size), written in order without a copy.
void write_file_atomic(const std::string& path, const std::vector<std::pair<const char*, size_t>>& pieces);

}  // namespace mira
