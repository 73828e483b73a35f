// The Jinja2 parser: recursive descent over the token stream with jinja2's operator precedence
// (or < and < not < comparisons < + - < ~ < * / // % < ** < unary - + < filters/tests < postfix).
#include <algorithm>
#include <initializer_list>

#include <fmt/format.h>

#include "chat/jinja_ast.h"

namespace kiln::jinja {

namespace {

constexpr int kMaxDepth = 200;       // parser recursion in expressions
constexpr int kMaxHeight = 300;      // height of an expression tree (chains like a.b.c or 1+1+1 too)
constexpr int kMaxBlockDepth = 100;  // statement nesting

std::string describe(const Token& t) {
    switch (t.type) {
        case Tok::VarEnd: return "end of print statement";
        case Tok::BlockEnd: return "end of statement block";
        case Tok::VarBegin: return "begin of print statement";
        case Tok::BlockBegin: return "begin of statement block";
        case Tok::Eof: return "end of template";
        case Tok::Text: return "template data";
        case Tok::String: return "string";
        case Tok::Int: return "integer";
        case Tok::Float: return "float";
        default: return t.text;
    }
}

std::string join_quoted(const std::vector<std::string>& names) {
    std::string s;
    for (size_t i = 0; i < names.size(); ++i) {
        if (i) s += " or ";
        s += "'" + names[i] + "'";
    }
    return s;
}

class Parser {
public:
    Parser(std::string_view src, std::vector<Token> toks) : src_(src), toks_(std::move(toks)) {}

    Body parse_template() {
        Body body = parse_body({});
        return body;
    }

private:
    struct DepthGuard {
        Parser& p;
        DepthGuard(Parser& parser, size_t offset) : p(parser) {
            if (++p.depth_ > kMaxDepth) p.error(offset, "expression nested too deeply");
        }
        ~DepthGuard() { --p.depth_; }
    };

    [[noreturn]] void error(size_t offset, std::string msg, std::string kind = "TemplateSyntaxError") {
        throw_at(src_, offset, std::move(kind), std::move(msg));
    }

    const Token& cur() const { return toks_[pos_]; }
    const Token& peek(size_t k = 1) const { return toks_[std::min(pos_ + k, toks_.size() - 1)]; }
    void next() {
        if (pos_ + 1 < toks_.size()) ++pos_;
    }
    bool is_op(std::string_view op) const { return cur().type == Tok::Op && cur().text == op; }
    bool is_name(std::string_view n) const { return cur().type == Tok::Name && cur().text == n; }
    void expect_op(std::string_view op) {
        if (!is_op(op)) error(cur().offset, fmt::format("expected token '{}', got '{}'", op, describe(cur())));
        next();
    }
    std::string expect_name() {
        if (cur().type != Tok::Name) error(cur().offset, fmt::format("expected token 'name', got '{}'", describe(cur())));
        std::string n = cur().text;
        next();
        return n;
    }
    void expect_block_end() {
        if (cur().type != Tok::BlockEnd)
            error(cur().offset, fmt::format("expected token 'end of statement block', got '{}'", describe(cur())));
        next();
    }

    // ---- statements ---------------------------------------------------------------------------------

    // Parses until a block tag whose name is in `ends`; leaves the stream at that name.
    Body parse_body(const std::vector<std::string>& ends) {
        Body body;
        for (;;) {
            const Token& t = cur();
            switch (t.type) {
                case Tok::Eof:
                    if (!ends.empty()) {
                        std::string msg = "Unexpected end of template. Jinja was looking for the following tags: " + join_quoted(ends) + ".";
                        if (!open_.empty()) msg += " The innermost block that needs to be closed is '" + open_.back() + "'.";
                        error(t.offset, msg);
                    }
                    return body;
                case Tok::Text: {
                    auto s = std::make_unique<Stmt>(Stmt::K::Text, t.offset);
                    s->text = t.text;
                    body.push_back(std::move(s));
                    next();
                    break;
                }
                case Tok::VarBegin: {
                    auto s = std::make_unique<Stmt>(Stmt::K::Output, t.offset);
                    next();
                    s->expr = parse_tuple(false, true, {}, false);
                    if (cur().type != Tok::VarEnd)
                        error(cur().offset, fmt::format("expected token 'end of print statement', got '{}'", describe(cur())));
                    next();
                    body.push_back(std::move(s));
                    break;
                }
                case Tok::BlockBegin: {
                    const Token& name = peek();
                    if (name.type == Tok::Name && std::find(ends.begin(), ends.end(), name.text) != ends.end()) {
                        next();
                        return body;
                    }
                    next();
                    body.push_back(parse_statement(ends));
                    break;
                }
                default: error(t.offset, fmt::format("unexpected '{}'", describe(t)));
            }
        }
    }

