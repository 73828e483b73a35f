#include "chat/jinja_interp.h"

#include <fmt/format.h>

namespace kiln::jinja {

namespace {
constexpr int kMaxCallDepth = 64;   // nested macro calls
constexpr int kMaxEvalDepth = 1000;  // statements and expressions being evaluated, all macros included

struct DepthGuard {
    int& d;
    DepthGuard(int& depth, int limit, const char* what) : d(depth) {
        if (++d > limit) {
            --d;
            fail("RecursionError", what);
        }
    }
    ~DepthGuard() { --d; }
    DepthGuard(const DepthGuard&) = delete;
    DepthGuard& operator=(const DepthGuard&) = delete;
};
}  // namespace

// ---- Scope ------------------------------------------------------------------------------------------

const Value* Scope::lookup(std::string_view name) const {
    for (const Scope* s = this; s; s = s->parent.get())
        for (const auto& kv : s->vars)
            if (kv.first == name) return &kv.second;
    return nullptr;
}

void Scope::set(std::string_view name, Value v) {
    for (auto& kv : vars) {
        if (kv.first == name) {
            kv.second = std::move(v);
            return;
        }
    }
    vars.emplace_back(std::string(name), std::move(v));
}

// ---- Interpreter ------------------------------------------------------------------------------------

Interpreter::Interpreter(std::string_view source, const Options& opts) : source_(source), opts_(opts) {}

Interpreter::~Interpreter() {
    // Macros hold the scope they were defined in, and that scope holds the macro; namespaces can
    // hold themselves. Clearing these breaks every reference cycle a template can build.
    for (auto& s : captured_) s->vars.clear();
    for (auto& o : objects_) o->attrs.items.clear();
}

void Interpreter::track(std::shared_ptr<Object> o) { objects_.push_back(std::move(o)); }

void Interpreter::step() {
    if (++steps_ > opts_.max_steps)
        fail("RuntimeError", fmt::format("the template ran too long (more than {} steps)", opts_.max_steps));
}

void Interpreter::raise_at(size_t offset, const std::string& kind, const std::string& message) {
    throw_at(source_, offset, kind, message);
}

std::string Interpreter::render(const Body& body, const ScopePtr& root) {
    std::string out;
    out_ = &out;
    exec(body, root);
    out_ = nullptr;
    return out;
}

std::string Interpreter::render_body(const Body& body, const ScopePtr& scope) {
    std::string buf;
    std::string* saved = out_;
    out_ = &buf;
    try {
        exec(body, scope);
    } catch (...) {
        out_ = saved;
        throw;
    }
    out_ = saved;
    return buf;
}

Interpreter::Flow Interpreter::exec(const Body& body, const ScopePtr& scope) {
    for (const auto& s : body) {
        const Flow f = exec_stmt(*s, scope);
        if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
}

namespace {
void bind_targets(Scope& scope, const std::vector<std::string>& targets, bool unpack, const Value& v) {
    if (!unpack) {
        scope.set(targets[0], v);
        return;
    }
    if (!v.is_list() && !v.is_string() && !v.is_dict())
        fail("TypeError", "cannot unpack non-iterable " + type_name(v) + " object");
    const std::vector<Value> items = iterate(v);
    if (items.size() < targets.size())
        fail("ValueError", fmt::format("not enough values to unpack (expected {}, got {})", targets.size(), items.size()));
    if (items.size() > targets.size())
        fail("ValueError", fmt::format("too many values to unpack (expected {})", targets.size()));
    for (size_t i = 0; i < targets.size(); ++i) scope.set(targets[i], items[i]);
}
}  // namespace

void Interpreter::assign(const Stmt& s, const ScopePtr& scope, Value v) {
    if (s.attr_target) {
        const Value* ns = scope->lookup(s.targets[0]);
        if (!ns || !ns->is_object() || !ns->object().assignable)
            fail("TemplateRuntimeError", "cannot assign attribute on non-namespace object");
        ns->object().attrs.set(Value(s.targets[1]), std::move(v));
        return;
    }
    bind_targets(*scope, s.targets, s.unpack, v);
}

Interpreter::Flow Interpreter::exec_stmt(const Stmt& s, const ScopePtr& scope) {
    try {
        DepthGuard guard(eval_depth_, kMaxEvalDepth, "template evaluation nested too deeply");
        step();
        if (out_->size() > kMaxStringBytes) fail("MemoryError", "the rendered text is too large");
        switch (s.kind) {
            case Stmt::K::Text: *out_ += s.text; return Flow::Normal;
            case Stmt::K::Output: {
                const Value v = eval(*s.expr, scope);
                *out_ += to_str(v);
                return Flow::Normal;
            }
            case Stmt::K::If:
                for (const auto& [cond, body] : s.branches)
                    if (!cond || truthy(eval(*cond, scope))) return exec(body, scope);
                return Flow::Normal;
            case Stmt::K::For: return exec_for(s, scope);
            case Stmt::K::Set: assign(s, scope, eval(*s.expr, scope)); return Flow::Normal;
            case Stmt::K::SetBlock: {
                Value v = render_body(s.body, scope);
                if (s.filter) v = eval_filters(*s.filter, scope, std::move(v));
                assign(s, scope, std::move(v));
                return Flow::Normal;
            }
            case Stmt::K::Macro: scope->set(s.name, make_macro(s, scope, false)); return Flow::Normal;
            case Stmt::K::CallBlock: {
                const Value caller = make_macro(s, scope, true);
                *out_ += to_str(eval_call(*s.expr, scope, &caller));
                return Flow::Normal;
            }
            case Stmt::K::FilterBlock: {
                Value v = render_body(s.body, scope);
                *out_ += to_str(eval_filters(*s.filter, scope, std::move(v)));
                return Flow::Normal;
            }
            case Stmt::K::With: {
                auto inner = std::make_shared<Scope>(scope);
                for (const auto& [name, expr] : s.params) inner->set(name, eval(*expr, scope));
                return exec(s.body, inner);
            }
            case Stmt::K::Break: return Flow::Break;
            case Stmt::K::Continue: return Flow::Continue;
        }
    } catch (const Failure& f) {
        raise_at(s.offset, f.kind, f.message);
    }
    return Flow::Normal;
}

Interpreter::Flow Interpreter::exec_for(const Stmt& s, const ScopePtr& scope) {
    const Value iterable = eval(*s.expr, scope);
    std::vector<Value> items;
    if (iterable.is_object()) fail("TypeError", "'" + type_name(iterable) + "' object is not iterable");
    items = iterate(iterable);
    if (s.filter) {
        std::vector<Value> kept;
        for (auto& item : items) {
            step();
            auto tmp = std::make_shared<Scope>(scope);
            bind_targets(*tmp, s.targets, s.unpack, item);
            if (truthy(eval(*s.filter, tmp))) kept.push_back(std::move(item));
        }
        items = std::move(kept);
    }
    const size_t n = items.size();
    auto last_changed = std::make_shared<std::optional<Value>>();
    for (size_t i = 0; i < n; ++i) {
        step();
        auto it = std::make_shared<Scope>(scope);
        bind_targets(*it, s.targets, s.unpack, items[i]);
        if (!s.uses_loop) {
            if (exec(s.body, it) == Flow::Break) break;
            continue;
        }
        auto loop = std::make_shared<Object>();
        loop->type_name = "LoopContext";
        const auto idx = static_cast<int64_t>(i), len = static_cast<int64_t>(n);
        auto& a = loop->attrs.items;
        a.reserve(14);
        a.emplace_back(Value("index"), Value(idx + 1));
        a.emplace_back(Value("index0"), Value(idx));
        a.emplace_back(Value("revindex"), Value(len - idx));
        a.emplace_back(Value("revindex0"), Value(len - idx - 1));
        a.emplace_back(Value("first"), Value(i == 0));
        a.emplace_back(Value("last"), Value(i + 1 == n));
        a.emplace_back(Value("length"), Value(len));
        a.emplace_back(Value("depth"), Value(1));
        a.emplace_back(Value("depth0"), Value(0));
        a.emplace_back(Value("previtem"), i > 0 ? items[i - 1] : Value::undefined("there is no previous item"));
        a.emplace_back(Value("nextitem"), i + 1 < n ? items[i + 1] : Value::undefined("there is no next item"));
        a.emplace_back(Value("cycle"), Value::callable("loop.cycle", [i](Interpreter&, Args& args) -> Value {
                           if (!args.keyword.empty()) fail("TypeError", "loop.cycle() takes no keyword arguments");
                           if (args.positional.empty()) fail("TypeError", "no items for cycling given");
                           return args.positional[i % args.positional.size()];
                       }));
        a.emplace_back(Value("changed"), Value::callable("loop.changed", [last_changed](Interpreter&, Args& args) -> Value {
                           const Value v = Value::list(args.positional, true);
                           if (*last_changed && equals(**last_changed, v)) return false;
                           *last_changed = v;
                           return true;
                       }));
        it->set("loop", Value::object(std::move(loop)));
        if (exec(s.body, it) == Flow::Break) break;
    }
    if (n == 0 && !s.else_body.empty()) return exec(s.else_body, std::make_shared<Scope>(scope));
    return Flow::Normal;
}

Value Interpreter::make_macro(const Stmt& s, const ScopePtr& scope, bool is_caller) {
    captured_.push_back(scope);
    const Stmt* def = &s;
    ScopePtr closure = scope;
    return Value::callable(is_caller ? "caller" : s.name, [def, closure, is_caller](Interpreter& in, Args& args) {
        return in.invoke_macro(*def, closure, args, is_caller);
    });
}

Value Interpreter::invoke_macro(const Stmt& s, const ScopePtr& closure, Args& args, bool is_caller) {
    DepthGuard guard(call_depth_, kMaxCallDepth, "maximum macro call depth exceeded");
    const std::string mname = is_caller ? "caller" : s.name;
    auto ms = std::make_shared<Scope>(closure);
    const size_t np = s.params.size();
    std::vector<bool> given(np, false);
    std::vector<Value> varargs;
    for (size_t i = 0; i < args.positional.size(); ++i) {
        if (i < np) {
            ms->set(s.params[i].first, std::move(args.positional[i]));
            given[i] = true;
        } else if (s.uses_varargs) {
            varargs.push_back(std::move(args.positional[i]));
        } else {
            fail("TypeError", fmt::format("macro '{}' takes not more than {} argument(s)", mname, np));
        }
    }
    Dict kwargs;
    std::optional<Value> caller;
    for (auto& [key, v] : args.keyword) {
        size_t idx = np;
        for (size_t i = 0; i < np; ++i)
            if (s.params[i].first == key) idx = i;
        if (idx < np) {
            if (given[idx]) fail("TypeError", fmt::format("macro '{}' got multiple values for argument '{}'", mname, key));
            ms->set(key, std::move(v));
            given[idx] = true;
        } else if (key == "caller" && s.uses_caller) {
            caller = std::move(v);
        } else if (s.uses_kwargs) {
            kwargs.set(Value(key), std::move(v));
        } else {
            fail("TypeError", fmt::format("macro '{}' takes no keyword argument '{}'", mname, key));
        }
    }
    for (size_t i = 0; i < np; ++i) {
        if (given[i]) continue;
        const auto& [name, dflt] = s.params[i];
        ms->set(name, dflt ? eval(*dflt, ms) : Value::undefined(fmt::format("parameter '{}' was not provided", name)));
    }
    if (s.uses_varargs) ms->set("varargs", Value::list(std::move(varargs), true));
    if (s.uses_kwargs) ms->set("kwargs", Value::dict(std::move(kwargs)));
    if (s.uses_caller) ms->set("caller", caller ? *caller : Value::undefined("No caller defined"));
    return render_body(s.body, ms);
}

// ---- expressions ------------------------------------------------------------------------------------

Value Interpreter::eval(const Expr& e, const ScopePtr& scope) {
    try {
        DepthGuard guard(eval_depth_, kMaxEvalDepth, "template evaluation nested too deeply");
        return eval_inner(e, scope);
    } catch (const Failure& f) {
        raise_at(e.offset, f.kind, f.message);
    }
}

void Interpreter::eval_args(const Expr& e, const ScopePtr& scope, Args& args) {
    args.positional.reserve(e.args.size());
    for (const auto& a : e.args) args.positional.push_back(eval(*a, scope));
    for (const auto& [k, v] : e.kwargs) args.keyword.emplace_back(k, eval(*v, scope));
}

Value Interpreter::eval_inner(const Expr& e, const ScopePtr& scope) {
    switch (e.kind) {
        case Expr::K::Const: return e.value;
        case Expr::K::Name:
            if (const Value* v = scope->lookup(e.name)) return *v;
            return Value::undefined(fmt::format("'{}' is undefined", e.name));
        case Expr::K::List:
        case Expr::K::Tuple: {
            std::vector<Value> items;
            items.reserve(e.args.size());
            for (const auto& a : e.args) items.push_back(eval(*a, scope));
            return Value::list(std::move(items), e.kind == Expr::K::Tuple);
        }
        case Expr::K::Dict: {
            Dict d;
            for (size_t i = 0; i + 1 < e.args.size(); i += 2) {
                Value k = eval(*e.args[i], scope);
                if (k.is_list() && !k.is_tuple()) fail("TypeError", "unhashable type: 'list'");
                if (k.is_dict()) fail("TypeError", "unhashable type: 'dict'");
                d.set(std::move(k), eval(*e.args[i + 1], scope));
            }
            return Value::dict(std::move(d));
        }
        case Expr::K::Attr: return get_attr(eval(*e.a, scope), e.name);
        case Expr::K::Item: {
            const Value obj = eval(*e.a, scope);
            return get_item(obj, eval(*e.b, scope));
        }
        case Expr::K::Slice: {
            const Value obj = eval(*e.a, scope);
            Value parts[3];
            for (size_t i = 0; i < 3; ++i) parts[i] = e.args[i] ? eval(*e.args[i], scope) : Value::none();
            if (obj.is_undefined()) obj.raise_undefined();
            if (!obj.is_list() && !obj.is_string())
                return Value::undefined(fmt::format("{} object has no element slice", type_name(obj)));
            return slice(obj, parts[0], parts[1], parts[2]);
        }
        case Expr::K::Call: return eval_call(e, scope, nullptr);
        case Expr::K::Filter: {
            const Value subject = eval(*e.a, scope);
            Args args;
            eval_args(e, scope, args);
            return apply_filter(e.name, subject, args);
        }
        case Expr::K::Test: {
            const Value subject = eval(*e.a, scope);
            Args args;
            eval_args(e, scope, args);
            return apply_test(e.name, subject, args);
        }
        case Expr::K::Neg: return negate(eval(*e.a, scope));
        case Expr::K::Pos: {
            const Value v = eval(*e.a, scope);
            if (v.is_undefined()) v.raise_undefined();
            if (v.is_bool()) return v.to_int();
            if (!v.is_number()) fail("TypeError", "bad operand type for unary +: '" + type_name(v) + "'");
            return v;
        }
        case Expr::K::Not: return !truthy(eval(*e.a, scope));
        case Expr::K::And: {
            Value l = eval(*e.a, scope);
            if (!truthy(l)) return l;
            return eval(*e.b, scope);
        }
        case Expr::K::Or: {
            Value l = eval(*e.a, scope);
            if (truthy(l)) return l;
            return eval(*e.b, scope);
        }
        case Expr::K::Binary: {
            const Value l = eval(*e.a, scope);
            const Value r = eval(*e.b, scope);
            return binary_op(e.name, l, r);
        }
        case Expr::K::Compare: {
            Value left = eval(*e.a, scope);
            for (size_t i = 0; i < e.ops.size(); ++i) {
                Value right = eval(*e.args[i], scope);
                const std::string& op = e.ops[i];
                bool r;
                if (op == "==") r = equals(left, right);
                else if (op == "!=") r = !equals(left, right);
                else if (op == "in") r = contains(right, left);
                else if (op == "notin") r = !contains(right, left);
                else r = compare(left, right, op);
                if (!r) return false;
                left = std::move(right);
            }
            return true;
        }
        case Expr::K::Concat: {
            std::string s;
            for (const auto& a : e.args) {
                s += to_str(eval(*a, scope));
                if (s.size() > kMaxStringBytes) fail("MemoryError", "string too large");
            }
            return s;
        }
        case Expr::K::Cond:
            if (truthy(eval(*e.b, scope))) return eval(*e.a, scope);
            if (e.c) return eval(*e.c, scope);
            return Value::undefined("the inline if-expression evaluated to false and no else section was defined.");
    }
    fail("Unsupported", "unknown expression");
}

Value Interpreter::eval_call(const Expr& e, const ScopePtr& scope, const Value* caller) {
    if (e.a->kind == Expr::K::Attr) {
        // obj.method(...): call str/list/dict methods without making a bound-method object.
        const Value obj = eval(*e.a->a, scope);
        Args args;
        eval_args(e, scope, args);
        if (caller) args.keyword.emplace_back("caller", *caller);
        try {
            if (obj.is_string() || obj.is_list() || obj.is_dict())
                if (auto r = call_method(*this, obj, e.a->name, args)) return *r;
            const Value callee = get_attr(obj, e.a->name);
            return call(callee, args);
        } catch (const Failure& f) {
            raise_at(e.a->offset, f.kind, f.message);
        }
    }
    const Value callee = eval(*e.a, scope);
    Args args;
    eval_args(e, scope, args);
    if (caller) args.keyword.emplace_back("caller", *caller);
    return call(callee, args);
}

Value Interpreter::eval_filters(const Expr& chain, const ScopePtr& scope, Value subject) {
    Value v = chain.a ? eval_filters(*chain.a, scope, std::move(subject)) : std::move(subject);
    Args args;
    eval_args(chain, scope, args);
    try {
        return apply_filter(chain.name, v, args);
    } catch (const Failure& f) {
        raise_at(chain.offset, f.kind, f.message);
    }
}

Value Interpreter::call(const Value& callee, Args& args) {
    if (callee.is_undefined()) callee.raise_undefined();
    if (!callee.is_callable()) fail("TypeError", "'" + type_name(callee) + "' object is not callable");
    return callee.callable().fn(*this, args);
}

namespace {
Value missing_member(const Value& obj, const Value& key) {
    const std::string what = obj.is_none() ? "None" : type_name(obj) + " object";
    if (key.is_string()) return Value::undefined(fmt::format("'{}' has no attribute '{}'", what, key.str()));
    return Value::undefined(fmt::format("{} has no element {}", what, repr(key)));
}
}  // namespace

Value Interpreter::get_attr(const Value& obj, const std::string& name) {
    if (obj.is_undefined()) obj.raise_undefined();
    if (obj.is_object()) {
        if (const Value* v = obj.object().attrs.find(std::string_view(name))) return *v;
        return Value::undefined(fmt::format("'{}' object has no attribute '{}'", obj.object().type_name, name));
    }
    if (auto m = find_method(obj, name)) return *m;
    if (obj.is_dict())
        if (const Value* v = obj.dict().find(std::string_view(name))) return *v;
    return missing_member(obj, Value(name));
}

Value Interpreter::get_item(const Value& obj, const Value& key) {
    if (obj.is_undefined()) obj.raise_undefined();
    bool found = false;
    Value v = index(obj, key, &found);
    if (found) return v;
    if (key.is_string()) {
        if (obj.is_object()) return get_attr(obj, key.str());
        if (auto m = find_method(obj, key.str())) return *m;
    }
    return missing_member(obj, key);
}

Value Interpreter::apply_filter(const std::string& name, const Value& subject, Args& args) {
    const FilterFn f = find_filter(name);
    if (!f) fail("TemplateRuntimeError", fmt::format("No filter named '{}' found.", name));
    return f(*this, subject, args);
}

bool Interpreter::apply_test(const std::string& name, const Value& subject, Args& args) {
    const TestFn t = find_test(name);
    if (!t) fail("TemplateAssertionError", fmt::format("No test named '{}'.", name));
    return t(*this, subject, args);
}

// ---- Template ---------------------------------------------------------------------------------------

TemplateError::TemplateError(std::string kind, std::string message, int line, int column)
    : kiln::Error(fmt::format("line {}, column {}: {}: {}", line, column, kind, message)),
      kind_(std::move(kind)),
      message_(std::move(message)),
      line_(line),
      column_(column) {}

struct Template::Impl {
    std::string source;
    Options opts;
    Body body;
};

Template::Template(std::string source, Options options) {
    auto impl = std::make_shared<Impl>();
    // jinja2 normalises every line ending to "\n" and drops one trailing newline.
    std::string src;
    src.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
        if (source[i] == '\r') {
            src += '\n';
            if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
        } else {
            src += source[i];
        }
    }
    if (!options.keep_trailing_newline && !src.empty() && src.back() == '\n') src.pop_back();
    impl->source = std::move(src);
    impl->opts = std::move(options);
    impl->body = parse(impl->source, tokenize(impl->source, impl->opts));
    impl_ = std::move(impl);
}

const std::string& Template::source() const { return impl_->source; }

std::string Template::render(const nlohmann::ordered_json& context) const {
    if (!context.is_object()) throw kiln::Error("template context must be a JSON object");
    auto globals = std::make_shared<Scope>();
    add_globals(*globals);
    auto root = std::make_shared<Scope>(globals);
    try {
        for (auto it = context.begin(); it != context.end(); ++it) root->set(it.key(), from_json(it.value()));
    } catch (const Failure& f) {
        throw kiln::Error("template context: " + f.message);
    }
    Interpreter in(impl_->source, impl_->opts);
    return in.render(impl_->body, root);
}

}  // namespace kiln::jinja
