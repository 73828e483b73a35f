// Internal: tokens, syntax tree, lexer and parser of the Jinja2 interpreter.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/jinja.h"
#include "chat/jinja_value.h"

namespace kiln::jinja {

// Line and column (1-based, columns in code points) of a byte offset.
std::pair<int, int> line_column(std::string_view src, size_t offset);
[[noreturn]] void throw_at(std::string_view src, size_t offset, std::string kind, std::string message);

// ---- lexer ------------------------------------------------------------------------------------------

enum class Tok : uint8_t { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
    Tok type = Tok::Eof;
    size_t offset = 0;
    std::string text;  // Text data, Name, decoded String, Op
    int64_t ival = 0;
    double fval = 0;
};

// `src` is already newline-normalised. Applies trim_blocks / lstrip_blocks / `-` `+` modifiers and
// drops comments; raw blocks come back as Text.
std::vector<Token> tokenize(std::string_view src, const Options& opts);

// ---- syntax tree ------------------------------------------------------------------------------------

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
    enum class K : uint8_t {
        Const, Name, List, Tuple, Dict, Attr, Item, Slice, Call, Filter, Test,
        Neg, Pos, Not, And, Or, Binary, Compare, Concat, Cond,
    };
    K kind;
    size_t offset;
    Value value;       // Const
    std::string name;  // Name, Attr, Filter/Test name, Binary operator
    // Attr/Item/Slice/Call/Filter/Test: a = target (a Filter with no target applies to a block's
    // output). Item: b = key. Unary: a. And/Or/Binary: a, b. Cond: a = value, b = condition, c = else.
    ExprPtr a, b, c;
    // List/Tuple/Concat items; Dict keys and values alternating; Call/Filter/Test positional
    // arguments; Slice start/stop/step (entries may be null); Compare operands after `a`.
    std::vector<ExprPtr> args;
    std::vector<std::pair<std::string, ExprPtr>> kwargs;  // keyword arguments
    std::vector<std::string> ops;                          // Compare operators: == != < <= > >= in notin
    int height = 1;                                        // of the subtree (bounded by the parser)

    Expr(K k, size_t off) : kind(k), offset(off) {}
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

struct Stmt {
    enum class K : uint8_t { Text, Output, If, For, Set, SetBlock, Macro, CallBlock, FilterBlock, With, Break, Continue };
    K kind;
    size_t offset;
    std::string text;                                // Text
    ExprPtr expr;                                    // Output; For iterable; Set value; CallBlock call
    std::vector<std::pair<ExprPtr, Body>> branches;  // If: (condition, body), the else branch has none
    std::vector<std::string> targets;                // For/Set names; with attr_target: {namespace, attribute}
    bool unpack = false;                             // targets form a tuple
    bool attr_target = false;
    ExprPtr filter;                                  // For: `if` condition; SetBlock/FilterBlock: filter chain
    Body body, else_body;
    std::string name;                                            // Macro name
    std::vector<std::pair<std::string, ExprPtr>> params;         // Macro/CallBlock parameters (default or null); With assignments
    bool uses_varargs = false, uses_kwargs = false, uses_caller = false;
    bool uses_loop = true;  // For: whether the body can see `loop` (else no loop object is made)

    Stmt(K k, size_t off) : kind(k), offset(off) {}
};

// Parses a token stream into the template body. Throws TemplateError.
Body parse(std::string_view src, std::vector<Token> tokens);

// The names of the filters the interpreter has (the parser rejects others, as jinja2 does).
bool has_filter(std::string_view name);
bool has_test(std::string_view name);

}  // namespace kiln::jinja