    StmtPtr parse_statement(const std::vector<std::string>& ends) {
        const Token& t = cur();
        if (t.type != Tok::Name) error(t.offset, "tag name expected");
        if (static_cast<int>(open_.size()) >= kMaxBlockDepth) error(t.offset, "blocks nested too deeply");
        const std::string& n = t.text;
        if (n == "if") return parse_if();
        if (n == "for") return parse_for();
        if (n == "set") return parse_set();
        if (n == "macro") return parse_macro();
        if (n == "call") return parse_call_block();
        if (n == "filter") return parse_filter_block();
        if (n == "with") return parse_with();
        if (n == "break" || n == "continue") {
            if (loop_depth_ == 0) error(t.offset, fmt::format("'{}' outside loop", n));
            auto s = std::make_unique<Stmt>(n == "break" ? Stmt::K::Break : Stmt::K::Continue, t.offset);
            next();
            expect_block_end();
            return s;
        }
        static const char* const kUnsupported[] = {"include", "import", "from", "extends", "block", "autoescape",
                                                   "do", "trans", "pluralize", "debug"};
        for (const char* u : kUnsupported)
            if (n == u) error(t.offset, fmt::format("the '{}' tag is not supported", n), "Unsupported");
        std::string msg = fmt::format("Encountered unknown tag '{}'.", n);
        if (!ends.empty()) {
            msg += " Jinja was looking for the following tags: " + join_quoted(ends) + ".";
            if (!open_.empty()) msg += " The innermost block that needs to be closed is '" + open_.back() + "'.";
        }
        error(t.offset, msg);
    }

    // The end tag the stream stands at (after parse_body): consume its name and the `%}`.
    void end_tag() {
        next();
        expect_block_end();
    }

    StmtPtr parse_if() {
        auto s = std::make_unique<Stmt>(Stmt::K::If, cur().offset);
        next();
        open_.push_back("if");
        ExprPtr cond = parse_tuple(false, false, {}, false);
        expect_block_end();
        for (;;) {
            Body body = parse_body({"elif", "else", "endif"});
            s->branches.emplace_back(std::move(cond), std::move(body));
            const std::string tag = cur().text;
            next();
            if (tag == "elif") {
                cond = parse_tuple(false, false, {}, false);
                expect_block_end();
                continue;
            }
            if (tag == "else") {
                expect_block_end();
                Body else_body = parse_body({"endif"});
                s->branches.emplace_back(nullptr, std::move(else_body));
                end_tag();
            } else {
                expect_block_end();
            }
            break;
        }
        open_.pop_back();
        return s;
    }

    // `a`, `a, b`, `(a, b)`; with `ns_attr`, also `ns.attr`.
    void parse_targets(Stmt& s, bool ns_attr) {
        if (is_op("(")) {
            next();
            s.unpack = true;
            while (!is_op(")")) {
                if (!s.targets.empty()) expect_op(",");
                if (is_op(")")) break;
                s.targets.push_back(expect_name());
            }
            next();
            return;
        }
        const size_t off = cur().offset;
        s.targets.push_back(expect_name());
        if (ns_attr && is_op(".")) {
            next();
            s.targets.push_back(expect_name());
            s.attr_target = true;
            return;
        }
        while (is_op(",")) {
            next();
            s.unpack = true;
            if (cur().type != Tok::Name || is_name("in")) break;
            s.targets.push_back(expect_name());
        }
        for (const auto& t : s.targets)
            if (t == "true" || t == "false" || t == "none" || t == "True" || t == "False" || t == "None")
                error(off, fmt::format("Can't assign to constant '{}'", t));
    }

