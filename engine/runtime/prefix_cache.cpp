// kiln::PrefixCache (kiln/prefix_cache.h): blocks of KV rows keyed by their token chain, in host
// memory (least recently used evicted) and in files (one per block) under a directory.
#include "kiln/prefix_cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "kiln/error.h"
#include "model/model_impl.h"
#include "runtime/kv_cache.h"

namespace kiln {

namespace fs = std::filesystem;

namespace {

// ---- hashing: 64-bit, four lanes of 8 bytes (the xxHash64 round), for keys and checksums ------

constexpr uint64_t kP1 = 0x9E3779B185EBCA87ull, kP2 = 0xC2B2AE3D27D4EB4Full, kP3 = 0x165667B19E3779F9ull;
inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t round64(uint64_t acc, uint64_t w) { return rotl(acc + w * kP2, 31) * kP1; }
inline uint64_t avalanche(uint64_t h) {
    h ^= h >> 33;
    h *= kP2;
    h ^= h >> 29;
    h *= kP3;
    h ^= h >> 32;
    return h;
}

uint64_t hash_bytes(const void* data, size_t n, uint64_t seed) {
    const auto* p = static_cast<const uint8_t*>(data);
    uint64_t v[4] = {seed + kP1 + kP2, seed + kP2, seed, seed - kP1};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int l = 0; l < 4; ++l) {
            uint64_t w;
            std::memcpy(&w, p + i + 8 * l, 8);
            v[l] = round64(v[l], w);
        }
    uint64_t h = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18) + static_cast<uint64_t>(n);
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        h = rotl(h ^ round64(0, w), 27) * kP1 + kP3;
    }
    for (; i < n; ++i) h = rotl(h ^ (p[i] * kP3), 11) * kP1;
    return avalanche(h);
}

struct Key {
    uint64_t a = 0, b = 0;
    bool operator==(const Key&) const = default;
    std::string hex() const { return fmt::format("{:016x}{:016x}", a, b); }
};
struct KeyHash {
    size_t operator()(const Key& k) const { return static_cast<size_t>(k.a ^ (k.b * kP1)); }
};
// Two independent 64-bit hashes: a 128-bit key.
Key hash_key(const void* data, size_t n, const Key& seed) {
    return Key{hash_bytes(data, n, seed.a ^ 0x6b696c6e2d6b6579ull), hash_bytes(data, n, seed.b + 0x70726566697821ull)};
}

// How a block of one identity is laid out: per layer, K rows then V rows (not for MLA), of
// block_tokens tokens (a full layer) or the last `rows` tokens (a sliding-window layer, present
// only in blocks that have them).
struct LayerPlan {
    int64_t window = 0;  // > 0: a sliding-window layer
    int64_t rows = 0;    // rows of each kind a block stores for this layer
    size_t k_row = 0, v_row = 0;  // bytes of one K / V row (v_row 0: MLA, V lies in K)
    size_t off = 0;  // where its K rows start in the block's full-layer rows (window 0) or window rows
    size_t bytes() const { return static_cast<size_t>(rows) * (k_row + v_row); }
};
struct Plan {
    Key id;
    std::vector<LayerPlan> layers;
    size_t bytes_full = 0;  // payload with the sliding-window layers' rows
    size_t bytes_bare = 0;  // without them: the full layers' rows
    int64_t min_window = 0;  // smallest window of a sliding layer (0: none)
};

// A block's rows: the full layers' in one KV page (backend::KvPage), laid out as a CPU context's
// page of block_tokens positions (layer by layer, K rows then V rows), so that a context whose
// pages are of that size and whose paged layers are the full ones shares it by reference; the
// sliding-window layers' last rows beside it. In a file they are one payload, layer by layer.
struct Block {
    Key key, parent;
    std::vector<int32_t> tokens;
    bool windows = false;  // holds the sliding-window layers' rows
    backend::KvPage bare;  // Plan::bytes_bare
    // The same rows as a device page of the Vulkan context that saved them (held by reference: a
    // context of the same device pool restores the block by reference, no copy); nullptr else.
    std::shared_ptr<backend::KvDevicePage> dev;
    std::vector<uint8_t> win;  // bytes_full - bytes_bare when windows
    const Plan* plan = nullptr;  // its identity's (the plans map keeps them in place)
    uint64_t last_used = 0;
    bool on_disk = false;
    size_t payload() const { return plan->bytes_bare + win.size(); }
    size_t cost() const { return payload() + tokens.size() * 4 + 128; }
    // The rows of layer lp (in bare or win).
    uint8_t* rows(const LayerPlan& lp) { return (lp.window == 0 ? bare.get() : win.data()) + lp.off; }
};

