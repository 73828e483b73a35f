// GGUF reader/writer: round trips, every shared file, and hostile inputs (truncation, corruption,
// oversized counts) that must give a clear kiln::Error, never a crash.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "gguf/gguf.h"
#include "gguf/writer.h"
#include "support/shared.h"

using namespace kiln;
using namespace kiln::gguf;
namespace fs = std::filesystem;

namespace {

Writer sample_writer(uint32_t alignment = 32) {
    Writer w(alignment);
    w.set_string("general.architecture", "llama");
    w.set_string("general.name", "round trip");
    w.set("u8", Value::make_uint(ValueType::UINT8, 200));
    w.set("i8", Value::make_int(ValueType::INT8, -100));
    w.set("u16", Value::make_uint(ValueType::UINT16, 65000));
    w.set("i16", Value::make_int(ValueType::INT16, -32000));
    w.set_u32("u32", 4000000000u);
    w.set_i32("i32", -2000000000);
    w.set_u64("u64", 18000000000000000000ull);
    w.set("i64", Value::make_int(ValueType::INT64, -9000000000000000000ll));
    w.set_f32("f32", 0.15625f);
    w.set("f64", Value::make_float(ValueType::FLOAT64, 1e300));
    w.set_bool("flag", true);
    w.set_strings("strings", {"a", "", "ünïcödé", std::string("nul\0in", 6)});
    w.set_f32s("floats", {1.5f, -2.25f, 0.0f});
    w.set_i32s("ints", {1, -2, 3});
    Value::Array inner1{Value::make_int(ValueType::INT32, 1), Value::make_int(ValueType::INT32, 2)};
    Value::Array inner2{Value::make_int(ValueType::INT32, 3)};
    w.set("nested", Value::make_array(ValueType::ARRAY, {Value::make_array(ValueType::INT32, inner1),
                                                         Value::make_array(ValueType::INT32, inner2)}));
    w.set("empty", Value::make_array(ValueType::STRING, {}));
    std::vector<float> t1(64 * 3);
    for (size_t i = 0; i < t1.size(); ++i) t1[i] = static_cast<float>(i) * 0.5f - 7.0f;
    w.add_tensor_f32("blk.0.attn_q.weight", TensorType::F32, {64, 3}, t1);
    std::vector<uint8_t> q(34 * 4);
    for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<uint8_t>(i * 7);
    w.add_tensor("token_embd.weight", TensorType::Q8_0, {64, 2}, q);
    w.add_tensor("output_norm.weight", TensorType::F32, {3}, std::vector<uint8_t>(12, 0x3f));
    return w;
}

void expect_error(const std::vector<uint8_t>& bytes, const std::string& needle) {
    try {
        auto f = File::from_memory(bytes.data(), bytes.size(), "hostile.gguf");
        FAIL() << "expected an error containing '" << needle << "'";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
        EXPECT_NE(std::string(e.what()).find("hostile.gguf"), std::string::npos) << e.what();
    }
}

// Little-endian patch helpers over the writer's output.
template <class T>
void poke(std::vector<uint8_t>& b, size_t at, T v) {
    ASSERT_LE(at + sizeof(T), b.size());
    std::memcpy(b.data() + at, &v, sizeof(T));
}

size_t find_bytes(const std::vector<uint8_t>& b, const std::string& s) {
    auto it = std::search(b.begin(), b.end(), s.begin(), s.end());
    return it == b.end() ? std::string::npos : static_cast<size_t>(it - b.begin());
}

}  // namespace