    StmtPtr parse_for() {
        auto s = std::make_unique<Stmt>(Stmt::K::For, cur().offset);
        next();
        open_.push_back("for");
        parse_targets(*s, false);
        if (!is_name("in")) error(cur().offset, fmt::format("expected token 'in', got '{}'", describe(cur())));
        next();
        s->expr = parse_tuple(false, false, {"recursive"}, false);
        if (is_name("if")) {
            next();
            s->filter = parse_expression(true);
        }
        if (is_name("recursive")) error(cur().offset, "recursive loops are not supported", "Unsupported");
        expect_block_end();
        ++loop_depth_;
        s->body = parse_body({"endfor", "else"});
        --loop_depth_;
        if (cur().text == "else") {
            next();
            expect_block_end();
            s->else_body = parse_body({"endfor"});
        }
        end_tag();
        open_.pop_back();
        s->uses_loop = false;
        for (const auto& st : s->body) refers_to_loop(*st, s->uses_loop);
        return s;
    }

    // Whether `loop` may be read in a for body: any reference outside nested loops' bodies (macros
    // and call blocks included, to be safe).
    static void refers_to_loop(const Expr* e, bool& found) {
        if (!e || found) return;
        if (e->kind == Expr::K::Name && e->name == "loop") found = true;
        refers_to_loop(e->a.get(), found);
        refers_to_loop(e->b.get(), found);
        refers_to_loop(e->c.get(), found);
        for (const auto& x : e->args) refers_to_loop(x.get(), found);
        for (const auto& kv : e->kwargs) refers_to_loop(kv.second.get(), found);
    }
    static void refers_to_loop(const Stmt& st, bool& found) {
        if (found) return;
        refers_to_loop(st.expr.get(), found);
        refers_to_loop(st.filter.get(), found);
        for (const auto& [c, b] : st.branches) {
            refers_to_loop(c.get(), found);
            for (const auto& x : b) refers_to_loop(*x, found);
        }
        for (const auto& kv : st.params) refers_to_loop(kv.second.get(), found);
        if (st.kind != Stmt::K::For)
            for (const auto& x : st.body) refers_to_loop(*x, found);
        for (const auto& x : st.else_body) refers_to_loop(*x, found);
    }

    StmtPtr parse_set() {
        const size_t off = cur().offset;
        next();
        auto s = std::make_unique<Stmt>(Stmt::K::Set, off);
        parse_targets(*s, true);
        if (is_op("=")) {
            next();
            s->expr = parse_tuple(false, true, {}, false);
            expect_block_end();
            return s;
        }
        s->kind = Stmt::K::SetBlock;
        if (s->unpack) error(off, "a block set takes one target");
        if (is_op("|")) s->filter = parse_filters(nullptr, false);
        expect_block_end();
        open_.push_back("set");
        s->body = parse_body({"endset"});
        end_tag();
        open_.pop_back();
        return s;
    }

    void parse_signature(Stmt& s) {
        expect_op("(");
        bool seen_default = false;
        while (!is_op(")")) {
            if (!s.params.empty()) expect_op(",");
            if (is_op(")")) break;
            const size_t off = cur().offset;
            std::string name = expect_name();
            ExprPtr dflt;
            if (is_op("=")) {
                next();
                dflt = parse_expression(true);
                seen_default = true;
            } else if (seen_default) {
                error(off, "non-default argument follows default argument");
            }
            s.params.emplace_back(std::move(name), std::move(dflt));
        }
        next();
    }