// File layout: FileHeader, block_tokens int32 ids, payload_bytes of rows, the 64-bit checksum of
// all that (hash_bytes chained over the three parts).
struct FileHeader {
    char magic[8];
    uint32_t version;
    uint32_t block_tokens;
    uint64_t id_a, id_b;
    uint64_t key_a, key_b;
    uint64_t parent_a, parent_b;
    uint32_t windows;
    uint32_t reserved;
    uint64_t payload_bytes;
};
static_assert(sizeof(FileHeader) == 80);
constexpr char kMagic[8] = {'K', 'I', 'L', 'N', 'K', 'V', 'B', '1'};
constexpr uint32_t kFileVersion = 1;
constexpr const char* kExt = ".kvb";

uint64_t file_checksum(const FileHeader& h, const int32_t* tokens, size_t n_tokens, const uint8_t* payload, size_t bytes) {
    uint64_t c = hash_bytes(&h, sizeof h, 0x636865636b73756dull);
    c = hash_bytes(tokens, n_tokens * 4, c);
    return hash_bytes(payload, bytes, c);
}

// Identifies the model file: its size, its header (metadata and tensor table) and the first and
// last bytes of every tensor (a fine-tune with the same header differs there).
Key model_identity(const gguf::File& f) {
    Key k{f.file_size(), f.data_offset()};
    std::ifstream in(f.path(), std::ios::binary);
    std::vector<char> head(static_cast<size_t>(std::min<uint64_t>(f.data_offset(), f.file_size())));
    if (!in.read(head.data(), static_cast<std::streamsize>(head.size())))
        throw Error(fmt::format("prefix cache: cannot read the header of {}", f.path()));
    k = hash_key(head.data(), head.size(), k);
    for (const gguf::TensorInfo& t : f.tensors()) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(t.n_bytes, 64));
        if (!t.data || n == 0) continue;
        k = hash_key(t.data, n, k);
        k = hash_key(t.data + t.n_bytes - n, n, k);
    }
    return k;
}

int64_t now_ns() { return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count(); }

}  // namespace

struct PrefixCache::Impl {
    Model model;
    PrefixCacheOptions opt;
    Key model_id;
    mutable std::mutex mu;
    std::map<std::pair<KvType, KvType>, Plan> plans;
    std::unordered_map<Key, std::shared_ptr<Block>, KeyHash> blocks;
    size_t mem_used = 0;
    uint64_t clock = 0;
    PrefixCacheStats st;
    std::set<std::string> reported;
    // Disk tier: the block files under dir (every identity's), by path: bytes.
    bool disk = false;
    std::map<std::string, uint64_t> files;
    uint64_t disk_used = 0;
    uint64_t tmp_counter = 0;

    Impl(const Model& m, PrefixCacheOptions o) : model(m), opt(std::move(o)) {}

    void report(const std::string& what, const std::string& msg) {
        if (!reported.insert(what).second) return;
        if (opt.log) opt.log(msg);
        else fmt::print(stderr, "kiln: prefix cache: {}\n", msg);
    }

