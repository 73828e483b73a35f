// libFuzzer target for the GGUF reader: any input either parses (and then every tensor lies inside
// the buffer and every value can be rendered) or throws kiln::Error. Anything else is a bug.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "gguf/gguf.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        auto f = kiln::gguf::File::from_memory(data, size, "fuzz.gguf");
        for (const auto& [key, value] : f->metadata()) (void)value.to_string(4);
        for (const auto& t : f->tensors()) {
            if (t.data < data || t.data + t.n_bytes > data + size) std::abort();
            (void)t.shape_string();
        }
        (void)f->architecture();
        (void)f->get_int_or("general.alignment", 0);
    } catch (const kiln::Error&) {
    }
    return 0;
}
