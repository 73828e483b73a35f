// Binding of weight tensors by name, with shape and type checks. A model file that lacks a tensor
// or holds one of the wrong shape is refused with a message naming the tensor, the expected and
// the actual shape.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "graph/graph.h"

namespace kiln::model {

// A weight: 1-D (ne1 == 1), 2-D, or 3-D (ne2 matrices of ne1 rows: experts, heads), any stored
// type. Usually a tensor of the model file; an architecture may also derive one at load (its own
// bytes, e.g. a transposed copy) or view part of another (a matrix stride nb2 other than packed).
struct Weight {
    const gguf::TensorInfo* info = nullptr;  // the file's tensor; null for derived weights
    std::string label;                      // name in graphs and messages
    TensorType dtype = TensorType::F32;
    const void* data = nullptr;  // null: absent (optional weight)
    int64_t ne0 = 0, ne1 = 0, ne2 = 1;
    uint64_t nb2 = 0;  // bytes between the ne2 matrices (0: packed)

    explicit operator bool() const { return data != nullptr; }
    const std::string& name() const { return label; }
    TensorType type() const { return dtype; }
    // Adds it to a graph as a leaf.
    graph::TensorId in(graph::Graph& g) const;
};

class WeightBinder {
public:
    explicit WeightBinder(const gguf::File& f) : f_(f) {}

    // `shape` in ggml order: {row length}, {row length, rows} or {row length, rows, matrices}. Throws kiln::Error when missing
    // or mis-shaped. Row-wise tensors (norms, biases) must be f32.
    Weight require(const std::string& name, std::vector<int64_t> shape);
    // As require(), but an absent tensor gives an empty Weight.
    Weight optional(const std::string& name, std::vector<int64_t> shape);
    // "blk.%d.<suffix>" helpers.
    static std::string layer(int64_t il, const char* suffix);

    // Every tensor bound so far (to report unused ones, count bytes).
    size_t n_bound() const { return n_bound_; }
    uint64_t bytes_bound() const { return bytes_bound_; }

private:
    Weight bind(const gguf::TensorInfo& t, const std::vector<int64_t>& shape);
    const gguf::File& f_;
    size_t n_bound_ = 0;
    uint64_t bytes_bound_ = 0;
};

}  // namespace kiln::model
