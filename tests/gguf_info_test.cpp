// kiln::GgufInfo (kiln/gguf_info.h, what kiln info prints) against engine/gguf's reader and the
// architecture's KV layers, on every shared model file.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>

#include "gguf/gguf.h"
#include "kiln/gguf_info.h"
#include "kiln/error.h"
#include "kiln/types.h"
#include "model/architecture.h"
#include "support/shared.h"

namespace {

// The public value against the reader's, recursively.
void expect_same(const kiln::GgufValue& v, const kiln::gguf::Value& ref, const std::string& key) {
    using T = kiln::gguf::ValueType;
    switch (ref.type()) {
        case T::STRING:
            ASSERT_EQ(v.kind, kiln::GgufValue::Kind::String) << key;
            EXPECT_EQ(v.s, ref.as_string()) << key;
            break;
        case T::BOOL:
            ASSERT_EQ(v.kind, kiln::GgufValue::Kind::Bool) << key;
            EXPECT_EQ(v.b, ref.as_bool()) << key;
            break;
        case T::FLOAT32:
        case T::FLOAT64:
            ASSERT_EQ(v.kind, kiln::GgufValue::Kind::Float) << key;
            EXPECT_EQ(v.f, ref.as_float()) << key;
            break;
        case T::ARRAY:
            ASSERT_EQ(v.kind, kiln::GgufValue::Kind::Array) << key;
            ASSERT_EQ(v.items.size(), ref.as_array().size()) << key;
            for (size_t i = 0; i < v.items.size(); ++i) expect_same(v.items[i], ref.as_array()[i], key);
            break;
        case T::UINT8:
        case T::UINT16:
        case T::UINT32:
        case T::UINT64:
            ASSERT_EQ(v.kind, kiln::GgufValue::Kind::UInt) << key;
            EXPECT_EQ(v.u, ref.as_uint()) << key;
            break;
        default:
            ASSERT_EQ(v.kind, kiln::GgufValue::Kind::Int) << key;
            EXPECT_EQ(v.i, ref.as_int()) << key;
    }
}

}  // namespace

TEST(GgufInfo, EverySharedModelMatchesTheReader) {
    KILN_REQUIRE_SHARED("models");
    int files = 0;
    for (const auto& e : std::filesystem::directory_iterator(kiln::test::shared_dir() / "models")) {
        if (e.path().extension() != ".gguf") continue;
        const std::string path = e.path().string();
        SCOPED_TRACE(path);
        const kiln::GgufInfo info = kiln::GgufInfo::read(path);
        const auto f = kiln::gguf::File::open(path);
        EXPECT_EQ(info.version, f->version());
        EXPECT_EQ(info.file_size, f->file_size());
        EXPECT_EQ(info.data_offset, f->data_offset());
        EXPECT_EQ(info.architecture(), f->architecture());
        ASSERT_EQ(info.metadata.size(), f->metadata().size());
        for (size_t i = 0; i < info.metadata.size(); ++i) {
            EXPECT_EQ(info.metadata[i].first, f->metadata()[i].first);
            expect_same(info.metadata[i].second, f->metadata()[i].second, info.metadata[i].first);
        }
        EXPECT_EQ(info.get_string_or("general.name", "-"), f->get_string_or("general.name", "-"));
        EXPECT_EQ(info.get_int_or("tokenizer.ggml.eos_token_id", -7), f->get_int_or("tokenizer.ggml.eos_token_id", -7));
        EXPECT_EQ(info.get_int_or("no.such.key", -7), -7);
        EXPECT_THROW(info.get_int_or("general.architecture", 0), kiln::Error);
        ASSERT_EQ(info.tensors.size(), f->tensors().size());
        for (size_t i = 0; i < info.tensors.size(); ++i) {
            const auto& t = info.tensors[i];
            const auto& r = f->tensors()[i];
            EXPECT_EQ(t.name, r.name);
            EXPECT_EQ(t.type, kiln::type_name(r.type));
            EXPECT_EQ(t.shape, r.shape);
            EXPECT_EQ(t.shape_string(), r.shape_string());
            EXPECT_EQ(t.n_bytes, r.n_bytes);
            EXPECT_EQ(t.n_elements, r.n_elements);
            EXPECT_EQ(t.offset, f->data_offset() + r.offset);
        }
        const auto kv = kiln::GgufInfo::read_kv_layers(path);
        const auto ref = kiln::model::load_architecture(*f)->kv_layers();
        ASSERT_EQ(kv.size(), ref.size());
        for (size_t i = 0; i < kv.size(); ++i) {
            EXPECT_EQ(kv[i].n_head_kv, ref[i].n_head_kv);
            EXPECT_EQ(kv[i].head_dim_k, ref[i].head_dim_k);
            EXPECT_EQ(kv[i].head_dim_v, ref[i].head_dim_v);
            EXPECT_EQ(kv[i].window, ref[i].window);
            EXPECT_EQ(kv[i].v_in_k, ref[i].v_in_k);
        }
        ++files;
    }
    EXPECT_GT(files, 10);
    try {
        (void)kiln::GgufInfo::read("/nonexistent/model.gguf");
        FAIL() << "no error";
    } catch (const kiln::Error& e) {
        EXPECT_NE(std::string(e.what()).find("/nonexistent/model.gguf"), std::string::npos) << e.what();
    }
}
