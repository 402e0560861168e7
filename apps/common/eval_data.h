// What the evaluation apps share around the data: opening a split, labelled subsets, feature
// and label arrays in .npy, the device choice and the backbone options on the command line.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "apps/common/cli.h"
#include "apps/common/features.h"
#include "data/dataset.h"
#include "engine/tensor.h"

namespace mira::apps {

// IDX / CIFAR directories: `split` of it; ImageFolder: the tree (one split). Errors name `flag`.
std::unique_ptr<data::Dataset> open_split(const std::string& path, const std::string& format, data::Split split,
                                          const std::string& flag);

// A labelled subset, sorted ascending. fraction in (0, 1]: per class, max(1, round(fraction *
// n_class)) samples drawn by a Philox shuffle keyed by seed (class c uses epoch c of
// data::epoch_indices), so the subset is class-balanced and reproducible. list_file: one entry
// per line, a sample index or (ImageFolder) a file name matched against the base names; `#`
// starts a comment. Exactly one of fraction < 1 / list_file may be used; neither: all samples.
std::vector<int64_t> select_subset(const std::vector<int64_t>& labels, double fraction, uint64_t seed,
                                   const std::string& list_file, const data::Dataset* ds = nullptr);

// Rows `rows` of a (N, D) CPU tensor, and the matching labels.
Tensor take_rows(const Tensor& x, const std::vector<int64_t>& rows);
std::vector<int64_t> take(const std::vector<int64_t>& v, const std::vector<int64_t>& rows);

// (N, D) f32 features from .npy (f32 or f64; 2-d); labels from .npy (1-d integers, or f32/f64
// holding integers). Errors name the file and say what was found.
Tensor read_features_npy(const std::string& path);
std::vector<int64_t> read_labels_npy(const std::string& path);
void write_labels_npy(const std::string& path, const std::vector<int64_t>& labels);

// "auto": the first CUDA device when the build has CUDA and a device is present, else cpu.
Device parse_device(const std::string& s);

// --transform (auto | imagenet | cifar | gray28), --mean, --std (3 values each, override the
// transform's normalisation, e.g. to match a pre-training run's data.mean / data.std).
void add_transform_args(ArgParser& p);
EvalTransform transform_args(const ArgParser& p, const data::Dataset& ds);

// --train-data, --test-data, --data-format and the precomputed alternative --train-features,
// --train-labels, --test-features, --test-labels.
void add_split_args(ArgParser& p);
// The four precomputed arrays (all required), with the feature/label counts checked.
struct NpySplits {
  Tensor train, test;
  std::vector<int64_t> train_labels, test_labels;
};
NpySplits read_npy_splits(const ArgParser& p);

// --checkpoint, --which, --arch, --random-init, --seed, --cifar-stem, --cifar-stem-padding.
void add_backbone_args(ArgParser& p);
BackboneOptions backbone_args(const ArgParser& p, Device device);

}  // namespace mira::apps
