#include "cli/server/http_server.h"

#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstring>

#include <fmt/format.h>

namespace kiln::serve {
namespace {

using Clock = std::chrono::steady_clock;

// Milliseconds left until t, rounded up (0 once it has passed).
int ms_until(Clock::time_point t) {
    const auto us = std::chrono::duration_cast<std::chrono::microseconds>(t - Clock::now()).count();
    return us <= 0 ? 0 : static_cast<int>(std::min<int64_t>((us + 999) / 1000, int64_t{1} << 30));
}

// Waits for fd to have something to read (or to be hung up): 1, 0 at the deadline, -1 on an error.
int wait_in(int fd, Clock::time_point deadline) {
    for (;;) {
        pollfd p{fd, POLLIN, 0};
        const int rc = ::poll(&p, 1, ms_until(deadline));
        if (rc > 0) return 1;
        if (rc < 0 && errno != EINTR) return -1;
        if (rc == 0 && Clock::now() >= deadline) return 0;
    }
}

// Waits for room to write: 1, 0 after timeout_ms, -1 on an error.
int wait_out(int fd, int timeout_ms) {
    const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
        pollfd p{fd, POLLOUT, 0};
        const int rc = ::poll(&p, 1, ms_until(deadline));
        if (rc > 0) return (p.revents & (POLLERR | POLLNVAL)) ? -1 : 1;
        if (rc < 0 && errno != EINTR) return -1;
        if (rc == 0 && Clock::now() >= deadline) return 0;
    }
}

void ip_and_port(const sockaddr_storage& a, socklen_t len, std::string& ip, int& port) {
    char host[NI_MAXHOST];
    if (::getnameinfo(reinterpret_cast<const sockaddr*>(&a), len, host, sizeof host, nullptr, 0, NI_NUMERICHOST) == 0) ip = host;
    if (a.ss_family == AF_INET) port = ntohs(reinterpret_cast<const sockaddr_in*>(&a)->sin_port);
    else if (a.ss_family == AF_INET6) port = ntohs(reinterpret_cast<const sockaddr_in6*>(&a)->sin6_port);
}

const char* reason_phrase(int status) {
    switch (status) {
        case 400: return "Bad Request";
        case 408: return "Request Timeout";
        default: return "Error";
    }
}

std::string seconds(int ms) { return ms % 1000 == 0 ? fmt::format("{}", ms / 1000) : fmt::format("{:g}", ms / 1000.0); }

// One connection's stream (buffered reads, as cpp-httplib's own), with the deadline of the part of
// the request being read. Past it (or at an end of stream inside the headers) the stream answers
// the client itself, and every later read and write fails, so cpp-httplib gives up the request.
class DeadlineStream final : public httplib::Stream {
public:
    DeadlineStream(int fd, const HttpLimits& limits, const HttpServer::ErrorWriter& error_writer, HttpCounters& counters)
        : fd_(fd), limits_(limits), error_writer_(error_writer), counters_(counters) {}

    // A request begins: its first bytes are here (buffered, or readable on the socket).
    void begin_request() {
        headers_ = true;
        deadline_ = Clock::now() + std::chrono::milliseconds(limits_.header_timeout_ms);
        got_ = len_ - off_;
        line_.assign(buf_.data() + off_, std::min<size_t>(len_ - off_, kLineMax));
        path_.clear();
    }
    // Its headers are read: the body's deadline starts.
    void headers_read(const httplib::Request& req) {
        headers_ = false;
        deadline_ = Clock::now() + std::chrono::milliseconds(limits_.body_timeout_ms);
        path_ = req.path;
    }
    bool answered() const { return answered_; }
    bool buffered() const { return off_ < len_; }

    bool is_readable() const override { return off_ < len_ || (!answered_ && wait_in(fd_, deadline_) > 0); }
    bool is_writable() const override { return !answered_ && wait_out(fd_, limits_.write_timeout_ms) > 0; }

    ssize_t read(char* ptr, size_t size) override {
        if (off_ < len_) {
            const size_t n = std::min(size, len_ - off_);
            std::memcpy(ptr, buf_.data() + off_, n);
            off_ += n;
            return static_cast<ssize_t>(n);
        }
        if (answered_) return -1;
        for (;;) {
            const int w = wait_in(fd_, deadline_);
            if (w == 0) {
                ++counters_.timed_out;
                answer(408, headers_ ? fmt::format("request timeout: the request's headers were not complete within {} s of its first byte "
                                                   "(kiln serve --timeout)",
                                                   seconds(limits_.header_timeout_ms))
                                     : fmt::format("request timeout: the request's body was not complete within {} s of its headers "
                                                   "(kiln serve --timeout)",
                                                   seconds(limits_.body_timeout_ms)));
                return -1;
            }
            if (w < 0) return -1;
            const bool direct = size >= buf_.size();
            char* dst = direct ? ptr : buf_.data();
            const ssize_t n = ::recv(fd_, dst, direct ? size : buf_.size(), 0);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            if (n < 0) return -1;
            if (n == 0) {
                if (headers_ && got_ > 0) {
                    ++counters_.incomplete;
                    answer(400, "incomplete request: the connection ended inside the request's headers");
                    return -1;
                }
                return 0;
            }
            got_ += static_cast<size_t>(n);
            if (headers_ && line_.size() < kLineMax) line_.append(dst, std::min(static_cast<size_t>(n), kLineMax - line_.size()));
            if (direct) return n;
            off_ = 0;
            len_ = static_cast<size_t>(n);
            return read(ptr, size);
        }
    }

