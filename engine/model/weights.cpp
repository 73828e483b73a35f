#include "model/weights.h"

#include <fmt/format.h>

#include "kiln/error.h"

namespace kiln::model {

graph::TensorId Weight::in(graph::Graph& g) const {
    if (!data) throw Error("internal: an absent optional weight was used in a graph");
    if (ne2 > 1) return g.weight3(label, dtype, data, ne0, ne1, ne2, nb2);
    return g.weight(label, dtype, data, ne0, ne1);
}

std::string WeightBinder::layer(int64_t il, const char* suffix) { return fmt::format("blk.{}.{}", il, suffix); }

Weight WeightBinder::bind(const gguf::TensorInfo& t, const std::vector<int64_t>& shape) {
    // Trailing 1s are not significant ([256] == [256, 1]).
    std::vector<uint64_t> actual = t.shape;
    while (actual.size() > 1 && actual.back() == 1) actual.pop_back();
    std::vector<int64_t> want = shape;
    while (want.size() > 1 && want.back() == 1) want.pop_back();
    bool ok = actual.size() == want.size();
    for (size_t i = 0; ok && i < want.size(); ++i) ok = static_cast<int64_t>(actual[i]) == want[i];
    if (!ok)
        throw Error(fmt::format("{}: tensor '{}' has shape {}, expected {}", f_.path(), t.name, t.shape_string(),
                                kiln::shape_string(shape)));
    if (want.size() == 1 && t.type != TensorType::F32)
        throw Error(fmt::format("{}: tensor '{}' is {}, expected f32 for a 1-D tensor", f_.path(), t.name,
                                type_name(t.type)));
    if (!traits(t.type).can_dequantize)
        throw Error(fmt::format("{}: tensor '{}' has type {}, which kiln cannot compute with yet", f_.path(), t.name,
                                type_name(t.type)));
    Weight w;
    w.info = &t;
    w.label = t.name;
    w.dtype = t.type;
    w.data = t.data;
    w.ne0 = want[0];
    w.ne1 = want.size() > 1 ? want[1] : 1;
    w.ne2 = want.size() > 2 ? want[2] : 1;
    ++n_bound_;
    bytes_bound_ += t.n_bytes;
    return w;
}

Weight WeightBinder::require(const std::string& name, std::vector<int64_t> shape) {
    const gguf::TensorInfo* t = f_.find_tensor(name);
    if (!t)
        throw Error(fmt::format("{}: missing tensor '{}' (expected shape {})", f_.path(), name, kiln::shape_string(shape)));
    return bind(*t, shape);
}

Weight WeightBinder::optional(const std::string& name, std::vector<int64_t> shape) {
    const gguf::TensorInfo* t = f_.find_tensor(name);
    return t ? bind(*t, shape) : Weight{};
}

}  // namespace kiln::model
