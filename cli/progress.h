// A progress bar on stderr: redrawn in place on a terminal, a few plain lines otherwise (logs).
// Work that finishes quickly shows nothing.
#pragma once

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

namespace kiln::cli {

class Progress {
public:
    explicit Progress(std::string label, bool enabled = true)
        : label_(std::move(label)), enabled_(enabled), tty_(::isatty(2) != 0), start_(std::chrono::steady_clock::now()) {}
    ~Progress() { done(); }

    // fraction in [0, 1]. Cheap to call often: draws at most ~20 times a second.
    void update(double fraction) {
        if (!enabled_ || finished_) return;
        const auto now = std::chrono::steady_clock::now();
        const int pct = static_cast<int>(fraction * 100.0 + 0.5);
        // Quick work shows nothing: a bar appears after 0.25 s on a terminal, 1 s in a log.
        if (now - start_ < (tty_ ? std::chrono::milliseconds(250) : std::chrono::milliseconds(1000))) return;
        if (tty_) {
            if (now - last_ < std::chrono::milliseconds(50) && pct < 100) return;
            last_ = now;
            constexpr int width = 30;
            const int filled = static_cast<int>(fraction * width);
            std::string bar(static_cast<size_t>(filled), '=');
            if (filled < width) bar += '>' + std::string(static_cast<size_t>(width - filled - 1), ' ');
            std::fprintf(stderr, "\r%s [%s] %3d%%", label_.c_str(), bar.c_str(), pct);
            std::fflush(stderr);
            drawn_ = true;
        } else if (pct >= next_plain_pct_) {
            // Non-terminal: one line per quarter, so logs stay short.
            std::fprintf(stderr, "%s: %d%%\n", label_.c_str(), pct);
            next_plain_pct_ = (pct / 25 + 1) * 25;
        }
    }

    void done() {
        if (!enabled_ || finished_) return;
        finished_ = true;
        if (tty_ && drawn_) {
            const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
            std::fprintf(stderr, "\r%s [%s] 100%% (%.2f s)\n", label_.c_str(), std::string(30, '=').c_str(), s);
        }
    }

private:
    std::string label_;
    bool enabled_, tty_;
    bool drawn_ = false, finished_ = false;
    int next_plain_pct_ = 0;
    std::chrono::steady_clock::time_point start_, last_{};
};

}  // namespace kiln::cli