    const Plan& plan_for(const backend::KvLayout& L) {
        const auto type_key = std::make_pair(L.type_k, L.type_v);
        if (auto it = plans.find(type_key); it != plans.end()) return it->second;
        const model::Architecture& arch = *model.impl()->arch;
        const model::HParams& hp = arch.hparams();
        Plan p;
        std::string desc = fmt::format("kiln-prefix-v{} {} {} {} B{} ", kFileVersion, hp.arch, kv_type_name(L.type_k),
                                       kv_type_name(L.type_v), opt.block_tokens);
        desc += fmt::format("rot{} base{} scaling{} factor{} orig{} yarn{},{},{},{},{} ", hp.n_rot, hp.rope_freq_base,
                            static_cast<int>(hp.rope_scaling), hp.rope_scale_factor, hp.rope_n_ctx_orig, hp.rope_yarn_log_mul,
                            hp.rope_attn_factor, hp.yarn_ext_factor, hp.yarn_beta_fast, hp.yarn_beta_slow);
        for (size_t il = 0; il < L.layers.size(); ++il) {
            const KvLayer& s = L.layers[il];
            LayerPlan lp;
            lp.window = s.window;
            lp.rows = lp.window > 0 ? std::min(lp.window, opt.block_tokens) : opt.block_tokens;
            lp.k_row = L.k_row(il).row_bytes();
            lp.v_row = s.v_in_k ? 0 : L.v_row(il).row_bytes();
            lp.off = lp.window == 0 ? p.bytes_bare : p.bytes_full - p.bytes_bare;
            p.bytes_full += lp.bytes();
            if (lp.window == 0) p.bytes_bare += lp.bytes();
            else p.min_window = p.min_window ? std::min(p.min_window, lp.window) : lp.window;
            desc += fmt::format("[{} {} {} {} w{}]", s.n_head_kv, s.head_dim_k, s.head_dim_v, s.v_in_k, lp.window);
            p.layers.push_back(lp);
        }
        p.id = hash_key(desc.data(), desc.size(), model_id);
        return plans.emplace(type_key, std::move(p)).first->second;
    }

    // Whether pages of `page_tokens` positions of kv are this plan's blocks: pages of block_tokens
    // positions holding exactly the full layers (a layer with a window is a ring). Then blocks are
    // shared, not copied: kv's host pages (page_tokens()) and, on Vulkan, its device pages
    // (device_page_tokens(): a block keeps a reference to its device page too).
    bool shares(const Plan& p, const runtime::KvCache& kv, int64_t page_tokens) const {
        const backend::KvLayout& L = kv.layout();
        if (page_tokens != opt.block_tokens || L.layers.size() != p.layers.size()) return false;
        for (size_t il = 0; il < L.layers.size(); ++il)
            if ((p.layers[il].window == 0) == L.is_ring(il)) return false;
        return true;
    }

    // Keys of the first n_blocks blocks of tokens.
    std::vector<Key> chain(const Plan& p, std::span<const int32_t> tokens, int64_t n_blocks) const {
        std::vector<Key> keys;
        Key k = p.id;
        for (int64_t j = 0; j < n_blocks; ++j) {
            k = hash_key(tokens.data() + j * opt.block_tokens, static_cast<size_t>(opt.block_tokens) * 4, k);
            keys.push_back(k);
        }
        return keys;
    }

    fs::path file_of(const Plan& p, const Key& k) const { return fs::path(opt.dir) / p.id.hex() / (k.hex() + kExt); }

    // ---- memory tier ----

    // Inserts b (replacing a block of the same key without windows), then evicts down to the
    // budget; evicted blocks without a file are written (under mu, like every disk access).
    void insert(std::shared_ptr<Block> b) {
        b->last_used = ++clock;
        auto it = blocks.find(b->key);
        if (it != blocks.end()) {
            if (it->second->windows || !b->windows) {
                it->second->last_used = b->last_used;
                return;
            }
            mem_used -= it->second->cost();
            b->on_disk = false;  // the file has no windows: rewrite it
            it->second = b;
        } else {
            blocks.emplace(b->key, b);
        }
        mem_used += b->cost();
        while (mem_used > opt.mem_bytes && !blocks.empty()) {
            auto victim = blocks.begin();
            for (auto i = blocks.begin(); i != blocks.end(); ++i)
                if (i->second->last_used < victim->second->last_used) victim = i;
            std::shared_ptr<Block> v = victim->second;
            blocks.erase(victim);
            mem_used -= v->cost();
            ++st.evictions;
            if (disk && !v->on_disk) write_file(*v->plan, *v);
        }
    }

