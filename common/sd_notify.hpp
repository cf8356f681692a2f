// sd_notify: tells the service manager (systemd, with Type=notify) that a daemon is ready, is
// stopping, or what it is doing, without linking libsystemd. The protocol is one datagram of
// newline-separated KEY=VALUE assignments ("READY=1", "STOPPING=1", "STATUS=...") sent to the
// AF_UNIX socket named by $NOTIFY_SOCKET: a path, or an abstract socket when it starts with '@'.
// Used by the daemons' mains and by coordinator/server.cpp once the endpoints are served.
#pragma once

#include <string_view>

#include "common/result.hpp"

namespace evald {

// Sends `state` to $NOTIFY_SOCKET. Does nothing and returns Ok when the variable is unset or
// empty (not started by systemd, or by a unit without Type=notify). An error names
// NOTIFY_SOCKET, the socket and the cause; callers log it and carry on, since a daemon that
// cannot report readiness still works (systemd then times the start out and says so itself).
Status sd_notify(std::string_view state);

// The same with an explicit socket address ("/run/..." or "@abstract-name"), for tests and for
// callers that read the variable themselves.
Status sd_notify_to(std::string_view socket, std::string_view state);

}  // namespace evald