    // Which of varargs / kwargs / caller a macro body refers to (jinja2 only accepts extra
    // arguments, keyword arguments or a call block when the body uses them).
    static void scan_names(const Expr* e, Stmt& m) {
        if (!e) return;
        if (e->kind == Expr::K::Name) {
            if (e->name == "varargs") m.uses_varargs = true;
            if (e->name == "kwargs") m.uses_kwargs = true;
            if (e->name == "caller") m.uses_caller = true;
        }
        scan_names(e->a.get(), m);
        scan_names(e->b.get(), m);
        scan_names(e->c.get(), m);
        for (const auto& x : e->args) scan_names(x.get(), m);
        for (const auto& kv : e->kwargs) scan_names(kv.second.get(), m);
    }
    static void scan_body(const Body& body, Stmt& m) {
        for (const auto& st : body) {
            if (st->kind == Stmt::K::Macro) continue;
            scan_names(st->expr.get(), m);
            scan_names(st->filter.get(), m);
            for (const auto& [c, b] : st->branches) {
                scan_names(c.get(), m);
                scan_body(b, m);
            }
            for (const auto& kv : st->params) scan_names(kv.second.get(), m);
            scan_body(st->body, m);
            scan_body(st->else_body, m);
        }
    }

    StmtPtr parse_macro() {
        auto s = std::make_unique<Stmt>(Stmt::K::Macro, cur().offset);
        next();
        s->name = expect_name();
        parse_signature(*s);
        expect_block_end();
        open_.push_back("macro");
        const int saved_loops = loop_depth_;
        loop_depth_ = 0;
        s->body = parse_body({"endmacro"});
        loop_depth_ = saved_loops;
        end_tag();
        open_.pop_back();
        scan_body(s->body, *s);
        for (const auto& kv : s->params) scan_names(kv.second.get(), *s);
        return s;
    }

    StmtPtr parse_call_block() {
        auto s = std::make_unique<Stmt>(Stmt::K::CallBlock, cur().offset);
        next();
        if (is_op("(")) parse_signature(*s);
        const size_t off = cur().offset;
        s->expr = parse_expression(true);
        if (s->expr->kind != Expr::K::Call) error(off, "expected call");
        expect_block_end();
        open_.push_back("call");
        const int saved_loops = loop_depth_;
        loop_depth_ = 0;
        s->body = parse_body({"endcall"});
        loop_depth_ = saved_loops;
        end_tag();
        open_.pop_back();
        scan_body(s->body, *s);
        return s;
    }

    StmtPtr parse_filter_block() {
        auto s = std::make_unique<Stmt>(Stmt::K::FilterBlock, cur().offset);
        next();
        s->filter = parse_filters(nullptr, true);
        expect_block_end();
        open_.push_back("filter");
        s->body = parse_body({"endfilter"});
        end_tag();
        open_.pop_back();
        return s;
    }

    StmtPtr parse_with() {
        auto s = std::make_unique<Stmt>(Stmt::K::With, cur().offset);
        next();
        while (cur().type != Tok::BlockEnd) {
            if (!s->params.empty()) expect_op(",");
            std::string name = expect_name();
            expect_op("=");
            s->params.emplace_back(std::move(name), parse_expression(true));
        }
        expect_block_end();
        open_.push_back("with");
        s->body = parse_body({"endwith"});
        end_tag();
        open_.pop_back();
        return s;
    }

    // ---- expressions --------------------------------------------------------------------------------

    ExprPtr make(Expr::K k, size_t off) { return std::make_unique<Expr>(k, off); }

    // Records the height of a node built from finished children; trees stay shallow enough for
    // the interpreter's and the destructors' recursion.
    ExprPtr finish(ExprPtr n) {
        int h = 0;
        auto take = [&](const ExprPtr& c) {
            if (c) h = std::max(h, c->height);
        };
        take(n->a);
        take(n->b);
        take(n->c);
        for (const auto& x : n->args) take(x);
        for (const auto& kv : n->kwargs) take(kv.second);
        n->height = h + 1;
        if (n->height > kMaxHeight) error(n->offset, "expression nested too deeply");
        return n;
    }