TEST(Gguf, RoundTripEveryValueType) {
    for (uint32_t alignment : {32u, 64u, 1u}) {
        Writer w = sample_writer(alignment);
        const std::vector<uint8_t> bytes = w.to_bytes();
        auto f = File::from_memory(bytes.data(), bytes.size(), "rt.gguf");
        EXPECT_EQ(f->version(), 3u);
        EXPECT_EQ(f->alignment(), alignment);
        EXPECT_EQ(f->get_string("general.name"), "round trip");
        EXPECT_EQ(f->get("u8").as_uint(), 200u);
        EXPECT_EQ(f->get("i8").as_int(), -100);
        EXPECT_EQ(f->get("u16").as_uint(), 65000u);
        EXPECT_EQ(f->get("i16").as_int(), -32000);
        EXPECT_EQ(f->get("u32").as_uint(), 4000000000u);
        EXPECT_EQ(f->get("i32").as_int(), -2000000000);
        EXPECT_EQ(f->get("u64").as_uint(), 18000000000000000000ull);
        EXPECT_THROW(f->get("u64").as_int(), Error);  // out of int64 range
        EXPECT_EQ(f->get("i64").as_int(), -9000000000000000000ll);
        EXPECT_FLOAT_EQ(static_cast<float>(f->get_float("f32")), 0.15625f);
        EXPECT_DOUBLE_EQ(f->get_float("f64"), 1e300);
        EXPECT_TRUE(f->get_bool_or("flag", false));
        EXPECT_EQ(f->get("strings").as_string_array(),
                  (std::vector<std::string>{"a", "", "ünïcödé", std::string("nul\0in", 6)}));
        EXPECT_EQ(f->get("floats").as_float_array(), (std::vector<float>{1.5f, -2.25f, 0.0f}));
        EXPECT_EQ(f->get("ints").as_int_array(), (std::vector<int64_t>{1, -2, 3}));
        const auto& nested = f->get("nested").as_array();
        ASSERT_EQ(nested.size(), 2u);
        EXPECT_EQ(nested[0].as_int_array(), (std::vector<int64_t>{1, 2}));
        EXPECT_EQ(nested[1].as_int_array(), (std::vector<int64_t>{3}));
        EXPECT_TRUE(f->get("empty").as_array().empty());
        EXPECT_THROW(f->get_string("u32"), Error);
        EXPECT_THROW(f->get("missing"), Error);
        EXPECT_EQ(f->get_int_or("missing", 7), 7);

        ASSERT_EQ(f->tensors().size(), 3u);
        const TensorInfo& q = f->tensor("blk.0.attn_q.weight");
        EXPECT_EQ(q.shape, (std::vector<uint64_t>{64, 3}));
        EXPECT_EQ(q.type, TensorType::F32);
        EXPECT_EQ(q.n_bytes, 64u * 3 * 4);
        float v;
        std::memcpy(&v, q.data + 4 * 65, 4);
        EXPECT_EQ(v, 65 * 0.5f - 7.0f);
        const TensorInfo& e = f->tensor("token_embd.weight");
        EXPECT_EQ(e.type, TensorType::Q8_0);
        EXPECT_EQ(e.n_bytes, 34u * 4);
        for (size_t i = 0; i < e.n_bytes; ++i) ASSERT_EQ(e.data[i], static_cast<uint8_t>(i * 7));
        for (const auto& t : f->tensors()) EXPECT_EQ((t.data - bytes.data()) % alignment, 0u) << t.name;
        EXPECT_THROW(f->tensor("nope"), Error);

        // Writing what we read gives the same bytes.
        Writer w2(alignment);
        for (const auto& [k, val] : f->metadata()) w2.set(k, val);
        for (const auto& t : f->tensors())
            w2.add_tensor(t.name, t.type, t.shape, std::vector<uint8_t>(t.data, t.data + t.n_bytes));
        EXPECT_EQ(w2.to_bytes(), bytes);
    }
}

TEST(Gguf, WriteToDiskAndOpen) {
    const fs::path p = kiln::test::temp_path("write_to_disk-" + std::to_string(::getpid()) + ".gguf");
    sample_writer().write(p.string());
    auto f = File::open(p.string());
    EXPECT_EQ(f->file_size(), fs::file_size(p));
    EXPECT_EQ(f->architecture(), "llama");
    EXPECT_EQ(f->tensors().size(), 3u);
}

TEST(Gguf, OpenErrorsNameTheFile) {
    try {
        File::open("/nonexistent/dir/model.gguf");
        FAIL();
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("/nonexistent/dir/model.gguf"), std::string::npos);
    }
    const fs::path empty = kiln::test::temp_path("empty-" + std::to_string(::getpid()) + ".gguf");
    std::ofstream(empty).close();
    EXPECT_THROW(File::open(empty.string()), Error);
    EXPECT_THROW(File::open(fs::temp_directory_path().string()), Error);
}

TEST(Gguf, EveryTruncationIsAnError) {
    const std::vector<uint8_t> bytes = sample_writer().to_bytes();
    // Everything up to the end of the last tensor's data is needed; the padding after it is not.
    auto f = File::from_memory(bytes.data(), bytes.size());
    const TensorInfo& last = f->tensors().back();
    const size_t needed = static_cast<size_t>(last.data - bytes.data() + last.n_bytes);
    ASSERT_LT(needed, bytes.size());
    EXPECT_NO_THROW(File::from_memory(bytes.data(), needed));
    for (size_t n = 0; n < needed; ++n) {
        std::vector<uint8_t> cut(bytes.begin(), bytes.begin() + static_cast<long>(n));
        EXPECT_THROW(File::from_memory(cut.data(), cut.size(), "cut.gguf"), Error) << "length " << n;
    }
}

