// Stop sequences over streamed text: holds back what may be the start of one (the Generator's
// stop strings, kiln serve's `stop`, and the end-of-turn text of a built-in chat template).
#pragma once

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

namespace kiln {

// Holds back text that may be the start of a stop sequence.
class StopMatcher {
public:
    explicit StopMatcher(const std::vector<std::string>& stops) {
        for (const auto& s : stops)
            if (!s.empty()) stops_.push_back(s);
    }
    // Appends text; returns what can be released. Sets hit when a stop sequence was found.
    std::string push(const std::string& text, bool& hit, std::string& which) {
        pending_ += text;
        if (stops_.empty()) return std::exchange(pending_, {});
        size_t best = std::string::npos;
        for (const auto& s : stops_) {
            const size_t at = pending_.find(s);
            if (at != std::string::npos && at < best) {
                best = at;
                which = s;
            }
        }
        if (best != std::string::npos) {
            hit = true;
            std::string out = pending_.substr(0, best);
            pending_.clear();
            return out;
        }
        size_t keep = 0;  // longest suffix of pending_ that is a proper prefix of a stop sequence
        for (const auto& s : stops_)
            for (size_t k = std::min(s.size() - 1, pending_.size()); k > keep; --k)
                if (pending_.compare(pending_.size() - k, k, s, 0, k) == 0) {
                    keep = k;
                    break;
                }
        std::string out = pending_.substr(0, pending_.size() - keep);
        pending_.erase(0, pending_.size() - keep);
        return out;
    }
    std::string flush() { return std::exchange(pending_, {}); }

private:
    std::vector<std::string> stops_;
    std::string pending_;
};

}  // namespace kiln