    // ---- disk tier ----

    void open_dir() {
        if (opt.dir.empty()) return;
        std::error_code ec;
        fs::create_directories(opt.dir, ec);
        if (ec || !fs::is_directory(opt.dir)) {
            report("dir", fmt::format("cannot use the cache directory {} ({}): blocks are kept in memory only", opt.dir,
                                      ec ? ec.message() : "not a directory"));
            return;
        }
        if (::access(opt.dir.c_str(), W_OK | X_OK) != 0) {
            report("dir", fmt::format("the cache directory {} is not writable: blocks are kept in memory only", opt.dir));
            return;
        }
        disk = true;
        scan();
    }

    // Lists every block file under dir (temporary files of writers gone for an hour are deleted).
    void scan() {
        files.clear();
        disk_used = 0;
        std::error_code ec;
        for (fs::recursive_directory_iterator it(opt.dir, fs::directory_options::skip_permission_denied, ec), end;
             !ec && it != end; it.increment(ec)) {
            std::error_code e2;
            if (it.depth() >= 1 && it->is_directory(e2)) {  // dir/<identity>/<block> only
                it.disable_recursion_pending();
                continue;
            }
            if (!it->is_regular_file(e2)) continue;
            const std::string name = it->path().filename().string();
            if (name.size() > 4 && name.ends_with(".tmp") && name[0] == '.') {
                const auto age = fs::file_time_type::clock::now() - it->last_write_time(e2);
                if (!e2 && age > std::chrono::hours(1)) fs::remove(it->path(), e2);
                continue;
            }
            if (!name.ends_with(kExt)) continue;
            const uint64_t size = it->file_size(e2);
            if (e2) continue;
            files[it->path().string()] = size;
            disk_used += size;
        }
    }

    // Deletes the oldest block files (any process's) until the directory is within disk_bytes.
    void enforce_disk_budget() {
        if (disk_used <= opt.disk_bytes) return;
        scan();
        std::vector<std::pair<fs::file_time_type, std::string>> by_age;
        for (const auto& [path, size] : files) {
            std::error_code ec;
            const auto t = fs::last_write_time(path, ec);
            if (!ec) by_age.emplace_back(t, path);
        }
        std::sort(by_age.begin(), by_age.end());
        for (const auto& [t, path] : by_age) {
            if (disk_used <= opt.disk_bytes) break;
            std::error_code ec;
            fs::remove(path, ec);
            disk_used -= files[path];
            files.erase(path);
        }
    }

    // A block's rows as one payload, layer by layer (the file format).
    static std::vector<uint8_t> payload_of(Block& b) {
        std::vector<uint8_t> data;
        data.reserve(b.payload());
        for (const LayerPlan& lp : b.plan->layers) {
            if (lp.window > 0 && !b.windows) continue;
            data.insert(data.end(), b.rows(lp), b.rows(lp) + lp.bytes());
        }
        return data;
    }
    // The rows of a block of plan p from its payload (payload_of's layout).
    static void set_payload(const Plan& p, Block& b, const uint8_t* data) {
        b.plan = &p;
        b.bare = backend::make_kv_page(p.bytes_bare);
        b.win.assign(b.windows ? p.bytes_full - p.bytes_bare : 0, 0);
        for (const LayerPlan& lp : p.layers) {
            if (lp.window > 0 && !b.windows) continue;
            std::memcpy(b.rows(lp), data, lp.bytes());
            data += lp.bytes();
        }
    }

