// A Jinja2 interpreter for the subset chat templates use, behaving like Python's jinja2 in the
// environment Hugging Face transformers renders chat templates with: trim_blocks and lstrip_blocks
// on, the loopcontrols extension (break/continue), an immutable sandbox (no list.append, dict.update),
// `tojson` as json.dumps(ensure_ascii=False), and the globals raise_exception() and strftime_now().
//
// Anything outside the supported subset (an unknown tag, filter, test or method, include/extends,
// recursive loops) is a TemplateError naming the template line and column: never wrong output.
#pragma once

#include <cstdint>
#include <ctime>
#include <functional>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "kiln/error.h"

namespace kiln::jinja {

// A failure while parsing or rendering. what() is "line L, column C: KIND: MESSAGE".
class TemplateError : public kiln::Error {
public:
    TemplateError(std::string kind, std::string message, int line, int column);
    // "TemplateSyntaxError", "TemplateAssertionError", "UndefinedError", "TypeError", "SecurityError",
    // "TemplateError" (raise_exception), "Unsupported", ...
    const std::string& kind() const { return kind_; }
    const std::string& message() const { return message_; }  // without the position
    int line() const { return line_; }                        // 1-based
    int column() const { return column_; }                    // 1-based, in code points

private:
    std::string kind_, message_;
    int line_, column_;
};

struct Options {
    bool trim_blocks = true;             // drop the first newline after a block or comment tag
    bool lstrip_blocks = true;           // strip spaces and tabs before a block or comment tag on its own line
    bool keep_trailing_newline = false;  // jinja2 drops one trailing newline of the source by default
    // The clock of strftime_now(): local broken-down time. Empty: the current local time.
    std::function<std::tm()> now;
    // Statements plus loop iterations one render may run before it fails (a bound on runaway
    // nested loops in a hostile template; real chat templates need a few thousand).
    uint64_t max_steps = 10'000'000;
};

// A parsed template. Immutable once built: copies share the syntax tree, and render() may run
// on several threads at once.
class Template {
public:
    // Parses `source`; throws TemplateError on a syntax error.
    explicit Template(std::string source, Options options = {});

    // Renders with the keys of `context` (a JSON object) as template variables. Throws TemplateError
    // (kiln::Error for a context that is not an object or holds an integer beyond 64 bits).
    std::string render(const nlohmann::ordered_json& context) const;

    // The source as parsed: line endings normalised to "\n", one trailing newline dropped.
    const std::string& source() const;

private:
    struct Impl;
    std::shared_ptr<const Impl> impl_;
};

}  // namespace kiln::jinja
