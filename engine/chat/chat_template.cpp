#include "chat/chat_template.h"

#include "gguf/gguf.h"

namespace kiln {

ChatTemplate::ChatTemplate(std::string source, std::string bos_token, std::string eos_token, jinja::Options options)
    : template_(std::move(source), std::move(options)), bos_(std::move(bos_token)), eos_(std::move(eos_token)) {}

namespace {
std::string token_text(const gguf::File& f, std::string_view id_key) {
    const int64_t id = f.get_int_or(id_key, -1);
    const gguf::Value* tokens = f.find("tokenizer.ggml.tokens");
    if (id < 0 || !tokens || !tokens->is_array()) return "";
    const auto& arr = tokens->as_array();
    if (static_cast<uint64_t>(id) >= arr.size() || !arr[static_cast<size_t>(id)].is_string()) return "";
    return arr[static_cast<size_t>(id)].as_string();
}
}  // namespace

ChatTemplate ChatTemplate::from_gguf(const gguf::File& f, jinja::Options options) {
    const gguf::Value* t = f.find("tokenizer.chat_template");
    if (!t || !t->is_string()) throw Error(f.path() + ": no tokenizer.chat_template in the file");
    return ChatTemplate(t->as_string(), token_text(f, "tokenizer.ggml.bos_token_id"),
                        token_text(f, "tokenizer.ggml.eos_token_id"), std::move(options));
}

ChatTemplate ChatTemplate::with_gguf_tokens(std::string source, const gguf::File& f, jinja::Options options) {
    return ChatTemplate(std::move(source), token_text(f, "tokenizer.ggml.bos_token_id"), token_text(f, "tokenizer.ggml.eos_token_id"),
                        std::move(options));
}

std::string ChatTemplate::render(const nlohmann::ordered_json& context) const {
    if (!context.is_object()) throw Error("chat template context must be a JSON object");
    nlohmann::ordered_json vars = nlohmann::ordered_json::object();
    vars["bos_token"] = bos_;
    vars["eos_token"] = eos_;
    vars["tools"] = nullptr;
    vars["documents"] = nullptr;
    vars["add_generation_prompt"] = false;
    for (auto it = context.begin(); it != context.end(); ++it) vars[it.key()] = it.value();
    return template_.render(vars);
}

}  // namespace kiln
