// Fuzz entry points: one function per parser that reads data users did not make. The libFuzzer
// harnesses (fuzz/fuzz_<parser>.cpp) and tests/test_fuzz_regressions.cpp call the same
// functions, so every input a fuzzer found stays a regression test in the ordinary build.
//
// Contract: a target returns normally when the input was accepted or rejected with mira::Error
// (a clean error); anything else (another exception such as std::bad_alloc or a
// nlohmann::json::exception, a crash, a sanitizer report) is a bug in the parser.
//
// Inputs that need more than one file are framed as described next to each target.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mira::fuzz {

using TargetFn = void (*)(const uint8_t* data, size_t size);

// A safetensors file (load_safetensors); files that load and carry a training position in their
// metadata are also loaded as a mira_pretrain checkpoint into a fixed tiny model
// (checkpoint_model_*), as `--resume` does.
void fuzz_safetensors(const uint8_t* data, size_t size);
// A mira_pretrain configuration: the bytes up to the first NUL are the JSON file (comments
// allowed), each line after it one `--set key=value`. Merged, validated and then read the way
// mira_pretrain reads it; a value that passes validation but cannot be read as validated is a bug.
void fuzz_config(const uint8_t* data, size_t size);
// A .npy file, through both readers (from memory and from a file) and the tensor conversion.
void fuzz_npy(const uint8_t* data, size_t size);
// An IDX image file and its label file: a 4-byte little-endian length L, then L bytes of the
// image file (either may be gzip-compressed), then the label file.
void fuzz_idx(const uint8_t* data, size_t size);
// One CIFAR binary batch (raw or gzip), read as CIFAR-10 test_batch.bin, as CIFAR-100 test.bin
// and through format detection.
void fuzz_cifar(const uint8_t* data, size_t size);
// An image file (JPEG through libjpeg-turbo, or PNG) through decode_image; the DCT scale and
// decoder options are derived from the image size so every path is reached.
void fuzz_jpeg(const uint8_t* data, size_t size);

struct Target {
  const char* name;  // the folder name under fuzz/corpus/ and fuzz/regressions/
  TargetFn fn;
};
const std::vector<Target>& all_targets();

// Runs fn: returns true when the input was accepted, false when it was rejected with
// mira::Error (the message in *why when given). Other exceptions propagate.
bool run_target(TargetFn fn, const uint8_t* data, size_t size, std::string* why = nullptr);

// The tiny model the checkpoint target loads into (also what fuzz/corpus/safetensors was made
// with): resnet_tiny, widths 2/2/2/2, one block per stage, projector 4/4, 4 prototypes.
std::vector<std::string> checkpoint_model_sets();

}  // namespace mira::fuzz