    void write_file(const Plan& p, Block& b) {
        const fs::path path = file_of(p, b.key);
        std::error_code ec;
        fs::create_directories(path.parent_path(), ec);
        const fs::path tmp =
            path.parent_path() / fmt::format(".{}.{}.{}.{}.tmp", b.key.hex(), ::getpid(), ++tmp_counter, now_ns() & 0xffffff);
        FileHeader h{};
        std::memcpy(h.magic, kMagic, 8);
        h.version = kFileVersion;
        h.block_tokens = static_cast<uint32_t>(opt.block_tokens);
        h.id_a = p.id.a, h.id_b = p.id.b;
        h.key_a = b.key.a, h.key_b = b.key.b;
        h.parent_a = b.parent.a, h.parent_b = b.parent.b;
        h.windows = b.windows ? 1 : 0;
        const std::vector<uint8_t> data = payload_of(b);
        h.payload_bytes = data.size();
        const uint64_t sum = file_checksum(h, b.tokens.data(), b.tokens.size(), data.data(), data.size());
        bool ok = false;
        if (FILE* f = std::fopen(tmp.c_str(), "wb")) {
            ok = std::fwrite(&h, sizeof h, 1, f) == 1 &&
                 std::fwrite(b.tokens.data(), 4, b.tokens.size(), f) == b.tokens.size() &&
                 (data.empty() || std::fwrite(data.data(), 1, data.size(), f) == data.size()) &&
                 std::fwrite(&sum, sizeof sum, 1, f) == 1;
            ok = (std::fclose(f) == 0) && ok;
        }
        if (ok) ok = std::rename(tmp.c_str(), path.c_str()) == 0;
        if (!ok) {
            const int err = errno;
            fs::remove(tmp, ec);
            report("write", fmt::format("cannot write {} ({}); blocks that do not fit in memory are dropped", path.string(),
                                        std::strerror(err)));
            return;
        }
        b.on_disk = true;
        const uint64_t size = sizeof h + b.tokens.size() * 4 + data.size() + sizeof sum;
        ++st.disk_writes;
        st.disk_written_bytes += size;
        auto [it, added] = files.emplace(path.string(), size);
        if (added) disk_used += size;
        enforce_disk_budget();
    }

    // The block of key k from its file, checked against everything the caller expects; nullptr
    // when there is none or it is unusable (reported once per file).
    std::shared_ptr<Block> read_file(const Plan& p, const Key& k, const Key& parent, std::span<const int32_t> tokens) {
        const fs::path path = file_of(p, k);
        FILE* f = std::fopen(path.c_str(), "rb");
        if (!f) return nullptr;
        std::vector<uint8_t> buf;
        {
            struct stat sb {};
            if (::fstat(::fileno(f), &sb) == 0 && sb.st_size > 0) buf.resize(static_cast<size_t>(sb.st_size));
            const size_t got = buf.empty() ? 0 : std::fread(buf.data(), 1, buf.size(), f);
            std::fclose(f);
            buf.resize(got);
        }
        st.disk_read_bytes += buf.size();
        auto reject = [&](const std::string& why) -> std::shared_ptr<Block> {
            ++st.disk_rejected;
            report(path.string(), fmt::format("ignoring {}: {} (its tokens are computed instead)", path.string(), why));
            return nullptr;
        };
        FileHeader h{};
        if (buf.size() < sizeof h) return reject(fmt::format("truncated ({} bytes)", buf.size()));
        std::memcpy(&h, buf.data(), sizeof h);
        if (std::memcmp(h.magic, kMagic, 8) != 0) return reject("not a kiln KV block file");
        if (h.version != kFileVersion) return reject(fmt::format("format version {}, this kiln reads {}", h.version, kFileVersion));
        if (h.id_a != p.id.a || h.id_b != p.id.b || h.block_tokens != static_cast<uint32_t>(opt.block_tokens))
            return reject("written for another model, KV type or block size");
        if (h.key_a != k.a || h.key_b != k.b || h.parent_a != parent.a || h.parent_b != parent.b)
            return reject("its key does not match its name");
        const size_t want_payload = h.windows ? p.bytes_full : p.bytes_bare;
        if (h.payload_bytes != want_payload) return reject(fmt::format("{} bytes of rows, {} expected", h.payload_bytes, want_payload));
        const size_t n_tok = static_cast<size_t>(opt.block_tokens);
        const size_t want = sizeof h + n_tok * 4 + want_payload + 8;
        if (buf.size() != want) return reject(fmt::format("{} bytes, {} expected (truncated or padded)", buf.size(), want));
        auto b = std::make_shared<Block>();
        b->key = k;
        b->parent = parent;
        b->windows = h.windows != 0;
        b->tokens.resize(n_tok);
        std::memcpy(b->tokens.data(), buf.data() + sizeof h, n_tok * 4);
        const uint8_t* payload = buf.data() + sizeof h + n_tok * 4;
        uint64_t sum;
        std::memcpy(&sum, payload + want_payload, 8);
        if (sum != file_checksum(h, b->tokens.data(), n_tok, payload, want_payload)) return reject("checksum mismatch (corrupt)");
        if (!std::equal(b->tokens.begin(), b->tokens.end(), tokens.begin())) return reject("its tokens differ from its key's");
        set_payload(p, *b, payload);
        b->on_disk = true;
        // Recently used: the last to go when the directory is over its budget.
        std::error_code ec;
        fs::last_write_time(path, fs::file_time_type::clock::now(), ec);
        return b;
    }
};