TEST(Gguf, TensorDataPastEndIsNamed) {
    std::vector<uint8_t> bytes = sample_writer().to_bytes();
    {
        auto f = File::from_memory(bytes.data(), bytes.size());
        const TensorInfo& last = f->tensors().back();
        bytes.resize(static_cast<size_t>(last.data - bytes.data() + last.n_bytes - 4));  // cut into its data
    }
    expect_error(bytes, "tensor 'output_norm.weight': data [offset");
    expect_error(bytes, "runs past end of file (size " + std::to_string(bytes.size()) + ")");
}

TEST(Gguf, HostileHeaders) {
    const std::vector<uint8_t> good = sample_writer().to_bytes();
    {
        auto b = good;
        b[0] = 'X';
        expect_error(b, "not a GGUF file");
    }
    {
        auto b = good;
        poke<uint32_t>(b, 4, 1);
        expect_error(b, "version 1");
    }
    {
        auto b = good;
        poke<uint32_t>(b, 4, 3u << 24);
        expect_error(b, "big-endian");
    }
    {
        auto b = good;
        poke<uint64_t>(b, 8, ~0ull);  // tensor count
        expect_error(b, "tensor count");
    }
    {
        auto b = good;
        poke<uint64_t>(b, 16, 1ull << 60);  // metadata count
        expect_error(b, "metadata count");
    }
    {
        // Key length of general.architecture -> huge.
        auto b = good;
        poke<uint64_t>(b, 24, 1ull << 62);
        expect_error(b, "string length");
    }
    {
        // Array length of "strings" -> huge: must be refused before any allocation.
        auto b = good;
        const size_t at = find_bytes(b, "strings");
        ASSERT_NE(at, std::string::npos);
        poke<uint64_t>(b, at + 7 + 4 + 4, 1ull << 40);
        expect_error(b, "cannot fit");
    }
    {
        // Unknown value type.
        auto b = good;
        const size_t at = find_bytes(b, "flag");
        poke<uint32_t>(b, at + 4, 99);
        expect_error(b, "unknown value type 99");
    }
    {
        // Bool that is not 0/1.
        auto b = good;
        const size_t at = find_bytes(b, "flag");
        b[at + 4 + 4] = 7;
        expect_error(b, "neither 0 nor 1");
    }
    {
        // Unknown tensor type: the tensor is named.
        auto b = good;
        const size_t at = find_bytes(b, "output_norm.weight");
        // name, n_dims(4), dims(8), type(4)
        poke<uint32_t>(b, at + 18 + 4 + 8, 77);
        expect_error(b, "tensor 'output_norm.weight': unknown tensor type id 77");
    }
    {
        // Zero and overflowing dimensions, too many dimensions.
        auto b = good;
        const size_t at = find_bytes(b, "blk.0.attn_q.weight");
        poke<uint64_t>(b, at + 19 + 4, 0);
        expect_error(b, "invalid size 0");
        poke<uint64_t>(b, at + 19 + 4, 1ull << 40);
        poke<uint64_t>(b, at + 19 + 4 + 8, 1ull << 40);
        expect_error(b, "overflows");
        auto c = good;
        poke<uint32_t>(c, at + 19, 9);
        expect_error(c, "9 dimensions");
    }
    {
        // Misaligned tensor offset.
        auto b = good;
        const size_t at = find_bytes(b, "output_norm.weight");
        poke<uint64_t>(b, at + 18 + 4 + 8 + 4, 3);
        expect_error(b, "not a multiple of the alignment");
    }
    {
        // Row length that is not a whole number of blocks.
        auto b = good;
        const size_t at = find_bytes(b, "token_embd.weight");
        poke<uint64_t>(b, at + 17 + 4, 63);
        expect_error(b, "not a multiple of the q8_0 block size 32");
    }
}

TEST(Gguf, DuplicateKeysAndBadAlignment) {
    Writer d;
    d.set_string("a.key", "1");
    d.set_string("b.key", "2");
    auto db = d.to_bytes();
    db[find_bytes(db, "b.key")] = 'a';
    expect_error(db, "duplicate metadata key 'a.key'");

    Writer al;
    al.set_u32("general.alignment", 48);
    expect_error(al.to_bytes(), "not a power of two");
    Writer al2;
    al2.set_string("general.alignment", "32");
    expect_error(al2.to_bytes(), "general.alignment must be uint32");
}

TEST(Gguf, DeepNestingIsRefused) {
    Value v = Value::make_array(ValueType::INT32, {Value::make_int(ValueType::INT32, 1)});
    for (int i = 0; i < 20; ++i) v = Value::make_array(ValueType::ARRAY, {v});
    Writer w;
    w.set("deep", v);
    expect_error(w.to_bytes(), "nested deeper");
}

