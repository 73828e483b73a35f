// Internal: the tree-walking interpreter and the built-in filters, tests, methods and globals.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "chat/jinja_ast.h"

namespace kiln::jinja {

// A variable scope. Loops, macros, call blocks and `with` open one; `if` does not (as in jinja2).
struct Scope {
    std::shared_ptr<Scope> parent;
    std::vector<std::pair<std::string, Value>> vars;

    explicit Scope(std::shared_ptr<Scope> p = nullptr) : parent(std::move(p)) {}
    const Value* lookup(std::string_view name) const;
    void set(std::string_view name, Value v);
};
using ScopePtr = std::shared_ptr<Scope>;

class Interpreter {
public:
    Interpreter(std::string_view source, const Options& opts);
    ~Interpreter();
    Interpreter(const Interpreter&) = delete;
    Interpreter& operator=(const Interpreter&) = delete;

    std::string render(const Body& body, const ScopePtr& root);

    const Options& options() const { return opts_; }

    // Used by the built-ins too (map, select, attribute lookups).
    Value call(const Value& callee, Args& args);
    Value get_attr(const Value& obj, const std::string& name);
    Value get_item(const Value& obj, const Value& key);
    Value apply_filter(const std::string& name, const Value& subject, Args& args);
    bool apply_test(const std::string& name, const Value& subject, Args& args);
    // Objects the template can make refer to themselves (namespaces); emptied after rendering.
    void track(std::shared_ptr<Object> o);

private:
    enum class Flow { Normal, Break, Continue };

    Flow exec(const Body& body, const ScopePtr& scope);
    Flow exec_stmt(const Stmt& s, const ScopePtr& scope);
    Flow exec_for(const Stmt& s, const ScopePtr& scope);
    void assign(const Stmt& s, const ScopePtr& scope, Value v);
    Value eval(const Expr& e, const ScopePtr& scope);
    Value eval_inner(const Expr& e, const ScopePtr& scope);
    Value eval_call(const Expr& e, const ScopePtr& scope, const Value* caller);
    Value eval_filters(const Expr& chain, const ScopePtr& scope, Value subject);
    void eval_args(const Expr& e, const ScopePtr& scope, Args& args);
    Value make_macro(const Stmt& s, const ScopePtr& scope, bool is_caller);
    Value invoke_macro(const Stmt& s, const ScopePtr& closure, Args& args, bool is_caller);
    std::string render_body(const Body& body, const ScopePtr& scope);
    void step();  // counts against Options::max_steps
    [[noreturn]] void raise_at(size_t offset, const std::string& kind, const std::string& message);

    std::string_view source_;
    const Options& opts_;
    std::string* out_ = nullptr;
    std::vector<ScopePtr> captured_;  // scopes closed over by macros; cleared at the end to break cycles
    std::vector<std::shared_ptr<Object>> objects_;
    int call_depth_ = 0;
    int eval_depth_ = 0;
    uint64_t steps_ = 0;
};

// ---- built-ins (jinja_builtins.cpp) -----------------------------------------------------------------

using FilterFn = Value (*)(Interpreter&, const Value& subject, Args& args);
using TestFn = bool (*)(Interpreter&, const Value& subject, Args& args);
FilterFn find_filter(std::string_view name);
TestFn find_test(std::string_view name);

// A bound method of a str / list / dict (`s.strip`), or nullopt when the type has no such method.
// Methods that would mutate (list.append, dict.update) give an undefined value that raises
// SecurityError when used, as in jinja2's immutable sandbox.
std::optional<Value> find_method(const Value& self, const std::string& name);
// Calls the method directly (no bound-method object); same lookup rules.
std::optional<Value> call_method(Interpreter& in, const Value& self, const std::string& name, Args& args);

// The globals: range, dict, namespace, joiner, raise_exception, strftime_now.
void add_globals(Scope& scope);

// Python-style argument binding: positional then keyword; one entry per parameter name.
std::vector<std::optional<Value>> bind_args(std::string_view fname, Args& args, std::initializer_list<std::string_view> names);

}  // namespace kiln::jinja