PrefixCache::PrefixCache(const Model& model, PrefixCacheOptions options) {
    if (options.block_tokens < 1) throw Error(fmt::format("prefix cache: block_tokens must be at least 1, got {}", options.block_tokens));
    impl_ = std::make_unique<Impl>(model, std::move(options));
    impl_->model_id = model_identity(*model.impl()->file);
    std::lock_guard lk(impl_->mu);
    impl_->open_dir();
}

PrefixCache::~PrefixCache() = default;

const PrefixCacheOptions& PrefixCache::options() const { return impl_->opt; }
bool PrefixCache::disk_enabled() const {
    std::lock_guard lk(impl_->mu);
    return impl_->disk;
}

PrefixCacheStats PrefixCache::stats() const {
    std::lock_guard lk(impl_->mu);
    PrefixCacheStats s = impl_->st;
    s.mem_blocks = impl_->blocks.size();
    s.mem_bytes = impl_->mem_used;
    s.disk_blocks = impl_->files.size();
    s.disk_bytes = impl_->disk_used;
    return s;
}

runtime::KvCache& PrefixCache::checked_kv(Context& ctx, std::span<const int32_t> tokens) const {
    if (ctx.model().impl() != impl_->model.impl()) throw Error("prefix cache: the context runs another model than the cache");
    runtime::KvCache& kv = ctx.kv_cache();
    if (kv.n_past() > static_cast<int64_t>(tokens.size()))
        throw Error(fmt::format("prefix cache: the context holds {} tokens, more than the {} given", kv.n_past(), tokens.size()));
    return kv;
}

