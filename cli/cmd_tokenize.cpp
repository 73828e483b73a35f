// kiln tokenize: text to token ids with a GGUF file's tokenizer.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "cli/args.h"
#include "cli/text_input.h"
#include "cli/command.h"
#include "kiln/error.h"
#include "kiln/tokenizer.h"

namespace kiln::cli {

namespace {

// As in the shared test vectors: the two characters '\' 'n' stand for a newline.
std::string unescape_newlines(const std::string& s) {
    std::string out;
    out.reserve(s.size());
    for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\\' && i + 1 < s.size() && s[i + 1] == 'n') {
            out += '\n';
            ++i;
        } else {
            out += s[i];
        }
    }
    return out;
}

// A piece for display on one line: control bytes as escapes (\n, \t, \r, \xHH), and bytes that
// are not part of valid UTF-8 (a token may hold part of a character) as \xHH.
std::string printable(const std::string& piece) {
    std::string out;
    for (size_t i = 0; i < piece.size();) {
        const auto c = static_cast<unsigned char>(piece[i]);
        if (c < 0x20 || c == 0x7F) {
            out += c == '\n' ? "\\n" : c == '\t' ? "\\t" : c == '\r' ? "\\r" : fmt::format("\\x{:02x}", c);
            ++i;
            continue;
        }
        if (c < 0x80) {
            out += static_cast<char>(c);
            ++i;
            continue;
        }
        const size_t len = c >= 0xF0 && c < 0xF5 ? 4 : c >= 0xE0 && c < 0xF0 ? 3 : c >= 0xC2 && c < 0xE0 ? 2 : 0;
        bool ok = len > 0 && i + len <= piece.size();
        for (size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(piece[i + k]) & 0xC0) == 0x80;
        if (ok) {
            out.append(piece, i, len);
            i += len;
        } else {
            out += fmt::format("\\x{:02x}", c);
            ++i;
        }
    }
    return out;
}

int run_tokenize(const std::vector<std::string>& argv) {
    std::string model, prompt, file, lines_file;
    bool add_special = false, parse_special = false, ids_only = false;
    std::vector<std::string> positional;
    Args args("tokenize", "-m MODEL [options] TEXT | -p TEXT | -f FILE | --lines FILE");
    args.option({"-m", "--model"}, &model, "FILE", "GGUF file (a full model or a vocab-only file)");
    args.option({"-p", "--prompt"}, &prompt, "TEXT", "text to tokenize (instead of a positional TEXT)");
    args.option({"-f", "--file"}, &file, "FILE", "tokenize the whole content of FILE as one text");
    args.option({"--lines"}, &lines_file, "FILE",
                "tokenize each line of FILE on its own ('\\n' written as two characters is a newline); "
                "prints one line of space-separated ids per input line");
    args.flag({"--add-special"}, &add_special, "add BOS/EOS as the model's tokenizer asks");
    args.flag({"--parse-special"}, &parse_special, "recognise special-token text such as <|im_start|> in the input");
    args.flag({"--ids"}, &ids_only, "print only the list of ids, as [1, 2, 3]");
    args.positional(&positional);
    if (!args.parse(argv)) return 0;

    if (model.empty()) throw Error("kiln tokenize: -m MODEL is required (see kiln tokenize --help)");
    const int sources = !positional.empty() + !prompt.empty() + !file.empty() + !lines_file.empty();
    if (sources == 0) throw Error("kiln tokenize: give the text: TEXT, -p TEXT, -f FILE or --lines FILE");
    if (sources > 1) throw Error("kiln tokenize: give only one of TEXT, -p TEXT, -f FILE, --lines FILE");

    const Tokenizer tok = Tokenizer::from_file(model);

    if (!lines_file.empty()) {
        std::istringstream in(read_text_file(lines_file, "--lines"));
        std::string line, out;
        while (std::getline(in, line)) {
            if (!line.empty() && line.back() == '\r') line.pop_back();
            const std::vector<TokenId> ids = tok.encode(unescape_newlines(line), add_special, parse_special);
            for (size_t i = 0; i < ids.size(); ++i) {
                if (i) out += ' ';
                out += std::to_string(ids[i]);
            }
            out += '\n';
        }
        std::fwrite(out.data(), 1, out.size(), stdout);
        return 0;
    }

    std::string text;
    if (!positional.empty()) {
        for (size_t i = 0; i < positional.size(); ++i) text += (i ? " " : "") + positional[i];
    } else if (!prompt.empty()) {
        text = prompt;
    } else {
        text = read_text_file(file, "-f");
    }
    const std::vector<TokenId> ids = tok.encode(text, add_special, parse_special);
    std::string out;
    if (ids_only) {
        out = "[";
        for (size_t i = 0; i < ids.size(); ++i) out += (i ? ", " : "") + std::to_string(ids[i]);
        out += "]\n";
    } else {
        for (const TokenId id : ids) out += fmt::format("{}\t'{}'\n", id, printable(tok.token_to_piece(id, true)));
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
    return 0;
}

}  // namespace

KILN_COMMAND("tokenize", "print the token ids (and pieces) of a text", run_tokenize);

}  // namespace kiln::cli