    bool is_tuple_end(const std::vector<std::string>& extra) const {
        const Token& t = cur();
        if (t.type == Tok::VarEnd || t.type == Tok::BlockEnd || t.type == Tok::Eof) return true;
        if (t.type == Tok::Op && t.text == ")") return true;
        return t.type == Tok::Name && std::find(extra.begin(), extra.end(), t.text) != extra.end();
    }

    ExprPtr parse_tuple(bool simplified, bool with_condexpr, const std::vector<std::string>& extra_end, bool explicit_parens) {
        const size_t off = cur().offset;
        std::vector<ExprPtr> items;
        bool is_tuple = false;
        for (;;) {
            if (!items.empty()) expect_op(",");
            if (is_tuple_end(extra_end)) break;
            items.push_back(simplified ? parse_primary() : parse_expression(with_condexpr));
            if (is_op(",")) is_tuple = true;
            else break;
        }
        if (!is_tuple) {
            if (!items.empty()) return std::move(items[0]);
            if (!explicit_parens) error(cur().offset, fmt::format("Expected an expression, got '{}'", describe(cur())));
        }
        auto t = make(Expr::K::Tuple, off);
        t->args = std::move(items);
        return finish(std::move(t));
    }

    ExprPtr parse_expression(bool with_condexpr) {
        DepthGuard g(*this, cur().offset);
        if (!with_condexpr) return parse_or();
        ExprPtr e = parse_or();
        while (is_name("if")) {
            const size_t off = cur().offset;
            next();
            ExprPtr cond = parse_or();
            ExprPtr other;
            if (is_name("else")) {
                next();
                other = parse_expression(true);
            }
            auto c = make(Expr::K::Cond, off);
            c->a = std::move(e);
            c->b = std::move(cond);
            c->c = std::move(other);
            e = finish(std::move(c));
        }
        return e;
    }

    ExprPtr parse_or() {
        ExprPtr left = parse_and();
        while (is_name("or")) {
            auto n = make(Expr::K::Or, cur().offset);
            next();
            n->a = std::move(left);
            n->b = parse_and();
            left = finish(std::move(n));
        }
        return left;
    }

    ExprPtr parse_and() {
        ExprPtr left = parse_not();
        while (is_name("and")) {
            auto n = make(Expr::K::And, cur().offset);
            next();
            n->a = std::move(left);
            n->b = parse_not();
            left = finish(std::move(n));
        }
        return left;
    }

    ExprPtr parse_not() {
        if (is_name("not")) {
            DepthGuard g(*this, cur().offset);
            auto n = make(Expr::K::Not, cur().offset);
            next();
            n->a = parse_not();
            return finish(std::move(n));
        }
        return parse_compare();
    }

    ExprPtr parse_compare() {
        const size_t off = cur().offset;
        ExprPtr first = parse_math1();
        std::vector<std::string> ops;
        std::vector<ExprPtr> operands;
        for (;;) {
            const Token& t = cur();
            if (t.type == Tok::Op && (t.text == "==" || t.text == "!=" || t.text == "<" || t.text == "<=" ||
                                      t.text == ">" || t.text == ">=")) {
                ops.push_back(t.text);
                next();
            } else if (is_name("in")) {
                ops.push_back("in");
                next();
            } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
                ops.push_back("notin");
                next();
                next();
            } else {
                break;
            }
            operands.push_back(parse_math1());
        }
        if (ops.empty()) return first;
        auto c = make(Expr::K::Compare, off);
        c->a = std::move(first);
        c->ops = std::move(ops);
        c->args = std::move(operands);
        return finish(std::move(c));
    }

    ExprPtr binary(const char* op, ExprPtr l, ExprPtr r, size_t off) {
        auto n = make(Expr::K::Binary, off);
        n->name = op;
        n->a = std::move(l);
        n->b = std::move(r);
        return finish(std::move(n));
    }

    ExprPtr parse_math1() {
        ExprPtr left = parse_concat();
        while (is_op("+") || is_op("-")) {
            const size_t off = cur().offset;
            const char* op = is_op("+") ? "+" : "-";
            next();
            left = binary(op, std::move(left), parse_concat(), off);
        }
        return left;
    }