TEST(Gguf, RandomCorruptionNeverCrashes) {
    const std::vector<uint8_t> good = sample_writer().to_bytes();
    std::mt19937 rng(1234);
    int errors = 0, parsed = 0;
    for (int iter = 0; iter < 3000; ++iter) {
        auto b = good;
        const int flips = 1 + static_cast<int>(rng() % 4);
        for (int i = 0; i < flips; ++i) b[rng() % b.size()] = static_cast<uint8_t>(rng());
        try {
            auto f = File::from_memory(b.data(), b.size(), "fuzz.gguf");
            for (const auto& t : f->tensors()) {
                ASSERT_GE(t.data, b.data());
                ASSERT_LE(t.data + t.n_bytes, b.data() + b.size());
            }
            ++parsed;
        } catch (const Error&) {
            ++errors;
        }
    }
    EXPECT_GT(errors, 0);
    EXPECT_GT(parsed, 0);
}

TEST(Gguf, WriterRejectsBadTensors) {
    Writer w;
    EXPECT_THROW(w.add_tensor("t", TensorType::Q8_0, {33}, std::vector<uint8_t>(34)), Error);
    EXPECT_THROW(w.add_tensor("t", TensorType::F32, {4}, std::vector<uint8_t>(15)), Error);
    w.add_tensor("t", TensorType::F32, {4}, std::vector<uint8_t>(16));
    EXPECT_THROW(w.add_tensor("t", TensorType::F32, {4}, std::vector<uint8_t>(16)), Error);
    EXPECT_THROW(Writer(24), Error);
}

// Every shared model and vocab file opens; tensor bytes add up and lie inside the file. Also
// writes the fuzzer's seed corpus (headers of real files) into the build directory.
TEST(Gguf, SharedFilesOpen) {
    KILN_REQUIRE_SHARED("models");
    const fs::path corpus = fs::path(KILN_BINARY_DIR) / "fuzz-corpus" / "gguf";
    fs::create_directories(corpus);
    int n = 0;
    for (const char* sub : {"models", "vocab"}) {
        for (const auto& entry : fs::directory_iterator(kiln::test::shared_dir() / sub)) {
            if (entry.path().extension() != ".gguf") continue;
            SCOPED_TRACE(entry.path().string());
            auto f = File::open(entry.path().string());
            EXPECT_EQ(f->version(), 3u);
            EXPECT_FALSE(f->architecture().empty());
            EXPECT_TRUE(f->has("tokenizer.ggml.model"));
            uint64_t bytes = 0;
            for (const auto& t : f->tensors()) {
                bytes += t.n_bytes;
                EXPECT_LE(f->data_offset() + t.offset + t.n_bytes, f->file_size());
            }
            if (std::string(sub) == "models") {
                EXPECT_GT(f->tensors().size(), 0u);
                EXPECT_LE(bytes, f->file_size());
                EXPECT_GT(bytes, f->file_size() / 2);
            }
            ++n;
        }
    }
    EXPECT_GE(n, 30);
    auto seed = [&](const std::string& name, const std::vector<uint8_t>& b) {
        std::ofstream(corpus / name, std::ios::binary)
            .write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
    };
    for (uint32_t al : {1u, 32u, 64u}) seed("sample-align" + std::to_string(al) + ".gguf", sample_writer(al).to_bytes());
    for (const auto& entry : fs::directory_iterator(kiln::test::shared_dir() / "models")) {
        if (entry.path().extension() != ".gguf") continue;
        std::ifstream in(entry.path(), std::ios::binary);
        std::vector<uint8_t> head(8192);
        in.read(reinterpret_cast<char*>(head.data()), static_cast<std::streamsize>(head.size()));
        head.resize(static_cast<size_t>(in.gcount()));
        seed("head-" + entry.path().filename().string(), head);
    }
}

// GGUF v2 has v3's little-endian layout (64-bit counts and lengths); only the version differs.
TEST(Gguf, ReadsVersion2) {
    std::vector<uint8_t> bytes = sample_writer().to_bytes();
    poke<uint32_t>(bytes, 4, 2);
    auto f = File::from_memory(bytes.data(), bytes.size(), "v2.gguf");
    EXPECT_EQ(f->version(), 2u);
    EXPECT_EQ(f->get_string("general.name"), "round trip");
    EXPECT_EQ(f->tensors().size(), 3u);
    EXPECT_EQ(f->tensor("token_embd.weight").type, TensorType::Q8_0);
}
