// kiln serve's HTTP connections: cpp-httplib's Server with deadlines of its own. cpp-httplib 0.11's
// read timeout is per read, so a client trickling a byte every few seconds was never cut off, and
// a request that stopped half-way was closed without an answer. Here each request has a total
// deadline for its headers (from its first byte) and one for its body (from the end of the
// headers); past either the client gets 408 Request Timeout and the connection is closed. A
// request cut short by the client (end of stream inside the headers) gets 400. Idle keep-alive
// connections are closed after a few seconds; writes that the client does not take within the
// write timeout fail (the generation behind them stops).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include <httplib.h>

namespace kiln::serve {

struct HttpLimits {
    int header_timeout_ms = 30000;  // from the request's first byte to the end of its headers
    int body_timeout_ms = 30000;    // from the end of the headers to the end of the body
    int write_timeout_ms = 30000;   // a write the client takes none of for this long fails
    int keep_alive_ms = 5000;       // an idle connection between requests is closed after this
};

// What the connections did, for /metrics.
struct HttpCounters {
    std::atomic<int64_t> open{0};        // connections now open
    std::atomic<int64_t> accepted{0};    // connections handled since the start
    std::atomic<int64_t> timed_out{0};   // requests answered 408 (headers or body past the deadline)
    std::atomic<int64_t> incomplete{0};  // requests answered 400 (the client ended the stream inside the headers)
};

class HttpServer : public httplib::Server {
public:
    // Fills an error answer (status, message) for a request to `path` ("" when its request line
    // was not read): the routes' own error shapes.
    using ErrorWriter = std::function<void(httplib::Response& res, int status, const std::string& message, const std::string& path)>;

    HttpServer(const HttpLimits& limits, ErrorWriter error_writer);

    const HttpLimits& limits() const { return limits_; }
    const HttpCounters& counters() const { return counters_; }

private:
    bool process_and_close_socket(socket_t sock) override;  // cpp-httplib's per-connection entry

    HttpLimits limits_;
    ErrorWriter error_writer_;
    HttpCounters counters_;
};

}  // namespace kiln::serve