    ExprPtr parse_concat() {
        const size_t off = cur().offset;
        ExprPtr first = parse_math2();
        if (!is_op("~")) return first;
        auto n = make(Expr::K::Concat, off);
        n->args.push_back(std::move(first));
        while (is_op("~")) {
            next();
            n->args.push_back(parse_math2());
        }
        return finish(std::move(n));
    }

    ExprPtr parse_math2() {
        ExprPtr left = parse_pow();
        for (;;) {
            const char* op = is_op("*") ? "*" : is_op("/") ? "/" : is_op("//") ? "//" : is_op("%") ? "%" : nullptr;
            if (!op) break;
            const size_t off = cur().offset;
            next();
            left = binary(op, std::move(left), parse_pow(), off);
        }
        return left;
    }

    ExprPtr parse_pow() {
        ExprPtr left = parse_unary(true);
        while (is_op("**")) {
            const size_t off = cur().offset;
            next();
            left = binary("**", std::move(left), parse_unary(true), off);
        }
        return left;
    }

    ExprPtr parse_unary(bool with_filter) {
        DepthGuard g(*this, cur().offset);
        const size_t off = cur().offset;
        ExprPtr node;
        if (is_op("-") || is_op("+")) {
            node = make(is_op("-") ? Expr::K::Neg : Expr::K::Pos, off);
            next();
            node->a = parse_unary(false);
            node = finish(std::move(node));
        } else {
            node = parse_primary();
        }
        node = parse_postfix(std::move(node));
        if (with_filter) node = parse_filter_expr(std::move(node));
        return node;
    }

    ExprPtr parse_primary() {
        DepthGuard g(*this, cur().offset);
        const Token& t = cur();
        const size_t off = t.offset;
        switch (t.type) {
            case Tok::Name: {
                auto n = make(Expr::K::Const, off);
                if (t.text == "true" || t.text == "True") n->value = true;
                else if (t.text == "false" || t.text == "False") n->value = false;
                else if (t.text == "none" || t.text == "None") n->value = Value::none();
                else {
                    n->kind = Expr::K::Name;
                    n->name = t.text;
                }
                next();
                return n;
            }
            case Tok::String: {
                std::string s = t.text;
                next();
                while (cur().type == Tok::String) {
                    s += cur().text;
                    next();
                }
                auto n = make(Expr::K::Const, off);
                n->value = std::move(s);
                return n;
            }
            case Tok::Int: {
                auto n = make(Expr::K::Const, off);
                n->value = t.ival;
                next();
                return n;
            }
            case Tok::Float: {
                auto n = make(Expr::K::Const, off);
                n->value = t.fval;
                next();
                return n;
            }
            case Tok::Op:
                if (t.text == "(") {
                    next();
                    ExprPtr e = parse_tuple(false, true, {}, true);
                    expect_op(")");
                    return e;
                }
                if (t.text == "[") {
                    next();
                    auto n = make(Expr::K::List, off);
                    while (!is_op("]")) {
                        if (!n->args.empty()) expect_op(",");
                        if (is_op("]")) break;
                        n->args.push_back(parse_expression(true));
                    }
                    next();
                    return finish(std::move(n));
                }
                if (t.text == "{") {
                    next();
                    auto n = make(Expr::K::Dict, off);
                    while (!is_op("}")) {
                        if (!n->args.empty()) expect_op(",");
                        if (is_op("}")) break;
                        n->args.push_back(parse_expression(true));
                        expect_op(":");
                        n->args.push_back(parse_expression(true));
                    }
                    next();
                    return finish(std::move(n));
                }
                break;
            default: break;
        }
        error(off, fmt::format("unexpected '{}'", describe(t)));
    }

    ExprPtr parse_postfix(ExprPtr node) {
        for (;;) {
            if (is_op(".") || is_op("[")) node = parse_subscript(std::move(node));
            else if (is_op("(")) node = parse_call(std::move(node));
            else return node;
        }
    }