int64_t PrefixCache::restore(Context& ctx, std::span<const int32_t> tokens, int64_t max_tokens) {
    Impl& c = *impl_;
    runtime::KvCache& kv = checked_kv(ctx, tokens);
    const int64_t have = kv.n_past();
    const int64_t B = c.opt.block_tokens;
    const int64_t limit = std::min<int64_t>({max_tokens, static_cast<int64_t>(tokens.size()), kv.n_ctx()});
    const int64_t n_blocks = std::max<int64_t>(0, limit) / B;
    if (n_blocks * B <= have) return have;

    std::unique_lock lk(c.mu);
    const Plan& p = c.plan_for(kv.layout());
    const std::vector<Key> keys = c.chain(p, tokens, n_blocks);
    std::vector<std::shared_ptr<Block>> got(static_cast<size_t>(n_blocks));
    std::vector<uint8_t> tried(static_cast<size_t>(n_blocks), 0), from_disk(static_cast<size_t>(n_blocks), 0);
    auto fetch = [&](int64_t j) -> Block* {
        const auto u = static_cast<size_t>(j);
        if (tried[u]) return got[u].get();
        tried[u] = 1;
        const std::span<const int32_t> toks = tokens.subspan(static_cast<size_t>(j * B), static_cast<size_t>(B));
        if (auto it = c.blocks.find(keys[u]); it != c.blocks.end()) {
            // A 128-bit key collision would need the same chain: the tokens are checked anyway.
            if (std::equal(toks.begin(), toks.end(), it->second->tokens.begin())) got[u] = it->second;
        } else if (c.disk) {
            got[u] = c.read_file(p, keys[u], j == 0 ? p.id : keys[u - 1], toks);
            from_disk[u] = got[u] != nullptr;
        }
        return got[u].get();
    };
    const int64_t j0 = have / B;
    int64_t k = j0 - 1;
    while (k + 1 < n_blocks && fetch(k + 1)) ++k;
    // The sliding-window layers continue from L only with the rows of [L - window, L).
    auto windows_ok = [&](int64_t L) {
        for (const LayerPlan& lp : p.layers) {
            if (lp.window == 0) continue;
            for (int64_t j = std::max<int64_t>(0, L - lp.window) / B; j * B < L; ++j) {
                const Block* b = fetch(j);
                if (!b || !b->windows) return false;
            }
        }
        return true;
    };
    while (k >= j0 && !windows_ok((k + 1) * B)) --k;
    if (k < j0 || (k + 1) * B <= have) return have;
    const int64_t L = (k + 1) * B;
    // The blocks restored count as hits of their tier; those read from disk join the memory tier.
    for (int64_t j = 0; j <= k; ++j) {
        const auto u = static_cast<size_t>(j);
        if (!got[u]) continue;
        if (from_disk[u]) c.insert(got[u]);
        got[u]->last_used = ++c.clock;
        if (j < j0) continue;
        (from_disk[u] ? c.st.disk_hits : c.st.mem_hits) += 1;
        (from_disk[u] ? c.st.disk_hit_tokens : c.st.mem_hit_tokens) += static_cast<uint64_t>(B);
    }
    lk.unlock();

    // The full layers block by block from j0 (their pages taken by reference when the context's
    // pages are blocks, else the rows copied), the sliding layers their windows' rows (copied).
    {
        std::lock_guard blk(ctx.backend_mutex());
        const bool share = c.shares(p, kv, kv.buffers().page_tokens());
        const bool share_dev = c.shares(p, kv, kv.buffers().device_page_tokens());
        // Blocks before j0 were fetched only for the windows they hold.
        for (int64_t j = 0; j <= k; ++j) {
            if (!got[static_cast<size_t>(j)]) continue;
            Block& bk = *got[static_cast<size_t>(j)];
            const int64_t start = j * B, end = start + B;
            if (share && j >= j0) kv.buffers().set_page(j, bk.bare);
            // A device page of the same pool: by reference (else its rows are copied below).
            const bool by_ref = share || (share_dev && j >= j0 && bk.dev && kv.buffers().set_device_page(j, bk.dev));
            for (size_t il = 0; il < p.layers.size(); ++il) {
                const LayerPlan& lp = p.layers[il];
                if (lp.window > 0 && !bk.windows) continue;
                const size_t kb = static_cast<size_t>(lp.rows) * lp.k_row;
                const uint8_t* rows = bk.rows(lp);
                if (lp.window == 0) {
                    if (j >= j0 && !by_ref) {
                        kv.write_positions(il, false, start, B, rows);
                        if (lp.v_row) kv.write_positions(il, true, start, B, rows + kb);
                    }
                } else {
                    // Stored: positions [end - rows, end); needed: [L - window, L).
                    const int64_t first = std::max(std::max<int64_t>(0, L - lp.window), end - lp.rows);
                    if (first < end) {
                        const size_t skip = static_cast<size_t>(first - (end - lp.rows));
                        kv.write_positions(il, false, first, end - first, rows + skip * lp.k_row);
                        if (lp.v_row) kv.write_positions(il, true, first, end - first, rows + kb + skip * lp.v_row);
                    }
                }
            }
        }
        kv.restored(L, p.min_window > 0 ? std::max<int64_t>(0, L - p.min_window) : 0);
    }
    ctx.forget_logits();
    return L;
}