    ssize_t write(const char* ptr, size_t size) override {
        if (answered_) return -1;
        for (;;) {
            if (wait_out(fd_, limits_.write_timeout_ms) <= 0) return -1;
            const ssize_t n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
            if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
            return n;
        }
    }

    void get_remote_ip_and_port(std::string& ip, int& port) const override {
        sockaddr_storage a{};
        socklen_t len = sizeof a;
        if (::getpeername(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) ip_and_port(a, len, ip, port);
    }
    void get_local_ip_and_port(std::string& ip, int& port) const override {
        sockaddr_storage a{};
        socklen_t len = sizeof a;
        if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len) == 0) ip_and_port(a, len, ip, port);
    }
    socket_t socket() const override { return fd_; }

private:
    static constexpr size_t kLineMax = 512;  // of the request line kept, for the answer's error shape

    // The path of the request line read so far ("" if it has not come yet).
    std::string path_from_line() const {
        const size_t sp = line_.find(' ');
        if (sp == std::string::npos) return "";
        const size_t end = line_.find_first_of(" \r\n", sp + 1);
        return end == std::string::npos ? "" : line_.substr(sp + 1, end - sp - 1);
    }

    // Answers the client itself and ends the request: the error, then the end of our side; what
    // the client still sends is read (and dropped) for a moment, so that closing does not reset
    // the connection before the client has read the answer.
    void answer(int status, const std::string& message) {
        answered_ = true;
        httplib::Response res;
        try {
            error_writer_(res, status, message, headers_ ? path_from_line() : path_);
        } catch (...) {
            res.set_content(message + "\n", "text/plain");
        }
        std::string out = fmt::format("HTTP/1.1 {} {}\r\n", status, reason_phrase(status));
        for (const auto& [k, v] : res.headers)
            if (k != "Content-Length" && k != "Connection") out += k + ": " + v + "\r\n";
        out += fmt::format("Content-Length: {}\r\nConnection: close\r\n\r\n", res.body.size());
        out += res.body;
        for (size_t sent = 0; sent < out.size();) {
            if (wait_out(fd_, 1000) <= 0) break;
            const ssize_t n = ::send(fd_, out.data() + sent, out.size() - sent, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) break;
            sent += static_cast<size_t>(n);
        }
        ::shutdown(fd_, SHUT_WR);
        const auto linger = Clock::now() + std::chrono::milliseconds(500);
        char sink[4096];
        while (wait_in(fd_, linger) > 0) {
            const ssize_t n = ::recv(fd_, sink, sizeof sink, MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EINTR && errno != EAGAIN)) break;
        }
    }

    int fd_;
    const HttpLimits& limits_;
    const HttpServer::ErrorWriter& error_writer_;
    HttpCounters& counters_;
    std::array<char, 4096> buf_{};
    size_t off_ = 0, len_ = 0;
    bool headers_ = true;  // reading the request line and headers (else the body)
    Clock::time_point deadline_ = Clock::now();
    size_t got_ = 0;     // bytes of this request received
    std::string line_;   // its first bytes (the request line)
    std::string path_;   // its path, once the headers are read
    bool answered_ = false;
};

}  // namespace

HttpServer::HttpServer(const HttpLimits& limits, ErrorWriter error_writer) : limits_(limits), error_writer_(std::move(error_writer)) {
    set_write_timeout(limits.write_timeout_ms / 1000, (limits.write_timeout_ms % 1000) * 1000);
}

bool HttpServer::process_and_close_socket(socket_t sock) {
    ++counters_.open;
    ++counters_.accepted;
    DeadlineStream strm(sock, limits_, error_writer_, counters_);
    // Between requests: the next one's first byte, for up to keep_alive_ms (checking every 100 ms
    // whether the server is stopping).
    auto next_request = [&] {
        if (strm.buffered()) return true;
        const auto idle_end = Clock::now() + std::chrono::milliseconds(limits_.keep_alive_ms);
        while (svr_sock_ != INVALID_SOCKET) {
            const auto slice = std::min(idle_end, Clock::now() + std::chrono::milliseconds(100));
            const int w = wait_in(sock, slice);
            if (w != 0) return w > 0;
            if (slice == idle_end) return false;
        }
        return false;
    };
    bool ret = false;
    for (size_t left = keep_alive_max_count_; left > 0 && svr_sock_ != INVALID_SOCKET && next_request(); --left) {
        strm.begin_request();
        bool connection_closed = false;
        ret = process_request(strm, left == 1, connection_closed, [&strm](httplib::Request& req) { strm.headers_read(req); });
        if (!ret || connection_closed || strm.answered()) break;
    }
    ::shutdown(sock, SHUT_RDWR);
    ::close(sock);
    --counters_.open;
    return ret;
}

}  // namespace kiln::serve