    ExprPtr parse_filter_expr(ExprPtr node) {
        for (;;) {
            if (is_op("|")) node = parse_filters(std::move(node), false);
            else if (is_name("is")) node = parse_test(std::move(node));
            else if (is_op("(")) node = parse_call(std::move(node));
            else return node;
        }
    }

    ExprPtr parse_subscript(ExprPtr node) {
        const size_t off = cur().offset;
        if (is_op(".")) {
            next();
            if (cur().type == Tok::Name) {
                auto n = make(Expr::K::Attr, off);
                n->a = std::move(node);
                n->name = cur().text;
                next();
                return finish(std::move(n));
            }
            if (cur().type == Tok::Int) {
                auto n = make(Expr::K::Item, off);
                n->a = std::move(node);
                n->b = make(Expr::K::Const, cur().offset);
                n->b->value = cur().ival;
                next();
                return finish(std::move(n));
            }
            error(cur().offset, fmt::format("expected name or number, got '{}'", describe(cur())));
        }
        next();  // [
        std::vector<ExprPtr> args;
        while (!is_op("]")) {
            if (!args.empty()) expect_op(",");
            args.push_back(parse_subscribed());
        }
        next();
        auto n = make(Expr::K::Item, off);
        n->a = std::move(node);
        if (args.size() == 1) {
            if (args[0]->kind == Expr::K::Slice) {
                args[0]->a = std::move(n->a);
                return finish(std::move(args[0]));
            }
            n->b = std::move(args[0]);
        } else {
            if (args.empty()) error(off, "expected an index or a slice");
            for (const auto& a : args)
                if (a->kind == Expr::K::Slice) error(a->offset, "multi-dimensional slices are not supported", "Unsupported");
            auto t = make(Expr::K::Tuple, off);
            t->args = std::move(args);
            n->b = finish(std::move(t));
        }
        return finish(std::move(n));
    }

    ExprPtr parse_subscribed() {
        const size_t off = cur().offset;
        std::vector<ExprPtr> parts;
        if (is_op(":")) {
            next();
            parts.push_back(nullptr);
        } else {
            ExprPtr e = parse_expression(true);
            if (!is_op(":")) return e;
            next();
            parts.push_back(std::move(e));
        }
        if (is_op(":")) parts.push_back(nullptr);
        else if (!is_op("]") && !is_op(",")) parts.push_back(parse_expression(true));
        else parts.push_back(nullptr);
        if (is_op(":")) {
            next();
            if (!is_op("]") && !is_op(",")) parts.push_back(parse_expression(true));
            else parts.push_back(nullptr);
        } else {
            parts.push_back(nullptr);
        }
        auto s = make(Expr::K::Slice, off);
        s->args = std::move(parts);
        return finish(std::move(s));
    }

    void parse_call_args(Expr& n) {
        expect_op("(");
        while (!is_op(")")) {
            if (!n.args.empty() || !n.kwargs.empty()) {
                expect_op(",");
                if (is_op(")")) break;
            }
            if (is_op("*") || is_op("**")) error(cur().offset, "*args and **kwargs in calls are not supported", "Unsupported");
            if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
                std::string key = cur().text;
                next();
                next();
                n.kwargs.emplace_back(std::move(key), parse_expression(true));
            } else {
                if (!n.kwargs.empty()) error(cur().offset, "invalid syntax for function call expression");
                n.args.push_back(parse_expression(true));
            }
        }
        next();
    }

    ExprPtr parse_call(ExprPtr node) {
        auto n = make(Expr::K::Call, cur().offset);
        n->a = std::move(node);
        parse_call_args(*n);
        return finish(std::move(n));
    }

    // `| f | g(x)`; with `start_inline` the first filter has no `|` ({% filter f %}).
    ExprPtr parse_filters(ExprPtr node, bool start_inline) {
        while (is_op("|") || start_inline) {
            if (!start_inline) next();
            start_inline = false;
            const size_t off = cur().offset;
            std::string name = expect_name();
            while (is_op(".")) {
                next();
                name += '.';
                name += expect_name();
            }
            auto f = make(Expr::K::Filter, off);
            f->a = std::move(node);
            f->name = std::move(name);
            if (is_op("(")) parse_call_args(*f);
            node = finish(std::move(f));
        }
        return node;
    }