size_t PrefixCache::save(Context& ctx, std::span<const int32_t> tokens) {
    Impl& c = *impl_;
    runtime::KvCache& kv = checked_kv(ctx, tokens);
    const int64_t n = kv.n_past();
    const int64_t B = c.opt.block_tokens;
    const int64_t n_blocks = n / B;
    if (n_blocks == 0) return 0;
    std::unique_lock lk(c.mu);
    const Plan& p = c.plan_for(kv.layout());
    const std::vector<Key> keys = c.chain(p, tokens, n_blocks);
    // Whether ctx still holds a block's sliding-window rows.
    auto windows_held = [&](int64_t j) {
        for (size_t il = 0; il < p.layers.size(); ++il) {
            const LayerPlan& lp = p.layers[il];
            if (lp.window > 0 && (j + 1) * B - lp.rows < kv.held_from(il, true)) return false;
        }
        return true;
    };
    std::vector<int64_t> todo;
    for (int64_t j = 0; j < n_blocks; ++j) {
        auto it = c.blocks.find(keys[static_cast<size_t>(j)]);
        if (it != c.blocks.end() && (it->second->windows || !windows_held(j))) {
            it->second->last_used = ++c.clock;
            continue;
        }
        todo.push_back(j);
    }
    lk.unlock();
    if (todo.empty()) return 0;

    std::vector<std::shared_ptr<Block>> made;
    {
        std::lock_guard blk(ctx.backend_mutex());
        // The context's pages are blocks: the cache takes them by reference (the context copies a
        // page before it writes into it again, e.g. after a truncate).
        const bool share = c.shares(p, kv, kv.buffers().page_tokens());
        const bool share_dev = c.shares(p, kv, kv.buffers().device_page_tokens());
        for (int64_t j : todo) {
            auto b = std::make_shared<Block>();
            b->key = keys[static_cast<size_t>(j)];
            b->plan = &p;
            b->parent = j == 0 ? p.id : keys[static_cast<size_t>(j - 1)];
            b->tokens.assign(tokens.begin() + j * B, tokens.begin() + (j + 1) * B);
            b->windows = windows_held(j);
            b->bare = share ? kv.buffers().page(j) : backend::make_kv_page(p.bytes_bare);
            if (!b->bare) throw Error(fmt::format("prefix cache: the context holds no page {}", j));
            // The host bytes are read as well (the disk tier, and contexts of other pools or the CPU).
            if (share_dev) b->dev = kv.buffers().device_page(j);
            b->win.assign(b->windows ? p.bytes_full - p.bytes_bare : 0, 0);
            const int64_t end = (j + 1) * B;
            for (size_t il = 0; il < p.layers.size(); ++il) {
                const LayerPlan& lp = p.layers[il];
                if ((lp.window > 0 && !b->windows) || (lp.window == 0 && share)) continue;
                const size_t kb = static_cast<size_t>(lp.rows) * lp.k_row;
                kv.read_positions(il, false, end - lp.rows, lp.rows, b->rows(lp));
                if (lp.v_row) kv.read_positions(il, true, end - lp.rows, lp.rows, b->rows(lp) + kb);
            }
            made.push_back(std::move(b));
        }
    }
    lk.lock();
    // A file of the same block may exist (another server's, or a bad one): written again when
    // evicted or flushed, atomically.
    for (auto& b : made) c.insert(std::move(b));
    return made.size();
}

size_t PrefixCache::flush() {
    Impl& c = *impl_;
    std::lock_guard lk(c.mu);
    if (!c.disk) return 0;
    size_t n = 0;
    std::vector<std::shared_ptr<Block>> todo;
    for (auto& [k, b] : c.blocks)
        if (!b->on_disk) todo.push_back(b);
    // Oldest first, so that a disk budget keeps the most recent.
    std::sort(todo.begin(), todo.end(), [](const auto& a, const auto& b) { return a->last_used < b->last_used; });
    for (auto& b : todo) {
        c.write_file(*b->plan, *b);
        n += b->on_disk ? 1 : 0;
    }
    return n;
}

}  // namespace kiln
