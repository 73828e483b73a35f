// kiln::Error: the one exception type libengine throws across its boundary. Its message is meant
// for a user: it names the file, offset, field or limit that was wrong.
#pragma once

#include <stdexcept>
#include <string>

namespace kiln {

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& message) : std::runtime_error(message) {}
};

}  // namespace kiln