    ExprPtr parse_test(ExprPtr node) {
        const size_t off = cur().offset;
        next();  // is
        bool negated = false;
        if (is_name("not")) {
            next();
            negated = true;
        }
        std::string name = expect_name();
        while (is_op(".")) {
            next();
            name += '.';
            name += expect_name();
        }
        auto t = make(Expr::K::Test, off);
        t->a = std::move(node);
        t->name = std::move(name);
        const Token& c = cur();
        if (is_op("(")) {
            parse_call_args(*t);
        } else if ((c.type == Tok::Name || c.type == Tok::String || c.type == Tok::Int || c.type == Tok::Float ||
                    (c.type == Tok::Op && (c.text == "[" || c.text == "{"))) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
            if (is_name("is")) error(c.offset, "You cannot chain multiple tests with is");
            t->args.push_back(parse_postfix(parse_primary()));
        }
        t = finish(std::move(t));
        if (!negated) return t;
        auto n = make(Expr::K::Not, off);
        n->a = std::move(t);
        return finish(std::move(n));
    }

    std::string_view src_;
    std::vector<Token> toks_;
    size_t pos_ = 0;
    int depth_ = 0;
    int loop_depth_ = 0;
    std::vector<std::string> open_;  // enclosing block tags, for messages
};

}  // namespace

// jinja2 rejects an unknown filter when compiling, unless it sits where it may never run: in an
// `if` statement (test or branches), a conditional expression, or the right side of `and`/`or`
// (then it fails only when reached). Loop, macro, call, with and block-set bodies start afresh.
class FilterCheck {
public:
    explicit FilterCheck(std::string_view src) : src_(src) {}

    void body(const Body& b, bool cond) {
        for (const auto& s : b) stmt(*s, cond);
    }

private:
    void stmt(const Stmt& s, bool cond) {
        switch (s.kind) {
            case Stmt::K::If:
                for (const auto& [c, b] : s.branches) {
                    expr(c.get(), true);
                    body(b, true);
                }
                return;
            case Stmt::K::For:
                expr(s.expr.get(), cond);
                expr(s.filter.get(), false);
                body(s.body, false);
                body(s.else_body, false);
                return;
            case Stmt::K::Macro:
                for (const auto& kv : s.params) expr(kv.second.get(), false);
                body(s.body, false);
                return;
            case Stmt::K::CallBlock:
            case Stmt::K::With:
                expr(s.expr.get(), cond);
                for (const auto& kv : s.params) expr(kv.second.get(), s.kind == Stmt::K::With ? cond : false);
                body(s.body, false);
                return;
            case Stmt::K::SetBlock:
            case Stmt::K::FilterBlock:
                expr(s.filter.get(), false);
                body(s.body, false);
                return;
            default: expr(s.expr.get(), cond);
        }
    }

    void expr(const Expr* e, bool cond) {
        if (!e) return;
        if (e->kind == Expr::K::Filter && !cond && !has_filter(e->name))
            throw_at(src_, e->offset, "TemplateAssertionError", fmt::format("No filter named '{}'.", e->name));
        const bool cond_all = cond || e->kind == Expr::K::Cond;
        const bool cond_b = cond_all || e->kind == Expr::K::And || e->kind == Expr::K::Or;
        expr(e->a.get(), cond_all);
        expr(e->b.get(), cond_b);
        expr(e->c.get(), cond_all);
        for (const auto& x : e->args) expr(x.get(), cond_all);
        for (const auto& kv : e->kwargs) expr(kv.second.get(), cond_all);
    }

    std::string_view src_;
};

Body parse(std::string_view src, std::vector<Token> tokens) {
    Body body = Parser(src, std::move(tokens)).parse_template();
    FilterCheck(src).body(body, false);
    return body;
}

}  // namespace kiln::jinja
